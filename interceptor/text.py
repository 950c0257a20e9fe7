"""Text helpers for messages that end up as a single log line, error line or 502 body.

Imports nothing from the package, so any module (config, tls, ...) can use it without a cycle.
"""

from __future__ import annotations

import re

__all__ = ["one_line"]

# Every character str.splitlines() breaks on, so no log reader can see two lines where we
# wrote one. Whitespace inside a line is kept: messages quote user values with repr(), and
# squeezing "a  b" to "a b" there would misquote them.
_BREAK = re.compile(r"\s*[\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029]\s*")


def one_line(text: str, limit: int | None = None) -> str:
    """*text* with each line break (and the whitespace around it) turned into one space.

    Leading and trailing whitespace is dropped. With *limit*, a longer result is cut to
    *limit* characters ending in ``...``, so a runaway message cannot flood a log.
    """
    text = _BREAK.sub(" ", text).strip()
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - 3)] + "..."
    return text
