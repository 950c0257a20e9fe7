"""The lifecycle table: total over every combination, and the safety properties hold."""

from __future__ import annotations

import errno
import itertools

import pytest
from OpenSSL import SSL
from twisted.internet import error
from twisted.python.failure import Failure

from interceptor.proxy.leg import Leg, end
from interceptor.proxy.lifecycle import (
    TABLE,
    Action,
    Ending,
    Phase,
    Side,
    classify,
    connect_ending,
    connect_failure,
    decide,
    stale_reuse,
)

ALL = list(itertools.product(Side, Ending, Phase))
BROKEN = {Ending.RESET, Ending.ABORTED, Ending.TIMED_OUT, Ending.TLS_FAILED}
HTTP = {
    Phase.REQUEST,
    Phase.CONNECT,
    Phase.HANDSHAKE,
    Phase.RESPONSE,
    Phase.RESPONSE_UNTIL_CLOSE,
}
AFTER_HEADERS = {Phase.RESPONSE, Phase.RESPONSE_UNTIL_CLOSE}


def test_table_is_total_and_has_nothing_else():
    assert set(TABLE) == set(ALL)
    for combo in ALL:
        assert isinstance(decide(*combo), Action)


@pytest.mark.parametrize("side,ending,phase", ALL)
def test_safety_properties(side, ending, phase):
    action = decide(side, ending, phase)
    # A broken leg never becomes an orderly end on the other leg.
    if ending in BROKEN and phase is not Phase.IDLE:
        assert action not in (Action.CLOSE_PEER, Action.FINISH_RESPONSE, Action.NOTHING)
    # Truncation is only ever done to a client whose response was cut short.
    if action is Action.TRUNCATE_PEER:
        assert side is Side.UPSTREAM and phase in AFTER_HEADERS
    # Error responses only while no response head has gone to the client.
    if action in (Action.RESPOND_502, Action.RESPOND_504):
        assert phase in (Phase.REQUEST, Phase.CONNECT) and side is Side.UPSTREAM
    # An eager CONNECT opens despite its origin only when the origin was reachable.
    if action is Action.ESTABLISH:
        assert phase is Phase.HANDSHAKE and side is Side.UPSTREAM
    # A client leaving mid-exchange, however it left, takes its upstream with it.
    if side is Side.CLIENT and phase in HTTP:
        assert action in (Action.ABORT_PEER, Action.ABORT_BOTH)
    # Upstream lost after the response head: the client must see truncation...
    if side is Side.UPSTREAM and phase in AFTER_HEADERS:
        if phase is Phase.RESPONSE_UNTIL_CLOSE and ending in (Ending.CLEAN, Ending.HALF_CLOSED):
            assert action is Action.FINISH_RESPONSE  # ...unless the close IS the end of body
        else:
            assert action is Action.TRUNCATE_PEER
    # Half-closes are relayed only in tunnels (TLS and HTTP have no use for them).
    if action is Action.RELAY_HALF_CLOSE:
        assert phase is Phase.TUNNEL and ending is Ending.HALF_CLOSED


def test_specific_rules():
    assert decide(Side.UPSTREAM, Ending.UNREACHABLE, Phase.CONNECT) is Action.RESPOND_502
    assert decide(Side.UPSTREAM, Ending.TIMED_OUT, Phase.CONNECT) is Action.RESPOND_504
    assert decide(Side.UPSTREAM, Ending.TLS_FAILED, Phase.HANDSHAKE) is Action.ESTABLISH
    assert decide(Side.CLIENT, Ending.CLEAN, Phase.CONNECT) is Action.ABORT_PEER
    assert decide(Side.CLIENT, Ending.CLEAN, Phase.HANDSHAKE) is Action.ABORT_PEER
    assert decide(Side.CLIENT, Ending.TIMED_OUT, Phase.HANDSHAKE) is Action.ABORT_BOTH
    assert decide(Side.UPSTREAM, Ending.TIMED_OUT, Phase.REQUEST) is Action.RESPOND_504
    assert decide(Side.UPSTREAM, Ending.TLS_FAILED, Phase.REQUEST) is Action.RESPOND_502
    assert decide(Side.CLIENT, Ending.HALF_CLOSED, Phase.RESPONSE) is Action.ABORT_BOTH
    assert decide(Side.CLIENT, Ending.HALF_CLOSED, Phase.IDLE) is Action.CLOSE_SELF
    assert decide(Side.CLIENT, Ending.CLEAN, Phase.TUNNEL) is Action.CLOSE_PEER
    assert decide(Side.UPSTREAM, Ending.RESET, Phase.TUNNEL) is Action.ABORT_PEER


def test_classify_keeps_twisteds_distinction():
    assert classify(Failure(error.ConnectionDone())) is Ending.CLEAN
    assert classify(Failure(error.ConnectionLost())) is Ending.RESET
    assert classify(Failure(error.ConnectionAborted())) is Ending.ABORTED
    assert classify(Failure(error.ConnectionAborted()), Ending.TIMED_OUT) is Ending.TIMED_OUT
    assert classify(Failure(SSL.Error([("SSL routines", "", "bad")]))) is Ending.TLS_FAILED


def test_classify_verification_error_is_tls():
    from service_identity import VerificationError

    assert classify(Failure(VerificationError(errors=[]))) is Ending.TLS_FAILED


@pytest.mark.parametrize(
    "exc,status,text",
    [
        (error.DNSLookupError("x"), 502, "upstream host not found"),
        (error.ConnectionRefusedError(), 502, "upstream refused the connection"),
        (error.TimeoutError(), 504, "upstream connect timed out"),
        (error.ConnectBindError(errno.EMFILE, "Too many open files"), 502, "proxy out of file"),
    ],
)
def test_connect_failure_names_the_cause(exc, status, text):
    got_status, got_text = connect_failure(Failure(exc))
    assert got_status == status
    assert got_text.startswith(text)
    assert "\n" not in got_text


# --- the rows for endings we find ourselves -------------------------------------------------

FOUND = {Ending.PROTOCOL_ERROR, Ending.EARLY_RESPONSE, Ending.DONE, Ending.SHUTDOWN}


@pytest.mark.parametrize("side,ending,phase", ALL)
def test_found_endings_never_leave_a_leg_behind(side, ending, phase):
    action = decide(side, ending, phase)
    # Something we found ourselves ends that leg (or, in a tunnel, the pair), never nothing,
    # except a client's refused request with nothing in flight, which is answered first.
    if ending in FOUND and phase is not Phase.IDLE:
        assert action is not Action.NOTHING
    # Shutdown cuts whatever is still there.
    if ending is Ending.SHUTDOWN and side is Side.CLIENT:
        assert action in (Action.ABORT_SELF, Action.ABORT_BOTH)
    # A retry is only for a reused connection that went stale before any response.
    if action is Action.RETRY:
        assert (side, ending, phase) == (Side.UPSTREAM, Ending.STALE, Phase.REQUEST)
    # Both legs are closed in order only when a tunnel is over in both directions.
    if action is Action.CLOSE_BOTH:
        assert ending is Ending.DONE and phase is Phase.TUNNEL
    # A client is never aborted alone while its upstream could still be sending.
    if side is Side.CLIENT and phase in HTTP | {Phase.ANSWERED, Phase.TUNNEL}:
        assert action is not Action.ABORT_SELF


def test_specific_rules_for_found_endings():
    assert decide(Side.UPSTREAM, Ending.PROTOCOL_ERROR, Phase.REQUEST) is Action.RESPOND_502
    assert decide(Side.UPSTREAM, Ending.PROTOCOL_ERROR, Phase.RESPONSE) is Action.TRUNCATE_PEER
    assert decide(Side.UPSTREAM, Ending.PROTOCOL_ERROR, Phase.IDLE) is Action.ABORT_SELF
    assert decide(Side.UPSTREAM, Ending.EARLY_RESPONSE, Phase.ANSWERED) is Action.ABORT_SELF
    assert decide(Side.UPSTREAM, Ending.STALE, Phase.REQUEST) is Action.RETRY
    assert decide(Side.UPSTREAM, Ending.UNREACHABLE, Phase.REQUEST) is Action.RESPOND_502
    assert decide(Side.UPSTREAM, Ending.DONE, Phase.IDLE) is Action.CLOSE_SELF
    assert decide(Side.CLIENT, Ending.PROTOCOL_ERROR, Phase.REQUEST) is Action.ABORT_PEER
    assert decide(Side.CLIENT, Ending.PROTOCOL_ERROR, Phase.RESPONSE) is Action.ABORT_BOTH
    assert decide(Side.CLIENT, Ending.TIMED_OUT, Phase.IDLE) is Action.CLOSE_SELF
    assert decide(Side.CLIENT, Ending.DONE, Phase.IDLE) is Action.CLOSE_SELF
    assert decide(Side.CLIENT, Ending.SHUTDOWN, Phase.IDLE) is Action.ABORT_SELF
    for side in Side:
        assert decide(side, Ending.DONE, Phase.TUNNEL) is Action.CLOSE_BOTH
        assert decide(side, Ending.TIMED_OUT, Phase.TUNNEL) is Action.ABORT_BOTH


def test_connect_ending_matches_the_status():
    assert connect_ending(504) is Ending.TIMED_OUT
    assert connect_ending(502) is Ending.UNREACHABLE
    assert decide(Side.UPSTREAM, connect_ending(504), Phase.REQUEST) is Action.RESPOND_504


@pytest.mark.parametrize(
    "ending,head_seen,requests,retried,body,method,stale",
    [
        (Ending.CLEAN, False, 2, False, False, "GET", True),
        (Ending.RESET, False, 5, False, False, "PUT", True),
        (Ending.CLEAN, False, 1, False, False, "GET", False),  # a fresh connection: real
        (Ending.CLEAN, True, 2, False, False, "GET", False),  # it started answering
        (Ending.CLEAN, False, 2, True, False, "GET", False),  # once only
        (Ending.CLEAN, False, 2, False, True, "GET", False),  # a body cannot be sent again
        (Ending.CLEAN, False, 2, False, False, "POST", False),  # not idempotent
        (Ending.TLS_FAILED, False, 2, False, False, "GET", False),
        (Ending.TIMED_OUT, False, 2, False, False, "GET", False),
    ],
)
def test_stale_reuse(ending, head_seen, requests, retried, body, method, stale):
    assert stale_reuse(ending, head_seen, requests, retried, body, method) is stale


# --- the executor carries out exactly its row ------------------------------------------------


class FakeLeg(Leg):
    """A leg whose mechanics only record what the executor asked of them."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def _abort(self, reason: str, ending: Ending = Ending.ABORTED) -> None:
        self.done.append("abort")

    def _close(self, why: Ending | None = None) -> None:
        self.done.append("close")

    def _truncate(self, reason: str, framed: bool) -> None:
        self.done.append("truncate")

    def _half_close(self) -> None:
        self.done.append("half_close")


# What each action does to (the leg that ended, its peer).
EFFECTS = {
    Action.NOTHING: ([], []),
    Action.CLOSE_SELF: (["close"], []),
    Action.ABORT_SELF: (["abort"], []),
    Action.ABORT_PEER: ([], ["abort"]),
    Action.CLOSE_PEER: ([], ["close"]),
    Action.ABORT_BOTH: (["abort"], ["abort"]),
    Action.CLOSE_BOTH: (["close"], ["close"]),
    Action.RESPOND_502: (["abort"], []),
    Action.RESPOND_504: (["abort"], []),
    Action.TRUNCATE_PEER: (["abort"], ["truncate"]),
    Action.FINISH_RESPONSE: ([], []),
    Action.RELAY_HALF_CLOSE: ([], ["half_close"]),
    Action.RETRY: ([], []),
    Action.ESTABLISH: (["abort"], []),
}


def test_every_action_has_its_effects_stated():
    assert set(EFFECTS) == set(Action)


@pytest.mark.parametrize("side,ending,phase", ALL)
def test_executor_does_what_the_row_says(side, ending, phase):
    this, peer = FakeLeg(), FakeLeg()
    action = end(side, ending, phase, this, peer)
    assert action is decide(side, ending, phase)
    assert (this.done, peer.done) == EFFECTS[action]
    end(side, ending, phase, None, None)  # absent legs are fine: nothing to do to them
