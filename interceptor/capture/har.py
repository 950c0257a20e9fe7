"""HAR 1.2 export of stored flows (http://www.softwareishard.com/blog/har-12-spec/).

The log is written as the rows are read: each entry goes out as soon as its row comes off the
cursor and nothing is kept, so a store of a million flows exports in constant memory. The
mapping (what docs/capture.md says of it):

* Bodies are stored as sent; a whole one is decoded per Content-Encoding (`compression` says
  how many bytes that saved), a cut one (`[capture] body_limit`) is left as it is and marked
  `_truncated`. Text that is not printable UTF-8 is base64 (`encoding`, or `_encoding` in
  postData, where the spec has no such field). A body that was not stored has no `text`.
* Timings are cut from the stored stamps so that they tile the flow: none is negative and
  `time` is their sum. `connect` includes `ssl`, as the spec says; a flow on a pooled upstream
  connection has neither, nor `blocked`. DNS is not measured (-1).
* Passthrough tunnels and WebSocket relays are entries too, with `_bytes_up`/`_bytes_down`
  and bodySize -1 (their bytes are not a body). A CONNECT's target has no scheme and HAR wants
  a URL, so it is written `tcp://host:port`. A flow without a request has no URL at all and
  is left out.
"""

from __future__ import annotations

import base64
import email.utils
import http.cookies
import ipaddress
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

from .. import __version__
from .rows import as_text, decode_body, header, heads, iso_time, timings

_TUNNELS = frozenset({"passthrough", "websocket"})


def write_har(rows: Iterable[sqlite3.Row], out: TextIO) -> int:
    """Write the HAR log of `rows` to `out`, one entry as each row is read; the entry count.

    A flow without a request (a client whose head did not parse) has no URL, which HAR
    requires of every entry: it is left out."""
    creator = json.dumps({"name": "interceptor", "version": __version__})
    out.write(f'{{"log": {{"version": "1.2", "creator": {creator}, "entries": [\n')
    count = 0
    for row in rows:
        if row["url"] is None:
            continue
        out.write(",\n" if count else "")
        out.write(json.dumps(entry(row), separators=(",", ":")))
        count += 1
    out.write("\n]}}\n")
    return count


def write_har_file(rows: Iterable[sqlite3.Row], path: str) -> int:
    """`write_har` to the file `path`; the entry count.

    The log goes to a temporary file beside `path`, created mode 0600 (it holds decrypted
    traffic, as the store does), renamed over `path` once complete: an export that fails
    half-way leaves no half log behind."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".har")
    try:
        with open(fd, "w", encoding="utf-8") as out:
            count = write_har(rows, out)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return count


def entry(row: sqlite3.Row) -> dict[str, Any]:
    """The HAR entry of one stored flow."""
    tunnel = row["kind"] in _TUNNELS
    url = _url(row["method"], row["url"])
    stamps = timings(row)
    phases = _timings(stamps, row["started"], row["ended"])
    spent = (v for name, v in phases.items() if name != "ssl" and v != -1)
    found: dict[str, Any] = {
        "startedDateTime": iso_time(stamps.get("start", row["started"])),
        "time": round(sum(spent), 3),
        "request": _request(row, url, tunnel),
        "response": _response(row, tunnel),
        "cache": {},
        "timings": phases,
    }
    if row["server"]:
        host, _, port = row["server"].rpartition(":")
        host = host.strip("[]")
        if _is_ip(host):
            found["serverIPAddress"] = host
        found["connection"] = port
    found.update(
        _id=row["id"],
        _kind=row["kind"],
        _error=row["error"],
        _client=row["client"],
        _is_replay=row["is_replay"],
    )
    if tunnel:
        found.update(_bytes_up=row["request_size"], _bytes_down=row["response_size"])
    return found


def _url(method: str | None, url: str) -> str:
    if method != "CONNECT":
        return url
    host, _, port = url.rpartition(":")
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{url}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ms(seconds: float | None) -> float:
    return -1 if seconds is None else round(seconds * 1000, 3)


def _timings(stamps: Mapping[str, float], started: float, ended: float) -> dict[str, float]:
    start = stamps.get("start", started)
    end = max(stamps.get("end", ended), start)

    def at(name: str, floor: float) -> float | None:
        # Clocks are read in different places: a stamp is held between the one before it and
        # the end, so that no phase comes out negative and the phases add up to the flow.
        t = stamps.get(name)
        return None if t is None else min(max(t, floor), end)

    blocked = connect = ssl = None
    ready = start  # when the request could go out on the upstream connection
    tcp_start = at("tcp_start", start)
    if tcp_start is not None:
        blocked = tcp_start - start
        tcp_done = at("tcp_done", tcp_start)
        tls_done = at("tls_done", tcp_start if tcp_done is None else tcp_done)
        if tcp_done is not None and tls_done is not None:
            ssl = tls_done - tcp_done
        # A connect that never completed took what was left of the flow.
        ready = next((t for t in (tls_done, tcp_done) if t is not None), end)
        connect = ready - tcp_start
    sent = at("request_end", ready)
    sent = ready if sent is None else sent
    answered = at("response_start", sent)
    answered = end if answered is None else answered
    return {
        "blocked": _ms(blocked),
        "dns": -1,
        "connect": _ms(connect),
        "ssl": _ms(ssl),
        "send": _ms(sent - ready),
        "wait": _ms(answered - sent),
        "receive": _ms(end - answered),
    }


@dataclass(frozen=True, slots=True)
class _Body:
    """A stored body as HAR gives it: text (or base64) if stored, and what was done to it."""

    fields: dict[str, Any]  # text, and encoding: "base64" for a binary body
    size: int  # decoded if it was decoded, else the full size on the wire
    compression: int | None = None


def _body(body: bytes | None, size: int, cut: bool, pairs: Sequence[tuple[str, str]]) -> _Body:
    if body is None:
        return _Body({}, size)
    if cut:
        return _Body({**_text(body), "_truncated": True}, size)
    decoded, failure = decode_body(body, pairs)
    if failure is not None:
        return _Body({**_text(body), "comment": f"not decoded: {failure}"}, size)
    if header(pairs, "content-encoding"):
        return _Body(_text(decoded), len(decoded), len(decoded) - len(body))
    return _Body(_text(body), size)


def _text(body: bytes) -> dict[str, Any]:
    text = as_text(body)
    if text is not None:
        return {"text": text}
    return {"text": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def _named(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _request(row: sqlite3.Row, url: str, tunnel: bool) -> dict[str, Any]:
    pairs = heads(row["request_headers"])
    cookies = _cookies(value for name, value in pairs if name.lower() == "cookie")
    found: dict[str, Any] = {
        "method": row["method"] or "",
        "url": url,
        "httpVersion": row["http_version"] or "",
        "cookies": [{"name": m.key, "value": m.value} for m in cookies],
        "headers": _named(pairs),
        "queryString": _named(parse_qsl(urlsplit(url).query, keep_blank_values=True)),
        "headersSize": -1,
        "bodySize": -1 if tunnel else row["request_size"],
    }
    if not tunnel and (row["request_size"] or row["request_body"]):
        body = _body(row["request_body"], row["request_size"], row["request_cut"], pairs)
        post = {"mimeType": header(pairs, "content-type"), **body.fields}
        if "encoding" in post:
            post["_encoding"] = post.pop("encoding")
        found["postData"] = post
    return found


def _response(row: sqlite3.Row, tunnel: bool) -> dict[str, Any]:
    pairs = heads(row["response_headers"])
    body = _body(row["response_body"], row["response_size"], row["response_cut"], pairs)
    content: dict[str, Any] = {"size": body.size, "mimeType": header(pairs, "content-type")}
    if body.compression is not None:
        content["compression"] = body.compression
    content.update(body.fields)
    return {
        "status": row["status"],
        "statusText": row["reason"] or "",
        # The store keeps one version a flow, the request's: HTTP/1.1 is answered in kind.
        "httpVersion": (row["http_version"] or "") if row["status"] else "",
        "cookies": [
            _set_cookie(m) for m in _cookies(v for n, v in pairs if n.lower() == "set-cookie")
        ],
        "headers": _named(pairs),
        "content": content,
        "redirectURL": header(pairs, "location"),
        "headersSize": -1,
        "bodySize": -1 if tunnel else row["response_size"],
    }


def _cookies(values: Iterable[str]) -> list[http.cookies.Morsel[str]]:
    found: list[http.cookies.Morsel[str]] = []
    for value in values:
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(value)
        except http.cookies.CookieError:
            continue  # the header is kept in `headers` all the same
        found.extend(jar.values())
    return found


def _set_cookie(morsel: http.cookies.Morsel[str]) -> dict[str, Any]:
    cookie: dict[str, Any] = {"name": morsel.key, "value": morsel.value}
    for key in ("path", "domain"):
        if morsel[key]:
            cookie[key] = morsel[key]
    if morsel["expires"]:
        try:
            cookie["expires"] = iso_time(
                email.utils.parsedate_to_datetime(morsel["expires"]).timestamp()
            )
        except (TypeError, ValueError):
            pass  # not a date: HAR wants ISO 8601, and the header has it as sent
    cookie["httpOnly"] = bool(morsel["httponly"])
    cookie["secure"] = bool(morsel["secure"])
    return cookie
