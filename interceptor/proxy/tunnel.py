"""Opaque relays: passthrough CONNECTs, and connections switched by a 101 (WebSocket...).

Bytes both ways, half-close relayed and bounded. Twisted never calls connectionLost by itself
once both halves of a TCP connection are shut, so when both directions have ended the tunnel is
DONE and both legs are closed; and a half-closed tunnel times out after `half_close_timeout`, so
a peer that never finishes cannot pin two descriptors. What each ending does is the lifecycle
table's TUNNEL rows, carried out by `leg.end`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ..http import Error, HTTPFlow
from ..process import Counters, SocketRegistry
from .context import TunnelOwner
from .leg import BufferSignal, Leg, end
from .lifecycle import Action, Ending, Phase, Side
from .upstream import OneShotFactory
from .via import Route, route_endpoint


class Tunnel:
    """The relay between a client leg and an upstream leg.

    `flow`: the CONNECT (or the request answered 101) that opened it; when the tunnel is over,
    it carries the bytes each way (`bytes_in` from the client, `bytes_out` to it), and the
    ending if it was not an orderly one, to `done` (the capture records it)."""

    def __init__(
        self,
        client: Leg,
        upstream: Leg,
        clock: IReactorTime,
        bound: float,
        flow: HTTPFlow | None = None,
        done: Callable[[HTTPFlow], None] | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.clock = clock
        self.bound = bound
        self.flow = flow
        self.done = done
        self.bytes_up = 0
        self.bytes_down = 0
        self._eof: set[Side] = set()  # directions whose sender has half-closed
        self._timer: IDelayedCall | None = None
        self._over = False

    def from_client(self, data: bytes) -> None:
        """Client bytes go to the upstream."""
        self.bytes_up += len(data)
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        """Upstream bytes go to the client."""
        self.bytes_down += len(data)
        self.client.write(data)

    def client_write_blocked(self) -> None:
        """Client send buffer full: stop reading upstream."""
        self.upstream.pause_reading()

    def client_write_unblocked(self) -> None:
        """Client send buffer drained."""
        self.upstream.resume_reading()

    def upstream_write_blocked(self) -> None:
        """Upstream send buffer full: stop reading the client."""
        self.client.pause_reading()

    def upstream_write_unblocked(self) -> None:
        """Upstream send buffer drained."""
        self.client.resume_reading()

    def ended(self, side: Side, ending: Ending) -> None:
        """The `side` leg ended or half-closed."""
        this, peer = (
            (self.client, self.upstream) if side is Side.CLIENT else (self.upstream, self.client)
        )
        if ending is Ending.HALF_CLOSED:
            self._eof.add(side)
        action = end(side, ending, Phase.TUNNEL, this, peer)
        if action is not Action.RELAY_HALF_CLOSE:
            self._cancel_timer()
            self._finish(side, ending)
        elif len(self._eof) == 2:
            self._cancel_timer()
            end(side, Ending.DONE, Phase.TUNNEL, this, peer)
            self._finish(side, Ending.DONE)
        elif self._timer is None:
            self._timer = self.clock.callLater(self.bound, self._expired)

    def _expired(self) -> None:
        self._timer = None
        end(Side.CLIENT, Ending.TIMED_OUT, Phase.TUNNEL, self.client, self.upstream)
        self._finish(Side.CLIENT, Ending.TIMED_OUT)

    def _finish(self, side: Side, ending: Ending) -> None:
        """Both legs are ending: the opening flow gets its totals, once."""
        if self._over:
            return
        self._over = True
        flow = self.flow
        if flow is None or self.done is None:
            return
        flow.bytes_in = self.bytes_up
        flow.bytes_out = self.bytes_down
        # How it ended, for the access log: the ending that closed it, and which sides had
        # half-closed (sent their FIN) before.
        fins = [s.value for s in (Side.CLIENT, Side.UPSTREAM) if s in self._eof and s is not side]
        flow.tunnel_ending = f"{side.value} {ending.value}" + (
            f" after {fins[0]} FIN" if fins else ""
        )
        if ending is not Ending.CLEAN and ending is not Ending.DONE and flow.error is None:
            flow.error = Error(f"tunnel ended: {side.value} {ending.value}", self.clock.seconds())
        self.done(flow)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IHalfCloseableProtocol)
class TunnelUpstream(Leg):
    """The upstream leg of a passthrough tunnel."""

    side = Side.UPSTREAM

    def __init__(
        self,
        owner: TunnelOwner,
        clock: IReactorTime,
        counters: Counters,
        registry: SocketRegistry | None,
    ) -> None:
        super().__init__(clock, counters, registry)
        self.owner = owner
        self.relay: Tunnel | None = None
        self.route: Route | None = None  # the upstream proxy it goes through (None: direct)

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.open:
            return  # aborted while connecting
        if self.owner.gone:
            end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, self)  # nobody waits for it any more
        else:
            self.owner.tunnel_connected(self)

    def connect_failed(self, reason: Failure) -> None:
        """The connect attempt failed (refused, DNS, timeout, cancelled)."""
        self.connecting = None
        if self._aborted_for is None and not self.owner.gone:  # not our own cancel
            self.owner.tunnel_failed(reason)

    def relay_to(self, tunnel: Tunnel) -> None:
        """Start relaying through `tunnel`; a full send buffer here pauses the client."""
        self.relay = tunnel
        assert self.stream is not None  # connected: it called tunnel_connected
        self.stream.registerProducer(
            BufferSignal(tunnel.upstream_write_blocked, tunnel.upstream_write_unblocked), True
        )

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.from_upstream(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.ended(Side.UPSTREAM, Ending.HALF_CLOSED)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ending = self.ending_of(reason)
        if self.relay is not None:
            self.relay.ended(Side.UPSTREAM, ending)


def connect_tunnel(
    reactor: IReactorTime,
    counters: Counters,
    registry: SocketRegistry | None,
    hosts: Mapping[str, str],
    connect_timeout: float,
    host: str,
    port: int,
    owner: TunnelOwner,
    route: Route | None = None,
) -> TunnelUpstream:
    """Start the upstream leg of a passthrough tunnel for `owner` (through `route`'s upstream
    proxy, if any); it reports back to it."""
    leg = TunnelUpstream(owner, reactor, counters, registry)
    leg.route = route
    endpoint = route_endpoint(reactor, route, host, port, connect_timeout, hosts)
    d = endpoint.connect(OneShotFactory(leg))
    if not d.called:
        leg.connecting = d
    d.addErrback(leg.connect_failed)
    return leg
