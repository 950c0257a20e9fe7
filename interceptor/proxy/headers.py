"""Which headers go where: the hop-by-hop ones stop at the proxy (RFC 9110 7.6.1), ours are
added. No I/O; the readers and writer in http1 use these."""

from __future__ import annotations

from .events import CHUNKED, Headers, RequestHead

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Header names are lowered only when their length could make them one we drop: most headers
# of a request or response are none of these, and this runs for every header.
_HOP_LENGTHS = frozenset(len(name) for name in HOP_BY_HOP)


def upgrade_value(headers: Headers) -> bytes:
    """The Upgrade header's value (b"" if there is none)."""
    for name, value in headers:
        if name.lower() == b"upgrade":
            return value
    return b""


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Headers minus hop-by-hop ones, including those the Connection header names."""
    out = []
    named: set[bytes] | None = None
    for name, value in headers:
        if len(name) in _HOP_LENGTHS:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    tokens = {t.strip().lower() for t in value.split(b",")} - _NOT_NAMES
                    named = tokens if named is None else named | tokens
                continue
        out.append((name, value))
    if named:
        # Connection names further headers to drop; they may have come before it.
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out


# Connection tokens that name no header we would still forward.
_NOT_NAMES = HOP_BY_HOP | {b"close"}


def forwarded_request_headers(
    head: RequestHead, authority: bytes, via: bytes | None
) -> Headers:
    """The headers a request goes upstream with: our Host first, no hop-by-hop ones, our Via
    (`via`: its value, if any) after any the request carried."""
    headers = [(b"Host", authority)]
    for name, value in strip_hop_by_hop(head.headers):
        if name.lower() != b"host":
            headers.append((name, value))
    if via is not None:
        headers.append((b"Via", via))
    if head.framing is CHUNKED:
        headers.append((b"Transfer-Encoding", b"chunked"))
    if head.upgrade:
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", head.upgrade)]
    return headers


def via_value(version: str, pseudonym: bytes) -> bytes:
    """What we add to Via for a message received as HTTP/`version` (RFC 9110 7.6.3)."""
    return version.encode("ascii", "replace") + b" " + pseudonym


def passed_through(headers: Headers, pseudonym: bytes) -> bool:
    """Whether a Via header names `pseudonym` as a recipient: the message came through us."""
    for name, value in headers:
        if len(name) == 3 and name.lower() == b"via":
            for hop in value.split(b","):
                # received-protocol RWS received-by [ RWS comment ]
                parts = hop.split()
                if len(parts) >= 2 and parts[1] == pseudonym:
                    return True
    return False


def max_forwards(headers: Headers) -> int | None:
    """The Max-Forwards value (RFC 9110 7.6.2), or None if absent or not a number."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"max-forwards":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


def with_max_forwards(headers: Headers, hops: int) -> Headers:
    """`headers` with Max-Forwards set to `hops`."""
    return [
        (name, b"%d" % hops) if name.lower() == b"max-forwards" else (name, value)
        for name, value in headers
    ]


# Not echoed by TRACE (RFC 9110 9.3.8: exclude fields likely to carry sensitive data).
_NOT_TRACED = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


def traceable(headers: Headers) -> Headers:
    """The headers a TRACE answer may echo."""
    return [(name, value) for name, value in headers if name.lower() not in _NOT_TRACED]


def proxy_authorization(headers: Headers) -> bytes | None:
    """The Proxy-Authorization value (the client's credentials for us), if any."""
    for name, value in headers:
        if len(name) == 19 and name.lower() == b"proxy-authorization":
            return value
    return None


def content_length(headers: Headers) -> int | None:
    """The Content-Length value, or None if absent or not a number."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


def with_length(headers: Headers, length: int | None) -> Headers:
    """`headers` framed by `length` (None: by nothing, for bodies whose end comes later): no
    Content-Length or Transfer-Encoding but the one we set."""
    out = [
        (name, value)
        for name, value in headers
        if not (len(name) in (14, 17) and name.lower() in _FRAMING)
    ]
    if length is not None:
        out.append((b"Content-Length", b"%d" % length))
    return out


def reframed(headers: Headers, length: int | None, chunked: bool) -> Headers:
    """`headers` saying what frames the body we send (`length`, or chunks, or neither):
    `headers` themselves if they already do, else rebuilt as with_length does.

    For heads an addon had in hand: a Content-Length or Transfer-Encoding it changed on a body
    that streams past it would make the peer read the next message into this one (request
    smuggling upstream, response splitting toward the client)."""
    found = [
        (name.lower(), value.strip().lower())
        for name, value in headers
        if len(name) in (14, 17) and name.lower() in _FRAMING
    ]
    expected = [(b"content-length", b"%d" % length)] if length is not None else []
    if chunked:
        expected.append((b"transfer-encoding", b"chunked"))
    if found == expected:
        return headers
    out = with_length(headers, length)
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    return out


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
