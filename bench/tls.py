"""TLS interception benchmark: intercepted HTTPS via the proxy versus HTTPS straight to the origin.

Two measurements, each alternating direct and proxy rounds (``--rounds`` of each, ``--duration``
seconds per round) so that drift in the machine hits both:

``keepalive``
    ``--clients`` clients each open ONE TLS connection and fetch a ``--size``-byte body over it
    again and again, one request outstanding. Direct: TLS to the loopback origin. Proxy:
    ``CONNECT localhost:PORT``, 200, TLS with SNI ``localhost`` verified against the proxy's
    ``ca.pem``, then origin-form ``GET /x`` requests inside the intercepted tunnel. Reports
    requests/s, p50/p99 latency and the proxy's CPU time per request, and the origin's accepts:
    with more clients than ``[upstream] pool_size`` (default 8) idle upstream connections are
    closed and reopened, each time with a new proxy->origin TLS handshake (compare with
    ``INTERCEPTOR_UPSTREAM_POOL_SIZE=32``).
    Goal: <= 250 µs proxy CPU per intercepted keep-alive request.

``newconn``
    Every request on a new connection: TCP connect (+ CONNECT and its 200 through the proxy),
    a full TLS handshake, one request (``Connection: close``), then close. Latency runs from the
    TCP connect to the end of the response; "setup" is the part up to the end of the client's
    handshake. Reports connections/s, p50/p99, and the proxy's CPU time per connection.
    Goal: <= 3 ms proxy CPU per new intercepted connection. The proxy pools its upstream TLS
    connections, so the proxy->origin handshake is mostly saved: the origin's accept count per
    round shows how often it was not. No TLS session resumption on the client side: one
    ``SSLContext`` per load process, and no ``session=`` is ever passed, so every handshake is
    a full one (Python never resumes on its own).

CPU time is utime + stime from ``/proc/PID/stat``, read by the driver just before the load
starts and just after the last request of the round completes, divided by the requests (or
connections) completed; for the proxy, of its process and every descendant (a supervisor and
its workers), each read by pid. How busy all CPUs were is given too, and "rest of the machine":
what other programs and kernel work billed to no process took beside the benchmark's own.
The load generator's CPU is reported too: Python's client-side TLS handshake costs about as
much as the proxy's, so in ``newconn`` rounds the load generator, not the proxy, may be what
limits connections/s (the CPU-per-connection figure is valid either way; ``--procs 2`` splits
the clients over two load processes).

For scale (reference figures for comparable loads, not produced by this script): mitmproxy 12.3
uses about 3,600 µs of CPU per intercepted keep-alive request and about 18 ms per new intercepted
connection; proxy.py 2.4 about 470 µs and about 9 ms.

Processes besides this driver, so that none bills its CPU to another or shares a GIL: the TLS
origin (``_common.py origin --tls-cert ...``: asyncio + ssl, a fixed response, keep-alive,
counting accepts), the proxy (twistd), and ``--procs`` load generators per round (this file with
a hidden ``--loadgen-worker`` flag: asyncio + ssl, httptools to parse responses). The driver
starts and stops each round's load with signals (SIGUSR1: go, SIGUSR2: close) and reads
``READY``/``DONE`` lines, so the CPU window is the same for every process.

The certificates are throw-away: an origin root and a ``localhost``/``127.0.0.1`` leaf made with
``tests/certs.py``; the proxy makes its own CA in a temporary directory. The proxy is started
with ``INTERCEPTOR_TLS_CA_DIR``, ``INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE`` (the origin root),
``INTERCEPTOR_ADMIN_LISTEN=""`` and ``INTERCEPTOR_UPSTREAM_HOSTS=localhost=127.0.0.1`` (so the
upstream leg never leaves 127.0.0.1), and ``[log] access = false`` unless ``--access-log``.
Otherwise it inherits the environment, e.g. ``INTERCEPTOR_UPSTREAM_POOL_SIZE=32``.

Run from the repository root::

    /work/venv/bin/python bench/tls.py                       # both measurements, 2 rounds each
    /work/venv/bin/python bench/tls.py --mode newconn --procs 2 --duration 10
    /work/venv/bin/python bench/tls.py --baseline bench/results/old-tls.json
    /work/venv/bin/python bench/tls.py --mode keepalive --compare main~3   # tree versus main~3
    /work/venv/bin/python bench/tls.py --mode keepalive --workers 1,2     # 1 worker versus 2

``--compare REV`` (any mode) exports revision REV's tree (``git archive``) to the temporary
directory and starts a second proxy from it the same way (its own CA and config); each round
then runs direct, this tree's proxy and REV's proxy, and the tables gain REV's column and
tree/rev ratios.

``--workers LIST`` (e.g. ``1,2``; any mode) starts one proxy of this tree per worker count
instead (``INTERCEPTOR_PROXY_WORKERS=N``, its own CA and config), named ``workers=N``; each
round runs direct and then each of them, and the tables get a column per count, rates and CPU
per request over the first's, the CPU split by process, and each count's rate over the first's
round by round (and the table again over the quiet rounds alone, as in throughput.py). A
proxy with more than one worker is measured once every worker has logged "proxy accepting on"
(the supervisor's sockets take connections before any worker runs); a worker that ends during
a round fails the run (its time since the round began would be lost). It excludes
``--compare`` and ``--baseline``.

Not a test: pytest never runs it. Loopback only; every loop is bounded in time and count, and
child processes are stopped on exit (and sent SIGTERM by the kernel if this driver dies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httptools
from _common import (
    COMPARE,
    LOOPBACK,
    REPO_ROOT,
    WORKERS_ENV,
    ChildLines,
    Metric,
    Revision,
    TunnelRefusedError,
    access_log_config,
    add_proxy_bench_args,
    by_process_fields,
    by_process_text,
    check_args,
    compare_arg,
    compare_ratios,
    compare_results,
    connect_request,
    default_proxy_cmd,
    error_fields,
    export_revision,
    fill_template,
    goal_verdict,
    https_request,
    latency_fields,
    load_arg_checks,
    load_average,
    load_baseline,
    load_note,
    machine_cpu_seconds,
    machine_fields,
    make_origin_certs,
    merged_array,
    origin_fields,
    origin_stats,
    parse_worker_counts,
    pct_of_core,
    per_request_us,
    percentiles,
    print_direct_proxy_table,
    print_side_by_side_table,
    proc_cpu_seconds_or_none,
    proc_fd_count,
    proc_rss_bytes,
    proc_tree,
    proc_tree_cpu,
    process_roles,
    quiet_rounds,
    quiet_title,
    raise_fd_limit,
    read_float_array,
    report_error,
    request_until_up,
    require_loopback,
    rest_note,
    rest_pct,
    rest_text,
    results_header,
    round_order,
    scaling_lines,
    self_command,
    spawn,
    start_origin,
    start_proxy_on_free_port,
    stop_process,
    stop_proxy_and_origin,
    sum_or_none,
    tail_text,
    tree_cpu_delta,
    tunnel_status,
    wait_for_proxy,
    wait_for_workers,
    workers_name,
    workers_scaling,
    write_json,
)

#: Goal lines printed under the tables.
GOAL_KEEPALIVE_CPU_US = 250.0
GOAL_NEWCONN_CPU_MS = 3.0
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "tls.json"
MEASURES = ("keepalive", "newconn")
TARGETS = ("direct", "proxy")
#: The name the client asks for (SNI and certificate check) and puts in CONNECT and Host.
SERVER_NAME = "localhost"

_GO_SIGNAL = signal.SIGUSR1
_CLOSE_SIGNAL = signal.SIGUSR2


# --------------------------------------------------------------------------------------------
# Load generator (runs in its own process(es), one set per round)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What one load-generator process does; passed to it as JSON."""

    measure: str  # "keepalive" or "newconn"
    host: str
    port: int
    tunnel: str | None  # CONNECT authority when going through the proxy, else None
    cafile: str
    request: str  # latin-1 text of the raw request bytes (sent inside TLS)
    size: int
    clients: int
    duration: float
    max_requests: int
    latency_path: str
    setup_path: str
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    drain_timeout: float = 10.0
    go_timeout: float = 120.0
    close_timeout: float = 60.0


#: What opening a connection may raise (ssl.SSLError and ConnectionError are OSErrors).
_SETUP_ERRORS = (OSError, TimeoutError, TunnelRefusedError)


def _classify(error: BaseException) -> str:
    """A short error-counter name for a failed connection set-up."""
    if isinstance(error, TunnelRefusedError):
        return error.kind
    if isinstance(error, TimeoutError):
        return "setup_timeout"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "tls_verify"
    if isinstance(error, ssl.SSLError):
        return "tls"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    return "connect"


class _LoadGen:
    """Shared state of one load process: clock, budget, counters, latencies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = spec.request.encode("latin-1")
        self.connect_request = connect_request(spec.tunnel) if spec.tunnel else b""
        self.ssl = ssl.create_default_context(cafile=spec.cafile)
        self.ssl.set_alpn_protocols(["http/1.1"])
        self.end = math.inf  # Set when the measured window starts.
        self.issued = 0
        self.completed = 0
        self.latencies = array("d")
        self.setups = array("d")
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.live: set[_Conn] = set()

    def may_send(self, now: float) -> bool:
        """Whether another request (or, in newconn mode, connection) may start now."""
        return now < self.end and self.issued < self.spec.max_requests

    async def open(self) -> _Conn:
        """One TLS connection to the target, ready for HTTP (through a CONNECT tunnel if any).

        Bounded by the connect and handshake timeouts; raises one of ``_SETUP_ERRORS``.
        """
        spec = self.spec
        loop = asyncio.get_running_loop()
        if spec.tunnel is None:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(self, "http"),
                    spec.host,
                    spec.port,
                    ssl=self.ssl,
                    server_hostname=SERVER_NAME,
                    ssl_handshake_timeout=spec.handshake_timeout,
                    ssl_shutdown_timeout=spec.shutdown_timeout,
                ),
                spec.connect_timeout + spec.handshake_timeout,
            )
            return conn
        raw, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Conn(self, "connect"), spec.host, spec.port),
            spec.connect_timeout,
        )
        try:
            reply = loop.create_future()
            conn.connect_reply = reply
            raw.write(self.connect_request)
            status = await asyncio.wait_for(reply, spec.connect_timeout)
            if status != 200:
                raise TunnelRefusedError(f"connect_{status}", f"CONNECT answered {status}")
            conn.phase = "tls"
            transport = await asyncio.wait_for(
                loop.start_tls(
                    raw,
                    conn,
                    self.ssl,
                    server_hostname=SERVER_NAME,
                    ssl_handshake_timeout=spec.handshake_timeout,
                    ssl_shutdown_timeout=spec.shutdown_timeout,
                ),
                spec.handshake_timeout + 1,
            )
        except BaseException:
            raw.abort()
            raise
        assert isinstance(transport, asyncio.Transport)
        conn.transport = transport
        conn.phase = "http"
        return conn

    async def keepalive_slot(self, conn: _Conn | None) -> None:
        """One keep-alive client: requests on ``conn`` until time is up; reconnect if it drops."""
        loop = asyncio.get_running_loop()
        while True:
            if conn is None or conn.phase == "closed":
                if not self.may_send(time.perf_counter()):
                    return
                self.reconnects += 1
                try:
                    conn = await self.open()
                except _SETUP_ERRORS as e:
                    self.errors[_classify(e)] += 1
                    conn = None
                    await asyncio.sleep(0.05)  # The loop stays bounded by the clock.
                    continue
            if not self.may_send(time.perf_counter()):
                return
            finished: asyncio.Future[bool] = loop.create_future()
            conn.finished = finished
            conn.send(time.perf_counter())
            if await finished:
                return  # Retired with the connection still open; the driver closes it.
            conn = None

    async def newconn_slot(self) -> None:
        """One client that makes a new connection for every request until time is up."""
        loop = asyncio.get_running_loop()
        while self.may_send(time.perf_counter()):
            self.issued += 1  # Counts connection attempts here, so failures are bounded too.
            started = time.perf_counter()
            try:
                conn = await self.open()
            except _SETUP_ERRORS as e:
                self.errors[_classify(e)] += 1
                continue
            established = time.perf_counter()
            conn.one_shot = True
            finished: asyncio.Future[bool] = loop.create_future()
            conn.finished = finished
            conn.send(started, count=False)
            try:
                await asyncio.wait_for(finished, self.spec.drain_timeout)
            except TimeoutError:
                self.errors["response_timeout"] += 1
                conn.abort()
                continue
            if conn.succeeded:
                self.setups.append(established - started)
            conn.close()


class _Conn(asyncio.Protocol):
    """One client connection: CONNECT reply, then HTTP/1.1 inside TLS, one request at a time."""

    def __init__(self, gen: _LoadGen, phase: str) -> None:
        self.gen = gen
        self.phase = phase  # connect -> tls -> http -> closed (direct: http -> closed)
        self.transport: asyncio.Transport | None = None
        self.connect_reply: asyncio.Future[int] | None = None
        self._reply_buf = b""
        self.parser = httptools.HttpResponseParser(self)
        self.finished: asyncio.Future[bool] | None = None
        self.one_shot = False
        self.busy = False
        self.succeeded = False
        self.sent_at = 0.0
        self.body_len = 0

    # asyncio callbacks (connection_made comes once: for the raw transport through the proxy,
    # for the TLS transport when direct; start_tls does not call it again)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.gen.live.add(self)

    def data_received(self, data: bytes) -> None:
        if self.phase == "http":
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.busy:
                    self.busy = False
                    self.gen.errors["parse"] += 1
                self.abort()  # connection_lost decides what happens next
        elif self.phase == "connect":
            self._connect_data(data)
        else:  # Nothing may arrive between the CONNECT reply and the TLS handshake.
            self._reply_failed("connect_extra_bytes", f"unexpected bytes {data[:60]!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = "closed"
        self.gen.live.discard(self)
        self._reply_failed("connect_closed", "the proxy closed the connection during CONNECT")
        if self.busy:
            self.busy = False
            self.gen.errors["closed"] += 1
        self._finish(False)

    # httptools callbacks

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        gen = self.gen
        if not self.busy:  # An answer nobody asked for.
            gen.errors["unsolicited"] += 1
            return
        self.busy = False
        status = self.parser.get_status_code()
        if status != 200:
            gen.errors[f"status_{status}"] += 1
        elif self.body_len != gen.spec.size:
            gen.errors["body_length"] += 1
        else:
            self.succeeded = True
            gen.completed += 1
            gen.latencies.append(now - self.sent_at)
        if self.one_shot or not gen.may_send(now):
            self._finish(True)
        elif not self.parser.should_keep_alive():
            self._finish(False)
            self.close()
        else:
            self.send(now)

    # ours

    def send(self, started: float, *, count: bool = True) -> None:
        """Issue the next request; its latency runs from ``started``."""
        assert self.transport is not None
        if count:
            self.gen.issued += 1
        self.busy = True
        self.body_len = 0
        self.sent_at = started
        self.transport.write(self.gen.request)

    def close(self) -> None:
        """Close gracefully (TLS close_notify, bounded by the shutdown timeout)."""
        if self.transport is not None and self.phase != "closed":
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None and self.phase != "closed":
            self.transport.abort()

    def _finish(self, clean: bool) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(clean)

    def _connect_data(self, data: bytes) -> None:
        self._reply_buf += data
        end = self._reply_buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._reply_buf) > 16384:
                self._reply_failed("connect_garbage", "CONNECT reply head over 16 KiB")
            return
        head, rest = self._reply_buf[: end + 4], self._reply_buf[end + 4 :]
        self._reply_buf = b""
        reply = self.connect_reply
        if reply is None or reply.done():
            return
        if rest:
            self._reply_failed(
                "connect_extra_bytes", f"bytes after the CONNECT reply {rest[:60]!r}"
            )
            return
        try:
            reply.set_result(tunnel_status(head))
        except TunnelRefusedError as e:
            reply.set_exception(e)

    def _reply_failed(self, kind: str, detail: str) -> None:
        reply = self.connect_reply
        if reply is not None and not reply.done():
            reply.set_exception(TunnelRefusedError(kind, detail))


def _emit(line: str) -> None:
    """One line to the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """One load process's part of a round: set up, READY, wait for GO, load, DONE, wait, close."""
    gen = _LoadGen(spec)
    loop = asyncio.get_running_loop()
    go: asyncio.Future[None] = loop.create_future()
    close: asyncio.Future[None] = loop.create_future()
    for signum, future in ((_GO_SIGNAL, go), (_CLOSE_SIGNAL, close)):
        loop.add_signal_handler(signum, lambda f=future: f.done() or f.set_result(None))

    initial: list[_Conn | None] = []
    if spec.measure == "keepalive":
        results = await asyncio.gather(
            *(gen.open() for _ in range(spec.clients)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, _Conn):
                initial.append(r)
            elif isinstance(r, _SETUP_ERRORS):
                gen.errors[_classify(r)] += 1
            elif isinstance(r, BaseException):
                raise r
        if not initial:
            first = next(r for r in results if isinstance(r, BaseException))
            raise SystemExit(f"could not open any TLS connection: {first!r}")
    _emit("READY")
    try:
        await asyncio.wait_for(go, spec.go_timeout)
    except TimeoutError:
        raise SystemExit("no GO signal from the driver") from None

    t0 = time.perf_counter()
    gen.end = t0 + spec.duration
    if spec.measure == "keepalive":
        coros = [gen.keepalive_slot(c) for c in initial]
    else:
        coros = [gen.newconn_slot() for _ in range(spec.clients)]
    tasks = [loop.create_task(c) for c in coros]
    _, pending = await asyncio.wait(tasks, timeout=spec.duration + spec.drain_timeout)
    t1 = time.perf_counter()
    gen.end = -math.inf  # Nothing new from here on.
    if pending:
        gen.errors["stuck"] += len(pending)
    _emit("DONE")

    try:
        await asyncio.wait_for(close, spec.close_timeout)
    except TimeoutError:
        pass
    for conn in list(gen.live):
        conn.abort()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.sleep(0)

    with open(spec.latency_path, "wb") as f:
        gen.latencies.tofile(f)
    with open(spec.setup_path, "wb") as f:
        gen.setups.tofile(f)
    return {
        "requests": gen.completed,
        "issued": gen.issued,
        "elapsed": t1 - t0,
        "errors": {kind: n for kind, n in gen.errors.items() if n},
        "reconnects": gen.reconnects,
        "connections": len(initial) if spec.measure == "keepalive" else gen.issued,
    }


def loadgen_worker_main(spec_json: str) -> None:
    """Entry point of a load process: run the spec, print READY, DONE, then the summary JSON."""
    # Until run_load installs its handlers, a stray GO/CLOSE must not kill us.
    signal.signal(_GO_SIGNAL, signal.SIG_IGN)
    signal.signal(_CLOSE_SIGNAL, signal.SIG_IGN)
    spec = LoadSpec(**json.loads(spec_json))
    require_loopback(spec.host)
    raise_fd_limit(4 * spec.clients + 256)
    summary = asyncio.run(run_load(spec))
    _emit(json.dumps(summary))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where one kind of round sends its load."""

    name: str  # "direct", "proxy" (this tree's) or "compare" (the --compare revision's)
    host: str
    port: int
    tunnel: str | None
    cafile: str
    proxy_pid: int | None = None  # whose CPU, memory and fds the rounds measure


@dataclass
class RoundResult:
    """One measured round of one measure against one target."""

    measure: str
    target: str
    round: int
    requests: int
    elapsed: float
    rate: float
    p50_ms: float
    p99_ms: float
    setup_p50_ms: float | None
    errors: dict[str, int]
    reconnects: int
    capped: bool  # a load process hit its share of --max-requests
    loadgen_procs: int
    proxy_cpu_s: float | None
    origin_cpu_s: float | None
    loadgen_cpu_s: float | None
    origin_accepts: int | None
    origin_requests: int | None
    proxy_rss_bytes: int | None  # summed over the proxy's processes (supervisor and workers)
    proxy_fds: int | None  # likewise
    # Seconds each of the proxy's processes used: "proxy" (a single process), or "supervisor"
    # and "worker N".
    proxy_cpu_by_process: dict[str, float]
    machine_busy_s: float | None  # all CPUs, everything but idle and iowait
    machine_total_s: float | None  # all CPUs, busy or not
    latencies: array[float] = field(repr=False)
    setups: array[float] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The round as JSON-ready data (without the raw latencies)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("latencies", "setups")
        }


class _Worker:
    """A load process of the current round, and the lines it prints."""

    def __init__(self, index: int, spec: LoadSpec, workdir: Path) -> None:
        self.stderr_path = workdir / f"loadgen-{index}.err"
        with open(self.stderr_path, "wb") as err:
            self.process = spawn(
                self_command(__file__, "--loadgen-worker", asdict(spec)),
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._lines = ChildLines(self.process)

    def read_line(self, deadline: float, what: str) -> str:
        """The next line it prints, waiting until ``deadline`` (a time.monotonic() value)."""
        try:
            line = self._lines.read_line(deadline)
        except TimeoutError:
            raise RuntimeError(f"load generator {self.process.pid}: no {what} in time") from None
        if line is None:
            status = self.process.wait(5)
            raise RuntimeError(
                f"load generator {self.process.pid} exited (status {status}) before "
                f"{what}:\n{tail_text(self.stderr_path, 20)}"
            )
        return line.decode("utf-8", "replace")

    def expect(self, word: str, deadline: float) -> None:
        """Wait for the line ``word``."""
        line = self.read_line(deadline, word)
        if line != word:
            raise RuntimeError(f"load generator {self.process.pid}: expected {word}, got {line!r}")

    def send_signal(self, signum: int) -> None:
        """Send it ``signum`` (if it is still running)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)


def _split(total: int, parts: int, index: int) -> int:
    """Share ``index`` of ``total`` split as evenly as possible into ``parts``."""
    return total // parts + (1 if index < total % parts else 0)


@dataclass
class _CpuNow:
    """CPU seconds so far: the proxy's by pid (it and every descendant, so a supervisor and its
    workers count whole), the origin's, each load process's, and all CPUs' ``(busy, total)``.
    None where unreadable."""

    proxy: dict[int, float] | None
    origin: float | None
    loadgen: list[float | None]
    machine: tuple[float, float] | None


def _cpu_now(proxy_pid: int | None, origin_pid: int, loadgen_pids: list[int]) -> _CpuNow:
    """Read :class:`_CpuNow` (the proxy first: it is the figure that matters most)."""
    cpu = proc_cpu_seconds_or_none
    proxy = proc_tree_cpu(proxy_pid)
    return _CpuNow(
        proxy, cpu(origin_pid), [cpu(p) for p in loadgen_pids], machine_cpu_seconds()
    )


def _delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


@dataclass
class Bench:
    """What every round needs: arguments, processes, paths."""

    args: argparse.Namespace
    workdir: Path
    origin_pid: int
    origin_port: int
    origin_root: Path
    targets: dict[str, Target]


def _origin_stats(bench: Bench) -> dict[str, int]:
    """The TLS origin's counters (``accepts``, ``requests``); this request is not counted."""
    return origin_stats(
        bench.origin_port, timeout=10, cafile=bench.origin_root, server_name=SERVER_NAME
    )


def run_round(
    bench: Bench, measure: str, target: Target, round_no: int, duration: float
) -> RoundResult:
    """One round: start the load processes, time and CPU-meter their load, collect the numbers."""
    args = bench.args
    procs = min(args.procs, args.clients)
    stem = bench.workdir / f"{measure}-{target.name}-{round_no}"
    close = "Connection: close\r\n" if measure == "newconn" else ""
    request = f"GET /x HTTP/1.1\r\nHost: {SERVER_NAME}:{bench.origin_port}\r\n{close}\r\n"
    specs = [
        LoadSpec(
            measure=measure,
            host=target.host,
            port=target.port,
            tunnel=target.tunnel,
            cafile=target.cafile,
            request=request,
            size=args.size,
            clients=_split(args.clients, procs, i),
            duration=duration,
            max_requests=max(1, _split(args.max_requests, procs, i)),
            latency_path=f"{stem}-{i}.lat",
            setup_path=f"{stem}-{i}.setup",
        )
        for i in range(procs)
    ]
    proxy_pid = target.proxy_pid
    before = _origin_stats(bench)
    workers: list[_Worker] = []
    try:
        for i, spec in enumerate(specs):
            workers.append(_Worker(i, spec, bench.workdir))
        ready_by = time.monotonic() + 60
        for w in workers:
            w.expect("READY", ready_by)
        pids = [w.process.pid for w in workers]
        cpu0 = _cpu_now(proxy_pid, bench.origin_pid, pids)
        t0 = time.monotonic()
        for w in workers:
            w.send_signal(_GO_SIGNAL)
        done_by = t0 + duration + specs[0].drain_timeout + 30
        for w in workers:
            w.expect("DONE", done_by)
        t1 = time.monotonic()
        cpu1 = _cpu_now(proxy_pid, bench.origin_pid, pids)
        for w in workers:
            w.send_signal(_CLOSE_SIGNAL)
        summaries = [json.loads(w.read_line(time.monotonic() + 30, "summary")) for w in workers]
        for w in workers:
            w.process.wait(30)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"a load generator did not exit: {e}") from e
    finally:
        for w in workers:
            stop_process(w.process)
    after = _origin_stats(bench)

    latencies: array[float] = array("d")
    setups: array[float] = array("d")
    for spec in specs:
        latencies.extend(read_float_array(Path(spec.latency_path), missing_ok=True))
        setups.extend(read_float_array(Path(spec.setup_path), missing_ok=True))
    p50, p99 = percentiles(latencies, [50, 99])
    errors: Counter[str] = Counter()
    for s in summaries:
        errors.update(s["errors"])
    loadgen = [_delta(a, b) for a, b in zip(cpu1.loadgen, cpu0.loadgen, strict=True)]
    requests = sum(s["requests"] for s in summaries)
    elapsed = t1 - t0
    tree = tree_cpu_delta(cpu0.proxy, cpu1.proxy)
    by_process: dict[str, float] = {}
    if tree is not None and proxy_pid is not None:
        if tree.gone:
            # Its CPU since the round began is lost with it, and it was restarted or the proxy
            # is going: the round's figures would be short, so there are none.
            raise RuntimeError(
                f"{measure} {target.name}, round {round_no}: proxy process(es) "
                f"{', '.join(map(str, tree.gone))} ended during the round"
            )
        by_process = process_roles(proxy_pid, {str(p): s for p, s in tree.per_pid.items()})
    rss = fds = None
    if proxy_pid is not None:
        try:
            members = proc_tree(proxy_pid)
            rss = sum(proc_rss_bytes(p) for p in members)
            fds = sum(proc_fd_count(p) for p in members)
        except OSError:
            pass
    machine = (
        (cpu1.machine[0] - cpu0.machine[0], cpu1.machine[1] - cpu0.machine[1])
        if cpu0.machine is not None and cpu1.machine is not None
        else None
    )
    return RoundResult(
        measure=measure,
        target=target.name,
        round=round_no,
        requests=requests,
        elapsed=elapsed,
        rate=requests / elapsed if elapsed > 0 else 0.0,
        p50_ms=p50 * 1e3,
        p99_ms=p99 * 1e3,
        setup_p50_ms=percentiles(setups, [50])[0] * 1e3 if measure == "newconn" else None,
        errors=dict(errors),
        reconnects=sum(s["reconnects"] for s in summaries),
        capped=any(
            s["issued"] >= spec.max_requests for s, spec in zip(summaries, specs, strict=True)
        ),
        loadgen_procs=procs,
        proxy_cpu_s=tree.total if tree is not None else None,
        origin_cpu_s=_delta(cpu1.origin, cpu0.origin),
        loadgen_cpu_s=None if any(v is None for v in loadgen) else sum(v or 0.0 for v in loadgen),
        origin_accepts=after["accepts"] - before["accepts"],
        origin_requests=after["requests"] - before["requests"],
        proxy_rss_bytes=rss,
        proxy_fds=fds,
        proxy_cpu_by_process=by_process,
        machine_busy_s=machine[0] if machine else None,
        machine_total_s=machine[1] if machine else None,
        latencies=latencies,
        setups=setups,
    )


def _round_line(r: RoundResult) -> str:
    """One progress line for a finished round."""
    unit = "req/s" if r.measure == "keepalive" else "conn/s"
    text = f"{r.measure:>9} {r.target:>7}: {r.rate:9,.0f} {unit}, p50 {r.p50_ms:.2f} ms, "
    text += f"p99 {r.p99_ms:.2f} ms"
    if r.setup_p50_ms is not None and not math.isnan(r.setup_p50_ms):
        text += f" (setup p50 {r.setup_p50_ms:.2f} ms)"
    if r.proxy_cpu_s is not None and r.requests:
        per = r.proxy_cpu_s / r.requests
        text += (
            f", proxy CPU {per * 1e6:.1f} µs/req"
            if r.measure == "keepalive"
            else f", proxy CPU {per * 1e3:.2f} ms/conn"
        )
    if len(r.proxy_cpu_by_process) > 1 and r.elapsed:
        # How evenly the kernel spread the connections over the workers.
        pcts = {k: v / r.elapsed * 100 for k, v in r.proxy_cpu_by_process.items()}
        text += f" (% of a core: {by_process_text(pcts)})"
    if r.loadgen_cpu_s is not None and r.elapsed:
        text += f", loadgen CPU {r.loadgen_cpu_s / r.elapsed * 100:.0f}%"
    text += f", origin accepts {r.origin_accepts}"
    errors = sum(r.errors.values())
    text += f", errors {errors}" + (f" {r.errors}" if errors else "")
    if r.reconnects:
        text += f", reconnects {r.reconnects}"
    if r.capped:
        text += " (stopped by --max-requests)"
    ours = [r.proxy_cpu_s if r.target != "direct" else 0.0, r.origin_cpu_s, r.loadgen_cpu_s]
    return text + rest_text(r.machine_busy_s, ours, r.elapsed)


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Aggregate the rounds of one measure and target: totals, rates, percentiles of all."""
    requests = sum(r.requests for r in rounds)
    elapsed = sum(r.elapsed for r in rounds)
    s50, s99 = percentiles(merged_array(r.setups for r in rounds), [50, 99])
    proxy_cpu = sum_or_none([r.proxy_cpu_s for r in rounds])
    origin_cpu = sum_or_none([r.origin_cpu_s for r in rounds])
    loadgen_cpu = sum_or_none([r.loadgen_cpu_s for r in rounds])
    proxy_us = per_request_us(proxy_cpu, requests)
    loadgen_us = per_request_us(loadgen_cpu, requests)
    direct = all(r.target == "direct" for r in rounds)
    ours = sum_or_none([0.0 if direct else proxy_cpu, origin_cpu, loadgen_cpu])
    machine_busy = sum_or_none([r.machine_busy_s for r in rounds])
    machine_total = sum_or_none([r.machine_total_s for r in rounds])
    return {
        "rounds": len(rounds),
        "requests": requests,
        "elapsed_s": elapsed,
        "rate": requests / elapsed if elapsed else 0.0,
        "rate_per_round": [r.rate for r in rounds],
        **latency_fields(merged_array(r.latencies for r in rounds)),
        "setup_p50_ms": s50 * 1e3,
        "setup_p99_ms": s99 * 1e3,
        **error_fields(rounds),
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_us_per_request": proxy_us,
        "proxy_cpu_ms_per_request": proxy_us / 1e3 if proxy_us is not None else None,
        "proxy_cpu_pct_of_core": pct_of_core(proxy_cpu, elapsed),
        "origin_cpu_us_per_request": per_request_us(origin_cpu, requests),
        "origin_cpu_pct_of_core": pct_of_core(origin_cpu, elapsed),
        **by_process_fields([r.proxy_cpu_by_process for r in rounds], elapsed),
        **machine_fields(machine_busy, machine_total, ours, elapsed),
        "loadgen_cpu_us_per_request": loadgen_us,
        "loadgen_cpu_ms_per_request": loadgen_us / 1e3 if loadgen_us is not None else None,
        "loadgen_cpu_pct_of_core": pct_of_core(loadgen_cpu, elapsed),
        "loadgen_procs": max((r.loadgen_procs for r in rounds), default=0),
        **origin_fields(rounds, requests),
        "proxy_rss_mib_after": (
            rounds[-1].proxy_rss_bytes / 2**20 if rounds and rounds[-1].proxy_rss_bytes else None
        ),
        "proxy_fds_after": rounds[-1].proxy_fds if rounds else None,
    }


#: Rows on the proxy's processes (a supervisor and its workers, or the one proxy process).
_PROCESS_ROWS: list[Metric] = [
    ("proxy processes", "proxy_processes", 0, False, True),
    ("busiest proxy process (% of one core)", "proxy_busiest_process_pct_of_core", 0, False, True),
]
#: Rows on the whole machine: what else took the same CPUs.
_MACHINE_ROWS: list[Metric] = [
    ("rest of the machine (% of one core)", "rest_cpu_pct_of_core", 0, True, False),
    ("all CPUs busy (%)", "machine_busy_pct", 0, True, False),
]

#: The table rows of each measure.
_METRICS: dict[str, list[Metric]] = {
    "keepalive": [
        ("requests/s", "rate", 0, True, False),
        ("p50 latency (ms)", "p50_ms", 2, True, False),
        ("p99 latency (ms)", "p99_ms", 2, True, False),
        ("proxy CPU per request (µs)", "proxy_cpu_us_per_request", 1, False, True),
        ("proxy CPU (% of one core)", "proxy_cpu_pct_of_core", 0, False, True),
        *_PROCESS_ROWS,
        ("origin CPU per request (µs)", "origin_cpu_us_per_request", 1, True, False),
        ("origin CPU (% of one core)", "origin_cpu_pct_of_core", 0, True, False),
        ("load generator CPU per request (µs)", "loadgen_cpu_us_per_request", 1, True, False),
        ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True, False),
        *_MACHINE_ROWS,
        ("origin accepts", "origin_accepts", 0, False, False),
        ("origin accepts per 1k requests", "origin_accepts_per_1k", 1, False, False),
        ("proxy RSS after (MiB)", "proxy_rss_mib_after", 1, False, True),
        ("proxy open fds after", "proxy_fds_after", 0, False, True),
        ("requests completed", "requests", 0, True, False),
        ("errors", "error_count", 0, False, False),
        ("reconnects", "reconnects", 0, False, False),
    ],
    "newconn": [
        ("connections/s", "rate", 0, True, False),
        ("p50 latency (ms)", "p50_ms", 2, True, False),
        ("p99 latency (ms)", "p99_ms", 2, True, False),
        ("setup p50: connect to TLS done (ms)", "setup_p50_ms", 2, True, False),
        ("proxy CPU per connection (ms)", "proxy_cpu_ms_per_request", 2, False, True),
        ("proxy CPU (% of one core)", "proxy_cpu_pct_of_core", 0, False, True),
        *_PROCESS_ROWS,
        ("origin CPU per connection (µs)", "origin_cpu_us_per_request", 1, True, False),
        ("origin CPU (% of one core)", "origin_cpu_pct_of_core", 0, True, False),
        ("load generator CPU per conn (ms)", "loadgen_cpu_ms_per_request", 2, True, False),
        ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True, False),
        *_MACHINE_ROWS,
        ("origin accepts", "origin_accepts", 0, False, False),
        ("origin accepts per 1k connections", "origin_accepts_per_1k", 1, False, False),
        ("proxy RSS after (MiB)", "proxy_rss_mib_after", 1, False, True),
        ("proxy open fds after", "proxy_fds_after", 0, False, True),
        ("connections completed", "requests", 0, True, False),
        ("errors", "error_count", 0, False, False),
    ],
}

_TITLES = {
    "keepalive": "intercepted keep-alive requests (one TLS connection per client)",
    "newconn": "new intercepted connections (CONNECT + TLS handshake + one request each)",
}


def goal_line(measure: str, proxy_summary: dict[str, Any]) -> tuple[str, bool | None]:
    """The goal line of ``measure`` and whether the goal was met (None if not measured)."""
    if measure == "keepalive":
        limit, value = GOAL_KEEPALIVE_CPU_US, proxy_summary.get("proxy_cpu_us_per_request")
        text = f"goal: <= {limit:.0f} µs proxy CPU per intercepted keep-alive request"
        shown = f"{value:.1f} µs" if value is not None else ""
    else:
        limit, value = GOAL_NEWCONN_CPU_MS, proxy_summary.get("proxy_cpu_ms_per_request")
        text = f"goal: <= {limit:g} ms proxy CPU per new intercepted connection"
        shown = f"{value:.2f} ms" if value is not None else ""
    errors = proxy_summary.get("error_count", 0)
    return goal_verdict(text, value, limit, shown, errors, "intercepted requests")


def bottleneck_note(measure: str, proxy: dict[str, Any], which: str = "proxy") -> str | None:
    """A note when the load generator, rather than the proxy, probably limited the rate.

    ``proxy`` is the summary of the proxy ``which`` names ("proxy", "workers=2").
    """
    loadgen = proxy.get("loadgen_cpu_pct_of_core")
    procs = proxy.get("loadgen_procs") or 1
    proxy_pct = proxy.get("proxy_cpu_pct_of_core")
    if loadgen is None or loadgen < 85 * procs:
        return None
    note = (
        f"note: the load generator used {loadgen:.0f}% of a core ({procs} process(es)) in the "
        f"{measure} {which} rounds"
    )
    if proxy_pct is not None:
        note += f" against the proxy's {proxy_pct:.0f}%"
    note += (
        ": the client side may have limited the rate; CPU per "
        + ("request" if measure == "keepalive" else "connection")
        + " is still valid"
    )
    if os.cpu_count() and procs + 1 >= (os.cpu_count() or 0):
        note += f" (this machine has {os.cpu_count()} CPUs, shared by proxy, origin and load)"
    return note


def check_target(target: Target, origin_port: int, size: int, deadline: float) -> None:
    """One blocking HTTPS request to ``target``; it must be a 200 with a ``size``-byte body.

    Connection failures are retried until ``deadline``; a wrong answer fails at once.
    """
    request = f"GET /x HTTP/1.1\r\nHost: {SERVER_NAME}:{origin_port}\r\n\r\n".encode()
    via = f"through the proxy (CONNECT {target.tunnel})" if target.tunnel else "to the origin"
    result = request_until_up(
        lambda: https_request(
            target.host,
            target.port,
            request,
            cafile=target.cafile,
            server_name=SERVER_NAME,
            tunnel=target.tunnel,
        ),
        deadline,
        f"check request {via}",
        fatal=(ssl.SSLError, TunnelRefusedError),
        retry=(OSError, httptools.HttpParserError),
    )
    status, body = result.status, result.body
    if status != 200 or len(body) != size:
        raise RuntimeError(
            f"check request {via} answered {status} with a {len(body)}-byte body "
            f"(expected 200 and {size} bytes); body starts {body[:200]!r}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(
            "TLS interception cost of interceptor versus direct HTTPS: keep-alive requests "
            "inside intercepted tunnels, and new intercepted connections, alternating direct "
            "and proxy rounds. Loopback only."
        ),
        epilog=(
            f"goals: <= {GOAL_KEEPALIVE_CPU_US:.0f} µs proxy CPU per intercepted keep-alive "
            f"request; <= {GOAL_NEWCONN_CPU_MS:g} ms proxy CPU per new intercepted connection"
        ),
    )
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each target per measure")
    parser.add_argument(
        "--mode", choices=("keepalive", "newconn", "both"), default="both", help="what to measure"
    )
    parser.add_argument("--size", type=int, default=1024, help="response body size in bytes")
    parser.add_argument(
        "--procs", type=int, default=1, help="load-generator processes per round (default 1)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of unmeasured load per measure and target before the rounds (0: none)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=2_000_000,
        help="safety cap on requests (newconn: connections) per round, over all load processes",
    )
    parser.add_argument(
        "--proxy-cmd",
        help=(
            "command that starts the proxy; {port}, {config}, {ca_dir} and {upstream_ca} are "
            "replaced, and the client trusts {ca_dir}/ca.pem. Default: "
            + shlex.join(default_proxy_cmd())
        ),
    )
    parser.add_argument(
        "--workers",
        metavar="LIST",
        help=(
            "measure this tree's proxy with each of these worker counts side by side instead of "
            f"one proxy (comma-separated, e.g. 1,2: {WORKERS_ENV}=N for each), each round "
            "running direct and then each of them; the proxy's CPU is its supervisor's and "
            "every worker's"
        ),
    )
    add_proxy_bench_args(
        parser,
        default_json=DEFAULT_JSON,
        access_log_help="turn the proxy's access log on (default off)",
        baseline_help="an earlier results JSON of this benchmark to compare with",
        check_help="exit with status 1 if a measured goal is not met",
    )
    args = parser.parse_args(argv)
    if args.loadgen_worker:
        return args
    check_args(
        parser,
        [
            (1 <= args.clients <= 5_000, "--clients must be between 1 and 5000"),
            (1 <= args.procs <= 16, "--procs must be between 1 and 16"),
            *load_arg_checks(args),
        ],
    )
    args.compare_rev = compare_arg(parser, args)
    args.worker_counts = None
    if args.workers is not None:
        try:
            args.worker_counts = parse_worker_counts(args.workers)
        except ValueError as e:
            parser.error(f"--workers: {e}")
        # Each has a table of its own (direct, this tree's and REV's proxy; a baseline's proxy):
        # one of them with a column per worker count would be a table of everything.
        if args.compare:
            parser.error("--workers and --compare exclude each other: run them one after the other")
        if args.baseline:
            parser.error("--workers and --baseline exclude each other (a baseline has one proxy)")
    return args


#: The key figures compared between this tree's proxy and the ``--compare`` revision's.
COMPARE_KEYS = {
    "keepalive": ("proxy_cpu_us_per_request", "rate"),
    "newconn": ("proxy_cpu_ms_per_request", "rate"),
}


#: The proxy settings :func:`start_tree_proxy` sets whatever the environment says; the others
#: are inherited, and printed as such.
_FORCED = (
    "INTERCEPTOR_TLS_CA_DIR",
    "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE",
    "INTERCEPTOR_ADMIN_LISTEN",
    "INTERCEPTOR_UPSTREAM_HOSTS",
)


def start_tree_proxy(
    args: argparse.Namespace,
    workdir: Path,
    origin_root: Path,
    log_path: Path,
    root: Path = REPO_ROOT,
    workers: int | None = None,
) -> tuple[subprocess.Popen[bytes], int, str, Path]:
    """Start the proxy of source tree ``root``, its config and CA in ``workdir``; with
    ``workers``, that many (through WORKERS_ENV, whatever the environment says).

    Returns ``(process, port, description, CA dir)``; every proxy of a run is started this way.
    """
    ca_dir = workdir / "proxy-ca"
    template = shlex.split(args.proxy_cmd) if args.proxy_cmd else default_proxy_cmd()
    cmd = fill_template(template, ca_dir=ca_dir, upstream_ca=origin_root)
    forced = {
        "INTERCEPTOR_TLS_CA_DIR": str(ca_dir),
        "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(origin_root),
        "INTERCEPTOR_ADMIN_LISTEN": "",
        "INTERCEPTOR_UPSTREAM_HOSTS": f"{SERVER_NAME}=127.0.0.1",
    }
    assert forced.keys() == set(_FORCED)
    env = {**os.environ, **forced}
    if workers is not None:
        env[WORKERS_ENV] = str(workers)
    process, port, desc = start_proxy_on_free_port(
        cmd,
        access_log_config(args.access_log),
        workdir=workdir,
        log_path=log_path,
        env=env,
        root=root,
    )
    if workers is not None:
        desc += f" with {WORKERS_ENV}={workers}"
    return process, port, desc, ca_dir


def start_checked_proxy(
    bench_args: argparse.Namespace,
    name: str,
    label: str,
    workdir: Path,
    origin_root: Path,
    origin_port: int,
    log_path: Path,
    root: Path = REPO_ROOT,
    workers: int | None = None,
) -> tuple[subprocess.Popen[bytes], Target, str]:
    """:func:`start_tree_proxy`, then wait until one request through it is answered right
    (with more than one worker, once every worker accepts).

    Returns ``(process, target, description)``; ``name`` is the target's, ``label`` what
    the proxy is called in the output ("proxy", "proxy (tree)").
    """
    proxy, port, desc, ca_dir = start_tree_proxy(
        bench_args, workdir, origin_root, log_path, root, workers
    )
    try:
        print(f"{label}: {desc}")
        deadline = wait_for_proxy(LOOPBACK, port, bench_args.startup_timeout, proxy, f"the {label}")
        if workers is not None and workers > 1:
            # The supervisor's sockets accept (into their backlogs) before any worker runs:
            # measuring from then on would count the workers' start-up as the first round's.
            pids = wait_for_workers(log_path, workers, deadline, proxy, f"the {label}")
            print(f"{label}: supervisor pid {proxy.pid}, worker pids {', '.join(map(str, pids))}")
        ca_pem = ca_dir / "ca.pem"
        if not ca_pem.exists():
            raise RuntimeError(f"the {label} is up but {ca_pem} does not exist")
        authority = f"{SERVER_NAME}:{origin_port}"
        target = Target(name, LOOPBACK, port, authority, str(ca_pem), proxy.pid)
        check_target(target, origin_port, bench_args.size, deadline)
    except BaseException:
        # The caller never gets the process to stop (Ctrl-C included), so stop it here.
        stop_process(proxy)
        raise
    return proxy, target, desc


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker_main(args.loadgen_worker)
        return 0
    measures = MEASURES if args.mode == "both" else (args.mode,)
    rev: Revision | None = args.compare_rev
    counts: list[int] | None = args.worker_counts
    names: tuple[str, ...]
    if counts is not None:
        names = ("direct", *(workers_name(n) for n in counts))
    else:
        names = (*TARGETS, COMPARE) if rev is not None else TARGETS
    # The proxy whose figures the goals are checked on.
    main_name = names[1]
    # SIGTERM stops the run like Ctrl-C does: children stopped in order, temp files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    baseline = load_baseline(
        args.baseline,
        {key: getattr(args, key) for key in ("clients", "size", "duration", "procs")},
        benchmark="tls",
    )
    load = load_average()
    note = load_note(load)
    if note:
        print(note)
    proxy: subprocess.Popen[bytes] | None = None
    more_proxies: list[subprocess.Popen[bytes]] = []  # --workers: all but the first
    compare_proxy: subprocess.Popen[bytes] | None = None
    compare_desc = ""
    origin: tuple[subprocess.Popen[bytes], int] | None = None
    log_path: Path | None = None
    compare_logs: list[Path] = []
    rounds: list[RoundResult] = []
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("INTERCEPTOR_")
        and k not in _FORCED
        and not (counts is not None and k == WORKERS_ENV)  # --workers sets it for each proxy
    }
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        workdir = Path(tmp)
        try:
            if rev is not None:
                tree = export_revision(rev, workdir / f"tree-{rev.short}")
                print(f"compare: {rev.label} ({rev.sha}) exported to {tree}")
            root_path, leaf_path, key_path = make_origin_certs(workdir / "origin-certs")
            origin = start_origin(args.size, tls_cert=leaf_path, tls_key=key_path)
            origin_process, origin_port = origin
            print(
                f"origin: https://{SERVER_NAME}:{origin_port} on 127.0.0.1 "
                f"(pid {origin_process.pid}), {args.size}-byte body"
            )

            targets = {"direct": Target("direct", LOOPBACK, origin_port, None, str(root_path))}
            check_target(targets["direct"], origin_port, args.size, time.monotonic() + 5)
            if counts is not None:
                # One proxy per worker count, all running for the whole run, started one after
                # the other (as --compare's two): the idle ones wait in epoll, costing nothing.
                descs = []
                for n in counts:
                    name = workers_name(n)
                    wdir = workdir / name
                    wdir.mkdir()
                    wlog = wdir / "proxy.log"
                    if args.proxy_log:
                        wlog = Path(f"{args.proxy_log}.{name}")
                    # The first is "the" proxy (its log is reported first on an error).
                    if log_path is None:
                        log_path = wlog
                    else:
                        compare_logs.append(wlog)
                    started, targets[name], desc = start_checked_proxy(
                        args, name, f"proxy {name}", wdir, root_path, origin_port, wlog, workers=n
                    )
                    if proxy is None:
                        proxy = started
                    else:
                        more_proxies.append(started)
                    descs.append(f"{name}: {desc}")
                proxy_desc = "; ".join(descs)
            else:
                log_path = Path(args.proxy_log) if args.proxy_log else workdir / "proxy.log"
                proxy, targets["proxy"], proxy_desc = start_checked_proxy(
                    args,
                    "proxy",
                    "proxy (tree)" if rev is not None else "proxy",
                    workdir,
                    root_path,
                    origin_port,
                    log_path,
                )
            if inherited:
                print(
                    "proxy settings from the environment: "
                    + shlex.join(f"{k}={v}" for k, v in sorted(inherited.items()))
                )
            if rev is not None:
                # Both proxies run for the whole run, started one after the other (no race on
                # start-up): each then has the same history when measured (warm-up, pools,
                # age), and the idle one waits in epoll, costing nothing. Rounds are
                # sequential, so only one is ever under load.
                compare_dir = workdir / COMPARE
                compare_dir.mkdir()
                compare_logs.append(
                    Path(f"{args.proxy_log}.{rev.short}")
                    if args.proxy_log
                    else compare_dir / "proxy.log"
                )
                compare_proxy, targets[COMPARE], compare_desc = start_checked_proxy(
                    args,
                    COMPARE,
                    f"proxy ({rev.label})",
                    compare_dir,
                    root_path,
                    origin_port,
                    compare_logs[0],
                    root=tree,
                )
            bench = Bench(args, workdir, origin_process.pid, origin_port, root_path, targets)
            print(
                f"load: {args.clients} clients in {min(args.procs, args.clients)} load "
                f"process(es), {args.duration:g} s per round, {args.rounds} round(s) of each "
                f"target per measure, on {os.cpu_count()} CPUs"
            )

            for measure in measures:
                if args.warmup > 0:
                    for name in names:
                        w = run_round(bench, measure, targets[name], 0, args.warmup)
                        print("warm-up   " + _round_line(w))
                for round_no in range(1, args.rounds + 1):
                    for name in round_order(names, round_no):
                        r = run_round(bench, measure, targets[name], round_no, args.duration)
                        rounds.append(r)
                        print(f"round {round_no}/{args.rounds} " + _round_line(r))
                        for process in (proxy, compare_proxy, *more_proxies):
                            if process is not None and process.poll() is not None:
                                raise RuntimeError(
                                    f"the proxy (pid {process.pid}) exited with status "
                                    f"{process.returncode}"
                                )
        except (RuntimeError, OSError, ValueError, TunnelRefusedError) as e:
            report_error(e, log_path, bool(args.proxy_log), compare_logs)
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxies and the origin", file=sys.stderr)
            return 130
        finally:
            stop_proxy_and_origin(proxy, origin, compare_proxy, *more_proxies)

    summary: dict[str, dict[str, Any]] = {}
    goals: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    scaling: dict[str, Any] = {}
    any_unmet = False
    for measure in measures:
        summary[measure] = {
            name: summarize([r for r in rounds if r.measure == measure and r.target == name])
            for name in names
        }
        title = f"{measure}: {_TITLES[measure]}"
        if counts is not None:
            rate_label = "requests/s" if measure == "keepalive" else "connections/s"
            cpu_key = COMPARE_KEYS[measure][0]
            print_side_by_side_table(
                summary[measure],
                names[1:],
                _METRICS[measure],
                {"rate": rate_label, cpu_key: "proxy CPU per " + rate_label.split("/")[0][:-1]},
                title=title,
            )
            of_measure = [r for r in rounds if r.measure == measure]
            rates = {(r.target, r.round): r.rate for r in of_measure}
            rests = {
                (r.target, r.round): rest_pct(
                    r.machine_busy_s, [r.proxy_cpu_s, r.origin_cpu_s, r.loadgen_cpu_s], r.elapsed
                )
                for r in of_measure
            }
            scaling[measure] = workers_scaling(rates, rests, summary[measure], names[1:], "rate")
            calm = quiet_rounds(rests, names[1:])
            if calm and len(calm) < args.rounds:
                # On a shared machine the rounds nobody else competed in are the ones that say
                # what the proxy does: the same table over those alone.
                summary_quiet = {
                    name: summarize([r for r in of_measure if r.target == name and r.round in calm])
                    for name in names
                }
                print_side_by_side_table(
                    summary_quiet,
                    names[1:],
                    _METRICS[measure],
                    {"rate": rate_label, cpu_key: "proxy CPU per " + rate_label.split("/")[0][:-1]},
                    title=f"{measure}, " + quiet_title(calm, args.rounds),
                )
                scaling[measure]["quiet_summary"] = summary_quiet
            for line in scaling_lines(scaling[measure], names[1:], rate_label):
                print(line)
        else:
            print_direct_proxy_table(
                summary[measure],
                _METRICS[measure],
                (baseline or {}).get("summary", {}).get(measure),
                args.baseline,
                rate_key="rate",
                rate_label="rate",
                title=title,
                compare=rev,
                compare_keys=COMPARE_KEYS[measure],
            )
        note = rest_note(summary[measure], names)
        if note:
            print(note)
        text, met = goal_line(measure, summary[measure][main_name])
        print(text if counts is None else f"{text} ({main_name})")
        for name in names[1:] if counts is not None else ["proxy"]:
            note = bottleneck_note(measure, summary[measure][name], name)
            if note:
                print(note)
        for name in names[1:]:
            figures = summary[measure][name]
            if figures["error_count"]:
                which = "proxy" if name == "proxy" or rev is None else f"{rev.label} proxy"
                print(f"warning: {figures['error_count']} {which} errors: {figures['errors']}")
        proxy_s = summary[measure][main_name]
        any_unmet = any_unmet or met is False
        goals[measure] = {
            "unit": "µs per request" if measure == "keepalive" else "ms per connection",
            "max": GOAL_KEEPALIVE_CPU_US if measure == "keepalive" else GOAL_NEWCONN_CPU_MS,
            "measured": proxy_s[
                "proxy_cpu_us_per_request" if measure == "keepalive" else "proxy_cpu_ms_per_request"
            ],
            "met": met,
        }
        d = summary[measure]["direct"]
        over_direct = {
            name: {
                key: summary[measure][name][key] / d[key] if d[key] else None
                for key in ("rate", "p50_ms", "p99_ms")
            }
            for name in names[1:]
        }
        # Without --workers, as it always was: the proxy's figures over direct's.
        ratios[measure] = over_direct if counts is not None else over_direct["proxy"]

    results = {
        **results_header("tls", openssl=ssl.OPENSSL_VERSION, load_average=load),
        "params": {
            "mode": args.mode,
            "clients": args.clients,
            "procs": args.procs,
            "duration": args.duration,
            "rounds": args.rounds,
            "size": args.size,
            "warmup": args.warmup,
            "max_requests": args.max_requests,
            "access_log": args.access_log,
            "proxy": proxy_desc,
            "proxy_env": inherited,
            "compare": args.compare,
            "workers": counts,
        },
        "rounds": [r.to_json() for r in rounds],
        "summary": summary,
        "ratios_proxy_over_direct": ratios,
        **(
            {
                "compare": compare_results(
                    rev,
                    compare_desc,
                    {m: compare_ratios(summary[m], COMPARE_KEYS[m]) for m in measures},
                )
            }
            if rev is not None
            else {}
        ),
        **({"workers_scaling": scaling} if counts is not None else {}),
        "goals": goals,
    }
    print(f"results: {write_json(args.json, results)}")
    return 1 if args.check and any_unmet else 0


if __name__ == "__main__":
    sys.exit(main())
