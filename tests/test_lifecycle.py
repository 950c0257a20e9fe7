"""The lifecycle table: total over every combination, and the safety properties hold."""

from __future__ import annotations

import errno
import itertools

import pytest
from OpenSSL import SSL
from twisted.internet import error
from twisted.python.failure import Failure

from interceptor.proxy.lifecycle import (
    TABLE,
    Action,
    Ending,
    Phase,
    Side,
    classify,
    connect_failure,
    decide,
)

ALL = list(itertools.product(Side, Ending, Phase))
BROKEN = {Ending.RESET, Ending.ABORTED, Ending.TIMED_OUT, Ending.TLS_FAILED}
HTTP = {Phase.REQUEST, Phase.RESPONSE, Phase.RESPONSE_UNTIL_CLOSE}
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
        assert phase is Phase.REQUEST and side is Side.UPSTREAM
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
