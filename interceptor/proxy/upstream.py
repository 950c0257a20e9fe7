"""The origin side: connections to upstream servers, a pool of idle ones, TLS with verification.

A connection belongs to one exchange at a time (its `owner`) and reports response events, its
timeouts and its ending to it; idle, it belongs to the pool; after a 101 it belongs to a tunnel
(`relay`). For TLS, nothing is written before the handshake has completed and the certificate has
been verified: the owner is told "ready" only then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, cast

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import Counters, SocketRegistry
from .events import ResponseEvent, TunnelData
from .http1 import ResponseReader
from .leg import BufferSignal, Leg, TLSCapable, end
from .lifecycle import Ending, Phase, Side
from .via import Route, route_endpoint

# (scheme, host, port, route): connections through an upstream proxy are never mixed with
# direct ones, nor with another proxy's.
Key = tuple[str, str, int, Route | None]

SURPLUS_GRACE = 1.0  # seconds idle before a connection beyond the pool size is closed


class Owner(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """Connected (and, for TLS, verified): the request may be sent."""

    def upstream_failed(self, conn: UpstreamConnection, reason: Failure) -> None:
        """The connection could not be made."""

    def upstream_events(self, conn: UpstreamConnection, events: list[ResponseEvent]) -> None:
        """Response events parsed from what the upstream sent; any it does not take (it let go
        of the connection part-way) it hands back to `conn.unclaimed`."""

    def upstream_timed_out(self, conn: UpstreamConnection) -> None:
        """Nothing arrived for `read_timeout` while a response was owed."""

    def upstream_lost(self, conn: UpstreamConnection, ending: Ending, reason: Failure) -> None:
        """The connection ended."""

    def upstream_write_blocked(self) -> None:
        """The upstream's send buffer is full."""

    def upstream_write_unblocked(self) -> None:
        """The upstream's send buffer drained."""


class Relay(Protocol):
    """What a connection switched to an opaque relay (after a 101) reports to."""

    def from_upstream(self, data: bytes) -> None:
        """Bytes from the upstream."""

    def ended(self, side: Side, ending: Ending) -> None:
        """A leg ended or half-closed."""

    def upstream_write_blocked(self) -> None:
        """The upstream's send buffer is full."""

    def upstream_write_unblocked(self) -> None:
        """The upstream's send buffer drained."""


@implementer(IHandshakeListener)
class UpstreamConnection(Leg):
    """An HTTP/1.1 connection to an origin, parsed through a ResponseReader."""

    side = Side.UPSTREAM

    def __init__(self, pool: Pool, key: Key, owner: Owner | None, tls: bool) -> None:
        super().__init__(pool.clock, pool.counters, pool.registry)
        self.pool = pool
        self.key = key
        self.owner = owner
        self.relay: Relay | None = None  # set after a 101: bytes are relayed opaquely
        self.tls = tls
        self.reader = ResponseReader()
        self.ready = False
        self.requests = 0  # requests sent on this connection so far
        self.idle_since = 0.0
        self.reading_paused = False
        self._last_activity = 0.0
        self._read_timer: IDelayedCall | None = None
        # When the connect began, TCP was up and TLS verified (mitmproxy's names; capture's
        # timings). None: not yet, or never.
        self.timestamp_start = pool.clock.seconds()
        self.timestamp_tcp_setup: float | None = None
        self.timestamp_tls_setup: float | None = None

    @property
    def route(self) -> Route | None:
        """The upstream proxy this connection goes through (None: direct)."""
        return self.key[3]

    def first_use(self) -> tuple[float, float | None, float | None] | None:
        """(connect began, TCP up, TLS verified) while the connection serves its first
        request, whose timings its setup belongs to (capture, access log); None after."""
        if self.requests > 1:
            return None
        return self.timestamp_start, self.timestamp_tcp_setup, self.timestamp_tls_setup

    def connectionMade(self) -> None:
        super().connectionMade()
        self.timestamp_tcp_setup = now = self.clock.seconds()
        self.counters.upstream_connect.observe(now - self.timestamp_start)
        assert self.stream is not None  # makeConnection set it
        self.stream.registerProducer(BufferSignal(self._buffer_full, self._buffer_drained), True)
        if not self.tls:
            self._ready()
        else:
            self._await_handshake()

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> None:
        """Begin TLS on this TCP connection (an eager CONNECT's origin, once the client spoke
        TLS); the owner hears "ready" once the certificate is verified, as for a new one."""
        self.tls = True
        self.ready = False
        transport = cast(TLSCapable, self.transport)
        transport.startTLS(creator)  # wraps the transport in place: our stream stays valid
        self._await_handshake()

    def _await_handshake(self) -> None:
        # The handshake is owed like a response: an origin that never finishes it times out as
        # one that never answers does.
        self._last_activity = self.clock.seconds()
        if self._read_timer is None:
            self._read_timer = self.clock.callLater(self.pool.read_timeout, self._check_read)

    def handshakeCompleted(self) -> None:
        # Twisted verified chain and name before calling this; only now may bytes flow.
        self.timestamp_tls_setup = now = self.clock.seconds()
        if self.timestamp_tcp_setup is not None:
            self.counters.upstream_tls.observe(now - self.timestamp_tcp_setup)
        self._ready()

    def _buffer_full(self) -> None:
        target = self.relay or self.owner
        if target is not None:
            target.upstream_write_blocked()

    def _buffer_drained(self) -> None:
        target = self.relay or self.owner
        if target is not None:
            target.upstream_write_unblocked()

    def _ready(self) -> None:
        self.ready = True
        if self.owner is not None:
            self.owner.upstream_ready(self)

    def peer_certificate(self) -> object | None:
        """The origin's certificate, once TLS is up (opaque here: the tls package reads it)."""
        get = getattr(self.stream, "getPeerCertificate", None)
        return get() if get is not None else None

    def relay_to(self, relay: Relay) -> None:
        """From now on (after a 101) this connection is one leg of an opaque relay."""
        self.relay = relay

    def connect_failed(self, reason: Failure) -> None:
        """The connect attempt failed (refused, DNS, timeout, cancelled)."""
        self.connecting = None
        if self._aborted_for is not None:
            return  # our own cancel: the owner asked for it
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_failed(self, reason)

    def send_request(self, head: bytes, head_only: bool) -> None:
        """Send a request head; from now on the upstream owes us a response."""
        self.reader.expect(head_only)
        self.requests += 1
        self._last_activity = self.clock.seconds()
        if self._read_timer is None:
            self._read_timer = self.clock.callLater(self.pool.read_timeout, self._check_read)
        if self.ended is None and self.stream is not None:
            self.stream.write(head)

    def write(self, data: bytes) -> None:
        """Send request bytes (activity for the read timeout)."""
        self._last_activity = self.clock.seconds()
        if self.ended is None and self.stream is not None:
            self.stream.write(data)

    def pause_reading(self) -> None:
        """Stop reading (the client is slow); the read timeout does not count meanwhile."""
        self.reading_paused = True
        super().pause_reading()

    def resume_reading(self) -> None:
        """Read again, if we had paused."""
        if self.reading_paused:
            self.reading_paused = False
            self._last_activity = self.clock.seconds()
            super().resume_reading()

    def _check_read(self) -> None:
        # Lazy timer: activity only stamps a time; the timer re-arms itself from that stamp.
        self._read_timer = None
        owner = self.owner
        if self.ended is not None or owner is None or self.relay is not None:
            return  # gone, idle in the pool (it has its own timeout), or an upgraded relay
        now = self.clock.seconds()
        if self.reading_paused:
            self._last_activity = now  # we are the ones not reading: not the upstream's fault
        deadline = self._last_activity + self.pool.read_timeout
        if now >= deadline:
            owner.upstream_timed_out(self)
            return
        self._read_timer = self.clock.callLater(deadline - now, self._check_read)

    def dataReceived(self, data: bytes) -> None:
        self._last_activity = self.clock.seconds()
        if self.relay is not None:
            self.relay.from_upstream(data)
            return
        owner = self.owner
        if owner is None:
            # Idle in the pool and the origin talks: its framing and ours disagree.
            end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, Phase.IDLE, self)
            return
        reader = self.reader
        reader.feed(data)
        events = reader.events
        if not events:
            return
        reader.events = []
        owner.upstream_events(self, events)

    def unclaimed(self, events: list[ResponseEvent]) -> None:
        """Events its exchange did not take: it let go of this connection part-way through."""
        relay = self.relay
        if relay is not None:  # switched by a 101: the rest is the new protocol's
            for event in events:
                if type(event) is TunnelData and event.data:
                    relay.from_upstream(event.data)
        elif events:
            # Pooled (or closing) and the origin still talks: its framing and ours disagree.
            end(Side.UPSTREAM, Ending.PROTOCOL_ERROR, Phase.IDLE, self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ending = self.ending_of(reason)
        if self._read_timer is not None and self._read_timer.active():
            self._read_timer.cancel()
        self._read_timer = None
        if self.relay is not None:
            self.relay.ended(Side.UPSTREAM, ending)
            return
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(self, ending, reason)
        else:
            self.pool.discard(self)

    @property
    def reusable(self) -> bool:
        """Still connected, and nothing odd was seen on it."""
        # (A connection we abort or close is let go of first: it is never offered back.)
        return self.ended is None and self.ready and not self.reader.spurious


class OneShotFactory(Factory):
    """Hands a pre-built protocol to an endpoint."""

    noisy = False

    def __init__(self, proto: Leg) -> None:
        self._proto = proto

    def buildProtocol(self, addr: IAddress | None) -> Leg:
        return self._proto


class Pool:
    """Idle persistent upstream connections per (scheme, host, port), shared by all clients."""

    def __init__(
        self,
        reactor: object,
        clock: IReactorTime,
        counters: Counters,
        registry: SocketRegistry | None,
        size: int,
        idle_timeout: float,
        connect_timeout: float,
        hosts: Mapping[str, str],
        tls_creator: Callable[[str], IOpenSSLClientConnectionCreator] | None = None,
        read_timeout: float = 60.0,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.counters = counters
        self.registry = registry
        self.size = size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.hosts = hosts
        self.tls_creator = tls_creator
        self.read_timeout = read_timeout
        self.idle: dict[Key, list[UpstreamConnection]] = {}
        self._sweep: IDelayedCall | None = None

    def acquire(self, key: Key, owner: Owner) -> UpstreamConnection | None:
        """An idle connection for `key`, now owned by `owner`, or None."""
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.reusable:
                conn.owner = owner
                return conn
        return None

    def idle_certificate(self, key: Key) -> object | None:
        """The origin certificate of an idle verified connection for `key`, if one is pooled."""
        for conn in reversed(self.idle.get(key, ())):
            if conn.reusable and conn.tls:
                return conn.peer_certificate()
        return None

    def connect(self, key: Key, owner: Owner, tls: bool | None = None) -> UpstreamConnection:
        """Start a new connection owned by `owner`: TLS for https unless `tls` is False (TCP
        only, for `start_tls` later).

        Connect errors (refused, DNS, timeout) reach the owner's `upstream_failed`; everything
        after the TCP connect, TLS failures included, its other callbacks.
        """
        scheme, host, port, route = key
        if tls is None:
            tls = scheme == "https"
        conn = UpstreamConnection(self, key, owner, tls)
        # Plain HTTP through an HTTP proxy goes to the proxy (in absolute form); everything
        # else through a proxy ("ws": an upgrade through an HTTP proxy) through its tunnel.
        endpoint = route_endpoint(
            self.reactor, route, host, port, self.connect_timeout, self.hosts, scheme != "http"
        )
        if tls:
            if self.tls_creator is None:
                raise RuntimeError("https upstream without TLS support")
            endpoint = endpoints.wrapClientTLS(self.tls_creator(host), endpoint)
        d = endpoint.connect(OneShotFactory(conn))
        if not d.called:
            conn.connecting = d
        d.addErrback(conn.connect_failed)
        return conn

    def start_tls(self, conn: UpstreamConnection) -> None:
        """Begin verified TLS on a TCP connection made with `tls=False`, for its host."""
        if self.tls_creator is None:
            raise RuntimeError("https upstream without TLS support")
        conn.start_tls(self.tls_creator(conn.key[1]))

    def release(self, conn: UpstreamConnection, key: Key | None = None) -> None:
        """Take back a connection whose exchange ended cleanly (pooled for `key` from now on,
        if given: a TCP connection made for a CONNECT that carried plain HTTP)."""
        conn.owner = None
        if key is not None:
            conn.key = key
        if not conn.reusable or self.size == 0:
            end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, conn)
            return
        conns = self.idle.setdefault(conn.key, [])
        conn.idle_since = self.clock.seconds()
        conns.append(conn)
        # Beyond `size`, the surplus is closed once it has sat idle for SURPLUS_GRACE: under
        # steady concurrency above `size` a connection is idle only between two requests, and
        # closing it at once would mean a new TCP (and TLS) handshake for a large share of them.
        self._schedule(SURPLUS_GRACE if len(conns) > self.size else self.idle_timeout / 2)

    def _schedule(self, delay: float) -> None:
        sweep = self._sweep
        if sweep is not None:
            if sweep.getTime() <= self.clock.seconds() + delay:
                return
            sweep.cancel()
        self._sweep = self.clock.callLater(delay, self._expire)

    def discard(self, conn: UpstreamConnection) -> None:
        """Forget a connection that ended while idle."""
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.idle[conn.key]

    def _expire(self) -> None:
        self._sweep = None
        now = self.clock.seconds()
        cutoff = now - self.idle_timeout
        surplus_cutoff = now - SURPLUS_GRACE
        next_delay = 0.0
        for key, conns in list(self.idle.items()):
            # Oldest first (release order): expired ones go, then the surplus beyond `size`
            # that has been idle past the grace; acquire() takes from the fresh end.
            keep = []
            excess = len(conns) - self.size
            for c in conns:
                if c.idle_since <= cutoff or (excess > 0 and c.idle_since <= surplus_cutoff):
                    excess -= 1
                    end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, c)
                else:
                    keep.append(c)
            if keep:
                self.idle[key] = keep
                delay = SURPLUS_GRACE if len(keep) > self.size else self.idle_timeout / 2
                next_delay = min(next_delay or delay, delay)
            else:
                del self.idle[key]
        if next_delay:
            self._sweep = self.clock.callLater(next_delay, self._expire)

    def idle_count(self) -> int:
        """Idle connections held now, all keys together."""
        return sum(len(c) for c in self.idle.values())

    def close_all(self) -> None:
        """Close every idle connection (shutdown)."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for conns in list(self.idle.values()):
            for c in list(conns):
                end(Side.UPSTREAM, Ending.SHUTDOWN, Phase.IDLE, c)
        self.idle.clear()
