"""The client side: the one Protocol that reads from, writes to, closes and starts TLS on clients.

It owns the client's timers (idle keep-alive, slow request head) and its send-buffer signals, and
hands everything else to the session. It is half-closeable so that tunnels can relay a FIN; in an
HTTP exchange the lifecycle table decides what a FIN means.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLContextFactory,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import SocketRegistry
from .context import ProxyContext, tls_failure_kind
from .leg import BufferSignal, Leg, TLSCapable
from .lifecycle import Ending, Side
from .session import Session

_log = Logger(namespace="interceptor.tls")

@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ClientConnection(Leg):
    """One client connection to the proxy."""

    side = Side.CLIENT

    def __init__(self, ctx: ProxyContext, registry: SocketRegistry | None = None) -> None:
        super().__init__(ctx.clock, ctx.counters, registry)
        self.ctx = ctx
        self.peer = "-"
        self.peer_host = ""  # the client's address alone, for the access policy
        self.session = Session(ctx, self)
        self._last = 0.0
        self._head_started = 0.0
        self._timer: IDelayedCall | None = None
        self._tls_host: str | None = None  # intercepted CONNECT host while its handshake runs
        self._tls_started = 0.0

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.stream is not None  # makeConnection set it
        peer = self.stream.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        self.peer = f"{host}:{port}" if host is not None else "unix"
        self.peer_host = host if host is not None else ""
        self.stream.registerProducer(self._buffer_signal(), True)
        clock = self.clock
        self._last = clock.seconds()
        self._timer = clock.callLater(self.ctx.idle_timeout, self._check_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a request we answered before reading it: dropped
        session = self.session
        self._last = now = self.clock.seconds()
        pending = session.head_pending
        session.client_data(data)
        if not pending and session.head_pending:
            # A head began and did not finish in this read: it now has header_timeout to do so.
            self._head_started = now
            deadline = now + self.ctx.header_timeout
            timer = self._timer
            if timer is not None and timer.getTime() > deadline:
                timer.reset(self.ctx.header_timeout)

    def readConnectionLost(self) -> None:
        if self.lingering:
            self.lingered()
            return
        self.session.client_lost(Ending.HALF_CLOSED)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ending = self.ending_of(reason)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._tls_host is not None:
            # Gone before our TLS handshake completed: an alert, or a close, against our leaf.
            self.ctx.learned.refused(self._tls_host)
            why = self.ctx.describe_client_tls_failure(reason, self._tls_host)
            self.counters.tls_failure_reasons["client", tls_failure_kind(why)] += 1
            _log.warn("{text}", text=f"{self.peer}: {why}", client=self.peer, host=self._tls_host)
        self.session.client_lost(ending)

    # -- what the session calls --------------------------------------------------------------

    def start_tls(self, factory: IOpenSSLContextFactory, leftover: bytes, host: str) -> None:
        """Terminate the client's TLS here for CONNECT `host`; `leftover` are bytes already read
        past the CONNECT head."""
        self._tls_host = host
        self._tls_started = self.clock.seconds()
        # The TCP transport itself: startTLS wraps it in place, so our stream stays valid.
        transport = cast(TLSCapable, self.transport)
        transport.unregisterProducer()
        transport.startTLS(factory)
        transport.registerProducer(self._buffer_signal(), True)
        if leftover:
            # A ClientHello pipelined behind the CONNECT head was read before TLS existed:
            # hand it to the TLS layer now, or the handshake waits forever.
            transport.protocol.dataReceived(leftover)

    def handshakeCompleted(self) -> None:
        self.session.client_conn.handshake_completed()  # (what Client.tls_established reads)
        # The client accepted the leaf we minted for this host.
        if self._tls_host is not None:
            self.ctx.learned.accepted(self._tls_host)
            self._tls_host = None
            self.counters.client_tls.observe(self.clock.seconds() - self._tls_started)

    def _buffer_signal(self) -> BufferSignal:
        session = self.session
        return BufferSignal(session.client_write_blocked, session.client_write_unblocked)

    # -- timers --------------------------------------------------------------------------------

    def _check_timeout(self) -> None:
        self._timer = None
        if self.ended is not None:
            return
        ctx = self.ctx
        session = self.session
        now = self.clock.seconds()
        if session.busy:
            deadline = now + ctx.idle_timeout  # not idle: the exchange or tunnel has its own
        elif session.head_pending:
            deadline = self._head_started + ctx.header_timeout
        else:
            deadline = self._last + ctx.idle_timeout
        if now >= deadline:
            session.timed_out()
            return
        self._timer = self.clock.callLater(deadline - now, self._check_timeout)


class ProxyFactory(Factory):
    """Builds a ClientConnection per accepted client."""

    noisy = False

    def __init__(self, ctx: ProxyContext, registry: SocketRegistry | None = None) -> None:
        self.ctx = ctx
        self.registry = registry

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection:
        return ClientConnection(self.ctx, self.registry)
