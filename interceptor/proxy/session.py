"""One client connection: reading, the queue of exchanges, keep-alive, CONNECT and the handover to
a tunnel.

Inside an intercepted CONNECT the client's first bytes decide what follows: a ClientHello is
terminated here (after our own verified handshake with the origin, when we connected first),
plain HTTP is read as requests to that origin, anything else is relayed opaquely.

The session consumes request events at its own pace: pipelined heads become queued exchanges,
answered in order; body bytes wait until their exchange's upstream is ready. Every ending of
either leg comes through `end`, which asks the lifecycle table what it means in the current
phase and has `leg.end` carry it out; the current exchange then does its own part.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from ..http import Client, Error, HTTPFlow
from . import http1
from .context import ProxyContext
from .events import (
    END,
    UNTIL_CLOSE,
    Body,
    EndOfMessage,
    ProtocolError,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    TunnelData,
)
from .exchange import Exchange
from .leg import Leg
from .leg import end as carry_out
from .lifecycle import Action, Ending, Phase, Side
from .response import ResponseSide
from .states import TAKES_BODY
from .tunnel import Tunnel
from .upstream import UpstreamConnection
from .via import Route

if TYPE_CHECKING:
    from .downstream import ClientConnection
    from .tunnel import TunnelUpstream

_MAX_QUEUED_EVENTS = 16  # pipelined/early body events held before we stop reading the client
_MAX_QUEUED_EXCHANGES = 8  # pipelined requests accepted ahead of the one being answered


class Session:
    """The per-client-connection state machine."""

    def __init__(self, ctx: ProxyContext, client: ClientConnection) -> None:
        self.ctx = ctx
        self.client = client
        self.client_conn = Client(client, ctx.clock.seconds(), tls_known=True)  # addons see it
        self.reader = http1.RequestReader()
        self.events: deque[RequestEvent] = deque()
        self.exchanges: deque[Exchange] = deque()  # [0] is being answered, the rest wait
        self.tunnel: Tunnel | None = None
        # Inside an intercepted CONNECT: (scheme, host, port) of its origin-form requests.
        self.intercepted: tuple[str, str, int] | None = None
        # An intercepted CONNECT was answered and its first bytes are not read yet; its origin's
        # connection (eager connects) until the client's first bytes say what it is for, and
        # those bytes while TLS with the origin runs; the origin's certificate, if known.
        self._inside = False
        self._origin: UpstreamConnection | None = None
        self._hello = b""
        self._certificate: object | None = None
        self._connect_flow: HTTPFlow | None = None  # that CONNECT's, should it become a relay
        self._connect_route: Route | None = None  # and the upstream proxy it goes through
        # That CONNECT's flow id, the parent of every exchange inside it.
        self.parent_id: str | None = None
        self._paused_queue = False  # too many events queued: stop reading the client
        self._paused_upstream = False  # the upstream's send buffer is full: likewise
        self._paused_hook = False  # a hook takes its time: likewise
        self.client_blocked = False  # the client's send buffer is full
        self._pumping = False
        self.closed = False
        ctx.sessions.add(self)

    @property
    def busy(self) -> bool:
        """An exchange or a tunnel is in flight (the idle timeout does not apply)."""
        return bool(self.exchanges) or self.tunnel is not None

    @property
    def head_pending(self) -> bool:
        """A request head has begun arriving but is not complete (header timeout applies)."""
        return self.reader.in_head

    # -- endings: the one way into the lifecycle table for this pair -----------------------

    def end(self, side: Side, ending: Ending, detail: str = "") -> Action:
        """The `side` leg ended, or must end, as `ending`: decide, act on both legs, then let
        the current exchange do its part."""
        if self.tunnel is not None:
            self.tunnel.ended(side, ending)
            return Action.NOTHING
        ex = self.exchanges[0] if self.exchanges else None
        if ex is None and self._origin is not None:
            return self._origin_ended(side, ending)
        upstream: Leg | None = ex.upstream if ex is not None else None
        this, peer = (self.client, upstream) if side is Side.CLIENT else (upstream, self.client)
        action = carry_out(
            side,
            ending,
            ex.phase if ex is not None else Phase.IDLE,
            this,
            peer,
            framed=ex is None or ex.out_framing is not UNTIL_CLOSE,
        )
        if ex is not None:
            ex.after(action, side, ending, detail)
        return action

    def client_lost(self, ending: Ending) -> None:
        """The client connection ended (or half-closed: Ending.HALF_CLOSED)."""
        self.end(Side.CLIENT, ending)
        if ending is not Ending.HALF_CLOSED:
            self._forget(f"client {ending.value}")

    def _forget(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.exchanges:
            self.exchanges[0].cut(why)
        self.exchanges.clear()
        self.events.clear()
        self.ctx.forget(self)

    def timed_out(self) -> None:
        """The client connection's idle or slow-head timeout expired (nothing in flight)."""
        if self.head_pending:
            flow = HTTPFlow(self.client_conn, self.ctx.clock.seconds())
            flow.status = 408
            flow.error = Error("request head not received in time")
            self.ctx.record(flow)
            body = http1.error_body("request head timed out", flow.id)
            self.client.write(http1.local_response(408, http1.TEXT, body, True))
        self.end(Side.CLIENT, Ending.TIMED_OUT)

    def drain(self) -> None:
        """Shutdown has begun: an idle connection is done now, a busy one after its exchange."""
        if not self.busy:
            self.end(Side.CLIENT, Ending.DONE)

    def shutdown(self) -> None:
        """The drain deadline passed: whatever is still in flight is cut."""
        self.end(Side.CLIENT, Ending.SHUTDOWN)

    def in_flight(self) -> str | None:
        """What this connection is busy with, in words for the drain's log lines ("GET
        http://a/slow (request id ...)", "tunnel CONNECT a:443 (...)"); None when idle."""
        if self.tunnel is not None:
            kind, flow = "tunnel ", self.tunnel.flow
        elif self.exchanges:
            kind, flow = "", self.exchanges[0].flow
        else:
            return None
        if flow is None:
            return kind + "(no request)"
        req = flow.request
        what = f"{req.method} {req.url}" if req is not None else "a request still arriving"
        return f"{kind}{what} (request id {flow.id})"

    # -- reading the client ----------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client."""
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._inside:
            self._first_bytes(data)
            return
        reader = self.reader
        reader.feed(data)
        if reader.events:
            self.events.extend(reader.events)
            reader.events = []
            self.pump()

    def pump(self) -> None:
        """Hand queued request events on as far as their exchanges can take them."""
        if self._pumping:
            return  # an exchange finished inside the loop below: it carries on from there
        self._pumping = True
        events = self.events
        exchanges = self.exchanges
        try:
            while events and not self.closed and self.tunnel is None:
                event = events[0]
                last = exchanges[-1] if exchanges else None
                if type(event) is RequestHead or (
                    type(event) is ProtocolError and (last is None or last.request_complete)
                ):
                    # A new request, or one refused at its head: it queues behind the others.
                    if len(exchanges) >= _MAX_QUEUED_EXCHANGES:
                        break
                    events.popleft()
                    ex = Exchange(self, event)
                    exchanges.append(ex)
                    if len(exchanges) == 1:
                        ex.start()
                elif type(event) is TunnelData:
                    if last is not None:
                        break  # its CONNECT or Upgrade exchange takes it
                    # Bytes after a CONNECT or Upgrade that did not happen: the reader stopped
                    # at them, so this connection can carry nothing more.
                    events.clear()
                    self.end(Side.CLIENT, Ending.DONE)
                elif last is None or last is not exchanges[0]:
                    break  # the body of a queued request waits for its turn
                elif self._paused_upstream and type(event) is Body:
                    break  # the upstream's buffer is full: the rest waits until it drains
                elif type(event) is ProtocolError or last.state in TAKES_BODY:
                    events.popleft()
                    last.request_event(event)
                else:
                    break  # the upstream is not ready for the body yet
        finally:
            self._pumping = False
        queued = len(events) > _MAX_QUEUED_EVENTS
        if queued != self._paused_queue:
            self._paused_queue = queued
            self._update_client_reading()

    def drop_request_body(self) -> bool:
        """Drop what arrived of the current request's body; True if its end was among it."""
        events = self.events
        while events and (type(events[0]) is Body or events[0] is END):
            if type(events.popleft()) is EndOfMessage:
                return True
        return False

    def stop_reading(self) -> None:
        """Read no more requests from this connection (it closes after the current answer)."""
        self.reader.closed = True
        self.events.clear()

    def hook_wait(self, waiting: bool) -> None:
        """A hook of the current exchange takes its time: read nothing more meanwhile."""
        if waiting != self._paused_hook:
            self._paused_hook = waiting
            self._update_client_reading()

    def _update_client_reading(self) -> None:
        if self._paused_queue or self._paused_upstream or self._paused_hook:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    def exchange_done(self, ex: ResponseSide) -> None:
        """The current exchange is complete: keep the connection for the next, or end it."""
        if self.exchanges and self.exchanges[0] is ex:
            self.exchanges.popleft()
        if self._paused_upstream:
            self._paused_upstream = False
            self._update_client_reading()
        if (
            not ex.keep_alive
            or self.ctx.draining
            or (self.reader.closed and not self.events and not self.exchanges)
        ):
            # Requests pipelined behind a last one are never started.
            self.exchanges.clear()
            self.events.clear()
            self.end(Side.CLIENT, Ending.DONE)
        elif self.exchanges:
            self.exchanges[0].start()
        if self.events:
            self.pump()

    # -- backpressure ----------------------------------------------------------------------

    def client_write_blocked(self) -> None:
        """The client's send buffer is full: stop reading the upstream."""
        self.client_blocked = True
        if self.tunnel is not None:
            self.tunnel.client_write_blocked()
        elif self.exchanges and self.exchanges[0].upstream is not None:
            self.exchanges[0].upstream.pause_reading()

    def client_write_unblocked(self) -> None:
        """The client's send buffer drained."""
        self.client_blocked = False
        if self.tunnel is not None:
            self.tunnel.client_write_unblocked()
        elif self.exchanges:
            ex = self.exchanges[0]
            ex.client_drained()
            if ex.upstream is not None and not self.client_blocked:
                ex.upstream.resume_reading()

    def upstream_write_blocked(self) -> None:
        """The upstream's send buffer is full: stop reading the client."""
        self._paused_upstream = True
        self._update_client_reading()

    def upstream_write_unblocked(self) -> None:
        """The upstream's send buffer drained."""
        self._paused_upstream = False
        self._update_client_reading()
        if self.events:
            self.pump()  # body pieces queued while it was full

    # -- CONNECT and tunnels ---------------------------------------------------------------

    def intercept(
        self,
        host: str,
        port: int,
        origin: UpstreamConnection | None,
        certificate: object | None,
        flow: HTTPFlow | None = None,
        route: Route | None = None,
    ) -> None:
        """An intercepted CONNECT: answer 200, then read what the client sends inside. Its
        first bytes say what: TLS (terminated here), plain HTTP, or anything else (relayed).

        `origin`: a TCP connection to it (eager connects), used for whichever that is; TLS to
        the origin runs before the client's, so the leaf copies the origin certificate's names.
        `certificate`: those names' source when it is known already (a pooled connection).
        `flow`: the CONNECT's, recorded again with its totals if the tunnel becomes a relay.
        `route`: the upstream proxy the CONNECT goes through, should it become a relay."""
        leftover = self._take_tunnel_bytes()
        self._connect_flow = flow
        self._connect_route = route
        if flow is not None:
            self.parent_id = flow.id
        self.exchanges.clear()
        self.client.write(http1.CONNECT_ESTABLISHED)
        self.intercepted = ("https", host, port)
        self._certificate = certificate
        self._inside = True
        if origin is not None:
            self._origin = origin
            origin.owner = _Origin(self)
        if leftover:
            self._first_bytes(leftover)

    def _first_bytes(self, data: bytes) -> None:
        assert self.intercepted is not None
        _, host, port = self.intercepted
        self._inside = False
        self.reader = reader = http1.RequestReader()
        origin = self._origin
        if data[0] == 0x16:  # a TLS handshake record: a ClientHello
            if origin is None:
                self._terminate_tls(data, self._certificate)
                return
            # Hold it while we shake hands with the origin: its certificate's names go into
            # the leaf the client is about to see.
            self._hello = data
            self.client.pause_reading()
            self.ctx.pool.start_tls(origin)
            return
        reader.feed(data)
        events, reader.events = reader.events, []
        if any(type(event) is ProtocolError for event in events):
            # Neither TLS nor HTTP: whatever it is goes to the origin untouched.
            self.stop_reading()
            self.events.append(TunnelData(data))
            if origin is not None:
                self._origin = origin.owner = None
                self.relay(origin, self._connect_flow)
            elif self.ctx.tunnel_connect is None:
                carry_out(Side.UPSTREAM, Ending.UNREACHABLE, Phase.TUNNEL, None, self.client)
            else:
                self.client.pause_reading()  # until the tunnel can take the rest
                self.ctx.tunnel_connect(host, port, self, self._connect_route)
            return
        self.intercepted = ("http", host, port)
        if origin is not None:  # plain HTTP to the origin: its first request takes this one
            self._origin = origin.owner = None
            route = origin.route
            if route is not None and route.http:
                # Plain requests to an HTTP proxy go to the proxy itself, not down a tunnel.
                carry_out(Side.UPSTREAM, Ending.DONE, Phase.IDLE, origin)
            else:
                self.ctx.pool.release(origin, ("http", host, port, route))
        self.events.extend(events)
        self.pump()

    def origin_verified(self, origin: UpstreamConnection) -> None:
        """The origin's TLS handshake is done and its certificate verified: the client's goes
        ahead with a leaf naming what the origin's certificate names."""
        self._origin = origin.owner = None
        certificate = origin.peer_certificate()
        self.ctx.pool.release(origin)  # the first request inside takes it
        self._terminate_tls(self._hello, certificate)

    def _origin_ended(self, side: Side, ending: Ending) -> Action:
        # Between the CONNECT's 200 and the origin's verified handshake, the pair is the
        # client and that connection.
        origin = self._origin
        this, peer = (self.client, origin) if side is Side.CLIENT else (origin, self.client)
        action = carry_out(side, ending, Phase.HANDSHAKE, this, peer)
        self._origin = None
        if action is Action.ESTABLISH and self._hello:
            self._terminate_tls(self._hello, None)
        return action

    def _terminate_tls(self, hello: bytes, certificate: object | None) -> None:
        assert self.intercepted is not None and self.ctx.intercept is not None
        _, host, port = self.intercepted
        self._hello = b""
        self._update_client_reading()
        self.client.start_tls(self.ctx.intercept(host, port, certificate), hello, host)

    # The opaque relay inside a lazily intercepted CONNECT reports here (context.TunnelOwner).

    @property
    def gone(self) -> bool:
        """The client has ended."""
        return self.closed

    def tunnel_connected(self, leg: TunnelUpstream) -> None:
        """The origin is connected: relay the bytes held so far, and all that follow."""
        self.relay(leg, self._connect_flow)

    def tunnel_failed(self, reason: Failure) -> None:
        """The origin could not be reached; the client had its 200 already: it is cut."""
        carry_out(Side.UPSTREAM, Ending.UNREACHABLE, Phase.TUNNEL, None, self.client)

    def _take_tunnel_bytes(self) -> bytes:
        """Drop the CONNECT's (or upgrade's) END and return the bytes that followed its head."""
        data = b""
        events = self.events
        while events and (events[0] is END or type(events[0]) is TunnelData):
            event = events.popleft()
            if isinstance(event, TunnelData):
                data = event.data
        return data

    def relay(self, leg: UpstreamConnection | TunnelUpstream, flow: HTTPFlow | None) -> None:
        """From now on relay both directions opaquely (after a 101, or a passthrough 200);
        `flow`, the one that opened it, is recorded again when the relay is over."""
        ctx = self.ctx
        self._connect_flow = None
        self.tunnel = tunnel = Tunnel(
            self.client, leg, ctx.clock, ctx.half_close_timeout, flow, ctx.hooks.tunnel_end
        )
        leg.relay_to(tunnel)
        leftover = self._take_tunnel_bytes()
        self.events.clear()
        self.exchanges.clear()
        self._paused_queue = self._paused_upstream = False
        self._update_client_reading()
        if leftover:
            tunnel.from_client(leftover)


class _Origin:
    """What an intercepted CONNECT's origin connection reports to between the 200 and its
    verified TLS handshake (upstream.Owner): every ending is the session's HANDSHAKE row."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """The handshake completed and the certificate was verified."""
        if conn is self.session._origin:
            self.session.origin_verified(conn)

    def upstream_failed(self, conn: UpstreamConnection, reason: Failure) -> None:
        """Not for a connection already made."""

    def upstream_events(self, conn: UpstreamConnection, events: list[ResponseEvent]) -> None:
        """The origin spoke first, unasked: its connection cannot serve this tunnel."""
        if conn is self.session._origin:
            self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR)

    def upstream_timed_out(self, conn: UpstreamConnection) -> None:
        """The handshake did not finish within the read timeout."""
        if conn is self.session._origin:
            self.session.end(Side.UPSTREAM, Ending.TIMED_OUT)

    def upstream_lost(self, conn: UpstreamConnection, ending: Ending, reason: Failure) -> None:
        """The connection ended (a TLS failure included)."""
        if conn is self.session._origin:
            self.session.end(Side.UPSTREAM, ending)

    def upstream_write_blocked(self) -> None:
        """Nothing of the client's is written there before the handshake."""

    def upstream_write_unblocked(self) -> None:
        """See upstream_write_blocked."""
