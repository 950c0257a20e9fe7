"""Connection lifecycle and SIGPIPE policy against a real twistd process (DESIGN.md §3).

The proxy runs as a subprocess; most tests start it with SIGPIPE at SIG_DFL (`sigdfl_launcher`),
which is what an embedder, a careless launcher or any `subprocess` child hands it. Then:

* the disposition each `sigpipe` policy leaves is read from /proc/PID/status;
* a storm of clients that half-close (through a passthrough tunnel, or over plain HTTP) and then
  reset kills the process under `inherit` (signal 13), and not under `ignore` or `close`;
* a "closing tabs" storm (plain HTTP, passthrough tunnels and intercepted HTTPS, each client
  starting a 10 MiB download, reading a little, half-closing, resetting) leaves well-behaved
  clients unharmed, descriptors back at their baseline, and every upstream leg closed within
  about a second of its client's reset (measured on the origin);
* half-closed tunnels, idle keep-alive clients and slow request heads are closed at their bounds;
* descriptor limits are applied, and exhaustion gives a 502 and recovers by itself.

Timing assertions use bounds with slack for a loaded machine; all waiting is polling against a
deadline, and every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import certs
from tests.storm import (
    GoodClient,
    Storm,
    StormResult,
    StormTargets,
    StreamOrigin,
    client_tls_context,
    fd_count,
    metric_value,
    nofile_limits,
    open_tunnel,
    scrape,
    sigdfl_launcher,
    sigpipe_state,
    socket_inodes,
    tcp_inode,
)
from tests.support import (
    LOOPBACK,
    IncompleteResponse,
    ProxyProcess,
    RawConnection,
    free_port,
    get,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

TAB_STORM_SECONDS = 20.0  # the acceptance criterion: a 20 s storm
HAZARD_MAX_CONNECTIONS = 300  # inherit must die within this many storm connections
HAZARD_MAX_SECONDS = 20.0
SLACK = 1.0  # extra time allowed over a configured bound on a loaded machine
FD_SLACK = 5  # descriptors above baseline still accepted after a storm
UPSTREAM_CLOSE_MAX = 1.5  # s from a client's reset to its upstream leg closing (p100)


# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


def proxy_env(**settings: str) -> dict[str, str]:
    """INTERCEPTOR_<SECTION>_<KEY> variables from `section_key=value` keyword arguments."""
    return {f"INTERCEPTOR_{k.upper()}": v for k, v in settings.items()}


def with_log(proxy: ProxyProcess, text: str, lines: int = 40) -> str:
    """`text` plus the proxy's exit status and log tail, for assertion messages.

    Access-log lines are left out of the tail (storms write thousands); the count is given.
    """
    log = proxy.log_text().splitlines()
    other = [line for line in log if "[interceptor.access#" not in line]
    return (
        f"{text}\nproxy returncode={proxy.returncode}; {len(log) - len(other)} access lines; "
        f"other log lines (last {lines}):\n" + "\n".join(other[-lines:])
    )


def summary(values: list[float]) -> str:
    """min/p50/p90/p99/max of `values` (seconds) as one line in milliseconds."""
    if not values:
        return "n=0"
    s = sorted(values)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))] * 1000

    return (
        f"n={len(s)} min={s[0] * 1000:.1f}ms p50={pct(0.5):.1f}ms p90={pct(0.9):.1f}ms "
        f"p99={pct(0.99):.1f}ms max={s[-1] * 1000:.1f}ms"
    )


@pytest.fixture
def origin() -> Iterator[StreamOrigin]:
    """A plain streaming origin (`/small`, `/big?id=`), per test."""
    with StreamOrigin(watch_timeout=8.0) as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An origin root CA and a server certificate for 127.0.0.1 signed by it (PEM paths)."""
    directory = tmp_path_factory.mktemp("pki")
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(directory, "origin-root", root)
    cert, key = certs.write_pair(directory, "origin", certs.good_cert(root))
    return {"root": root_pem, "cert": cert, "key": key}


def assert_serves(proxy: ProxyProcess, origin: StreamOrigin) -> None:
    """A fresh client connection gets `/small` through the proxy."""
    with RawConnection(proxy.port, timeout=5) as conn:
        conn.send(get(f"http://{origin.authority}/small"))
        resp = conn.read_response()
    assert resp.status == 200 and resp.body == StreamOrigin.SMALL, with_log(proxy, repr(resp))


class FdMonitor:
    """Samples a process's descriptor count every `interval` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Sample until stopped (bounded)."""
        for _ in range(100000):
            if self._stop.wait(self.interval):
                return
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, fd_count(self.pid))
                self.samples += 1

    def __enter__(self) -> FdMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def proxy_pids(proxy: ProxyProcess, workers: int) -> list[int]:
    """The processes that serve: the proxy itself, or its `workers` once they accept."""
    if workers == 1:
        return [proxy.pid]
    from tests.test_workers import started_workers

    return started_workers(proxy, workers)


def fds_of(pids: list[int]) -> int:
    """Descriptors held by all of `pids` together."""
    return sum(fd_count(pid) for pid in pids)


def wait_fds_at_most(
    proxy: ProxyProcess, limit: int, timeout: float, pids: list[int] | None = None
) -> tuple[int, float]:
    """Poll until the proxy (or `pids`, its workers) has at most `limit` descriptors;
    (count, seconds it took)."""
    start = time.monotonic()
    serving = pids or [proxy.pid]
    last = [fds_of(serving)]

    def ok() -> bool:
        last[0] = fds_of(serving)
        return last[0] <= limit

    wait_for(
        ok,
        timeout,
        interval=0.005,
        message=lambda: with_log(proxy, f"proxy holds {last[0]} descriptors, want <= {limit}"),
    )
    return last[0], time.monotonic() - start


# --------------------------------------------------------------------------------------------
# 1. Disposition
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "mode,ignored,caught",
    [("ignore", True, False), ("close", False, True), ("inherit", False, False)],
)
def test_sigpipe_disposition_under_sig_dfl(proxy_factory, mode, ignored, caught, workers):
    """Each policy's disposition, as the kernel sees it, when started with SIG_DFL: in the
    proxy, or in each of its workers (which start as their supervisor was started)."""
    proxy = proxy_factory(
        env=proxy_env(proxy_sigpipe=mode, proxy_workers=str(workers)), launcher=sigdfl_launcher()
    )
    # start_proxy returns once the proxy listens, and the policy is applied before that; a
    # worker applies it before it accepts.
    pids = proxy_pids(proxy, workers)
    for pid in pids:
        state = sigpipe_state(pid)
        print(f"{mode}: SIGPIPE (ignored, caught) = {state} in {pid}")
        assert state == (ignored, caught), with_log(proxy, f"{mode}: (ignored, caught) = {state}")
    # (each worker logged it before "proxy accepting on", which proxy_pids waited for)
    proxy.wait_for_log(rf"SIGPIPE policy {mode} \(replaced SIG_DFL\)")
    assert proxy.log_text().count(f"SIGPIPE policy {mode} (replaced SIG_DFL)") == len(pids)


def test_sigpipe_ignore_under_python_default_reports_sig_ign(proxy_factory):
    """Control: started the ordinary way, CPython has already set SIG_IGN; that is logged."""
    proxy = proxy_factory(env=proxy_env(proxy_sigpipe="ignore"))
    assert sigpipe_state(proxy.pid) == (True, False)
    proxy.wait_for_log(r"SIGPIPE policy ignore \(replaced SIG_IGN\)")


# --------------------------------------------------------------------------------------------
# 2. The hazard: half-close-then-reset through a passthrough tunnel
# --------------------------------------------------------------------------------------------


def tunnel_targets(proxy: ProxyProcess, origin: StreamOrigin) -> StormTargets:
    """Storm targets for a proxy started with `tunnel_env()`."""
    return StormTargets(proxy.port, origin.authority, tunnel_authority=f"tunnel.test:{origin.port}")


def tunnel_env(**extra: str) -> dict[str, str]:
    """Proxy settings tunnelling CONNECT tunnel.test:* opaquely to 127.0.0.1."""
    return proxy_env(tls_passthrough="tunnel.test", upstream_hosts="tunnel.test=127.0.0.1", **extra)


# Storm connections within which `inherit` must die. Through a tunnel the proxy keeps writing to
# a client after its FIN, so death comes within a few dozen connections (10 of 10 trials: <= 30).
# Over plain HTTP the FIN aborts the exchange, but FIN and RST can both land between the
# reactor's epoll_wait and its next send() to that client: still EPIPE, only less often
# (10 of 10 trials died, after 13 to 323 connections), hence the larger bound.
HAZARD_BOUND = {"tunnel": HAZARD_MAX_CONNECTIONS, "http": 10 * HAZARD_MAX_CONNECTIONS}


@pytest.mark.parametrize("kind", ["tunnel", "http"])
def test_inherit_under_sig_dfl_dies_of_sigpipe_in_storm(proxy_factory, origin, kind):
    """The hazard the policies exist for: SIG_DFL + clients that FIN then RST = signal 13."""
    proxy = proxy_factory(env=tunnel_env(proxy_sigpipe="inherit"), launcher=sigdfl_launcher())
    assert sigpipe_state(proxy.pid) == (False, False)
    storm = Storm(
        tunnel_targets(proxy, origin),
        (kind,),
        workers=8,
        max_connections=HAZARD_BOUND[kind],
        duration=HAZARD_MAX_SECONDS,
        stop_when=lambda: not proxy.running(),
    )
    results = storm.run()
    with contextlib.suppress(Exception):
        proxy.popen.wait(5)
    completed = [r for r in results if r.error is None]
    print(
        f"inherit/{kind}: returncode={proxy.returncode} after {len(results)} storm connections "
        f"({len(completed)} had completed) in {storm.elapsed:.2f}s"
    )
    assert proxy.returncode == -13, with_log(
        proxy, f"expected death by SIGPIPE within {len(results)} {kind} storm connections"
    )


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["tunnel", "http"])
@pytest.mark.parametrize("mode", ["ignore", "close"])
def test_policy_survives_storm_under_sig_dfl(proxy_factory, origin, mode, kind, workers):
    """`ignore` and `close` under SIG_DFL survive the same storms and keep serving.

    In `close` mode the tunnel storm delivers SIGPIPE for sure (it kills `inherit` within a
    few dozen connections), so the handler's counter must have moved; over plain HTTP delivery
    is a race, so the count is only printed. Under `ignore` the signal is never delivered.
    """
    admin_port = free_port()
    proxy = proxy_factory(
        env=tunnel_env(
            proxy_sigpipe=mode,
            admin_listen=f"tcp:{admin_port}:interface={LOOPBACK}",
            proxy_workers=str(workers),
        ),
        launcher=sigdfl_launcher(),
    )
    pids = proxy_pids(proxy, workers)
    assert_serves(proxy, origin)
    baseline = fds_of(pids)
    storm = Storm(
        tunnel_targets(proxy, origin),
        (kind,),
        workers=8,
        max_connections=HAZARD_MAX_CONNECTIONS,
        duration=HAZARD_MAX_SECONDS,
        stop_when=lambda: not proxy.running(),
    )
    results = storm.run()
    errors = [r.error for r in results if r.error]
    assert proxy.running(), with_log(proxy, f"{mode}: proxy died during the {kind} storm")
    assert "starting it again" not in proxy.log_text(), with_log(proxy, "a worker died")
    assert len(results) == HAZARD_MAX_CONNECTIONS
    assert not errors, with_log(proxy, f"{len(errors)} storm clients failed: {errors[:5]}")
    assert_serves(proxy, origin)
    after, took = wait_fds_at_most(proxy, baseline + FD_SLACK, 5.0, pids)
    metrics = scrape(admin_port)
    received = metric_value(metrics, "interceptor_sigpipe_received_total")
    aborts = metric_value(metrics, "interceptor_sigpipe_handler_aborts_total")
    print(
        f"{mode}/{kind}: {len(results)} storm connections in {storm.elapsed:.2f}s; "
        f"sigpipe_received_total={received} sigpipe_handler_aborts_total={aborts}; "
        f"fds baseline={baseline} after={after} ({took:.2f}s)"
    )
    assert received is not None and aborts is not None, metrics
    if mode == "ignore":
        assert received == 0
    elif kind == "tunnel":
        assert received > 0, with_log(proxy, "close mode counted no SIGPIPE")


# --------------------------------------------------------------------------------------------
# 3. The tab storm
# --------------------------------------------------------------------------------------------


def test_tab_storm(proxy_factory, origin, pki):
    """Clients closing tabs mid-download for TAB_STORM_SECONDS, while others browse.

    Storm clients cycle through plain HTTP, passthrough tunnels and intercepted HTTPS; each
    starts a 10 MiB download, reads a little, half-closes, keeps reading briefly, then resets.
    Two plain and one intercepted keep-alive client fetch small files throughout. The proxy
    runs with the default `ignore` policy, started with SIGPIPE at SIG_DFL.
    """
    with StreamOrigin(pki["cert"], pki["key"], watch_timeout=8.0) as tls_origin:
        proxy = proxy_factory(
            env=tunnel_env(tls_upstream_ca_bundle=str(pki["root"])),
            launcher=sigdfl_launcher(),
        )
        targets = StormTargets(
            proxy.port,
            origin.authority,
            tunnel_authority=f"tunnel.test:{origin.port}",
            tls_authority=tls_origin.authority,
            tls_context=client_tls_context(proxy.workdir / "ca" / "ca.pem"),
        )
        good = [GoodClient(targets, k).start() for k in ("http", "http", "tls")]
        try:
            wait_for(
                lambda: all(g.ok >= 5 or g.failures for g in good),
                10,
                message=lambda: with_log(proxy, "well-behaved clients did not get going"),
            )
            assert not [f for g in good for f in g.failures], with_log(proxy, "warm-up failed")
            baseline = fd_count(proxy.pid)
            storm = Storm(
                targets,
                ("http", "tunnel", "tls"),
                workers=6,
                max_connections=50000,
                duration=TAB_STORM_SECONDS,
                stop_when=lambda: not proxy.running(),
            )
            with FdMonitor(proxy.pid) as monitor:
                results = storm.run()
            assert proxy.running(), with_log(proxy, "proxy died during the tab storm")
            after, took = wait_fds_at_most(proxy, baseline + FD_SLACK, 5.0)
            with contextlib.suppress(AssertionError):  # for the report only: fully settled?
                wait_fds_at_most(proxy, baseline, 2.0)
            settled = fd_count(proxy.pid)
            ok_counts = [g.ok for g in good]
        finally:
            for g in good:
                g.stop()
        failures = [f for g in good for f in g.failures]
        assert not failures, with_log(proxy, f"well-behaved clients failed: {failures}")
        assert all(n > 0 for n in ok_counts)

        # Each storm client's upstream leg, as its origin saw it.
        started = [r for r in results if r.error is None]
        errors = [r for r in results if r.error is not None]

        def record_of(r: StormResult):
            return (tls_origin if r.kind == "tls" else origin).record(r.request_id)

        def all_closed() -> bool:
            return all((rec := record_of(r)) is not None and rec.closed_at for r in started)

        with contextlib.suppress(AssertionError):
            wait_for(all_closed, 5.0, interval=0.05)
        latencies: dict[str, list[float]] = {"http": [], "tunnel": [], "tls": []}
        after_fin: dict[str, list[float]] = {"http": [], "tunnel": [], "tls": []}
        problems = []
        for r in started:
            rec = record_of(r)
            if rec is None:
                problems.append(f"{r.request_id}: request never reached the origin")
            elif rec.closed_at is None:
                problems.append(f"{r.request_id}: upstream leg not closed ({rec.how})")
            else:
                assert r.reset_at is not None and r.half_closed_at is not None
                latencies[r.kind].append(rec.closed_at - r.reset_at)
                after_fin[r.kind].append(rec.closed_at - r.half_closed_at)
        everything = [x for v in latencies.values() for x in v]
        print(
            f"\ntab storm: {len(results)} storm connections in {storm.elapsed:.1f}s "
            f"({', '.join(f'{k}={sum(r.kind == k for r in results)}' for k in latencies)}); "
            f"{len(errors)} could not start; well-behaved requests ok: {ok_counts}"
        )
        print(
            f"fds: baseline={baseline} peak={monitor.peak} ({monitor.samples} samples) "
            f"after={after} ({took:.2f}s after the storm), settled={settled}"
        )
        for kind, values in latencies.items():
            print(f"upstream closed after client's RST [{kind}]: {summary(values)}")
            print(f"upstream closed after client's FIN [{kind}]: {summary(after_fin[kind])}")
        hows: dict[str, int] = {}
        for r in started:
            rec = record_of(r)
            if rec is not None:
                hows[rec.how] = hows.get(rec.how, 0) + 1
        print(f"how the origin saw its legs close: {hows}")
        assert not errors, with_log(
            proxy, f"{len(errors)} storm clients could not start: {[r.error for r in errors][:5]}"
        )
        assert not problems, with_log(proxy, f"{len(problems)} upstream legs: {problems[:10]}")
        assert all(latencies.values()), "some kind of storm client never ran"
        worst = max(everything)
        assert worst < UPSTREAM_CLOSE_MAX, with_log(
            proxy, f"an upstream leg closed {worst:.3f}s after its client's reset"
        )
        print(f"all kinds: {summary(everything)}; median {statistics.median(everything):.4f}s")


# --------------------------------------------------------------------------------------------
# 4. Half-closed tunnels
# --------------------------------------------------------------------------------------------


@pytest.fixture
def short_proxy(proxy_factory) -> ProxyProcess:
    """idle_timeout = header_timeout = half_close_timeout = 1; 127.0.0.1 tunnelled opaquely."""
    return proxy_factory(
        "[proxy]\nidle_timeout = 1\nheader_timeout = 1\nhalf_close_timeout = 1\n"
        '[tls]\npassthrough = ["127.0.0.1"]\n',
        launcher=sigdfl_launcher(),
    )


@pytest.fixture
def long_proxy(proxy_factory) -> ProxyProcess:
    """header_timeout = 1 but idle and half-close bounds of 10 s; 127.0.0.1 tunnelled."""
    return proxy_factory(
        "[proxy]\nidle_timeout = 10\nheader_timeout = 1\nhalf_close_timeout = 10\n"
        '[tls]\npassthrough = ["127.0.0.1"]\n',
        launcher=sigdfl_launcher(),
    )


@contextlib.contextmanager
def raw_tunnel(proxy: ProxyProcess) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, origin) sockets joined by a passthrough tunnel through `proxy`."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = origin = None
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        listener.settimeout(5)
        client = open_tunnel(proxy.port, f"{LOOPBACK}:{listener.getsockname()[1]}")
        origin, _ = listener.accept()
        origin.settimeout(5)
        client.sendall(b"ping")
        assert origin.recv(16) == b"ping"
        origin.sendall(b"pong")
        assert client.recv(16) == b"pong"
        yield client, origin
    finally:
        for s in (client, origin, listener):
            if s is not None:
                s.close()


def closed_within(
    sock: socket.socket, deadline: float, probe: bytes = b"", interval: float = 0.02
) -> float | None:
    """Wait until `sock`'s peer has closed (EOF, RST or an error); time.monotonic() of that.

    Data arriving meanwhile is discarded. Once a FIN has been read, a closed peer can only be
    told from a half-closed one by writing, so with `probe` those bytes are sent every
    `interval` s; a closed peer answers with RST. None if still open at `deadline`.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    eof = False
    for _ in range(100000):
        now = time.monotonic()
        if now >= deadline:
            return None
        events = poller.poll(min(interval, deadline - now) * 1000)
        mask = events[0][1] if events else 0
        if mask & (select.POLLERR | select.POLLHUP):
            return time.monotonic()
        try:
            if mask & select.POLLIN:
                if not sock.recv(65536):
                    if not probe:
                        return time.monotonic()
                    eof = True
                    poller.modify(sock.fileno(), 0)
            if eof:
                sock.send(probe)
        except OSError:
            return time.monotonic()
    return None


def test_half_closed_tunnel_closed_at_bound(short_proxy):
    """Client FIN on a tunnel whose origin stays open: both legs aborted at ~1 s, not before.

    Meanwhile the other direction still works: the FIN is relayed, origin bytes still arrive.
    """
    proxy = short_proxy
    with raw_tunnel(proxy) as (client, origin):
        client.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert origin.recv(16) == b"", "the client's FIN was not relayed to the origin"
        origin.sendall(b"still talking")
        assert client.recv(64) == b"still talking", "origin bytes stopped after client's FIN"
        deadline = t0 + 1 + SLACK + 1
        # The origin keeps its side open; it probes only to see when its leg is closed.
        origin_closed = [None]
        watcher = threading.Thread(
            target=lambda: origin_closed.__setitem__(
                0, closed_within(origin, deadline, probe=b".")
            ),
            daemon=True,
        )
        watcher.start()
        client_closed = closed_within(client, deadline)
        watcher.join(deadline - time.monotonic() + 2)
    c = None if client_closed is None else client_closed - t0
    o = None if origin_closed[0] is None else origin_closed[0] - t0
    print(f"half-closed tunnel: client leg closed after {c}s, origin leg after {o}s (bound 1s)")
    assert c is not None and 0.9 <= c <= 1 + SLACK, with_log(proxy, f"client leg: {c}")
    assert o is not None and 0.9 <= o <= 1 + SLACK, with_log(proxy, f"origin leg: {o}")


@pytest.mark.parametrize("first", ["client", "origin"])
def test_tunnel_closed_promptly_when_both_sides_half_close(long_proxy, first):
    """Both directions ended: both legs closed at once (no fd leak), not at the 10 s bound.

    The proxy's two sockets for this tunnel are found by their ports in /proc/net/tcp, and
    the test waits for their descriptors to leave the proxy's fd table.
    """
    proxy = long_proxy
    with raw_tunnel(proxy) as (client, origin):
        client_leg = tcp_inode(proxy.port, client.getsockname()[1])
        upstream_leg = tcp_inode(origin.getpeername()[1], origin.getsockname()[1])
        legs = {client_leg, upstream_leg}
        assert None not in legs and legs <= socket_inodes(proxy.pid), (legs, proxy.pid)
        a, b = (client, origin) if first == "client" else (origin, client)
        a.shutdown(socket.SHUT_WR)
        assert b.recv(16) == b"", f"{first}'s FIN was not relayed"
        b.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert a.recv(16) == b"", "the second FIN was not relayed"
        wait_for(
            lambda: not legs & socket_inodes(proxy.pid),
            2.0,
            interval=0.002,
            message=lambda: with_log(
                proxy, f"proxy still holds {legs & socket_inodes(proxy.pid)} of legs {legs}"
            ),
        )
        took = time.monotonic() - t0
    print(f"both half-closed ({first} first): both legs' fds closed {took * 1000:.1f}ms later")
    assert took < 1.0


# --------------------------------------------------------------------------------------------
# 5. Idle keep-alive clients and slow request heads
# --------------------------------------------------------------------------------------------


def test_idle_keep_alive_client_closed_at_bound(short_proxy, origin):
    """idle_timeout = 1: after one exchange, an idle client gets EOF at ~1 s (a FIN, no RST)."""
    proxy = short_proxy
    with RawConnection(proxy.port, timeout=5) as conn:
        conn.send(get(f"http://{origin.authority}/small"))
        resp = conn.read_response()
        t0 = time.monotonic()
        assert resp.status == 200 and not resp.connection_tokens() & {"close"}
        closed = conn.wait_closed(timeout=1 + SLACK + 1)
        elapsed = time.monotonic() - t0
        print(f"idle client closed after {elapsed:.3f}s (bound 1s), reset={conn.reset}")
        assert closed, with_log(proxy, "idle client still open")
        assert 0.9 <= elapsed <= 1 + SLACK
        assert not conn.reset and conn.buf == b"", (conn.reset, bytes(conn.buf))


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickling"])
def test_slow_request_head_gets_408(long_proxy, origin, trickle):
    """header_timeout = 1 (idle 10): half a head gets 408 and a close at ~1 s.

    `trickling`: a byte every 0.2 s does not extend the bound (slowloris).
    """
    proxy = long_proxy
    with RawConnection(proxy.port, timeout=5) as conn:
        t0 = time.monotonic()
        conn.send(f"GET http://{origin.authority}/small HTTP/1.1\r\nHost: ".encode())
        seen = False
        for _ in range(int((1 + SLACK) / 0.2) + 2):
            if trickle:
                with contextlib.suppress(OSError):
                    conn.send(b"x")
            try:
                conn.wait_buffered(b"\r\n\r\n", timeout=0.2)  # the pace of the trickle
                seen = True
                break
            except IncompleteResponse:
                if conn.eof:
                    break
        elapsed = time.monotonic() - t0
        data = conn.read_until_close(timeout=2)
        print(f"408 after {elapsed:.3f}s: {data[:60]!r}")
        assert seen, with_log(proxy, f"no response head; got {data!r}")
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert 0.9 <= elapsed <= 1 + SLACK
    assert origin.small_served == 0


# --------------------------------------------------------------------------------------------
# 6. Descriptors
# --------------------------------------------------------------------------------------------


def test_max_open_files_is_applied(proxy_factory):
    """[limits] max_open_files = 256: the process's soft limit, and the log says so."""
    proxy = proxy_factory("[limits]\nmax_open_files = 256\n")
    soft, hard = nofile_limits(proxy.pid)
    print(f"Max open files: soft {soft} hard {hard}")
    assert soft == "256"
    proxy.wait_for_log(r"open files limit: soft \d+ -> 256 \(hard \d+\)")


def test_descriptor_exhaustion_gives_502_and_recovers(proxy_factory, origin):
    """max_open_files = 64, pool_size = 0, 80 idle clients: out of descriptors.

    An already-open keep-alive client still gets an answer: a 502 saying the proxy is out of
    file descriptors (its request needs a new upstream connection). Once the idle clients go,
    new clients are served again without any intervention.
    """
    proxy = proxy_factory(
        "[limits]\nmax_open_files = 64\n[upstream]\npool_size = 0\n",
        launcher=sigdfl_launcher(),
    )
    assert nofile_limits(proxy.pid)[0] == "64"
    url = f"http://{origin.authority}/small"
    idle: list[socket.socket] = []
    with RawConnection(proxy.port, timeout=5) as keep:
        keep.send(get(url))
        first = keep.read_response()
        assert first.status == 200, with_log(proxy, repr(first))
        try:
            for _ in range(80):
                idle.append(socket.create_connection((LOOPBACK, proxy.port), timeout=5))
            wait_for(
                lambda: fd_count(proxy.pid) >= 63,
                5,
                message=lambda: with_log(proxy, f"proxy at {fd_count(proxy.pid)} fds only"),
            )
            peak = fd_count(proxy.pid)
            keep.send(get(url))
            resp = keep.read_response()
            print(f"at {peak} fds: {resp.status} {resp.body!r}")
            assert resp.status == 502, with_log(proxy, repr(resp))
            assert b"proxy out of file descriptors" in resp.body, with_log(proxy, repr(resp))
            assert proxy.running()
        finally:
            for s in idle:
                s.close()
        wait_for(
            lambda: fd_count(proxy.pid) < 40,
            5,
            message=lambda: with_log(proxy, f"still {fd_count(proxy.pid)} fds"),
        )
        assert_serves(proxy, origin)
    assert proxy.running()
