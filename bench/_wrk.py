"""wrk as the load generator of ``bench/throughput.py --loadgen wrk`` (not a test; pytest never
collects it).

Why wrk: at the proxy's rates the asyncio load generator costs ~20 µs of CPU per request, and
on a 2-core machine that is CPU the proxy's workers do not get. wrk (C, epoll; Debian's package
``wrk``, 4.1) costs about half that. Installed by hand only (``apt-get install wrk``): no test
needs it.

How it is driven, for the same semantics as the asyncio one: ``--clients`` keep-alive
connections (``wrk -c``), one request outstanding on each, for whole seconds (``wrk -d``; wrk
sleeps whole seconds, so fractions cannot be asked for). The request is the one the asyncio
generator sends, given to wrk by a generated Lua script that sets ``wrk.method``,
``wrk.path`` (the absolute-form target through a forward proxy) and ``wrk.headers`` (a Lua
table: wrk may send the headers in another order). The script defines no ``request()``: wrk
4.1 then builds the request once per thread (``wrk.format()`` in ``wrk.init``) and writes the
same bytes on every request, with no Lua on the hot path; nor ``response()``, which would make
wrk hand every header and body to Lua.

What comes back is written by the script's ``done()`` as JSON: wrk's request count, duration,
bytes, errors, and its latency histogram, read through LuaJIT's FFI (see :data:`_LUA_DONE`)
and corrected back to what was measured (:func:`undo_wrk_correction`).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import require_loopback, spawn, tail_text

#: What to run when wrk is missing (the one line a run fails with).
WRK_INSTALL = "apt-get install wrk"
#: wrk's ``--timeout``: a request outstanding this long counts as a timeout, as the asyncio
#: generator's drain timeout does. wrk's latency histogram has one slot per µs up to it.
WRK_TIMEOUT_S = 10


def find_wrk() -> str | None:
    """The path of the ``wrk`` executable, or None if it is not installed."""
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    """wrk's version (``wrk debian/4.1.0-3+b2 [epoll]``), for the output and results file.

    ``wrk -v`` prints it, a copyright and its usage, and exits 1: the status says nothing.
    """
    try:
        done = subprocess.run(
            [wrk, "-v"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"could not run {wrk} -v: {e}") from None
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    return lines[0].partition(" Copyright")[0].strip() if lines else ""


def lua_string(text: str) -> str:
    """``text`` as a double-quoted Lua 5.1 string literal (anything but printable ASCII, the
    quote and the backslash as ``\\ddd``), so no request byte can end the literal early."""
    out = []
    for ch in text:
        code = ord(ch)
        if code > 0xFF:
            raise ValueError(f"{text!r}: not latin-1")
        out.append(ch if 0x20 <= code < 0x7F and ch not in '"\\' else f"\\{code:03d}")
    return '"' + "".join(out) + '"'


def split_request(request: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """A raw GET (request line, headers, the blank line, no body) as ``(method, target,
    headers)``; ValueError if it is not one, since wrk could not send it as it is."""
    head, sep, rest = request.partition(b"\r\n\r\n")
    if not sep or rest:
        raise ValueError("the request must be headers only, ending in a blank line")
    line, *header_lines = head.decode("latin-1").split("\r\n")
    words = line.split(" ")
    if len(words) != 3 or words[2] != "HTTP/1.1":
        raise ValueError(f"not an HTTP/1.1 request line: {line!r}")
    headers = []
    for text in header_lines:
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"not a header line: {text!r}")
        headers.append((name, value.strip()))
    names = [name.lower() for name, _ in headers]
    if len(set(names)) != len(names):
        # wrk.headers is a Lua table: one value per name.
        raise ValueError("a header is given twice")
    return words[0], words[1], headers


# Runs in wrk's main Lua state, after the threads have stopped. Two things about wrk 4.1 that
# this works around:
# * main() calls stats_correct() on the latency histogram before done(): for closed-loop load it
#   adds a made-up sample at n-e, n-2e, ... (while > e) for every sample n >= 2e, e being the
#   mean time per request on one connection. That is a correction for open-loop load that
#   missed its schedule; here it would inflate the tail, and the asyncio generator reports raw
#   latencies. It can be undone exactly (undo_wrk_correction) from the corrected buckets.
# * the only way to read the buckets from Lua, latency(i), scans from the minimum up to the
#   i-th non-empty bucket on every call (quadratic). The stats object's layout is fixed
#   (uint64_t count, limit, min, max, data[]), so LuaJIT's FFI reads the buckets in one pass
#   instead; the request count checks the reading (a changed layout fails the round).
_LUA_DONE = """
local ffi = require("ffi")

function done(summary, latency, requests)
  local s = ffi.cast("uint64_t **", latency)[0]
  local count, min, max = tonumber(s[0]), tonumber(s[2]), tonumber(s[3])
  local buckets = {}
  if count > 0 then
    for us = min, max do
      local n = s[4 + us]
      if n ~= 0 then
        buckets[#buckets + 1] = string.format("[%d,%d]", us, tonumber(n))
      end
    end
  end
  local e = summary.errors
  local f = assert(io.open(RESULT_PATH, "w"))
  f:write(string.format(
    '{"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,"errors":{"connect":%.0f,' ..
    '"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},"histogram_count":%.0f,' ..
    '"latency_us":[%s]}\\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, count, table.concat(buckets, ",")))
  f:close()
end
"""


def wrk_script(request: bytes, result_path: Path) -> str:
    """The Lua script that makes wrk send ``request`` and write its results to
    ``result_path``."""
    method, target, headers = split_request(request)
    lines = [
        "-- Generated by bench/throughput.py --loadgen wrk.",
        f"RESULT_PATH = {lua_string(str(result_path))}",
        f"wrk.method = {lua_string(method)}",
        f"wrk.path = {lua_string(target)}",
        "wrk.headers = {}",
        *(f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in headers),
        "",
        "-- wrk's own resolve() opens and closes a test connection first: the origin would",
        "-- count one accept more per round than there are clients.",
        "function wrk.resolve(host, service)",
        "  wrk.addrs = wrk.lookup(host, service)",
        "end",
        _LUA_DONE,
    ]
    return "\n".join(lines)


def undo_wrk_correction(buckets: Mapping[int, int], interval: int) -> dict[int, int]:
    """wrk 4.1's latency buckets (µs -> count) as they were before its ``stats_correct``.

    That correction added, for each original sample n >= 2e (``interval`` e), one sample at
    n - k·e for every k >= 1 while n - k·e > e. So a bucket m > e now holds its own samples
    plus every original sample at m + e, m + 2e, ...; which is to say bucket m + e as it is
    now. The original count at m is therefore bucket m less bucket m + e.
    """
    if interval <= 0:
        return {m: n for m, n in buckets.items() if n}
    out = {}
    for m, n in buckets.items():
        original = n - buckets.get(m + interval, 0) if m > interval else n
        if original < 0:
            raise ValueError(f"bucket {m} µs: {n} is less than bucket {m + interval}'s")
        if original:
            out[m] = original
    return out


def wrk_interval(duration_us: int, requests: int, connections: int) -> int:
    """The ``e`` wrk 4.1 corrected with: its run time over requests per connection, in whole
    µs as its C computes it (0: no correction was made)."""
    per_connection = requests // connections
    return duration_us // per_connection if per_connection > 0 else 0


def expand_latencies(buckets: Mapping[int, int], cap: int) -> array[float]:
    """The latencies of ``buckets`` (µs -> count) as an array of seconds, at most ``cap`` of
    them: past it every bucket is scaled down alike (cumulative rounding keeps the
    percentiles), so that memory stays bounded whatever the request count."""
    total = sum(buckets.values())
    scale = min(1.0, cap / total) if total else 1.0
    out: array[float] = array("d")
    seen = emitted = 0
    for us in sorted(buckets):
        seen += buckets[us]
        upto = round(seen * scale)
        out.extend([us / 1e6] * (upto - emitted))
        emitted = upto
    return out


@dataclass
class WrkResult:
    """What one wrk run did, as its ``done()`` reported it, and what it cost."""

    requests: int
    duration_s: float  # wrk's own clock, from its threads' start to their stop
    bytes: int
    errors: dict[str, int]  # only the kinds that happened
    latency_us: dict[int, int]  # µs -> requests, uncorrected
    cpu_s: float  # utime + stime of the whole wrk process, from wait4()
    latency_corrected_by_wrk_us: int  # the interval that undo_wrk_correction undid

    def report(self) -> dict[str, Any]:
        """wrk's own figures for a results file (the round has the rest)."""
        return {
            "loadgen": "wrk",
            "requests": self.requests,
            "duration_s": self.duration_s,
            "bytes": self.bytes,
            "bytes_per_request": self.bytes / self.requests if self.requests else None,
            "errors": self.errors,
            "cpu_s": self.cpu_s,
            "latency_corrected_by_wrk_us": self.latency_corrected_by_wrk_us,
        }


#: wrk's error kinds as the round's ``errors`` names them ("status" is wrk's count of
#: statuses over 399: it does not look at 1xx-3xx).
_ERROR_NAMES = {
    "connect": "connect",
    "read": "read",
    "write": "write",
    "status": "status_4xx_5xx",
    "timeout": "timeout",
}


class WrkRound:
    """One wrk run: :meth:`run` only spawns and reaps it (what the caller's CPU readings
    bracket), :meth:`result` reads what it wrote."""

    def __init__(
        self,
        wrk: str,
        host: str,
        port: int,
        request: bytes,
        *,
        clients: int,
        duration: int,
        threads: int,
        workdir: Path,
        name: str,
    ) -> None:
        require_loopback(host)
        if duration < 1:
            raise ValueError("wrk runs for whole seconds, at least 1")
        if not 1 <= threads <= clients:
            raise ValueError("wrk needs 1 to --clients threads")
        self.clients = clients
        self.duration = duration
        self.result_path = workdir / f"wrk-{name}.json"
        self.output_path = workdir / f"wrk-{name}.out"
        script = workdir / f"wrk-{name}.lua"
        script.write_text(wrk_script(request, self.result_path))
        self.result_path.unlink(missing_ok=True)
        # The URL says where to connect (the proxy, or the origin for direct); what is sent is
        # the script's request.
        self.command = [
            wrk,
            f"-t{threads}",
            f"-c{clients}",
            f"-d{duration}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            f"-s{script}",
            f"http://{host}:{port}/",
        ]
        self.cpu_s: float | None = None

    def run(self) -> None:
        """Run wrk to its end (bounded: killed past its duration and a margin); RuntimeError
        if it fails or overruns."""
        # wrk stops its threads at the first 100 ms tick after the duration; then it prints,
        # and done() writes the histogram.
        timeout = self.duration + 30.0
        with open(self.output_path, "wb") as out:
            process = spawn(self.command, stdout=out, stderr=subprocess.STDOUT)
        try:
            exited = _wait_for_exit(process.pid, time.monotonic() + timeout)
        except BaseException:
            _kill_and_reap(process)
            raise
        if not exited:
            _kill_and_reap(process)
            raise RuntimeError(f"wrk did not finish within {timeout:.0f} s")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            raise RuntimeError(
                f"wrk exited with status {process.returncode}; its output ends: "
                + tail_text(self.output_path, 5).replace("\n", " | ")
            )

    def result(self) -> WrkResult:
        """What the run reported (after :meth:`run`); RuntimeError if it wrote nothing usable
        (a Lua error in wrk is only printed, and wrk goes on without the script's done())."""
        if self.cpu_s is None:
            raise RuntimeError("wrk has not run")
        try:
            data = json.loads(self.result_path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(
                f"wrk wrote no results ({e}); its output ends: "
                + tail_text(self.output_path, 5).replace("\n", " | ")
            ) from None
        requests, duration_us = int(data["requests"]), int(data["duration_us"])
        interval = wrk_interval(duration_us, requests, self.clients)
        try:
            latency = undo_wrk_correction(
                {int(us): int(n) for us, n in data["latency_us"]}, interval
            )
        except ValueError as e:
            raise RuntimeError(f"wrk's latency histogram does not read right: {e}") from None
        errors = {_ERROR_NAMES[k]: int(v) for k, v in data["errors"].items() if v}
        # Every completed request has a latency, but for those past wrk's --timeout (counted
        # as timeouts): anything else means the histogram was not read right.
        recorded = sum(latency.values())
        if not requests - errors.get("timeout", 0) <= recorded <= requests:
            raise RuntimeError(
                f"wrk's latency histogram holds {recorded} requests after undoing its correction, "
                f"but it completed {requests}: its stats layout is not the one this reads"
            )
        return WrkResult(
            requests=requests,
            duration_s=duration_us / 1e6,
            bytes=int(data["bytes"]),
            errors=errors,
            latency_us=latency,
            cpu_s=self.cpu_s,
            latency_corrected_by_wrk_us=interval,
        )


def _wait_for_exit(pid: int, deadline: float) -> bool:
    """Whether process ``pid`` (our child, not yet reaped) exited before ``deadline``
    (a :func:`time.monotonic` value). Through a pidfd: woken when it exits, not by polling."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(remaining * 1000):
                return True
    finally:
        os.close(fd)


def _kill_and_reap(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL an overrunning or abandoned wrk and reap it."""
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass
