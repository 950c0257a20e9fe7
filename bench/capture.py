"""Capture benchmark: what recording every flow to the store costs the proxy, and what it keeps.

Four sections, each selectable with ``--only`` (default: all, in this order), and a fifth,
``instr``, only when asked for (it needs valgrind):

``cpu``
    Proxy CPU per request with capture off and with capture on, side by side. Two proxies of
    this tree run for the whole section (``off``: no ``[capture] store``; ``on``: a fresh store
    in the run's temporary directory), both with the same config otherwise. Each round sends
    the same keep-alive GET load (``--clients`` connections, one request outstanding each, at
    most ``--requests`` requests and ``--duration`` seconds) to each of them in turn, the order
    swapped every other round; first with ``--small-size`` (1 KiB) bodies, then with
    ``--body-size`` (100 KiB) ones. The proxy's CPU (utime + stime of all its threads, from
    ``/proc/PID/stat``) is read before the round and after it once the capture writer has
    caught up (its ``written + dropped + failed`` counters, from the admin ``/metrics``, reach
    the requests completed), so the writer thread's work is billed to the round that caused
    it. The table gives µs per request for each, on/off, the goal (on <= 1.5x off), and the
    CPU split between the proxy's main thread (the reactor, where the capture addon builds
    each record) and its other threads (the writer's, from ``/proc/PID/task/TID/stat``).
``writer``
    Flows per second the store's ``Writer`` sustains, driven directly in this process (no
    proxy, no sockets): records shaped like the capture addon's (heads, sizes, timings) with a
    response body of 0 B (what the proxy stores of a streamed body today: nothing), 1 KiB and
    ``--body-size``, for at most ``--writer-seconds`` and ``--writer-max`` records per run. The
    Writer is made as the service makes it (queue of 1000 records / 64 MiB of bodies, a
    write every 0.5 s or at a quarter of a queue, 1 GiB ``max_bytes``), so a full queue
    drops. Three producers per body size:
    ``flood`` puts records back to back and loses the refused ones (a CPU-bound thread beside
    the writer, as a saturated reactor is: they share the GIL); ``capacity`` sleeps 1 ms when
    a put is refused and offers the record again, so the writer runs flat out and nothing is
    lost (its written/s is the most it can do); ``paced`` puts records at ``--writer-pace``
    fractions (0.5, 0.8) of that capacity, the test of "sustains without dropping": stalls
    (a commit, a WAL checkpoint) longer than the 1000-record queue lasts drop even below
    capacity. Reported: offered and written per second, body MiB/s, the writer thread's CPU
    per record (``/proc/self/task/TID/stat``), drops, the record at which the first was, and
    how long ``close()`` took to write what was queued. Drops in the proxy itself are in the
    other sections' tables (``dropped``: the delta of ``interceptor_capture_dropped_total`` /
    ``interceptor_capture_flows_total{result="dropped"}`` from the admin ``/metrics``).
``rss``
    Proxy RSS and VmHWM before and after ``--flows`` (20,000) keep-alive GETs of
    ``--body-size`` response bodies, capture on, and the same with capture off as the baseline.
    A fresh proxy each (VmHWM never goes down), warmed with a few hundred of the same requests,
    its RSS read after a pause; the "after" figures once the writer has caught up.
``instr``
    ``bench/instructions.py`` twice, capture off and on (a store in the run's directory): the
    user-space instructions the whole proxy process (writer thread included) executes per
    keep-alive GET. On a 2-core machine the ``cpu`` rounds swing by 20% and more, because the
    proxy's two threads, the load generator and the origin share two cores; the counts do
    not, so this is the figure to settle the 1.5x goal by.
``posts``
    ``--posts`` (3,000) POSTs of ``--body-size`` bodies through one keep-alive connection,
    capture on (and off, the baseline): a fresh proxy each, RSS before and after, then the
    proxy is stopped with SIGTERM (the service closes the writer on shutdown, which writes what
    is queued) and the rows in the store are counted. Goals: at least 99% of the POSTs captured,
    and RSS growth under 40 MiB.

Every table with capture on gives the stored body bytes per flow (``LENGTH(request_body)`` and
``LENGTH(response_body)`` in the store): the proxy stores a body only when it held one anyway
(for a ``request``/``response`` hook), so with no addon these are 0 today; once bodies are
tapped as they stream (up to ``[capture] body_limit``) they will show here, and so will what
that costs in CPU, drops and memory. To see that before the taps land, run it with
``INTERCEPTOR_HOOKS_SCRIPTS=examples/demo.py``: both proxies then load the demo addon, which
makes them hold (and so store) every body. The ``rows`` column can be lower than ``written``:
past ``[capture] max_bytes`` (1 GiB) of stored bodies the writer prunes the oldest flows.

Processes: the origin (this file with a hidden ``--origin-worker`` flag: asyncio and httptools,
it reads each request whole, Content-Length body included, before it answers 200 with a fixed
octet-stream body), the proxies (twistd, each with its own CA dir, config and admin listener on
a free loopback port, access log off unless ``--access-log``), and one load generator per
measurement (this file with ``--loadgen-worker``: ``bench/throughput.py``'s asyncio clients).
The proxies inherit the environment (so ``INTERCEPTOR_HOOKS_SCRIPTS=examples/demo.py`` would
make them hold bodies), except the capture store, the admin listener and the CA dir, which
this benchmark sets.

Run from the repository root::

    .venv/bin/python bench/capture.py                       # all four sections, ~2 minutes
    .venv/bin/python bench/capture.py --quick               # a smoke run of every section
    .venv/bin/python bench/capture.py --only cpu,posts --posts 1000
    .venv/bin/python bench/capture.py --only writer --body-size 1048576

Results go to ``bench/results/capture.json`` (``--json``). Exit status: 0; 1 with ``--check``
when a goal is not met; 2 when a proxy did not start or a load run failed.

Not a test: pytest never runs it. Loopback only; every load loop is bounded in count and time,
and nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
from _common import (
    LOOPBACK,
    REPO_ROOT,
    access_log_config,
    default_proxy_cmd,
    fmt_number,
    fmt_ratio,
    free_port,
    http_request,
    load_average,
    load_note,
    origin_body,
    percentiles,
    print_table,
    proc_cpu_seconds,
    proc_hwm_bytes,
    proc_rss_bytes,
    read_float_array,
    require_loopback,
    results_header,
    self_command,
    serve_until_stopped,
    start_port_reporter,
    start_proxy_on_free_port,
    stop_process,
    tail_text,
    wait_for_proxy,
    write_json,
)
from throughput import LoadSpec, loadgen_worker_main, run_loadgen

# This tree's store, whatever copy of the package is installed.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from interceptor.capture.store import FlowRecord, Writer  # noqa: E402

DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "capture.json"
SECTIONS = ("cpu", "writer", "rss", "posts")
#: Also selectable, not run by default: it needs valgrind and takes a minute or two.
EXTRA_SECTIONS = ("instr",)
KiB = 1024
MiB = 1024 * 1024

#: Goals ("done when").
GOAL_CPU_RATIO = 1.5
GOAL_CAPTURED = 0.99
GOAL_POSTS_RSS_MIB = 40.0

#: The proxy's queue bounds and write interval, as the service makes its Writer (store.py).
WRITER_QUEUE_SIZE = 1000
WRITER_QUEUE_BYTES = 64 * MiB
WRITER_INTERVAL = 0.5
WRITER_MAX_BYTES = 1 << 30  # [capture] max_bytes default

#: Response body of the POST origin.
POST_RESPONSE_SIZE = 1024

#: The knobs whose defaults depend on --quick: (full run, quick run).
DEFAULTS: dict[str, tuple[float, float]] = {
    "requests": (20_000, 1_000),
    "duration": (4.0, 0.5),
    "rounds": (2, 1),
    "flows": (20_000, 500),
    "posts": (3_000, 100),
    "writer_seconds": (3.0, 0.25),
    "writer_max": (200_000, 20_000),
    "warmup": (300, 20),
}


# --------------------------------------------------------------------------------------------
# The origin (its own process)
# --------------------------------------------------------------------------------------------


class _OriginCounters:
    __slots__ = ("requests", "body_bytes")

    def __init__(self) -> None:
        self.requests = 0
        self.body_bytes = 0


class _Origin(asyncio.Protocol):
    """Reads each request whole (httptools), then answers it with a fixed response."""

    def __init__(self, response: bytes, counters: _OriginCounters) -> None:
        self.response = response
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.abort()

    def on_body(self, body: bytes) -> None:
        self.counters.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.counters.requests += 1
        assert self.transport is not None
        self.transport.write(self.response)


async def _serve_origin(size: int, max_lifetime: float) -> None:
    body = origin_body(size)
    response = (
        b"HTTP/1.1 200 OK\r\n" + body.headers() + b"Connection: keep-alive\r\n\r\n" + body.wire
    )
    counters = _OriginCounters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Origin(response, counters), LOOPBACK, 0, backlog=1024, reuse_address=True
    )
    await serve_until_stopped(server, max_lifetime)


def origin_worker_main(payload: str) -> None:
    """Entry point of the origin process: serve ``{"size": N}`` until told to stop."""
    spec = json.loads(payload)
    asyncio.run(_serve_origin(int(spec["size"]), float(spec.get("max_lifetime", 3600))))


def start_origin(size: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start an origin that answers every request with a ``size``-byte body; (process, port)."""
    return start_port_reporter(
        self_command(__file__, "--origin-worker", {"size": size}), what="the origin"
    )


# --------------------------------------------------------------------------------------------
# Proxies
# --------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """One started proxy of this tree: capture on (``store`` set) or off."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    store: Path | None
    log: Path
    desc: str

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        return self.process.pid

    def metrics(self) -> dict[str, float]:
        """The admin ``/metrics`` samples, by name with labels (``a_total{x="y"}``)."""
        request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        result = http_request(LOOPBACK, self.admin_port, request, timeout=5)
        if result.status != 200:
            raise RuntimeError(f"{self.name} proxy: /metrics answered {result.status}")
        samples: dict[str, float] = {}
        for line in result.body.decode("utf-8", "replace").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    samples[name] = float(value)
                except ValueError:
                    continue
        return samples

    def capture_counts(self) -> dict[str, int]:
        """The writer's counters: written, dropped and failed (all 0 with capture off)."""
        samples = self.metrics()
        return {
            result: int(samples.get(f'interceptor_capture_flows_total{{result="{result}"}}', 0))
            for result in ("written", "dropped", "failed")
        }

    def settle(self, expected: int, timeout: float = 30.0) -> tuple[dict[str, int], bool]:
        """Wait (bounded) until the writer has handled ``expected`` flows in all.

        Returns its counters and whether they got there. With capture off, at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            counts = self.capture_counts()
            if self.store is None or sum(counts.values()) >= expected:
                return counts, True
            if time.monotonic() >= deadline:
                return counts, False
            time.sleep(0.05)


def proxy_env(workdir: Path, store: Path | None, admin_port: int) -> dict[str, str]:
    """The proxy's environment: ours, with the CA dir, admin listener and store set here."""
    env = dict(os.environ)
    env["INTERCEPTOR_TLS_CA_DIR"] = str(workdir / "ca")
    env["INTERCEPTOR_ADMIN_LISTEN"] = f"tcp:{admin_port}:interface={LOOPBACK}"
    env["INTERCEPTOR_CAPTURE_STORE"] = str(store) if store is not None else ""
    return env


def start_proxies(
    names: Sequence[str], workdir: Path, args: argparse.Namespace, started: list[Proxy]
) -> list[Proxy]:
    """Start a proxy per name (``off``: no capture; ``on``: a fresh store); wait for all.

    They start at the same time (start-up is not measured) and each is appended to
    ``started`` at once, so the caller stops whatever was started even if one fails.
    """
    proxies = []
    for name in names:
        pdir = workdir / f"proxy-{name}-{len(started)}"
        pdir.mkdir()
        store = pdir / "flows.db" if name == "on" else None
        admin_port = free_port()
        process, port, desc = start_proxy_on_free_port(
            default_proxy_cmd(),
            access_log_config(args.access_log),
            workdir=pdir,
            log_path=pdir / "proxy.log",
            env=proxy_env(pdir, store, admin_port),
        )
        proxy = Proxy(name, process, port, admin_port, store, pdir / "proxy.log", desc)
        started.append(proxy)
        proxies.append(proxy)
    for proxy in proxies:
        try:
            deadline = wait_for_proxy(
                LOOPBACK, proxy.port, args.startup_timeout, proxy.process, f"the {proxy.name} proxy"
            )
            wait_for_proxy(
                LOOPBACK,
                proxy.admin_port,
                max(1.0, deadline - time.monotonic()),
                proxy.process,
                f"the {proxy.name} proxy's admin listener",
            )
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its output ends:\n{tail_text(proxy.log, 15)}") from None
        print(
            f"proxy {proxy.name}: {proxy.desc}" + (f", store {proxy.store}" if proxy.store else "")
        )
    return proxies


def stop_proxy(proxy: Proxy) -> int | None:
    """SIGTERM the proxy and wait for it (the writer writes what is queued, then closes)."""
    status = stop_process(proxy.process, timeout=30)
    if status not in (0, None, -signal.SIGTERM):
        print(f"note: the {proxy.name} proxy (pid {proxy.pid}) exited with status {status}")
    return status


def store_stats(path: Path | None, url_part: str | None = None) -> dict[str, Any] | None:
    """Rows and stored body bytes in the store at ``path`` (those whose URL has ``url_part``).

    None without a store. Read-only, so it may run while the proxy writes.
    """
    if path is None:
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        where, params = ("WHERE instr(url, ?) > 0", (url_part,)) if url_part else ("", ())
        rows, req, resp, req_cut, resp_cut = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(request_body)), 0), "
            "COALESCE(SUM(LENGTH(response_body)), 0), COALESCE(SUM(request_cut), 0), "
            f"COALESCE(SUM(response_cut), 0) FROM flows {where}",
            params,
        ).fetchone()
    finally:
        db.close()
    return {
        "rows": rows,
        "request_body_bytes": req,
        "response_body_bytes": resp,
        "request_body_per_flow": req / rows if rows else None,
        "response_body_per_flow": resp / rows if rows else None,
        "request_cut": req_cut,
        "response_cut": resp_cut,
        "file_bytes": sum(
            p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()
        ),
    }


# --------------------------------------------------------------------------------------------
# Load through a proxy
# --------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid``'s main thread (the reactor's) and of its other threads.

    From ``/proc/PID/task/TID/stat``; a thread that ended since is missing from the second
    figure (the proxy's writer and thread pool threads live as long as it does).
    """
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            data = (task / "stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        if task.name == str(pid):
            main += seconds
        else:
            other += seconds
    return main, other


def get_request(origin_port: int, path: str = "/x") -> bytes:
    """A proxy-form keep-alive GET of ``path`` for the origin on ``origin_port``."""
    return (
        f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin_port}\r\n\r\n"
    ).encode()


def post_request(origin_port: int, size: int, path: str = "/upload") -> bytes:
    """A proxy-form keep-alive POST of a ``size``-byte octet-stream body to ``path``."""
    head = (
        f"POST http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin_port}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    return head + origin_body(size).content


@dataclass
class LoadResult:
    """One load run through one proxy, with the proxy's CPU and the writer's counters."""

    proxy: str
    label: str
    requests: int
    issued: int
    elapsed: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    cpu_s: float
    reactor_cpu_s: float
    settled: bool
    capture: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_us_per_request(self) -> float | None:
        """Proxy CPU per completed request, in µs."""
        return self.cpu_s / self.requests * 1e6 if self.requests else None

    @property
    def reactor_us_per_request(self) -> float | None:
        """The proxy's main (reactor) thread's CPU per completed request, in µs."""
        return self.reactor_cpu_s / self.requests * 1e6 if self.requests else None

    @property
    def error_count(self) -> int:
        """Failed requests of all kinds."""
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """The run as JSON-ready data."""
        return {
            **asdict(self),
            "cpu_us_per_request": self.cpu_us_per_request,
            "reactor_us_per_request": self.reactor_us_per_request,
        }


def run_load(
    proxy: Proxy,
    label: str,
    request: bytes,
    response_size: int,
    *,
    clients: int,
    max_requests: int,
    duration: float,
    workdir: Path,
) -> LoadResult:
    """One load-generator process against ``proxy``: at most ``max_requests`` and ``duration``.

    The proxy's CPU is read just before it starts and after it has finished and the capture
    writer has caught up with the flows (bounded), so the writer's work counts too.
    """
    before = proxy.capture_counts()
    latency_path = workdir / f"latencies-{proxy.name}-{uuid.uuid4().hex[:8]}.bin"
    spec = LoadSpec(
        host=LOOPBACK,
        port=proxy.port,
        request=request.decode("latin-1"),
        size=response_size,
        clients=clients,
        duration=duration,
        max_requests=max_requests,
        latency_path=str(latency_path),
    )
    cpu0 = proc_cpu_seconds(proxy.pid)
    main0, _ = proc_cpu_split(proxy.pid)
    summary = run_loadgen(__file__, spec, duration)
    expected = sum(before.values()) + summary["issued"]
    counts, settled = proxy.settle(expected)
    cpu1 = proc_cpu_seconds(proxy.pid)
    main1, _ = proc_cpu_split(proxy.pid)
    if proxy.process.poll() is not None:
        raise RuntimeError(f"the {proxy.name} proxy exited with status {proxy.process.returncode}")
    latencies = read_float_array(latency_path, missing_ok=True)
    p50, p99 = percentiles(latencies, [50, 99]) if latencies else (None, None)
    return LoadResult(
        proxy=proxy.name,
        label=label,
        requests=summary["requests"],
        issued=summary["issued"],
        elapsed=summary["elapsed"],
        rps=summary["requests"] / summary["elapsed"] if summary["elapsed"] > 0 else 0.0,
        p50_ms=p50 * 1e3 if p50 is not None else None,
        p99_ms=p99 * 1e3 if p99 is not None else None,
        errors=summary["errors"],
        cpu_s=cpu1 - cpu0,
        reactor_cpu_s=main1 - main0,
        settled=settled,
        capture={k: counts[k] - before[k] for k in counts},
    )


def load_line(r: LoadResult) -> str:
    """One progress line for a load run."""
    cap = (
        f", written {r.capture['written']:,}, dropped {r.capture['dropped']:,}"
        if r.proxy == "on"
        else ""
    )
    return (
        f"  {r.label:<18} capture {r.proxy:<3}: {r.requests:,} requests in {r.elapsed:.1f} s "
        f"({r.rps:,.0f}/s), proxy CPU {fmt_number(r.cpu_us_per_request) or '-'} µs/req "
        f"(reactor thread {fmt_number(r.reactor_us_per_request) or '-'}){cap}"
        + (f", errors {r.errors}" if r.error_count else "")
        + ("" if r.settled else ", WRITER DID NOT CATCH UP")
    )


def mib(value: float | None, signed: bool = False) -> str | None:
    """Bytes as MiB for a table."""
    if value is None:
        return None
    return f"{value / MiB:+,.1f}" if signed else f"{value / MiB:,.1f}"


def per_flow(stats: Mapping[str, Any] | None, key: str) -> str | None:
    """A store's stored body bytes per flow (``key``: request or response), for a table."""
    if stats is None or stats.get(f"{key}_body_per_flow") is None:
        return None
    return f"{stats[f'{key}_body_per_flow']:,.0f}"


def verdict(met: bool | None) -> str | None:
    """MET / NOT MET / - for a table."""
    return None if met is None else ("MET" if met else "NOT MET")


# --------------------------------------------------------------------------------------------
# Section: cpu
# --------------------------------------------------------------------------------------------


def section_cpu(args: argparse.Namespace, workdir: Path, started: list[Proxy]) -> dict[str, Any]:
    """Capture off and on, the same keep-alive GET load, interleaved rounds; see the docstring."""
    sizes = [args.small_size] + ([args.body_size] if args.body_size != args.small_size else [])
    origins = {}
    try:
        for size in sizes:
            origins[size] = start_origin(size)
        off, on = start_proxies(("off", "on"), workdir, args, started)
        proxies = {"off": off, "on": on}
        for size in sizes:
            for proxy in (off, on):
                warm = run_load(
                    proxy, "warm-up", get_request(origins[size][1]), size,
                    clients=args.clients, max_requests=int(args.warmup), duration=5.0,
                    workdir=workdir,
                )  # fmt: skip
                if warm.error_count or not warm.requests:
                    raise RuntimeError(f"warm-up through the {proxy.name} proxy: {warm.errors}")
        print(
            f"cpu: {args.clients} keep-alive clients, at most {int(args.requests):,} requests "
            f"and {args.duration:g} s per run, {int(args.rounds)} round(s)"
        )
        runs: list[tuple[int, int, LoadResult]] = []
        for round_no in range(1, int(args.rounds) + 1):
            for size in sizes:
                order = ("off", "on") if round_no % 2 else ("on", "off")
                for name in order:
                    r = run_load(
                        proxies[name], f"round {round_no} {size:,} B",
                        get_request(origins[size][1]), size,
                        clients=args.clients, max_requests=int(args.requests),
                        duration=args.duration, workdir=workdir,
                    )  # fmt: skip
                    print(load_line(r))
                    runs.append((size, round_no, r))
        stored = {size: store_stats(on.store, f":{origins[size][1]}/") for size in sizes}
    finally:
        for proxy in [p for p in started if p.process.poll() is None]:
            stop_proxy(proxy)
        for process, _ in origins.values():
            stop_process(process)

    summary: dict[str, Any] = {}
    for size in sizes:
        per: dict[str, Any] = {}
        for name in ("off", "on"):
            rs = [r for s, _, r in runs if s == size and r.proxy == name]
            requests = sum(r.requests for r in rs)
            cpu = sum(r.cpu_s for r in rs)
            reactor = sum(r.reactor_cpu_s for r in rs)
            elapsed = sum(r.elapsed for r in rs)
            per[name] = {
                "requests": requests,
                "rps": requests / elapsed if elapsed else None,
                "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
                "reactor_us_per_request": reactor / requests * 1e6 if requests else None,
                "errors": sum(r.error_count for r in rs),
                "written": sum(r.capture.get("written", 0) for r in rs),
                "dropped": sum(r.capture.get("dropped", 0) for r in rs),
                "failed": sum(r.capture.get("failed", 0) for r in rs),
                "settled": all(r.settled for r in rs),
            }
        a, b = per["on"]["cpu_us_per_request"], per["off"]["cpu_us_per_request"]
        ratio = a / b if a is not None and b else None
        errors = per["on"]["errors"] + per["off"]["errors"]
        summary[str(size)] = {
            **per,
            "ratio_on_over_off": ratio,
            "met": None if ratio is None else (ratio <= GOAL_CPU_RATIO and not errors),
            "store": stored[size],
        }

    rows = []
    for size in sizes:
        s = summary[str(size)]
        for name in ("off", "on"):
            p = s[name]
            rows.append([
                f"{size:,} B", name, fmt_number(p["requests"]), fmt_number(p["rps"], 0),
                fmt_number(p["cpu_us_per_request"]),
                fmt_ratio(p["cpu_us_per_request"], s["off"]["cpu_us_per_request"])
                if name == "on" else None,
                verdict(s["met"]) if name == "on" else None,
                fmt_number(p["reactor_us_per_request"]),
                fmt_number(p["cpu_us_per_request"] - p["reactor_us_per_request"])
                if p["cpu_us_per_request"] is not None else None,
                fmt_number(p["written"]) if name == "on" else None,
                fmt_number(p["dropped"]) if name == "on" else None,
                per_flow(s["store"], "response") if name == "on" else None,
                fmt_number(p["errors"]),
            ])  # fmt: skip
    print()
    print("cpu: proxy CPU per request, capture off and on (same run, interleaved rounds)")
    print_table(
        rows,
        ["body", "capture", "requests", "req/s", "CPU µs/req", "on/off",
         f"goal <= {GOAL_CPU_RATIO}x", "reactor thr µs", "other thr µs", "written", "dropped",
         "stored resp B/flow", "errors"],
    )  # fmt: skip
    return {
        "sizes": sizes,
        "runs": [{"size": s, "round": n, **r.to_json()} for s, n, r in runs],
        "summary": summary,
    }


# --------------------------------------------------------------------------------------------
# Section: writer
# --------------------------------------------------------------------------------------------

_REQUEST_HEADERS = (
    ("Host", "127.0.0.1:8000"),
    ("User-Agent", "bench-capture/1"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),
)
_RESPONSE_HEADERS = (
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "0"),
    ("Connection", "keep-alive"),
)


def make_record(n: int, body: bytes | None, size: int, now: float) -> FlowRecord:
    """A record shaped like the one the capture addon makes of a keep-alive GET."""
    return FlowRecord(
        id=uuid.uuid4().hex,
        kind="http",
        started=now,
        ended=now + 0.0005,
        client="127.0.0.1:40000",
        server="127.0.0.1:8000",
        method="GET",
        url=f"http://127.0.0.1:8000/x/{n}",
        host="127.0.0.1",
        http_version="HTTP/1.1",
        request_headers=_REQUEST_HEADERS,
        status=200,
        reason="OK",
        response_headers=_RESPONSE_HEADERS,
        response_body=body,
        response_size=size,
        timings={"start": now, "request_end": now, "response_start": now, "end": now + 0.0005},
    )


def thread_cpu_seconds(native_id: int | None) -> float | None:
    """CPU seconds of one of this process's threads (None if it cannot be read)."""
    if native_id is None:
        return None
    try:
        data = Path(f"/proc/self/task/{native_id}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


#: The writer section's producers: name -> what the table calls it.
PRODUCERS = {
    "flood": "flood (spins)",
    "capacity": "capacity (waits)",
    "paced": "paced",
}


def drive_writer(
    path: Path,
    body_size: int,
    seconds: float,
    max_records: int,
    producer: str,
    pace: float | None = None,
) -> dict[str, Any]:
    """Put records with ``body_size``-byte bodies into a fresh Writer at ``path``.

    ``producer``: ``flood`` puts records back to back, a refused one is lost (a CPU-bound
    thread beside the writer, as a saturated reactor is); ``capacity`` sleeps 1 ms when a put
    is refused and offers the same record again, so nothing is lost and the writer runs as fast
    as it can (its sustained rate); ``paced`` puts ``pace`` records a second. At most
    ``max_records`` records and ``seconds`` seconds; then ``close()`` (bounded) and the figures.
    """
    writer = Writer(
        str(path),
        queue_size=WRITER_QUEUE_SIZE,
        queue_bytes=WRITER_QUEUE_BYTES,
        interval=WRITER_INTERVAL,
        max_bytes=WRITER_MAX_BYTES,
    )
    native_id = writer._thread.native_id
    body = origin_body(body_size).content if body_size else None
    offered = 0
    refused = 0
    first_drop: int | None = None
    cpu0 = thread_cpu_seconds(native_id)
    start = time.perf_counter()
    end = start + seconds
    now = start
    record = make_record(0, body, body_size, time.time())
    while offered < max_records and now < end:
        if producer == "paced" and pace is not None and offered >= pace * (now - start):
            time.sleep(0.0005)
            now = time.perf_counter()
            continue
        if writer.put(record):
            offered += 1
            record = make_record(offered, body, body_size, time.time())
        elif producer == "capacity":
            refused += 1
            time.sleep(0.001)
        else:
            if first_drop is None:
                first_drop = offered
            offered += 1
            record = make_record(offered, body, body_size, time.time())
        if producer != "flood" or offered % 64 == 0:
            now = time.perf_counter()
    window = time.perf_counter() - start
    written_in_window = writer.written
    cpu1 = thread_cpu_seconds(native_id)
    t0 = time.perf_counter()
    writer.close(timeout=60)
    drain = time.perf_counter() - t0
    writer_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return {
        "producer": producer,
        "body_size": body_size,
        "pace": pace,
        "offered": offered,
        "seconds": window,
        "offered_per_s": offered / window if window else None,
        "written_in_window": written_in_window,
        "written_per_s": written_in_window / window if window else None,
        "body_mib_per_s": written_in_window * body_size / window / MiB if window else None,
        "writer_thread_cpu_s": writer_cpu,
        "writer_us_per_record": writer_cpu / written_in_window * 1e6
        if writer_cpu is not None and written_in_window
        else None,
        # With the capacity producer, refused puts are offered again: not lost, not drops.
        "dropped": writer.dropped - refused,
        "refused_and_retried": refused,
        "failed": writer.failed,
        "first_drop_at": first_drop,
        "written_total": writer.written,
        "close_s": drain,
        "closed": not writer._thread.is_alive(),
    }


def section_writer(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The Writer alone: flooded, at capacity, then paced below capacity; see the docstring."""
    sizes = sorted({0, args.small_size, args.body_size})
    runs = []
    print(
        f"writer: in-process Writer (queue {WRITER_QUEUE_SIZE} records / "
        f"{WRITER_QUEUE_BYTES // MiB} MiB, every {WRITER_INTERVAL:g} s), at most "
        f"{args.writer_seconds:g} s and {int(args.writer_max):,} records per run, "
        f"store in {workdir}"
    )
    for size in sizes:
        wdir = workdir / f"writer-{size}"
        wdir.mkdir()
        bounds = (args.writer_seconds, int(args.writer_max))
        mine = [
            drive_writer(wdir / "flood.db", size, *bounds, "flood"),
            drive_writer(wdir / "capacity.db", size, *bounds, "capacity"),
        ]
        rate = mine[-1]["written_per_s"]
        for fraction in args.writer_paces if rate else []:
            mine.append(
                drive_writer(wdir / f"paced-{fraction}.db", size, *bounds, "paced", rate * fraction)
            )
            mine[-1]["pace_fraction"] = fraction
        for r in mine:
            r["mode"] = PRODUCERS[r["producer"]] + (
                f" {r['pace_fraction']:g}x = {r['pace']:,.0f}/s" if r["producer"] == "paced" else ""
            )
            print(
                f"  {size:>9,} B {r['mode']:<22}: offered {r['offered']:,} "
                f"({r['offered_per_s']:,.0f}/s), written {r['written_per_s']:,.0f}/s, "
                f"dropped {r['dropped']:,}, close {r['close_s']:.2f} s"
            )
        runs += mine
    rows = [
        [
            f"{r['body_size']:,} B", r["mode"], fmt_number(r["offered"]),
            fmt_number(r["offered_per_s"], 0), fmt_number(r["written_per_s"], 0),
            fmt_number(r["body_mib_per_s"]), fmt_number(r["writer_us_per_record"]),
            fmt_number(r["dropped"]), fmt_number(r["first_drop_at"]),
            fmt_number(r["close_s"], 2),
        ]
        for r in runs
    ]  # fmt: skip
    print()
    print("writer: flows/s the store's Writer sustains (in-process, no proxy)")
    print_table(
        rows,
        ["body", "producer", "offered", "offered/s", "written/s", "body MiB/s",
         "writer µs/rec", "dropped", "first drop at", "close s"],
    )  # fmt: skip
    capacity = {r["body_size"]: r["written_per_s"] for r in runs if r["producer"] == "capacity"}
    return {"runs": runs, "capacity_per_s": capacity}


# --------------------------------------------------------------------------------------------
# Sections: rss and posts (a fresh proxy per mode)
# --------------------------------------------------------------------------------------------


def memory(pid: int, pause: float) -> tuple[int, int]:
    """RSS and VmHWM of ``pid`` after ``pause`` seconds."""
    time.sleep(pause)
    return proc_rss_bytes(pid), proc_hwm_bytes(pid)


def memory_run(
    proxy: Proxy,
    label: str,
    request: bytes,
    warm_request: bytes,
    response_size: int,
    count: int,
    clients: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """Warm ``proxy`` up, read its memory, run ``count`` requests, read it again.

    The warm-up sends ``warm_request`` (the same but for its path, so that the store's rows
    of the measured flows can be told apart).
    """
    warm = run_load(
        proxy, "warm-up", warm_request, response_size, clients=clients,
        max_requests=int(args.warmup), duration=10.0, workdir=workdir,
    )  # fmt: skip
    if warm.error_count or not warm.requests:
        raise RuntimeError(f"warm-up through the {proxy.name} proxy: {warm.errors}")
    rss0, hwm0 = memory(proxy.pid, args.settle)
    r = run_load(
        proxy, label, request, response_size, clients=clients, max_requests=count,
        duration=args.max_seconds, workdir=workdir,
    )  # fmt: skip
    print(load_line(r))
    rss1, hwm1 = memory(proxy.pid, args.settle)
    return {
        "proxy": proxy.name,
        "warmup_requests": warm.requests,
        "warmup_capture": warm.capture,
        "load": r.to_json(),
        "rss_before": rss0,
        "hwm_before": hwm0,
        "rss_after": rss1,
        "hwm_after": hwm1,
        "rss_growth": rss1 - rss0,
        "hwm_growth": hwm1 - hwm0,
        "flows_total": warm.issued + r.issued,
    }


def section_rss(args: argparse.Namespace, workdir: Path, started: list[Proxy]) -> dict[str, Any]:
    """RSS before and after ``--flows`` 100 KiB downloads, capture off then on."""
    origin, port = start_origin(args.body_size)
    results: dict[str, Any] = {}
    print(
        f"rss: {int(args.flows):,} keep-alive GETs of {args.body_size:,} B through a fresh "
        f"proxy, {args.clients} clients, capture off and on"
    )
    try:
        # Fresh proxies for this section, started together (start-up is not measured); each
        # waits idle in epoll, costing nothing, while the other is measured.
        for proxy in start_proxies(("off", "on"), workdir, args, started):
            name = proxy.name
            try:
                res = memory_run(
                    proxy, f"{int(args.flows):,} GETs", get_request(port),
                    get_request(port, "/warm"), args.body_size, int(args.flows), args.clients,
                    args, workdir,
                )  # fmt: skip
            finally:
                stop_proxy(proxy)
            res["store"] = store_stats(proxy.store, "/x")
            results[name] = res
    finally:
        stop_process(origin)
    rows = [memory_row(results[n], n) for n in ("off", "on") if n in results]
    print()
    print(f"rss: proxy memory over {int(args.flows):,} flows of {args.body_size:,}-byte responses")
    print_table(rows, MEMORY_HEADERS)
    if "on" in results and "off" in results:
        diff = results["on"]["rss_growth"] - results["off"]["rss_growth"]
        print(f"capture on minus off: RSS growth {mib(diff, signed=True)} MiB")
    return results


MEMORY_HEADERS = [
    "capture", "requests", "errors", "RSS before MiB", "RSS after MiB", "RSS growth MiB",
    "HWM before MiB", "HWM after MiB", "CPU µs/req", "written", "dropped", "rows",
    "stored req B/flow", "stored resp B/flow",
]  # fmt: skip


def memory_row(res: Mapping[str, Any], name: str) -> list[str | None]:
    """A table row of a memory run (rss or posts)."""
    load = res["load"]
    store = res.get("store")
    on = name == "on"
    return [
        name, fmt_number(load["requests"]), fmt_number(sum(load["errors"].values())),
        mib(res["rss_before"]), mib(res["rss_after"]), mib(res["rss_growth"], signed=True),
        mib(res["hwm_before"]), mib(res["hwm_after"]), fmt_number(load["cpu_us_per_request"]),
        fmt_number(load["capture"].get("written")) if on else None,
        fmt_number(load["capture"].get("dropped")) if on else None,
        fmt_number(store["rows"]) if store else None,
        per_flow(store, "request"), per_flow(store, "response"),
    ]  # fmt: skip


def section_posts(args: argparse.Namespace, workdir: Path, started: list[Proxy]) -> dict[str, Any]:
    """``--posts`` POSTs through one keep-alive connection, capture off then on."""
    origin, port = start_origin(POST_RESPONSE_SIZE)
    request = post_request(port, args.body_size)
    results: dict[str, Any] = {}
    print(
        f"posts: {int(args.posts):,} POSTs of {args.body_size:,} B through one keep-alive "
        "connection, a fresh proxy each, capture off and on"
    )
    try:
        # Fresh proxies for this section, started together (start-up is not measured); each
        # waits idle in epoll, costing nothing, while the other is measured.
        for proxy in start_proxies(("off", "on"), workdir, args, started):
            name = proxy.name
            try:
                res = memory_run(
                    proxy, f"{int(args.posts):,} POSTs", request,
                    post_request(port, args.body_size, "/warm"), POST_RESPONSE_SIZE,
                    int(args.posts), 1, args, workdir,
                )  # fmt: skip
            finally:
                # SIGTERM: the service closes the writer, which writes what is still queued.
                res_status = stop_proxy(proxy)
            res["exit_status"] = res_status
            store = store_stats(proxy.store, "/upload")
            res["store"] = store
            if store is not None:
                posts = res["load"]["requests"]
                captured = store["rows"]  # of /upload: the warm-up POSTed to /warm
                res["captured"] = captured
                res["captured_fraction"] = captured / posts if posts else None
            results[name] = res
    finally:
        stop_process(origin)
    rows = []
    for name in ("off", "on"):
        if name not in results:
            continue
        res = results[name]
        frac = res.get("captured_fraction")
        rows.append(
            [
                *memory_row(res, name),
                fmt_number(res.get("captured")),
                f"{frac * 100:.2f}%" if frac is not None else None,
                verdict(posts_captured_met(res)) if name == "on" else None,
                verdict(posts_rss_met(res)) if name == "on" else None,
            ]
        )
    print()
    print(
        f"posts: {int(args.posts):,} POSTs of {args.body_size:,} B through one connection "
        "(rows counted after SIGTERM)"
    )
    print_table(
        rows,
        [*MEMORY_HEADERS, "captured", "captured %", f"goal >= {GOAL_CAPTURED:.0%}",
         f"goal < {GOAL_POSTS_RSS_MIB:g} MiB"],
    )  # fmt: skip
    return results


def posts_captured_met(res: Mapping[str, Any]) -> bool | None:
    """Whether at least 99% of the POSTs were captured (None: capture off or not run)."""
    frac = res.get("captured_fraction")
    if frac is None:
        return None
    return frac >= GOAL_CAPTURED and not sum(res["load"]["errors"].values())


def posts_rss_met(res: Mapping[str, Any]) -> bool:
    """Whether the proxy's RSS grew by less than 40 MiB over the POSTs."""
    return bool(res["rss_growth"] < GOAL_POSTS_RSS_MIB * MiB)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def section_instr(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """User-space instructions per keep-alive GET, capture off and on, from bench/instructions.py
    (callgrind): unlike CPU time on a shared 2-core machine, the same run after run."""
    script = Path(__file__).with_name("instructions.py")
    counts: dict[str, float] = {}
    for label in ("off", "on"):
        env = {k: v for k, v in os.environ.items() if k != "INTERCEPTOR_CAPTURE_STORE"}
        if label == "on":
            env["INTERCEPTOR_CAPTURE_STORE"] = str(workdir / "instr-flows.db")
        out = workdir / f"instr-{label}.json"
        cmd = [sys.executable, str(script), "--mode", "plain", "--repeat", "1",
               "--requests", "1000", "--warmup", "200", "--size", str(args.small_size),
               "--json", str(out)]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"bench/instructions.py failed: {done.stderr.strip()[-500:]}")
        counts[label] = json.loads(out.read_text())["summary"]["plain"]["proxy"]["median"]
        print(f"  capture {label}: {counts[label]:,.0f} instructions/request", flush=True)
    ratio = counts["on"] / counts["off"]
    print(f"\ninstr: instructions per {args.small_size:,} B keep-alive GET (callgrind)")
    print_table(
        [
            ["off", f"{counts['off']:,.0f}", "-", "-"],
            ["on", f"{counts['on']:,.0f}", f"{ratio:.2f}x", verdict(ratio <= GOAL_CPU_RATIO)],
        ],
        ["capture", "instructions/request", "on/off", f"goal <= {GOAL_CPU_RATIO}x"],
    )
    return {"instructions": counts, "ratio_on_over_off": ratio}


def goals(results: Mapping[str, Any], args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    """The "done when" lines and whether each was met (None: its section was not run)."""
    out: list[tuple[str, bool | None]] = []
    instr = results.get("instr")
    if instr is not None:
        ratio = instr["ratio_on_over_off"]
        out.append(
            (
                f"proxy instructions per request, capture on / off <= {GOAL_CPU_RATIO}x: "
                f"measured {ratio:.2f}x",
                ratio <= GOAL_CPU_RATIO,
            )
        )
    cpu = results.get("cpu")
    if cpu is not None:
        s = cpu["summary"][str(args.small_size)]
        ratio = s["ratio_on_over_off"]
        out.append(
            (
                f"proxy CPU per request, capture on / off ({args.small_size:,} B GETs) "
                f"<= {GOAL_CPU_RATIO}x: measured {fmt_ratio(ratio, 1.0) or '-'}",
                s["met"],
            )
        )
    posts = results.get("posts", {}).get("on")
    if posts is not None:
        frac = posts.get("captured_fraction")
        out.append(
            (
                f"{int(args.posts):,} POSTs of {args.body_size:,} B, captured >= "
                f"{GOAL_CAPTURED:.0%}: measured "
                + (f"{frac * 100:.2f}%" if frac is not None else "-"),
                posts_captured_met(posts),
            )
        )
        out.append(
            (
                f"... proxy RSS growth < {GOAL_POSTS_RSS_MIB:g} MiB: measured "
                f"{mib(posts['rss_growth'], signed=True)} MiB",
                posts_rss_met(posts),
            )
        )
    return out


#: The options recorded in the results file.
PARAM_KEYS = (
    "sections", "quick", "clients", "requests", "duration", "rounds", "flows", "posts",
    "body_size", "small_size", "warmup", "writer_seconds", "writer_max", "writer_pace",
    "max_seconds", "settle", "access_log",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (with ``--quick`` defaults filled in)."""
    parser = argparse.ArgumentParser(
        description=(
            "What capturing flows to the store costs the proxy: CPU per request off and on, "
            "the writer's flows/s, RSS over many flows, POSTs captured. Loopback only."
        ),
        epilog=(
            f"goals: CPU per request on/off <= {GOAL_CPU_RATIO}x; of 3,000 100 KiB POSTs, "
            f">= {GOAL_CAPTURED:.0%} captured and RSS growth < {GOAL_POSTS_RSS_MIB:g} MiB"
        ),
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"sections to run, of {','.join(SECTIONS + EXTRA_SECTIONS)} (default: all but instr)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, short")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients (cpu, rss)")
    parser.add_argument("--requests", type=int, help="cpu: at most this many per run (20,000)")
    parser.add_argument("--duration", type=float, help="cpu: at most this long per run (4 s)")
    parser.add_argument("--rounds", type=int, help="cpu: rounds of off and on (2)")
    parser.add_argument("--flows", type=int, help="rss: flows per proxy (20,000)")
    parser.add_argument("--posts", type=int, help="posts: POSTs per proxy (3,000)")
    parser.add_argument(
        "--body-size", type=int, default=100 * KiB, help="the big body, in bytes (100 KiB)"
    )
    parser.add_argument(
        "--small-size", type=int, default=1 * KiB, help="cpu: the small body (1 KiB)"
    )
    parser.add_argument("--warmup", type=int, help="requests before each measurement (300)")
    parser.add_argument(
        "--writer-seconds", type=float, help="writer: at most this long per run (3 s)"
    )
    parser.add_argument("--writer-max", type=int, help="writer: at most this many records")
    parser.add_argument(
        "--writer-pace",
        default="0.5,0.8",
        help="writer: the paced runs' rates, as fractions of the capacity written/s (0.5,0.8)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=180.0, help="rss, posts: time bound of a load run"
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="pause before reading RSS (seconds)"
    )
    parser.add_argument("--access-log", action="store_true", help="proxies log every request")
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for a proxy"
    )
    parser.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is not met")
    parser.add_argument("--loadgen-worker", help=argparse.SUPPRESS)
    parser.add_argument("--origin-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen_worker or args.origin_worker:
        return args
    for key, (full, quick) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    try:
        args.writer_paces = [float(x) for x in args.writer_pace.split(",") if x.strip()]
    except ValueError:
        parser.error("--writer-pace takes a comma-separated list of fractions, e.g. 0.5,0.8")
    checks: Iterable[tuple[bool, str]] = [
        (
            bool(args.sections) and all(s in SECTIONS + EXTRA_SECTIONS for s in args.sections),
            f"--only takes a comma-separated list of {', '.join(SECTIONS + EXTRA_SECTIONS)}",
        ),
        (1 <= args.clients <= 256, "--clients must be between 1 and 256"),
        (1 <= args.requests <= 10_000_000, "--requests must be between 1 and 10,000,000"),
        (0 < args.duration <= 600, "--duration must be in (0, 600] seconds"),
        (1 <= args.rounds <= 20, "--rounds must be between 1 and 20"),
        (1 <= args.flows <= 10_000_000, "--flows must be between 1 and 10,000,000"),
        (1 <= args.posts <= 1_000_000, "--posts must be between 1 and 1,000,000"),
        (1 <= args.body_size <= 64 * MiB, "--body-size must be between 1 B and 64 MiB"),
        (1 <= args.small_size <= 64 * MiB, "--small-size must be between 1 B and 64 MiB"),
        (1 <= args.warmup <= 100_000, "--warmup must be between 1 and 100,000"),
        (0 < args.writer_seconds <= 600, "--writer-seconds must be in (0, 600]"),
        (1 <= args.writer_max <= 100_000_000, "--writer-max must be between 1 and 100,000,000"),
        (
            all(0 < x <= 1 for x in args.writer_paces),
            "--writer-pace: every fraction must be in (0, 1]",
        ),
        (0 < args.max_seconds <= 3600, "--max-seconds must be in (0, 3600]"),
        (0 <= args.settle <= 60, "--settle must be in [0, 60]"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections; returns the exit status."""
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker_main(args.loadgen_worker)
        return 0
    if args.origin_worker:
        origin_worker_main(args.origin_worker)
        return 0
    require_loopback(LOOPBACK)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = load_average()
    note = load_note(load)
    if note:
        print(note)
    t_start = time.monotonic()
    results: dict[str, Any] = {}
    started: list[Proxy] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        workdir = Path(tmp)
        try:
            for section in SECTIONS + EXTRA_SECTIONS:
                if section not in args.sections:
                    continue
                t0 = time.monotonic()
                print(f"\n== {section} ==")
                if section == "cpu":
                    results["cpu"] = section_cpu(args, workdir, started)
                elif section == "writer":
                    results["writer"] = section_writer(args, workdir)
                elif section == "rss":
                    results["rss"] = section_rss(args, workdir, started)
                elif section == "instr":
                    results["instr"] = section_instr(args, workdir)
                else:
                    results["posts"] = section_posts(args, workdir, started)
                results.setdefault("seconds", {})[section] = time.monotonic() - t0
        except (RuntimeError, OSError, ValueError, sqlite3.Error) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxies and the origins", file=sys.stderr)
            status = 130
        finally:
            for proxy in started:
                if proxy.process.poll() is None:
                    stop_process(proxy.process)

    print()
    met_all = True
    for text, met in goals(results, args):
        print(f"goal: {text} -- {verdict(met) or 'not measured'}")
        met_all = met_all and met is not False
    elapsed = time.monotonic() - t_start
    print(f"run took {elapsed:.0f} s")
    out = {
        **results_header("capture", load_average=load),
        "params": {key: getattr(args, key) for key in PARAM_KEYS},  # fmt: skip
        "results": results,
        "goals": [{"text": t, "met": m} for t, m in goals(results, args)],
        "seconds": elapsed,
    }
    print(f"results: {write_json(args.json, out)}")
    if status:
        return status
    return 1 if args.check and not met_all else 0


if __name__ == "__main__":
    sys.exit(main())
