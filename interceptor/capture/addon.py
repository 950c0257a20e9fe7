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

import json
import operator
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ..hosts import HostPatterns
from ..http import HeaderFields, HTTPFlow, Message
from .store import NULL, Writer

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
        # A redacted field in a lower-cased head: its name just after the LF that ends the
        # line before (no value holds an LF, and the first line is never a field).
        self._needles = tuple(b"\n" + name + b":" for name in self.redact)

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
        self.writer.put_row(self.row(flow, kind))

    def row(self, flow: HTTPFlow, kind: str | None = None) -> tuple[Any, ...]:
        """What is stored of `flow` (heads as text blocks, bodies cut, timings): its row, as
        `FlowRecord.row` makes it, for `Writer.put_row`.

        This runs in the reactor for every flow, so it makes the row itself, with no record or
        dict of timings in between, and copies references: the bodies are the ones the
        exchange holds or tapped. (`kind` overrides the one the flow has.)"""
        req, resp = flow.request, flow.response
        client = flow.client_conn
        started = flow.timestamp_created
        ended = self.clock.seconds()
        client_tls = client.tls_established
        method = url = host = version = request_head = reason = response_head = None
        request_body = response_body = None
        request_cut = response_cut = False
        request_end = response_start = None
        if req is not None:
            method = req.method
            url, host, version = req.url, req._host, req.http_version
            request_head = self._wire(req.wire_head, req.headers.fields)
            request_body, request_cut = self._body(req)
            request_end = req.timestamp_end
            if kind is None:
                if method == "CONNECT":
                    kind = "connect"
                elif client_tls:
                    kind = "intercepted"
        server = None
        # (NULL where the store has NULLIF: see store.NULL)
        server_tls: str | int = NULL
        tcp_start: float | int = NULL
        tcp_done: float | int = NULL
        tls_done: float | int = NULL
        leg = flow._server_leg
        if leg is not None:
            server = leg.peer_text
            if getattr(leg, "tls", False):
                server_tls = _json(_tls(flow.server_conn))
            first_use = getattr(leg, "first_use", None)
            setup = first_use() if first_use is not None else None
            if setup is not None and setup[0] >= started:
                # This flow opened the connection: its connect and handshake are its own.
                tcp_start = setup[0]
                if setup[1] is not None:
                    tcp_done = setup[1]
                if setup[2] is not None:
                    tls_done = setup[2]
        if resp is not None:
            reason = resp.reason
            response_head = self._wire(resp.wire_head, resp.headers.fields)
            response_body, response_cut = self._body(resp)
            response_start = resp.timestamp_start
        stored = (len(request_body) if request_body is not None else 0) + (
            len(response_body) if response_body is not None else 0
        )
        error = flow.error
        is_replay = flow.is_replay
        return (
            flow.id, kind or "http", started, ended, client.address_text, server, method, url,
            host, version, request_head, NULL if request_body is None else request_body,
            flow.bytes_in, int(request_cut), flow.status, reason, response_head, response_body,
            flow.bytes_out, int(response_cut), NULL if error is None else error.msg,
            _json(_tls(client)) if client_tls else NULL, server_tls, started, tcp_start,
            tcp_done, tls_done, request_end, response_start, ended,
            NULL if is_replay is None else is_replay, stored,
        )  # fmt: skip

    def _head(self, fields: HeaderFields) -> str | None:
        """A head as its "Name: value" block (None if it has no fields)."""
        # The names' lengths first, in C: lower-casing every name of every flow is not free, and
        # almost no name is as long as a redacted one. Then the lines are joined in C too.
        if self._redact_lengths.isdisjoint(map(len, map(_name, fields))):
            block = b"\r\n".join(map(_LINE.join, fields))
        else:
            hidden = self.redact
            block = b"\r\n".join(
                [n + b": " + (_REDACTED if n.lower() in hidden else v) for n, v in fields]
            )
        return block.decode("latin-1") if block else None

    def _wire(self, head: bytes | None, fields: HeaderFields) -> str | None:
        """A message's "Name: value" block: sliced out of `head`, the bytes sent on (first
        line, fields, blank line), or made of `fields` when there is no such head or a
        redacted header is in it. The slice is made in C, where joining the fields again in
        Python cost ~1,600 instructions a field (a 12-field browser head: 11,600 instead of
        19,200; for a 3-field one the two cost the same)."""
        if head is None:
            return self._head(fields)
        if self._needles:
            lowered = head.lower()
            for needle in self._needles:
                if needle in lowered:
                    return self._head(fields)
        return head[head.find(b"\n") + 1 : -4].decode("latin-1") or None

    def _body(self, message: Message) -> tuple[bytes | None, bool]:
        raw = message._content
        if raw is None:
            tap = message.tap
            return (tap.content(), tap.cut) if tap is not None else (None, False)
        if len(raw) > self.body_limit:
            return raw[: self.body_limit], True
        return raw, False


_name = operator.itemgetter(0)
_LINE = b": "
_json = json.JSONEncoder(separators=(",", ":")).encode


def _tls(conn: object) -> dict[str, object]:
    return {
        "version": getattr(conn, "tls_version", None),
        "sni": getattr(conn, "sni", None),
        "alpn": _text(getattr(conn, "alpn", None)),
        "cipher": getattr(conn, "cipher", None),
    }


def _text(value: object) -> object:
    return value.decode("latin-1") if isinstance(value, bytes) else value
