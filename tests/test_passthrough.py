"""Learned passthrough, in memory: counts in a row, the reset, the expiry, the bound."""

from __future__ import annotations

from twisted.internet.task import Clock

from interceptor.proxy import passthrough
from interceptor.proxy.passthrough import LearnedPassthrough


def test_learned_after_threshold_refusals_in_a_row_and_expires():
    clock = Clock()
    learned = LearnedPassthrough(clock, threshold=3, ttl=60)
    learned.refused("a.example")
    learned.refused("a.example")
    assert "a.example" not in learned
    learned.refused("a.example")
    assert "a.example" in learned and learned.learned_total == 1
    assert learned.listing() == [("a.example", 60)]
    clock.advance(59.9)
    assert "a.example" in learned
    clock.advance(0.2)
    assert "a.example" not in learned and learned.listing() == []


def test_an_accepted_handshake_resets_the_count():
    learned = LearnedPassthrough(Clock(), threshold=2, ttl=60)
    learned.refused("a.example")
    learned.accepted("a.example")
    learned.refused("a.example")
    assert "a.example" not in learned
    learned.refused("a.example")
    assert "a.example" in learned


def test_zero_never_learns():
    learned = LearnedPassthrough(Clock())
    for _ in range(100):
        learned.refused("a.example")
    assert "a.example" not in learned and learned.learned_total == 0


def test_the_counts_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(passthrough, "_TRACKED", 10)
    learned = LearnedPassthrough(Clock(), threshold=2, ttl=60)
    learned.refused("first.example")
    for i in range(20):
        learned.refused(f"h{i}.example")
    learned.refused("first.example")  # its earlier refusal was forgotten: this is the first
    assert "first.example" not in learned
    assert len(learned._failures) <= 10


def test_the_hosts_learned_are_bounded(monkeypatch):
    monkeypatch.setattr(passthrough, "_TRACKED", 3)
    clock = Clock()
    learned = LearnedPassthrough(clock, threshold=1, ttl=60)
    for i in range(5):
        learned.refused(f"h{i}.example")
        clock.advance(1)
    assert [host for host, _ in learned.listing()] == ["h2.example", "h3.example", "h4.example"]
