"""The users file in memory: bcrypt checks off the reactor, shared, bounded, reloads throttled."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import bcrypt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from interceptor import access
from interceptor.access import Users


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class Threads:
    """Stands in for the thread pool: runs nothing until the test says so."""

    def __init__(self) -> None:
        self.queued: list[tuple[object, Deferred[bool]]] = []

    def __call__(self, check):  # type: ignore[no-untyped-def]
        d: Deferred[bool] = Deferred()
        self.queued.append((check, d))
        return d

    def run_all(self) -> None:
        queued, self.queued = self.queued, []
        for check, d in queued:
            d.callback(check())


def users_file(path: Path, password: str) -> Path:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    path.write_text(f"alice:{hashed.replace('$2b$', '$2y$')}\n")
    return path


def test_checks_of_one_credential_are_shared_and_remembered(tmp_path: Path) -> None:
    threads = Threads()
    users = Users(str(users_file(tmp_path / "u", "pw")), threads, Clock())
    first, second = users.check(basic("alice", "pw")), users.check(basic("alice", "pw"))
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    assert len(threads.queued) == 1  # one bcrypt check for both
    answers: list[bool] = []
    first.addCallback(answers.append)
    second.addCallback(answers.append)
    threads.run_all()
    assert answers == [True, True]
    assert users.check(basic("alice", "pw")) is True  # remembered: no thread now
    assert users.check(basic("alice", "nope")) is not True and len(threads.queued) == 1


def test_checks_waiting_for_a_thread_are_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(access, "_MAX_CHECKING", 3)
    threads = Threads()
    users = Users(str(users_file(tmp_path / "u", "pw")), threads, Clock())
    verdicts = [users.check(basic("alice", f"guess{i}")) for i in range(10)]
    assert len(threads.queued) == 3
    assert verdicts[3:] == [False] * 7  # refused at once, not queued
    threads.run_all()
    assert isinstance(users.check(basic("alice", "another")), Deferred)  # room again


def test_the_file_is_looked_at_once_a_second_and_a_bad_one_keeps_the_users(tmp_path: Path):
    clock = Clock()
    threads = Threads()
    path = users_file(tmp_path / "u", "old")
    users = Users(str(path), threads, clock)
    path.write_text("this is not an htpasswd line\n")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's grain
    clock.advance(0.5)
    users.check(basic("alice", "old"))  # within the second: the file is not looked at
    clock.advance(1.0)
    d = users.check(basic("alice", "old"))  # looked at, unreadable: alice stays
    assert isinstance(d, Deferred)
    threads.run_all()
    assert users.check(basic("alice", "old")) is True
