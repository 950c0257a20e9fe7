"""HTTP/1.1 in both directions through llhttp (httptools): readers and the writer. No I/O.

Readers turn bytes into a flat list of typed events (`events`) that the session consumes at its
own pace, which is what lets a client pipeline requests while we are still answering the first
one. Everything the parser accepts but a proxy must not (unknown transfer codings, versions other
than 1.0/1.1, oversized heads, a 1xx with a body) is refused here, so the session only ever sees
messages whose framing we and the upstream agree on. The writer turns heads and body pieces back
into bytes, so no other module formats HTTP.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httptools

from .events import (
    CHUNKED,
    END,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ExtraHeaders,
    Framing,
    Headers,
    Interim,
    ProtocolError,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    TunnelData,
    Upgraded,
)
from .headers import strip_hop_by_hop, traceable, upgrade_value

MAX_HEAD = 64 * 1024


class _Reader:
    """Shared llhttp callback plumbing for both directions."""

    _too_big = ProtocolError(431, "request head larger than 64 KiB")

    def __init__(self) -> None:
        self._headers: Headers = []
        self._head_size = 0
        # A head has begun and not finished (the client's header timeout applies meanwhile).
        self.in_head = False
        self._fed_in_head = 0
        self._error: ProtocolError | None = None
        self._length = self._chunked = self._other_coding = False
        self._hosts = 0

    def on_message_begin(self) -> None:
        self._headers = []
        self._head_size = 0
        self.in_head = True
        self._fed_in_head = 0
        self._length = self._chunked = self._other_coding = False
        self._hosts = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        self._head_size += n + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._error = self._too_big
            raise self._error
        self._headers.append((name, value))
        if n == 14 or n == 17:  # the lengths of content-length and transfer-encoding
            lname = name.lower()
            if lname == b"content-length":
                self._length = True
            elif lname == b"transfer-encoding":
                # llhttp accepts any coding list ending in chunked; we forward bodies
                # de-chunked, so a coding we would have to pass through untouched (gzip,
                # chunked) cannot be honoured.
                if value.strip().lower() == b"chunked":
                    self._chunked = True
                else:
                    self._other_coding = True
        elif n == 4 and name.lower() == b"host":
            self._hosts += 1

    def _framing(self) -> Framing:
        """The body framing of the head just read (llhttp validated Content-Length)."""
        if self._other_coding:
            raise ProtocolError(400, "unsupported Transfer-Encoding")
        if self._chunked:
            return CHUNKED
        return LENGTH if self._length else NO_BODY

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
        self.events: list[RequestEvent] = []
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self.closed = False  # no more requests will be read (close, error, tunnel)
        self._persistent = True  # the last complete request left the connection open

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
        if self._hosts != 1 and (self._hosts or version == "1.1"):
            # Two: which one names the target is ambiguous; none on 1.1: the client is broken
            # (RFC 9112 3.2: 400 for both). HTTP/1.0 had no Host to require.
            self._error = ProtocolError(
                400, "more than one Host header" if self._hosts else "no Host header"
            )
            raise self._error
        try:
            framing = self._framing()
        except ProtocolError as e:
            self._error = e
            raise
        self.events.append(
            RequestHead(
                parser.get_method(),
                self._url,
                version,
                self._headers,
                parser.should_keep_alive(),
                framing,
                upgrade_value(self._headers) if parser.should_upgrade() else b"",
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        # Asked now: once the message is complete llhttp forgets what its head said, and an
        # HTTP/1.0 request with Connection: keep-alive would read as the connection's last.
        self._persistent = self._parser.should_keep_alive()
        self.events.append(END)

    def feed(self, data: bytes) -> None:
        """Parse `data`, appending events; a refused message ends in one ProtocolError."""
        if self.closed:
            return
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as upgrade:
            # CONNECT, or an Upgrade request: what follows the head is not HTTP (or not yet:
            # an origin may still refuse the upgrade, and then this connection closes).
            self.closed = True
            self.events.append(TunnelData(data[upgrade.args[0] :]))
        except ProtocolError as e:
            self._fail(e)
        except httptools.HttpParserError as e:
            self._fail(self._error or _parser_error(e))
        else:
            if self.events and self.events[-1] is END and not self._persistent:
                self.closed = True  # llhttp refuses data after a non-persistent message anyway

    def _fail(self, error: ProtocolError) -> None:
        self.closed = True
        self.events.append(error)


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
        self.events: list[ResponseEvent] = []
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self.head_only = False  # the request was HEAD: llhttp cannot be told, so we cut it short
        self.head_done = False
        self.spurious = False  # bytes arrived that no request asked for: never reuse this one
        self._owed = False  # a request was sent and its final response has not ended yet

    def expect(self, head_only: bool) -> None:
        """Arm for the response to the request about to be sent."""
        self.head_only = head_only
        self.head_done = False
        self._owed = True

    def on_message_begin(self) -> None:
        if not self._owed:
            # A response nobody asked for: what follows a 204 or 304 (which llhttp ends at
            # the head) or a response after the last one. The next request on this
            # connection would read it as its answer.
            self.spurious = True
            self._error = ProtocolError(502, "upstream sent bytes after its response")
            raise self._error
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
            framing = self._framing()
        except ProtocolError:
            self._error = ProtocolError(502, "upstream sent an unsupported Transfer-Encoding")
            raise self._error from None
        if status < 200 and status != 101 and framing is not NO_BODY:
            # A 1xx never has a body (RFC 9110 15.2), yet llhttp reads one when the head frames
            # it: relayed raw, that body would be read by the client as the next response
            # (response splitting). Refused before a byte of it is parsed.
            self._error = ProtocolError(502, f"upstream sent a {status} response with a body")
            raise self._error
        if status < 200:
            head = ResponseHead(status, self._reason, version, self._headers, True, NO_BODY)
            self.events.append(Upgraded(head) if status == 101 else Interim(head))
            return
        if self.head_only or status in (204, 304):
            framing = NO_BODY
        elif framing is NO_BODY:
            framing = UNTIL_CLOSE
        self.head_done = True
        keep_alive = parser.should_keep_alive() and framing is not UNTIL_CLOSE
        self.events.append(
            ResponseHead(status, self._reason, version, self._headers, keep_alive, framing)
        )
        if self.head_only:
            self._owed = False
            self.events.append(END)

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            self.spurious = True
            return
        self.events.append(body)

    def on_message_complete(self) -> None:
        if self.head_only:
            return
        if self.head_done:
            self._owed = False
            self.events.append(END)

    def feed(self, data: bytes) -> None:
        """Parse upstream bytes, appending events; garbage ends in one ProtocolError."""
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as upgrade:
            # 101 Switching Protocols: the rest is the new protocol's, relayed opaquely.
            self.events.append(TunnelData(data[upgrade.args[0] :]))
        except ProtocolError as e:
            self.events.append(e)
        except httptools.HttpParserError as e:
            self.events.append(
                self._error or ProtocolError(502, f"malformed upstream response: {e}")
            )
        if self.head_only and self.head_done:
            # llhttp may be waiting for a body that a HEAD response never has: start afresh.
            self._parser = httptools.HttpResponseParser(self)
            self.head_only = False


# -- the writer ------------------------------------------------------------------------------


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """An HTTP/1.1 request head."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """An HTTP/1.1 response head."""
    parts = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def client_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    framing: Framing,
    http10: bool,
    keep_alive: bool,
) -> tuple[bytes, Framing, bool]:
    """A response head for the client: (bytes, how its body is framed, still keep-alive).

    Bodies whose end we only learn as it comes (chunked, close-delimited) are re-chunked for
    HTTP/1.1 clients; HTTP/1.0 clients never get chunks, so for them the close ends the body.
    """
    out = framing
    if framing is CHUNKED or framing is UNTIL_CLOSE:
        if http10:
            out = UNTIL_CLOSE
            keep_alive = False
        else:
            out = CHUNKED
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
            headers.append((b"Transfer-Encoding", b"chunked"))
    # New lists where something is added: the hooks' copy of the headers stays as they left it.
    if not keep_alive:
        headers = [*headers, (b"Connection", b"close")]
    elif http10:
        headers = [*headers, (b"Connection", b"keep-alive")]
    return response_head(status, reason, headers), out, keep_alive


def switching_protocols(head: ResponseHead) -> bytes:
    """The 101 for the client, naming the protocol the origin switched to."""
    headers = strip_hop_by_hop(head.headers)
    headers += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade_value(head.headers))]
    return response_head(101, head.reason, headers)


CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def body_piece(data: bytes, framing: Framing) -> bytes:
    """`data` as it goes on the wire in `framing`."""
    if framing is CHUNKED:
        return b"%x\r\n%s\r\n" % (len(data), data)
    return data


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for `status` ("Status" for codes the registry lacks)."""
    try:
        return HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b"Status"


def local_response(
    status: int, content_type: bytes, body: bytes, close: bool, extra: ExtraHeaders = ()
) -> bytes:
    """A complete response we make ourselves (errors, pages, answers from hooks)."""
    headers = [(b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body)), *extra]
    if close:
        headers.append((b"Connection", b"close"))
    return response_head(status, reason_phrase(status), headers) + body


TEXT = b"text/plain; charset=utf-8"

# What we answer to OPTIONS as its final recipient (Max-Forwards: 0).
ALLOW = [(b"Allow", b"GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH")]


def trace_echo(head: RequestHead) -> bytes:
    """The body of a TRACE answer: the request as received (message/http)."""
    return request_head(head.method, head.target, traceable(head.headers))


def error_body(text: str, request_id: str) -> bytes:
    """The body of an error of ours: why, in exactly one line, with the request id that finds
    the exchange in the access log and the capture store."""
    return f"{text} (request id {request_id})\n".encode("utf-8", "replace")
