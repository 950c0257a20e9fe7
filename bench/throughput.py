"""Throughput benchmark: keep-alive clients through the proxy versus straight to the origin.

``--clients`` keep-alive connections each fetch a ``--size``-byte body (octet-stream, or with
``--body html`` an HTML page full of "cherry", gzip-encoded with ``--gzip``), one request
outstanding per connection, for ``--duration`` seconds per round. Rounds alternate direct (to
the loopback origin) and proxy (the same origin through interceptor), ``--rounds`` times each,
so that drift in the machine hits both. The summary gives requests/s, p50 and p99 latency, the
proxy's CPU time per request (utime + stime from /proc/PID/stat over the round, divided by the
requests completed; of the proxy process and all its descendants, so a supervisor and its
workers count whole) and the origin's accept count (a pooling proxy opens few upstream
connections). The CPU of the origin and of the load generator is given too, and how busy all
CPUs were: "rest of the machine" is what other programs and unbilled kernel work took
beside the benchmark's own processes (on a machine that others share, the figure to read first).

Three processes besides this driver, so that none bills its CPU to another or shares a GIL:
the origin (``_common.py origin``), the proxy (twistd), and a load generator per round (this
file with a hidden ``--loadgen-worker`` flag: asyncio protocols, pre-built request bytes,
httptools to parse responses).

``--loadgen wrk`` makes the load generator wrk instead (``apt-get install wrk``; a run without
it fails with one line saying so; ``bench/_wrk.py`` drives it): the same ``--clients``
keep-alive connections with one request outstanding each, the same request line and headers
(set by a generated Lua script with no ``request()`` function, so wrk sends one pre-built
request with no Lua per request; it may order the headers differently), one thread
(``--wrk-threads``, 1 by default) and whole seconds only (``--duration`` and ``--warmup``).
Why: at the proxy's rates the asyncio generator costs ~20 µs of CPU per request and wrk ~11,
and on a 2-core machine that is CPU the proxy's workers do not get. What differs: the
proxy's, origin's and machine's CPU are read by this driver just before wrk starts and just
after it is reaped, and wrk's CPU is its whole life's (``wait4``), so the round runs ~10 ms
longer than wrk's own clock says (in the round's ``loadgen_report``); latencies are wrk's 1 µs
histogram with wrk's coordinated-omission correction undone (raw, like the asyncio
generator's); errors are wrk's (connect, read, write, timeout past 10 s, and statuses over
399: wrk does not check body sizes, the warm-up request does); it counts no reconnects.

Run from the repository root::

    /work/venv/bin/python bench/throughput.py                  # start the proxy with twistd
    /work/venv/bin/python bench/throughput.py --proxy-url http://127.0.0.1:8080 --proxy-pid PID
    /work/venv/bin/python bench/throughput.py --baseline bench/results/old.json
    /work/venv/bin/python bench/throughput.py --compare main~3     # this tree versus main~3
    /work/venv/bin/python bench/throughput.py --variants epoll,asyncio,epoll+demo --body html
    /work/venv/bin/python bench/throughput.py --workers 1,2
    /work/venv/bin/python bench/throughput.py --workers 1,2 --loadgen wrk

``--compare REV`` exports revision REV's tree (``git archive``) to the run's temporary directory
and starts a second proxy from it the same way (same twistd, config and environment, its own
CA dir); each round then runs direct, this tree's proxy and REV's proxy, so both proxies are
measured under the same conditions, and the table gains REV's column and tree/rev ratios.

``--variants LIST`` measures configurations of this tree's proxy side by side in the same way:
one proxy per variant, all started before the first round, each round running direct and then
every variant. ``epoll`` is the proxy as started without it (twistd's default reactor, epoll on
Linux); ``asyncio`` adds ``--reactor=asyncio`` before the plugin name; ``+demo`` sets
``INTERCEPTOR_HOOKS_SCRIPTS=<root>/examples/demo.py``, an addon that rewrites "cherry" to
"banana" in text/html bodies (so use ``--body html``, maybe ``--gzip``, to measure that). The
table gets a column per variant and each one's proxy CPU per request over the first's; the
results file keys the summary by variant name and adds a ``variants`` entry. A variant whose
proxy does not start fails the run with one line: its name and the end of the proxy's output.
It excludes ``--compare``, ``--proxy-url`` and ``--baseline``; ``--proxy-log FILE`` keeps each
variant's output in ``FILE.<name>``.

``--workers LIST`` (e.g. ``1,2``) does the same with one proxy per worker count, named
``workers=N`` (``INTERCEPTOR_PROXY_WORKERS=N``, twistd's default reactor, no addon); it
excludes ``--variants`` too. With more than one worker, the proxy is measured from when every
worker has logged "proxy accepting on" (the supervisor's sockets take connections before any
worker runs); its CPU is the supervisor's plus every worker's, each read by pid at the start
and end of a round (a worker that ends during a round fails the run: its time would be lost),
and the table splits it by process, so an uneven spread of connections shows. Under the table,
each count's requests/s over the first's, over the run and round by round (with what the rest
of the machine took in each turn), and with 1 and 2 measured, issue 14's goal: 2 workers at
least 1.3 times 1 worker's requests/s. When some rounds but not all were quiet (the rest of
the machine took at most 10% of a core in every proxy's turn), the table is given again over
those alone: on a shared machine, the figures that describe the proxy rather than the others.

The started proxy inherits the environment, so its settings can be varied without editing
the generated config, e.g. ``INTERCEPTOR_UPSTREAM_POOL_SIZE=64 python bench/throughput.py``.

Not a test: pytest never runs it. Loopback only; every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import httptools
from _common import (
    COMPARE,
    LOOPBACK,
    ORIGIN_BODIES,
    REPO_ROOT,
    WORKERS_ENV,
    Metric,
    OriginBody,
    Revision,
    access_log_config,
    add_proxy_bench_args,
    by_process_fields,
    by_process_text,
    check_args,
    compare_arg,
    compare_ratios,
    compare_results,
    default_proxy_cmd,
    error_fields,
    export_revision,
    goal_verdict,
    http_request,
    latency_fields,
    load_arg_checks,
    load_average,
    load_baseline,
    load_note,
    machine_cpu_seconds,
    machine_fields,
    merged_array,
    origin_body,
    origin_fields,
    origin_stats,
    parse_worker_counts,
    pct_of_core,
    per_request_us,
    percentiles,
    print_direct_proxy_table,
    print_side_by_side_table,
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
    start_origin,
    start_proxy_on_free_port,
    stop_proxy_and_origin,
    sum_or_none,
    tail_text,
    tree_cpu_delta,
    wait_for_proxy,
    wait_for_workers,
    workers_name,
    workers_scaling,
    write_json,
)
from _wrk import WRK_INSTALL, WrkRound, expand_latencies, find_wrk, wrk_version

#: The goal printed under the table.
GOAL_CPU_US_PER_REQUEST = 150.0
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "throughput.json"
MODES = ("direct", "proxy")
#: ``--loadgen`` choices; the first is the default.
LOADGENS = ("python", "wrk")


# --------------------------------------------------------------------------------------------
# Load generator (runs in its own process, one per round)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What one load-generator run does; passed to the worker process as JSON."""

    host: str
    port: int
    request: str  # latin-1 text of the raw request bytes
    size: int | None  # of each body as received (before decoding); None: not checked
    clients: int
    duration: float
    max_requests: int
    latency_path: str
    cpu_pids: dict[str, int] = field(default_factory=dict)  # each measured with its descendants
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
        elif gen.size is not None and self.body_len != gen.size:
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


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, Any]:
    """CPU seconds so far of this process, of every CPU, and of each named process with all
    its descendants, by pid (None where it cannot be read).

    A whole tree, so that a proxy with workers counts its supervisor and every worker.
    """
    return {
        "loadgen": time.process_time(),
        "machine": machine_cpu_seconds(),
        "trees": {name: proc_tree_cpu(pid) for name, pid in pids.items()},
    }


def _cpu_used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What two :func:`_cpu_snapshot` readings say was used in between."""
    machine0, machine1 = before["machine"], after["machine"]
    trees = {
        name: tree_cpu_delta(tree, after["trees"].get(name))
        for name, tree in before["trees"].items()
    }
    return {
        "seconds": {
            "loadgen": after["loadgen"] - before["loadgen"],
            **{name: d.total if d is not None else None for name, d in trees.items()},
        },
        "trees": {name: d.to_json() if d is not None else None for name, d in trees.items()},
        "machine": (
            [machine1[0] - machine0[0], machine1[1] - machine0[1]]
            if machine0 is not None and machine1 is not None
            else None
        ),
    }


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
    used = _cpu_used(cpu0, cpu1)
    return {
        "requests": gen.completed,
        "issued": gen.issued,
        "elapsed": t1 - t0,
        "errors": {kind: n for kind, n in gen.errors.items() if n},
        "reconnects": gen.reconnects,
        "connections": len(clients),
        "cpu_seconds": used["seconds"],
        "cpu_trees": used["trees"],
        "machine_cpu_seconds": used["machine"],
    }



def run_loadgen(script: str, spec: LoadSpec, duration: float) -> dict[str, Any]:
    """Run `script --loadgen-worker` (a fresh process, so its CPU is not the caller's) for
    `spec`, bounded in time; its JSON summary. RuntimeError if it fails or overruns."""
    timeout = duration + spec.connect_timeout + spec.drain_timeout + 30
    try:
        done = subprocess.run(
            self_command(script, "--loadgen-worker", asdict(spec)),
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
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def loadgen_worker_main(spec_json: str) -> None:
    """Entry point of the worker process: run the spec, print the summary as JSON."""
    spec = LoadSpec(**json.loads(spec_json))
    require_loopback(spec.host)
    raise_fd_limit(spec.clients + 64)
    summary = asyncio.run(run_load(spec))
    sys.stdout.write(json.dumps(summary) + "\n")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What every answer of a mode must carry."""

    content: bytes  # the body once its Content-Encoding is undone
    wire_size: int | None  # bytes of body as received; None: may vary (re-encoded by an addon)


@dataclass
class Target:
    """Where a mode's requests go, what they look like and what must come back."""

    host: str
    port: int
    request: bytes
    expected: Expected
    pid: int | None = None  # the proxy's, to measure its CPU time; None: direct or unknown


#: The environment variable that makes the proxy load addon scripts (``[hooks] scripts``).
HOOKS_SCRIPTS_ENV = "INTERCEPTOR_HOOKS_SCRIPTS"
#: The addon the ``+demo`` variants load: it rewrites "cherry" to "banana" in text/html bodies.
DEMO_SCRIPT = REPO_ROOT / "examples" / "demo.py"
#: The word of the proxy command that names the twistd plugin; twistd's own options go before.
PLUGIN_NAME = "interceptor"


#: Issue 14's done-when: plain keep-alive requests/s with 2 workers over 1 worker's, on the
#: 2-core development machine, measured in the same run.
WORKERS_SCALING_GOAL = 1.3


@dataclass(frozen=True)
class Variant:
    """A configuration of this tree's proxy that ``--variants`` or ``--workers`` measures beside
    the others."""

    name: str
    reactor: str | None  # twistd --reactor; None: twistd's default (epoll on Linux), as today
    reactor_module: str | None  # the module twistd's "reactor class:" line must name; None: any
    demo: bool  # load DEMO_SCRIPT through HOOKS_SCRIPTS_ENV
    workers: int | None = None  # [proxy] workers through WORKERS_ENV; None: as inherited

    def command(self, cmd: Sequence[str]) -> list[str]:
        """The proxy command ``cmd`` with this variant's ``--reactor`` before the plugin name.

        ValueError (one line) if ``cmd`` has no plugin name or already picks a reactor.
        """
        words = list(cmd)
        if self.reactor is None:
            return words
        if PLUGIN_NAME not in words:
            raise ValueError(
                f"variant {self.name}: the proxy command has no {PLUGIN_NAME!r} word to put "
                f"--reactor={self.reactor} before"
            )
        at = words.index(PLUGIN_NAME)
        if any(w in ("-r", "--reactor") or w.startswith("--reactor=") for w in words[:at]):
            raise ValueError(f"variant {self.name}: the proxy command already picks a reactor")
        return [*words[:at], f"--reactor={self.reactor}", *words[at:]]

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the demo addon on for a ``+demo`` variant, and off for the others; and
        with a ``--workers`` variant's worker count.

        Off rather than inherited: ``epoll`` and ``epoll+demo`` side by side must differ by the
        addon and nothing else, whatever the caller's environment holds.
        """
        child = dict(env)
        if self.demo:
            child[HOOKS_SCRIPTS_ENV] = str(DEMO_SCRIPT)
        else:
            child.pop(HOOKS_SCRIPTS_ENV, None)
        if self.workers is not None:
            child[WORKERS_ENV] = str(self.workers)
        return child

    def expected(self, body: OriginBody) -> Expected:
        """What this variant's proxy must answer when the origin serves ``body``."""
        if not self.demo:
            return Expected(body.content, len(body.wire))
        content = body.content
        if body.content_type.startswith(b"text/html"):
            content = content.replace(b"cherry", b"banana")
        # "banana" is as long as "cherry", so an unencoded body keeps its size; a gzipped one
        # the proxy decodes, rewrites and encodes again, to whatever size its compressor makes
        # (or sends decoded), so only the warm-up's decoded comparison can check it.
        return Expected(content, len(body.wire) if body.content_encoding is None else None)


#: ``--variants`` names, in the order of the help text.
VARIANTS = {
    v.name: v
    for v in (
        Variant("epoll", None, "epollreactor", demo=False),
        Variant("asyncio", "asyncio", "asyncioreactor", demo=False),
        # Explicit: with scripts configured the proxy would choose asyncio by itself.
        Variant("epoll+demo", "epoll", "epollreactor", demo=True),
        Variant("asyncio+demo", "asyncio", "asyncioreactor", demo=True),
    )
}


def worker_variants(text: str) -> list[Variant]:
    """``--workers`` ``"1,2"`` as variants ``workers=1`` and ``workers=2`` (twistd's default
    reactor, no addon); ValueError (one line) for a bad list."""
    return [
        Variant(workers_name(n), None, None, demo=False, workers=n)
        for n in parse_worker_counts(text)
    ]


def variants_arg(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Variant] | None:
    """``--variants`` or ``--workers`` as a list (None without either); exits 2 with one line
    if it cannot be run.

    Checked while parsing, so that a bad list fails before any process is started.
    """
    if args.variants is None and args.workers is None:
        return None

    def refuse(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    if args.variants is not None and args.workers is not None:
        # A table of every variant times every worker count: run one after the other instead.
        refuse("--variants and --workers exclude each other: run them one after the other")
    option = "--variants" if args.variants is not None else "--workers"
    if args.variants is not None:
        names = [name.strip() for name in args.variants.split(",")]
        for name in names:
            if name not in VARIANTS:
                refuse(f"--variants: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        if len(set(names)) != len(names):
            refuse("--variants: a variant is named twice")
        variants = [VARIANTS[name] for name in names]
    else:
        try:
            variants = worker_variants(args.workers)
        except ValueError as e:
            refuse(f"--workers: {e}")
    # --compare measures another tree's default proxy; the two together would make a table of
    # every variant times every tree. Run one after the other instead.
    for given, message in (
        (args.compare, f"{option} and --compare exclude each other: run them one after the other"),
        (args.proxy_url, f"{option} starts every proxy itself, so it excludes --proxy-url"),
        (args.baseline, f"{option} and --baseline exclude each other (a baseline has one proxy)"),
    ):
        if given:
            refuse(message)
    cmd = shlex.split(args.proxy_cmd) if args.proxy_cmd else default_proxy_cmd()
    for variant in variants:
        try:
            variant.command(cmd)
        except ValueError as e:
            refuse(f"{option}: {e}")
    return variants


def variants_results(
    summary: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    described: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The ``variants`` entry of a results file: each variant's proxy and ratios.

    The variants' figures themselves are the summary's entries under their names.
    """
    first = names[0]
    first_cpu = summary[first].get("cpu_us_per_request")
    cpu_over_first = {}
    for name in names:
        cpu = summary[name].get("cpu_us_per_request")
        cpu_over_first[name] = cpu / first_cpu if cpu is not None and first_cpu else None
    return {
        "names": list(names),
        "first": first,
        "proxies": {name: dict(described.get(name, {})) for name in names},
        "cpu_per_request_over_first": cpu_over_first,
        "ratios_over_direct": {
            name: over_direct(summary[name], summary["direct"]) for name in names
        },
    }


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
    proxy_cpu_s: float | None  # the proxy's whole process tree: supervisor and workers
    origin_cpu_s: float | None
    loadgen_cpu_s: float | None
    origin_accepts: int | None
    origin_requests: int | None
    # Seconds each of the proxy's processes used: "proxy" (a single process), or "supervisor"
    # and "worker N".
    proxy_cpu_by_process: dict[str, float] = field(default_factory=dict)
    machine_busy_s: float | None = None  # all CPUs, everything but idle and iowait
    machine_total_s: float | None = None  # all CPUs, busy or not
    # With --loadgen wrk, wrk's own figures (its clock, bytes, its CPU, ...); None otherwise.
    loadgen_report: dict[str, Any] | None = None
    latencies: array[float] = field(repr=False, default_factory=lambda: array("d"))

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
    duration: float,
) -> RoundResult:
    """Run one load-generator process (``--loadgen``) against ``target`` and collect its
    numbers."""
    origin_process, origin_port = origin
    pids = {"origin": origin_process.pid}
    if target.pid is not None:
        pids["proxy"] = target.pid
    before = origin_stats(origin_port)
    if args.loadgen == "wrk":
        summary, latencies = run_wrk_round(
            target, args, workdir, f"{mode}-{round_no}", duration, pids
        )
    else:
        latency_path = workdir / f"latencies-{mode}-{round_no}.bin"
        spec = LoadSpec(
            host=target.host,
            port=target.port,
            request=target.request.decode("latin-1"),
            size=target.expected.wire_size,
            clients=args.clients,
            duration=duration,
            max_requests=args.max_requests,
            latency_path=str(latency_path),
            cpu_pids=pids,
        )
        summary = run_loadgen(__file__, spec, duration)
        latencies = read_float_array(latency_path)
    after = origin_stats(origin_port)
    p50, p99 = percentiles(latencies, [50, 99])
    cpu = summary["cpu_seconds"]
    tree = summary["cpu_trees"].get("proxy")
    by_process: dict[str, float] = {}
    if tree is not None and target.pid is not None:
        if tree["gone"]:
            # Its CPU since the round began is lost with it, and it was restarted or the proxy
            # is going: the round's figures would be short, so there are none.
            raise RuntimeError(
                f"mode {mode}, round {round_no}: proxy process(es) "
                f"{', '.join(map(str, tree['gone']))} ended during the round"
            )
        by_process = process_roles(target.pid, tree["per_pid"])
    machine = summary["machine_cpu_seconds"]
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
        proxy_cpu_by_process=by_process,
        machine_busy_s=machine[0] if machine else None,
        machine_total_s=machine[1] if machine else None,
        loadgen_report=summary.get("loadgen_report"),
        latencies=latencies,
    )


def run_wrk_round(
    target: Target,
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    duration: float,
    pids: dict[str, int],
) -> tuple[dict[str, Any], array[float]]:
    """One round with wrk as the load generator: a summary shaped like the asyncio
    generator's (:func:`run_load`) and the latencies.

    The CPU readings bracket wrk's whole life, so all of its CPU (from ``wait4``) falls
    inside the window that the proxy's, the origin's and the machine's are read over; the
    window is the round's elapsed time too (wrk's own clock, ~10 ms shorter: its start-up,
    connects and done(), is in its report).
    """
    wrk = WrkRound(
        args.wrk,
        target.host,
        target.port,
        target.request,
        clients=args.clients,
        duration=int(duration),
        threads=args.wrk_threads,
        workdir=workdir,
        name=name,
    )
    cpu0 = _cpu_snapshot(pids)
    t0 = time.perf_counter()
    wrk.run()
    t1 = time.perf_counter()
    cpu1 = _cpu_snapshot(pids)
    result = wrk.result()
    used = _cpu_used(cpu0, cpu1)
    # The driver's own CPU is what _cpu_snapshot read as the load generator's.
    used["seconds"]["loadgen"] = result.cpu_s
    summary = {
        "requests": result.requests,
        "elapsed": t1 - t0,
        "errors": result.errors,
        # wrk reconnects without counting it; a close that cut a response is a read error.
        "reconnects": 0,
        "cpu_seconds": used["seconds"],
        "cpu_trees": used["trees"],
        "machine_cpu_seconds": used["machine"],
        "loadgen_report": result.report(),
    }
    return summary, expand_latencies(result.latency_us, args.max_requests)


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Aggregate the rounds of one mode: totals, rates and latency percentiles of all requests."""
    requests = sum(r.requests for r in rounds)
    elapsed = sum(r.elapsed for r in rounds)
    proxy_cpu = sum_or_none([r.proxy_cpu_s for r in rounds])
    origin_cpu = sum_or_none([r.origin_cpu_s for r in rounds])
    loadgen_cpu = sum_or_none([r.loadgen_cpu_s for r in rounds])
    machine_busy = sum_or_none([r.machine_busy_s for r in rounds])
    machine_total = sum_or_none([r.machine_total_s for r in rounds])
    direct = all(r.mode == "direct" for r in rounds)
    ours = sum_or_none([0.0 if direct else proxy_cpu, origin_cpu, loadgen_cpu])
    return {
        "rounds": len(rounds),
        "requests": requests,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "rps_per_round": [r.rps for r in rounds],
        **latency_fields(merged_array(r.latencies for r in rounds)),
        **error_fields(rounds),
        "proxy_cpu_s": proxy_cpu,
        "cpu_us_per_request": per_request_us(proxy_cpu, requests),
        "proxy_cpu_pct_of_core": pct_of_core(proxy_cpu, elapsed),
        "origin_cpu_us_per_request": per_request_us(origin_cpu, requests),
        "loadgen_cpu_pct_of_core": pct_of_core(loadgen_cpu, elapsed),
        "origin_cpu_pct_of_core": pct_of_core(origin_cpu, elapsed),
        **by_process_fields([r.proxy_cpu_by_process for r in rounds], elapsed),
        **machine_fields(machine_busy, machine_total, ours, elapsed),
        **origin_fields(rounds, requests),
    }


_METRICS: list[Metric] = [
    ("requests/s", "rps", 0, True, False),
    ("p50 latency (ms)", "p50_ms", 2, True, False),
    ("p99 latency (ms)", "p99_ms", 2, True, False),
    ("proxy CPU per request (µs)", "cpu_us_per_request", 1, False, True),
    ("proxy CPU (% of one core)", "proxy_cpu_pct_of_core", 0, False, True),
    ("proxy processes", "proxy_processes", 0, False, True),
    ("busiest proxy process (% of one core)", "proxy_busiest_process_pct_of_core", 0, False, True),
    ("origin CPU per request (µs)", "origin_cpu_us_per_request", 1, True, False),
    ("origin CPU (% of one core)", "origin_cpu_pct_of_core", 0, True, False),
    ("load generator CPU (% of one core)", "loadgen_cpu_pct_of_core", 0, True, False),
    ("rest of the machine (% of one core)", "rest_cpu_pct_of_core", 0, True, False),
    ("all CPUs busy (%)", "machine_busy_pct", 0, True, False),
    ("origin accepts", "origin_accepts", 0, False, False),
    ("origin accepts per 1k requests", "origin_accepts_per_1k", 1, False, False),
    ("requests completed", "requests", 0, True, False),
    ("errors", "error_count", 0, False, False),
]


#: The key figures compared between this tree's proxy and the ``--compare`` revision's.
COMPARE_KEYS = ("cpu_us_per_request", "rps")


def goal_line(proxy_summary: dict[str, Any], which: str = "") -> tuple[str, bool | None]:
    """The goal line and whether the goal was met (None if not measured).

    ``which`` names the proxy in the line (the first ``--variants`` one; "": the only one).
    """
    cpu = proxy_summary.get("cpu_us_per_request")
    return goal_verdict(
        f"goal: {which + ' ' if which else ''}proxy CPU per request "
        f"<= {GOAL_CPU_US_PER_REQUEST:.0f} µs",
        cpu,
        GOAL_CPU_US_PER_REQUEST,
        f"{cpu:.1f} µs" if cpu is not None else "",
        proxy_summary.get("error_count", 0),
        "proxied requests",
        not_measured=" -- not measured (no proxy pid; pass --proxy-pid)",
    )


def decoded_body(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """``body`` with its Content-Encoding (none or gzip) undone; ValueError for anything else."""
    codings = [v.strip().lower() for k, v in headers if k.lower() == b"content-encoding"]
    if not codings or codings == [b"identity"]:
        return body
    if codings == [b"gzip"]:
        try:
            return gzip.decompress(body)
        except (OSError, EOFError) as e:
            raise ValueError(f"a gzip body that does not decompress ({e})") from None
    raise ValueError(f"Content-Encoding {b', '.join(codings).decode('latin-1')!r}")


def warm_up_check(target: Target, deadline: float, what: str) -> None:
    """One request to ``target``; it must be a 200 with the body ``target.expected`` describes.

    The body is checked in full once decoded, and its size as received when that is fixed (the
    load generator checks only that size, on every response). Connection failures are retried
    until ``deadline`` (the listener may be a moment ahead of the rest of the program); a wrong
    answer fails at once.
    """
    result = request_until_up(
        lambda: http_request(target.host, target.port, target.request, timeout=10),
        deadline,
        f"warm-up request to the {what}",
    )
    expected = target.expected
    size = expected.wire_size
    start = f"body starts {result.body[:200]!r}"
    if result.status != 200 or (size is not None and len(result.body) != size):
        want = f"{size} bytes" if size is not None else "a body"
        raise RuntimeError(
            f"warm-up request to the {what} answered status {result.status} with a "
            f"{len(result.body)}-byte body (expected 200 and {want}); {start}"
        )
    try:
        content = decoded_body(result.headers, result.body)
    except ValueError as e:
        raise RuntimeError(f"warm-up request to the {what} answered {e}; {start}") from None
    if content != expected.content:
        at = len(os.path.commonprefix([content, expected.content]))
        raise RuntimeError(
            f"warm-up request to the {what} answered a body that is not the expected one: "
            f"{len(content)} bytes decoded (expected {len(expected.content)}), first difference "
            f"at byte {at}: {content[at : at + 60]!r} instead of "
            f"{expected.content[at : at + 60]!r}"
        )


def describe_body(body: OriginBody) -> str:
    """``1,024-byte application/octet-stream body`` (plus its gzipped size), for the origin line."""
    text = f"{len(body.content):,}-byte {body.content_type.decode()} body"
    if body.content_encoding is not None:
        text += f", {body.content_encoding.decode()}-encoded to {len(body.wire):,} bytes"
    return text


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
    parser.add_argument(
        "--size", type=int, default=1024, help="response body size in bytes (before --gzip)"
    )
    parser.add_argument(
        "--body",
        choices=ORIGIN_BODIES,
        default=ORIGIN_BODIES[0],
        help=(
            "what the origin serves: octet-stream, or a UTF-8 text/html page that says "
            '"cherry" over and over (for addons that rewrite HTML)'
        ),
    )
    parser.add_argument(
        "--gzip",
        action="store_true",
        help="the origin serves the body gzip-encoded (compressed once, at start)",
    )
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
        help=(
            "safety cap on requests per round (latencies are kept in memory); wrk ends by time "
            "alone, so with --loadgen wrk it caps the latencies kept (scaled down alike)"
        ),
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
        "--variants",
        metavar="LIST",
        help=(
            "measure these configurations of this tree's proxy side by side, each round "
            f"running direct and then each of them (comma-separated: {', '.join(VARIANTS)}; "
            f"+demo loads examples/demo.py through {HOOKS_SCRIPTS_ENV}); the first one's CPU "
            "per request is the one the others are divided by and the goal is checked on"
        ),
    )
    parser.add_argument(
        "--workers",
        metavar="LIST",
        help=(
            "measure this tree's proxy with each of these worker counts side by side "
            f"(comma-separated, e.g. 1,2: {WORKERS_ENV}=N for each), as --variants does; the "
            "proxy's CPU is its supervisor's and every worker's"
        ),
    )
    parser.add_argument(
        "--loadgen",
        choices=LOADGENS,
        default=LOADGENS[0],
        help=(
            "the load generator: python (asyncio, in its own process; ~20 µs of CPU per "
            "request) or wrk (C, epoll: about half that, so more of the CPUs is left to the "
            f"proxy; {WRK_INSTALL}); wrk runs whole seconds, so --duration and --warmup must be "
            "whole numbers"
        ),
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        metavar="N",
        help=(
            "with --loadgen wrk: wrk's threads (-t), 1 by default: one keeps up with the proxy "
            "at the least CPU per request (2 cost ~5%% more here and gained nothing)"
        ),
    )
    add_proxy_bench_args(
        parser,
        default_json=DEFAULT_JSON,
        access_log_help="leave the proxy's access log on (default off)",
    )
    args = parser.parse_args(argv)
    if args.loadgen_worker:
        return args
    wrk = args.loadgen == "wrk"
    check_args(
        parser,
        [
            (1 <= args.clients <= 10_000, "--clients must be between 1 and 10000"),
            *load_arg_checks(args),
            (
                not (args.proxy_url and args.proxy_cmd),
                "--proxy-url and --proxy-cmd exclude each other",
            ),
            (args.proxy_pid is None or args.proxy_url, "--proxy-pid goes with --proxy-url"),
            (
                not (args.proxy_url and args.compare),
                "--compare starts both proxies itself, so it excludes --proxy-url",
            ),
            (wrk or args.wrk_threads is None, "--wrk-threads goes with --loadgen wrk"),
            (
                not wrk or (args.duration >= 1 and args.duration.is_integer()),
                "--loadgen wrk runs whole seconds: --duration must be a whole number",
            ),
            (
                not wrk or args.warmup.is_integer(),
                "--loadgen wrk runs whole seconds: --warmup must be a whole number (or 0)",
            ),
            (
                not wrk or args.wrk_threads is None or 1 <= args.wrk_threads <= args.clients,
                "--wrk-threads must be between 1 and --clients",
            ),
        ],
    )
    args.wrk = None
    if wrk:
        args.wrk_threads = args.wrk_threads or 1
        args.wrk = find_wrk()
        if args.wrk is None:
            parser.exit(2, f"{parser.prog}: error: --loadgen wrk: no wrk here; {WRK_INSTALL}\n")
    args.compare_rev = compare_arg(parser, args)
    args.variant_list = variants_arg(parser, args)
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


def start_tree_proxy(
    args: argparse.Namespace,
    workdir: Path,
    log_path: Path,
    root: Path = REPO_ROOT,
    variant: Variant | None = None,
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start the proxy of source tree ``root``, its config and CA in ``workdir``.

    With ``variant``, in that configuration (its twistd reactor, its environment). Returns
    ``(process, port, description)``; every proxy of a run is started this way.
    """
    cmd = shlex.split(args.proxy_cmd) if args.proxy_cmd else default_proxy_cmd()
    # Its own CA dir and no admin listener: a run must not depend on ~/.interceptor or on port
    # 8081 being free. Settings from the environment still apply.
    env = dict(os.environ)
    env.setdefault("INTERCEPTOR_TLS_CA_DIR", str(workdir / "ca"))
    env.setdefault("INTERCEPTOR_ADMIN_LISTEN", "")
    if variant is not None:
        cmd, env = variant.command(cmd), variant.env(env)
    process, port, desc = start_proxy_on_free_port(
        cmd,
        access_log_config(args.access_log),
        workdir=workdir,
        log_path=log_path,
        env=env,
        root=root,
    )
    if variant is not None and variant.demo:
        desc += f" with {HOOKS_SCRIPTS_ENV}={env[HOOKS_SCRIPTS_ENV]}"
    if variant is not None and variant.workers is not None:
        desc += f" with {WORKERS_ENV}={variant.workers}"
    return process, port, desc


class VariantStartError(Exception):
    """A ``--variants`` proxy did not come up; the message is the whole story, on one line."""


def output_tail_line(log_path: Path, max_lines: int = 3, max_chars: int = 600) -> str:
    """The last lines of a proxy's output joined into one line (" | " between them)."""
    lines = [line.strip() for line in tail_text(log_path, max_lines * 4).splitlines()]
    text = " | ".join([line for line in lines if line][-max_lines:]) or "(no output)"
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def reported_reactor(log_path: Path) -> str | None:
    """The reactor class twistd says it runs ("reactor class: ..." near the top of its log)."""
    try:
        with open(log_path, "rb") as f:
            head = f.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    found = re.search(r"reactor class: ([\w.]+?)\.?\s", head)
    return found.group(1) if found else None


def start_variants(
    args: argparse.Namespace,
    variants: Sequence[Variant],
    workdir: Path,
    body: OriginBody,
    request: bytes,
    started: list[subprocess.Popen[bytes]],
    logs: list[Path],
) -> tuple[dict[str, Target], dict[str, dict[str, Any]]]:
    """Start and check each variant's proxy in turn; return their targets and descriptions.

    Each process is appended to ``started`` and its log to ``logs`` as soon as it exists, so
    the caller stops and reports whatever was started even when a later one fails. A proxy
    that does not come up raises :class:`VariantStartError`.
    """
    targets: dict[str, Target] = {}
    described: dict[str, dict[str, Any]] = {}
    for variant in variants:
        # All of them run for the whole run, started one after the other (no race on start-up),
        # as --compare's two do: the idle ones wait in their reactors, costing nothing.
        vdir = workdir / f"variant-{variant.name}"
        vdir.mkdir()
        log_path = (
            Path(f"{args.proxy_log}.{variant.name}") if args.proxy_log else vdir / "proxy.log"
        )
        logs.append(log_path)
        process, port, desc = start_tree_proxy(args, vdir, log_path, variant=variant)
        started.append(process)
        print(f"proxy {variant.name}: {desc}")
        try:
            deadline = wait_for_proxy(
                LOOPBACK, port, args.startup_timeout, process, f"the {variant.name} proxy"
            )
        except RuntimeError:
            status = process.poll()
            if status is not None:
                # Reaped and accounted for here: the caller's "exited with status" note on
                # stopping it would be a second line about the same failure.
                started.remove(process)
            how = (
                f"exited with status {status}"
                if status is not None
                else f"did not accept connections within {args.startup_timeout:g} s"
            )
            raise VariantStartError(
                f"variant {variant.name}: the proxy {how} at start-up; its output ends: "
                + output_tail_line(log_path)
            ) from None
        worker_pids: list[int] = []
        if variant.workers is not None and variant.workers > 1:
            # The supervisor's sockets accept (into their backlogs) before any worker runs:
            # measuring from then on would count the workers' start-up as the first round's.
            try:
                worker_pids = wait_for_workers(
                    log_path, variant.workers, deadline, process, f"the {variant.name} proxy"
                )
            except RuntimeError as e:
                raise VariantStartError(
                    f"variant {variant.name}: {e}; its output ends: " + output_tail_line(log_path)
                ) from None
            print(
                f"proxy {variant.name}: supervisor pid {process.pid}, worker pids "
                + ", ".join(map(str, worker_pids))
            )
        targets[variant.name] = Target(LOOPBACK, port, request, variant.expected(body), process.pid)
        warm_up_check(targets[variant.name], deadline, f"{variant.name} proxy")
        # twistd has logged its reactor by now (before it listened): a variant must measure the
        # reactor it is named after, whatever --proxy-cmd or twistd's default say.
        reactor = reported_reactor(log_path)
        if (
            reactor is not None
            and variant.reactor_module is not None
            and variant.reactor_module not in reactor.split(".")
        ):
            raise RuntimeError(
                f"variant {variant.name}: twistd runs {reactor}, not the "
                f"{variant.reactor_module} the variant is named after"
            )
        described[variant.name] = {
            "proxy": desc,
            "reactor": reactor,
            "hooks_scripts": str(DEMO_SCRIPT) if variant.demo else None,
            "workers": variant.workers,
            "worker_pids": worker_pids,
        }
    return targets, described


def print_variants_table(summary: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
    """The ``--variants`` (or ``--workers``) table: direct and a column per variant, with
    requests/s and CPU per request over the first's."""
    ratio_rows = {"rps": "requests/s", "cpu_us_per_request": "proxy CPU per request"}
    print_side_by_side_table(summary, names, _METRICS, ratio_rows)


def over_direct(proxy: Mapping[str, Any], direct: Mapping[str, Any]) -> dict[str, float | None]:
    """A proxy's requests/s, p50 and p99 over direct's (None where direct's is 0)."""
    return {
        name: proxy[key] / direct[key] if direct[key] else None
        for name, key in (("rps", "rps"), ("p50", "p50_ms"), ("p99", "p99_ms"))
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker_main(args.loadgen_worker)
        return 0
    rev: Revision | None = args.compare_rev
    variants: list[Variant] | None = args.variant_list
    if variants is not None:
        modes: tuple[str, ...] = ("direct", *(v.name for v in variants))
    else:
        modes = (*MODES, COMPARE) if rev is not None else MODES
    # The mode that the goal and the proxy/direct ratios are about.
    main_mode = modes[1]
    # SIGTERM stops the run like Ctrl-C does: children stopped, the exported tree removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    baseline = load_baseline(
        args.baseline,
        {
            key: getattr(args, key)
            for key in ("clients", "size", "body", "gzip", "duration", "loadgen")
        },
    )
    body = origin_body(args.size, args.body, args.gzip)
    loadgen_desc = "load generator: python (asyncio)"
    if args.wrk is not None:
        try:
            version = wrk_version(args.wrk)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        loadgen_desc = f"load generator: {version or args.wrk}, {args.wrk_threads} thread(s)"
    load = load_average()
    note = load_note(load)
    if note:
        print(note)
    proxy: subprocess.Popen[bytes] | None = None
    compare_proxy: subprocess.Popen[bytes] | None = None
    variant_proxies: list[subprocess.Popen[bytes]] = []
    compare_desc = ""
    described: dict[str, dict[str, Any]] = {}
    origin: tuple[subprocess.Popen[bytes], int] | None = None
    log_path: Path | None = None
    compare_logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        workdir = Path(tmp)
        try:
            if rev is not None:
                tree = export_revision(rev, workdir / f"tree-{rev.short}")
                print(f"compare: {rev.label} ({rev.sha}) exported to {tree}")
            origin = start_origin(args.size, body=args.body, gzipped=args.gzip)
            origin_port = origin[1]
            print(f"origin: 127.0.0.1:{origin_port} (pid {origin[0].pid}), {describe_body(body)}")

            # A client that is sent gzip has said it takes gzip, as a browser would; without
            # it a proxy could rightly decode the body for it.
            accept = "Accept-Encoding: gzip\r\n" if args.gzip else ""
            proxy_request = (
                f"GET http://127.0.0.1:{origin_port}/x HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{origin_port}\r\n{accept}\r\n"
            ).encode()
            as_served = Expected(body.content, len(body.wire))
            targets = {
                "direct": Target(
                    LOOPBACK,
                    origin_port,
                    (f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n{accept}\r\n").encode(),
                    as_served,
                ),
            }
            warm_up_check(targets["direct"], time.monotonic() + 5, "origin")

            if variants is not None:
                variant_targets, described = start_variants(
                    args, variants, workdir, body, proxy_request, variant_proxies, compare_logs
                )
                targets.update(variant_targets)
                proxy_desc = "variants " + ", ".join(v.name for v in variants)
            else:
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
                    log_path = Path(args.proxy_log) if args.proxy_log else workdir / "proxy.log"
                    proxy, proxy_port, proxy_desc = start_tree_proxy(args, workdir, log_path)
                    proxy_pid = proxy.pid
                print(f"proxy{' (tree)' if rev else ''}: {proxy_desc}")
                deadline = wait_for_proxy(proxy_host, proxy_port, args.startup_timeout, proxy)
                targets["proxy"] = Target(
                    proxy_host, proxy_port, proxy_request, as_served, proxy_pid
                )
                warm_up_check(targets["proxy"], deadline, "proxy")
            if rev is not None:
                # Both proxies run for the whole run, started one after the other (no race on
                # start-up): each then has the same history when measured (warm-up, pools,
                # age), and the idle one waits in epoll, costing nothing. Rounds are
                # sequential, so only one is ever under load.
                compare_dir = workdir / COMPARE
                compare_logs.append(
                    Path(f"{args.proxy_log}.{rev.short}")
                    if args.proxy_log
                    else compare_dir / "proxy.log"
                )
                compare_dir.mkdir()
                compare_proxy, compare_port, compare_desc = start_tree_proxy(
                    args, compare_dir, compare_logs[0], root=tree
                )
                print(f"proxy ({rev.label}): {compare_desc}")
                compare_deadline = wait_for_proxy(
                    LOOPBACK,
                    compare_port,
                    args.startup_timeout,
                    compare_proxy,
                    f"the {rev.label} proxy",
                )
                targets[COMPARE] = Target(
                    LOOPBACK, compare_port, proxy_request, as_served, compare_proxy.pid
                )
                warm_up_check(targets[COMPARE], compare_deadline, f"{rev.label} proxy")

            print(
                f"load: {args.clients} keep-alive clients, {args.duration:g} s per round, "
                f"{args.rounds} round(s) of each mode, on {os.cpu_count()} CPUs; {loadgen_desc}"
            )
            width = max(7, *(len(mode) for mode in modes))
            if args.warmup > 0:
                for mode in modes:
                    w = run_round(mode, 0, targets[mode], args, workdir, origin, args.warmup)
                    print(
                        f"warm-up {mode:>{width}}: {w.rps:9,.0f} req/s, origin accepts "
                        f"{w.origin_accepts}, errors {sum(w.errors.values())}"
                    )

            rounds: list[RoundResult] = []
            for round_no in range(1, args.rounds + 1):
                for mode in round_order(modes, round_no):
                    r = run_round(
                        mode, round_no, targets[mode], args, workdir, origin, args.duration
                    )
                    rounds.append(r)
                    cpu = (
                        f", proxy CPU {r.proxy_cpu_s / r.requests * 1e6:.1f} µs/req"
                        if r.proxy_cpu_s is not None and r.requests
                        else ""
                    )
                    if len(r.proxy_cpu_by_process) > 1 and r.elapsed:
                        # How evenly the kernel spread the connections over the workers.
                        pcts = {k: v / r.elapsed * 100 for k, v in r.proxy_cpu_by_process.items()}
                        cpu += f" (% of a core: {by_process_text(pcts)})"
                    errors = sum(r.errors.values())
                    print(
                        f"round {round_no}/{args.rounds} {mode:>{width}}: {r.rps:9,.0f} req/s, "
                        f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms{cpu}, "
                        f"origin accepts {r.origin_accepts}, errors {errors}"
                        + (f" {r.errors}" if errors else "")
                        + (f", reconnects {r.reconnects}" if r.reconnects else "")
                        + rest_text(
                            r.machine_busy_s,
                            [r.proxy_cpu_s if mode != "direct" else 0.0, r.origin_cpu_s]
                            + [r.loadgen_cpu_s],
                            r.elapsed,
                        )
                    )
                    for process in (proxy, compare_proxy, *variant_proxies):
                        if process is not None and process.poll() is not None:
                            raise RuntimeError(
                                f"the proxy (pid {process.pid}) exited with status "
                                f"{process.returncode}"
                            )
        except VariantStartError as e:
            # One line: the proxy's own words say why (e.g. a setting this tree does not have).
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, OSError, ValueError) as e:
            report_error(e, log_path, bool(args.proxy_log), compare_logs)
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxies and the origin", file=sys.stderr)
            return 130
        finally:
            stop_proxy_and_origin(proxy, origin, compare_proxy, *variant_proxies)

    summary = {mode: summarize([r for r in rounds if r.mode == mode]) for mode in modes}
    if variants is not None:
        print_variants_table(summary, modes[1:])
    else:
        print_direct_proxy_table(
            summary,
            _METRICS,
            baseline["summary"] if baseline else None,
            args.baseline,
            rate_key="rps",
            rate_label="requests/s",
            compare=rev,
            compare_keys=COMPARE_KEYS,
        )
    note = rest_note(summary, modes)
    if note:
        print(note)
    scaling = None
    if args.workers is not None:
        rates = {(r.mode, r.round): r.rps for r in rounds}
        rests = {
            (r.mode, r.round): rest_pct(
                r.machine_busy_s, [r.proxy_cpu_s, r.origin_cpu_s, r.loadgen_cpu_s], r.elapsed
            )
            for r in rounds
        }
        scaling = workers_scaling(rates, rests, summary, modes[1:], "rps")
        calm = quiet_rounds(rests, modes[1:])
        if calm and len(calm) < args.rounds:
            # On a shared machine the rounds nobody else competed in are the ones that say what
            # the proxy does: the same table over those alone.
            summary_quiet = {
                mode: summarize([r for r in rounds if r.mode == mode and r.round in calm])
                for mode in modes
            }
            print()
            print(quiet_title(calm, args.rounds))
            print_variants_table(summary_quiet, modes[1:])
            scaling["quiet_summary"] = summary_quiet
        for line in scaling_lines(scaling, modes[1:], "requests/s", WORKERS_SCALING_GOAL):
            print(line)
    text, met = goal_line(summary[main_mode], main_mode if variants is not None else "")
    print(text)
    for mode in modes[1:]:
        if summary[mode]["error_count"]:
            which = "proxy" if mode == "proxy" else f"{rev.label if rev else mode} proxy"
            print(
                f"warning: {summary[mode]['error_count']} {which} errors: {summary[mode]['errors']}"
            )

    results = {
        **results_header("throughput", load_average=load),
        "params": {
            "clients": args.clients,
            "duration": args.duration,
            "rounds": args.rounds,
            "size": args.size,
            "body": args.body,
            "gzip": args.gzip,
            "wire_size": len(body.wire),
            "warmup": args.warmup,
            "max_requests": args.max_requests,
            "access_log": args.access_log,
            "proxy": proxy_desc,
            "compare": args.compare,
            "variants": [v.name for v in variants] if variants is not None else None,
            "workers": args.workers,
            "loadgen": args.loadgen,
            "loadgen_desc": loadgen_desc,
            "wrk_threads": args.wrk_threads,
        },
        "rounds": [r.to_json() for r in rounds],
        # With --variants, keyed by variant name beside "direct" (there is no "proxy").
        "summary": summary,
        **(
            {"ratios_proxy_over_direct": over_direct(summary["proxy"], summary["direct"])}
            if variants is None
            else {}
        ),
        **(
            {"compare": compare_results(rev, compare_desc, compare_ratios(summary, COMPARE_KEYS))}
            if rev is not None
            else {}
        ),
        **(
            {"variants": variants_results(summary, modes[1:], described)}
            if variants is not None
            else {}
        ),
        **({"workers_scaling": scaling} if scaling is not None else {}),
        "goal": {
            "cpu_us_per_request_max": GOAL_CPU_US_PER_REQUEST,
            "mode": main_mode,
            "measured": summary[main_mode]["cpu_us_per_request"],
            "met": met,
        },
    }
    print(f"results: {write_json(args.json, results)}")
    return 1 if args.check and met is False else 0


if __name__ == "__main__":
    sys.exit(main())
