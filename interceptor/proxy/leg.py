"""One leg of a proxied pair, and THE executor of the lifecycle table.

`lifecycle` decides what every ending does to both legs; `end` below looks that decision up and
carries it out. It is the only code that aborts (RST now, with the reason recorded so the ending
is classified as ours), closes (FIN once the buffer drains, with a timed abort behind it so a peer
that never reads cannot hold us), truncates or half-closes a connection. A test walks the source
tree and fails on any such call anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as Interface

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..process import Counters, SocketRegistry
from .lifecycle import DRAIN_GRACE, Action, Ending, Phase, Side, classify, decide


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


class StreamTransport(Interface):
    """What the legs use of a transport: Twisted's TCP and TLS transports provide all of it
    (ITransport, which Protocol declares, is only the common base)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def getPeer(self) -> IAddress: ...


class TLSCapable(StreamTransport, Interface):
    """A TCP transport that can start TLS in place (Twisted's ITLSTransport)."""

    protocol: IProtocol

    def startTLS(self, contextFactory: Any) -> None: ...


class Leg(Protocol):
    """Base for the client-side and upstream-side protocols: bookkeeping and mechanics."""

    side: Side = Side.CLIENT

    def __init__(
        self, clock: IReactorTime, counters: Counters, registry: SocketRegistry | None
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.registry = registry
        self.connected_ = False
        self.ended: Ending | None = None  # set once connectionLost has been handled
        # The connect attempt while there is no transport yet: an abort then cancels it.
        self.connecting: Deferred[Any] | None = None
        self.stream: StreamTransport | None = None  # the transport, once connected
        self._aborted_for: Ending | None = None
        self._closed_for: Ending | None = None
        self._drain_timer: IDelayedCall | None = None
        self._fd = -1
        # The peer may still be sending what we no longer read (a request body we answered
        # before it arrived): a close then lingers (see _close).
        self.linger = False
        self.lingering = False

    @property
    def peer_text(self) -> str | None:
        """The peer's address as "host:port" (None before a connection); kept once read,
        since a pooled connection serves many flows."""
        text: str | None = self.__dict__.get("_peer_text")
        if text is None and self.stream is not None:
            peer = self.stream.getPeer()
            host, port = getattr(peer, "host", None), getattr(peer, "port", None)
            text = self.__dict__["_peer_text"] = f"{host}:{port}" if host is not None else None
        return text

    # -- bookkeeping -------------------------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self.stream = cast(StreamTransport, transport)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        self.connected_ = True
        self.connecting = None
        side = self.side.value
        self.counters.open[side] += 1
        self.counters.total[side] += 1
        if self._aborted_for is not None:
            # Aborted while the connect was under way and too late to cancel it.
            if self.stream is not None:
                self.stream.abortConnection()
            return
        # Responses are written in pieces (head, then body); with Nagle on, a small last piece
        # waits ~40 ms for the peer's delayed ACK. TLS wrappers forward this to the socket.
        setTcpNoDelay = getattr(self.stream, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            try:
                setTcpNoDelay(True)
            except OSError:
                pass
        if self.registry is not None:
            handle = getattr(self.stream, "getHandle", None)
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

    @property
    def open(self) -> bool:
        """Connected (or connecting) and not yet told to end."""
        return self.ended is None and self._aborted_for is None and self._drain_timer is None

    def write(self, data: bytes) -> None:
        """Send bytes (dropped once the connection has ended)."""
        if self.ended is None and self.stream is not None:
            self.stream.write(data)

    def pause_reading(self) -> None:
        """Stop reading from this socket (backpressure)."""
        if self.ended is None and self.stream is not None:
            self.stream.pauseProducing()

    def resume_reading(self) -> None:
        """Read from this socket again."""
        if self.ended is None and self.stream is not None:
            self.stream.resumeProducing()

    def sigpipe_abort(self) -> None:
        """Called from the SIGPIPE handler (close mode) for a socket whose write failed.

        The socket is already broken; aborting only makes Twisted report it now, and the table
        then decides, from that report, what happens to the peer.
        """
        self._abort("sigpipe_handler")

    # -- mechanics: called by `end` alone ----------------------------------------------------

    def _abort(self, reason: str, ending: Ending = Ending.ABORTED) -> None:
        if self.ended is not None or self._aborted_for is not None:
            return
        self._aborted_for = ending
        self.counters.aborts[reason] += 1
        if self.stream is None:
            if self.connecting is not None:
                d, self.connecting = self.connecting, None
                d.cancel()
            return
        self.stream.abortConnection()

    def _close(self, why: Ending | None = None) -> None:
        # `why` (e.g. TIMED_OUT) is how the resulting clean ending is counted.
        if self.ended is not None or self._drain_timer is not None:
            return
        stream = self.stream
        if stream is None:
            self._abort(f"{self.side.value}_done")  # never connected: nothing to flush
            return
        self._closed_for = why
        # Twisted's TLS layer postpones its close_notify while a producer is registered, and
        # ours stays registered for the connection's life: let go of it so the close happens.
        try:
            stream.unregisterProducer()
        except RuntimeError:
            pass  # none registered
        if self.linger and not ISSLTransport.providedBy(stream):
            # Closing a socket with unread bytes in it sends a reset, and a reset can destroy
            # our answer (a 413, say) in the client's buffers before it is read. So, as nginx
            # does: shut our side once the answer is written, read and drop what still comes,
            # close at the client's FIN, or abort after DRAIN_GRACE.
            self.lingering = True
            stream.loseWriteConnection()
            stream.resumeProducing()
        else:
            stream.loseConnection()
        self._drain_timer = self.clock.callLater(DRAIN_GRACE, self._drain_expired)

    def _truncate(self, reason: str, framed: bool) -> None:
        # `framed`: the client's framing (length or chunks) shows the body is incomplete, so
        # the bytes already relayed are flushed and then the connection closes. Otherwise only
        # a reset can say "incomplete", and buffered bytes are dropped with it.
        if not framed:
            self._abort(reason)
            return
        if self.ended is None and self._aborted_for is None:
            self.counters.aborts[reason] += 1
            self._close(Ending.ABORTED)

    def lingered(self) -> None:
        """The peer's FIN after a lingering close: nothing more to drop, close now."""
        if self.ended is None and self.stream is not None:
            self.stream.loseConnection()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self._abort("drain_timeout", Ending.TIMED_OUT)

    def _half_close(self) -> None:
        # Tunnels only; TLS has no half-close.
        if self.ended is None and self.stream is not None:
            self.stream.loseWriteConnection()


def end(
    side: Side,
    ending: Ending,
    phase: Phase,
    this: Leg | None,
    peer: Leg | None = None,
    *,
    framed: bool = True,
) -> Action:
    """`this` (the `side` leg) ended, or must end, as `ending` in `phase`: do what the table
    says to both legs, and return the action for the owner's part (an answer, a retry...).

    A leg already gone makes its part a no-op, so one row serves a trigger we found and the
    report of the loss that follows it. `framed`: whether the client's framing can show a
    truncated body (see Leg._truncate).
    """
    action = decide(side, ending, phase)
    reason = f"{side.value}_{ending.value}"
    kind = Ending.TIMED_OUT if ending is Ending.TIMED_OUT else Ending.ABORTED
    if action is Action.CLOSE_SELF:
        if this is not None:
            this._close(Ending.TIMED_OUT if ending is Ending.TIMED_OUT else None)
    elif action in _ABORTS_SELF:
        if this is not None:
            this._abort(reason, kind)
        if peer is not None:
            if action is Action.ABORT_BOTH:
                peer._abort(reason, kind)
            elif action is Action.TRUNCATE_PEER:
                peer._truncate(reason, framed)
    elif action is Action.ABORT_PEER:
        if peer is not None:
            peer._abort(reason, kind)
    elif action is Action.CLOSE_PEER or action is Action.CLOSE_BOTH:
        if peer is not None:
            peer._close()
        if this is not None and action is Action.CLOSE_BOTH:
            this._close()
    elif action is Action.RELAY_HALF_CLOSE:
        if peer is not None:
            peer._half_close()
    return action


# Actions that end the leg the ending came from with an abort (a no-op for a leg already gone).
_ABORTS_SELF = frozenset(
    {
        Action.ABORT_SELF,
        Action.ABORT_BOTH,
        Action.RESPOND_502,
        Action.RESPOND_504,
        Action.TRUNCATE_PEER,
        Action.ESTABLISH,
    }
)


def abandon(transport: Any) -> None:
    """Abort a connection that never became a leg: one to an upstream proxy whose tunnel was
    refused, timed out or cancelled. It has no peer and no phase yet; its failure reaches the
    leg that was waiting for it as a failed connect, which the table then decides on."""
    transport.abortConnection()
