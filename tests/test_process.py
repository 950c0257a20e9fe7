"""Process-wide policies: the SIGPIPE dispositions, the failed-socket registry, RLIMIT_NOFILE."""

from __future__ import annotations

import resource
import signal
import socket
import struct

import pytest

from interceptor.process import Counters, SocketRegistry, apply_sigpipe_policy, raise_nofile


class Conn:
    def __init__(self) -> None:
        self.aborted = 0

    def sigpipe_abort(self) -> None:
        self.aborted += 1


def pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def wait_failed(registry: SocketRegistry, expect: bool, tries: int = 200) -> list:
    """Poll until the registry's answer is what we expect (the kernel needs a moment)."""
    import time

    got: list = []
    for _ in range(tries):
        got = registry.failed()
        if bool(got) == expect:
            return got
        time.sleep(0.005)
    return got


def test_reset_socket_is_reported_and_orderly_close_is_not():
    registry = SocketRegistry()
    reset_client, reset_server = pair()
    orderly_client, orderly_server = pair()
    a, b = Conn(), Conn()
    registry.add(reset_server.fileno(), a)
    registry.add(orderly_server.fileno(), b)
    assert registry.failed() == []
    # Both directions closed in order: EPOLLHUP (and TCP_CLOSE), but nothing failed.
    orderly_client.shutdown(socket.SHUT_WR)
    orderly_server.shutdown(socket.SHUT_WR)
    # A reset: the peer closes with SO_LINGER 0.
    reset_client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset_client.close()
    failed = wait_failed(registry, True)
    assert failed == [a]
    registry.remove(reset_server.fileno(), a)
    assert registry.failed() == []
    assert len(registry) == 1
    for s in (reset_server, orderly_client, orderly_server):
        s.close()


def test_remove_ignores_a_reused_descriptor():
    registry = SocketRegistry()
    client, server = pair()
    a = Conn()
    registry.add(server.fileno(), a)
    registry.remove(server.fileno(), Conn())  # someone else's: must not unregister ours
    assert len(registry) == 1
    client.close()
    server.close()


@pytest.fixture
def restore_sigpipe():
    before = signal.getsignal(signal.SIGPIPE)
    yield
    signal.signal(signal.SIGPIPE, before)


def test_ignore_sets_sig_ign_and_reports_what_it_replaced(restore_sigpipe):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    counters = Counters()
    assert apply_sigpipe_policy("ignore", counters, None) == ("ignore", "SIG_DFL")
    assert signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN
    assert counters.sigpipe_replaced == "SIG_DFL"


def test_close_installs_a_handler_that_counts_and_aborts(restore_sigpipe):
    counters = Counters()
    registry = SocketRegistry()
    client, server = pair()
    conn = Conn()
    registry.add(server.fileno(), conn)
    apply_sigpipe_policy("close", counters, registry)
    handler = signal.getsignal(signal.SIGPIPE)
    assert callable(handler)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_failed(registry, True)
    handler(signal.SIGPIPE, None)
    assert counters.sigpipe_received == 1
    assert counters.sigpipe_aborts == 1 and conn.aborted == 1
    server.close()


def test_inherit_touches_nothing(restore_sigpipe):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    apply_sigpipe_policy("inherit", Counters(), None)
    assert signal.getsignal(signal.SIGPIPE) is signal.SIG_DFL


def test_raise_nofile_to_a_number_and_back():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        old, new, got_hard = raise_nofile(256)
        assert (old, new, got_hard) == (soft, 256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256
        old, new, _ = raise_nofile(None)
        assert old == 256 and new == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
