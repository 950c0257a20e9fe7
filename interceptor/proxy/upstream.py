"""The origin side: connections to upstream servers, a pool of idle ones, TLS with verification.

A connection belongs to one session at a time (its `owner`) and reports response events and its
ending to it; idle, it belongs to the pool. For TLS, nothing is written before the handshake has
completed and the certificate has been verified: the owner is told "ready" only then.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import Counters, SocketRegistry
from .http1 import ResponseReader
from .leg import BufferSignal, Leg
from .lifecycle import Ending, Side

Key = tuple[str, str, int]  # (scheme, host, port)

SURPLUS_GRACE = 1.0  # seconds idle before a connection beyond the pool size is closed


class Owner(Protocol):
    """What an upstream connection reports to the session using it."""

    def upstream_ready(self, conn: UpstreamConnection) -> None: ...
    def upstream_events(self, events: list[tuple[int, Any]]) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, ending: Ending, reason: Failure) -> None: ...
    def upstream_write_blocked(self) -> None: ...
    def upstream_write_unblocked(self) -> None: ...


@implementer(IHandshakeListener)
class UpstreamConnection(Leg):
    """An HTTP/1.1 connection to an origin, parsed through a ResponseReader."""

    side = Side.UPSTREAM

    def __init__(self, pool: Pool, key: Key, owner: Owner | None, tls: bool) -> None:
        super().__init__(pool.clock, pool.counters, pool.registry)
        self.pool = pool
        self.key = key
        self.owner = owner
        self.tls = tls
        self.reader = ResponseReader()
        self.ready = False
        self.requests = 0  # requests sent on this connection so far
        self.idle_since = 0.0
        self.reading_paused = False
        self.tunnel: Any = None  # set after a 101: bytes are relayed opaquely from then on
        self._last_activity = 0.0
        self._read_timer: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(BufferSignal(self._buffer_full, self._buffer_drained), True)
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        # Twisted verified chain and name before calling this; only now may bytes flow.
        self._ready()

    def _buffer_full(self) -> None:
        if self.owner is not None:
            self.owner.upstream_write_blocked()

    def _buffer_drained(self) -> None:
        if self.owner is not None:
            self.owner.upstream_write_unblocked()

    def _ready(self) -> None:
        self.ready = True
        if self.owner is not None:
            self.owner.upstream_ready(self)

    def send_request(self, head: bytes, head_only: bool) -> None:
        """Send a request head; from now on the upstream owes us a response."""
        self.reader.expect(head_only)
        self.requests += 1
        self._last_activity = self.clock.seconds()
        if self._read_timer is None:
            self._read_timer = self.clock.callLater(self.pool.read_timeout, self._check_read)
        self.transport.write(head)

    def send(self, data: bytes) -> None:
        """Send request body bytes."""
        self._last_activity = self.clock.seconds()
        self.transport.write(data)

    def pause_reading(self) -> None:
        self.reading_paused = True
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self._last_activity = self.clock.seconds()
            super().resume_reading()

    def _check_read(self) -> None:
        # Lazy timer: activity only stamps a time; the timer re-arms itself from that stamp.
        self._read_timer = None
        if self.ended is not None or self.owner is None or self.tunnel is not None:
            return  # gone, idle in the pool (it has its own timeout), or an upgraded relay
        timeout = self.pool.read_timeout
        now = self.clock.seconds()
        if self.reading_paused:
            self._last_activity = now  # we are the ones not reading: not the upstream's fault
        deadline = self._last_activity + timeout
        if now >= deadline:
            self.abort("upstream_read_timeout", Ending.TIMED_OUT)
            return
        self._read_timer = self.clock.callLater(deadline - now, self._check_read)

    def dataReceived(self, data: bytes) -> None:
        self._last_activity = self.clock.seconds()
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        owner = self.owner
        if owner is None:
            # Idle in the pool and the origin talks: its framing and ours disagree.
            self.abort("spurious_upstream_data")
            return
        reader = self.reader
        reader.feed(data)
        events = reader.events
        if events:
            reader.events = []
            owner.upstream_events(events)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        ending = self.ending_of(reason)
        if self._read_timer is not None and self._read_timer.active():
            self._read_timer.cancel()
        self._read_timer = None
        owner = self.owner
        self.owner = None
        if owner is not None:
            owner.upstream_lost(self, ending, reason)
        else:
            self.pool.discard(self)

    @property
    def reusable(self) -> bool:
        """Still connected, and nothing odd was seen on it."""
        return self.ended is None and self.ready and not self.reader.spurious


class OneShotFactory(Factory):
    """Hands a pre-built protocol to an endpoint."""

    noisy = False

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> Any:
        return self._proto


def _is_ip(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


class Pool:
    """Idle persistent upstream connections per (scheme, host, port), shared by all clients."""

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        counters: Counters,
        registry: SocketRegistry | None,
        size: int,
        idle_timeout: float,
        connect_timeout: float,
        hosts: Mapping[str, str],
        tls_creator: Callable[[str], Any] | None = None,
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
        self._sweep: Any = None

    def acquire(self, key: Key, owner: Owner) -> UpstreamConnection | None:
        """An idle connection for `key`, now owned by `owner`, or None."""
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.reusable:
                conn.owner = owner
                return conn
        return None

    def connect(self, key: Key, owner: Owner) -> tuple[UpstreamConnection, Deferred]:
        """Start a new connection owned by `owner`.

        The Deferred fails for connect errors (refused, DNS, timeout); everything after the TCP
        connect, TLS failures included, arrives through the owner's callbacks.
        """
        scheme, host, port = key
        address = self.hosts.get(host.lower(), host)
        tls = scheme == "https"
        conn = UpstreamConnection(self, key, owner, tls)
        version = _is_ip(address)
        endpoint: Any
        if version == 4:
            endpoint = endpoints.TCP4ClientEndpoint(
                self.reactor, address, port, timeout=self.connect_timeout
            )
        elif version == 6:
            endpoint = endpoints.TCP6ClientEndpoint(
                self.reactor, address, port, timeout=self.connect_timeout
            )
        else:
            endpoint = endpoints.HostnameEndpoint(
                self.reactor, address, port, timeout=self.connect_timeout
            )
        if tls:
            if self.tls_creator is None:
                raise RuntimeError("https upstream without TLS support")
            endpoint = endpoints.wrapClientTLS(self.tls_creator(host), endpoint)
        return conn, endpoint.connect(OneShotFactory(conn))

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose exchange ended cleanly."""
        conn.owner = None
        if not conn.reusable or self.size == 0:
            conn.close()
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
                    c.close()
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
                c.close()
        self.idle.clear()
