"""What a stored body looks like to a reader: decoded per Content-Encoding, then classified as
JSON, text, an image or binary. The `interceptor flows show` command and the web UI both show
bodies through this, so they always agree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from .rows import as_text, decode_body, header

_HEX_BYTES = 256  # of a binary body, shown as hex


def body_view(
    body: bytes | None, size: int, cut: bool, pairs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """A stored body as a reader sees it.

    `kind` is "none" (nothing stored), "json" (`text` pretty-printed), "text", "image"
    (`data`: base64 of the decoded bytes, `mime`) or "binary"; images and binary bodies also
    have `hex`, their first bytes. `note` says what was not done: a cut body is not decoded
    (its end is missing), a body that fails to decode is shown as sent."""
    mime = header(pairs, "content-type").split(";")[0].strip().lower()
    view: dict[str, Any] = {"size": size, "cut": bool(cut), "mime": mime, "note": ""}
    if body is None:
        view.update(kind="none", stored=0)
        if size:
            view["note"] = "not stored"
        return view
    view["stored"] = len(body)
    coding = header(pairs, "content-encoding")
    if coding:
        view["encoding"] = coding
    if cut:
        view["note"] = f"stored cut at {len(body)} of {size} bytes"
    else:
        body, failure = decode_body(body, pairs)
        if failure is not None:
            view["note"] = f"not decoded: {failure}"
        elif coding:
            view["decoded"] = len(body)
    if "json" in mime:
        try:
            text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
            view.update(kind="json", text=text)
            return view
        except ValueError:
            pass
    printable = None if mime.startswith("image/") else as_text(body)
    if printable is not None:
        view.update(kind="text", text=printable)
        return view
    view.update(kind="binary", hex=body[:_HEX_BYTES].hex(" "), shown=min(len(body), _HEX_BYTES))
    if mime.startswith("image/") and not cut:
        view.update(kind="image", data=base64.b64encode(body).decode("ascii"))
    return view
