"""SIGPIPE policies compared under churn: ``ignore`` versus ``close`` versus ``inherit`` (SIG_DFL).

Every proxy in this benchmark is started by a launcher that sets SIGPIPE to SIG_DFL before it
imports twistd (as an embedder, a launcher or a ``subprocess`` parent can), so ``inherit`` shows
the hazard that ``ignore`` and ``close`` exist to remove (DESIGN.md §3).

One run alternates the modes (ignore, close, inherit; repeated ``--rounds`` times), a fresh proxy
per round, and drives the same load at each:

* a few **well-behaved** keep-alive clients fetch a small body over plain HTTP the whole time
  (a failed request is retried after 0.1 s on a new connection), and ``--wb-tunnels`` clients
  download ``--wb-tunnel-size`` bytes through passthrough tunnels, one after another: each sends
  its request, half-closes (like ``nc -N``), reads the body more slowly than the origin sends it
  and expects all of it and a clean end. These show what a policy does to healthy connections;
* after ``--warmup`` seconds, for ``--duration`` seconds, **churn waves**: every
  ``--wave-interval`` seconds ``--wave-size`` clients start a 10 MiB download, cycling through
  three kinds: ``http`` (plain HTTP through the proxy), ``https`` (CONNECT, then TLS to the
  proxy's forged certificate, verified with ``<ca_dir>/ca.pem``, for a loopback TLS origin that
  the proxy verifies with ``upstream_ca_bundle``) and ``tunnel`` (CONNECT to a host on the
  ``[tls] passthrough`` list: an opaque relay; what runs inside does not matter to the proxy, so
  it is plain HTTP to keep the load generator cheap). Each reads ``--read-bytes``, half-closes
  (SHUT_WR), keeps reading for 0 to 2x ``--reset-delay`` seconds, then resets (SO_LINGER 1,0 +
  close);
* then ``--settle`` seconds with only the well-behaved clients, to see descriptors come back.

Where the hazard bites: in an HTTP exchange the proxy treats a client FIN as "gone" and aborts
both legs, so it rarely writes to a reset socket. A passthrough tunnel relays the FIN as a
half-close and keeps writing the origin's bytes to the client; when the client then resets,
the socket is in CLOSE_WAIT and the next ``send()`` fails with EPIPE and raises SIGPIPE, which
kills a process whose disposition is SIG_DFL (exit status -13).

Per mode the table shows: rounds survived (or the exit status), well-behaved success rate and
p50/p99 latency during the churn, SIGPIPEs received and handler aborts (from ``/metrics``,
scraped just before the end: "n/a" for a dead proxy), descriptors before the churn, at peak and
``--settle`` seconds after it (sampled from ``/proc/PID/fd``), proxy CPU seconds per 1,000
well-behaved requests during the churn, and peak RSS (VmHWM). Results go to a JSON file, and
to a PNG plot when matplotlib (the ``bench`` extra) is importable.

``--idle-cost`` is a separate measurement: what the ``close`` policy costs with 10,000 idle
client connections open (every proxied socket sits in its epoll registry). It sends SIGPIPE to
the proxy with ``os.kill`` ``--kills`` times, with and without the idle connections, and
divides the proxy's extra CPU time by the handler runs counted in ``/metrics``; ``ignore`` with
the same idle connections is the reference. It also measures well-behaved latency and the
proxy's CPU per accepted connection in both modes.

Run from the repository root::

    /work/venv/bin/python bench/sigpipe_modes.py                       # about a minute
    /work/venv/bin/python bench/sigpipe_modes.py --rounds 3 --duration 8
    /work/venv/bin/python bench/sigpipe_modes.py --baseline bench/results/old.json
    /work/venv/bin/python bench/sigpipe_modes.py --idle-cost           # about 30 seconds

Processes: the driver (this file), three loopback origins (``_common.py origin`` for the small
body; this file with a hidden ``--origin`` flag for the 10 MiB bodies, plain and TLS, which
produce bytes only as fast as they are read), the proxy, and a load generator per round (this
file with a hidden ``--worker`` flag, asyncio). With two or more CPUs the proxy is pinned to one
and everything else to the others (``--no-pin`` to turn that off). Not a test: pytest never
runs it. Loopback only; every loop is bounded in time and count, and every child is stopped on
the way out (and gets SIGTERM from the kernel if this process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import resource
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
from _common import (
    LOOPBACK,
    REPO_ROOT,
    ProcessExitedError,
    check_args,
    connect_request,
    default_proxy_cmd,
    fmt_number,
    free_port,
    http_request,
    load_average,
    load_baseline,
    load_note,
    make_origin_certs,
    percentiles,
    print_table,
    proc_alive,
    proc_cpu_seconds,
    proc_fd_count,
    proc_hwm_bytes,
    proc_rss_bytes,
    proc_socket_states,
    raise_fd_limit,
    results_header,
    self_command,
    serve_until_stopped,
    spawn,
    start_origin,
    start_port_reporter,
    start_proxy,
    stop_process,
    tail_text,
    wait_for_http_ok,
    wait_for_port,
    write_json,
)

DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "sigpipe_modes.json"
DEFAULT_PNG = REPO_ROOT / "bench" / "results" / "sigpipe_modes.png"
DEFAULT_IDLE_JSON = REPO_ROOT / "bench" / "results" / "sigpipe_idle_cost.json"

MODES = ("ignore", "close", "inherit")
KINDS = ("http", "https", "tunnel")
#: The passthrough host name; ``[upstream] hosts`` maps it to 127.0.0.1, so no DNS is involved.
TUNNEL_HOST = "tunnel.bench.test"
#: Sets SIGPIPE to SIG_DFL, then runs twistd with the rest of the command line.
LAUNCHER = (
    "import signal,sys; signal.signal(signal.SIGPIPE, signal.SIG_DFL); "
    "from twisted.scripts.twistd import run; sys.argv=['twistd']+sys.argv[1:]; run()"
)
_MIB = 1024 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


# --------------------------------------------------------------------------------------------
# Streaming origin for the big downloads (runs in its own process)
# --------------------------------------------------------------------------------------------


class _StreamingOrigin(asyncio.Protocol):
    """Answers each request with a ``size``-byte body, produced only as fast as it is read.

    ``GET /bytes/N`` gets an N-byte body instead (at most ``size``).

    ``_common.py origin`` hands the whole response to the transport at once, which for 10 MiB
    means copying (and, over TLS, encrypting) 10 MiB per churn client that reads 64 KiB; that
    swamped two cores. This one writes 64 KiB chunks and stops while the transport's buffer is
    above its high-water mark. A FIN from the client (relayed by a tunnel) does not stop it:
    like a typical server in the middle of a response, it keeps sending until the response is
    done or the connection is reset, and then closes (a FIN between responses closes at once).
    asyncio's TLS cannot half-close, so over TLS a FIN ends the connection.
    """

    _CHUNK = (b"0123456789abcdef" * 4096)[: 64 * 1024]

    def __init__(self, size: int) -> None:
        self.size = size
        self.transport: asyncio.Transport | None = None
        self.remaining = 0
        self.paused = False
        self.eof = False
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)

    def data_received(self, data: bytes) -> None:
        if self.remaining:
            return  # pipelining is not needed here
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                self._close()
            return
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        size = self.size
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        if path.startswith(b"/bytes/") and path[7:].isdigit():
            size = min(int(path[7:]), self.size)  # GET /bytes/N: an N-byte body
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        self.remaining = size
        self._pump()
        if not size and self.eof:
            self.transport.close()

    def _pump(self) -> None:
        transport = self.transport
        while (
            self.remaining
            and not self.paused
            and transport is not None
            and not transport.is_closing()
        ):
            n = min(self.remaining, len(self._CHUNK))
            transport.write(self._CHUNK if n == len(self._CHUNK) else self._CHUNK[:n])
            self.remaining -= n
            if not self.remaining and self.eof:
                transport.close()  # FIN once the buffer is flushed

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def eof_received(self) -> bool:
        self.eof = True
        # Finish the response in progress first (ignored, with a warning, over TLS).
        return bool(self.remaining)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.remaining = 0

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _serve_streaming_origin(size: int, cert: str, key: str) -> None:
    """Serve until SIGTERM/SIGINT, the parent goes away, or an hour has passed."""
    ssl_context = None
    if cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cert, key)
    server = await asyncio.get_running_loop().create_server(
        lambda: _StreamingOrigin(size), LOOPBACK, 0, backlog=1024, ssl=ssl_context
    )
    await serve_until_stopped(server, max_lifetime=3600)


def start_streaming_origin(
    size: int,
    log_path: Path,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 15.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a :class:`_StreamingOrigin` process; returns (process, port) once it listens.

    Its stderr (asyncio's complaints about writes to reset connections) goes to ``log_path``.
    """
    spec = {"size": size, "cert": str(cert or ""), "key": str(key or "")}
    with open(log_path, "ab") as log:
        return start_port_reporter(
            self_command(__file__, "--origin", spec),
            what="the streaming origin",
            stderr=log,
            timeout=timeout,
        )


# --------------------------------------------------------------------------------------------
# Load generator (runs in its own process, one per round)
# --------------------------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What one load-generator run does; passed to the worker process as JSON."""

    proxy_port: int
    proxy_pid: int
    small_port: int
    small_size: int
    out_path: str
    big_port: int = 0
    tls_port: int = 0
    big_size: int = 10 * _MIB
    proxy_ca: str = ""
    origin_root: str = ""
    kinds: list[str] = field(default_factory=list)
    well_behaved: int = 4
    wb_tunnels: int = 0
    wb_tunnel_size: int = 8 * _MIB
    warmup: float = 1.0
    duration: float = 4.0
    settle: float = 5.0
    wave_interval: float = 0.1
    wave_size: int = 6
    read_bytes: int = 64 * 1024
    reset_delay: float = 0.05
    request_timeout: float = 5.0
    retry_pause: float = 0.1
    churn_timeout: float = 10.0
    max_inflight: int = 256
    max_requests: int = 1_000_000
    preflight: bool = False
    seed: int = 1


class _WorkerState:
    """Everything one worker run records."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ok_t: list[float] = []  # start time of each successful well-behaved request
        self.ok_lat: list[float] = []
        self.fail_t: list[float] = []
        self.fail_why: Counter[str] = Counter()
        self.tun_ok_t: list[float] = []  # start time of each complete tunnel download
        self.tun_fail_t: list[float] = []
        self.tun_fail_why: Counter[str] = Counter()
        self.requests = 0
        self.wb_stop = math.inf
        self.churn_started: Counter[str] = Counter()
        self.churn_outcomes: Counter[str] = Counter()
        self.churn_skipped = 0
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()


def _phase(name: str) -> float:
    """Tell the driver (on stdout) that a phase starts now; returns the monotonic time."""
    t = time.monotonic()
    sys.stdout.write(f"PHASE {name} {t:.6f}\n")
    sys.stdout.flush()
    return t


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """Read one HTTP response; returns (status, body length, keep-alive)."""

    class Collector:
        body = 0
        done = False

        def on_body(self, data: bytes) -> None:
            self.body += len(data)

        def on_message_complete(self) -> None:
            self.done = True

    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    while not collector.done:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed before the response was complete")
        parser.feed_data(data)
    return parser.get_status_code(), collector.body, parser.should_keep_alive()


def _error_name(e: BaseException) -> str:
    """A short label for an exception, for the failure counters."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ssl.SSLError):
        return "tls"
    if isinstance(e, ConnectionError | asyncio.IncompleteReadError):
        return "closed"
    if isinstance(e, httptools.HttpParserError):
        return "parse"
    return type(e).__name__


async def _well_behaved(state: _WorkerState, index: int) -> None:
    """One keep-alive client fetching the small body until told to stop."""
    spec = state.spec
    target = f"127.0.0.1:{spec.small_port}"
    request = f"GET http://{target}/wb/{index} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < state.wb_stop and state.requests < spec.max_requests:
        t0 = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, spec.proxy_port), spec.request_timeout
                )
            assert reader is not None
            state.requests += 1
            writer.write(request)
            status, length, keep = await asyncio.wait_for(
                _read_response(reader), spec.request_timeout
            )
            t1 = time.monotonic()
            if status == 200 and length == spec.small_size:
                state.ok_t.append(t0)
                state.ok_lat.append(t1 - t0)
            else:
                state.fail_t.append(t0)
                state.fail_why[f"status_{status}" if status != 200 else "body_length"] += 1
            if not keep:
                writer.transport.abort()
                writer = None
        except (OSError, TimeoutError, ConnectionError, httptools.HttpParserError) as e:
            state.fail_t.append(t0)
            state.fail_why[_error_name(e)] += 1
            if writer is not None:
                writer.transport.abort()
                writer = None
            await asyncio.sleep(spec.retry_pause)
    if writer is not None:
        writer.transport.abort()


async def _well_behaved_tunnel(state: _WorkerState, index: int) -> None:
    """One client downloading through a passthrough tunnel, politely, again and again.

    It sends its request, half-closes (it has nothing more to say, like ``nc -N``), reads the
    whole ``wb_tunnel_size`` body more slowly than the origin sends it (64 KiB receive buffer,
    32 KiB every 2 ms: about 16 MB/s, a fast WAN client) and expects a clean end of stream. A
    download that comes up short or ends in a reset is a failure. A new tunnel every time.
    """
    spec = state.spec
    target = f"{TUNNEL_HOST}:{spec.big_port}"
    connect = connect_request(target)
    request = f"GET /bytes/{spec.wb_tunnel_size} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    while time.monotonic() < state.wb_stop:
        t0 = time.monotonic()
        writer: asyncio.StreamWriter | None = None
        why = ""
        try:
            async with asyncio.timeout(spec.request_timeout):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, spec.proxy_port))
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(connect)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    why = "connect_" + head[9:12].decode("latin-1", "replace")
                else:
                    writer.write(request)
                    await writer.drain()
                    writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
                    head = await reader.readuntil(b"\r\n\r\n")
                    body = 0
                    while True:
                        data = await reader.read(32 * 1024)
                        if not data:
                            break
                        body += len(data)
                        await asyncio.sleep(0.002)  # a reader slower than the origin
                    if body != spec.wb_tunnel_size or not head.startswith(b"HTTP/1.1 200"):
                        why = f"short_clean_end_{body // 1024}KiB"
        except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            why = "truncated_" + _error_name(e)
        finally:
            if writer is not None:
                writer.transport.abort()
        if why:
            state.tun_fail_t.append(t0)
            state.tun_fail_why[why] += 1
            await asyncio.sleep(spec.retry_pause)
        else:
            state.tun_ok_t.append(t0)


async def _churn_client(
    state: _WorkerState, kind: str, contexts: dict[str, ssl.SSLContext], *, reset: bool = True
) -> str:
    """One churn client: start a big download, read a little, half-close, then reset.

    With ``reset=False`` (the preflight: can each kind get through at all?) it stops after the
    first read, without the half-close. Returns the outcome label (also counted in
    ``state.churn_outcomes`` when ``reset`` is set).
    """
    spec = state.spec
    writer: asyncio.StreamWriter | None = None
    stage = "connect"
    outcome = "?"
    try:
        async with asyncio.timeout(spec.churn_timeout):
            reader, writer = await asyncio.open_connection(LOOPBACK, spec.proxy_port)
            sock = writer.get_extra_info("socket")
            if kind == "http":
                target = f"127.0.0.1:{spec.big_port}"
                writer.write(f"GET http://{target}/big HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            else:
                if kind == "https":
                    target = f"{LOOPBACK}:{spec.tls_port}"
                else:
                    target = f"{TUNNEL_HOST}:{spec.big_port}"
                writer.write(connect_request(target))
                stage = "connect_response"
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    outcome = "connect_" + head[9:12].decode("latin-1", "replace")
                    return outcome
                if kind == "https":
                    stage = "tls"
                    await writer.start_tls(contexts[kind], server_hostname=LOOPBACK)
                # A tunnel is opaque: plain HTTP inside it reaches the origin unchanged.
                writer.write(f"GET /big HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            stage = "read"
            got = 0
            while got < spec.read_bytes:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed early")
                got += len(data)
            if not reset:
                outcome = "ok"
                return outcome
            stage = "half_close"
            sock.shutdown(socket.SHUT_WR)
            # Keep reading, so the proxy keeps writing towards us when the reset lands.
            outcome = "reset"
            delay = random.uniform(0, 2 * spec.reset_delay)
            deadline = time.monotonic() + delay
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(reader.read(65536), remaining)
                except TimeoutError:
                    break
                except (OSError, ssl.SSLError):
                    outcome = "reset_by_proxy"
                    break
                if not data:
                    outcome = "closed_by_proxy"
                    break
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()
            writer = None
            return outcome
    except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
        outcome = f"{stage}_{_error_name(e)}"
        return outcome
    except asyncio.CancelledError:
        outcome = f"{stage}_unfinished"
        raise
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()
        if reset:
            state.churn_outcomes[f"{kind}:{outcome}"] += 1


def _spawn_churn(state: _WorkerState, kind: str, contexts: dict[str, ssl.SSLContext]) -> None:
    """Start one churn client as a task (or count it as skipped if too many are in flight)."""
    if state.inflight >= state.spec.max_inflight:
        state.churn_skipped += 1
        return
    state.inflight += 1
    state.churn_started[kind] += 1

    async def run() -> None:
        try:
            await _churn_client(state, kind, contexts)
        finally:
            state.inflight -= 1

    task = asyncio.get_running_loop().create_task(run())
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """The whole load-generator run: preflight, warm-up, storm, settle. Returns the summary."""
    random.seed(spec.seed)
    state = _WorkerState(spec)
    contexts: dict[str, ssl.SSLContext] = {}
    if "https" in spec.kinds:
        contexts["https"] = ssl.create_default_context(cafile=spec.proxy_ca)
    preflight: dict[str, str] = {}
    if spec.preflight:
        for kind in spec.kinds:
            preflight[kind] = await _churn_client(state, kind, contexts, reset=False)
        if any(v != "ok" for v in preflight.values()):
            return {"preflight": preflight}

    phases = {"warmup": _phase("warmup")}
    state.wb_stop = phases["warmup"] + spec.warmup + spec.duration + spec.settle + 0.5
    loop = asyncio.get_running_loop()
    wb_tasks = [loop.create_task(_well_behaved(state, i)) for i in range(spec.well_behaved)]
    wb_tasks += [loop.create_task(_well_behaved_tunnel(state, i)) for i in range(spec.wb_tunnels)]
    await asyncio.sleep(spec.warmup)
    phases["storm"] = storm = _phase("storm")
    waves = 0
    if spec.kinds and spec.wave_size > 0:
        kinds = itertools.cycle(spec.kinds)
        max_waves = int(spec.duration / spec.wave_interval) + 1
        while waves < max_waves:
            now = time.monotonic()
            if now >= storm + spec.duration:
                break
            for _ in range(spec.wave_size):
                _spawn_churn(state, next(kinds), contexts)
            waves += 1
            next_wave = storm + waves * spec.wave_interval
            await asyncio.sleep(max(0.0, min(next_wave, storm + spec.duration) - now))
    else:
        await asyncio.sleep(spec.duration)
    phases["settle"] = _phase("settle")
    # Settle: well-behaved clients only. Ends early if the proxy died (nothing left to see).
    settle_end = phases["settle"] + spec.settle + 0.5
    while time.monotonic() < settle_end and proc_alive(spec.proxy_pid):
        await asyncio.sleep(min(0.2, max(0.0, settle_end - time.monotonic())))
    state.wb_stop = -math.inf
    leftovers = list(state.tasks)
    for task in leftovers:
        task.cancel()
    await asyncio.wait_for(
        asyncio.gather(*wb_tasks, *leftovers, return_exceptions=True), spec.request_timeout + 2
    )
    phases["done"] = _phase("done")
    with open(spec.out_path, "w") as f:
        json.dump(
            {
                "ok_t": state.ok_t,
                "ok_lat": state.ok_lat,
                "fail_t": state.fail_t,
                "fail_why": dict(state.fail_why),
                "tun_ok_t": state.tun_ok_t,
                "tun_fail_t": state.tun_fail_t,
                "tun_fail_why": dict(state.tun_fail_why),
            },
            f,
        )
    return {
        "preflight": preflight,
        "phases": phases,
        "waves": waves,
        "churn_started": dict(state.churn_started),
        "churn_outcomes": dict(state.churn_outcomes),
        "churn_skipped": state.churn_skipped,
        "requests": state.requests,
    }


def worker_main(spec_json: str) -> None:
    """Entry point of the worker process: run the spec, print the summary as one JSON line."""
    spec = WorkerSpec(**json.loads(spec_json))
    raise_fd_limit(spec.max_inflight * 2 + spec.well_behaved + 256)
    summary = asyncio.run(run_worker(spec))
    sys.stdout.write("RESULT " + json.dumps(summary) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Driver: proxy processes, sampling, metrics
# --------------------------------------------------------------------------------------------


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def scrape_metrics(admin_port: int, timeout: float = 3.0) -> dict[str, float]:
    """The proxy's ``/metrics`` as ``{"name{labels}": value}`` (comments skipped)."""
    result = http_request(
        LOOPBACK,
        admin_port,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        timeout=timeout,
    )
    if result.status != 200:
        raise RuntimeError(f"/metrics answered {result.status}")
    out = {}
    for line in result.body.decode("utf-8", "replace").splitlines():
        m = _METRIC_LINE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = float(m.group(2))
    return out


def _metric(metrics: dict[str, float] | None, name: str) -> int | None:
    """One metric as an int (None when there was no scrape or no such metric)."""
    if metrics is None or name not in metrics:
        return None
    return int(metrics[name])


SIGPIPE_RECEIVED = "interceptor_sigpipe_received_total"
SIGPIPE_ABORTS = "interceptor_sigpipe_handler_aborts_total"
CLIENTS_OPEN = 'interceptor_connections_open{side="client"}'


@dataclass
class Sample:
    """One reading of the proxy process."""

    t: float
    fds: int
    cpu: float
    rss: int
    hwm: int


def sample_proxy(pid: int) -> Sample | None:
    """Read fds, CPU, RSS and VmHWM of ``pid`` now; None if it is gone (or a zombie)."""
    if not proc_alive(pid):
        return None
    try:
        return Sample(
            time.monotonic(),
            proc_fd_count(pid),
            proc_cpu_seconds(pid),
            proc_rss_bytes(pid),
            proc_hwm_bytes(pid),
        )
    except (OSError, ValueError, IndexError):
        return None


def proxy_config(*, max_open_files: int | str = "hard", idle_timeout: float = 60.0) -> str:
    """The TOML the benchmark's proxies run with (environment variables carry the rest)."""
    limit = f'"{max_open_files}"' if isinstance(max_open_files, str) else str(max_open_files)
    return (
        "[proxy]\n"
        f"idle_timeout = {idle_timeout}\n"
        "shutdown_timeout = 1.0\n"
        "[upstream]\n"
        f'hosts = {{ "{TUNNEL_HOST}" = "{LOOPBACK}" }}\n'
        "[limits]\n"
        f"max_open_files = {limit}\n"
        "[log]\n"
        "access = false\n"
    )


@dataclass
class Env:
    """What every proxy start and worker run of one benchmark run share."""

    workdir: Path
    ca_dir: Path
    origin_root: Path
    small_port: int
    small_size: int
    big_port: int = 0
    tls_port: int = 0
    big_size: int = 10 * _MIB


class Proxy:
    """One proxy process started under the SIG_DFL launcher, with its admin port."""

    def __init__(
        self,
        env: Env,
        mode: str,
        name: str,
        *,
        passthrough: bool,
        config_text: str,
        backlog: int = 1024,
        startup_timeout: float = 30.0,
    ) -> None:
        self.mode = mode
        self.port = free_port()
        self.admin_port = free_port()
        self.workdir = env.workdir / name
        self.log_path = self.workdir / "proxy.log"
        child_env = dict(os.environ)
        child_env.update(
            {
                "INTERCEPTOR_PROXY_SIGPIPE": mode,
                "INTERCEPTOR_ADMIN_LISTEN": f"tcp:{self.admin_port}:interface={LOOPBACK}",
                "INTERCEPTOR_TLS_CA_DIR": str(env.ca_dir),
                "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(env.origin_root),
            }
        )
        if passthrough:
            child_env["INTERCEPTOR_TLS_PASSTHROUGH"] = TUNNEL_HOST
        else:
            child_env.pop("INTERCEPTOR_TLS_PASSTHROUGH", None)
        cmd = default_proxy_cmd([sys.executable, "-c", LAUNCHER], backlog=backlog)
        self.process = start_proxy(
            self.port,
            config_text,
            workdir=self.workdir,
            cmd=cmd,
            log_path=self.log_path,
            env=child_env,
        )
        self.pid = self.process.pid
        pin_proxy(self.pid)
        deadline = time.monotonic() + startup_timeout
        try:
            wait_for_port(LOOPBACK, self.port, deadline, process=self.process)
            wait_for_port(LOOPBACK, self.admin_port, deadline, process=self.process)
            wait_for_http_ok(LOOPBACK, self.admin_port, "/readyz", deadline)
            pin_proxy(self.pid)  # again, for any thread started meanwhile
        except (TimeoutError, ProcessExitedError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(
                f"the {mode} proxy did not come up: {e}\n--- {self.log_path} ---\n"
                + tail_text(self.log_path)
            ) from e

    def alive(self) -> bool:
        """Whether the proxy is still running (reaps it if it has died)."""
        return self.process.poll() is None

    def metrics(self) -> dict[str, float] | None:
        """A scrape of ``/metrics``, or None if the proxy is dead or does not answer."""
        if not self.alive():
            return None
        try:
            return scrape_metrics(self.admin_port)
        except (OSError, ConnectionError, RuntimeError, httptools.HttpParserError):
            return None

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL) and reap; returns the exit status."""
        return stop_process(self.process, timeout=5.0)


#: CPU sets: the proxy gets one core to itself, everything else (driver, origins, load
#: generator) shares the rest. Empty: no pinning (--no-pin, or a single CPU).
_PINNING: dict[str, set[int]] = {}


def setup_pinning(enabled: bool) -> str:
    """Pin this process (and so every child it starts) away from the proxy's core."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        _PINNING.clear()
        return "no CPU pinning"
    _PINNING["proxy"] = {cpus[0]}
    _PINNING["others"] = set(cpus[1:])
    os.sched_setaffinity(0, _PINNING["others"])
    return f"proxy pinned to CPU {cpus[0]}, the rest to CPU {','.join(map(str, cpus[1:]))}"


def pin_proxy(pid: int) -> None:
    """Move every thread of the proxy ``pid`` onto the proxy's CPU (if pinning is on)."""
    cpus = _PINNING.get("proxy")
    if not cpus:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def _describe_status(status: int | None) -> str:
    """An exit status in words: '-13 (SIGPIPE)', '0', ..."""
    if status is None:
        return "?"
    if status < 0:
        try:
            return f"{status} ({signal.Signals(-status).name})"
        except ValueError:
            return str(status)
    return str(status)


# --------------------------------------------------------------------------------------------
# One round
# --------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """One measured round of one mode."""

    mode: str
    round: int
    kinds: list[str]
    survived: bool
    exit_status: int | None
    died_after_s: float | None  # seconds after the storm started (None: survived)
    wb_ok: int
    wb_failed: int
    wb_fail_why: dict[str, int]
    tun_ok: int
    tun_failed: int
    tun_fail_why: dict[str, int]
    p50_ms: float
    p99_ms: float
    sigpipe_received: int | None
    sigpipe_aborts: int | None
    last_seen_sigpipe_received: int | None
    last_seen_sigpipe_aborts: int | None
    fds_before: int | None
    fds_peak: int | None
    fds_after: int | None
    cpu_s: float | None
    cpu_window_s: float | None
    cpu_s_per_1k: float | None
    peak_rss: int | None
    churn_started: dict[str, int]
    churn_outcomes: dict[str, int]
    churn_skipped: int
    proxy_aborts: dict[str, float]
    socket_states: dict[str, dict[str, int]]
    timeline: list[dict[str, float]]
    latencies: list[float] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The round as JSON-ready data (latencies as p50/p99 only; the timeline is kept)."""
        out = asdict(self)
        out.pop("latencies")
        return out


@dataclass
class WorkerRun:
    """What :func:`run_worker_process` gathered."""

    summary: dict[str, Any]
    samples: list[Sample]
    scrapes: list[tuple[float, dict[str, float]]]
    death: dict[str, Any]
    socket_states: dict[str, dict[str, int]]


def run_worker_process(
    spec: WorkerSpec, proxy: Proxy, log_path: Path, *, tick: float = 0.1, scrape_every: float = 1.0
) -> WorkerRun:
    """Run one worker against ``proxy`` while sampling the proxy every ``tick`` seconds.

    Also scrapes ``/metrics`` every ``scrape_every`` seconds from the churn on (so a proxy
    that dies leaves its last counters), and records the TCP states of the proxy's sockets
    just before the churn and ``spec.settle`` seconds after it. Bounded: the worker is killed
    if it overruns its schedule by 30 s.
    """
    limit = spec.warmup + spec.duration + spec.settle + spec.churn_timeout + 30
    samples: list[Sample] = []
    scrapes: list[tuple[float, dict[str, float]]] = []
    states: dict[str, dict[str, int]] = {}
    death: dict[str, Any] = {"status": None, "t": None}
    with open(log_path, "ab") as log:
        worker = spawn(
            self_command(__file__, "--worker", asdict(spec)), stdout=subprocess.PIPE, stderr=log
        )
    assert worker.stdout is not None
    fd = worker.stdout.fileno()
    poller = select.poll()  # not select(): the driver may hold 10,000 idle sockets
    poller.register(fd, select.POLLIN)
    buf = b""
    phases: dict[str, float] = {}
    result: dict[str, Any] | None = None
    started = time.monotonic()
    last_scrape = 0.0
    status: int | None = None
    try:
        while True:
            if time.monotonic() - started > limit:
                raise RuntimeError(f"the load generator overran its {limit:.0f} s budget")
            ready = poller.poll(tick * 1000)
            eof = False
            if ready:
                chunk = os.read(fd, 65536)
                eof = not chunk
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.startswith(b"PHASE "):
                        _, name, t = line.decode().split()
                        phases[name] = float(t)
                    elif line.startswith(b"RESULT "):
                        result = json.loads(line[7:])
            s = sample_proxy(proxy.pid)
            if s is not None:
                samples.append(s)
            elif death["t"] is None and not proxy.alive():
                death = {"status": proxy.process.returncode, "t": time.monotonic()}
            now = time.monotonic()
            alive = death["t"] is None
            with contextlib.suppress(OSError):
                if alive and "warmup" in phases and "before" not in states:
                    if now >= phases["warmup"] + spec.warmup - 2 * tick:
                        states["before"] = proc_socket_states(proxy.pid)
                if alive and "settle" in phases and "after" not in states:
                    if now >= phases["settle"] + spec.settle:
                        states["after"] = proc_socket_states(proxy.pid)
            if "storm" in phases and now - last_scrape >= scrape_every and alive:
                m = proxy.metrics()
                if m is not None:
                    scrapes.append((now, m))
                last_scrape = now
            if eof:
                break
        status = worker.wait(10)
    finally:
        stop_process(worker, timeout=2)
    if result is None or status != 0:
        raise RuntimeError(
            f"the load generator failed (status {status}); see {log_path}:\n" + tail_text(log_path)
        )
    result["phases"] = {**phases, **result.get("phases", {})}
    return WorkerRun(result, samples, scrapes, death, states)


def _worker_spec(proxy: Proxy, env: Env, out_path: Path, **options: Any) -> WorkerSpec:
    """A worker run through ``proxy`` to ``env``'s origins, writing to ``out_path``."""
    return WorkerSpec(
        proxy_port=proxy.port,
        proxy_pid=proxy.pid,
        small_port=env.small_port,
        small_size=env.small_size,
        out_path=str(out_path),
        **options,
    )


def _load_latencies(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    path.unlink()
    return data


def _window_stats(
    data: dict[str, Any], start: float, end: float
) -> tuple[int, int, Counter[str], list[float]]:
    """Well-behaved requests that started in [start, end).

    Returns (ok, failed, failure reasons over the whole run, latencies of the ok ones in s).
    """
    lat = [lt for t, lt in zip(data["ok_t"], data["ok_lat"], strict=True) if start <= t < end]
    failed = sum(1 for t in data["fail_t"] if start <= t < end)
    return len(lat), failed, Counter(data["fail_why"]), lat


def run_round(
    mode: str, round_no: int, env: Env, args: argparse.Namespace, *, preflight: bool
) -> RoundResult:
    """Start a proxy in ``mode``, run one worker through it, collect the numbers, stop it."""
    name = f"{mode}-{round_no}"
    kinds = list(args.kinds)
    proxy = Proxy(
        env,
        mode,
        name,
        passthrough="tunnel" in kinds or args.wb_tunnels > 0,
        config_text=proxy_config(),
        startup_timeout=args.startup_timeout,
    )
    try:
        check = http_request(
            LOOPBACK,
            proxy.port,
            (
                f"GET http://127.0.0.1:{env.small_port}/check HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{env.small_port}\r\nConnection: close\r\n\r\n"
            ).encode(),
            timeout=10,
        )
        if check.status != 200 or len(check.body) != env.small_size:
            raise RuntimeError(f"check request through the {mode} proxy answered {check.status}")
        out_path = proxy.workdir / "latencies.json"
        spec = _worker_spec(
            proxy,
            env,
            out_path,
            big_port=env.big_port,
            tls_port=env.tls_port,
            big_size=env.big_size,
            proxy_ca=str(env.ca_dir / "ca.pem"),
            origin_root=str(env.origin_root),
            kinds=kinds,
            well_behaved=args.well_behaved,
            wb_tunnels=args.wb_tunnels,
            wb_tunnel_size=args.wb_tunnel_size,
            warmup=args.warmup,
            duration=args.duration,
            settle=args.settle,
            wave_interval=args.wave_interval,
            wave_size=args.wave_size,
            read_bytes=args.read_bytes,
            reset_delay=args.reset_delay,
            max_inflight=args.max_inflight,
            preflight=preflight,
            seed=args.seed + round_no,
        )
        run = run_worker_process(spec, proxy, proxy.workdir / "worker.log")
        summary, samples, scrapes, death = run.summary, run.samples, run.scrapes, run.death
        if summary.get("preflight") and any(v != "ok" for v in summary["preflight"].values()):
            raise RuntimeError(
                f"preflight through the {mode} proxy failed: {summary['preflight']} "
                f"(proxy log: {proxy.log_path})"
            )
        final = proxy.metrics()  # just before the end
        last = sample_proxy(proxy.pid)
        if last is not None:
            samples.append(last)
        survived = proxy.alive()
        if not survived and death["t"] is None:
            death = {"status": proxy.process.returncode, "t": time.monotonic()}
    finally:
        status = proxy.stop()
    phases = summary["phases"]
    storm, settle = phases["storm"], phases["settle"]
    data = _load_latencies(out_path)
    window_end = settle if survived else min(settle, samples[-1].t if samples else storm)
    ok, failed, why, lat = _window_stats(data, storm, settle)
    p50, p99 = percentiles(lat, [50, 99])

    def sample_at_or_before(t: float) -> Sample | None:
        before = [s for s in samples if s.t <= t]
        return before[-1] if before else None

    def sample_at_or_after(t: float) -> Sample | None:
        after = [s for s in samples if s.t >= t]
        return after[0] if after else None

    s_before = sample_at_or_before(storm)
    s_end = sample_at_or_before(window_end)
    s_after = sample_at_or_after(settle + args.settle) if survived else None
    states = run.socket_states
    during = [s for s in samples if s.t >= storm]
    cpu = s_end.cpu - s_before.cpu if s_before and s_end else None
    ok_cpu_window = sum(1 for t in data["ok_t"] if storm <= t < window_end)
    last_seen = scrapes[-1][1] if scrapes else None
    aborts = {
        k[len('interceptor_aborts_total{reason="') : -2]: v
        for k, v in (final or last_seen or {}).items()
        if k.startswith("interceptor_aborts_total{")
    }
    return RoundResult(
        mode=mode,
        round=round_no,
        kinds=kinds,
        survived=survived,
        exit_status=None if survived else (death["status"] if death["t"] else status),
        died_after_s=None if survived or death["t"] is None else death["t"] - storm,
        wb_ok=ok,
        wb_failed=failed,
        wb_fail_why=dict(why),
        tun_ok=sum(1 for t in data["tun_ok_t"] if storm <= t < settle),
        tun_failed=sum(1 for t in data["tun_fail_t"] if storm <= t < settle),
        tun_fail_why=data["tun_fail_why"],
        p50_ms=p50 * 1e3,
        p99_ms=p99 * 1e3,
        sigpipe_received=_metric(final, SIGPIPE_RECEIVED),
        sigpipe_aborts=_metric(final, SIGPIPE_ABORTS),
        last_seen_sigpipe_received=_metric(last_seen, SIGPIPE_RECEIVED),
        last_seen_sigpipe_aborts=_metric(last_seen, SIGPIPE_ABORTS),
        fds_before=s_before.fds if s_before else None,
        fds_peak=max(s.fds for s in during) if during else None,
        fds_after=s_after.fds if s_after else None,
        cpu_s=cpu,
        cpu_window_s=s_end.t - s_before.t if s_before and s_end else None,
        # Only for a proxy that lasted the whole churn: a dead one's short window says nothing.
        cpu_s_per_1k=(
            cpu / ok_cpu_window * 1000 if survived and cpu is not None and ok_cpu_window else None
        ),
        peak_rss=max(s.hwm for s in samples) if samples else None,
        churn_started=summary["churn_started"],
        churn_outcomes=summary["churn_outcomes"],
        churn_skipped=summary["churn_skipped"],
        proxy_aborts=aborts,
        socket_states=states,
        timeline=[
            {"t": round(s.t - storm, 3), "fds": s.fds, "cpu": s.cpu, "rss": s.rss} for s in samples
        ],
        latencies=lat,
    )


# --------------------------------------------------------------------------------------------
# Summaries and output
# --------------------------------------------------------------------------------------------


def _sum_known(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max_known(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Aggregate the rounds of one mode."""
    lat: list[float] = []
    for r in rounds:
        lat.extend(r.latencies)
    p50, p99 = percentiles(lat, [50, 99])
    ok = sum(r.wb_ok for r in rounds)
    failed = sum(r.wb_failed for r in rounds)
    cpu = [r.cpu_s for r in rounds if r.cpu_s is not None and r.cpu_s_per_1k is not None]
    cpu_ok = sum(r.wb_ok for r in rounds if r.cpu_s is not None and r.cpu_s_per_1k is not None)
    busy = [(r.cpu_s, r.cpu_window_s) for r in rounds if r.cpu_s is not None and r.cpu_window_s]
    started: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    why: Counter[str] = Counter()
    tun_why: Counter[str] = Counter()
    for r in rounds:
        started.update(r.churn_started)
        outcomes.update(r.churn_outcomes)
        why.update(r.wb_fail_why)
        tun_why.update(r.tun_fail_why)
    tun_ok = sum(r.tun_ok for r in rounds)
    tun_failed = sum(r.tun_failed for r in rounds)
    leftovers = [
        r.fds_after - r.fds_before
        for r in rounds
        if r.fds_after is not None and r.fds_before is not None
    ]
    return {
        "rounds": len(rounds),
        "survived": sum(1 for r in rounds if r.survived),
        "exit_statuses": [r.exit_status for r in rounds if not r.survived],
        "died_after_s": [r.died_after_s for r in rounds if not r.survived],
        "kinds": sorted({k for r in rounds for k in r.kinds}, key=KINDS.index),
        "wb_ok": ok,
        "wb_failed": failed,
        "wb_fail_why": dict(why),
        "wb_success_pct": ok / (ok + failed) * 100 if ok + failed else None,
        "tun_ok": tun_ok,
        "tun_failed": tun_failed,
        "tun_fail_why": dict(tun_why),
        "tun_success_pct": tun_ok / (tun_ok + tun_failed) * 100 if tun_ok + tun_failed else None,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "p99_ms_per_round": [r.p99_ms for r in rounds],
        "proxy_cpu_pct": (
            sum(c for c, _ in busy) / sum(w for _, w in busy) * 100 if busy else None
        ),
        # Counters only from proxies alive at the end ("n/a" for dead ones).
        "sigpipe_received": _sum_known([r.sigpipe_received for r in rounds]),
        "sigpipe_aborts": _sum_known([r.sigpipe_aborts for r in rounds]),
        "sigpipe_received_last_seen_dead": _sum_known(
            [r.last_seen_sigpipe_received for r in rounds if not r.survived]
        ),
        "fds_before": _max_known([r.fds_before for r in rounds]),
        "fds_peak": _max_known([r.fds_peak for r in rounds]),
        "fds_after": _max_known([r.fds_after for r in rounds]),
        "fds_leftover": max(leftovers) if leftovers else None,
        "cpu_s_per_1k": sum(cpu) / cpu_ok * 1000 if cpu and cpu_ok else None,
        "peak_rss_mib": (
            _max_known([r.peak_rss for r in rounds]) / _MIB
            if _max_known([r.peak_rss for r in rounds]) is not None
            else None
        ),
        "churn_started": dict(started),
        "churn_total": sum(started.values()),
        "churn_outcomes": dict(outcomes),
    }


def _survival_text(s: dict[str, Any]) -> str:
    if s["survived"] == s["rounds"]:
        return f"yes ({s['survived']}/{s['rounds']})"
    deaths = ", ".join(
        f"{_describe_status(st)}" + (f" @{t:.1f}s" if t is not None else "")
        for st, t in zip(s["exit_statuses"], s["died_after_s"], strict=True)
    )
    return f"NO {s['survived']}/{s['rounds']}: {deaths}"


def _counter_text(s: dict[str, Any], key: str) -> str:
    value = s[key]
    dead = s["rounds"] - s["survived"]
    if value is None:
        return "n/a"
    return f"{value:,}" + (f" (+n/a x{dead})" if dead else "")


def _churn_text(s: dict[str, Any]) -> str:
    resets = sum(n for k, n in s["churn_outcomes"].items() if ":reset" in k or "_by_proxy" in k)
    return f"{s['churn_total']:,} ({resets:,} reset)"


#: (label, function of a mode summary -> cell text)
_ROWS: list[tuple[str, Any]] = [
    ("survived (exit status @ s into churn)", _survival_text),
    ("churn client kinds", lambda s: "+".join(s["kinds"]) or "none"),
    ("churn clients started (completed reset)", _churn_text),
    ("well-behaved HTTP ok / failed", lambda s: f"{s['wb_ok']:,} / {s['wb_failed']:,}"),
    ("well-behaved HTTP success (%)", lambda s: fmt_number(s["wb_success_pct"], 2)),
    (
        "  half-closing tunnel downloads ok / failed",
        lambda s: f"{s['tun_ok']:,} / {s['tun_failed']:,}" if "tun_ok" in s else None,
    ),
    ("  half-closing tunnel success (%)", lambda s: fmt_number(s.get("tun_success_pct"), 2)),
    ("well-behaved p50 (ms)", lambda s: fmt_number(s["p50_ms"], 2)),
    ("well-behaved p99 (ms)", lambda s: fmt_number(s["p99_ms"], 2)),
    (
        "  p99 of each round (ms)",
        lambda s: ", ".join(fmt_number(x, 1) or "-" for x in s["p99_ms_per_round"]),
    ),
    ("SIGPIPEs received (/metrics)", lambda s: _counter_text(s, "sigpipe_received")),
    ("SIGPIPE handler aborts", lambda s: _counter_text(s, "sigpipe_aborts")),
    ("fds before churn", lambda s: fmt_number(s["fds_before"])),
    ("fds peak", lambda s: fmt_number(s["fds_peak"])),
    ("fds settle s after churn", lambda s: fmt_number(s["fds_after"]) or "n/a"),
    ("fds left over (after - before, worst)", lambda s: fmt_number(s["fds_leftover"]) or "n/a"),
    ("proxy CPU s per 1,000 well-behaved", lambda s: fmt_number(s["cpu_s_per_1k"], 3)),
    ("proxy CPU during churn (% of a core)", lambda s: fmt_number(s["proxy_cpu_pct"], 0)),
    ("peak RSS, VmHWM (MiB)", lambda s: fmt_number(s["peak_rss_mib"], 1)),
]


def _cell(fn: Any, summary: dict[str, Any]) -> str | None:
    """One table cell; None ('-') when the summary lacks the figure (an older baseline)."""
    try:
        return fn(summary)
    except (KeyError, TypeError):
        return None


def print_summary(
    summary: dict[str, dict[str, Any]], settle: float, baseline: dict[str, Any] | None
) -> None:
    """The comparison table: one column per mode, plus a baseline column after each if given."""
    base = (baseline or {}).get("summary") or {}
    headers = ["metric"]
    for mode in MODES:
        if mode not in summary:
            continue
        headers.append(mode if mode != "inherit" else "inherit (SIG_DFL)")
        if base:
            headers.append(f"{mode} (baseline)")
    rows = []
    for label, fn in _ROWS:
        row: list[str | None] = [label.replace("settle s", f"{settle:g} s")]
        for mode in MODES:
            if mode not in summary:
                continue
            row.append(_cell(fn, summary[mode]))
            if base:
                row.append(_cell(fn, base[mode]) if mode in base else None)
        rows.append(row)
    print()
    print_table(rows, headers)


def verdict(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Plain statements the numbers support (printed under the table, stored in the JSON)."""
    lines = []
    for mode, s in summary.items():
        if s["survived"] < s["rounds"]:
            lines.append(
                f"{mode}: the proxy died in {s['rounds'] - s['survived']} of {s['rounds']} "
                f"round(s) ({', '.join(_describe_status(x) for x in s['exit_statuses'])})"
            )
    ig, cl = summary.get("ignore"), summary.get("close")
    if ig and cl:
        for key, what in (("p99_ms", "well-behaved p99"), ("cpu_s_per_1k", "CPU per 1k")):
            a, b = ig.get(key), cl.get(key)
            if a and b and not math.isnan(a) and not math.isnan(b):
                lines.append(f"close vs ignore, {what}: {(b / a - 1) * 100:+.1f}%")
        for mode, s in (("ignore", ig), ("close", cl)):
            if s.get("tun_failed"):
                lines.append(
                    f"{mode}: {s['tun_failed']} of {s['tun_ok'] + s['tun_failed']} healthy "
                    f"half-closing tunnel downloads failed: {s['tun_fail_why']}"
                )
        if cl.get("sigpipe_received") is not None:
            lines.append(
                f"close: {cl['sigpipe_received']:,} SIGPIPEs handled, "
                f"{cl['sigpipe_aborts'] or 0:,} connections aborted by the handler"
            )
    return lines


def write_plot(rounds: list[RoundResult], path: Path, duration: float) -> str:
    """Descriptors over time per mode and well-behaved latency per mode, as a PNG.

    Returns a line saying where the plot went, or why there is none.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot: skipped (matplotlib is not installed; pip install -e '.[bench]')"
    colors = {"ignore": "tab:blue", "close": "tab:green", "inherit": "tab:red"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for r in rounds:
        ts = [p["t"] for p in r.timeline]
        fds = [p["fds"] for p in r.timeline]
        label = f"{r.mode} #{r.round}" + ("" if r.survived else " (died)")
        ax1.plot(ts, fds, color=colors[r.mode], linestyle=["-", "--", ":", "-."][r.round % 4 - 1])
        ax1.lines[-1].set_label(label)
        if not r.survived and ts:
            ax1.plot([ts[-1]], [fds[-1]], marker="X", markersize=11, color=colors[r.mode])
    ax1.axvspan(0, duration, color="0.9", zorder=0, label="churn")
    ax1.set_xlabel("seconds since churn started")
    ax1.set_ylabel("proxy open fds (/proc/PID/fd)")
    ax1.set_title("descriptors (X: proxy died)")
    ax1.legend(fontsize=7)
    data, labels = [], []
    for mode in MODES:
        lat = [x * 1e3 for r in rounds if r.mode == mode for x in r.latencies]
        if lat:
            data.append(lat)
            died = any(not r.survived for r in rounds if r.mode == mode)
            labels.append(mode + ("\n(until it died)" if died else ""))
    if data:
        ax2.boxplot(data, whis=(1, 99), showfliers=False)
        ax2.set_xticks(range(1, len(labels) + 1), labels)
        ax2.set_yscale("log")
    ax2.set_ylabel("well-behaved latency during churn (ms, whiskers p1/p99)")
    ax2.set_title("well-behaved requests")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


# --------------------------------------------------------------------------------------------
# --idle-cost
# --------------------------------------------------------------------------------------------


def open_idle_connections(
    proxy: Proxy, n: int, budget: float, batch: int = 500
) -> tuple[list[socket.socket], float]:
    """Open ``n`` idle TCP connections to the proxy within ``budget`` seconds.

    Waits after each batch until the proxy has accepted most of it (its fd count), so the
    listen backlog never overflows. Returns the sockets and the seconds it took.
    """
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    deadline = t0 + budget
    base = proc_fd_count(proxy.pid)
    try:
        while len(socks) < n:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"opened only {len(socks):,} of {n:,} idle connections")
            for _ in range(min(batch, n - len(socks))):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
                try:
                    s.connect((LOOPBACK, proxy.port))
                except OSError:
                    s.close()
                    raise
                socks.append(s)
            while time.monotonic() < deadline:
                if proc_fd_count(proxy.pid) >= base + len(socks) - batch // 10:
                    break
                time.sleep(0.01)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks, time.monotonic() - t0


def close_all(socks: list[socket.socket]) -> None:
    """Close the idle connections (normally: FIN)."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
    socks.clear()


def quiet_cpu_rate(pid: int, seconds: float) -> float:
    """CPU seconds per second the proxy uses while nobody talks to it."""
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (proc_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def kill_burst(proxy: Proxy, kills: int, interval: float, background: float) -> dict[str, Any]:
    """Send SIGPIPE to the proxy ``kills`` times, ``interval`` apart; measure its CPU.

    Returns the signals sent, the handler runs counted in ``/metrics`` (pending signals
    coalesce, so runs <= kills), and the proxy's CPU beyond its quiet rate, per run and per
    signal sent.
    """
    m0 = proxy.metrics()
    c0, t0 = proc_cpu_seconds(proxy.pid), time.monotonic()
    for i in range(kills):
        os.kill(proxy.pid, signal.SIGPIPE)
        pause = t0 + (i + 1) * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    time.sleep(0.2)  # let the last handler runs happen
    c1, t1 = proc_cpu_seconds(proxy.pid), time.monotonic()
    m1 = proxy.metrics()
    runs = None
    if m0 is not None and m1 is not None:
        runs = int(m1.get(SIGPIPE_RECEIVED, 0) - m0.get(SIGPIPE_RECEIVED, 0))
    extra = max(0.0, c1 - c0 - background * (t1 - t0))
    return {
        "kills": kills,
        "seconds": t1 - t0,
        "handler_runs": runs,
        "cpu_s": c1 - c0,
        "cpu_extra_s": extra,
        "us_per_run": extra / runs * 1e6 if runs else None,
        "us_per_kill": extra / kills * 1e6,
        "alive": proxy.alive(),
    }


def idle_probe(proxy: Proxy, env: Env, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Well-behaved clients only (no churn) for ``--idle-probe`` seconds: latency and CPU."""
    out_path = proxy.workdir / f"probe-{tag}.json"
    spec = _worker_spec(
        proxy,
        env,
        out_path,
        well_behaved=args.well_behaved,
        warmup=0.5,
        duration=args.idle_probe,
        settle=0.0,
        seed=args.seed,
    )
    run = run_worker_process(spec, proxy, proxy.workdir / "worker.log", scrape_every=1e9)
    summary, samples = run.summary, run.samples
    phases = summary["phases"]
    data = _load_latencies(out_path)
    ok, failed, _, lat = _window_stats(data, phases["storm"], phases["settle"])
    inside = [s for s in samples if phases["storm"] <= s.t <= phases["settle"]]
    cpu = inside[-1].cpu - inside[0].cpu if len(inside) >= 2 else None
    p50, p99 = percentiles(lat, [50, 99])
    return {
        "ok": ok,
        "failed": failed,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "cpu_s_per_1k": cpu / ok * 1000 if cpu is not None and ok else None,
    }


def run_idle_cost(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--idle-cost`` measurement for ``close`` (and ``ignore`` as the reference)."""
    n = args.idle_connections
    raise_fd_limit(n + 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n + 256:
        raise RuntimeError(
            f"this process may open only {soft} files (hard limit {hard}); "
            f"--idle-connections {n} needs about {n + 256}"
        )
    proxy_limit = n + 1024 if hard == resource.RLIM_INFINITY else min(n + 1024, hard)
    results: dict[str, Any] = {}
    for mode in ("close", "ignore"):
        print(f"idle-cost: {mode} ...", flush=True)
        proxy = Proxy(
            env,
            mode,
            f"idle-{mode}",
            passthrough=False,
            config_text=proxy_config(max_open_files=proxy_limit, idle_timeout=600.0),
            backlog=4096,
            startup_timeout=args.startup_timeout,
        )
        socks: list[socket.socket] = []
        try:
            r: dict[str, Any] = {"mode": mode, "idle_target": n}
            r["quiet_cpu_rate_0"] = bg0 = quiet_cpu_rate(proxy.pid, 1.0)
            r["kills_0_idle"] = kill_burst(proxy, args.kills, args.kill_interval, bg0)
            r["probe_0_idle"] = idle_probe(proxy, env, args, "0")
            fds0 = proc_fd_count(proxy.pid)
            cpu0 = proc_cpu_seconds(proxy.pid)
            socks, took = open_idle_connections(proxy, n, args.idle_open_budget)
            time.sleep(0.5)
            m = proxy.metrics()
            r["open_seconds"] = took
            r["cpu_us_per_accept"] = (proc_cpu_seconds(proxy.pid) - cpu0) / n * 1e6
            r["fds_with_idle"] = proc_fd_count(proxy.pid)
            r["fds_without_idle"] = fds0
            r["clients_open"] = _metric(m, CLIENTS_OPEN)
            r["quiet_cpu_rate_idle"] = bg1 = quiet_cpu_rate(proxy.pid, 1.0)
            r["kills_idle"] = kill_burst(proxy, args.kills, args.kill_interval, bg1)
            r["probe_idle"] = idle_probe(proxy, env, args, "idle")
            r["peak_rss_mib"] = proc_hwm_bytes(proxy.pid) / _MIB
            r["alive"] = proxy.alive()
            print(
                f"  {n:,} idle connections opened in {took:.1f} s "
                f"(proxy: {r['clients_open']} clients open, {r['fds_with_idle']:,} fds)",
                flush=True,
            )
        finally:
            close_all(socks)
            proxy.stop()
        results[mode] = r
    return results


def print_idle_cost(res: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """The ``--idle-cost`` table."""
    base = (baseline or {}).get("idle_cost") or {}
    n = res["close"]["idle_target"]

    def per_run(r: dict[str, Any], key: str) -> str | None:
        k = r[key]
        if k["handler_runs"]:
            return f"{k['us_per_run']:.1f} ({k['handler_runs']:,} runs)"
        return f"{k['us_per_kill']:.2f} per kill (0 runs)"

    rows_def: list[tuple[str, Any]] = [
        ("SIGPIPE, 0 idle: µs proxy CPU per handler run", lambda r: per_run(r, "kills_0_idle")),
        (
            f"SIGPIPE, {n:,} idle: µs proxy CPU per handler run",
            lambda r: per_run(r, "kills_idle"),
        ),
        ("signals sent per burst", lambda r: fmt_number(r["kills_idle"]["kills"])),
        (f"time to open {n:,} idle (s)", lambda r: fmt_number(r["open_seconds"], 1)),
        ("proxy CPU per accepted idle conn (µs)", lambda r: fmt_number(r["cpu_us_per_accept"], 1)),
        (
            "proxy clients open / fds with idle",
            lambda r: f"{fmt_number(r['clients_open'])} / {fmt_number(r['fds_with_idle'])}",
        ),
        ("well-behaved p50 / p99, 0 idle (ms)", lambda r: _probe_text(r["probe_0_idle"])),
        (f"well-behaved p50 / p99, {n:,} idle (ms)", lambda r: _probe_text(r["probe_idle"])),
        (
            "CPU s per 1k well-behaved, 0 idle",
            lambda r: fmt_number(r["probe_0_idle"]["cpu_s_per_1k"], 3),
        ),
        (
            f"CPU s per 1k well-behaved, {n:,} idle",
            lambda r: fmt_number(r["probe_idle"]["cpu_s_per_1k"], 3),
        ),
        ("peak RSS (MiB)", lambda r: fmt_number(r["peak_rss_mib"], 1)),
        ("survived", lambda r: "yes" if r["alive"] else "NO"),
    ]
    headers = ["metric", "close", "ignore"]
    if base:
        headers += ["close (baseline)", "ignore (baseline)"]
    rows = []
    for label, fn in rows_def:
        row = [label, _cell(fn, res["close"]), _cell(fn, res["ignore"])]
        if base:
            row += [_cell(fn, base[m]) if m in base else None for m in ("close", "ignore")]
        rows.append(row)
    print()
    print_table(rows, headers)


def _probe_text(p: dict[str, Any]) -> str:
    text = f"{fmt_number(p['p50_ms'], 2)} / {fmt_number(p['p99_ms'], 2)}"
    return text + (f" ({p['failed']} failed)" if p["failed"] else "")


# --------------------------------------------------------------------------------------------
# Command line and main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(
            "Compare the proxy's SIGPIPE policies (ignore, close, inherit under SIG_DFL) under "
            "churn of half-close-then-reset clients. Loopback only."
        )
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of churn per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the churn")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds after the churn for fds to come back"
    )
    parser.add_argument("--well-behaved", type=int, default=4, help="well-behaved clients")
    parser.add_argument(
        "--wb-tunnels",
        type=int,
        default=2,
        help="well-behaved clients downloading through passthrough tunnels, half-closing after "
        "the request and expecting the whole body and a clean end (0: none)",
    )
    parser.add_argument(
        "--wb-tunnel-size", type=int, default=8 * _MIB, help="their download size in bytes"
    )
    parser.add_argument("--small-size", type=int, default=4096, help="well-behaved body bytes")
    parser.add_argument("--big-size", type=int, default=10 * _MIB, help="churn download bytes")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated churn client kinds from http,https,tunnel (default: all)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated modes to compare, from ignore,close,inherit (default: all)",
    )
    parser.add_argument("--wave-interval", type=float, default=0.1, help="seconds between waves")
    parser.add_argument("--wave-size", type=int, default=6, help="churn clients per wave")
    parser.add_argument(
        "--read-bytes", type=int, default=64 * 1024, help="bytes a churn client reads first"
    )
    parser.add_argument(
        "--reset-delay",
        type=float,
        default=0.05,
        help="mean seconds between half-close and reset (uniform 0..2x)",
    )
    parser.add_argument(
        "--max-inflight", type=int, default=256, help="cap on churn clients in flight"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (reset delays)")
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="proxy start budget")
    parser.add_argument("--json", help="results file (default bench/results/sigpipe_modes.json)")
    parser.add_argument("--plot", default=str(DEFAULT_PNG), help="PNG plot path ('' for no plot)")
    parser.add_argument("--baseline", help="an earlier results JSON to compare with")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the proxy to one CPU and everything else to the others",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and temp files")
    idle = parser.add_argument_group("--idle-cost (a separate measurement)")
    idle.add_argument(
        "--idle-cost",
        action="store_true",
        help="measure close mode's cost with many idle connections instead of the churn run "
        "(JSON default bench/results/sigpipe_idle_cost.json)",
    )
    idle.add_argument("--idle-connections", type=int, default=10_000, help="idle connections")
    idle.add_argument(
        "--idle-open-budget", type=float, default=60.0, help="seconds allowed to open them"
    )
    idle.add_argument("--kills", type=int, default=4000, help="SIGPIPEs sent per burst")
    idle.add_argument(
        "--kill-interval", type=float, default=0.0005, help="seconds between SIGPIPEs"
    )
    idle.add_argument(
        "--idle-probe", type=float, default=2.0, help="seconds of well-behaved load per probe"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.origin:
        return args
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if any(k not in KINDS for k in kinds):
        parser.error(f"--kinds: choose from {','.join(KINDS)}")
    args.kinds = [k for k in KINDS if k in kinds]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    args.modes = [m for m in MODES if m in modes]
    checks = [
        (1 <= args.rounds <= 20, "--rounds must be 1..20"),
        (0 < args.duration <= 600, "--duration must be in (0, 600]"),
        (0 <= args.warmup <= 60, "--warmup must be in [0, 60]"),
        (0 <= args.settle <= 120, "--settle must be in [0, 120]"),
        (1 <= args.well_behaved <= 256, "--well-behaved must be 1..256"),
        (1 <= args.small_size <= 16 * _MIB, "--small-size must be 1..16 MiB"),
        (1 <= args.big_size <= 1024 * _MIB, "--big-size must be 1..1024 MiB"),
        (0.005 <= args.wave_interval <= 10, "--wave-interval must be in [0.005, 10]"),
        (0 <= args.wave_size <= 1000, "--wave-size must be 0..1000"),
        (1 <= args.read_bytes <= args.big_size, "--read-bytes must be 1..--big-size"),
        (0 <= args.wb_tunnels <= 64, "--wb-tunnels must be 0..64"),
        (1 <= args.wb_tunnel_size <= args.big_size, "--wb-tunnel-size must be 1..--big-size"),
        (0 <= args.reset_delay <= 5, "--reset-delay must be in [0, 5]"),
        (1 <= args.max_inflight <= 4096, "--max-inflight must be 1..4096"),
        (100 <= args.idle_connections <= 50_000, "--idle-connections must be 100..50000"),
        (1 <= args.idle_open_budget <= 600, "--idle-open-budget must be in [1, 600]"),
        (1 <= args.kills <= 100_000, "--kills must be 1..100000"),
        (0.0001 <= args.kill_interval <= 0.1, "--kill-interval must be in [0.0001, 0.1]"),
        (0.5 <= args.idle_probe <= 60, "--idle-probe must be in [0.5, 60]"),
    ]
    check_args(parser, checks)
    if args.json is None:
        args.json = str(DEFAULT_IDLE_JSON if args.idle_cost else DEFAULT_JSON)
    return args


def _params(args: argparse.Namespace) -> dict[str, Any]:
    keys = [
        "modes", "rounds", "duration", "warmup", "settle", "well_behaved", "wb_tunnels",
        "wb_tunnel_size", "small_size", "big_size",
        "kinds", "wave_interval", "wave_size", "read_bytes", "reset_delay", "max_inflight",
        "seed", "no_pin", "idle_connections", "kills", "kill_interval", "idle_probe",
    ]  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def _sockets_text(states: dict[str, int] | None) -> str:
    """The proxy's TCP sockets by state, e.g. 'ESTABLISHED 4, CLOSE_WAIT 2' (others left out)."""
    if not states:
        return "?"
    return ", ".join(f"{k} {n}" for k, n in sorted(states.items()) if not k.startswith("other:"))


def _round_line(r: RoundResult, total_rounds: int) -> str:
    """One line per round, printed as soon as the round is over."""
    state = (
        "survived"
        if r.survived
        else f"DIED {_describe_status(r.exit_status)}"
        + (f" {r.died_after_s:.2f} s into churn" if r.died_after_s is not None else "")
    )
    sig = "n/a" if r.sigpipe_received is None else f"{r.sigpipe_received:,}"
    ab = "n/a" if r.sigpipe_aborts is None else f"{r.sigpipe_aborts:,}"
    if r.sigpipe_received is None and r.last_seen_sigpipe_received is not None:
        sig += f" (last scraped {r.last_seen_sigpipe_received:,})"
    churn = ", ".join(f"{k} {r.churn_started.get(k, 0)}" for k in r.kinds)
    bad = {
        k: n
        for k, n in r.churn_outcomes.items()
        if not k.endswith((":reset", ":reset_by_proxy", ":closed_by_proxy"))
    }
    line = (
        f"round {r.round}/{total_rounds} {r.mode:>7}: {state}; well-behaved {r.wb_ok:,} ok / "
        f"{r.wb_failed:,} failed, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms; SIGPIPE {sig}, "
        f"handler aborts {ab}; half-closing tunnel downloads {r.tun_ok} ok / {r.tun_failed} "
        f"failed{' ' + str(r.tun_fail_why) if r.tun_failed else ''}; "
        f"fds {fmt_number(r.fds_before)}/{fmt_number(r.fds_peak)}/"
        f"{fmt_number(r.fds_after) or 'n/a'}; churn {churn}"
    )
    if bad:
        line += f"\n    churn clients that did not reach their reset: {bad}"
    if r.fds_after is not None and r.fds_before is not None and r.fds_after > r.fds_before:
        line += (
            f"\n    fds did not come back: proxy sockets before "
            f"[{_sockets_text(r.socket_states.get('before'))}], after "
            f"[{_sockets_text(r.socket_states.get('after'))}]"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    if args.origin:
        o = json.loads(args.origin)
        asyncio.run(_serve_streaming_origin(o["size"], o["cert"], o["key"]))
        return 0
    baseline = load_baseline(args.baseline, _params(args))

    origins: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="bench-sigpipe-")
    workdir = Path(tmp)
    rounds: list[RoundResult] = []
    idle_results: dict[str, Any] | None = None
    started = time.monotonic()
    load_at_start = load_average()
    try:
        pinning = setup_pinning(not args.no_pin)
        # The leaf names 127.0.0.1 (the intercepted CONNECT target, checked by the proxy's
        # upstream side) and TUNNEL_HOST (checked by the tunnel clients themselves).
        root, cert, key = make_origin_certs(
            workdir / "pki", root_cn="sigpipe bench origin root", dns_names=(TUNNEL_HOST,)
        )
        small, small_port = start_origin(args.small_size)
        origins.append(small)
        env = Env(
            workdir=workdir,
            ca_dir=workdir / "ca",
            origin_root=root,
            small_port=small_port,
            small_size=args.small_size,
            big_size=args.big_size,
        )
        if not args.idle_cost:
            big, env.big_port = start_streaming_origin(args.big_size, workdir / "origin-big.log")
            origins.append(big)
            tls, env.tls_port = start_streaming_origin(
                args.big_size, workdir / "origin-tls.log", cert, key
            )
            origins.append(tls)
        print(
            f"origins: small {args.small_size} B on :{env.small_port}"
            + (
                f", big {args.big_size:,} B on :{env.big_port}, TLS {args.big_size:,} B on "
                f":{env.tls_port}"
                if not args.idle_cost
                else ""
            )
            + f"; {os.cpu_count()} CPUs, {pinning}; proxies start with SIGPIPE at SIG_DFL"
        )
        note = load_note(load_at_start)
        if note:
            print(note)
        if args.idle_cost:
            idle_results = run_idle_cost(env, args)
        else:
            print(
                f"churn: {args.wave_size} clients every {args.wave_interval:g} s for "
                f"{args.duration:g} s, kinds {'+'.join(args.kinds) or 'none'}; "
                f"well-behaved: {args.well_behaved} HTTP keep-alive clients ({args.small_size} B), "
                f"{args.wb_tunnels} half-closing tunnel downloaders ({args.wb_tunnel_size:,} B); "
                f"{args.rounds} round(s) of "
                f"{', '.join(args.modes)}",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                for mode in args.modes:
                    r = run_round(
                        mode, round_no, env, args, preflight=(round_no == 1 and not rounds)
                    )
                    rounds.append(r)
                    print(_round_line(r, args.rounds), flush=True)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"(logs kept in {workdir})", file=sys.stderr)
        args.keep_workdir = True
        return 2
    except KeyboardInterrupt:
        print("interrupted; stopping the children", file=sys.stderr)
        return 130
    finally:
        for p in origins:
            stop_process(p)
        if not args.keep_workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}")

    results: dict[str, Any] = {
        **results_header("sigpipe_modes"),
        "params": _params(args),
        "wall_seconds": time.monotonic() - started,
        "load_average": {"start": load_at_start, "end": load_average()},
    }
    if idle_results is not None:
        print_idle_cost(idle_results, baseline)
        results["idle_cost"] = idle_results
    else:
        summary = {m: summarize([r for r in rounds if r.mode == m]) for m in args.modes}
        print_summary(summary, args.settle, baseline)
        lines = verdict(summary)
        for line in lines:
            print(line)
        results["summary"] = summary
        results["verdict"] = lines
        results["rounds"] = [r.to_json() for r in rounds]
        if args.plot:
            print(write_plot(rounds, Path(args.plot), args.duration))
    json_path = write_json(args.json, results)
    print(f"results: {json_path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
