"""What the HTTP/1.1 readers produce: message heads, body pieces, ends, refusals. No I/O.

Each event is a small `__slots__` object (a body piece is just its bytes), dispatched on its
type (`type(event) is Body`): as cheap as the `(int, payload)` tuples they replace, and the type
checker sees every payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

Headers = list[tuple[bytes, bytes]]
ExtraHeaders = Sequence[tuple[bytes, bytes]]  # headers we add to an answer of our own


class Framing(Enum):
    """How a message body is delimited on the wire."""

    NO_BODY = "no_body"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until_close"  # a response body that ends when the upstream closes


NO_BODY = Framing.NO_BODY
LENGTH = Framing.LENGTH
CHUNKED = Framing.CHUNKED
UNTIL_CLOSE = Framing.UNTIL_CLOSE


class ProtocolError(Exception):
    """A message we refuse, with the status to answer and a one-line reason (also an event)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class RequestHead:
    """A parsed request head, as the parser saw it (headers in order, names as sent)."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "framing", "upgrade")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        framing: Framing,
        upgrade: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing
        # The Upgrade header's value when llhttp saw a valid upgrade request (Connection:
        # upgrade); the connection then switches protocols if the origin answers 101.
        self.upgrade = upgrade


class ResponseHead:
    """A parsed final response head."""

    __slots__ = ("status", "reason", "version", "headers", "keep_alive", "framing")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        framing: Framing,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing


class Interim:
    """A 1xx interim response (never with a body) ahead of the final one."""

    __slots__ = ("head",)

    def __init__(self, head: ResponseHead) -> None:
        self.head = head


class Upgraded:
    """101 Switching Protocols: what follows (TunnelData) is the new protocol's."""

    __slots__ = ("head",)

    def __init__(self, head: ResponseHead) -> None:
        self.head = head


# A piece of a message body (already de-chunked) is its bytes: bytes is a type of its own among
# the events, and a wrapper would cost an allocation per piece on the hot path.
Body = bytes


class EndOfMessage:
    """The current message is complete (one shared instance: END)."""

    __slots__ = ()


END = EndOfMessage()


class TunnelData:
    """Bytes after a CONNECT, Upgrade or 101 head: not HTTP (maybe a pipelined ClientHello)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


RequestEvent = RequestHead | Body | EndOfMessage | TunnelData | ProtocolError
ResponseEvent = ResponseHead | Interim | Upgraded | Body | EndOfMessage | TunnelData | ProtocolError
