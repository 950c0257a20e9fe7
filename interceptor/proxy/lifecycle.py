"""THE connection lifecycle policy: how each ending is classified and what it does to the peer.

One table over (side that ended, how it ended, phase of the exchange) -> action. The session
executes the action; nothing else in the code decides whether a peer is aborted, closed or sent an
error. Pure: no I/O, no reactor.

Twisted tells us three things about an ending: a clean close (ConnectionDone), a non-clean loss
(ConnectionLost: RST, EPIPE, ECONNRESET; the errno is not delivered) and our own abort
(ConnectionAborted). TLS failures arrive as the connectionLost reason too. We keep that distinction
(plus our own reasons for aborting) all the way to logs and metrics.
"""

from __future__ import annotations

import errno
from enum import Enum

from twisted.internet import error
from twisted.python.failure import Failure


class Side(Enum):
    """Which leg of a proxied pair."""

    CLIENT = "client"
    UPSTREAM = "upstream"


class Ending(Enum):
    """How a connection (or its read half) ended."""

    CLEAN = "clean"  # orderly close: FIN after a complete exchange, ConnectionDone
    HALF_CLOSED = "half_closed"  # FIN on the read side, write side still open
    RESET = "reset"  # RST, EPIPE, ECONNRESET: ConnectionLost
    ABORTED = "aborted"  # we aborted it (abortConnection) for a policy reason
    TIMED_OUT = "timed_out"  # we aborted it because a timeout expired
    TLS_FAILED = "tls_failed"  # handshake or verification failure


class Phase(Enum):
    """Where the connection pair is in its exchange when an ending arrives."""

    IDLE = "idle"  # no exchange in flight (between requests, or pooled upstream)
    REQUEST = "request"  # request accepted, no response head sent to the client yet
    RESPONSE = "response"  # response head sent, body framed by length or chunks
    RESPONSE_UNTIL_CLOSE = "response_until_close"  # response body ends when upstream closes
    TUNNEL = "tunnel"  # opaque CONNECT relay


class Action(Enum):
    """What the session does about an ending."""

    NOTHING = "nothing"  # nobody else is involved
    CLOSE_SELF = "close_self"  # close the side that ended (its FIN arrived), peer untouched
    ABORT_PEER = "abort_peer"  # RST the other leg at once: it must not linger or look complete
    CLOSE_PEER = "close_peer"  # orderly close of the other leg, with a timed abort behind it
    ABORT_BOTH = "abort_both"  # half-close in an HTTP exchange: the client is gone (nginx's 499)
    RESPOND_502 = "respond_502"  # upstream failed before any response head: tell the client why
    RESPOND_504 = "respond_504"  # upstream timed out before any response head
    TRUNCATE_PEER = "truncate_peer"  # client: flush what was relayed, then end so the framing
    #                                  shows the body is short (RST if only a close could show it)
    FINISH_RESPONSE = "finish_response"  # upstream's clean close is the end of the body
    RELAY_HALF_CLOSE = "relay_half_close"  # tunnel: pass the FIN on, keep the other direction


C, U = Side.CLIENT, Side.UPSTREAM
E = Ending
P = Phase
A = Action

_HTTP_PHASES = (P.REQUEST, P.RESPONSE, P.RESPONSE_UNTIL_CLOSE)
_BROKEN = (E.RESET, E.ABORTED, E.TIMED_OUT, E.TLS_FAILED)


def _build_table() -> dict[tuple[Side, Ending, Phase], Action]:
    t: dict[tuple[Side, Ending, Phase], Action] = {}
    for ending in Ending:
        # Nothing in flight: the other leg (if any) is pooled or absent and unaffected.
        t[C, ending, P.IDLE] = A.CLOSE_SELF if ending is E.HALF_CLOSED else A.NOTHING
        t[U, ending, P.IDLE] = A.NOTHING
        # A client that goes away mid-exchange, however it went, takes its upstream with it at
        # once: loseConnection toward an upstream still sending would wait on a full buffer.
        for phase in _HTTP_PHASES:
            t[C, ending, phase] = A.ABORT_BOTH if ending is E.HALF_CLOSED else A.ABORT_PEER
        # Upstream gone before anything was sent back: the client gets a status naming why.
        t[U, ending, P.REQUEST] = A.RESPOND_504 if ending is E.TIMED_OUT else A.RESPOND_502
        # Upstream gone mid-body: the client must see truncation, never a clean end. What was
        # already relayed is still delivered, so the client can tell a short body from nothing.
        t[U, ending, P.RESPONSE] = A.TRUNCATE_PEER
        t[U, ending, P.RESPONSE_UNTIL_CLOSE] = A.TRUNCATE_PEER
        # Tunnels: a FIN is relayed; a clean full close closes the peer in order; a broken leg
        # breaks the other.
        for side in Side:
            if ending is E.HALF_CLOSED:
                t[side, ending, P.TUNNEL] = A.RELAY_HALF_CLOSE
            elif ending is E.CLEAN:
                t[side, ending, P.TUNNEL] = A.CLOSE_PEER
            else:
                t[side, ending, P.TUNNEL] = A.ABORT_PEER
    # A close-delimited body ends exactly when the upstream closes cleanly (or half-closes).
    t[U, E.CLEAN, P.RESPONSE_UNTIL_CLOSE] = A.FINISH_RESPONSE
    t[U, E.HALF_CLOSED, P.RESPONSE_UNTIL_CLOSE] = A.FINISH_RESPONSE
    return t


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

    if reason.check(SSL.Error):
        return True
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - service-identity is a dependency
        return False
    return reason.check(VerificationError) is not None


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


# Bounds the session uses when it acts on the table.
DRAIN_GRACE = 5.0  # seconds a CLOSE_PEER may take to flush before it becomes an abort
