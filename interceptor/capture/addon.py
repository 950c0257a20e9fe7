"""Capture as an addon: every finished flow becomes a FlowRecord for the store's writer thread.

It listens to the proxy's own events `flow_end` (an exchange is over) and `tunnel_end` (a
passthrough tunnel or a WebSocket relay is over), so it never holds up an exchange and never
makes a body be buffered. Bodies are what was sent on: the whole body when the proxy held it
for a request/response hook, else the first `[capture] body_limit` bytes copied as it streamed
(`tap_bodies` asks the exchange for that copy), cut and marked beyond the limit.

A request carrying `X-Interceptor-Replay` (as `interceptor flows replay` sends) is a replay: the
header goes no further, and the flow is stored with `is_replay = "request"`.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime

from ..hosts import HostPatterns
from ..http import HTTPFlow, Message
from .store import FlowRecord, Writer

REDACTED = "<redacted>"
_REDACTED = REDACTED.encode("ascii")
REPLAY_HEADER = "X-Interceptor-Replay"  # (what `interceptor flows replay` adds)
_REPLAY_NAME = REPLAY_HEADER.lower().encode("ascii")


class Capture:
    """Addon: hands each finished flow to the store's writer (dropped and counted if full)."""

    name = "capture"

    def __init__(
        self,
        writer: Writer,
        clock: IReactorTime,
        body_limit: int = 1 << 20,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        redact: Iterable[str] = ("proxy-authorization",),
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.body_limit = body_limit
        self.tap_bodies = body_limit  # the exchange copies this much of each streamed body
        self.include = HostPatterns(tuple(include))
        self.exclude = HostPatterns(tuple(exclude))
        self.redact = frozenset(name.lower().encode("latin-1") for name in redact)
        self._redact_lengths = frozenset(len(name) for name in self.redact)

    def requestheaders(self, flow: HTTPFlow) -> None:
        """A replay is marked, and its mark taken off before it goes upstream."""
        req = flow.request
        if req is None:
            return
        for name, _ in req.headers.fields:
            # (the length first: this looks at every request's head, and almost none has it)
            if len(name) == len(_REPLAY_NAME) and name.lower() == _REPLAY_NAME:
                del req.headers[REPLAY_HEADER]
                flow.is_replay = "request"
                return

    def flow_end(self, flow: HTTPFlow) -> None:
        """Record one finished exchange (a tunnel it opened is recorded when it is over)."""
        status = flow.status
        if status == 101 or (status == 200 and flow.raw and flow.raw[0] == b"CONNECT"):
            return  # tunnel_end has it, with its bytes (an intercepted CONNECT: its requests)
        self._put(flow, None)

    def tunnel_end(self, flow: HTTPFlow) -> None:
        """Record a passthrough tunnel or a WebSocket relay, with the bytes each way."""
        self._put(flow, "websocket" if flow.status == 101 else "passthrough")

    def _put(self, flow: HTTPFlow, kind: str | None) -> None:
        req = flow.request
        host = req.host if req is not None else None
        if host is not None:
            if self.include and not self.include.matches(host):
                return
            if self.exclude and self.exclude.matches(host):
                return
        rec = self.record(flow)
        if kind is not None:
            rec.kind = kind
        self.writer.put(rec)

    def record(self, flow: HTTPFlow) -> FlowRecord:
        """What is stored of `flow` (heads as text blocks, bodies cut, timings).

        This runs in the reactor for every flow: it copies references and joins bytes, and
        leaves every encoding (text, JSON) to the writer thread."""
        req, resp = flow.request, flow.response
        client = flow.client_conn
        started = flow.timestamp_created
        ended = self.clock.seconds()
        timings = {"start": started, "end": ended}
        client_tls = client.tls_established
        rec = FlowRecord(
            flow.id,
            "http",
            started,
            ended,
            client.address_text,
            status=flow.status,
            error=flow.error.msg if flow.error is not None else None,
            request_size=flow.bytes_in,
            response_size=flow.bytes_out,
            timings=timings,
            is_replay=flow.is_replay,
            client_tls=_tls(client) if client_tls else None,
        )
        if req is not None:
            method = rec.method = req.method
            rec.url = req.url
            rec.host = req._host
            rec.http_version = req.http_version
            rec.request_headers = self._heads(req)
            rec.request_body, rec.request_cut = self._body(req)
            if req.timestamp_end is not None:
                timings["request_end"] = req.timestamp_end
            if method == "CONNECT":
                rec.kind = "connect"
            elif client_tls:
                rec.kind = "intercepted"
        leg = flow._server_leg
        if leg is not None:
            rec.server = leg.peer_text
            if getattr(leg, "tls", False):
                rec.server_tls = _tls(flow.server_conn)
            first_use = getattr(leg, "first_use", None)
            setup = first_use() if first_use is not None else None
            if setup is not None and setup[0] >= started:
                # This flow opened the connection: its connect and handshake are its own.
                timings["tcp_start"], tcp_done, tls_done = setup
                if tcp_done is not None:
                    timings["tcp_done"] = tcp_done
                if tls_done is not None:
                    timings["tls_done"] = tls_done
        if resp is not None:
            rec.reason = resp.reason
            rec.response_headers = self._heads(resp)
            rec.response_body, rec.response_cut = self._body(resp)
            timings["response_start"] = resp.timestamp_start
        return rec

    def _heads(self, message: Message) -> bytes:
        hidden, lengths = self.redact, self._redact_lengths
        return b"\r\n".join(
            [
                # (the length first: lower-casing every name of every flow is not free)
                n + b": " + (_REDACTED if len(n) in lengths and n.lower() in hidden else v)
                for n, v in message.headers.fields
            ]
        )

    def _body(self, message: Message) -> tuple[bytes | None, bool]:
        raw = message._content
        if raw is None:
            tap = message.tap
            return (tap.content(), tap.cut) if tap is not None else (None, False)
        if len(raw) > self.body_limit:
            return raw[: self.body_limit], True
        return raw, False


def _tls(conn: object) -> dict[str, object]:
    return {
        "version": getattr(conn, "tls_version", None),
        "sni": getattr(conn, "sni", None),
        "alpn": _text(getattr(conn, "alpn", None)),
        "cipher": getattr(conn, "cipher", None),
    }


def _text(value: object) -> object:
    return value.decode("latin-1") if isinstance(value, bytes) else value
