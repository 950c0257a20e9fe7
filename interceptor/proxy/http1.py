"""HTTP/1.1 framing in both directions, through llhttp (httptools). No I/O.

Readers turn bytes into a flat list of events that the session consumes at its own pace, which is
what lets a client pipeline requests while we are still answering the first one. Writers turn heads
back into bytes. Everything the parser accepts but a proxy must not (unknown transfer codings,
versions other than 1.0/1.1, oversized heads) is rejected here, so the session only ever sees
messages whose framing we and the upstream agree on.
"""

from __future__ import annotations

from typing import Any

import httptools

MAX_HEAD = 64 * 1024

# Event kinds. Events are (kind, payload) tuples: cheap to make, cheap to dispatch on.
HEAD = 0  # payload: RequestHead / ResponseHead
BODY = 1  # payload: bytes (already de-chunked)
END = 2  # payload: None
TUNNEL = 3  # payload: bytes after a CONNECT/Upgrade head (maybe a pipelined TLS ClientHello)
ERROR = 4  # payload: ProtocolError
INFO = 5  # payload: ResponseHead of a 1xx interim response
UPGRADED = 6  # payload: ResponseHead of a 101 Switching Protocols (then TUNNEL with the rest)

Event = tuple[int, Any]

# Framing of a message body.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

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


class ProtocolError(Exception):
    """A message we refuse, with the status to answer and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class RequestHead:
    """A parsed request head, as the parser saw it (headers in order, names as sent)."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "framing",
        "length",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        framing: int,
        length: int,
        upgrade: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing
        self.length = length
        # The Upgrade header's value when llhttp saw a valid upgrade request (Connection:
        # upgrade); the connection then switches protocols if the origin answers 101.
        self.upgrade = upgrade


class ResponseHead:
    """A parsed response head."""

    __slots__ = ("status", "reason", "version", "headers", "keep_alive", "framing", "length")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        framing: int,
        length: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing
        self.length = length


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, bool]:
    """(framing, content length, has Transfer-Encoding) from headers llhttp already validated."""
    length = -1
    chunked = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding":
            # llhttp accepts any coding list ending in chunked; we forward bodies de-chunked, so a
            # coding we would have to pass through untouched (gzip, chunked) cannot be honoured.
            if value.strip().lower() != b"chunked":
                raise ProtocolError(400, "unsupported Transfer-Encoding")
            chunked = True
    if chunked:
        return CHUNKED, -1, True
    if length >= 0:
        return LENGTH, length, False
    return NO_BODY, -1, False


class _Reader:
    """Shared llhttp callback plumbing for both directions."""

    _too_big = ProtocolError(431, "request head larger than 64 KiB")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        # A head has begun and not finished (the client's header timeout applies meanwhile).
        self.in_head = False
        self._fed_in_head = 0
        self._error: ProtocolError | None = None

    def on_message_begin(self) -> None:
        self._headers = []
        self._head_size = 0
        self.in_head = True
        self._fed_in_head = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._error = self._too_big
            raise self._error
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.events.append((BODY, body))

    def _feed(self, parser: Any, data: bytes) -> None:
        # llhttp keeps no limit of its own on a head that never ends; count the bytes fed while a
        # head is open so a peer cannot grow one without bound.
        was_in_head = self.in_head
        parser.feed_data(data)
        if self.in_head:
            self._fed_in_head = self._fed_in_head + len(data) if was_in_head else len(data)
            if self._fed_in_head > MAX_HEAD:
                raise self._too_big


_VERSIONS = frozenset({"1.1", "1.0"})


class RequestReader(_Reader):
    """Client bytes in, request events out (`events`, drained by the caller)."""

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self.closed = False  # no more requests will be read (close, error, tunnel)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._error = self._too_big
            raise self._error

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in _VERSIONS:
            self._error = ProtocolError(505, f"HTTP/{version} is not supported")
            raise self._error
        try:
            framing, length, _ = _framing(self._headers)
        except ProtocolError as e:
            self._error = e
            raise
        self.events.append(
            (
                HEAD,
                RequestHead(
                    parser.get_method(),
                    self._url,
                    version,
                    self._headers,
                    parser.should_keep_alive(),
                    framing,
                    length,
                    upgrade_value(self._headers) if parser.should_upgrade() else b"",
                ),
            )
        )

    def on_message_complete(self) -> None:
        self.events.append((END, None))

    def feed(self, data: bytes) -> None:
        """Parse `data`, appending events; a refused message ends in one ERROR event."""
        if self.closed:
            return
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as upgrade:
            # CONNECT, or an Upgrade request: what follows the head is not HTTP (or not yet:
            # an origin may still refuse the upgrade, and then this connection closes).
            self.closed = True
            self.events.append((TUNNEL, data[upgrade.args[0] :]))
        except ProtocolError as e:
            self._fail(e)
        except httptools.HttpParserError as e:
            self._fail(self._error or _parser_error(e))
        else:
            last = self.events[-1] if self.events else None
            if last is not None and last[0] == END and not self._parser.should_keep_alive():
                self.closed = True  # llhttp refuses data after a non-persistent message anyway

    def _fail(self, error: ProtocolError) -> None:
        self.closed = True
        self.events.append((ERROR, error))


def upgrade_value(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The Upgrade header's value (b"" if there is none)."""
    for name, value in headers:
        if name.lower() == b"upgrade":
            return value
    return b""


def _parser_error(e: Exception) -> ProtocolError:
    text = str(e) or type(e).__name__
    # llhttp's words for a well-formed but unknown version; a malformed one stays a 400.
    if text == "Invalid HTTP version":
        return ProtocolError(505, "HTTP version not supported")
    return ProtocolError(400, f"malformed request: {text}")


class ResponseReader(_Reader):
    """Upstream bytes in, response events out. One outstanding request at a time."""

    _too_big = ProtocolError(502, "upstream response head larger than 64 KiB")

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self.head_only = False  # the request was HEAD: llhttp cannot be told, so we cut it short
        self.head_done = False
        self.spurious = False  # bytes arrived that no request asked for: never reuse this one

    def expect(self, head_only: bool) -> None:
        """Arm for the response to the request about to be sent."""
        self.head_only = head_only
        self.head_done = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        status = parser.get_status_code()
        version = parser.get_http_version()
        if not 100 <= status <= 599:
            self._error = ProtocolError(502, f"upstream sent invalid status {status:03d}")
            raise self._error
        try:
            framing, length, has_te = _framing(self._headers)
        except ProtocolError:
            self._error = ProtocolError(502, "upstream sent an unsupported Transfer-Encoding")
            raise self._error from None
        if status < 200 and status != 101 and framing != NO_BODY:
            # A 1xx never has a body (RFC 9110 15.2), yet llhttp reads one when the head frames
            # it: relayed raw, that body would be read by the client as the next response
            # (response splitting). Refused before a byte of it is parsed.
            self._error = ProtocolError(502, f"upstream sent a {status} response with a body")
            raise self._error
        if status < 200:
            kind = UPGRADED if status == 101 else INFO
            self.events.append(
                (kind, ResponseHead(status, self._reason, version, self._headers, True, 0, -1))
            )
            return
        if self.head_only or status in (204, 304):
            framing = NO_BODY
        elif framing == NO_BODY:
            framing = UNTIL_CLOSE
        self.head_done = True
        self.events.append(
            (
                HEAD,
                ResponseHead(
                    status,
                    self._reason,
                    version,
                    self._headers,
                    parser.should_keep_alive() and framing != UNTIL_CLOSE,
                    framing,
                    length,
                ),
            )
        )
        if self.head_only:
            self.events.append((END, None))

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            self.spurious = True
            return
        self.events.append((BODY, body))

    def on_message_complete(self) -> None:
        if self.head_only:
            return
        if self.head_done:
            self.events.append((END, None))

    def feed(self, data: bytes) -> None:
        """Parse upstream bytes, appending events; garbage ends in one ERROR event."""
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as upgrade:
            # 101 Switching Protocols: the rest is the new protocol's, relayed opaquely.
            self.events.append((TUNNEL, data[upgrade.args[0] :]))
        except ProtocolError as e:
            self.events.append((ERROR, e))
        except httptools.HttpParserError as e:
            err = self._error or ProtocolError(502, f"malformed upstream response: {e}")
            self.events.append((ERROR, err))
        if self.head_only and self.head_done:
            # llhttp may be waiting for a body that a HEAD response never has: start afresh.
            self._parser = httptools.HttpResponseParser(self)
            self.head_only = False


def strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones, including those the Connection header names."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name.lower() == b"connection":
            if named is None:
                named = set()
            named.update(t.strip().lower() for t in value.split(b","))
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or (named and lname in named):
            continue
        out.append((name, value))
    return out


def serialize_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 request head."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_response(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], version: bytes = b"HTTP/1.1"
) -> bytes:
    """A response head."""
    parts = [version, b" %d " % status, reason, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def simple_response(status: int, reason: str, text: str, close: bool) -> bytes:
    """A complete small plain-text response (our own errors and pages)."""
    body = (text + "\n").encode("utf-8", "replace")
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return serialize_response(status, reason.encode("latin-1"), headers) + body
