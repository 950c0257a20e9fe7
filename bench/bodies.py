"""Body memory benchmark: the proxy's memory while big bodies pass through addons.

What: for each ``--variants`` configuration of this tree's proxy, one ``--size``-byte download
(100 MiB by default) through the proxy, ``--downloads`` times one after the other (each time
``--concurrent`` of them at once), and how much the proxy's memory grew meanwhile. The variants:

``none``
    no addon: the proxy streams every body as it comes, the reference.
``demo``
    ``examples/demo.py`` loaded as a script (``INTERCEPTOR_HOOKS_SCRIPTS``). It implements the
    ``request`` and ``response`` hooks, so the proxy holds a response body for it, up to
    ``[hooks] body_limit`` (default 8 MiB) per message and ``buffer_budget`` (256 MiB) in all,
    and past that streams the rest (``body_overflow = "stream"``, set explicitly).
``demo-reject``
    the same with ``INTERCEPTOR_HOOKS_BODY_OVERFLOW=reject``: a body over the limit is refused,
    so the big download must be answered 502 (checked, and reported).

Why: buffering bodies for addons must not make the proxy's memory follow the body's size. The
goal printed under the table: with ``demo`` loaded, the 100 MiB download streams through (it
is over body_limit) and the proxy's peak memory (VmHWM) grows by less than 20 MiB over its
warm RSS. Each variant's growth is also given minus ``none``'s in the same run, which takes out
what any proxy needs to move bytes (socket buffers, read chunks).

How: two loopback origins (``_common.py origin``; the same ``--body`` and framing): a small one
(16 KiB) for the warm-up and a ``--size`` one for the downloads. Per variant, a fresh proxy
(twistd, its own CA dir, no admin listener, access log off unless ``--access-log``) takes
``--warmup-requests`` small requests (each checked: a ``demo`` proxy must have rewritten
"cherry" to "banana", ``none`` must not have, which proves the addon is or is not loaded), then
the driver reads its RSS and VmHWM (``/proc/PID/status``) after a short pause. Each download is
a plain blocking socket client on loopback (a thread of this driver, one per concurrent
download): it sends ``GET http://origin/big`` with ``Connection: close``, reads into one 1 MiB
buffer, lets httptools count the body bytes and discards them, so the client never holds the
body. Recorded per download: status, body bytes and whether the message was complete, wall
time and MiB/s; per round the proxy's VmHWM and RSS; at the end its RSS after a pause. Growths
are over the warm RSS, in MiB.

VmHWM (the peak RSS) only ever grows, so a later variant in the same process would report an
earlier one's peak: that is why every variant gets a proxy process of its own, started after the
previous one stopped, and why the per-round VmHWM figures are cumulative (the variant's peak so
far, not that round's).

``--body`` (default ``html``: the demo addon rewrites text/html, so that is the body it wants to
hold; ``octet`` for application/octet-stream). ``--chunked`` makes the origins send their bodies
chunked: the proxy then cannot know a body's length from its head. By default they send a
Content-Length, and a body declared larger than body_limit is never buffered at all (the proxy
streams it from the first byte; interceptor/proxy/response.py, ``over_limit``), so only
``--chunked`` takes the proxy through "hold body_limit, then stream the rest" (and, with reject,
"hold body_limit, then 502"). ``--reactor`` pins twistd's reactor for every variant; by default
each runs what the proxy picks (epoll without addons, asyncio once scripts are loaded), and the
table says which.

The growths are over the warm RSS; VmHWM counts from the proxy's start, so a start-up peak
above the warm RSS would show in them too (the table gives the warm VmHWM beside the warm RSS
to tell). The speeds are the client's and only indicative: the origin copies each response
into its transport buffer as it answers, which the first MiB/s pay for too.

Run from the repository root::

    /work/main/.venv/bin/python bench/bodies.py                  # 100 MiB, 3 downloads each
    /work/main/.venv/bin/python bench/bodies.py --concurrent 4   # 4 at once, 3 times
    /work/main/.venv/bin/python bench/bodies.py --chunked        # body_limit buffered first
    /work/main/.venv/bin/python bench/bodies.py --variants none,demo --reactor asyncio

Results go to ``bench/results/bodies.json`` (``--json``). Exit status: 0, or 1 with ``--check``
when the goal is not met, or 2 when a proxy did not start or a round failed (a download that
stalled, was cut short or went wrong ends its variant's rounds with one line).

What it leaves out: request bodies (uploads through a ``request`` hook: the same budget, on the
other side); gzip-encoded bodies; TLS (an intercepted HTTPS download relays the same way, plus
TLS buffers); slow clients (this client reads as fast as loopback goes; with a slow one the
proxy's write buffer is bounded by its back-pressure, not measured here); the late ``response``
hook's own cost; and memory the allocator keeps after a download but the kernel counts in RSS
(the final-RSS row shows it, without saying whose it is).

Not a test: pytest never runs it. Loopback only; every loop is bounded in count and time (a
timeout on every socket operation, a deadline per download, a bounded number of rounds).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
from _common import (
    LOOPBACK,
    ORIGIN_BODIES,
    REPO_ROOT,
    OriginBody,
    access_log_config,
    check_args,
    default_proxy_cmd,
    fmt_number,
    http_request,
    load_average,
    load_note,
    origin_body,
    print_table,
    proc_alive,
    proc_cpu_seconds_or_none,
    proc_hwm_bytes,
    proc_rss_bytes,
    report_error,
    request_until_up,
    results_header,
    start_origin,
    start_proxy_on_free_port,
    stop_process,
    tail_text,
    wait_for_proxy,
    write_json,
)

MiB = 1024 * 1024
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "bodies.json"
#: The goal: the ``demo`` proxy's VmHWM grows by less than this over its warm RSS.
GOAL_GROWTH_MIB = 20.0
GOAL_VARIANT = "demo"
#: The size of the warm-up origin's body.
WARMUP_SIZE = 16 * 1024
#: What the client reads at once (one buffer, reused: the body is never kept).
RECV_SIZE = 1 * MiB
#: The proxy's default ``[hooks] body_limit``, assumed until its log says otherwise.
DEFAULT_BODY_LIMIT = 8 * MiB

HOOKS_SCRIPTS_ENV = "INTERCEPTOR_HOOKS_SCRIPTS"
HOOKS_ADDONS_ENV = "INTERCEPTOR_HOOKS_ADDONS"
OVERFLOW_ENV = "INTERCEPTOR_HOOKS_BODY_OVERFLOW"
DEMO_SCRIPT = REPO_ROOT / "examples" / "demo.py"
#: The word of the proxy command that names the twistd plugin; twistd's own options go before.
PLUGIN_NAME = "interceptor"
REACTORS = {"epoll": "epollreactor", "asyncio": "asyncioreactor"}


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A configuration of this tree's proxy: which addon, what past body_limit."""

    name: str
    demo: bool  # load DEMO_SCRIPT through HOOKS_SCRIPTS_ENV
    overflow: str | None  # [hooks] body_overflow through OVERFLOW_ENV (None: not set)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with exactly this variant's addon settings, whatever the caller's held.

        body_limit and buffer_budget are inherited, so they can be varied from outside.
        """
        child = dict(env)
        for name in (HOOKS_SCRIPTS_ENV, HOOKS_ADDONS_ENV, OVERFLOW_ENV):
            child.pop(name, None)
        if self.demo:
            child[HOOKS_SCRIPTS_ENV] = str(DEMO_SCRIPT)
        if self.overflow is not None:
            child[OVERFLOW_ENV] = self.overflow
        return child

    def settings(self) -> dict[str, str]:
        """The environment this variant sets (for the start line and the results)."""
        return self.env({})

    def expected_status(self, size: int, body_limit: int | None) -> int:
        """What the big download must be answered: 502 if refused for its size, else 200."""
        limit = DEFAULT_BODY_LIMIT if body_limit is None else body_limit
        return 502 if self.demo and self.overflow == "reject" and size > limit else 200


VARIANTS = {
    v.name: v
    for v in (
        Variant("none", demo=False, overflow=None),
        Variant("demo", demo=True, overflow="stream"),
        Variant("demo-reject", demo=True, overflow="reject"),
    )
}


def proxy_command(reactor: str | None) -> list[str]:
    """The proxy command template, with ``--reactor=R`` before the plugin name if given."""
    words = default_proxy_cmd()
    if reactor is None:
        return words
    at = words.index(PLUGIN_NAME)
    return [*words[:at], f"--reactor={reactor}", *words[at:]]


# --------------------------------------------------------------------------------------------
# The download client
# --------------------------------------------------------------------------------------------


@dataclass
class Download:
    """One download through the proxy, as the client saw it."""

    round: int
    slot: int  # which of the round's concurrent downloads
    status: int | None = None
    body_bytes: int = 0
    complete: bool = False  # the response ended as its framing says (not cut short)
    wall_s: float = 0.0  # from connect to the end of the response (or the failure)
    head_s: float | None = None  # from connect to the end of the response head
    body_start: str = ""  # the body's first bytes (what a refusal says)
    error: str | None = None  # why it failed (stalled, cut short, ...); None: it did not

    @property
    def mib_per_s(self) -> float | None:
        """Body MiB over the wall time (None before it ran)."""
        return self.body_bytes / MiB / self.wall_s if self.wall_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mib_per_s": self.mib_per_s}


class _Counter:
    """httptools callbacks that count a response's body and keep only its first bytes."""

    def __init__(self, record: Download, started: float, keep: int = 160) -> None:
        self.record = record
        self.started = started
        self.keep = keep
        self.head = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.record.head_s = time.monotonic() - self.started
        self.record.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.record.body_bytes += len(body)
        if len(self.head) < self.keep:
            self.head += body[: self.keep - len(self.head)]

    def on_message_complete(self) -> None:
        self.record.complete = True


def download(
    record: Download,
    port: int,
    request: bytes,
    io_timeout: float,
    deadline: float,
    max_body: int,
) -> Download:
    """Fetch one response from the proxy at ``LOOPBACK:port``, reading and discarding its body.

    Every socket operation waits at most ``io_timeout`` seconds, the whole at most until
    ``deadline`` (monotonic); more than ``max_body`` body bytes is a failure too, so the loop
    ends whatever the proxy does. Fills in and returns ``record``; never raises for the
    proxy's behaviour (``record.error`` says what went wrong).
    """
    started = time.monotonic()
    counter = _Counter(record, started)
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)

    def got() -> str:
        n = record.body_bytes
        return f"after {n / MiB:,.1f} MiB" if n >= MiB else f"after {n:,} body bytes"

    try:
        with socket.create_connection((LOOPBACK, port), timeout=io_timeout) as sock:
            sock.sendall(request)
            while not record.complete:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    record.error = f"not finished by its deadline {got()}"
                    break
                sock.settimeout(min(io_timeout, remaining))
                try:
                    n = sock.recv_into(buf)
                except TimeoutError:
                    if remaining <= io_timeout:
                        record.error = f"not finished by its deadline {got()}"
                    else:
                        record.error = f"stalled: nothing for {io_timeout:g} s {got()}"
                    break
                if n == 0:
                    record.error = f"connection closed before the response ended, {got()}"
                    break
                counter.parser.feed_data(view[:n])
                if record.body_bytes > max_body:
                    record.error = f"more body than expected ({got()})"
                    break
    except httptools.HttpParserError as e:
        record.error = f"malformed response {got()}: {e}"
    except OSError as e:
        record.error = f"{type(e).__name__}: {e} {got()}"
    finally:
        record.wall_s = time.monotonic() - started
        record.body_start = bytes(counter.head).decode("utf-8", "replace")
    return record


def run_round(
    round_no: int,
    concurrent: int,
    port: int,
    request: bytes,
    args: argparse.Namespace,
    max_body: int,
) -> tuple[list[Download], float]:
    """``concurrent`` downloads at once, each in its own thread; returns them and the wall time.

    Each thread is bounded by its socket timeouts and the shared deadline; the join waits a
    little past that, so this returns even if a thread were stuck.
    """
    started = time.monotonic()
    deadline = started + args.download_timeout
    records = [Download(round_no, slot) for slot in range(concurrent)]
    threads = [
        threading.Thread(
            target=download,
            args=(r, port, request, args.io_timeout, deadline, max_body),
            name=f"download-{round_no}-{r.slot}",
            daemon=True,
        )
        for r in records
    ]
    for t in threads:
        t.start()
    join_by = deadline + args.io_timeout + 5
    for t, r in zip(threads, records, strict=True):
        t.join(max(0.0, join_by - time.monotonic()))
        if t.is_alive():
            r.error = r.error or "the client thread did not finish in time"
    return records, time.monotonic() - started


# --------------------------------------------------------------------------------------------
# The proxy's log
# --------------------------------------------------------------------------------------------


def log_head(log_path: Path, limit: int = 256 * 1024) -> str:
    """The first ``limit`` bytes of a proxy's output, as text ("" if unreadable)."""
    try:
        with open(log_path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def reported_reactor(text: str) -> str | None:
    """The reactor class twistd says it runs ("reactor class: ..." near the top of its log)."""
    found = re.search(r"reactor class: ([\w.]+?)\.?\s", text)
    return found.group(1) if found else None


def reported_body_limit(text: str) -> int | None:
    """The body_limit the proxy's "hooks: ..." start-up line gives (None: no addons, no line)."""
    found = re.search(r"hooks: .*?body_limit (\d+)", text)
    return int(found.group(1)) if found else None


def hook_failures(log_path: Path) -> tuple[Counter[str], str | None]:
    """Hook failures the proxy logged, by event, and the first such line (shortened)."""
    counts: Counter[str] = Counter()
    first = None
    try:
        with open(log_path, "rb") as f:
            for raw in f:  # bounded by the log's size; the access log is off
                line = raw.decode("utf-8", "replace").strip()
                found = re.search(r"addon \S+ failed in (\w+)", line)
                if found:
                    counts[found.group(1)] += 1
                    if first is None:
                        first = line if len(line) <= 300 else line[:300] + "..."
    except OSError:
        pass
    return counts, first


def output_tail_line(log_path: Path, max_lines: int = 3, max_chars: int = 600) -> str:
    """The last lines of a proxy's output joined into one line (" | " between them)."""
    lines = [line.strip() for line in tail_text(log_path, max_lines * 4).splitlines()]
    text = " | ".join([line for line in lines if line][-max_lines:]) or "(no output)"
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


# --------------------------------------------------------------------------------------------
# One variant: a fresh proxy, warmed up, then the downloads
# --------------------------------------------------------------------------------------------


class VariantStartError(Exception):
    """A variant's proxy did not come up or answered the warm-up wrongly (one line)."""


@dataclass
class RoundResult:
    """One round of a variant: its downloads and the proxy's memory just after."""

    round: int
    wall_s: float
    downloads: list[Download]
    hwm_bytes: int | None  # the proxy's VmHWM so far (cumulative: it only grows)
    rss_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        body = sum(d.body_bytes for d in self.downloads)
        return {
            "round": self.round,
            "wall_s": self.wall_s,
            "mib_per_s": body / MiB / self.wall_s if self.wall_s > 0 else None,
            "hwm_bytes": self.hwm_bytes,
            "rss_bytes": self.rss_bytes,
            "downloads": [d.to_json() for d in self.downloads],
        }


@dataclass
class VariantResult:
    """Everything measured of one variant's proxy."""

    name: str
    proxy: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    reactor: str | None = None
    body_limit: int | None = None
    expected_status: int = 200
    warm_rss: int | None = None
    warm_hwm: int | None = None
    final_rss: int | None = None
    cpu_s: float | None = None  # the proxy's CPU time over the downloads
    rounds: list[RoundResult] = field(default_factory=list)
    failure: str | None = None  # the one line that ended its rounds early
    hook_failures: dict[str, int] = field(default_factory=dict)
    first_hook_failure: str | None = None

    @property
    def downloads(self) -> list[Download]:
        return [d for r in self.rounds for d in r.downloads]

    def hwm_growth_mib(self) -> float | None:
        hwm = max((r.hwm_bytes for r in self.rounds if r.hwm_bytes is not None), default=None)
        if hwm is None or self.warm_rss is None:
            return None
        return (hwm - self.warm_rss) / MiB

    def final_growth_mib(self) -> float | None:
        if self.final_rss is None or self.warm_rss is None:
            return None
        return (self.final_rss - self.warm_rss) / MiB

    def good(self, size: int) -> int:
        """Downloads answered as expected: the expected status, complete, and (200) all of it."""
        return sum(
            1
            for d in self.downloads
            if d.error is None
            and d.complete
            and d.status == self.expected_status
            and (self.expected_status != 200 or d.body_bytes == size)
        )

    def summary(self, size: int) -> dict[str, Any]:
        downloads = self.downloads
        ok = [d for d in downloads if d.error is None]
        # Speeds only of bodies that came through (a refusal's few bytes say nothing).
        rates = [d.mib_per_s for d in ok if d.mib_per_s is not None and d.status == 200]
        round_rates = [
            sum(d.body_bytes for d in r.downloads) / MiB / r.wall_s
            for r in self.rounds
            if r.wall_s > 0 and all(d.error is None and d.status == 200 for d in r.downloads)
        ]
        return {
            "reactor": self.reactor,
            "body_limit": self.body_limit,
            "expected_status": self.expected_status,
            "statuses": dict(Counter(str(d.status) for d in downloads)),
            "downloads": len(downloads),
            "complete": sum(1 for d in downloads if d.complete),
            "as_expected": self.good(size),
            "failed": sum(1 for d in downloads if d.error is not None),
            "body_bytes_min": min((d.body_bytes for d in downloads), default=None),
            "body_bytes_max": max((d.body_bytes for d in downloads), default=None),
            "wall_s_median": statistics.median([d.wall_s for d in ok]) if ok else None,
            "mib_per_s_median": statistics.median(rates) if rates else None,
            "round_mib_per_s_median": statistics.median(round_rates) if round_rates else None,
            "proxy_cpu_s": self.cpu_s,
            "warm_rss_mib": self.warm_rss / MiB if self.warm_rss is not None else None,
            "warm_hwm_mib": self.warm_hwm / MiB if self.warm_hwm is not None else None,
            "hwm_growth_mib": self.hwm_growth_mib(),
            "final_rss_growth_mib": self.final_growth_mib(),
            "hook_failures": dict(self.hook_failures),
            "failure": self.failure,
        }


def start_variant_proxy(
    variant: Variant, args: argparse.Namespace, workdir: Path, log_path: Path
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start ``variant``'s proxy (its own CA dir, no admin listener); ``(process, port, desc)``."""
    env = dict(os.environ)
    env.setdefault("INTERCEPTOR_TLS_CA_DIR", str(workdir / "ca"))
    env.setdefault("INTERCEPTOR_ADMIN_LISTEN", "")
    env = variant.env(env)
    process, port, desc = start_proxy_on_free_port(
        proxy_command(args.reactor),
        access_log_config(args.access_log),
        workdir=workdir,
        log_path=log_path,
        env=env,
    )
    settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in variant.settings().items())
    return process, port, desc + (f" with {settings}" if settings else "")


def warm_up(
    variant: Variant,
    port: int,
    request: bytes,
    small: OriginBody,
    count: int,
    deadline: float,
) -> None:
    """``count`` small requests, each checked; VariantStartError (one line) if one is wrong.

    A ``demo`` proxy must have rewritten "cherry" to "banana" (and said so in X-Rewritten),
    ``none`` must pass the body as it is: so the addon is known to be loaded, or not.
    """
    want = small.content
    if variant.demo and small.content_type.startswith(b"text/html"):
        want = want.replace(b"cherry", b"banana")
    for i in range(count):
        result = request_until_up(
            lambda: http_request(LOOPBACK, port, request, timeout=10),
            deadline,
            f"variant {variant.name}: warm-up request {i + 1}",
        )
        if result.status != 200 or result.body != want:
            raise VariantStartError(
                f"variant {variant.name}: warm-up request {i + 1} answered {result.status} with "
                f"{len(result.body):,} bytes starting {result.body[:80]!r} (expected 200 and "
                f"{len(want):,} bytes{', rewritten by the demo addon' if variant.demo else ''})"
            )


def settle_and_read(pid: int, pause: float) -> tuple[int | None, int | None]:
    """After ``pause`` seconds, the proxy's ``(RSS, VmHWM)`` in bytes (None if unreadable)."""
    time.sleep(pause)
    try:
        return proc_rss_bytes(pid), proc_hwm_bytes(pid)
    except (OSError, ValueError):
        return None, None


def round_line(variant: VariantResult, r: RoundResult, rounds: int, size: int) -> str:
    """One printed line per round: answers, bytes, time, speed, memory."""
    statuses = Counter(str(d.status) for d in r.downloads)
    body = sum(d.body_bytes for d in r.downloads)
    complete = sum(1 for d in r.downloads if d.complete)
    rate = body / MiB / r.wall_s if r.wall_s > 0 else 0.0
    warm = variant.warm_rss
    mem = ""
    if warm is not None and r.hwm_bytes is not None and r.rss_bytes is not None:
        mem = (
            f"; VmHWM {(r.hwm_bytes - warm) / MiB:+.1f} MiB, "
            f"RSS {(r.rss_bytes - warm) / MiB:+.1f} MiB over warm"
        )
    answers = ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items()))
    return (
        f"{variant.name} round {r.round}/{rounds}: {len(r.downloads)} download(s) answered "
        f"{answers}, {complete}/{len(r.downloads)} complete, {body / MiB:,.1f} MiB of "
        f"{len(r.downloads) * size / MiB:,.1f} in {r.wall_s:.2f} s ({rate:,.0f} MiB/s){mem}"
    )


def run_variant(
    variant: Variant,
    args: argparse.Namespace,
    workdir: Path,
    ports: tuple[int, int],
    small: OriginBody,
    big_size: int,
    started: list[subprocess.Popen[bytes]],
) -> VariantResult:
    """Start ``variant``'s proxy, warm it up, run the rounds, stop it; return what it measured.

    A proxy that does not come up raises :class:`VariantStartError`; a round that fails ends
    the variant's rounds and is recorded in ``failure`` (the caller prints it).
    """
    small_port, big_port = ports
    result = VariantResult(variant.name, settings=variant.settings())
    vdir = workdir / f"variant-{variant.name}"
    vdir.mkdir()
    log_path = Path(f"{args.proxy_log}.{variant.name}") if args.proxy_log else vdir / "proxy.log"
    process, port, result.proxy = start_variant_proxy(variant, args, vdir, log_path)
    started.append(process)
    print(f"proxy {variant.name}: {result.proxy}")
    try:
        deadline = wait_for_proxy(
            LOOPBACK, port, args.startup_timeout, process, f"the {variant.name} proxy"
        )
    except RuntimeError:
        status = process.poll()
        how = (
            f"exited with status {status}"
            if status is not None
            else f"did not accept connections within {args.startup_timeout:g} s"
        )
        raise VariantStartError(
            f"variant {variant.name}: the proxy {how} at start-up; its output ends: "
            + output_tail_line(log_path)
        ) from None
    warm_request = (
        f"GET http://127.0.0.1:{small_port}/warm HTTP/1.1\r\nHost: 127.0.0.1:{small_port}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        warm_up(variant, port, warm_request, small, args.warmup_requests, deadline)
    except RuntimeError as e:
        raise VariantStartError(
            f"{e}; the proxy's output ends: {output_tail_line(log_path)}"
        ) from None
    head = log_head(log_path)
    result.reactor = reported_reactor(head)
    result.body_limit = reported_body_limit(head)
    if args.reactor is not None and result.reactor is not None:
        if REACTORS[args.reactor] not in result.reactor.split("."):
            raise VariantStartError(
                f"variant {variant.name}: twistd runs {result.reactor}, "
                f"not the --reactor {args.reactor} asked for"
            )
    if variant.demo and result.body_limit is None:
        raise VariantStartError(
            f"variant {variant.name}: the proxy never logged its hooks line, so the demo addon "
            f"is not loaded; its output ends: {output_tail_line(log_path)}"
        )
    result.expected_status = variant.expected_status(big_size, result.body_limit)

    result.warm_rss, result.warm_hwm = settle_and_read(process.pid, args.settle)
    if result.warm_rss is not None:
        print(
            f"{variant.name} warm: {args.warmup_requests} request(s), RSS "
            f"{result.warm_rss / MiB:,.1f} MiB, VmHWM {(result.warm_hwm or 0) / MiB:,.1f} MiB; "
            f"reactor {result.reactor or '?'}"
            + (f", body_limit {result.body_limit / MiB:g} MiB" if result.body_limit else "")
            + f"; expecting {result.expected_status}"
        )
    big_request = (
        f"GET http://127.0.0.1:{big_port}/big HTTP/1.1\r\nHost: 127.0.0.1:{big_port}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    cpu_before = proc_cpu_seconds_or_none(process.pid)
    max_body = big_size + MiB
    for round_no in range(1, args.downloads + 1):
        records, wall = run_round(round_no, args.concurrent, port, big_request, args, max_body)
        try:
            hwm, rss = proc_hwm_bytes(process.pid), proc_rss_bytes(process.pid)
        except (OSError, ValueError):
            hwm = rss = None
        r = RoundResult(round_no, wall, records, hwm, rss)
        result.rounds.append(r)
        print(round_line(result, r, args.downloads, big_size))
        failed = [d for d in records if d.error is not None]
        if failed or not proc_alive(process.pid):
            d = failed[0] if failed else None
            why = (
                f"download {d.slot + 1} of {len(records)}: {d.error} (status {d.status})"
                if d is not None
                else f"the proxy exited with status {process.poll()}"
            )
            result.failure = f"variant {variant.name} round {round_no} failed: {why}"
            print(f"error: {result.failure}", file=sys.stderr)
            break
    cpu_after = proc_cpu_seconds_or_none(process.pid)
    if cpu_before is not None and cpu_after is not None:
        result.cpu_s = cpu_after - cpu_before
    result.final_rss, _ = settle_and_read(process.pid, args.settle)
    status = stop_process(process)
    started.remove(process)
    if status is not None and status > 0:
        print(f"note: the {variant.name} proxy exited with status {status}", file=sys.stderr)
    counts, result.first_hook_failure = hook_failures(log_path)
    result.hook_failures = dict(counts)
    return result


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def mib(value: float | None, signed: bool = False) -> str | None:
    """MiB with one decimal, optionally signed; None shows as '-'."""
    if value is None:
        return None
    return f"{value:+,.1f}" if signed else f"{value:,.1f}"


def minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def print_results(
    results: Sequence[VariantResult], args: argparse.Namespace, size: int, reference: str | None
) -> None:
    """The table: a column per variant, then growths minus the reference (``none``)'s."""
    by_name = {v.name: v for v in results}
    sums = {v.name: v.summary(size) for v in results}
    ref = sums.get(reference) if reference else None
    multi = args.concurrent > 1

    def row(label: str, fn: Any) -> list[str | None]:
        return [label, *(fn(sums[v.name], by_name[v.name]) for v in results)]

    rows = [
        row("reactor", lambda s, v: (s["reactor"] or "?").rsplit(".", 1)[-1]),
        row(
            "answers", lambda s, v: ", ".join(f"{k} x{n}" for k, n in sorted(s["statuses"].items()))
        ),
        row("expected", lambda s, v: str(s["expected_status"])),
        row("as expected / downloads", lambda s, v: f"{s['as_expected']}/{s['downloads']}"),
        row("complete / downloads", lambda s, v: f"{s['complete']}/{s['downloads']}"),
        row(
            "body bytes received per download",
            lambda s, v: (
                None
                if s["body_bytes_min"] is None
                else f"{s['body_bytes_min']:,}"
                if s["body_bytes_min"] == s["body_bytes_max"]
                else f"{s['body_bytes_min']:,}..{s['body_bytes_max']:,}"
            ),
        ),
        row("wall per download (s, median)", lambda s, v: fmt_number(s["wall_s_median"], 3)),
        row("MiB/s per download (median)", lambda s, v: fmt_number(s["mib_per_s_median"], 0)),
    ]
    if multi:
        rows.append(
            row(
                f"MiB/s, {args.concurrent} at once (median)",
                lambda s, v: fmt_number(s["round_mib_per_s_median"], 0),
            )
        )
    rows += [
        row("proxy CPU over the downloads (s)", lambda s, v: fmt_number(s["proxy_cpu_s"], 2)),
        row("warm RSS (MiB)", lambda s, v: mib(s["warm_rss_mib"])),
        row("warm VmHWM (MiB)", lambda s, v: mib(s["warm_hwm_mib"])),
        row("VmHWM growth over warm RSS (MiB)", lambda s, v: mib(s["hwm_growth_mib"], True)),
        row("final RSS growth (MiB)", lambda s, v: mib(s["final_rss_growth_mib"], True)),
    ]
    if ref is not None:
        rows += [
            row(
                f"VmHWM growth minus {reference}'s (MiB)",
                lambda s, v: mib(minus(s["hwm_growth_mib"], ref["hwm_growth_mib"]), True),
            ),
            row(
                f"final RSS growth minus {reference}'s (MiB)",
                lambda s, v: mib(
                    minus(s["final_rss_growth_mib"], ref["final_rss_growth_mib"]), True
                ),
            ),
        ]
    rows.append(
        row(
            "hook failures logged",
            lambda s, v: (
                ", ".join(f"{k} x{n}" for k, n in sorted(s["hook_failures"].items())) or "0"
            ),
        )
    )
    print()
    print(
        f"{size / MiB:,.1f} MiB {args.body} body, "
        f"{'chunked' if args.chunked else 'Content-Length'}, {args.downloads} round(s) of "
        f"{args.concurrent} download(s) per variant, a fresh proxy per variant"
    )
    print_table(rows, ["metric", *(v.name for v in results)])


def goal_verdict(
    results: Sequence[VariantResult], size: int, reference: str | None, framing: str
) -> tuple[str, bool | None]:
    """The goal line for ``demo``, and whether it is met (None: not measured)."""
    text = (
        f"goal: with {GOAL_VARIANT} loaded, a {size / MiB:,.0f} MiB download ({framing}) streams "
        f"through (over body_limit) and the proxy's VmHWM grows by less than "
        f"{GOAL_GROWTH_MIB:g} MiB"
    )
    demo = next((v for v in results if v.name == GOAL_VARIANT), None)
    if demo is None:
        return text + f" -- not measured (no {GOAL_VARIANT} variant)", None
    growth = demo.hwm_growth_mib()
    if growth is None:
        return text + " -- not measured (memory unreadable)", None
    limit = demo.body_limit or DEFAULT_BODY_LIMIT
    ref = next((v for v in results if v.name == reference), None)
    ref_growth = ref.hwm_growth_mib() if ref is not None else None
    text += f" -- measured {growth:+.1f} MiB"
    if ref_growth is not None:
        text += f" ({growth - ref_growth:+.1f} MiB over {reference}'s)"
    good, total = demo.good(size), len(demo.downloads)
    text += f", {good}/{total} downloads complete with 200: "
    if size <= limit:
        return text + f"not applicable (--size is not over body_limit {limit / MiB:g} MiB)", None
    if demo.failure is not None or total == 0 or good != total:
        return text + "NOT MET (not every download came through whole)", False
    met = growth < GOAL_GROWTH_MIB
    return text + ("MET" if met else "NOT MET"), met


def notes(results: Sequence[VariantResult], args: argparse.Namespace, size: int) -> list[str]:
    """Lines that say how to read the table."""
    out = []
    reactors = {v.reactor for v in results if v.reactor}
    if len(reactors) > 1:
        out.append(
            "note: the variants ran different reactors ("
            + ", ".join(f"{v.name} {(v.reactor or '?').rsplit('.', 1)[-1]}" for v in results)
            + "): the proxy picks asyncio when scripts are loaded; --reactor pins one for all"
        )
    limits = {v.body_limit for v in results if v.body_limit}
    limit = limits.pop() if len(limits) == 1 else DEFAULT_BODY_LIMIT
    if not args.chunked and size > limit:
        out.append(
            f"note: the origin declares Content-Length {size:,} > body_limit {limit:,}, so the "
            "proxy never buffers this body (it streams from the first byte, or refuses at the "
            "head); --chunked takes it through buffering body_limit first"
        )
    for v in results:
        if v.first_hook_failure:
            out.append(f"note: {v.name}'s first logged hook failure: {v.first_hook_failure}")
        for d in v.downloads:
            if d.status is not None and d.status != 200 and d.body_start:
                out.append(
                    f"note: {v.name} answered {d.status} ({d.body_bytes:,} body bytes): "
                    f"{d.body_start.strip()[:200]!r}"
                )
                break
    return out


# --------------------------------------------------------------------------------------------
# Command line and main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(
            "Proxy memory while big bodies pass through addons: a fresh proxy per variant "
            "(none, demo, demo-reject), warmed up, then --downloads rounds of --concurrent "
            "--size downloads; VmHWM and RSS growth over the warm RSS."
        )
    )
    parser.add_argument(
        "--size", type=int, default=100 * MiB, help="body size in bytes (default 100 MiB)"
    )
    parser.add_argument(
        "--body",
        choices=ORIGIN_BODIES,
        default="html",
        help="what the origin serves: html (text/html full of 'cherry', the default) or octet",
    )
    parser.add_argument(
        "--chunked",
        action="store_true",
        help="the origins send their bodies chunked (no Content-Length): the proxy must buffer "
        "body_limit before it knows the body is over it",
    )
    parser.add_argument(
        "--downloads", type=int, default=3, help="rounds per variant, one after another"
    )
    parser.add_argument("--concurrent", type=int, default=1, help="downloads at once in each round")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, in this order of running (known: {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--reactor",
        choices=sorted(REACTORS),
        help="twistd reactor for every variant (default: what the proxy picks for each)",
    )
    parser.add_argument(
        "--warmup-requests", type=int, default=5, help="small requests before the RSS is read"
    )
    parser.add_argument(
        "--io-timeout", type=float, default=30.0, help="seconds any one socket operation may wait"
    )
    parser.add_argument(
        "--download-timeout",
        type=float,
        default=300.0,
        help="seconds a round's downloads may take in all",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds to wait before reading the warm and the final RSS",
    )
    parser.add_argument("--access-log", action="store_true", help="leave the access log on")
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for each proxy"
    )
    parser.add_argument("--proxy-log", help="keep each variant's proxy output in FILE.<name>")
    parser.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the goal is not met")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    check_args(
        parser,
        [
            (1 <= args.size <= 1024 * MiB, "--size must be between 1 byte and 1 GiB"),
            (1 <= args.downloads <= 20, "--downloads must be between 1 and 20"),
            (1 <= args.concurrent <= 16, "--concurrent must be between 1 and 16"),
            (0 <= args.warmup_requests <= 100, "--warmup-requests must be between 0 and 100"),
            (0 < args.io_timeout <= 600, "--io-timeout must be in (0, 600] seconds"),
            (0 < args.download_timeout <= 3600, "--download-timeout must be in (0, 3600] s"),
            (0 <= args.settle <= 10, "--settle must be between 0 and 10 seconds"),
            (0 < args.startup_timeout <= 300, "--startup-timeout must be in (0, 300] seconds"),
            (bool(names), "--variants is empty"),
            (len(set(names)) == len(names), "--variants: a variant is named twice"),
            *((name in VARIANTS, f"--variants: unknown variant {name!r}") for name in names),
        ],
    )
    args.variant_list = [VARIANTS[n] for n in names]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    variants: list[Variant] = args.variant_list
    reference = "none" if any(v.name == "none" for v in variants) else None
    # SIGTERM stops the run like Ctrl-C does: children stopped, the temporary directory removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = load_average()
    note = load_note(load)
    if note:
        print(note)
    small = origin_body(WARMUP_SIZE, "html")
    big = origin_body(args.size, args.body)
    origins: list[subprocess.Popen[bytes]] = []
    started: list[subprocess.Popen[bytes]] = []
    results: list[VariantResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-bodies-") as tmp:
        workdir = Path(tmp)
        try:
            small_process, small_port = start_origin(WARMUP_SIZE, body="html", chunked=args.chunked)
            origins.append(small_process)
            big_process, big_port = start_origin(
                args.size, body=args.body, chunked=args.chunked, timeout=60
            )
            origins.append(big_process)
            framing = "chunked" if args.chunked else "Content-Length"
            print(
                f"origins: warm-up 127.0.0.1:{small_port} ({WARMUP_SIZE:,}-byte text/html), "
                f"downloads 127.0.0.1:{big_port} ({args.size:,}-byte "
                f"{big.content_type.decode()}), {framing}"
            )
            for variant in variants:
                results.append(
                    run_variant(
                        variant, args, workdir, (small_port, big_port), small, args.size, started
                    )
                )
        except VariantStartError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, OSError, ValueError) as e:
            report_error(e, None, bool(args.proxy_log))
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the proxies and the origins", file=sys.stderr)
            return 130
        finally:
            for process in [*started, *origins]:
                stop_process(process)

    print_results(results, args, args.size, reference)
    text, met = goal_verdict(
        results, args.size, reference, "chunked" if args.chunked else "Content-Length"
    )
    print(text)
    for line in notes(results, args, args.size):
        print(line)
    failures = [v.failure for v in results if v.failure]
    for failure in failures:
        print(f"failed: {failure}")

    ref = next((v for v in results if v.name == reference), None)
    summary = {v.name: v.summary(args.size) for v in results}
    if ref is not None:
        for s in summary.values():
            s["hwm_growth_minus_reference_mib"] = minus(s["hwm_growth_mib"], ref.hwm_growth_mib())
            s["final_rss_growth_minus_reference_mib"] = minus(
                s["final_rss_growth_mib"], ref.final_growth_mib()
            )
    out = {
        **results_header("bodies", load_average=load),
        "params": {
            "size": args.size,
            "body": args.body,
            "chunked": args.chunked,
            "downloads": args.downloads,
            "concurrent": args.concurrent,
            "variants": [v.name for v in variants],
            "reactor": args.reactor,
            "warmup_requests": args.warmup_requests,
            "warmup_size": WARMUP_SIZE,
            "io_timeout": args.io_timeout,
            "download_timeout": args.download_timeout,
            "settle": args.settle,
            "access_log": args.access_log,
            "reference": reference,
        },
        "variants": {
            v.name: {
                "proxy": v.proxy,
                "settings": v.settings,
                "warm_rss_bytes": v.warm_rss,
                "warm_hwm_bytes": v.warm_hwm,
                "final_rss_bytes": v.final_rss,
                "first_hook_failure": v.first_hook_failure,
                "rounds": [r.to_json() for r in v.rounds],
            }
            for v in results
        },
        "summary": summary,
        "goal": {
            "variant": GOAL_VARIANT,
            "hwm_growth_mib_below": GOAL_GROWTH_MIB,
            "measured": summary.get(GOAL_VARIANT, {}).get("hwm_growth_mib"),
            "met": met,
        },
    }
    print(f"results: {write_json(args.json, out)}")
    if failures:
        return 2
    return 1 if args.check and met is False else 0


if __name__ == "__main__":
    sys.exit(main())
