"""The exchange's transitions table: every state reachable, every unfinished one can end."""

from __future__ import annotations

import pytest

from interceptor.proxy.lifecycle import Phase
from interceptor.proxy.states import PHASES, TRANSITIONS, State, Step

FINAL = {State.DONE, State.UPGRADED}


def reachable(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is state and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def test_every_state_is_reachable_from_queued():
    assert reachable(State.QUEUED) == set(State)


def test_final_states_have_no_way_out():
    assert [key for key in TRANSITIONS if key[0] in FINAL] == []


@pytest.mark.parametrize("state", sorted(set(State) - FINAL, key=lambda s: s.value))
def test_an_unfinished_exchange_can_always_be_cut(state):
    assert TRANSITIONS[state, Step.CUT] is State.DONE
    assert reachable(state) & FINAL


def test_a_response_is_relayed_only_after_the_request_went_upstream():
    # Straight from SENT, or after its body was read whole for a `response` hook.
    assert [src for (src, step) in TRANSITIONS if step is Step.RESPOND] == [
        State.SENT,
        State.READING,
    ]
    assert [src for (src, step) in TRANSITIONS if step is Step.READ] == [State.SENT]


def test_every_state_has_a_phase():
    assert set(PHASES) == set(State)
    assert PHASES[State.ANSWERED] is Phase.ANSWERED
    assert {PHASES[s] for s in FINAL} == {Phase.IDLE}
