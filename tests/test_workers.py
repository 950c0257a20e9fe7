"""Worker processes (`[proxy] workers`), as a process sees them: a real supervisor and its real
workers under twistd, their dispositions and descriptors read from /proc, traffic through
curl and raw sockets, /metrics through the supervisor's admin endpoint."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storm import fd_count, sigpipe_state
from tests.support import (
    OriginServer,
    ProxyProcess,
    exchange,
    failed_start,
    free_port,
    get,
    respond,
    wait_for,
)
from tests.test_operations import (
    admin_status,
    assert_orderly_exit,
    metric_value,
    scrape,
    start_with_admin,
)

TIMEOUT = 20.0


def worker_pids(supervisor: int) -> list[int]:
    """The pids of `supervisor`'s child processes (its workers)."""
    path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except OSError:
        return []


def started_workers(proxy: ProxyProcess, count: int) -> list[int]:
    """Wait until `count` workers accept on the supervisor's sockets; their pids."""
    found: list[int] = []

    def accepting() -> bool:
        found[:] = worker_pids(proxy.pid)
        log = proxy.log_text()
        numbers = set(re.findall(r"worker=(\d+)\] proxy accepting on", log))
        numbers |= set(re.findall(r'"proxy accepting on .*"worker": (\d+)', log))  # JSON
        return len(found) == count and len(numbers) >= count

    wait_for(accepting, TIMEOUT, message=lambda: f"{found} workers; log:\n{proxy.log_tail()}")
    return found


def start_workers(
    proxy_factory: Callable[..., ProxyProcess], count: int = 2, **env: str
) -> tuple[ProxyProcess, int, list[int]]:
    """A supervisor of `count` workers with its admin endpoint: (proxy, admin port, pids)."""
    proxy, admin = start_with_admin(proxy_factory, INTERCEPTOR_PROXY_WORKERS=str(count), **env)
    pids = started_workers(proxy, count)
    wait_for(lambda: admin_status(admin, "/readyz") == 200, TIMEOUT, message=proxy.log_tail)
    return proxy, admin, pids


def test_two_workers_ignore_sigpipe_share_the_traffic_and_count_it_once(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy, admin, pids = start_workers(proxy_factory)
    assert len(set(pids)) == 2 and proxy.pid not in pids
    for pid in pids:
        assert sigpipe_state(pid) == (True, False), f"worker {pid}: SIGPIPE not ignored"
    url = origin.route("/w", respond(b"served"))
    for _ in range(40):  # a connection each: the kernel spreads them over the workers
        resp, conn = exchange(proxy.port, get(url))
        conn.close()
        assert resp.status == 200 and resp.body == b"served"
    # One view: the supervisor's /metrics sums what both workers counted.
    wait_for(
        lambda: metric_value(scrape(admin), "interceptor_responses_total", {"class": "2xx"})
        == 40,
        TIMEOUT,
        message=lambda: scrape(admin),
    )
    text = scrape(admin)
    assert metric_value(text, "interceptor_workers_running", {}) == 2
    # Per-worker figures carry the worker's number; access lines say who served them.
    assert 'interceptor_connections_open{side="client",worker="1"}' in text, text
    served = re.findall(r"\[interceptor\.access#info worker=(\d)\] .* 200 ", proxy.log_text())
    assert len(served) == 40 and set(served) == {"1", "2"}, served
    proxy.send_signal(signal.SIGTERM)
    proxy.popen.wait(timeout=TIMEOUT)
    assert_orderly_exit(proxy)
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_worker_that_dies_is_started_again_and_serves(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy, admin, pids = start_workers(proxy_factory)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for_log(
        rf"worker (\d) \(pid {victim}\) was killed by SIGKILL: starting it again in 0\.5 s"
    )
    new = started_workers(proxy, 2)
    assert victim not in new
    wait_for(lambda: admin_status(admin, "/readyz") == 200, TIMEOUT, message=proxy.log_tail)
    url = origin.route("/again", respond(b"again"))
    for _ in range(10):
        resp, conn = exchange(proxy.port, get(url))
        conn.close()
        assert resp.status == 200
    text = scrape(admin)
    assert metric_value(text, "interceptor_worker_restarts_total", {}) == 1


def test_descriptors_come_back_to_baseline_over_all_workers(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy, admin, pids = start_workers(proxy_factory)
    url = origin.route("/fd", respond(b"x" * 1000))
    # Warm: each worker has made its pooled upstream connection.
    for _ in range(20):
        resp, conn = exchange(proxy.port, get(url))
        conn.close()
    clients_open = {"side": "client"}

    def settled() -> int:
        wait_for(
            lambda: metric_value(scrape(admin), "interceptor_connections_open", clients_open)
            == 0,
            TIMEOUT,
            message=lambda: scrape(admin),
        )
        return sum(fd_count(pid) for pid in pids)

    baseline = settled()
    conns = [exchange(proxy.port, get(url))[1] for _ in range(100)]
    assert sum(fd_count(pid) for pid in pids) > baseline
    for conn in conns:
        conn.close()
    wait_for(
        lambda: sum(fd_count(pid) for pid in pids) <= baseline + 2,
        TIMEOUT,
        message=lambda: f"{sum(fd_count(pid) for pid in pids)} descriptors, {baseline} before",
    )


def _one_error_line(result: object) -> str:
    """The one error line of a start-up that failed after twistd took over its output."""
    output = result.stdout + result.stderr  # type: ignore[attr-defined]
    errors = [line for line in output.splitlines() if "#error]" in line or "Traceback" in line]
    assert len(errors) == 1, output
    assert "started (pid" not in output  # no worker was started
    return errors[0]


def test_a_busy_port_is_one_line_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = failed_start(
            tmp_path, "--listen", f"127.0.0.1:{port}", INTERCEPTOR_PROXY_WORKERS="2"
        )
    assert result.returncode == 2, result
    line = _one_error_line(result)
    assert f"interceptor: proxy.listen: cannot listen on tcp:{port}:" in line, line


def test_a_busy_admin_port_stops_the_supervisor_before_the_proxy_port_exists(
    tmp_path: Path,
) -> None:
    proxy_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin = busy.getsockname()[1]
        result = failed_start(
            tmp_path, "--listen", f"127.0.0.1:{proxy_port}", "--admin-listen",
            f"127.0.0.1:{admin}", INTERCEPTOR_PROXY_WORKERS="2",
        )  # fmt: skip
    assert result.returncode == 2, result
    line = _one_error_line(result)
    assert f"interceptor: admin.listen: cannot listen on tcp:{admin}:" in line, line
    assert "supervisor:" not in result.stdout + result.stderr  # no proxy socket was bound


DYING = """
import os


def running():
    os._exit(3)
"""


def test_a_worker_that_keeps_dying_stops_the_proxy_with_one_line(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_PROXY_WORKERS": "2",
            "INTERCEPTOR_HOOKS_SCRIPTS": str(script),
            "INTERCEPTOR_ADMIN_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
        }
    )
    assert proxy.popen.wait(timeout=60) == 1, proxy.log_tail()
    (line,) = re.findall(r".*keeps dying.*", proxy.log_text())
    assert re.search(r"worker \d keeps dying \(exited with status 3, 5 times in \d+ s\): "
                     r"stopping the proxy$", line), line  # fmt: skip


def test_every_worker_writes_the_one_capture_store(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, tmp_path: Path
) -> None:
    from tests.test_capture import rows

    store = tmp_path / "flows.db"
    proxy, admin, pids = start_workers(proxy_factory, INTERCEPTOR_CAPTURE_STORE=str(store))
    url = origin.route("/c", respond(b"captured"))
    for _ in range(40):
        resp, conn = exchange(proxy.port, get(url))
        conn.close()
        assert resp.status == 200
    # Both workers served some, and not a flow is lost: SQLite serialises their writers.
    served = set(re.findall(r"\[interceptor\.access#info worker=(\d)\] .* 200 ", proxy.log_text()))
    assert served == {"1", "2"}, served
    found = wait_for(lambda: len(rows(store)) == 40 or None, TIMEOUT, message=proxy.log_tail)
    assert found
    assert len({row["id"] for row in rows(store)}) == 40


def test_json_access_lines_carry_the_worker(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    import json

    proxy, _, _ = start_workers(proxy_factory, INTERCEPTOR_LOG_FORMAT="json")
    url = origin.route("/j", respond(b"json"))
    for _ in range(10):
        resp, conn = exchange(proxy.port, get(url))
        conn.close()

    def access() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in proxy.log_text().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("namespace") == "interceptor.access"]

    entries = wait_for(lambda: len(access()) >= 10 and access() or None, TIMEOUT)
    assert {e["worker"] for e in entries} <= {1, 2} and all("id" in e for e in entries)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_twice_at_a_terminal_stops_every_worker_cleanly(
    proxy_factory: Callable[..., ProxyProcess], workers: int
) -> None:
    # A terminal's Ctrl-C signals the whole process group, workers included, and an impatient
    # user presses it again while the proxy drains (an exchange to an origin that never
    # answers keeps it draining until shutdown_timeout).
    proxy = proxy_factory(
        "[proxy]\nshutdown_timeout = 3\n",
        env={"INTERCEPTOR_PROXY_WORKERS": str(workers)},
        popen_kwargs={"start_new_session": True},
    )
    if workers > 1:
        started_workers(proxy, workers)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
        conn.sendall(get(f"http://127.0.0.1:{silent.getsockname()[1]}/never"))
        silent.settimeout(TIMEOUT)
        upstream, _ = silent.accept()
        os.killpg(proxy.pid, signal.SIGINT)
        wait_for(
            lambda: "draining: waiting" in proxy.log_text(), TIMEOUT, message=proxy.log_tail
        )
        os.killpg(proxy.pid, signal.SIGINT)
        proxy.popen.wait(TIMEOUT)
        upstream.close()
        conn.close()
    log = proxy.log_text()
    assert proxy.returncode == 0, log
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log
    assert log.count("SIGINT while stopping: already shutting down") == 1, log
    if workers > 1:
        assert len(re.findall(r"worker \d \(pid \d+\) exited with status 0", log)) == 2, log
