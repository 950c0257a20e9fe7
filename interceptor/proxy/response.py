"""The upstream's half of an exchange: the Owner its upstream connection reports to, and the
response relayed from there to the client.

`Exchange` (exchange.py) is built on this: there the request side, routing, our own answers and
the endings; here what the origin says and does. Both halves share the exchange's state, moved
only through the TRANSITIONS table (states.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from ..http import Headers, HTTPFlow, Response
from . import http1
from .bodytap import BodyTap
from .context import ProxyContext, tls_failure_kind
from .events import (
    CHUNKED,
    END,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Body,
    Framing,
    Interim,
    ProtocolError,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    Upgraded,
)
from .events import Headers as Fields
from .headers import content_length, reframed, strip_hop_by_hop, with_length
from .leg import Leg, end
from .lifecycle import Ending, Phase, Side, connect_ending, connect_failure, stale_reuse
from .states import MOVES, State, Step
from .upstream import Key, UpstreamConnection
from .via import Route, UpstreamProxyError

if TYPE_CHECKING:
    from .session import Session
    from .tunnel import TunnelUpstream


class ResponseSide:
    """What an exchange does with what its upstream connection reports (upstream.Owner)."""

    __slots__ = (
        "session",
        "ctx",
        "flow",
        "head",
        "state",
        "upstream",
        "keep_alive",
        "http10",
        "request_complete",
        "retried",
        "_request_bytes",
        "_key",
        "in_framing",
        "out_framing",
        "upstream_keep_alive",
        "_held",
        "_buffer",
        "_buffered",
        "_tap",
        "_late_response",
        "_end_waits",
        "_declared",
        "_copy_out",
    )
    session: Session
    ctx: ProxyContext
    flow: HTTPFlow
    head: RequestHead
    state: State
    upstream: Leg | None
    keep_alive: bool  # the client connection stays open after this exchange
    http10: bool  # the client speaks HTTP/1.0
    request_complete: bool
    retried: bool
    _request_bytes: bytes
    _key: Key  # the pool's key for the upstream connection: origin and route
    in_framing: Framing  # how the upstream frames its response
    out_framing: Framing  # how we frame it toward the client
    upstream_keep_alive: bool  # the upstream connection may be pooled afterwards
    # While a hook runs: the upstream's events that arrived meanwhile (None: no hook runs).
    _held: list[ResponseEvent] | None
    # A body read whole for a request or response hook, and its size (budgeted).
    _buffer: deque[bytes] | None
    _buffered: int
    # What a response body piece goes through instead of straight to the client: the buffer,
    # or a hook's `stream` callable.
    _tap: Callable[[bytes], None] | None
    # The `response` hook is still owed to a response that streamed (content None).
    _late_response: bool
    # The response ended while pieces held for a hook still wait for the client to take them.
    _end_waits: bool
    # The origin's Content-Length, kept while user addons hold the head (None: not kept).
    _declared: int | None
    # A response body that streams, copied up to [capture] body_limit (None: capture is off).
    _copy_out: BodyTap | None

    def _to(self, step: Step) -> None:
        self.state = MOVES[self.state][step]

    def _send_head(self, conn: UpstreamConnection) -> None:
        self._to(Step.SEND)
        conn.send_request(self._request_bytes, self.head.method == b"HEAD")

    # -- the connection's life -------------------------------------------------------------

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """A new upstream connection is connected (and, for TLS, verified)."""
        if conn is self.upstream:
            if self.state is State.CONNECTING:
                self._send_head(conn)
                self.session.pump()  # the request body, if any, may go now
                return
            if self.state is State.OPENING:
                if not self._reached_ourselves(conn):
                    self.connect_established(conn)  # TCP is up: the origin can be reached
                return
        end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, conn)  # nobody waits for it any more

    def upstream_failed(self, conn: UpstreamConnection, reason: Failure) -> None:
        """The connection could not be made."""
        state = self.state
        if state is not State.CONNECTING and state is not State.OPENING:
            return
        if self.upstream not in (None, conn):
            return
        self.upstream = None
        self._unreachable(reason)

    def _unreachable(self, reason: Failure) -> None:
        # The origin (or the upstream proxy on the way) could not be reached: 502 or 504.
        failed = reason.value
        if isinstance(failed, UpstreamProxyError):
            self.ctx.counters.upstream_proxy_failures[failed.reason] += 1
            status, text = failed.status, failed.text  # it names the proxy, and its answer
        else:
            status, text = connect_failure(reason)
        self.session.end(Side.UPSTREAM, connect_ending(status), text)

    def upstream_timed_out(self, conn: UpstreamConnection) -> None:
        """Nothing arrived for the read timeout while a response was owed."""
        if conn is self.upstream:
            self.session.end(Side.UPSTREAM, Ending.TIMED_OUT)

    def upstream_lost(self, conn: UpstreamConnection, ending: Ending, reason: Failure) -> None:
        """Our upstream connection ended."""
        if conn is not self.upstream:
            return
        req = self.flow.request
        if (
            self.state is State.SENT
            and req is not None
            and stale_reuse(
                ending,
                conn.reader.head_done,
                conn.requests,
                self.retried,
                not self.request_complete or self.head.framing is not NO_BODY,
                req.method,
            )
        ):
            ending = Ending.STALE
        detail = ""
        if ending is Ending.TLS_FAILED:
            detail = self.ctx.describe_tls_failure(reason)
            self.ctx.counters.tls_failure_reasons["upstream", tls_failure_kind(detail)] += 1
        self.session.end(Side.UPSTREAM, ending, detail)

    def upstream_write_blocked(self) -> None:
        """The upstream's send buffer is full: stop reading the client."""
        self.session.upstream_write_blocked()

    def upstream_write_unblocked(self) -> None:
        """The upstream's send buffer drained."""
        self.session.upstream_write_unblocked()

    # -- CONNECT: an intercepted one's origin, a passthrough tunnel's leg (TunnelOwner) ----

    def connect_established(
        self, conn: UpstreamConnection | None, certificate: object | None = None
    ) -> None:
        """An intercepted CONNECT goes ahead: answer 200; what the client sends next decides
        what the tunnel carries (TLS terminated here, plain HTTP, or opaque bytes).

        `conn`: its origin, TCP-connected first (eager); TLS with it begins only once the
        client shows it speaks TLS. `certificate`: the origin's, when a verified connection to
        it was already pooled (the leaf copies its names)."""
        if conn is not None:
            self._detach()
        req = self.flow.request
        assert req is not None  # a CONNECT's target was parsed before it came here
        self.flow.status = 200
        self.upgrade()
        self.session.intercept(req.host, req.port, conn, certificate, self.flow, self._key[3])

    @property
    def gone(self) -> bool:
        """The client this exchange is for has ended (TunnelOwner)."""
        return self.session.closed

    def tunnel_connected(self, leg: TunnelUpstream) -> None:
        """The passthrough upstream connected: answer 200 and relay opaque bytes from now on."""
        if self._reached_ourselves(leg):
            return
        self.upstream = None
        self.flow.status = 200
        self.upgrade()
        self.session.client.write(http1.CONNECT_ESTABLISHED)
        self.session.relay(leg, self.flow)

    def _reached_ourselves(self, leg: Leg) -> bool:
        """Refuse a CONNECT whose connection led back to this proxy (see Exchange)."""
        raise NotImplementedError

    def tunnel_failed(self, reason: Failure) -> None:
        """The passthrough upstream could not be reached."""
        if self.state is State.CONNECTING:
            self.upstream = None
            self._unreachable(reason)

    # -- the response ----------------------------------------------------------------------

    def upstream_events(self, conn: UpstreamConnection, events: list[ResponseEvent]) -> None:
        """Response events from our upstream connection, in order."""
        if self._held is not None:  # a hook runs: these wait for it (reading was paused)
            self._held += events
            conn.pause_reading()
            return
        client = self.session.client
        for i, event in enumerate(events):
            if type(event) is Body:
                if self._tap is None:
                    data = event
                    self.flow.bytes_out += len(data)
                    self.ctx.counters.bytes_to_client += len(data)
                    client.write(http1.body_piece(data, self.out_framing))
                    if self._copy_out is not None:
                        self._copy_out.keep(data)
                    continue  # the common case: the connection stays ours
                self._tap(event)
            elif type(event) is ResponseHead:
                self._response_head(event)
            elif event is END:
                self._response_end()
            elif type(event) is Interim:
                if not self.http10:
                    head = event.head
                    client.write(http1.response_head(head.status, head.reason, head.headers))
            elif type(event) is Upgraded:
                self._upgraded(event.head)
            elif type(event) is ProtocolError:
                self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, event.reason)
            if self.upstream is not conn:  # done, upgraded or cut: the rest is not ours
                if i + 1 < len(events):
                    conn.unclaimed(events[i + 1 :])
                return
            if self._held is not None:  # a hook began: the rest waits for it
                self._held += events[i + 1 :]
                return

    def _response_head(self, head: ResponseHead) -> None:
        if self.state is not State.SENT:
            self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, "unexpected upstream response")
            return
        ctx = self.ctx
        route = self._key[3]
        if route is not None and route.http and self._key[0] == "http" and _refused_us(head, route):
            # The HTTP proxy we sent the request to wants other credentials: ours to say, not
            # the client's to answer (it never spoke to that proxy).
            ctx.counters.upstream_proxy_failures["auth"] += 1
            answered = f"{head.status} {head.reason.decode('latin-1')}".rstrip()
            detail = f"upstream proxy {route} answered {answered}"
            self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, detail)
            return
        headers = strip_hop_by_hop(head.headers)
        via = ctx.via_for(head.version)
        if via is not None:
            headers.append((b"Via", via))
        self.in_framing = head.framing
        self.upstream_keep_alive = head.keep_alive
        self._declared = (
            content_length(head.headers)
            if head.framing is LENGTH and ctx.hooks.addons_loaded
            else None
        )
        self.flow.response = Response(
            head.status, head.reason, Headers.wrap(headers), head.version, ctx.clock.seconds()
        )
        self.run_hooks("responseheaders", self._response_headers_done)

    def _response_headers_done(self) -> None:
        flow = self.flow
        resp = flow.response
        assert resp is not None  # containment keeps the one the head made
        hooks = self.ctx.hooks
        if flow.killed:
            self.kill()
        elif not hooks.response_bodies:
            self._respond(resp, self.in_framing)
        elif resp.stream is not False:
            self._late_response = True
            self._respond(resp, self.in_framing)
        elif self.in_framing is NO_BODY:
            resp._content = b""
            resp.timestamp_end = resp.timestamp_start
            self.run_hooks("response", self._response_done)
        elif hooks.over_limit(content_length(resp.headers.fields)):
            self._overflow_response()
        else:
            self._to(Step.READ)
            self._buffer = deque()
            self._tap = self._read_piece

    def _hold(self, data: bytes) -> bool:
        """Keep a piece of a body read whole for a hook; False if it is past the limits."""
        if not self.ctx.hooks.take(self._buffered, len(data)):
            return False
        self._buffered += len(data)
        assert self._buffer is not None
        self._buffer.append(data)
        return True

    def _read_piece(self, data: bytes) -> None:
        if not self._hold(data):
            self._overflow_response(data)

    def _overflow_response(self, data: bytes = b"") -> None:
        """The response body is past [hooks] body_limit or buffer_budget."""
        hooks = self.ctx.hooks
        if hooks.reject:
            self._release_buffer()
            self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, hooks.too_large("response"))
            return
        pieces = self._buffer if self._buffer is not None else deque()
        self._buffer = None
        self._tap = None
        resp = self.flow.response
        assert resp is not None
        self._late_response = True
        self._respond(resp, self.in_framing)
        # What was held goes out as fast as the client takes it, not in one burst: written at
        # once, it would sit in Twisted's send buffer beside our own copy (twice the memory).
        if data:
            pieces.append(data)
        self._buffer = pieces
        self._tap = pieces.append  # what arrives meanwhile queues behind
        self.client_drained()

    def client_drained(self) -> None:
        """The client's send buffer has room: send what waits for it (see _overflow_response)."""
        pieces = self._buffer
        if pieces is None or self.state is not State.RESPONDING:
            return
        session = self.session
        while pieces and not session.client_blocked:
            piece = pieces.popleft()
            if self._buffered:
                n = min(len(piece), self._buffered)
                self._buffered -= n
                self.ctx.hooks.give(n)
            self._to_client(piece)
        if not pieces:
            self._buffer = None
            self._tap = None
            if self._end_waits:
                self._end_waits = False
                self._response_end()

    def _release_buffer(self) -> deque[bytes]:
        """Give the buffered body's bytes back to the budget; returns its pieces."""
        pieces = self._buffer if self._buffer is not None else deque()
        if self._buffered:
            self.ctx.hooks.give(self._buffered)
        self._buffer = None
        self._buffered = 0
        self._tap = None
        return pieces

    def _response_read(self) -> None:
        """The whole response body is here: the response hooks see it, then the client."""
        resp = self.flow.response
        assert resp is not None
        resp._content = b"".join(self._release_buffer())
        resp.timestamp_end = self.ctx.clock.seconds()
        if self.request_complete:
            self._let_go_of_upstream()  # its part is over; the hook may take its time
        self.run_hooks("response", self._response_done)

    def _response_done(self) -> None:
        flow = self.flow
        if flow.killed:
            self.kill()
            return
        resp = flow.response
        assert resp is not None
        self._respond(resp, self.in_framing, resp._content or b"")
        if self.in_framing is not NO_BODY:
            # The body was read whole: its END has come. A HEAD, 204 or 304 response's END
            # follows its head, still to come: ending it here too released the upstream to the
            # pool, and then that END, unclaimed, aborted the pooled connection.
            self._response_end()

    def _respond(self, resp: Response, framing: Framing, body: bytes | None = None) -> None:
        """Send the response head as the hooks left it (and its whole body, if buffered)."""
        fields: Fields = resp.headers.fields
        if body is not None and framing is not NO_BODY:
            # The body we send is the one we have: its length frames it, whatever the hooks did.
            fields = with_length(fields, len(body))
            framing = LENGTH
        elif body is not None:
            body = b""  # HEAD, 204, 304: the length in the head describes a body never sent
        elif callable(resp.stream) and framing is not NO_BODY:
            # A transform changes lengths: chunks (HTTP/1.1) or the close (1.0) end it now.
            fields = with_length(fields, None)
            framing = UNTIL_CLOSE
            self._tap = self._transform_piece
        elif framing is not NO_BODY and self.ctx.hooks.addons_loaded:
            # The body streams as the origin framed it, whatever a hook wrote in the head
            # (chunks and close-delimited bodies are framed by client_response_head).
            fields = reframed(fields, self._declared, False)
        if body is None and framing is not NO_BODY and self.ctx.hooks.tap_limit:
            resp.tap = self._copy_out = BodyTap(self.ctx.hooks.tap_limit)
        data, self.out_framing, self.keep_alive = http1.client_response_head(
            resp._status, resp._reason, fields, framing, self.http10, self.keep_alive
        )
        if self.ctx.hooks.tap_limit:
            resp.wire_head = data  # for capture
        self.flow.status = resp._status
        self._to(Step.RESPOND)
        self.session.client.write(data)
        if body:
            self._to_client(body)

    def _to_client(self, data: bytes) -> None:
        self.flow.bytes_out += len(data)
        self.ctx.counters.bytes_to_client += len(data)
        self.session.client.write(http1.body_piece(data, self.out_framing))
        if self._copy_out is not None:
            self._copy_out.keep(data)

    def _transform_piece(self, data: bytes) -> None:
        resp = self.flow.response
        stream = resp.stream if resp is not None else None
        if not callable(stream):
            self._to_client(data)
            return
        pieces = self.ctx.hooks.transform(stream, data, "responsebody", self.flow)
        if pieces is None:
            self._tap = None
            self.session.end(
                Side.UPSTREAM, Ending.PROTOCOL_ERROR, "an addon's stream function failed"
            )
            return
        for piece in pieces:
            if piece:
                self._to_client(piece)

    def _response_end(self) -> None:
        if self.state is State.READING:
            self._response_read()
            return
        if self.state is not State.RESPONDING:
            return
        if self._buffer is not None:  # held pieces still wait for the client: end after them
            self._end_waits = True
            return
        if self._tap is not None:  # a `stream` transform has its last word
            self._tap = None
            self._transform_piece(b"")
        if self.out_framing is CHUNKED:
            self.session.client.write(http1.LAST_CHUNK)
        if self._late_response:
            # A response that streamed still gets its `response` hook, without its body
            # (mitmproxy's meaning of streaming); what the hook changes can no longer be sent.
            self._late_response = False
            resp = self.flow.response
            if resp is not None:
                resp.timestamp_end = self.ctx.clock.seconds()
            self.ctx.hooks.run("response", self.flow)
        if self.request_complete:
            self._to(Step.COMPLETE)
            self._complete()
            return
        # The origin answered before reading the whole body: that connection's framing is in
        # doubt now, and so is the client's; its body is read (and dropped) to its end.
        self.keep_alive = False
        self._to(Step.EARLY)
        self.session.end(Side.UPSTREAM, Ending.EARLY_RESPONSE)

    # -- hooks that take their time --------------------------------------------------------

    def run_hooks(self, event: str, then: Callable[[], None]) -> None:
        """Run `event`'s hooks, then `then`: at once, or once they are done. Meanwhile both
        legs stop reading (as for a slow peer), and what the upstream sends waits."""
        pending = self.ctx.hooks.run(event, self.flow)
        if pending is None or pending.called:  # (a coroutine that never had to wait)
            then()
            return
        self._held = []
        self.session.hook_wait(True)
        conn = self.upstream
        if isinstance(conn, UpstreamConnection):
            conn.pause_reading()
        pending.addCallback(self._hooks_done, then, self.state, conn)

    def _hooks_done(
        self, _: object, then: Callable[[], None], state: State, conn: Leg | None
    ) -> None:
        held, self._held = self._held or [], None
        self.session.hook_wait(False)
        if self.state is not state or self.session.closed:
            return  # cut, or answered (the upstream failed) while the hook ran
        if isinstance(conn, UpstreamConnection) and conn is self.upstream:
            conn.resume_reading()
        then()
        if held and isinstance(conn, UpstreamConnection):
            if conn is self.upstream:
                self.upstream_events(conn, held)
            else:
                conn.unclaimed(held)

    def kill(self) -> None:
        """An addon killed the flow: its client is cut, mid-exchange (mitmproxy's kill)."""
        self.keep_alive = False
        self.session.end(Side.CLIENT, Ending.KILLED)

    def _upgraded(self, head: ResponseHead) -> None:
        conn = self.upstream
        asked = self.head.upgrade and self.state is State.SENT
        if not asked or not isinstance(conn, UpstreamConnection):
            self.session.end(
                Side.UPSTREAM, Ending.PROTOCOL_ERROR, "upstream switched protocols unasked"
            )
            return
        self.flow.status = 101
        self.session.client.write(http1.switching_protocols(head))
        self._detach()
        self.upgrade()
        self.session.relay(conn, self.flow)

    def upgrade(self) -> None:
        """The connection became a tunnel (101, or CONNECT): this exchange is over."""
        self._to(Step.UPGRADE)
        self.ctx.record(self.flow)

    def _detach(self) -> Leg | None:
        conn, self.upstream = self.upstream, None
        if isinstance(conn, UpstreamConnection):
            conn.owner = None
        return conn

    def _complete(self) -> None:
        """Both directions are through: pool or close the upstream, record, next exchange."""
        self._let_go_of_upstream()
        self.ctx.record(self.flow)
        self.session.exchange_done(self)

    def _let_go_of_upstream(self) -> None:
        conn, self.upstream = self.upstream, None
        if isinstance(conn, UpstreamConnection):
            conn.owner = None
            if self.upstream_keep_alive:
                # A slow client may have paused this connection's reading; a pooled connection
                # must come back readable or the next exchange on it waits forever.
                conn.resume_reading()
                self.ctx.pool.release(conn)
            else:
                end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, conn)


def _pieces(result: bytes | Iterable[bytes] | Any) -> Iterable[bytes]:
    """What a `stream` callable returned: bytes, or an iterable of them."""
    if isinstance(result, bytes | bytearray | memoryview):
        return (bytes(result),)
    return (bytes(piece) for piece in result)


def _refused_us(head: ResponseHead, route: Route) -> bool:
    """An HTTP proxy's answer to a plain request is its own refusal of our credentials: a 407,
    or a 401 (tinyproxy's answer to a wrong password) that came without a Via, so the proxy
    made it rather than relayed an origin's (which RFC 9110 7.6.3 has it mark with one)."""
    if head.status == 407:
        return True
    return (
        head.status == 401
        and route.proxy_authorization is not None
        and not any(name.lower() == b"via" for name, _ in head.headers)
    )
