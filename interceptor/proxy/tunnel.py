"""Opaque relays: passthrough CONNECTs, and connections switched by a 101 (WebSocket...).

Bytes both ways, half-close relayed and bounded.

Twisted never calls connectionLost by itself once both halves of a TCP connection are shut, so
when both directions have ended we close both legs; and a half-closed tunnel is aborted after
`half_close_timeout`, so a peer that never finishes cannot pin two descriptors.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import Counters, SocketRegistry
from .leg import BufferSignal, Leg
from .lifecycle import Action, Ending, Phase, Side, decide
from .upstream import OneShotFactory


class Tunnel:
    """The relay between a client leg and an upstream leg."""

    def __init__(self, client: Leg, upstream: Leg, clock: IReactorTime, bound: float):
        self.client = client
        self.upstream = upstream
        self.clock = clock
        self.bound = bound
        self.client_eof = False  # client sent FIN
        self.upstream_eof = False  # upstream sent FIN
        self._timer: Any = None

    def from_client(self, data: bytes) -> None:
        """Client bytes go to the upstream."""
        if self.upstream.ended is None:
            self.upstream.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        """Upstream bytes go to the client."""
        if self.client.ended is None:
            self.client.transport.write(data)

    def client_write_blocked(self) -> None:
        """Client send buffer full: stop reading upstream."""
        self.upstream.pause_reading()

    def client_write_unblocked(self) -> None:
        """Client send buffer drained."""
        self.upstream.resume_reading()

    def client_ended(self, ending: Ending) -> None:
        """The client leg ended or half-closed."""
        if ending is Ending.HALF_CLOSED:
            self.client_eof = True
        self._act(
            decide(Side.CLIENT, ending, Phase.TUNNEL), self.upstream, f"client_{ending.value}"
        )

    def upstream_ended(self, ending: Ending) -> None:
        """The upstream leg ended or half-closed."""
        if ending is Ending.HALF_CLOSED:
            self.upstream_eof = True
        self._act(
            decide(Side.UPSTREAM, ending, Phase.TUNNEL), self.client, f"upstream_{ending.value}"
        )

    def _act(self, action: Action, peer: Leg, reason: str) -> None:
        if action is Action.RELAY_HALF_CLOSE:
            peer.half_close()
            if self.client_eof and self.upstream_eof:
                self._cancel_timer()
                self.client.close()
                self.upstream.close()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.bound, self._expired)
        elif action is Action.CLOSE_PEER:
            self._cancel_timer()
            peer.close()
        elif action is Action.ABORT_PEER:
            self._cancel_timer()
            peer.abort(reason)

    def _expired(self) -> None:
        self._timer = None
        self.client.abort("half_close_timeout", Ending.TIMED_OUT)
        self.upstream.abort("half_close_timeout", Ending.TIMED_OUT)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IHalfCloseableProtocol)
class TunnelUpstream(Leg):
    """The upstream leg of an opaque tunnel."""

    side = Side.UPSTREAM

    def __init__(
        self,
        session: Any,
        clock: IReactorTime,
        counters: Counters,
        registry: SocketRegistry | None,
        bound: float,
    ) -> None:
        super().__init__(clock, counters, registry)
        self.session = session
        self.bound = bound
        self.tunnel: Tunnel | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.session.closed:
            self.abort("client_gone")
            return
        client = self.session.client
        self.transport.registerProducer(
            BufferSignal(client.pause_reading, client.resume_reading), True
        )
        self.tunnel = Tunnel(self.session.client, self, self.clock, self.bound)
        self.session.tunnel_established(self.tunnel)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)

    def readConnectionLost(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_ended(Ending.HALF_CLOSED)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        ending = self.ending_of(reason)
        if self.tunnel is not None:
            self.tunnel.upstream_ended(ending)


def connect_tunnel(
    reactor: Any,
    counters: Counters,
    registry: SocketRegistry | None,
    hosts: Any,
    connect_timeout: float,
    bound: float,
    host: str,
    port: int,
    session: Any,
) -> Any:
    """Open the upstream leg of a passthrough tunnel for `session`; returns the connect Deferred."""
    leg = TunnelUpstream(session, reactor, counters, registry, bound)
    address = hosts.get(host.lower(), host)
    endpoint = endpoints.HostnameEndpoint(reactor, address, port, timeout=connect_timeout)
    d = endpoint.connect(OneShotFactory(leg))
    d.addErrback(session.tunnel_failed)
    return d
