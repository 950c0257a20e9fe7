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
connections) completed. The load generator's CPU is reported too: Python's client-side TLS
handshake costs about as much as the proxy's, so in ``newconn`` rounds the load generator, not
the proxy, may be what limits connections/s (the CPU-per-connection figure is valid either way;
``--procs 2`` splits the clients over two load processes).

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

Not a test: pytest never runs it. Loopback only; every loop is bounded in time and count, and
child processes are stopped on exit (and sent SIGTERM by the kernel if this driver dies).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import platform
import resource
import select
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import httptools
from _common import (
    LOOPBACK,
    ORIGIN_STATS_PREFIX,
    REPO_ROOT,
    ProcessExitedError,
    default_proxy_cmd,
    fill_template,
    free_port,
    percentiles,
    print_table,
    proc_cpu_seconds,
    proc_fd_count,
    proc_rss_bytes,
    require_loopback,
    spawn,
    start_origin,
    start_proxy,
    stop_process,
    tail_text,
    wait_for_port,
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


class TunnelRefusedError(Exception):
    """The proxy answered CONNECT with something other than 200 (or garbage)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


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


def _connect_request(authority: str) -> bytes:
    """The CONNECT request head for ``authority``."""
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def _tunnel_status(reply: bytes) -> int:
    """The status code of a CONNECT reply head (raises TunnelRefusedError if malformed)."""
    parts = reply.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise TunnelRefusedError("connect_garbage", f"bad CONNECT reply {reply[:100]!r}")
    return int(parts[1])


class _LoadGen:
    """Shared state of one load process: clock, budget, counters, latencies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = spec.request.encode("latin-1")
        self.connect_request = _connect_request(spec.tunnel) if spec.tunnel else b""
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
            reply.set_result(_tunnel_status(head))
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


def _raise_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def loadgen_worker_main(spec_json: str) -> None:
    """Entry point of a load process: run the spec, print READY, DONE, then the summary JSON."""
    # Until run_load installs its handlers, a stray GO/CLOSE must not kill us.
    signal.signal(_GO_SIGNAL, signal.SIG_IGN)
    signal.signal(_CLOSE_SIGNAL, signal.SIG_IGN)
    spec = LoadSpec(**json.loads(spec_json))
    require_loopback(spec.host)
    _raise_fd_limit(4 * spec.clients + 256)
    summary = asyncio.run(run_load(spec))
    _emit(json.dumps(summary))


# --------------------------------------------------------------------------------------------
# Certificates and blocking HTTPS checks (driver side)
# --------------------------------------------------------------------------------------------


def _load_test_certs() -> ModuleType:
    """``tests/certs.py`` loaded by path (``tests`` is not a package, and no other may win)."""
    path = REPO_ROOT / "tests" / "certs.py"
    spec = importlib.util.spec_from_file_location("_interceptor_bench_certs", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_origin_certs(directory: Path) -> tuple[Path, Path, Path]:
    """An origin root CA and a ``localhost``/``127.0.0.1`` leaf it signed, written as PEM.

    Returns ``(root_cert, leaf_cert, leaf_key)`` paths.
    """
    certs = _load_test_certs()
    root = certs.make_origin_root("interceptor bench origin root")
    root_path, _ = certs.write_pair(directory, "origin-root", root)
    leaf_path, key_path = certs.write_pair(directory, "origin", certs.good_cert(root))
    return root_path, leaf_path, key_path


class _Collector:
    """httptools callbacks that gather one response."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def https_exchange(
    host: str,
    port: int,
    tunnel: str | None,
    cafile: str | Path,
    request: bytes,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTPS request (blocking), through a CONNECT tunnel to ``tunnel`` if given.

    Returns ``(status, body)``. Raises OSError (ssl.SSLError, socket.timeout included),
    TunnelRefusedError, ConnectionError or httptools.HttpParserError.
    """
    require_loopback(host)
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if tunnel is not None:
            raw.sendall(_connect_request(tunnel))
            reply = b""
            while b"\r\n\r\n" not in reply:
                raw.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = raw.recv(4096)
                if not chunk or len(reply) > 16384:
                    raise TunnelRefusedError("connect_closed", f"CONNECT reply {reply[:200]!r}")
                reply += chunk
            status = _tunnel_status(reply)
            if status != 200:
                raise TunnelRefusedError(f"connect_{status}", f"CONNECT reply {reply[:200]!r}")
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
            sock.sendall(request)
            collector = _Collector()
            parser = httptools.HttpResponseParser(collector)
            while not collector.complete:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed before the response was complete")
                parser.feed_data(data)
            return parser.get_status_code(), b"".join(collector.body)


def tls_origin_stats(port: int, cafile: str | Path) -> dict[str, int]:
    """The TLS origin's counters (``accepts``, ``requests``); this request is not counted."""
    status, body = https_exchange(
        LOOPBACK,
        port,
        None,
        cafile,
        ORIGIN_STATS_PREFIX + b"HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n",
    )
    if status != 200:
        raise RuntimeError(f"origin statistics request answered {status}")
    return {k: int(v) for k, v in json.loads(body).items()}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where one kind of round sends its load."""

    name: str  # "direct" or "proxy"
    host: str
    port: int
    tunnel: str | None
    cafile: str


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
    proxy_rss_bytes: int | None
    proxy_fds: int | None
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
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--loadgen-worker",
                    json.dumps(asdict(spec)),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._buf = b""

    def read_line(self, deadline: float, what: str) -> str:
        """The next line it prints, waiting until ``deadline`` (a time.monotonic() value)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"load generator {self.process.pid}: no {what} in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    status = self.process.wait(5)
                    raise RuntimeError(
                        f"load generator {self.process.pid} exited (status {status}) before "
                        f"{what}:\n{tail_text(self.stderr_path, 20)}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
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


def _cpu(pid: int | None) -> float | None:
    """CPU seconds of ``pid`` so far, or None if it cannot be read."""
    if pid is None:
        return None
    try:
        return proc_cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def _delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def _read_array(path: Path) -> array[float]:
    values = array("d")
    if path.exists():
        values.frombytes(path.read_bytes())
        path.unlink()
    return values


@dataclass
class Bench:
    """What every round needs: arguments, processes, paths."""

    args: argparse.Namespace
    workdir: Path
    origin_pid: int
    origin_port: int
    origin_root: Path
    proxy_pid: int | None
    targets: dict[str, Target]


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
    proxy_pid = bench.proxy_pid if target.name == "proxy" else None
    before = tls_origin_stats(bench.origin_port, bench.origin_root)
    workers: list[_Worker] = []
    try:
        for i, spec in enumerate(specs):
            workers.append(_Worker(i, spec, bench.workdir))
        ready_by = time.monotonic() + 60
        for w in workers:
            w.expect("READY", ready_by)
        pids = [w.process.pid for w in workers]
        cpu0 = (_cpu(proxy_pid), _cpu(bench.origin_pid), [_cpu(p) for p in pids])
        t0 = time.monotonic()
        for w in workers:
            w.send_signal(_GO_SIGNAL)
        done_by = t0 + duration + specs[0].drain_timeout + 30
        for w in workers:
            w.expect("DONE", done_by)
        t1 = time.monotonic()
        cpu1 = (_cpu(proxy_pid), _cpu(bench.origin_pid), [_cpu(p) for p in pids])
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
    after = tls_origin_stats(bench.origin_port, bench.origin_root)

    latencies: array[float] = array("d")
    setups: array[float] = array("d")
    for spec in specs:
        latencies.extend(_read_array(Path(spec.latency_path)))
        setups.extend(_read_array(Path(spec.setup_path)))
    p50, p99 = percentiles(latencies, [50, 99])
    errors: Counter[str] = Counter()
    for s in summaries:
        errors.update(s["errors"])
    loadgen = [_delta(a, b) for a, b in zip(cpu1[2], cpu0[2], strict=True)]
    requests = sum(s["requests"] for s in summaries)
    elapsed = t1 - t0
    rss = fds = None
    if proxy_pid is not None:
        try:
            rss, fds = proc_rss_bytes(proxy_pid), proc_fd_count(proxy_pid)
        except OSError:
            pass
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
        proxy_cpu_s=_delta(cpu1[0], cpu0[0]),
        origin_cpu_s=_delta(cpu1[1], cpu0[1]),
        loadgen_cpu_s=None if any(v is None for v in loadgen) else sum(v or 0.0 for v in loadgen),
        origin_accepts=after["accepts"] - before["accepts"],
        origin_requests=after["requests"] - before["requests"],
        proxy_rss_bytes=rss,
        proxy_fds=fds,
        latencies=latencies,
        setups=setups,
    )


def _round_line(r: RoundResult) -> str:
    """One progress line for a finished round."""
    unit = "req/s" if r.measure == "keepalive" else "conn/s"
    text = f"{r.measure:>9} {r.target:>6}: {r.rate:9,.0f} {unit}, p50 {r.p50_ms:.2f} ms, "
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
    if r.loadgen_cpu_s is not None and r.elapsed:
        text += f", loadgen CPU {r.loadgen_cpu_s / r.elapsed * 100:.0f}%"
    text += f", origin accepts {r.origin_accepts}"
    errors = sum(r.errors.values())
    text += f", errors {errors}" + (f" {r.errors}" if errors else "")
    if r.reconnects:
        text += f", reconnects {r.reconnects}"
    if r.capped:
        text += " (stopped by --max-requests)"
    return text


def _sum_or_none(values: list[float | None]) -> float | None:
    """Sum of the values, or None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Aggregate the rounds of one measure and target: totals, rates, percentiles of all."""
    requests = sum(r.requests for r in rounds)
    elapsed = sum(r.elapsed for r in rounds)
    merged: array[float] = array("d")
    setups: array[float] = array("d")
    for r in rounds:
        merged.extend(r.latencies)
        setups.extend(r.setups)
    p50, p90, p99, p999 = percentiles(merged, [50, 90, 99, 99.9])
    s50, s99 = percentiles(setups, [50, 99])
    errors: Counter[str] = Counter()
    for r in rounds:
        errors.update(r.errors)

    def per_request_us(total: float | None) -> float | None:
        return total / requests * 1e6 if total is not None and requests else None

    def share_of_core(total: float | None) -> float | None:
        return total / elapsed * 100 if total is not None and elapsed else None

    proxy_cpu = _sum_or_none([r.proxy_cpu_s for r in rounds])
    origin_cpu = _sum_or_none([r.origin_cpu_s for r in rounds])
    loadgen_cpu = _sum_or_none([r.loadgen_cpu_s for r in rounds])
    accepts = sum(r.origin_accepts or 0 for r in rounds)
    proxy_us = per_request_us(proxy_cpu)
    return {
        "rounds": len(rounds),
        "requests": requests,
        "elapsed_s": elapsed,
        "rate": requests / elapsed if elapsed else 0.0,
        "rate_per_round": [r.rate for r in rounds],
        "p50_ms": p50 * 1e3,
        "p90_ms": p90 * 1e3,
        "p99_ms": p99 * 1e3,
        "p999_ms": p999 * 1e3,
        "max_ms": max(merged) * 1e3 if merged else float("nan"),
        "setup_p50_ms": s50 * 1e3,
        "setup_p99_ms": s99 * 1e3,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "reconnects": sum(r.reconnects for r in rounds),
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_us_per_request": proxy_us,
        "proxy_cpu_ms_per_request": proxy_us / 1e3 if proxy_us is not None else None,
        "proxy_cpu_pct_of_core": share_of_core(proxy_cpu),
        "origin_cpu_us_per_request": per_request_us(origin_cpu),
        "loadgen_cpu_us_per_request": per_request_us(loadgen_cpu),
        "loadgen_cpu_ms_per_request": (
            per_request_us(loadgen_cpu) / 1e3 if per_request_us(loadgen_cpu) is not None else None
        ),
        "loadgen_cpu_pct_of_core": share_of_core(loadgen_cpu),
        "loadgen_procs": max((r.loadgen_procs for r in rounds), default=0),
        "origin_accepts": accepts,
        "origin_requests": sum(r.origin_requests or 0 for r in rounds),
        "origin_accepts_per_1k": accepts / requests * 1000 if requests else None,
        "proxy_rss_mib_after": (
            rounds[-1].proxy_rss_bytes / 2**20 if rounds and rounds[-1].proxy_rss_bytes else None
        ),
        "proxy_fds_after": rounds[-1].proxy_fds if rounds else None,
    }


def _fmt(value: float | int | None, digits: int = 1) -> str | None:
    """A number for the table; None or NaN shows as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str | None:
    """``a / b`` as '0.42x'."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return f"{a / b:.2f}x"


def _change(now: float | None, then: float | None) -> str | None:
    """Relative change from ``then`` to ``now`` as '+3.1%'."""
    if now is None or then is None or not then or math.isnan(now) or math.isnan(then):
        return None
    return f"{(now / then - 1) * 100:+.1f}%"


#: Per measure: (label, summary key, digits, ratio proxy/direct?, proxy only?)
_METRICS: dict[str, list[tuple[str, str, int, bool, bool]]] = {
    "keepalive": [
        ("requests/s", "rate", 0, True, False),
        ("p50 latency (ms)", "p50_ms", 2, True, False),
        ("p99 latency (ms)", "p99_ms", 2, True, False),
        ("proxy CPU per request (µs)", "proxy_cpu_us_per_request", 1, False, True),
        ("proxy CPU (% of one core)", "proxy_cpu_pct_of_core", 0, False, True),
        ("origin CPU per request (µs)", "origin_cpu_us_per_request", 1, True, False),
        ("load generator CPU per request (µs)", "loadgen_cpu_us_per_request", 1, True, False),
        ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True, False),
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
        ("origin CPU per connection (µs)", "origin_cpu_us_per_request", 1, True, False),
        ("load generator CPU per conn (ms)", "loadgen_cpu_ms_per_request", 2, True, False),
        ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True, False),
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


def print_summary(
    measure: str,
    summary: dict[str, dict[str, Any]],
    baseline: dict[str, Any] | None,
    baseline_path: str | None,
) -> None:
    """The results table of one measure, with baseline columns when a baseline has it."""
    headers = ["metric", "direct", "proxy", "proxy/direct"]
    base = (baseline or {}).get("summary", {}).get(measure)
    if base:
        headers += ["baseline proxy", "proxy vs baseline"]
    rows = []
    for label, key, digits, ratio, proxy_only in _METRICS[measure]:
        d, p = summary["direct"].get(key), summary["proxy"].get(key)
        if proxy_only:
            d = None
        row: list[str | None] = [
            label,
            _fmt(d, digits),
            _fmt(p, digits),
            _ratio(p, d) if ratio else None,
        ]
        if base:
            b = base.get("proxy", {}).get(key)
            row += [_fmt(b, digits), _change(p, b)]
        rows.append(row)
    print()
    print(f"{measure}: {_TITLES[measure]}")
    print_table(rows, headers)
    if base:
        bd = base.get("direct", {})
        print(
            f"direct vs baseline ({baseline_path}): rate "
            f"{_change(summary['direct']['rate'], bd.get('rate')) or '-'}, p50 "
            f"{_change(summary['direct']['p50_ms'], bd.get('p50_ms')) or '-'} "
            "(how much the machine itself drifted)"
        )


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
    if value is None:
        return text + " -- not measured", None
    text += f" -- measured {shown}: "
    errors = proxy_summary.get("error_count", 0)
    if errors:
        # A proxy that fails requests cheaply must not pass.
        return text + f"NOT MET ({errors:,} intercepted requests failed)", False
    met = value <= limit
    return text + ("MET" if met else "NOT MET"), met


def bottleneck_note(measure: str, summary: dict[str, dict[str, Any]]) -> str | None:
    """A note when the load generator, rather than the proxy, probably limited the rate."""
    proxy = summary["proxy"]
    loadgen = proxy.get("loadgen_cpu_pct_of_core")
    procs = proxy.get("loadgen_procs") or 1
    proxy_pct = proxy.get("proxy_cpu_pct_of_core")
    if loadgen is None or loadgen < 85 * procs:
        return None
    note = (
        f"note: the load generator used {loadgen:.0f}% of a core ({procs} process(es)) in the "
        f"{measure} proxy rounds"
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


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _git_revision() -> str | None:
    """``git describe --always --dirty`` of the repository, if it can be had quickly."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def check_target(target: Target, origin_port: int, size: int, deadline: float) -> None:
    """One blocking HTTPS request to ``target``; it must be a 200 with a ``size``-byte body.

    Connection failures are retried until ``deadline``; a wrong answer fails at once.
    """
    request = f"GET /x HTTP/1.1\r\nHost: {SERVER_NAME}:{origin_port}\r\n\r\n".encode()
    via = f"through the proxy (CONNECT {target.tunnel})" if target.tunnel else "to the origin"
    while True:
        try:
            status, body = https_exchange(
                target.host, target.port, target.tunnel, target.cafile, request
            )
            break
        except (ssl.SSLError, TunnelRefusedError) as e:
            raise RuntimeError(f"check request {via} failed: {e}") from e
        except TimeoutError as e:
            raise RuntimeError(f"check request {via}: no response in 10 s") from e
        except (OSError, httptools.HttpParserError) as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"check request {via} failed: {e!r}") from e
            time.sleep(0.05)
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
        "--access-log", action="store_true", help="turn the proxy's access log on (default off)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for the proxy"
    )
    parser.add_argument("--proxy-log", help="keep the started proxy's output in this file")
    parser.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help="where to write the results (default: bench/results/tls.json)",
    )
    parser.add_argument(
        "--baseline", help="an earlier results JSON of this benchmark to compare with"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a measured goal is not met"
    )
    parser.add_argument("--loadgen-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen_worker:
        return args
    if not 1 <= args.clients <= 5_000:
        parser.error("--clients must be between 1 and 5000")
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be between 1 and 100")
    if not 0 <= args.size <= 64 * 1024 * 1024:
        parser.error("--size must be between 0 and 64 MiB")
    if not 1 <= args.procs <= 16:
        parser.error("--procs must be between 1 and 16")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be between 0 and 60 seconds")
    if not 1 <= args.max_requests <= 50_000_000:
        parser.error("--max-requests must be between 1 and 50,000,000")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker_main(args.loadgen_worker)
        return 0
    measures = MEASURES if args.mode == "both" else (args.mode,)
    # SIGTERM stops the run like Ctrl-C does: children stopped in order, temp files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    baseline = None
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        if baseline.get("benchmark") != "tls":
            print(f"note: {args.baseline} is not a tls benchmark result; comparing anyway")
        old = baseline.get("params", {})
        for key in ("clients", "size", "duration", "procs"):
            if key in old and old[key] != getattr(args, key):
                print(f"note: the baseline used --{key} {old[key]}, this run {getattr(args, key)}")

    config_text = f"[log]\naccess = {'true' if args.access_log else 'false'}\n"
    proxy: subprocess.Popen[bytes] | None = None
    origin: tuple[subprocess.Popen[bytes], int] | None = None
    log_path: Path | None = None
    rounds: list[RoundResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        workdir = Path(tmp)
        try:
            root_path, leaf_path, key_path = make_origin_certs(workdir / "origin-certs")
            origin = start_origin(args.size, tls_cert=leaf_path, tls_key=key_path)
            origin_process, origin_port = origin
            print(
                f"origin: https://{SERVER_NAME}:{origin_port} on 127.0.0.1 "
                f"(pid {origin_process.pid}), {args.size}-byte body"
            )

            ca_dir = workdir / "proxy-ca"
            proxy_port = free_port()
            template = shlex.split(args.proxy_cmd) if args.proxy_cmd else default_proxy_cmd()
            cmd = fill_template(template, ca_dir=ca_dir, upstream_ca=root_path)
            forced = {
                "INTERCEPTOR_TLS_CA_DIR": str(ca_dir),
                "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root_path),
                "INTERCEPTOR_ADMIN_LISTEN": "",
                "INTERCEPTOR_UPSTREAM_HOSTS": f"{SERVER_NAME}=127.0.0.1",
            }
            inherited = {
                k: v
                for k, v in os.environ.items()
                if k.startswith("INTERCEPTOR_") and k not in forced
            }
            env = {**os.environ, **forced}
            log_path = Path(args.proxy_log) if args.proxy_log else workdir / "proxy.log"
            proxy = start_proxy(
                proxy_port, config_text, workdir=workdir, cmd=cmd, log_path=log_path, env=env
            )
            proxy_desc = f"started (pid {proxy.pid}): " + shlex.join(
                fill_template(cmd, port=proxy_port, config=workdir / "interceptor.toml")
            )
            print(f"proxy: {proxy_desc}")
            if inherited:
                print(
                    "proxy settings from the environment: "
                    + shlex.join(f"{k}={v}" for k, v in sorted(inherited.items()))
                )
            deadline = time.monotonic() + args.startup_timeout
            try:
                wait_for_port(LOOPBACK, proxy_port, deadline, process=proxy)
            except (TimeoutError, ProcessExitedError) as e:
                raise RuntimeError(f"the proxy did not come up: {e}") from e
            ca_pem = ca_dir / "ca.pem"
            if not ca_pem.exists():
                raise RuntimeError(f"the proxy is up but {ca_pem} does not exist")

            authority = f"{SERVER_NAME}:{origin_port}"
            targets = {
                "direct": Target("direct", LOOPBACK, origin_port, None, str(root_path)),
                "proxy": Target("proxy", LOOPBACK, proxy_port, authority, str(ca_pem)),
            }
            check_target(targets["direct"], origin_port, args.size, time.monotonic() + 5)
            check_target(targets["proxy"], origin_port, args.size, deadline)
            bench = Bench(
                args, workdir, origin_process.pid, origin_port, root_path, proxy.pid, targets
            )
            print(
                f"load: {args.clients} clients in {min(args.procs, args.clients)} load "
                f"process(es), {args.duration:g} s per round, {args.rounds} round(s) of each "
                f"target per measure, on {os.cpu_count()} CPUs"
            )

            for measure in measures:
                if args.warmup > 0:
                    for name in TARGETS:
                        w = run_round(bench, measure, targets[name], 0, args.warmup)
                        print("warm-up   " + _round_line(w))
                for round_no in range(1, args.rounds + 1):
                    for name in TARGETS:
                        r = run_round(bench, measure, targets[name], round_no, args.duration)
                        rounds.append(r)
                        print(f"round {round_no}/{args.rounds} " + _round_line(r))
                        if proxy.poll() is not None:
                            raise RuntimeError(f"the proxy exited with status {proxy.returncode}")
        except (RuntimeError, OSError, ValueError, TunnelRefusedError) as e:
            print(f"error: {e}", file=sys.stderr)
            if log_path is not None:
                kept = "" if args.proxy_log else "; keep it with --proxy-log FILE"
                print(f"--- proxy output (tail of {log_path}{kept}) ---", file=sys.stderr)
                print(tail_text(log_path), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxy and the origin", file=sys.stderr)
            return 130
        finally:
            if proxy is not None:
                status = stop_process(proxy)
                if status is not None and status > 0:
                    print(f"note: the proxy exited with status {status}", file=sys.stderr)
            if origin is not None:
                stop_process(origin[0])

    summary: dict[str, dict[str, Any]] = {}
    goals: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    any_unmet = False
    for measure in measures:
        summary[measure] = {
            name: summarize([r for r in rounds if r.measure == measure and r.target == name])
            for name in TARGETS
        }
        print_summary(measure, summary[measure], baseline, args.baseline)
        text, met = goal_line(measure, summary[measure]["proxy"])
        print(text)
        note = bottleneck_note(measure, summary[measure])
        if note:
            print(note)
        proxy_s = summary[measure]["proxy"]
        if proxy_s["error_count"]:
            print(f"warning: {proxy_s['error_count']} proxy errors: {proxy_s['errors']}")
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
        ratios[measure] = {
            key: proxy_s[key] / d[key] if d[key] else None for key in ("rate", "p50_ms", "p99_ms")
        }

    results = {
        "benchmark": "tls",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_revision(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "platform": platform.platform(),
        },
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
        },
        "rounds": [r.to_json() for r in rounds],
        "summary": summary,
        "ratios_proxy_over_direct": ratios,
        "goals": goals,
    }
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    print(f"results: {json_path}")
    return 1 if args.check and any_unmet else 0


if __name__ == "__main__":
    sys.exit(main())
