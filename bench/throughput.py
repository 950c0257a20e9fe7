"""Throughput benchmark: keep-alive clients through the proxy versus straight to the origin.

``--clients`` keep-alive connections each fetch a ``--size``-byte body, one request outstanding
per connection, for ``--duration`` seconds per round. Rounds alternate direct (to the loopback
origin) and proxy (the same origin through interceptor), ``--rounds`` times each, so that drift
in the machine hits both. The summary gives requests/s, p50 and p99 latency, the proxy's CPU
time per request (utime + stime from /proc/PID/stat over the round, divided by the requests
completed) and the origin's accept count (a pooling proxy opens few upstream connections).

Three processes besides this driver, so that none bills its CPU to another or shares a GIL:
the origin (``_common.py origin``), the proxy (twistd), and a load generator per round (this
file with a hidden ``--loadgen-worker`` flag: asyncio protocols, pre-built request bytes,
httptools to parse responses).

Run from the repository root::

    /work/venv/bin/python bench/throughput.py                  # start the proxy with twistd
    /work/venv/bin/python bench/throughput.py --proxy-url http://127.0.0.1:8080 --proxy-pid PID
    /work/venv/bin/python bench/throughput.py --baseline bench/results/old.json

The started proxy inherits the environment, so its settings can be varied without editing
the generated config, e.g. ``INTERCEPTOR_UPSTREAM_POOL_SIZE=64 python bench/throughput.py``.

Not a test: pytest never runs it. Loopback only; every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.parse
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httptools
from _common import (
    LOOPBACK,
    REPO_ROOT,
    ProcessExitedError,
    default_proxy_cmd,
    fill_template,
    free_port,
    http_request,
    origin_stats,
    percentiles,
    print_table,
    proc_cpu_seconds,
    require_loopback,
    start_origin,
    start_proxy,
    stop_process,
    tail_text,
    wait_for_port,
)

#: The goal printed under the table.
GOAL_CPU_US_PER_REQUEST = 150.0
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "throughput.json"
MODES = ("direct", "proxy")


# --------------------------------------------------------------------------------------------
# Load generator (runs in its own process, one per round)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What one load-generator run does; passed to the worker process as JSON."""

    host: str
    port: int
    request: str  # latin-1 text of the raw request bytes
    size: int
    clients: int
    duration: float
    max_requests: int
    latency_path: str
    cpu_pids: dict[str, int] = field(default_factory=dict)
    connect_timeout: float = 5.0
    drain_timeout: float = 10.0


class _LoadGen:
    """Shared state of one run: clock, budget, counters, latencies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = spec.request.encode("latin-1")
        self.size = spec.size
        self.end = math.inf  # Set when the measured window starts.
        self.max_requests = spec.max_requests
        self.issued = 0
        self.completed = 0
        self.latencies = array("d")
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.live: set[_Client] = set()
        self.active_slots = 0
        self.done: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def may_send(self, now: float) -> bool:
        """Whether a client that just became idle should issue another request."""
        return now < self.end and self.issued < self.max_requests

    def slot_done(self) -> None:
        """One client slot has stopped for good."""
        self.active_slots -= 1
        if self.active_slots <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> _Client:
        """Open one connection (bounded by the connect timeout)."""
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Client(self), self.spec.host, self.spec.port),
            self.spec.connect_timeout,
        )
        return protocol

    def replace(self) -> None:
        """A slot's connection closed while there is time left: reconnect and carry on."""
        task = asyncio.get_running_loop().create_task(self._reconnect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reconnect(self) -> None:
        self.reconnects += 1
        try:
            client = await self.connect()
        except (OSError, TimeoutError):
            self.errors["connect"] += 1
            self.slot_done()
            return
        if self.may_send(time.perf_counter()):
            client.send()
        else:
            client.retired = True
            self.slot_done()


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self, gen: _LoadGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sent_at = 0.0
        self.body_len = 0
        self.busy = False
        self.retired = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.gen.live.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.busy:
                self.busy = False
                self.gen.errors["parse"] += 1
            assert self.transport is not None
            self.transport.abort()  # connection_lost decides what happens next

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        gen.live.discard(self)
        if self.retired:
            return
        self.retired = True
        if self.busy:
            self.busy = False
            gen.errors["closed"] += 1
        if gen.may_send(time.perf_counter()):
            gen.replace()
        else:
            gen.slot_done()

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
        elif self.body_len != gen.size:
            gen.errors["body_length"] += 1
        else:
            gen.completed += 1
            gen.latencies.append(now - self.sent_at)
        assert self.transport is not None
        if not gen.may_send(now):
            self.retired = True
            gen.slot_done()
        elif self.parser.should_keep_alive():
            self.send()
        else:
            self.retired = True
            self.transport.close()
            gen.replace()

    # ours

    def send(self) -> None:
        """Issue the next request on this connection."""
        assert self.transport is not None
        self.gen.issued += 1
        self.busy = True
        self.body_len = 0
        self.sent_at = time.perf_counter()
        self.transport.write(self.gen.request)


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds of each named process (None if it cannot be read), plus this process."""
    out: dict[str, float | None] = {"loadgen": time.process_time()}
    for name, pid in pids.items():
        try:
            out[name] = proc_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            out[name] = None
    return out


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one round as described by ``spec``; return its summary (latencies go to a file)."""
    gen = _LoadGen(spec)
    loop = asyncio.get_running_loop()
    gen.done = loop.create_future()
    results = await asyncio.gather(
        *(gen.connect() for _ in range(spec.clients)), return_exceptions=True
    )
    clients = [r for r in results if isinstance(r, _Client)]
    gen.errors["connect"] += len(results) - len(clients)
    if not clients:
        raise SystemExit(f"could not open any connection to {spec.host}:{spec.port}")
    gen.active_slots = len(clients)

    cpu0 = _cpu_snapshot(spec.cpu_pids)
    t0 = time.perf_counter()
    gen.end = t0 + spec.duration
    for client in clients:
        client.send()
    try:
        await asyncio.wait_for(asyncio.shield(gen.done), spec.duration + spec.drain_timeout)
    except TimeoutError:
        stuck = sum(1 for c in gen.live if c.busy)
        gen.errors["timeout"] += stuck
    t1 = time.perf_counter()
    cpu1 = _cpu_snapshot(spec.cpu_pids)

    gen.end = -math.inf  # Nothing new from here on.
    for client in list(gen.live):
        client.retired = True
        if client.transport is not None:
            client.transport.abort()
    for task in list(gen.tasks):
        task.cancel()
    await asyncio.sleep(0)

    with open(spec.latency_path, "wb") as f:
        gen.latencies.tofile(f)
    cpu = {
        name: (cpu1[name] - before) if before is not None and cpu1.get(name) is not None else None
        for name, before in cpu0.items()
    }
    return {
        "requests": gen.completed,
        "issued": gen.issued,
        "elapsed": t1 - t0,
        "errors": {kind: n for kind, n in gen.errors.items() if n},
        "reconnects": gen.reconnects,
        "connections": len(clients),
        "cpu_seconds": cpu,
    }


def _raise_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def loadgen_worker_main(spec_json: str) -> None:
    """Entry point of the worker process: run the spec, print the summary as JSON."""
    spec = LoadSpec(**json.loads(spec_json))
    require_loopback(spec.host)
    _raise_fd_limit(spec.clients + 64)
    summary = asyncio.run(run_load(spec))
    sys.stdout.write(json.dumps(summary) + "\n")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where a mode's requests go and what they look like."""

    host: str
    port: int
    request: bytes


@dataclass
class RoundResult:
    """One measured round of one mode."""

    mode: str
    round: int
    requests: int
    elapsed: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    reconnects: int
    proxy_cpu_s: float | None
    origin_cpu_s: float | None
    loadgen_cpu_s: float | None
    origin_accepts: int | None
    origin_requests: int | None
    latencies: array[float] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The round as JSON-ready data (without the raw latencies)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latencies"}


def run_round(
    mode: str,
    round_no: int,
    target: Target,
    args: argparse.Namespace,
    workdir: Path,
    origin: tuple[subprocess.Popen[bytes], int],
    proxy_pid: int | None,
    duration: float,
) -> RoundResult:
    """Run one load-generator process against ``target`` and collect its numbers."""
    origin_process, origin_port = origin
    latency_path = workdir / f"latencies-{mode}-{round_no}.bin"
    pids = {"origin": origin_process.pid}
    if mode == "proxy" and proxy_pid is not None:
        pids["proxy"] = proxy_pid
    spec = LoadSpec(
        host=target.host,
        port=target.port,
        request=target.request.decode("latin-1"),
        size=args.size,
        clients=args.clients,
        duration=duration,
        max_requests=args.max_requests,
        latency_path=str(latency_path),
        cpu_pids=pids,
    )
    before = origin_stats(origin_port)
    timeout = duration + spec.connect_timeout + spec.drain_timeout + 30
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--loadgen-worker",
                json.dumps(asdict(spec)),
            ],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"the load generator did not finish within {timeout:.0f} s") from e
    if done.returncode != 0:
        raise RuntimeError(
            f"the load generator failed (status {done.returncode}):\n"
            + done.stderr.decode("utf-8", "replace")[-4000:]
        )
    summary = json.loads(done.stdout)
    after = origin_stats(origin_port)
    latencies = array("d")
    with open(latency_path, "rb") as f:
        latencies.frombytes(f.read())
    latency_path.unlink()
    p50, p99 = percentiles(latencies, [50, 99])
    cpu = summary["cpu_seconds"]
    return RoundResult(
        mode=mode,
        round=round_no,
        requests=summary["requests"],
        elapsed=summary["elapsed"],
        rps=summary["requests"] / summary["elapsed"] if summary["elapsed"] > 0 else 0.0,
        p50_ms=p50 * 1e3,
        p99_ms=p99 * 1e3,
        errors=summary["errors"],
        reconnects=summary["reconnects"],
        proxy_cpu_s=cpu.get("proxy"),
        origin_cpu_s=cpu.get("origin"),
        loadgen_cpu_s=cpu.get("loadgen"),
        origin_accepts=after["accepts"] - before["accepts"],
        origin_requests=after["requests"] - before["requests"],
        latencies=latencies,
    )


def _sum_or_none(values: list[float | None]) -> float | None:
    """Sum of the values, or None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Aggregate the rounds of one mode: totals, rates and latency percentiles of all requests."""
    requests = sum(r.requests for r in rounds)
    elapsed = sum(r.elapsed for r in rounds)
    merged: array[float] = array("d")
    for r in rounds:
        merged.extend(r.latencies)
    p50, p90, p99, p999 = percentiles(merged, [50, 90, 99, 99.9])
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
    return {
        "rounds": len(rounds),
        "requests": requests,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "rps_per_round": [r.rps for r in rounds],
        "p50_ms": p50 * 1e3,
        "p90_ms": p90 * 1e3,
        "p99_ms": p99 * 1e3,
        "p999_ms": p999 * 1e3,
        "max_ms": max(merged) * 1e3 if merged else float("nan"),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "reconnects": sum(r.reconnects for r in rounds),
        "proxy_cpu_s": proxy_cpu,
        "cpu_us_per_request": per_request_us(proxy_cpu),
        "proxy_cpu_pct_of_core": share_of_core(proxy_cpu),
        "origin_cpu_us_per_request": per_request_us(origin_cpu),
        "loadgen_cpu_pct_of_core": share_of_core(loadgen_cpu),
        "origin_accepts": sum(r.origin_accepts or 0 for r in rounds),
        "origin_requests": sum(r.origin_requests or 0 for r in rounds),
        "origin_accepts_per_1k": (
            sum(r.origin_accepts or 0 for r in rounds) / requests * 1000 if requests else None
        ),
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


#: (label, summary key, digits, ratio proxy/direct?)
_METRICS: list[tuple[str, str, int, bool]] = [
    ("requests/s", "rps", 0, True),
    ("p50 latency (ms)", "p50_ms", 2, True),
    ("p99 latency (ms)", "p99_ms", 2, True),
    ("proxy CPU per request (µs)", "cpu_us_per_request", 1, False),
    ("proxy CPU (% of one core)", "proxy_cpu_pct_of_core", 0, False),
    ("origin CPU per request (µs)", "origin_cpu_us_per_request", 1, True),
    ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True),
    ("origin accepts", "origin_accepts", 0, False),
    ("origin accepts per 1k requests", "origin_accepts_per_1k", 1, False),
    ("requests completed", "requests", 0, True),
    ("errors", "error_count", 0, False),
]


def print_summary(
    summary: dict[str, dict[str, Any]], baseline: dict[str, Any] | None, baseline_path: str | None
) -> None:
    """The results table, with baseline columns when a baseline was given."""
    headers = ["metric", "direct", "proxy", "proxy/direct"]
    base = baseline["summary"] if baseline else None
    if base:
        headers += ["baseline proxy", "proxy vs baseline"]
    rows = []
    for label, key, digits, ratio in _METRICS:
        d, p = summary["direct"].get(key), summary["proxy"].get(key)
        if key in ("cpu_us_per_request", "proxy_cpu_pct_of_core"):
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
    print_table(rows, headers)
    if base:
        bd = base.get("direct", {})
        print(
            f"direct vs baseline ({baseline_path}): requests/s "
            f"{_change(summary['direct']['rps'], bd.get('rps')) or '-'}, p50 "
            f"{_change(summary['direct']['p50_ms'], bd.get('p50_ms')) or '-'} "
            "(how much the machine itself drifted)"
        )


def goal_line(proxy_summary: dict[str, Any]) -> tuple[str, bool | None]:
    """The goal line and whether the goal was met (None if not measured)."""
    cpu = proxy_summary.get("cpu_us_per_request")
    text = f"goal: proxy CPU per request <= {GOAL_CPU_US_PER_REQUEST:.0f} µs"
    if cpu is None:
        return text + " -- not measured (no proxy pid; pass --proxy-pid)", None
    text += f" -- measured {cpu:.1f} µs: "
    errors = proxy_summary.get("error_count", 0)
    if errors:
        # A proxy that fails requests cheaply must not pass.
        return text + f"NOT MET ({errors:,} proxied requests failed)", False
    met = cpu <= GOAL_CPU_US_PER_REQUEST
    return text + ("MET" if met else "NOT MET"), met


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


def warm_up_check(target: Target, size: int, deadline: float, what: str) -> None:
    """One request to ``target``; it must be a 200 with a ``size``-byte body.

    Connection failures are retried until ``deadline`` (the listener may be a moment ahead of
    the rest of the program); a wrong answer fails at once.
    """
    while True:
        try:
            result = http_request(target.host, target.port, target.request, timeout=10)
            break
        except TimeoutError as e:
            raise RuntimeError(f"warm-up request to the {what}: no response in 10 s") from e
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"warm-up request to the {what} failed: {e!r}") from e
            time.sleep(0.05)
    if result.status != 200 or len(result.body) != size:
        raise RuntimeError(
            f"warm-up request to the {what} answered status {result.status} with a "
            f"{len(result.body)}-byte body (expected 200 and {size} bytes); "
            f"body starts {result.body[:200]!r}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(
            "Throughput of interceptor versus direct: N keep-alive clients fetch a body from a "
            "loopback origin, alternating direct and proxy rounds. Loopback only."
        ),
        epilog=f"goal: proxy CPU per request <= {GOAL_CPU_US_PER_REQUEST:.0f} µs",
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent keep-alive clients")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode")
    parser.add_argument("--size", type=int, default=1024, help="response body size in bytes")
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of unmeasured load on each mode before the rounds (0: only one request)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=2_000_000,
        help="safety cap on requests per round (latencies are kept in memory)",
    )
    parser.add_argument(
        "--proxy-cmd",
        help=(
            "command that starts the proxy; {port} and {config} are replaced. Default: "
            + shlex.join(default_proxy_cmd())
        ),
    )
    parser.add_argument(
        "--proxy-url",
        help="benchmark an already-running proxy at http://127.0.0.1:PORT instead of starting one",
    )
    parser.add_argument(
        "--proxy-pid", type=int, help="with --proxy-url: its pid, to measure its CPU time"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="leave the proxy's access log on (default off)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for the proxy"
    )
    parser.add_argument("--proxy-log", help="keep the started proxy's output in this file")
    parser.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help="where to write the results (default: bench/results/throughput.json)",
    )
    parser.add_argument("--baseline", help="an earlier results JSON to compare with")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if the goal is not met"
    )
    parser.add_argument("--loadgen-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen_worker:
        return args
    if not 1 <= args.clients <= 10_000:
        parser.error("--clients must be between 1 and 10000")
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be between 1 and 100")
    if not 0 <= args.size <= 64 * 1024 * 1024:
        parser.error("--size must be between 0 and 64 MiB")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be between 0 and 60 seconds")
    if not 1 <= args.max_requests <= 50_000_000:
        parser.error("--max-requests must be between 1 and 50,000,000")
    if args.proxy_url and args.proxy_cmd:
        parser.error("--proxy-url and --proxy-cmd exclude each other")
    if args.proxy_pid is not None and not args.proxy_url:
        parser.error("--proxy-pid goes with --proxy-url")
    if args.proxy_url:
        url = urllib.parse.urlsplit(args.proxy_url)
        if url.scheme != "http" or not url.hostname or not url.port:
            parser.error("--proxy-url must look like http://127.0.0.1:PORT")
        try:
            require_loopback(url.hostname)
        except ValueError as e:
            parser.error(str(e))
    if args.proxy_pid is not None and not Path(f"/proc/{args.proxy_pid}/stat").exists():
        parser.error(f"no process {args.proxy_pid}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker_main(args.loadgen_worker)
        return 0

    baseline = None
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        old = baseline.get("params", {})
        for key in ("clients", "size", "duration"):
            if key in old and old[key] != getattr(args, key):
                print(f"note: the baseline used --{key} {old[key]}, this run {getattr(args, key)}")

    config_text = f"[log]\naccess = {'true' if args.access_log else 'false'}\n"
    proxy: subprocess.Popen[bytes] | None = None
    origin: tuple[subprocess.Popen[bytes], int] | None = None
    log_path: Path | None = None
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        workdir = Path(tmp)
        try:
            origin = start_origin(args.size)
            origin_port = origin[1]
            print(f"origin: 127.0.0.1:{origin_port} (pid {origin[0].pid}), {args.size}-byte body")

            if args.proxy_url:
                url = urllib.parse.urlsplit(args.proxy_url)
                assert url.hostname is not None and url.port is not None
                proxy_host, proxy_port = url.hostname, url.port
                proxy_pid = args.proxy_pid
                proxy_desc = f"already running at {args.proxy_url}" + (
                    f" (pid {proxy_pid})" if proxy_pid else " (no pid: CPU not measured)"
                )
            else:
                proxy_host = LOOPBACK
                proxy_port = free_port()
                cmd = shlex.split(args.proxy_cmd) if args.proxy_cmd else default_proxy_cmd()
                log_path = Path(args.proxy_log) if args.proxy_log else workdir / "proxy.log"
                proxy = start_proxy(
                    proxy_port, config_text, workdir=workdir, cmd=cmd, log_path=log_path
                )
                proxy_pid = proxy.pid
                proxy_desc = f"started (pid {proxy.pid}): " + shlex.join(
                    fill_template(cmd, port=proxy_port, config=workdir / "interceptor.toml")
                )
            print(f"proxy: {proxy_desc}")

            deadline = time.monotonic() + args.startup_timeout
            try:
                wait_for_port(proxy_host, proxy_port, deadline, process=proxy)
            except (TimeoutError, ProcessExitedError) as e:
                raise RuntimeError(f"the proxy did not come up: {e}") from e

            targets = {
                "direct": Target(
                    LOOPBACK,
                    origin_port,
                    f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode(),
                ),
                "proxy": Target(
                    proxy_host,
                    proxy_port,
                    (
                        f"GET http://127.0.0.1:{origin_port}/x HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{origin_port}\r\n\r\n"
                    ).encode(),
                ),
            }
            warm_up_check(targets["direct"], args.size, time.monotonic() + 5, "origin")
            warm_up_check(targets["proxy"], args.size, deadline, "proxy")

            print(
                f"load: {args.clients} keep-alive clients, {args.duration:g} s per round, "
                f"{args.rounds} round(s) of each mode, on {os.cpu_count()} CPUs"
            )
            if args.warmup > 0:
                for mode in MODES:
                    w = run_round(
                        mode, 0, targets[mode], args, workdir, origin, proxy_pid, args.warmup
                    )
                    print(
                        f"warm-up {mode:>6}: {w.rps:9,.0f} req/s, origin accepts "
                        f"{w.origin_accepts}, errors {sum(w.errors.values())}"
                    )

            rounds: list[RoundResult] = []
            for round_no in range(1, args.rounds + 1):
                for mode in MODES:
                    r = run_round(
                        mode,
                        round_no,
                        targets[mode],
                        args,
                        workdir,
                        origin,
                        proxy_pid,
                        args.duration,
                    )
                    rounds.append(r)
                    cpu = (
                        f", proxy CPU {r.proxy_cpu_s / r.requests * 1e6:.1f} µs/req"
                        if r.proxy_cpu_s is not None and r.requests
                        else ""
                    )
                    errors = sum(r.errors.values())
                    print(
                        f"round {round_no}/{args.rounds} {mode:>6}: {r.rps:9,.0f} req/s, "
                        f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms{cpu}, "
                        f"origin accepts {r.origin_accepts}, errors {errors}"
                        + (f" {r.errors}" if errors else "")
                        + (f", reconnects {r.reconnects}" if r.reconnects else "")
                    )
                    if proxy is not None and proxy.poll() is not None:
                        raise RuntimeError(f"the proxy exited with status {proxy.returncode}")
        except (RuntimeError, OSError, ValueError) as e:
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

    summary = {mode: summarize([r for r in rounds if r.mode == mode]) for mode in MODES}
    print_summary(summary, baseline, args.baseline)
    text, met = goal_line(summary["proxy"])
    print(text)
    if summary["proxy"]["error_count"]:
        print(
            f"warning: {summary['proxy']['error_count']} proxy errors: {summary['proxy']['errors']}"
        )

    ratios = {
        "rps": summary["proxy"]["rps"] / summary["direct"]["rps"]
        if summary["direct"]["rps"]
        else None,
        "p50": summary["proxy"]["p50_ms"] / summary["direct"]["p50_ms"]
        if summary["direct"]["p50_ms"]
        else None,
        "p99": summary["proxy"]["p99_ms"] / summary["direct"]["p99_ms"]
        if summary["direct"]["p99_ms"]
        else None,
    }
    results = {
        "benchmark": "throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_revision(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": {
            "clients": args.clients,
            "duration": args.duration,
            "rounds": args.rounds,
            "size": args.size,
            "warmup": args.warmup,
            "max_requests": args.max_requests,
            "access_log": args.access_log,
            "proxy": proxy_desc,
        },
        "rounds": [r.to_json() for r in rounds],
        "summary": summary,
        "ratios_proxy_over_direct": ratios,
        "goal": {
            "cpu_us_per_request_max": GOAL_CPU_US_PER_REQUEST,
            "measured": summary["proxy"]["cpu_us_per_request"],
            "met": met,
        },
    }
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    print(f"results: {json_path}")
    return 1 if args.check and met is False else 0


if __name__ == "__main__":
    sys.exit(main())
