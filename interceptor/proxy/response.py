"""The upstream's half of an exchange: the Owner its upstream connection reports to, and the
response relayed from there to the client.

`Exchange` (exchange.py) is built on this: there the request side, routing, our own answers and
the endings; here what the origin says and does. Both halves share the exchange's state, moved
only through the TRANSITIONS table (states.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from ..flow import Flow, Response
from . import http1
from .context import ProxyContext
from .events import (
    CHUNKED,
    END,
    NO_BODY,
    Body,
    Framing,
    Interim,
    ProtocolError,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    Upgraded,
)
from .headers import strip_hop_by_hop
from .leg import Leg, end
from .lifecycle import Ending, Phase, Side, connect_ending, connect_failure, stale_reuse
from .states import MOVES, State, Step
from .upstream import UpstreamConnection

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
        "in_framing",
        "out_framing",
        "upstream_keep_alive",
    )
    session: Session
    ctx: ProxyContext
    flow: Flow
    head: RequestHead
    state: State
    upstream: Leg | None
    keep_alive: bool  # the client connection stays open after this exchange
    http10: bool  # the client speaks HTTP/1.0
    request_complete: bool
    retried: bool
    _request_bytes: bytes
    in_framing: Framing  # how the upstream frames its response
    out_framing: Framing  # how we frame it toward the client
    upstream_keep_alive: bool  # the upstream connection may be pooled afterwards

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
        detail = self.ctx.describe_tls_failure(reason) if ending is Ending.TLS_FAILED else ""
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
        self.session.intercept(req.host, req.port, conn, certificate)

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
        self.session.relay(leg)

    def _reached_ourselves(self, leg: Leg) -> bool:
        """Refuse a CONNECT whose connection led back to this proxy (see Exchange)."""
        raise NotImplementedError

    def tunnel_failed(self, reason: Failure) -> None:
        """The passthrough upstream could not be reached."""
        if self.state is State.CONNECTING:
            self.upstream = None
            status, text = connect_failure(reason)
            self.session.end(Side.UPSTREAM, connect_ending(status), text)

    # -- the response ----------------------------------------------------------------------

    def upstream_events(self, conn: UpstreamConnection, events: list[ResponseEvent]) -> None:
        """Response events from our upstream connection, in order."""
        client = self.session.client
        for i, event in enumerate(events):
            if type(event) is Body:
                data = event
                self.flow.bytes_out += len(data)
                self.ctx.counters.bytes_to_client += len(data)
                client.write(http1.body_piece(data, self.out_framing))
                continue  # the common case: the connection stays ours
            if type(event) is ResponseHead:
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

    def _response_head(self, head: ResponseHead) -> None:
        if self.state is not State.SENT:
            self.session.end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, "unexpected upstream response")
            return
        flow = self.flow
        headers = strip_hop_by_hop(head.headers)
        via = self.ctx.via_for(head.version)
        if via is not None:
            headers.append((b"Via", via))
        flow.response = resp = Response(head.status, head.reason, headers)
        self.ctx.hooks.response(flow)
        data, self.out_framing, self.keep_alive = http1.client_response_head(
            resp.status, resp.reason, resp.headers, head.framing, self.http10, self.keep_alive
        )
        self.in_framing = head.framing
        self.upstream_keep_alive = head.keep_alive
        flow.status = resp.status
        self._to(Step.RESPOND)
        self.session.client.write(data)

    def _response_end(self) -> None:
        if self.state is not State.RESPONDING:
            return
        if self.out_framing is CHUNKED:
            self.session.client.write(http1.LAST_CHUNK)
        if self.request_complete:
            self._to(Step.COMPLETE)
            self._complete()
            return
        # The origin answered before reading the whole body: that connection's framing is in
        # doubt now, and so is the client's; its body is read (and dropped) to its end.
        self.keep_alive = False
        self._to(Step.EARLY)
        self.session.end(Side.UPSTREAM, Ending.EARLY_RESPONSE)

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
        self.session.relay(conn)

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
        self.ctx.record(self.flow)
        self.session.exchange_done(self)
