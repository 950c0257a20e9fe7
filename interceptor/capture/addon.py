"""Capture as an addon: every finished flow becomes a FlowRecord for the store's writer thread.

It listens to `flow_end` only, so it never holds up an exchange and never makes a body be
buffered. What it stores of bodies is what the proxy held anyway (for a request/response
hook), cut to `[capture] body_limit`; taps on streamed bodies come next.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime

from ..hosts import HostPatterns
from ..http import HTTPFlow, Message
from .store import FlowRecord, Writer

REDACTED = "<redacted>"


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
        self.include = HostPatterns(tuple(include))
        self.exclude = HostPatterns(tuple(exclude))
        self.redact = frozenset(name.lower() for name in redact)

    def flow_end(self, flow: HTTPFlow) -> None:
        """Record one finished flow."""
        req = flow.request
        host = req.host if req is not None else None
        if host is not None:
            if self.include and not self.include.matches(host):
                return
            if self.exclude and self.exclude.matches(host):
                return
        self.writer.put(self.record(flow))

    def record(self, flow: HTTPFlow) -> FlowRecord:
        """What is stored of `flow` (heads as strings, bodies cut, timings)."""
        req, resp = flow.request, flow.response
        client = flow.client_conn
        timings = {"start": flow.timestamp_created}
        rec = FlowRecord(
            id=flow.id,
            kind="http",
            started=flow.timestamp_created,
            ended=self.clock.seconds(),
            client=client.address_text,
            status=flow.status,
            error=flow.error.msg if flow.error is not None else None,
            request_size=flow.bytes_in,
            response_size=flow.bytes_out,
            timings=timings,
            is_replay=flow.is_replay,
        )
        if client.tls_established:
            rec.client_tls = _tls(client)
        if req is not None:
            rec.method = req.method
            rec.url = req.url if req.method != "CONNECT" else f"{req.host}:{req.port}"
            rec.host = req.host
            rec.http_version = req.http_version
            rec.request_headers = self._heads(req)
            rec.request_body, rec.request_cut = self._body(req)
            if req.timestamp_end is not None:
                timings["request_end"] = req.timestamp_end
            if req.method == "CONNECT":
                rec.kind = "connect"
            elif client.tls_established:
                rec.kind = "intercepted"
        server = flow._server_leg
        if server is not None:
            conn = flow.server_conn
            peer = conn.peername
            rec.server = f"{peer[0]}:{peer[1]}" if peer else None
            if conn.tls_established:
                rec.server_tls = _tls(conn)
        if resp is not None:
            rec.reason = resp.reason
            rec.response_headers = self._heads(resp)
            rec.response_body, rec.response_cut = self._body(resp)
            timings["response_start"] = resp.timestamp_start
        timings["end"] = rec.ended
        return rec

    def _heads(self, message: Message) -> list[tuple[str, str]]:
        redact = self.redact
        return [
            (n.decode("latin-1"), REDACTED if n.lower().decode("latin-1") in redact else
             v.decode("latin-1"))
            for n, v in message.headers.fields
        ]  # fmt: skip

    def _body(self, message: Message) -> tuple[bytes | None, bool]:
        raw = message.raw_content
        if raw is None:
            return None, False
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
