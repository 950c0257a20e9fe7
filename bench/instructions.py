"""Instructions per proxied request: the proxy's user-space instruction count, from callgrind.

Why instructions: on a small machine the wall-clock benchmarks (``throughput.py``, ``tls.py``)
swing by +-20% from round to round, because the proxy shares two cores with the origin, the
load generator and whatever else runs, and CPU time then depends on caches, frequency and
scheduling. The number of instructions the proxy executes for a request does not: it is the
same whether the other core is idle or busy, so a few-percent change between two revisions
shows up as such, run after run. Not exactly the same from one proxy process to the next:
repeat measurements of one tree differed by 0.01-1.3% on the machine this was written on
(likely causes, not established: string hash seeds, addresses, how reads happen to be split),
hence ``--repeat``.

What they leave out: valgrind counts the instructions the process executes in user space,
Python, OpenSSL and libc included, but not the kernel's work on its behalf (syscalls, socket
buffers, the loopback device, page faults), nor what an instruction costs (a cache miss and a
register move count one each). A change that adds a syscall per request, or that makes memory
access worse, can cost far more than its instruction count says. So this complements the
wall-clock CPU benchmarks; it does not replace them.

How: the proxy (``twistd -n interceptor``, the tree's twistd plugin, its own config and CA
dir) runs under ``valgrind --tool=callgrind``. One client connection sends ``--warmup``
keep-alive GETs (imports, caches, the upstream connection and, for ``tls``, the CONNECT, both
TLS handshakes and the minted certificate all happen there), then the counters are zeroed
(``callgrind_control -z``), ``--requests`` more GETs are sent one after the other, and the
counters are dumped (``callgrind_control -d``): the dump's total over ``--requests`` is the
figure. Start-up and shutdown are never counted. Each measurement is a fresh proxy process,
made ``--repeat`` times; the table shows the median and the spread ((max - min) / median).

``plain``
    ``GET http://127.0.0.1:PORT/`` (absolute form) through the proxy to a loopback HTTP origin.
``tls``
    ``CONNECT localhost:PORT``, TLS to the proxy checked against the CA the proxy made in its
    temporary CA dir, then origin-form GETs inside the intercepted tunnel; the origin serves
    HTTPS with a throw-away certificate (``make_origin_certs``) that the proxy verifies
    (``INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE``), and ``INTERCEPTOR_UPSTREAM_HOSTS`` maps
    ``localhost`` to 127.0.0.1.

Both origins are ``_common.py origin`` processes with a ``--size``-byte body (1 KiB by
default); their instructions, and this driver's, are not counted. The proxy is started with
``INTERCEPTOR_TLS_CA_DIR``, ``INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE``, ``INTERCEPTOR_ADMIN_LISTEN=""``,
``INTERCEPTOR_UPSTREAM_HOSTS=localhost=127.0.0.1`` and ``[log] access = false`` (true with
``--access-log``); other ``INTERCEPTOR_*`` settings are inherited from the environment (and
printed).

Run from the repository root (each measurement takes about 30-60 s under valgrind)::

    /work/venv/bin/python bench/instructions.py                     # this tree, both modes
    /work/venv/bin/python bench/instructions.py --compare main~3    # tree versus main~3
    /work/venv/bin/python bench/instructions.py --mode tls --keep-dumps /tmp/cg

``--compare REV`` exports REV's tree (``git archive``, as the other benchmarks do) and measures
its proxy in the same run, interleaved with this tree's (tree, REV, tree, REV, ...); a line
per mode then says whether the two trees' ranges of measurements overlap.
``--keep-dumps DIR`` keeps each callgrind dump, for ``callgrind_annotate`` to say where the
instructions went.

Not a test: pytest never runs it. Loopback only; every wait has a deadline, every loop a count;
child processes are stopped on exit (errors and Ctrl-C included, and by the kernel if this
driver dies) and the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httptools
from _common import (
    COMPARE,
    LOOPBACK,
    REPO_ROOT,
    Revision,
    TunnelRefusedError,
    access_log_config,
    check_args,
    compare_arg,
    compare_results,
    default_proxy_cmd,
    export_revision,
    fmt_number,
    make_origin_certs,
    open_tunnel,
    print_table,
    receive_response,
    report_error,
    results_header,
    start_origin,
    start_proxy_on_free_port,
    stop_process,
    wait_for_proxy,
    write_json,
)

DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "instructions.json"
MODES = ("plain", "tls")
#: The target name of this tree's proxy (the ``--compare`` revision's is :data:`COMPARE`).
TREE = "proxy"
#: The name the TLS client asks for (SNI, certificate check, CONNECT and Host).
SERVER_NAME = "localhost"
#: Seconds one request may take under valgrind before the run is declared stuck.
REQUEST_TIMEOUT = 60.0
#: Seconds a ``callgrind_control`` command may take (it waits for the dump to be written).
CONTROL_TIMEOUT = 120.0
#: Seconds the proxy gets to exit after SIGTERM (valgrind writes its final dump then).
STOP_TIMEOUT = 60.0

#: The proxy settings every measured proxy gets whatever the environment says.
_FORCED = (
    "INTERCEPTOR_TLS_CA_DIR",
    "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE",
    "INTERCEPTOR_ADMIN_LISTEN",
    "INTERCEPTOR_UPSTREAM_HOSTS",
)


class SetupError(Exception):
    """Something this benchmark needs is missing (valgrind, a tool): exit 2, one line."""


@dataclass(frozen=True)
class Tools:
    """The valgrind programs a run uses, found on PATH before anything is started."""

    valgrind: str
    control: str  # callgrind_control
    version: str


def find_tools() -> Tools:
    """``valgrind`` and ``callgrind_control`` from PATH; SetupError naming what is missing."""
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        missing = "valgrind" if valgrind is None else "callgrind_control"
        raise SetupError(f"{missing} not found on PATH: install valgrind (it has both)")
    try:
        done = subprocess.run(
            [valgrind, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise SetupError(f"{valgrind} --version failed: {e}") from None
    if done.returncode != 0:
        raise SetupError(f"{valgrind} --version exited with status {done.returncode}")
    return Tools(valgrind, control, done.stdout.strip())


@dataclass
class Measurement:
    """One proxy process's count: ``instructions`` over ``requests`` measured requests."""

    mode: str
    target: str
    repeat: int
    requests: int
    instructions: int
    seconds: float  # wall time of the measured requests (valgrind is ~50x slower than native)

    @property
    def per_request(self) -> float:
        """Instructions per request."""
        return self.instructions / self.requests

    def to_json(self) -> dict[str, Any]:
        """The measurement as JSON-ready data."""
        return {**asdict(self), "per_request": self.per_request}


@dataclass
class Origins:
    """The loopback origins of a run (started only for the modes measured)."""

    plain: tuple[subprocess.Popen[bytes], int] | None = None
    tls: tuple[subprocess.Popen[bytes], int] | None = None
    root_ca: Path | None = None  # the TLS origin's root, for the proxy to verify it with

    def stop(self) -> None:
        """Stop whichever origins were started."""
        for origin in (self.plain, self.tls):
            if origin is not None:
                stop_process(origin[0])


class KeepAliveClient:
    """One blocking client connection through the proxy, one request outstanding.

    ``plain``: absolute-form GETs to the HTTP origin. ``tls``: CONNECT to the HTTPS origin,
    TLS to the proxy (verified against ``cafile``), origin-form GETs inside. Each response must
    be a 200 with ``size`` body bytes, so a proxy that fails requests cheaply cannot look fast.
    """

    def __init__(
        self, mode: str, proxy_port: int, origin_port: int, size: int, cafile: Path | None
    ) -> None:
        self.size = size
        self.port = proxy_port
        deadline = time.monotonic() + REQUEST_TIMEOUT
        raw = socket.create_connection((LOOPBACK, proxy_port), timeout=REQUEST_TIMEOUT)
        try:
            if mode == "plain":
                authority = f"{LOOPBACK}:{origin_port}"
                target = f"http://{authority}/x"
                self.sock: socket.socket = raw
            else:
                assert cafile is not None
                authority = f"{SERVER_NAME}:{origin_port}"
                target = "/x"
                self._connect(raw, authority, deadline)
                context = ssl.create_default_context(cafile=str(cafile))
                # The handshake happens here, before the counters are zeroed.
                self.sock = context.wrap_socket(raw, server_hostname=SERVER_NAME)
        except BaseException:
            raw.close()
            raise
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: bench-instructions\r\n\r\n"
        ).encode("ascii")

    @staticmethod
    def _connect(raw: socket.socket, authority: str, deadline: float) -> None:
        """Send CONNECT and read the proxy's reply head; TunnelRefusedError unless 200."""
        open_tunnel(raw, authority, deadline)
        raw.settimeout(REQUEST_TIMEOUT)

    def get(self, deadline: float) -> None:
        """One request and its response, both before ``deadline``; RuntimeError if wrong."""
        timeout = max(0.01, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
        self.sock.settimeout(timeout)
        self.sock.sendall(self.request)
        result = receive_response(
            self.sock, LOOPBACK, self.port, time.monotonic() + timeout, timeout
        )
        # Not keep_alive: httptools reports False once a message is complete. A proxy that
        # closed the connection fails the next request instead.
        if result.status != 200 or len(result.body) != self.size:
            raise RuntimeError(
                f"request through the proxy answered {result.status} with a "
                f"{len(result.body)}-byte body (expected 200 and {self.size} bytes); "
                f"body starts {result.body[:200]!r}"
            )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.sock.close()


def callgrind_control(
    tools: Tools, vgdb_prefix: Path, command: str, process: subprocess.Popen[bytes]
) -> None:
    """``callgrind_control COMMAND PID`` (``-z`` zero, ``-d`` dump); RuntimeError if it fails.

    It talks to valgrind through vgdb FIFOs under ``vgdb_prefix`` (in the run's temporary
    directory, so a killed run leaves none in /tmp) and returns once valgrind has done it.
    """
    if process.poll() is not None:
        raise RuntimeError(f"the proxy (pid {process.pid}) exited with status {process.returncode}")
    try:
        done = subprocess.run(
            [tools.control, f"--vgdb-prefix={vgdb_prefix}", command, str(process.pid)],
            capture_output=True,
            text=True,
            timeout=CONTROL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"callgrind_control {command} {process.pid} failed: {e}") from None
    # callgrind_control exits 0 even when it found no such process ("Error: Callgrind task
    # with PID/name ... not detected"), so success is its "OK." line.
    out = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or not re.search(r"^\s*OK\.\s*$", done.stdout, re.MULTILINE):
        raise RuntimeError(f"callgrind_control {command} {process.pid} said: {out[-500:]!r}")


def read_total(out_file: Path, keep_dir: Path | None, keep_name: str) -> int:
    """The instruction total of the one dump ``callgrind_control -d`` wrote for ``out_file``.

    Dumps on request are ``OUT.1``, ``OUT.2``...; the final one at exit is ``OUT`` itself and is
    not read. With ``keep_dir`` the dump is moved there as ``keep_name``; otherwise deleted.
    """
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"))
    dumps = [d for d in dumps if re.fullmatch(r"\d+", d.name[len(out_file.name) + 1 :])]
    if len(dumps) != 1:
        raise RuntimeError(f"expected one callgrind dump next to {out_file}, found {len(dumps)}")
    total = None
    events = None
    with open(dumps[0], encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
    if total is None or not events or events[0] != "Ir":
        raise RuntimeError(f"{dumps[0]} has no instruction total (events {events})")
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(dumps[0], keep_dir / keep_name)
    else:
        dumps[0].unlink()
    return total


@dataclass
class Run:
    """What every measurement of a run shares."""

    args: argparse.Namespace
    tools: Tools
    workdir: Path
    origins: Origins
    roots: dict[str, Path]  # target -> source tree
    labels: dict[str, str]  # target -> how the output names it
    descs: dict[str, str]  # target -> the last proxy command started for it
    logs: list[Path]


def measure(run: Run, mode: str, target: str, repeat: int) -> Measurement:
    """Start ``target``'s proxy under callgrind, warm it up, count ``--requests`` requests.

    The proxy is stopped before returning, whatever happens.
    """
    args = run.args
    name = f"{mode}-{target}-{repeat}"
    workdir = run.workdir / name
    workdir.mkdir()
    out_file = workdir / "callgrind.out"
    vgdb_prefix = workdir / "vgdb"  # its FIFOs go in workdir, which exists
    cmd = [
        run.tools.valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        f"--vgdb-prefix={vgdb_prefix}",
        *default_proxy_cmd(),
    ]
    ca_dir = workdir / "ca"
    assert run.origins.root_ca is not None
    forced = {
        "INTERCEPTOR_TLS_CA_DIR": str(ca_dir),
        "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(run.origins.root_ca),
        "INTERCEPTOR_ADMIN_LISTEN": "",
        "INTERCEPTOR_UPSTREAM_HOSTS": f"{SERVER_NAME}=127.0.0.1",
    }
    assert forced.keys() == set(_FORCED)
    log_path = workdir / "proxy.log"
    run.logs.append(log_path)
    origin = run.origins.plain if mode == "plain" else run.origins.tls
    assert origin is not None
    proxy, port, desc = start_proxy_on_free_port(
        cmd,
        access_log_config(args.access_log),
        workdir=workdir,
        log_path=log_path,
        env={**os.environ, **forced},
        root=run.roots[target],
    )
    run.descs[target] = desc
    label = run.labels[target]
    client: KeepAliveClient | None = None
    try:
        wait_for_proxy(LOOPBACK, port, args.startup_timeout, proxy, f"the {label}")
        cafile = ca_dir / "ca.pem"
        if mode == "tls" and not cafile.exists():
            raise RuntimeError(f"the {label} is up but {cafile} does not exist")
        client = KeepAliveClient(mode, port, origin[1], args.size, cafile)
        deadline = time.monotonic() + args.timeout
        for _ in range(args.warmup):
            client.get(deadline)
        callgrind_control(run.tools, vgdb_prefix, "-z", proxy)
        started = time.monotonic()
        for _ in range(args.requests):
            client.get(deadline)
        seconds = time.monotonic() - started
        callgrind_control(run.tools, vgdb_prefix, "-d", proxy)
        keep = Path(args.keep_dumps) if args.keep_dumps else None
        total = read_total(out_file, keep, f"callgrind.{name}.out")
    except TimeoutError as e:
        raise RuntimeError(
            f"the {label} did not answer in time ({e or 'timed out'}; a request may take "
            f"{REQUEST_TIMEOUT:g} s, a measurement --timeout {args.timeout:g} s)"
        ) from None
    finally:
        if client is not None:
            client.close()
        status = stop_process(proxy, timeout=STOP_TIMEOUT)
        # The dump valgrind writes at exit covers start-up and shutdown: never read, so drop
        # it now rather than let a long run fill the temporary directory.
        out_file.unlink(missing_ok=True)
        if status is not None and status > 0:
            print(
                f"note: the {label} (pid {proxy.pid}) exited with status {status}",
                file=sys.stderr,
            )
    return Measurement(mode, target, repeat, args.requests, total, seconds)


def summarize(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Median, minimum, maximum and spread ((max - min) / median) of instructions per request."""
    values = [m.per_request for m in measurements]
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0}
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        # One measurement has no spread (not a spread of 0).
        "spread": (max(values) - min(values)) / median if median and len(values) > 1 else None,
        "n": len(values),
    }


def fmt_pct(value: float | None) -> str | None:
    """A fraction as '0.8%' (None stays None, shown as '-')."""
    return None if value is None else f"{value * 100:.2f}%"


def print_summary(
    summary: dict[str, dict[str, dict[str, Any]]], rev: Revision | None, repeat: int
) -> None:
    """The results table, and for ``--compare`` a line per mode on whether the ratio is real."""
    headers = ["mode", "tree instr/req"]
    if rev is not None:
        headers += [f"{rev.label} instr/req", "tree/rev", "tree spread", "rev spread"]
    else:
        headers += ["spread"]
    rows = []
    for mode, by_target in summary.items():
        tree = by_target[TREE]
        row: list[str | None] = [mode, fmt_number(tree["median"], 0)]
        if rev is not None:
            other = by_target[COMPARE]
            ratio = by_target.get("ratio_tree_over_rev")
            row += [
                fmt_number(other["median"], 0),
                None if ratio is None else f"{ratio:.3f}x",
                fmt_pct(tree["spread"]),
                fmt_pct(other["spread"]),
            ]
        else:
            row += [fmt_pct(tree["spread"])]
        rows.append(row)
    print()
    print(f"instructions per request (user space, whole proxy process; median of {repeat})")
    print_table(rows, headers)
    if rev is None:
        return
    for mode, by_target in summary.items():
        ratio = by_target.get("ratio_tree_over_rev")
        if ratio is None:
            continue
        tree, other = by_target[TREE], by_target[COMPARE]
        # Whether the two trees' ranges overlap, not the ratio against the spread: with a few
        # measurements each, disjoint ranges are the evidence there is.
        if tree["n"] < 2 or other["n"] < 2:
            verdict = "one measurement each: --repeat 2 or more shows the run-to-run spread"
        elif tree["min"] > other["max"]:
            verdict = f"every tree measurement above every {rev.short} one"
        elif tree["max"] < other["min"]:
            verdict = f"every tree measurement below every {rev.short} one"
        else:
            verdict = "the ranges overlap: not a measured change"
        print(f"{mode}: tree vs {rev.label} {(ratio - 1) * 100:+.1f}% -- {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; exits 2 with one line on bad input."""
    parser = argparse.ArgumentParser(
        description=(
            "User-space instructions the proxy executes per keep-alive request (valgrind "
            "callgrind): deterministic where wall-clock CPU is not. Loopback only."
        )
    )
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both", help="what to measure")
    parser.add_argument(
        "--requests", type=int, default=2000, help="measured requests per proxy (default 2000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=300, help="uncounted requests first (default 300)"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="measurements of each tree per mode (default 2)"
    )
    parser.add_argument("--size", type=int, default=1024, help="response body size in bytes")
    parser.add_argument(
        "--access-log", action="store_true", help="leave the proxy's access log on (default off)"
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also measure the proxy of git revision REV (exported to a temporary directory), "
        "interleaved with this tree's",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for a proxy to start under valgrind (default 300)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds one measurement's requests may take in all (default 1800)",
    )
    parser.add_argument(
        "--keep-dumps", metavar="DIR", help="keep the callgrind dumps in DIR (callgrind_annotate)"
    )
    parser.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    check_args(
        parser,
        [
            (1 <= args.requests <= 1_000_000, "--requests must be between 1 and 1,000,000"),
            (0 <= args.warmup <= 1_000_000, "--warmup must be between 0 and 1,000,000"),
            (1 <= args.repeat <= 20, "--repeat must be between 1 and 20"),
            (0 <= args.size <= 16 * 1024 * 1024, "--size must be between 0 and 16 MiB"),
            (0 < args.startup_timeout <= 3600, "--startup-timeout must be in (0, 3600] seconds"),
            (0 < args.timeout <= 24 * 3600, "--timeout must be in (0, 86400] seconds"),
        ],
    )
    try:
        args.tools = find_tools()
    except SetupError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    # After the tools: a bad revision and a missing valgrind both fail before anything starts.
    args.compare_rev = compare_arg(parser, args)
    return args


def start_origins(modes: Sequence[str], size: int, workdir: Path, origins: Origins) -> None:
    """Start the origins ``modes`` need into ``origins`` (which the caller stops)."""
    # The TLS origin's root is made even for plain alone: the proxy is given it either way.
    origins.root_ca, leaf, key = make_origin_certs(workdir / "origin-certs")
    if "plain" in modes:
        origins.plain = start_origin(size)
        print(f"origin: http://127.0.0.1:{origins.plain[1]} (pid {origins.plain[0].pid})")
    if "tls" in modes:
        origins.tls = start_origin(size, tls_cert=leaf, tls_key=key)
        print(
            f"origin: https://{SERVER_NAME}:{origins.tls[1]} on 127.0.0.1 "
            f"(pid {origins.tls[0].pid})"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    rev: Revision | None = args.compare_rev
    targets = (TREE, COMPARE) if rev is not None else (TREE,)
    # SIGTERM stops the run like Ctrl-C does: the proxy and origins stopped, temp files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    inherited = {
        k: v for k, v in os.environ.items() if k.startswith("INTERCEPTOR_") and k not in _FORCED
    }
    measurements: list[Measurement] = []
    origins = Origins()
    print(f"{args.tools.version}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        workdir = Path(tmp)
        run = Run(
            args,
            args.tools,
            workdir,
            origins,
            {TREE: REPO_ROOT},
            {TREE: "proxy (tree)" if rev is not None else "proxy"},
            {},
            [],
        )
        try:
            if rev is not None:
                tree = export_revision(rev, workdir / f"tree-{rev.short}")
                run.roots[COMPARE] = tree
                run.labels[COMPARE] = f"proxy ({rev.label})"
                print(f"compare: {rev.label} ({rev.sha}) exported to {tree}")
            start_origins(modes, args.size, workdir, origins)
            if inherited:
                print(
                    "proxy settings from the environment: "
                    + shlex.join(f"{k}={v}" for k, v in sorted(inherited.items()))
                )
            print(
                f"{args.warmup} warm-up + {args.requests} counted requests per proxy, "
                f"{args.size}-byte body, {args.repeat} measurement(s) of each, access log "
                + ("on" if args.access_log else "off")
            )
            # Interleaved, repeat by repeat: each tree's measurements are spread over the run
            # the same way (instructions hardly drift, but any drift then hits both).
            for repeat in range(1, args.repeat + 1):
                for mode in modes:
                    for target in targets:
                        m = measure(run, mode, target, repeat)
                        measurements.append(m)
                        print(
                            f"{repeat}/{args.repeat} {mode:5} {run.labels[target]}: "
                            f"{m.per_request:,.0f} instructions/request "
                            f"({m.requests} requests in {m.seconds:.1f} s)",
                            flush=True,
                        )
        except (
            RuntimeError,
            OSError,
            ValueError,
            TunnelRefusedError,
            httptools.HttpParserError,
        ) as e:
            report_error(e, None, True, run.logs[-1:])
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxy and the origins", file=sys.stderr)
            return 130
        finally:
            origins.stop()

    summary: dict[str, dict[str, Any]] = {}
    for mode in modes:
        summary[mode] = {
            t: summarize([m for m in measurements if m.mode == mode and m.target == t])
            for t in targets
        }
        if rev is not None:
            tree_median, rev_median = (
                summary[mode][TREE]["median"],
                summary[mode][COMPARE]["median"],
            )
            summary[mode]["ratio_tree_over_rev"] = (
                tree_median / rev_median if tree_median is not None and rev_median else None
            )
    print_summary(summary, rev, args.repeat)

    results = {
        **results_header("instructions", valgrind=args.tools.version),
        "params": {
            "mode": args.mode,
            "requests": args.requests,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "size": args.size,
            "access_log": args.access_log,
            "proxy": run.descs.get(TREE),
            "proxy_env": inherited,
            "compare": args.compare,
        },
        "measurements": [m.to_json() for m in measurements],
        "summary": summary,
        **(
            {
                "compare": compare_results(
                    rev,
                    run.descs.get(COMPARE, ""),
                    {m: summary[m].get("ratio_tree_over_rev") for m in modes},
                )
            }
            if rev is not None
            else {}
        ),
    }
    print(f"results: {write_json(args.json, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
