"""One client connection's state machine: request events in, upstream and client actions out.

The session sees the client and its upstream only through `Leg` methods (write, pause, close,
abort), so it is driven in tests with in-memory transports. It consumes request events at its own
pace: the next pipelined request waits until the current response is complete, and body bytes wait
until the upstream is ready. Every ending is handed to `lifecycle.decide`, and the action comes
back here to be carried out in `_act`: the single place where peers are closed or aborted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httptools
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..addons.chain import HookChain
from ..flow import Flow, Request, Response
from ..process import Counters
from . import http1
from .http1 import (
    BODY,
    CHUNKED,
    END,
    ERROR,
    HEAD,
    INFO,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    TUNNEL,
    UNTIL_CLOSE,
    UPGRADED,
    ProtocolError,
    RequestHead,
    ResponseHead,
)
from .lifecycle import Action, Ending, Phase, Side, connect_failure, decide
from .tunnel import Tunnel
from .upstream import Key, Pool, UpstreamConnection

_MAX_QUEUED_EVENTS = 16  # pipelined/early body events held before we stop reading the client
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ProxyContext:
    """What every session of one proxy service shares."""

    def __init__(
        self,
        clock: IReactorTime,
        counters: Counters,
        pool: Pool,
        hooks: HookChain,
        idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        half_close_timeout: float = 10.0,
        intercept: Callable[[str, int], Any] | None = None,
        passthrough: Callable[[str], bool] | None = None,
        tunnel_connect: Callable[[str, int, Any], Any] | None = None,
        describe_tls_failure: Callable[[Failure], str] | None = None,
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.pool = pool
        self.hooks = hooks
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.half_close_timeout = half_close_timeout
        # intercept(host, port) -> an IOpenSSLContextFactory for the client side, or None
        self.intercept = intercept
        self.passthrough = passthrough or (lambda host: False)
        self.tunnel_connect = tunnel_connect
        self.describe_tls_failure = describe_tls_failure or (lambda f: f.getErrorMessage())
        self.sessions: set[Session] = set()
        self.draining = False


def _split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """host and port of a CONNECT target (`host:port`, `[v6]:port`), through llhttp's URL parser.

    Raises ValueError for anything that is not a valid authority (including a path or userinfo).
    """
    try:
        url = httptools.parse_url(b"http://" + authority + b"/")
    except httptools.HttpParserInvalidURLError:
        raise ValueError("malformed authority") from None
    if not url.host or url.path != b"/" or url.userinfo or url.query or url.fragment:
        raise ValueError("malformed authority")
    port = url.port or default_port
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return url.host.decode("ascii").lower(), port


def _authority(host: str, port: int, default_port: int) -> bytes:
    h = f"[{host}]" if ":" in host else host
    return (h if port == default_port else f"{h}:{port}").encode("ascii")


class Session:
    """The per-client-connection state machine."""

    def __init__(self, ctx: ProxyContext, client: Any) -> None:
        self.ctx = ctx
        self.client = client
        self.reader = http1.RequestReader()
        self.events: deque[tuple[int, Any]] = deque()
        self.flow: Flow | None = None
        self.upstream: UpstreamConnection | None = None
        self.tunnel: Any = None
        self._up_ready = False
        self._connecting: Any = None
        self._request_open = False
        self._request_done = False
        self._response_started = False
        self._response_done = False
        self._in_framing = NO_BODY  # how the upstream frames its response
        self._out_framing = NO_BODY  # how we frame it toward the client
        self._req_framing = NO_BODY
        self._request_bytes = b""
        self._request_key: Key | None = None
        self._client_http10 = False
        self._keep_alive = True
        self._intercept: tuple[str, int] | None = None
        self._paused_queue = False
        self._paused_upstream = False
        self._discard_body = False
        self._retried = False
        self._upstream_keep_alive = False
        self._upgrade_requested = False
        self.closed = False
        ctx.sessions.add(self)

    # -- phase ---------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where this connection pair is, for lifecycle decisions."""
        if self.tunnel is not None:
            return Phase.TUNNEL
        if self.flow is None:
            return Phase.IDLE
        if not self._response_started:
            return Phase.REQUEST
        if self._in_framing == UNTIL_CLOSE:
            return Phase.RESPONSE_UNTIL_CLOSE
        return Phase.RESPONSE

    @property
    def head_pending(self) -> bool:
        """A request head has begun arriving but is not complete (header timeout applies)."""
        return self.reader.in_head

    # -- client side events --------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client."""
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        reader = self.reader
        reader.feed(data)
        if reader.events:
            self.events.extend(reader.events)
            reader.events = []
            self._pump()

    def client_lost(self, ending: Ending) -> None:
        """The client connection ended (or half-closed: Ending.HALF_CLOSED)."""
        if self.tunnel is not None:
            self.tunnel.client_ended(ending)
            if ending is not Ending.HALF_CLOSED:
                self._forget()
            return
        action = decide(Side.CLIENT, ending, self.phase)
        flow = self.flow
        if flow is not None and not self._response_done:
            flow.error = f"client {ending.value}"
        self._act(action, Side.CLIENT, ending)
        if ending is not Ending.HALF_CLOSED:
            self._forget()

    def client_write_blocked(self) -> None:
        """The client's send buffer is full: stop reading the upstream."""
        if self.tunnel is not None:
            self.tunnel.client_write_blocked()
        elif self.upstream is not None:
            self.upstream.pause_reading()

    def client_write_unblocked(self) -> None:
        """The client's send buffer drained."""
        if self.tunnel is not None:
            self.tunnel.client_write_unblocked()
        elif self.upstream is not None:
            self.upstream.resume_reading()

    def upstream_write_blocked(self) -> None:
        """The upstream's send buffer is full: stop reading the client."""
        self._paused_upstream = True
        self._update_client_reading()

    def upstream_write_unblocked(self) -> None:
        """The upstream's send buffer drained."""
        self._paused_upstream = False
        self._update_client_reading()

    def timed_out(self) -> None:
        """The client connection's current timeout expired (idle or slow head)."""
        if self.flow is None and self.head_pending:
            self._log_refusal(408, "request head not received in time")
            self.client.write(
                http1.simple_response(408, "Request Timeout", "request head timed out", True)
            )
            self.client.close(Ending.TIMED_OUT)
        elif self.flow is None:
            self.client.close(Ending.TIMED_OUT)

    # -- request processing --------------------------------------------------------------------

    def _pump(self) -> None:
        events = self.events
        while events and not self.closed:
            kind = events[0][0]
            if kind == BODY or kind == END:
                if not self._discard_body and not self._up_ready:
                    break  # the upstream is not ready for the body yet
            elif kind == ERROR and self._request_open:
                pass  # the current request's body is broken: handle it now
            elif self.flow is not None:
                break  # the next request waits for the current exchange to finish
            kind, payload = events.popleft()
            if kind == BODY:
                self._request_body(payload)
            elif kind == END:
                self._request_end()
            elif kind == HEAD:
                self._request_head(payload)
            elif kind == TUNNEL:
                # Bytes after a CONNECT or Upgrade that did not happen: the reader stopped at
                # them, so this connection can carry nothing more.
                self.client.close()
            else:
                self._refuse(payload)
        queued = len(events) > _MAX_QUEUED_EVENTS
        if queued != self._paused_queue:
            self._paused_queue = queued
            self._update_client_reading()

    def _update_client_reading(self) -> None:
        if self._paused_queue or self._paused_upstream:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    def _request_head(self, head: RequestHead) -> None:
        ctx = self.ctx
        flow = self.flow = Flow(self.client.peer, ctx.clock.seconds())
        flow.raw = (head.method.decode("latin-1"), head.target.decode("latin-1"))
        self._request_open = True
        self._request_done = False
        self._response_started = False
        self._response_done = False
        self._discard_body = False
        self._retried = False
        self._client_http10 = head.version == "1.0"
        self._keep_alive = head.keep_alive and not ctx.draining
        self._req_framing = head.framing
        if head.method == b"CONNECT":
            self._connect(head, flow)
            return
        try:
            scheme, host, port, path = self._target(head)
        except ValueError as e:
            self._respond_error(400, str(e))
            return
        default = 443 if scheme == "https" else 80
        headers = [(b"Host", _authority(host, port, default))]
        for name, value in http1.strip_hop_by_hop(head.headers):
            if name.lower() != b"host":
                headers.append((name, value))
        if head.framing == CHUNKED:
            headers.append((b"Transfer-Encoding", b"chunked"))
        self._upgrade_requested = bool(head.upgrade)
        if head.upgrade:
            # WebSocket and friends: ask the origin to switch; if it answers anything but 101,
            # the client's reader is already closed (what followed may not be HTTP): close after.
            headers += [(b"Connection", b"Upgrade"), (b"Upgrade", head.upgrade)]
            self._keep_alive = False
        method = head.method.decode("ascii")
        flow.request = request = Request(method, scheme, host, port, path, headers, head.version)
        ctx.hooks.request(flow)
        if flow.local is not None:
            self._respond_local(*flow.local)
            return
        self._request_bytes = http1.serialize_request(
            request.method.encode("ascii"), request.path, request.headers
        )
        self._request_key = (request.scheme, request.host, request.port)
        self._dispatch()

    def _target(self, head: RequestHead) -> tuple[str, str, int, bytes]:
        target = head.target
        if target.startswith(b"/"):
            if self._intercept is None:
                raise ValueError(
                    "origin-form request: this is a proxy, send an absolute URL "
                    "(GET http://host/path)"
                )
            host, port = self._intercept
            return "https", host, port, target
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise ValueError("malformed request target") from None
        scheme = (url.schema or b"").lower()
        if scheme not in (b"http", b"https") or not url.host:
            raise ValueError("request target must be an http:// or https:// URL")
        port = url.port or (443 if scheme == b"https" else 80)
        path = url.path or b"/"
        if url.query:
            path += b"?" + url.query
        return scheme.decode(), url.host.decode("ascii").lower(), port, path

    def _dispatch(self) -> None:
        key = self._request_key
        assert key is not None
        conn = self.ctx.pool.acquire(key, self)
        if conn is not None:
            self.upstream = conn
            self._send_head(conn)
            return
        self._up_ready = False
        conn, d = self.ctx.pool.connect(key, self)
        self.upstream = conn
        self._connecting = d
        d.addErrback(self._connect_failed, conn)

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """A new upstream connection is connected (and, for TLS, verified)."""
        if conn is not self.upstream or self.closed:
            conn.abort("client_gone")
            return
        self._connecting = None
        self._send_head(conn)

    def _send_head(self, conn: UpstreamConnection) -> None:
        self._up_ready = True
        conn.send_request(self._request_bytes, self.flow.request.method == "HEAD")  # type: ignore[union-attr]
        self._pump()

    def _connect_failed(self, reason: Failure, conn: UpstreamConnection) -> None:
        if conn is not self.upstream or self.closed:
            return None
        self.upstream = None
        self._connecting = None
        status, text = connect_failure(reason)
        self._respond_error(status, text)
        return None

    def _request_body(self, data: bytes) -> None:
        flow = self.flow
        if flow is not None:
            flow.bytes_in += len(data)
        self.ctx.counters.bytes_from_client += len(data)
        if self._discard_body or self.upstream is None:
            return
        if self._req_framing == CHUNKED:
            self.upstream.send(http1.chunk(data))
        else:
            self.upstream.send(data)

    def _request_end(self) -> None:
        self._request_open = False
        self._request_done = True
        if not self._discard_body and self.upstream is not None:
            if self._req_framing == CHUNKED:
                self.upstream.send(LAST_CHUNK)
        if self._response_done:
            self._finish()

    def _refuse(self, error: ProtocolError) -> None:
        """A request we will not forward (bad framing, too big...): answer and close."""
        self._keep_alive = False
        if self.flow is None:
            self.flow = Flow(self.client.peer, self.ctx.clock.seconds())
        if self._response_started:
            # Mid-exchange (a broken request body after the response began): nothing can be
            # said in-band any more; the client must see the connection cut.
            self._abort_upstream("request_body_error")
            self.client.abort("request_body_error")
            return
        self._abort_upstream("request_refused")
        self._request_open = False
        self._request_done = True
        self._respond_error(error.status, error.reason)

    def _respond_error(self, status: int, text: str) -> None:
        """Answer the current request with an error instead of an upstream response."""
        flow = self.flow
        assert flow is not None
        flow.error = text
        self.ctx.hooks.error(flow)
        self._respond_local(status, b"text/plain; charset=utf-8", (text + "\n").encode())

    def _respond_local(self, status: int, content_type: bytes, body: bytes) -> None:
        """Answer the current request ourselves; an unread request body ends the connection."""
        events = self.events
        while not self._request_done and events and events[0][0] in (BODY, END):
            # What already arrived of this request's body is dropped; if its end is here too,
            # the connection stays usable for the next request.
            kind, payload = events.popleft()
            if kind == END:
                self._request_done = True
                self._request_open = False
        if not self._request_done:
            # The client may never send the rest (it may be waiting for 100 Continue): answer,
            # stop reading this connection and close it, rather than wait on a body.
            self._keep_alive = False
            self._request_done = True
            self._request_open = False
            self.reader.closed = True
            self.events.clear()
        self._discard_body = True
        headers = [(b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body))]
        if not self._keep_alive:
            headers.append((b"Connection", b"close"))
        reason = _REASONS.get(status, "Status").encode()
        self._response_started = True
        self._in_framing = self._out_framing = LENGTH
        flow = self.flow
        assert flow is not None
        flow.status = status
        flow.bytes_out = len(body)
        self.client.write(http1.serialize_response(status, reason, headers) + body)
        self._response_end_common()

    # -- upstream events -----------------------------------------------------------------------

    def upstream_events(self, events: Sequence[tuple[int, Any]]) -> None:
        """Response events from our upstream connection."""
        for kind, payload in events:
            if kind == BODY:
                self._response_body(payload)
            elif kind == HEAD:
                self._response_head(payload)
            elif kind == END:
                self._response_end()
            elif kind == INFO:
                if not self._client_http10:
                    self.client.write(
                        http1.serialize_response(payload.status, payload.reason, payload.headers)
                    )
            elif kind == UPGRADED:
                self._upgraded(payload)
            elif kind == TUNNEL:
                if self.tunnel is not None and payload:
                    self.tunnel.from_upstream(payload)
            else:
                self._upstream_garbage(payload)
            if self.closed:
                return

    def _response_head(self, head: ResponseHead) -> None:
        flow = self.flow
        if flow is None or self._response_started:
            self._upstream_garbage(ProtocolError(502, "unexpected upstream response"))
            return
        flow.response = response = Response(
            head.status, head.reason, http1.strip_hop_by_hop(head.headers)
        )
        self.ctx.hooks.response(flow)
        headers = response.headers  # as the hooks left them
        framing = head.framing
        out = framing
        if framing == CHUNKED or framing == UNTIL_CLOSE:
            if self._client_http10:
                out = UNTIL_CLOSE
                self._keep_alive = False
            else:
                out = CHUNKED
                headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
                headers.append((b"Transfer-Encoding", b"chunked"))
        if not self._keep_alive:
            headers.append((b"Connection", b"close"))
        elif self._client_http10:
            headers.append((b"Connection", b"keep-alive"))
        self._in_framing = framing
        self._out_framing = out
        self._upstream_keep_alive = head.keep_alive
        self._response_started = True
        flow.status = response.status
        self.client.write(http1.serialize_response(response.status, response.reason, headers))

    def _upgraded(self, head: ResponseHead) -> None:
        """101 Switching Protocols: relay both directions opaquely from here on."""
        conn = self.upstream
        flow = self.flow
        if conn is None or flow is None or not self._upgrade_requested or self._response_started:
            self._upstream_garbage(ProtocolError(502, "upstream switched protocols unasked"))
            return
        headers = http1.strip_hop_by_hop(head.headers)
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", http1.upgrade_value(head.headers))]
        flow.status = 101
        self.client.write(http1.serialize_response(101, head.reason, headers))
        self.flow = None
        self.upstream = None
        self._up_ready = False
        self._record(flow)
        self.tunnel = tunnel = Tunnel(
            self.client, conn, self.ctx.clock, self.ctx.half_close_timeout
        )
        conn.tunnel = tunnel
        leftover = self._take_tunnel_bytes()
        self.events.clear()
        self._paused_queue = self._paused_upstream = False
        self._update_client_reading()
        if leftover:
            tunnel.from_client(leftover)

    def _response_body(self, data: bytes) -> None:
        flow = self.flow
        if flow is None:
            return
        flow.bytes_out += len(data)
        self.ctx.counters.bytes_to_client += len(data)
        if self._out_framing == CHUNKED:
            self.client.write(http1.chunk(data))
        else:
            self.client.write(data)

    def _response_end(self) -> None:
        if self.flow is None:
            return
        if self._out_framing == CHUNKED:
            self.client.write(LAST_CHUNK)
        conn = self.upstream
        if conn is not None and not self._request_done:
            # The origin answered before reading the whole body: that connection's framing
            # is in doubt now, and so is the client's.
            self._keep_alive = False
            self.upstream = None
            conn.owner = None
            conn.abort("early_response")
        self._response_end_common()

    def _response_end_common(self) -> None:
        self._response_done = True
        if self._request_done:
            self._finish()

    def _finish(self) -> None:
        """Both directions of the exchange are complete."""
        flow = self.flow
        self.flow = None
        conn = self.upstream
        self.upstream = None
        self._up_ready = False
        if conn is not None:
            if self._upstream_keep_alive:
                # A slow client may have paused this connection's reading; a pooled connection
                # must come back readable or the next exchange on it waits forever.
                conn.resume_reading()
                self.ctx.pool.release(conn)
            else:
                conn.owner = None
                conn.close()
        if flow is not None:
            self._record(flow)
        if self._paused_upstream:
            self._paused_upstream = False
            self._update_client_reading()
        if not self._keep_alive or self.reader.closed and not self.events:
            self.client.close()
            return
        if self.events:
            self._pump()

    def _record(self, flow: Flow) -> None:
        status = flow.status
        self.ctx.counters.responses[f"{status // 100}xx" if status else "none"] += 1
        self.ctx.hooks.done(flow)

    def _log_refusal(self, status: int, text: str) -> None:
        flow = Flow(self.client.peer, self.ctx.clock.seconds())
        flow.status = status
        flow.error = text
        self._record(flow)

    def _upstream_garbage(self, error: ProtocolError) -> None:
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.owner = None
            conn.abort("upstream_protocol_error")
        if not self._response_started and self.flow is not None:
            self._respond_error(502, error.reason)
        else:
            self._keep_alive = False
            self.client.abort("upstream_protocol_error")

    def upstream_lost(self, conn: UpstreamConnection, ending: Ending, reason: Failure) -> None:
        """Our upstream connection ended."""
        tunnel = self.tunnel
        if tunnel is not None:
            if conn is tunnel.upstream:  # an upgraded (101) connection
                tunnel.upstream_ended(ending)
            return
        if conn is not self.upstream:
            return
        phase = self.phase
        if (
            phase is Phase.REQUEST
            and not conn.reader.head_done
            and conn.requests > 1
            and not self._retried
            and ending in (Ending.CLEAN, Ending.RESET)
            and self._request_done
            and self._req_framing == NO_BODY
            and self.flow is not None
            and self.flow.request is not None
            and self.flow.request.method.encode() in _IDEMPOTENT
        ):
            # A pooled connection the origin closed as we reused it: try once on a fresh one.
            self._retried = True
            self.upstream = None
            self._dispatch_retry()
            return
        action = decide(Side.UPSTREAM, ending, phase)
        self.upstream = None
        self._up_ready = False
        detail = ""
        if ending is Ending.TLS_FAILED:
            detail = self.ctx.describe_tls_failure(reason)
        self._act(action, Side.UPSTREAM, ending, detail)

    def _dispatch_retry(self) -> None:
        key = self._request_key
        assert key is not None
        conn, d = self.ctx.pool.connect(key, self)
        self.upstream = conn
        self._up_ready = False
        self._connecting = d
        d.addErrback(self._connect_failed, conn)

    # -- the one place endings are acted on ----------------------------------------------------

    def _act(self, action: Action, side: Side, ending: Ending, detail: str = "") -> None:
        if action is Action.NOTHING:
            return
        if action is Action.CLOSE_SELF:
            self.client.close()
        elif action is Action.ABORT_PEER:
            if side is Side.CLIENT:
                self._abort_upstream(f"client_{ending.value}")
            else:
                self._keep_alive = False
                self.client.abort(f"upstream_{ending.value}")
        elif action is Action.ABORT_BOTH:
            self._abort_upstream(f"client_{ending.value}")
            self.client.abort(f"client_{ending.value}")
        elif action is Action.RESPOND_502 or action is Action.RESPOND_504:
            status = 504 if action is Action.RESPOND_504 else 502
            if not detail:
                detail = (
                    "upstream timed out"
                    if status == 504
                    else f"upstream closed the connection before responding ({ending.value})"
                )
            self._respond_error(status, detail)
        elif action is Action.TRUNCATE_PEER:
            self._keep_alive = False
            self.client.truncate(f"upstream_{ending.value}", self._out_framing != UNTIL_CLOSE)
        elif action is Action.FINISH_RESPONSE:
            self._keep_alive = self._keep_alive and self._out_framing != UNTIL_CLOSE
            self._response_end()
        elif action is Action.CLOSE_PEER:
            if side is Side.CLIENT and self.upstream is not None:
                self.upstream.close()
            else:
                self.client.close()

    def _abort_upstream(self, reason: str) -> None:
        conn = self.upstream
        self.upstream = None
        self._up_ready = False
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if conn is not None:
            conn.owner = None
            conn.abort(reason)

    def _forget(self) -> None:
        if self.closed:
            return
        self.closed = True
        flow = self.flow
        self.flow = None
        if flow is not None:
            self._record(flow)
        self._abort_upstream("client_gone")
        self.events.clear()
        self.ctx.sessions.discard(self)

    # -- CONNECT -------------------------------------------------------------------------------

    def _connect(self, head: RequestHead, flow: Flow) -> None:
        try:
            host, port = _split_authority(head.target, 443)
        except (ValueError, UnicodeDecodeError):
            self._respond_error(400, "CONNECT target must be host:port")
            return
        flow.request = Request("CONNECT", "https", host, port, b"", head.headers, head.version)
        ctx = self.ctx
        self._request_open = False
        self._request_done = True
        if self._intercept is not None:
            self._respond_error(400, "CONNECT inside an intercepted tunnel")
            return
        if ctx.passthrough(host) or ctx.intercept is None:
            if ctx.tunnel_connect is None:
                self._respond_error(501, "CONNECT is not supported")
                return
            self._keep_alive = False
            self._connecting = ctx.tunnel_connect(host, port, self)
            return
        factory = ctx.intercept(host, port)
        leftover = self._take_tunnel_bytes()
        flow.status = 200
        self.flow = None
        self._record(flow)
        self.client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._intercept = (host, port)
        self.reader = http1.RequestReader()
        self.client.start_tls(factory, leftover)

    def _take_tunnel_bytes(self) -> bytes:
        """Drop the CONNECT's END and return the bytes that followed its head."""
        data = b""
        events = self.events
        while events and events[0][0] in (END, TUNNEL):
            kind, payload = events.popleft()
            if kind == TUNNEL:
                data = payload
        return data

    def tunnel_established(self, tunnel: Any) -> None:
        """The passthrough upstream connected: answer 200 and relay opaque bytes from now on."""
        flow = self.flow
        self.flow = None
        if flow is not None:
            flow.status = 200
            self._record(flow)
        self.tunnel = tunnel
        self.client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        leftover = self._take_tunnel_bytes()
        self.events.clear()
        if leftover:
            tunnel.from_client(leftover)

    def tunnel_failed(self, reason: Failure) -> None:
        """The passthrough upstream could not be reached."""
        if self.closed or self.flow is None:
            return
        status, text = connect_failure(reason)
        self._keep_alive = False
        self._respond_error(status, text)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
