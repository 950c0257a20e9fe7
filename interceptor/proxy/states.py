"""The exchange's states and every move between them, in one table (h11's `_state.py` is the
model). A move that is not in TRANSITIONS is a bug: the KeyError says so at once."""

from __future__ import annotations

from enum import Enum

from .lifecycle import Phase


class State(Enum):
    """Where an exchange is. DONE and UPGRADED are final."""

    # Members are singletons: hashing by identity (in C) instead of Enum's Python-level
    # hash of the name keeps the per-request table lookups off the profile.
    __hash__ = object.__hash__

    QUEUED = "queued"  # head read; waits for the exchanges before it on the connection
    CONNECTING = "connecting"  # waiting for a new upstream connection (or a tunnel's)
    OPENING = "opening"  # an eager intercepted CONNECT waits for its origin before answering
    BUFFERING = "buffering"  # the request body is read whole for a `request` hook
    SENT = "sent"  # request head sent upstream; no response head yet
    READING = "reading"  # the response body is read whole for a `response` hook
    RESPONDING = "responding"  # response head relayed; its body streams to the client
    ANSWERED = "answered"  # the client has the whole response; the request body still arrives
    DONE = "done"  # both directions complete, answered by us, or cut short
    UPGRADED = "upgraded"  # the connection became an opaque tunnel (101, CONNECT)


class Step(Enum):
    """What moves an exchange from one state to the next."""

    __hash__ = object.__hash__  # see State

    DISPATCH = "dispatch"  # connect to the upstream (again, for a retry)
    OPEN = "open"  # connect to an intercepted CONNECT's origin before answering it
    BUFFER = "buffer"  # read the request body whole before sending (a `request` hook)
    SEND = "send"  # the request head goes out on a ready connection
    READ = "read"  # read the response body whole before relaying (a `response` hook)
    RESPOND = "respond"  # the response head goes to the client
    COMPLETE = "complete"  # the last of both directions is through
    EARLY = "early"  # the response ended before the request body
    ANSWER = "answer"  # we answered ourselves (hook, error, refusal)
    UPGRADE = "upgrade"  # handed over to a tunnel
    CUT = "cut"  # ended short: the client left, or the response was truncated


S = State
TRANSITIONS: dict[tuple[State, Step], State] = {
    (S.QUEUED, Step.DISPATCH): S.CONNECTING,
    (S.QUEUED, Step.SEND): S.SENT,
    (S.QUEUED, Step.ANSWER): S.DONE,
    (S.QUEUED, Step.UPGRADE): S.UPGRADED,
    (S.QUEUED, Step.OPEN): S.OPENING,
    (S.QUEUED, Step.BUFFER): S.BUFFERING,
    (S.BUFFERING, Step.DISPATCH): S.CONNECTING,
    (S.BUFFERING, Step.SEND): S.SENT,
    (S.BUFFERING, Step.ANSWER): S.DONE,  # a hook answered, or the body was too large
    (S.OPENING, Step.ANSWER): S.DONE,  # unreachable: 502/504
    (S.OPENING, Step.UPGRADE): S.UPGRADED,  # reachable: 200, then TLS (or HTTP) inside
    (S.CONNECTING, Step.SEND): S.SENT,
    (S.CONNECTING, Step.ANSWER): S.DONE,
    (S.CONNECTING, Step.UPGRADE): S.UPGRADED,
    (S.SENT, Step.RESPOND): S.RESPONDING,
    (S.SENT, Step.DISPATCH): S.CONNECTING,  # a retry on a fresh connection
    (S.SENT, Step.ANSWER): S.DONE,
    (S.SENT, Step.UPGRADE): S.UPGRADED,
    (S.SENT, Step.READ): S.READING,
    (S.READING, Step.RESPOND): S.RESPONDING,
    (S.READING, Step.ANSWER): S.DONE,  # the upstream failed, or the body was too large
    (S.RESPONDING, Step.COMPLETE): S.DONE,
    (S.RESPONDING, Step.EARLY): S.ANSWERED,
    (S.ANSWERED, Step.COMPLETE): S.DONE,
    **{
        (s, Step.CUT): S.DONE
        for s in (
            S.QUEUED,
            S.BUFFERING,
            S.CONNECTING,
            S.OPENING,
            S.SENT,
            S.READING,
            S.RESPONDING,
            S.ANSWERED,
        )
    },
}

# The same table by state, for the lookup an exchange makes on every move (no key to build).
MOVES: dict[State, dict[Step, State]] = {state: {} for state in State}
for (_state, _step), _target in TRANSITIONS.items():
    MOVES[_state][_step] = _target
del _state, _step, _target

# Where the exchange takes its request body events (relays them, or drops them after an answer).
TAKES_BODY = frozenset({S.BUFFERING, S.SENT, S.READING, S.RESPONDING, S.ANSWERED})

# The lifecycle phase of the connection pair while an exchange in each state is the current one
# (a close-delimited response body is RESPONSE_UNTIL_CLOSE instead of RESPONSE or READING).
PHASES: dict[State, Phase] = {
    S.QUEUED: Phase.REQUEST,
    S.CONNECTING: Phase.REQUEST,
    S.OPENING: Phase.CONNECT,
    S.BUFFERING: Phase.REQUEST,
    S.SENT: Phase.REQUEST,
    S.READING: Phase.REQUEST,  # nothing of the response has reached the client yet
    S.RESPONDING: Phase.RESPONSE,
    S.ANSWERED: Phase.ANSWERED,
    S.DONE: Phase.IDLE,
    S.UPGRADED: Phase.IDLE,
}
