"""Operating the proxy: listen addresses from the environment, the admin endpoint, SIGTERM
draining, JSON logs and a closed stdout.

Everything runs `twistd -n --pidfile= interceptor` as a subprocess on loopback ports, as an
operator or an orchestrator would, and looks only at what they could see: sockets, HTTP
answers, exit statuses and log output.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import interceptor
from tests.support import (
    BASE_ENV,
    LOOPBACK,
    TWISTD,
    IncompleteResponse,
    OriginServer,
    ProxyProcess,
    RawConnection,
    drip,
    failed_start,
    free_port,
    get,
    respond,
    run_curl,
    stop_process,
    wait_for,
)

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def admin_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """GET `path` from the admin endpoint: (status, content type, body). OSError if refused."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def admin_status(port: int, path: str) -> int | None:
    """The status of GET `path`, or None if the connection is refused or fails."""
    try:
        return admin_get(port, path, timeout=2.0)[0]
    except OSError:
        return None


def connectable(port: int) -> bool:
    """Whether a TCP connect to the loopback port succeeds."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process `pid` has listening sockets on (IPv4 and IPv6), from /proc."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as f:
            next(f)  # header
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A = LISTEN
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def metric_value(text: str, sample_name: str, labels: dict[str, str]) -> float:
    """The value of one sample in Prometheus text; 0 if the sample is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    return 0.0


def scrape(admin_port: int) -> str:
    """The /metrics text, checked to be a 200 in the Prometheus text format."""
    status, ctype, body = admin_get(admin_port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain"), ctype
    return body.decode("utf-8")


def admin_env(admin_port: int) -> dict[str, str]:
    """Environment that turns the admin endpoint on at a loopback port (BASE_ENV turns it off)."""
    return {"INTERCEPTOR_ADMIN_LISTEN": f"tcp:{admin_port}:interface={LOOPBACK}"}


def start_with_admin(
    proxy_factory: Callable[..., ProxyProcess], config_text: str = "", **env: str
) -> tuple[ProxyProcess, int]:
    """A proxy with its admin endpoint on a free loopback port, both answering: (proxy, port).

    start_proxy waits for the proxy port only; the admin listener opens just after it.
    """
    admin_port = free_port()
    proxy = proxy_factory(config_text, env={**admin_env(admin_port), **env})
    wait_for(
        lambda: admin_status(admin_port, "/healthz") == 200,
        timeout=10,
        message=lambda: f"admin endpoint not answering; log:\n{proxy.log_tail()}",
    )
    return proxy, admin_port


def fetch(proxy_port: int, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET for `url` through the proxy on a fresh connection: (status, body)."""
    with RawConnection(proxy_port, timeout=timeout) as conn:
        conn.send(get(url))
        resp = conn.read_response()
    return resp.status, resp.body


def assert_orderly_exit(proxy: ProxyProcess) -> None:
    """The proxy stopped through its own shutdown path after SIGTERM: exit status 0."""
    rc = proxy.returncode
    assert rc == 0 and "Server Shut Down." in proxy.log_text(), (
        f"exit status {rc}; log tail:\n{proxy.log_tail()}"
    )


def slow_parts(count: int, size: int = 4096) -> list[bytes]:
    """`count` distinct body parts of `size` bytes (a truncation or reordering shows)."""
    return [bytes([0x41 + i % 26]) * (size - 8) + b"%08d" % i for i in range(count)]


# --------------------------------------------------------------------------------------------
# (a) listen addresses from the environment
# --------------------------------------------------------------------------------------------


def test_listen_addresses_come_from_the_environment(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """INTERCEPTOR_PROXY_LISTEN / INTERCEPTOR_ADMIN_LISTEN decide where it listens, and only there.

    No --listen and no config file: the proxy must take both addresses from the environment
    and must not also bind its default 8080 (or the admin default 8081).
    """
    proxy_port, admin_port = free_port(), free_port()
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_PROXY_LISTEN": f"tcp:{proxy_port}:interface={LOOPBACK}",
            **admin_env(admin_port),
        },
        listen=False,
        port=proxy_port,
    )
    ports = wait_for(
        lambda: (p := listening_ports(proxy.pid)) == {proxy_port, admin_port} and p,
        timeout=5,
        message=lambda: (
            f"listening on {sorted(listening_ports(proxy.pid))}, "
            f"expected {[proxy_port, admin_port]}; log:\n{proxy.log_tail()}"
        ),
    )
    assert 8080 not in ports and 8081 not in ports

    status, body = fetch(proxy_port, origin.route("/env", respond(b"env listen\n")))
    assert (status, body) == (200, b"env listen\n")
    assert admin_get(admin_port, "/healthz")[0] == 200

    log = proxy.log_text()
    assert f"proxy listening on tcp:{proxy_port}:interface={LOOPBACK}" in log, log
    assert f"admin listening on tcp:{admin_port}:interface={LOOPBACK}" in log, log
    assert "tcp:8080" not in log and "tcp:8081" not in log, log


def _port_pair() -> int:
    """A free port whose next port is free too (the admin endpoint's "auto")."""
    for _ in range(50):  # bounded
        port = free_port()
        if port < 65535:
            with socket.socket() as probe:
                try:
                    probe.bind((LOOPBACK, port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two free adjacent ports on loopback")


def test_two_instances_that_differ_only_in_listen_both_run(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """The admin endpoint's default follows the proxy port (the next one), so a second
    instance with another --listen does not collide with the first one's admin port."""
    url = origin.route("/both", respond(b"both\n"))
    running = []
    for _ in range(2):
        port = _port_pair()
        proxy = proxy_factory(env={"INTERCEPTOR_ADMIN_LISTEN": "auto"}, port=port)
        proxy.wait_for_log(rf"admin listening on tcp:{port + 1}:interface=127\.0\.0\.1")
        running.append((proxy, port))
    for proxy, port in running:
        assert fetch(port, url) == (200, b"both\n")
        assert admin_status(port + 1, "/healthz") == 200
        assert proxy.running()


def test_a_busy_admin_port_is_one_line_exit_2_and_no_proxy_port(tmp_path: Path) -> None:
    proxy_port = free_port()
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen(1)
        admin_port = busy.getsockname()[1]
        result = failed_start(
            tmp_path,
            *("--listen", f"127.0.0.1:{proxy_port}", "--admin-listen", f"127.0.0.1:{admin_port}"),
        )
    assert result.returncode == 2, result
    # twistd has taken the output over by then: the line is one of its log's, and the only
    # error among them.
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "#error]" in line or "Traceback" in line]
    assert len(errors) == 1, output
    assert errors[0].endswith(
        f"interceptor: admin.listen: cannot listen on tcp:{admin_port}:interface=127.0.0.1: "
        f"Couldn't listen on 127.0.0.1:{admin_port}: [Errno 98] Address already in use."
    ), errors
    assert "proxy listening" not in output  # the proxy's port was never opened


# --------------------------------------------------------------------------------------------
# (b) health, readiness, metrics
# --------------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """/healthz and /readyz are 200; /metrics parses and its counters follow the traffic."""
    proxy, admin_port = start_with_admin(proxy_factory)

    status, _, body = admin_get(admin_port, "/healthz")
    assert status == 200, body
    status, _, body = admin_get(admin_port, "/readyz")
    assert status == 200, body

    text = scrape(admin_port)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("interceptor_responses", "interceptor_connections"):
        assert families[name].type == "counter", families.get(name)
    assert families["interceptor_connections_open"].type == "gauge"
    responses_2xx = ("interceptor_responses_total", {"class": "2xx"})
    clients = ("interceptor_connections_total", {"side": "client"})
    before_2xx = metric_value(text, *responses_2xx)
    before_clients = metric_value(text, *clients)

    url = origin.route("/counted", respond(b"count me\n"))
    assert fetch(proxy.port, url) == (200, b"count me\n")

    def moved() -> str | None:
        now = scrape(admin_port)
        return now if metric_value(now, *responses_2xx) > before_2xx else None

    after = wait_for(moved, timeout=5, message="interceptor_responses_total{2xx} did not move")
    assert metric_value(after, *responses_2xx) == before_2xx + 1
    assert metric_value(after, *clients) == before_clients + 1
    # Scrapes themselves are not proxy traffic.
    assert metric_value(scrape(admin_port), *clients) == before_clients + 1

    # What a dashboard is built from: latency histograms, the process, the build.
    families = {f.name: f for f in text_string_to_metric_families(after)}
    for name in (
        "interceptor_request_duration_seconds",
        "interceptor_time_to_first_byte_seconds",
        "interceptor_upstream_connect_seconds",
    ):
        assert families[name].type == "histogram", name
        counted = metric_value(after, f"{name}_count", {})
        assert counted >= 1 and metric_value(after, f"{name}_bucket", {"le": "+Inf"}) == counted
    assert families["interceptor_tls_handshake_seconds"].type == "histogram"
    assert metric_value(after, "process_resident_memory_bytes", {}) > 10_000_000
    assert metric_value(after, "process_start_time_seconds", {}) > 1.6e9
    version = metric_value(after, "interceptor_build_info", {"version": interceptor.__version__})
    assert version == 1
    assert metric_value(after, "interceptor_responses_by_code_total", {"code": "200"}) >= 1


# --------------------------------------------------------------------------------------------
# (c), (d) SIGTERM while a download is in flight
# --------------------------------------------------------------------------------------------


def test_sigterm_drains_an_inflight_download(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """SIGTERM mid-download: no new connections, not ready, the download completes, clean exit.

    The origin drips a ~2 s body; SIGTERM arrives after its first part. shutdown_timeout is
    far longer (30 s), so the proxy must exit once the download is done, not at the deadline.
    """
    shutdown_timeout = 30.0
    proxy, admin_port = start_with_admin(
        proxy_factory, f"[proxy]\nshutdown_timeout = {shutdown_timeout}\n"
    )
    parts = slow_parts(20)
    url = origin.route("/slow", drip(parts, interval=0.1))
    assert admin_status(admin_port, "/readyz") == 200

    conn = RawConnection(proxy.port, timeout=30)
    try:
        conn.send(get(url))
        conn.wait_buffered(parts[0], timeout=10)  # the download is under way
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)

        wait_for(
            lambda: not connectable(proxy.port),
            timeout=5,
            message="the proxy port still accepts connections after SIGTERM",
        )
        not_ready = wait_for(
            lambda: (s := admin_status(admin_port, "/readyz")) != 200 and (s or "refused"),
            timeout=5,
            message="/readyz stayed 200 after SIGTERM",
        )
        assert not_ready in (503, "refused"), not_ready
        assert proxy.running(), "exited before the in-flight download finished"

        resp = conn.read_response(timeout=20)
        finished = time.monotonic()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.body == b"".join(parts), "the drained download is not byte-exact"

    proxy.popen.wait(timeout=shutdown_timeout + 5)
    exited = time.monotonic()
    assert_orderly_exit(proxy)
    assert exited - signalled < shutdown_timeout + 5
    assert exited - finished < 5, "the drain did not end when the last exchange did"
    # The drain said what it waited for, and that it ended with nothing cut.
    log = proxy.log_text()
    (served,) = proxy.wait_for_access(lambda e: e.url == url)
    waiting = f"draining: waiting up to 30 s for 1 exchange: GET {url} (request id {served.id})"
    assert waiting in log, proxy.log_tail()
    assert re.search(r"drained: all finished in \d+\.\d\d s$", log, re.M), proxy.log_tail()
    assert "cutting" not in log


def test_sigterm_cuts_a_download_at_shutdown_timeout(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """shutdown_timeout = 1 and a 5 s download: the client sees truncation, exit after ~1 s."""
    shutdown_timeout = 1.0
    proxy = proxy_factory(f"[proxy]\nshutdown_timeout = {shutdown_timeout}\n")
    parts = slow_parts(50)
    url = origin.route("/slower", drip(parts, interval=0.1))

    conn = RawConnection(proxy.port, timeout=30)
    try:
        conn.send(get(url))
        conn.wait_buffered(parts[0], timeout=10)
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        with pytest.raises(IncompleteResponse) as cut:
            conn.read_response(timeout=15)
        cut_after = time.monotonic() - signalled
    finally:
        conn.close()
    assert cut.value.head is not None and cut.value.head.status == 200
    assert b"".join(parts) not in cut.value.data

    proxy.popen.wait(timeout=shutdown_timeout + 10)
    exited_after = time.monotonic() - signalled
    assert_orderly_exit(proxy)
    # It waited for the deadline (the download was still running), then stopped promptly.
    assert shutdown_timeout - 0.2 <= cut_after <= shutdown_timeout + 3, cut_after
    assert shutdown_timeout - 0.2 <= exited_after <= shutdown_timeout + 3, exited_after
    (line,) = proxy.wait_for_access(lambda e: e.url == url)
    cutting = f"shutdown_timeout (1 s) passed, cutting 1 exchange: GET {url} (request id {line.id})"
    assert cutting in proxy.log_text(), proxy.log_tail()


def test_sigterm_drains_a_passthrough_tunnel(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """A download inside a passthrough CONNECT tunnel is in flight too: it gets the drain time.

    The tunnel carries plain HTTP to the origin (127.0.0.1 is on the passthrough list, so the
    proxy relays the bytes without interception); SIGTERM comes after the first part.
    """
    proxy = proxy_factory('[proxy]\nshutdown_timeout = 30\n[tls]\npassthrough = ["127.0.0.1"]\n')
    parts = slow_parts(20)
    origin.route("/tunnelled", drip(parts, interval=0.1))

    conn = RawConnection(proxy.port, timeout=30)
    try:
        conn.send(
            f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
        )
        established = conn.read_until(b"\r\n\r\n", timeout=10)
        assert established.startswith(b"HTTP/1.1 200"), established
        conn.send(f"GET /tunnelled HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        conn.wait_buffered(parts[0], timeout=10)
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        try:
            resp = conn.read_response(timeout=20)
        except IncompleteResponse as e:
            cut = time.monotonic() - signalled
            raise AssertionError(f"the tunnelled download was cut {cut:.2f}s after SIGTERM") from e
    finally:
        conn.close()
    assert resp.body == b"".join(parts)
    proxy.popen.wait(timeout=35)
    assert_orderly_exit(proxy)
    (opened,) = proxy.wait_for_access(lambda e: e.method == "CONNECT")
    waiting = f"for 1 exchange: tunnel CONNECT {origin.authority} (request id {opened.id})"
    assert waiting in proxy.log_text(), proxy.log_tail()


def test_sigterm_exit_status_is_zero(proxy_factory: Callable[..., ProxyProcess]) -> None:
    """A drained stop is a success: SIGTERM ends in exit status 0."""
    proxy = proxy_factory()
    proxy.send_signal(signal.SIGTERM)
    assert proxy.popen.wait(timeout=15) == 0, proxy.log_tail()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell does for a background job


def test_sigint_stops_a_proxy_started_with_sigint_ignored(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy = proxy_factory(popen_kwargs={"preexec_fn": _ignore_sigint})
    origin.route("/up", respond(b"up"))
    assert run_curl("-x", proxy.url, origin.url("/up")).stdout == b"up"
    proxy.send_signal(signal.SIGINT)
    assert proxy.popen.wait(timeout=15) == 0, proxy.log_tail()


# --------------------------------------------------------------------------------------------
# Proxies with their own stdout (JSON logs, a closed pipe)
# --------------------------------------------------------------------------------------------


class OwnStdoutProxy:
    """`twistd -n --pidfile= interceptor` with stdout where the test wants it.

    start_proxy sends stdout and stderr to one log file; here stdout is a file or a pipe of
    its own and stderr goes to `stderr_path`. The environment is start_proxy's (no inherited
    INTERCEPTOR_*, CA in the work directory, BASE_ENV) plus `env`.
    """

    def __init__(
        self,
        workdir: Path,
        config_text: str,
        env: dict[str, str],
        stdout: IO[bytes] | int,
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "interceptor.toml"
        config.write_text(config_text, encoding="utf-8")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
        full_env["INTERCEPTOR_TLS_CA_DIR"] = str(workdir / "ca")
        full_env.update(BASE_ENV)
        full_env.update(env)
        self.stderr_path = workdir / "stderr.log"
        cmd = [str(TWISTD), "-n", "--pidfile=", "interceptor"]
        cmd += ["--listen", f"tcp:{self.port}:interface={LOOPBACK}", "--config", str(config)]
        with open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        wait_for(
            lambda: self.popen.poll() is not None or connectable(self.port),
            timeout=15,
            message=lambda: f"proxy not listening; stderr:\n{self.stderr()}",
        )
        assert self.popen.poll() is None, f"exited {self.popen.returncode}:\n{self.stderr()}"

    def stderr(self) -> str:
        """What it wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit status (idempotent)."""
        status = stop_process(self.popen, timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return status


@pytest.fixture
def own_stdout_proxies(tmp_path: Path) -> Iterator[Callable[..., OwnStdoutProxy]]:
    """`start(config_text, env, stdout) -> OwnStdoutProxy`; every one is stopped afterwards."""
    started: list[OwnStdoutProxy] = []

    def start(config_text: str, env: dict[str, str], stdout: IO[bytes] | int) -> OwnStdoutProxy:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        p = OwnStdoutProxy(workdir, config_text, env, stdout)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            with contextlib.suppress(Exception):
                p.stop()


# --------------------------------------------------------------------------------------------
# (e) JSON logs
# --------------------------------------------------------------------------------------------


def test_json_log_lines(
    own_stdout_proxies: Callable[..., OwnStdoutProxy], origin: OriginServer, tmp_path: Path
) -> None:
    """With [log] format = "json", every stdout line is a JSON object, and access lines have
    client, method, url, status, bytes and duration keys with the exchange's values."""
    stdout_path = tmp_path / "stdout.jsonl"
    body = b"json please\n"
    url = origin.route("/json", respond(body))
    with open(stdout_path, "wb") as stdout:
        proxy = own_stdout_proxies(
            '[log]\nformat = "json"\naccess = true\n', {"INTERCEPTOR_LOG_ACCESS": "true"}, stdout
        )
    assert fetch(proxy.port, url) == (200, body)

    def access_objects() -> list[dict[str, Any]]:
        found = []
        for line in stdout_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and url in map(str, obj.values()):
                    found.append(obj)
        return found

    wait_for(access_objects, timeout=5, message=lambda: stdout_path.read_text("utf-8")[-2000:])
    proxy.stop()

    lines = stdout_path.read_text(encoding="utf-8").splitlines()
    assert lines, "nothing on stdout"
    for number, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"stdout line {number} is not JSON: {line!r}") from None
        assert isinstance(obj, dict), f"stdout line {number} is not an object: {line!r}"

    [entry] = access_objects()
    missing = {"client", "method", "url", "status", "bytes", "duration"} - set(entry)
    assert not missing, f"access line lacks {sorted(missing)}: {entry}"
    assert entry["method"] == "GET" and entry["url"] == url
    assert int(entry["status"]) == 200
    assert int(entry["bytes"]) == len(body)
    assert float(entry["duration"]) >= 0
    assert str(entry["client"]).startswith(LOOPBACK)


# --------------------------------------------------------------------------------------------
# (f) a closed stdout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "sigpipe"), [("closed", "ignore"), ("closed", "close"), ("stalled", "ignore")]
)
def test_closed_stdout_neither_kills_nor_stalls(
    own_stdout_proxies: Callable[..., OwnStdoutProxy],
    origin: OriginServer,
    reader: str,
    sigpipe: str,
) -> None:
    """stdout is a pipe whose reader goes away (a dead log collector): the proxy keeps serving.

    "closed": the read end is closed, so every access line hits a broken pipe (EPIPE, and
    SIGPIPE unless ignored), under both SIGPIPE policies that keep the process alive.
    "stalled": the reader stays but never reads, and the pipe is shrunk to one page so the
    access lines fill it within a few dozen requests; a blocking write would hang the proxy.
    Either way it must stay up, answer every request in time and keep its admin endpoint.
    """
    admin_port = free_port()
    proxy = own_stdout_proxies(
        f'[proxy]\nsigpipe = "{sigpipe}"\n[log]\naccess = true\n',
        {"INTERCEPTOR_LOG_ACCESS": "true", **admin_env(admin_port)},
        subprocess.PIPE,
    )
    wait_for(lambda: admin_status(admin_port, "/healthz") == 200, timeout=10)
    assert proxy.popen.stdout is not None
    if reader == "closed":
        proxy.popen.stdout.close()  # the only reader: writes now fail with EPIPE
    else:
        fcntl.fcntl(proxy.popen.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)

    url = origin.route("/after-close", respond(b"still here\n"))
    deadline = time.monotonic() + 30
    requests = 100
    for i in range(requests):
        assert time.monotonic() < deadline, f"only {i} requests answered in 30 s"
        assert proxy.popen.poll() is None, (
            f"the proxy died (status {proxy.popen.returncode}) at request {i}:\n{proxy.stderr()}"
        )
        status, body = fetch(proxy.port, url, timeout=5)
        assert (status, body) == (200, b"still here\n"), f"request {i}"

    assert proxy.popen.poll() is None, proxy.stderr()
    assert admin_get(admin_port, "/healthz")[0] == 200
    text = scrape(admin_port)
    assert metric_value(text, "interceptor_responses_total", {"class": "2xx"}) == requests
    assert metric_value(text, "interceptor_aborts_total", {"reason": "sigpipe"}) == 0
    if reader == "stalled":
        # The scenario really happened: the pipe filled up, so lines were dropped.
        os.set_blocking(proxy.popen.stdout.fileno(), False)
        pending = os.read(proxy.popen.stdout.fileno(), 1 << 20)
        assert len(pending) <= 4096 and pending.count(b"/after-close") < requests, len(pending)
