"""THE connection lifecycle policy: how each ending is classified and what it does to both legs.

One table over (side that ended, how it ended, phase of the pair) -> action. `leg.end` looks the
row up and carries it out; nothing else in the code decides whether a leg is aborted, closed or
half-closed. Pure: no I/O, no reactor.

An ending is either reported (Twisted tells us three things: a clean close, ConnectionDone; a
non-clean loss, ConnectionLost, which covers RST, EPIPE and ECONNRESET; and our own abort,
ConnectionAborted; TLS failures arrive as the connectionLost reason too), or found by us (the peer
broke its framing, a timer expired, the exchange is done, the service shuts down). Both kinds are
rows of the same table: a reported ending finds its own leg already gone, so what the row does to
that leg is then a no-op, and the same row serves the trigger and the report that follows it. We
keep the kind of ending all the way to logs and metrics.
"""

from __future__ import annotations

import errno
from enum import Enum

from twisted.internet import error
from twisted.python.failure import Failure


class Side(Enum):
    """Which leg of a proxied pair."""

    # Singletons: hashed by identity, in C (Enum's own hash is Python code, and these key
    # the table).
    __hash__ = object.__hash__

    CLIENT = "client"
    UPSTREAM = "upstream"


class Ending(Enum):
    """How a connection (or its read half, or its part in an exchange) ended."""

    __hash__ = object.__hash__  # see Side

    # Reported by Twisted.
    CLEAN = "clean"  # orderly close: FIN after a complete exchange, ConnectionDone
    HALF_CLOSED = "half_closed"  # FIN on the read side, write side still open
    RESET = "reset"  # RST, EPIPE, ECONNRESET: ConnectionLost
    ABORTED = "aborted"  # we aborted it (abortConnection) for a policy reason
    TIMED_OUT = "timed_out"  # a timeout expired (idle, head, read, half-close bound)
    TLS_FAILED = "tls_failed"  # handshake or verification failure
    # Found by us.
    PROTOCOL_ERROR = "protocol_error"  # that side sent what we refuse (garbage, unasked 101...)
    EARLY_RESPONSE = "early_response"  # upstream answered before the request body was read
    STALE = "stale"  # a reused pooled connection was closed under us before any response
    UNREACHABLE = "unreachable"  # the upstream connection could not be made
    DONE = "done"  # nothing more will pass: not persistent, pool full or expired, tunnel over
    SHUTDOWN = "shutdown"  # the service's drain deadline passed
    KILLED = "killed"  # an addon killed the flow (flow.kill()): its client is cut


class Phase(Enum):
    """Where the connection pair is in its exchange when an ending arrives."""

    __hash__ = object.__hash__  # see Side

    IDLE = "idle"  # no exchange in flight (between requests, or pooled upstream)
    REQUEST = "request"  # request accepted, no response head sent to the client yet
    CONNECT = "connect"  # an eager CONNECT waits for the TCP connect to its origin
    HANDSHAKE = "handshake"  # its 200 sent: the origin's connection waits for the client's
    #                          first bytes, or its TLS handshake runs while they wait
    RESPONSE = "response"  # response head sent, body framed by length or chunks
    RESPONSE_UNTIL_CLOSE = "response_until_close"  # response body ends when upstream closes
    ANSWERED = "answered"  # the client has its whole response; its request body still arrives
    TUNNEL = "tunnel"  # opaque relay (passthrough CONNECT, or after a 101)


class Action(Enum):
    """What happens to the two legs (and what the owner then does) for one ending."""

    __hash__ = object.__hash__  # see Side

    NOTHING = "nothing"  # nobody else is involved
    CLOSE_SELF = "close_self"  # orderly close of the leg that ended; peer untouched
    ABORT_SELF = "abort_self"  # RST the leg that ended (its framing is in doubt); peer untouched
    ABORT_PEER = "abort_peer"  # RST the other leg at once: it must not linger or look complete
    CLOSE_PEER = "close_peer"  # orderly close of the other leg, with a timed abort behind it
    ABORT_BOTH = "abort_both"  # e.g. half-close in an HTTP exchange: the client is gone (499)
    CLOSE_BOTH = "close_both"  # a tunnel whose both directions ended: close both legs
    RESPOND_502 = "respond_502"  # upstream failed before any response head: tell the client why
    RESPOND_504 = "respond_504"  # upstream timed out before any response head
    TRUNCATE_PEER = "truncate_peer"  # client: flush what was relayed, then end so the framing
    #                                  shows the body is short (RST if only a close could show it)
    FINISH_RESPONSE = "finish_response"  # upstream's clean close is the end of the body
    RELAY_HALF_CLOSE = "relay_half_close"  # tunnel: pass the FIN on, keep the other direction
    RETRY = "retry"  # a stale pooled connection: send the request once more on a fresh one
    ESTABLISH = "establish"  # an eager CONNECT's origin leg failed after the 200: it goes, the
    #                          client's TLS goes ahead without the origin's names


E = Ending
P = Phase
A = Action

_HTTP_PHASES = (P.REQUEST, P.RESPONSE, P.RESPONSE_UNTIL_CLOSE, P.ANSWERED)


def _client(ending: Ending, phase: Phase) -> Action:
    if ending is E.KILLED:
        # mitmproxy's kill: the client's connection goes at once, and whatever it was paired
        # with, mid-exchange or mid-tunnel.
        return A.ABORT_SELF if phase is P.IDLE else A.ABORT_BOTH
    if phase is P.IDLE:
        if ending in (E.HALF_CLOSED, E.TIMED_OUT, E.DONE, E.PROTOCOL_ERROR):
            return A.CLOSE_SELF  # idle or slow-head timeout, not persistent, refused: FIN
        return A.ABORT_SELF if ending is E.SHUTDOWN else A.NOTHING
    if phase is P.TUNNEL:
        return _tunnel(ending)
    # A client that goes away mid-exchange, however it went, takes its upstream with it at
    # once: loseConnection toward an upstream still sending would wait on a full buffer. A FIN
    # means the client is gone too (as nginx's 499): nothing it could still read is worth it.
    # (A client times out mid-exchange only while its intercepted CONNECT waits for its first
    # bytes: both legs go.)
    if ending in (E.HALF_CLOSED, E.SHUTDOWN, E.DONE, E.TIMED_OUT):
        return A.ABORT_BOTH
    if ending is E.PROTOCOL_ERROR:
        # A broken request body: answered with a 400 if nothing was sent back yet (the owner
        # does that, then ends the connection as DONE); cut if the response had begun.
        return A.ABORT_PEER if phase is P.REQUEST or phase is P.CONNECT else A.ABORT_BOTH
    return A.ABORT_PEER


def _upstream(ending: Ending, phase: Phase) -> Action:
    if phase is P.IDLE:
        # Pooled (or already let go): nothing is in flight, the client is not involved.
        if ending is E.PROTOCOL_ERROR:
            return A.ABORT_SELF  # a spurious byte: its framing and ours disagree
        if ending in (E.DONE, E.SHUTDOWN):
            return A.CLOSE_SELF
        return A.NOTHING
    if phase is P.TUNNEL:
        return _tunnel(ending)
    if phase is P.CONNECT:
        # An eager CONNECT: a host we cannot reach is the CONNECT's own 502 (504 timed out).
        return A.RESPOND_504 if ending is E.TIMED_OUT else A.RESPOND_502
    if phase is P.HANDSHAKE:
        # After the 200: the origin let its connection go, or failed or refused TLS. That
        # connection goes; the client's TLS goes ahead without the origin's names, and the
        # requests inside get the reason in a 502 (a browser shows that page, never the body
        # of a refused CONNECT).
        return A.ESTABLISH
    if phase is P.REQUEST:
        # Gone before anything was sent back: the client gets a status naming why, unless a
        # pooled connection went stale under us, which a fresh one may still answer.
        if ending is E.STALE:
            return A.RETRY
        return A.RESPOND_504 if ending is E.TIMED_OUT else A.RESPOND_502
    if phase is P.ANSWERED:
        # It already answered: whatever it does now, its framing is in doubt and it goes.
        return A.ABORT_SELF
    # Gone mid-body: the client must see truncation, never a clean end. What was already
    # relayed is still delivered, so the client can tell a short body from nothing. A
    # close-delimited body ends exactly when the upstream closes cleanly (or half-closes).
    if phase is P.RESPONSE_UNTIL_CLOSE and ending in (E.CLEAN, E.HALF_CLOSED):
        return A.FINISH_RESPONSE
    return A.TRUNCATE_PEER


def _tunnel(ending: Ending) -> Action:
    # A FIN is relayed; a clean full close closes the peer in order; both directions over
    # closes both; the half-close bound or a shutdown aborts both; a broken leg breaks the other.
    if ending is E.HALF_CLOSED:
        return A.RELAY_HALF_CLOSE
    if ending is E.CLEAN:
        return A.CLOSE_PEER
    if ending is E.DONE:
        return A.CLOSE_BOTH
    if ending in (E.TIMED_OUT, E.SHUTDOWN):
        return A.ABORT_BOTH
    return A.ABORT_PEER


def _build_table() -> dict[tuple[Side, Ending, Phase], Action]:
    return {
        (side, ending, phase): (_client if side is Side.CLIENT else _upstream)(ending, phase)
        for side in Side
        for ending in Ending
        for phase in Phase
    }


TABLE: dict[tuple[Side, Ending, Phase], Action] = _build_table()


def decide(side: Side, ending: Ending, phase: Phase) -> Action:
    """The action for one ending. Total over every combination (a test walks them all)."""
    return TABLE[side, ending, phase]


def classify(reason: Failure, aborted_for: Ending | None = None) -> Ending:
    """Turn a connectionLost reason into an Ending.

    `aborted_for` is what we recorded when we aborted this connection ourselves (ABORTED or
    TIMED_OUT); Twisted only tells us ConnectionAborted, not why.
    """
    if reason.check(error.ConnectionAborted):
        return aborted_for or Ending.ABORTED
    if reason.check(error.ConnectionDone):
        return Ending.CLEAN
    if _is_tls_failure(reason):
        return Ending.TLS_FAILED
    return Ending.RESET


def _is_tls_failure(reason: Failure) -> bool:
    from OpenSSL import SSL
    from service_identity import VerificationError

    return reason.check(SSL.Error, VerificationError) is not None


def stale_reuse(
    ending: Ending,
    head_seen: bool,
    requests_on_connection: int,
    retried: bool,
    body: bool,
    method: str,
) -> bool:
    """A pooled connection the origin closed as we reused it, for a request that is safe to
    send again: the origin never saw it, so it ended as STALE (one more try on a fresh one)."""
    return (
        ending in (Ending.CLEAN, Ending.RESET)
        and not head_seen
        and requests_on_connection > 1
        and not retried
        and not body
        and method in _IDEMPOTENT
    )


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def connect_failure(reason: Failure) -> tuple[int, str]:
    """Status and one-line cause for an upstream connection that could not be made."""
    if reason.check(error.DNSLookupError):
        return 502, "upstream host not found"
    if reason.check(error.ConnectionRefusedError):
        return 502, "upstream refused the connection"
    if reason.check(error.TimeoutError):
        return 504, "upstream connect timed out"
    if reason.check(error.NoRouteError):
        return 502, "no route to upstream host"
    if reason.check(error.ConnectBindError, OSError, error.ConnectError):
        err = reason.value
        code = getattr(err, "osError", None) or getattr(err, "errno", None)
        if code in (errno.EMFILE, errno.ENFILE) or "Too many open files" in str(err):
            return 502, "proxy out of file descriptors"
    return 502, f"upstream connect failed: {reason.getErrorMessage()}"


def connect_ending(status: int) -> Ending:
    """The ending of a connect that failed with `status` (from connect_failure)."""
    return Ending.TIMED_OUT if status == 504 else Ending.UNREACHABLE


DRAIN_GRACE = 5.0  # seconds a close may take to flush before it becomes an abort

