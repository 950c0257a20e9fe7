"""One leg of a proxied pair: the transport mechanics every connection shares.

`lifecycle` decides what happens when a connection ends; this module is the only place that
carries those decisions out on a transport: abort (RST now, with the reason recorded so the
ending is classified as ours), orderly close (FIN once the buffer drains, with a timed abort
behind it so a peer that never reads cannot hold us), and the bookkeeping of each ending.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import Counters, SocketRegistry
from .lifecycle import DRAIN_GRACE, Ending, Side, classify


@implementer(IPushProducer)
class BufferSignal:
    """Registered as a transport's streaming producer only to hear when its send buffer fills
    (`full`) and drains (`drained`): the hook for pausing the other leg (backpressure)."""

    __slots__ = ("full", "drained")

    def __init__(self, full: Callable[[], None], drained: Callable[[], None]) -> None:
        self.full = full
        self.drained = drained

    def pauseProducing(self) -> None:
        self.full()

    def resumeProducing(self) -> None:
        self.drained()

    def stopProducing(self) -> None:
        pass


class Leg(Protocol):
    """Base for the client-side and upstream-side protocols."""

    side: Side = Side.CLIENT

    def __init__(
        self, clock: IReactorTime, counters: Counters, registry: SocketRegistry | None
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.registry = registry
        self.connected_ = False
        self.ended: Ending | None = None  # set once connectionLost has been handled
        self._aborted_for: Ending | None = None
        self._closed_for: Ending | None = None
        self._drain_timer: Any = None
        self._fd = -1

    # -- bookkeeping -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        # Responses are written in pieces (head, then body); with Nagle on, a small last piece
        # waits ~40 ms for the peer's delayed ACK. TLS wrappers forward this to the socket.
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            try:
                setTcpNoDelay(True)
            except OSError:
                pass
        side = self.side.value
        self.counters.open[side] += 1
        self.counters.total[side] += 1
        if self.registry is not None:
            handle = getattr(self.transport, "getHandle", None)
            sock = handle() if handle is not None else None
            fileno = getattr(sock, "fileno", None)
            if fileno is not None:
                self._fd = fileno()
                self.registry.add(self._fd, self)

    def ending_of(self, reason: Failure) -> Ending:
        """Classify and count this connection's ending (call once, from connectionLost)."""
        ending = classify(reason, self._aborted_for)
        if ending is Ending.CLEAN and self._closed_for is not None:
            ending = self._closed_for
        self.ended = ending
        side = self.side.value
        if self.connected_:
            self.counters.open[side] -= 1
            self.connected_ = False
        self.counters.endings[side, ending.value] += 1
        if ending is Ending.TLS_FAILED:
            self.counters.tls_failures[side] += 1
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        if self._fd >= 0 and self.registry is not None:
            self.registry.remove(self._fd, self)
            self._fd = -1
        return ending

    # -- mechanics -------------------------------------------------------------------------------

    def abort(self, reason: str, ending: Ending = Ending.ABORTED) -> None:
        """RST now. `reason` is counted; `ending` is how the loss will be classified."""
        if self.ended is not None or self._aborted_for is not None or self.transport is None:
            return
        self._aborted_for = ending
        self.counters.aborts[reason] += 1
        self.transport.abortConnection()

    def close(self, why: Ending | None = None) -> None:
        """Orderly close once buffered bytes are written; aborted if that takes too long.

        `why` (e.g. TIMED_OUT) is how the resulting clean ending is counted.
        """
        if self.ended is not None or self.transport is None or self._drain_timer is not None:
            return
        self._closed_for = why
        # Twisted's TLS layer postpones its close_notify while a producer is registered, and
        # ours stays registered for the connection's life: let go of it so the close happens.
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # none registered
        self.transport.loseConnection()
        self._drain_timer = self.clock.callLater(DRAIN_GRACE, self._drain_expired)

    def truncate(self, reason: str, framed: bool) -> None:
        """End a response that was cut short, visibly: never as a clean end of message.

        `framed`: the client's framing (length or chunks) shows the body is incomplete, so the
        bytes already relayed are flushed and then the connection closes. Otherwise only a reset
        can say "incomplete", and buffered bytes are dropped with it.
        """
        if not framed:
            self.abort(reason)
            return
        if self.ended is None and self._aborted_for is None:
            self.counters.aborts[reason] += 1
            self.close(Ending.ABORTED)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self.abort("drain_timeout", Ending.TIMED_OUT)

    def half_close(self) -> None:
        """Send FIN, keep reading (tunnels only; TLS has no half-close)."""
        if self.ended is None and self.transport is not None:
            self.transport.loseWriteConnection()

    def pause_reading(self) -> None:
        """Stop reading from this socket (backpressure)."""
        if self.ended is None and self.transport is not None:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from this socket again."""
        if self.ended is None and self.transport is not None:
            self.transport.resumeProducing()

    def sigpipe_abort(self) -> None:
        """Called from the SIGPIPE handler (close mode) for a socket that hung up."""
        self.abort("sigpipe_handler")
