"""Helpers shared by the interceptor benchmarks (not tests; pytest never collects them).

What is here:

* process control: :func:`start_proxy`, :func:`start_proxy_on_free_port`, :func:`wait_for_proxy`,
  :func:`start_origin`, :func:`stop_process`, :func:`stop_proxy_and_origin`,
  :func:`wait_for_port`, :func:`wait_for_http_ok`, :func:`free_port`, :func:`self_command`,
  :class:`ChildLines`;
* ``/proc`` readings: :func:`proc_cpu_seconds`, :func:`proc_rss_bytes`, :func:`proc_hwm_bytes`,
  :func:`proc_fd_count`, :func:`proc_socket_states`, :func:`proc_alive`, :func:`load_average`;
* tiny blocking HTTP/1.1 and HTTPS clients for warm-up checks: :func:`http_request`,
  :func:`https_request` (optionally through a CONNECT tunnel), :func:`request_until_up`, and
  :func:`receive_response` for a client that keeps its own connection;
* throw-away TLS origin certificates: :func:`make_origin_certs`;
* statistics and output: :func:`percentile`, :func:`percentiles`, :func:`format_table`,
  :func:`print_table`, :func:`fmt_number`, :func:`fmt_ratio`, :func:`fmt_change`, and the
  direct-versus-proxy summary pieces (:func:`latency_fields`, :func:`print_direct_proxy_table`,
  :func:`goal_verdict`, ...);
* the command line and the results file: :func:`add_proxy_bench_args`, :func:`check_args`,
  :func:`load_baseline`, :func:`results_header`, :func:`write_json`;
* ``--compare REV``, another revision's proxy measured in the same run: :func:`compare_arg`
  (:class:`Revision`), :func:`export_revision`, :func:`round_order`, :func:`compare_line`,
  :func:`compare_ratios`, :func:`compare_results`.

This file is also the loopback origin server that :func:`start_origin` runs in its own process
(so its CPU is not counted as the proxy's and it never shares a GIL with the load generator)::

    python bench/_common.py origin --size 1024 [--body html [--gzip]] [--chunked] [--port 0]
        [--tls-cert C --tls-key K]

What it serves is :func:`origin_body`: an octet-stream body by default, or an HTML page full of
the word "cherry" (for addons that rewrite text), optionally gzip-encoded; framed by its
Content-Length, or with ``--chunked`` sent chunked (:func:`chunked_wire`), so the receiver does
not know its length before the end.

Every address used here is a loopback one; :func:`require_loopback` refuses anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gzip
import importlib.util
import ipaddress
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any, TypeVar

import httptools

#: The repository root (this file lives in ``<root>/bench``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The only interface the benchmarks ever bind or connect to.
LOOPBACK = "127.0.0.1"

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: First bytes of the origin's statistics request (see :func:`origin_stats`).
ORIGIN_STATS_PREFIX = b"GET /__origin_stats__ "

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Addresses and ports
# --------------------------------------------------------------------------------------------


def require_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback address (or ``localhost``); raise ValueError if not.

    The benchmarks may only ever send traffic to this machine's loopback range.
    """
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError as e:
        raise ValueError(
            f"{host!r} is not a loopback IP address (benchmarks are loopback-only)"
        ) from e
    if not address.is_loopback:
        raise ValueError(f"{host!r} is not a loopback address (benchmarks are loopback-only)")
    return host


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks it; another process could still take it before the caller binds it, so use
    it promptly (or, better, bind port 0 yourself where the program allows).
    """
    require_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ProcessExitedError(RuntimeError):
    """A child process exited while we were waiting for it to become ready."""


def wait_for_port(
    host: str,
    port: int,
    deadline: float,
    *,
    process: subprocess.Popen[Any] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll-connect ``host:port`` until it accepts a TCP connection.

    ``deadline`` is an absolute :func:`time.monotonic` value. Raises :class:`TimeoutError` when
    it passes, or :class:`ProcessExitedError` as soon as ``process`` (if given) has exited.
    """
    require_loopback(host)
    while True:
        if process is not None and process.poll() is not None:
            raise ProcessExitedError(
                f"process {process.pid} exited with status {process.returncode} "
                f"before {host}:{port} accepted connections"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{host}:{port} did not accept connections in time")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_for_http_ok(host: str, port: int, path: str, deadline: float) -> None:
    """Poll ``GET path`` on ``host:port`` until it answers 200 (bounded by ``deadline``)."""
    request = f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode()
    while True:
        try:
            if http_request(host, port, request, timeout=2).status == 200:
                return
        except (OSError, ConnectionError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} never answered 200")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# /proc readings and process limits
# --------------------------------------------------------------------------------------------


def _proc_stat_fields(pid: int) -> list[bytes]:
    """Fields 3 onwards of ``/proc/PID/stat`` (index 0 is field 3, the state).

    The command name (field 2) may hold spaces and parentheses, so split after its last ')'.
    """
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2 :].split()


def proc_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) that process ``pid`` has used so far, in seconds.

    From ``utime`` and ``stime`` in ``/proc/PID/stat``; the resolution is one clock tick
    (usually 10 ms), so measure over intervals that are long compared with that.
    """
    fields = _proc_stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_cpu_seconds_or_none(pid: int | None) -> float | None:
    """:func:`proc_cpu_seconds` of ``pid``, or None if there is no pid or it cannot be read."""
    if pid is None:
        return None
    try:
        return proc_cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


#: How many processes :func:`proc_tree` follows at most (a proxy has one per worker, plus one).
PROC_TREE_LIMIT = 256


# Whether this kernel lists each thread's children (CONFIG_PROC_CHILDREN); the main thread's
# id is the process id.
_CHILDREN_FILES = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def _proc_children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (none if it has ended).

    From ``/proc/PID/task/TID/children`` of every thread, since each lists the children it
    forked; on a kernel without those files, from the parent field of every ``/proc/N/stat``.
    """
    children: list[int] = []
    if _CHILDREN_FILES:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
        for tid in tasks:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            except OSError:
                continue  # the thread ended between listdir and the read
            children.extend(int(word) for word in text.split())
        return children
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_proc_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                children.append(int(entry))
    return children


def proc_tree(pid: int, limit: int = PROC_TREE_LIMIT) -> list[int]:
    """``pid`` and all its descendants, parents before children (at most ``limit`` pids).

    So that a proxy with workers (a supervisor and its worker children) is measured whole.
    """
    found = [pid]
    seen = {pid}
    at = 0
    while at < len(found) and len(found) < limit:
        for child in _proc_children(found[at]):
            if child not in seen and len(found) < limit:
                seen.add(child)
                found.append(child)
        at += 1
    return found


def proc_tree_cpu(pid: int | None) -> dict[int, float] | None:
    """CPU seconds so far of ``pid`` and of each of its descendants, by pid.

    None if there is no pid or ``pid`` itself cannot be read; a descendant that ended while
    the tree was read is left out.
    """
    if pid is None:
        return None
    out: dict[int, float] = {}
    for member in proc_tree(pid):
        seconds = proc_cpu_seconds_or_none(member)
        if seconds is None and member == pid:
            return None
        if seconds is not None:
            out[member] = seconds
    return out


@dataclass
class TreeCpuDelta:
    """What a process tree used between two :func:`proc_tree_cpu` readings."""

    total: float  # seconds, over every process of the second reading
    per_pid: dict[int, float]  # seconds each process used (all of it if it is new)
    gone: list[int]  # processes of the first reading that had ended by the second

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (pids as strings, since JSON keys are)."""
        return {
            "total": self.total,
            "per_pid": {str(pid): s for pid, s in self.per_pid.items()},
            "gone": self.gone,
        }


def tree_cpu_delta(
    before: Mapping[int, float] | None, after: Mapping[int, float] | None
) -> TreeCpuDelta | None:
    """Per-pid differences of two :func:`proc_tree_cpu` readings (None if either is None).

    A process that is new in ``after`` started in between, so all its time counts; one that
    is gone from ``after`` is listed in ``gone``: its time since ``before`` cannot be read
    any more, so the total is short by that much (long-lived workers never are).
    """
    if before is None or after is None:
        return None
    per_pid = {pid: seconds - before.get(pid, 0.0) for pid, seconds in after.items()}
    gone = [pid for pid in before if pid not in after]
    return TreeCpuDelta(sum(per_pid.values()), per_pid, gone)


def proc_worker_number(pid: int) -> int | None:
    """N if process ``pid`` runs with ``--worker N`` (an interceptor worker), else None."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for i, word in enumerate(words[:-1]):
        if word == b"--worker" and words[i + 1].isdigit():
            return int(words[i + 1])
    return None


def machine_cpu_seconds() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of all CPUs since boot, from the ``cpu`` line of
    ``/proc/stat`` (busy: everything but idle and iowait). None if it cannot be read.

    Over a round, busy minus what the benchmark's own processes used is what the rest of the
    machine (other programs, and kernel work billed to no process) took from the same cores.
    """
    try:
        with open("/proc/stat", "rb") as f:
            line = f.readline()
        ticks = [int(word) for word in line.split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    total = sum(ticks[:8])
    busy = total - ticks[3] - ticks[4]
    return busy / _CLK_TCK, total / _CLK_TCK


def proc_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a dead child not yet reaped)."""
    try:
        state = _proc_stat_fields(pid)[0]
    except (OSError, ValueError, IndexError):
        return False
    return state not in (b"Z", b"X")


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (from ``/proc/PID/statm``)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_SIZE


def proc_hwm_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for process {pid}")


def proc_fd_count(pid: int) -> int:
    """Number of open file descriptors of process ``pid`` (needs the right to read its fds)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def proc_socket_states(pid: int) -> dict[str, int]:
    """TCP states of the sockets process ``pid`` holds (IPv4 and IPv6), plus other fd kinds.

    Reads ``/proc/PID/fd`` for socket inodes and ``/proc/net/tcp{,6}`` for their states, so
    descriptors that did not come back can be told apart (CLOSE_WAIT: a peer half-closed and we
    never closed; ESTABLISHED: still open; LISTEN: ours).
    """
    inodes: set[str] = set()
    kinds: Counter[str] = Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
        else:
            kinds[
                "other:" + target.split(":")[0].split("/")[1 if target.startswith("/") else 0]
            ] += 1
    states: Counter[str] = Counter()
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes and parts[9] not in found:
                found.add(parts[9])
                states[_TCP_STATES.get(parts[3], parts[3])] += 1
    if len(inodes) > len(found):
        states["non-TCP socket"] += len(inodes) - len(found)
    return dict(states + kinds)


def load_average() -> float | None:
    """The 1-minute load average (other work on the machine makes every number noisier)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def load_note(load: float | None) -> str | None:
    """A warning line when the load average ``load`` says other work shares these CPUs."""
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        return (
            f"note: load average {load:.2f} before we started anything: other work "
            "shares these CPUs, so latency and CPU figures will be noisier"
        )
    return None


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` (up to the hard limit).

    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def _die_with_parent() -> None:
    """``preexec_fn``: have the kernel send SIGTERM to the child if the benchmark dies.

    So a benchmark killed with SIGKILL does not leave an origin or a proxy running forever.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(
    args: Sequence[str],
    *,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session that is sent SIGTERM if this process dies.

    Its own session keeps a Ctrl-C in the terminal from reaching it directly: the benchmark
    gets the KeyboardInterrupt and stops its children itself, in order.
    """
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def self_command(script: str | Path, flag: str, payload: object) -> list[str]:
    """The command that runs ``script`` again with a hidden ``flag`` and JSON ``payload``.

    How a benchmark starts its own load generators and helper servers in separate processes.
    """
    return [sys.executable, str(Path(script).resolve()), flag, json.dumps(payload)]


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """Stop ``process``: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL and wait again.

    Returns its exit status (negative for a signal), or None if even SIGKILL did not reap it.
    Safe to call on a process that has already exited.
    """
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return process.returncode


def tail_text(path: str | Path, max_lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``max_lines`` lines of a (log) file, or a note saying it could not be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as e:
        return f"(could not read {path}: {e})"
    lines = data.decode("utf-8", "replace").splitlines()[-max_lines:]
    return "\n".join(lines) if lines else "(empty)"


class ChildLines:
    """Reads the lines a child prints on its stdout (a pipe), each within a deadline.

    Uses poll(), not select(), so it works whatever the descriptor's number.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.process = process
        self._fd = process.stdout.fileno()
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._buf = b""

    def read_line(self, deadline: float) -> bytes | None:
        """The next line (without its newline), or None at end of file.

        ``deadline`` is a :func:`time.monotonic` value; raises TimeoutError when it passes.
        """
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if self._poller.poll(remaining * 1000):
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line


def start_port_reporter(
    args: Sequence[str],
    *,
    what: str,
    stderr: int | IO[Any] | None = None,
    timeout: float = 15.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server child that prints ``PORT n`` first; return ``(process, n)`` once it has.

    ``what`` names it in errors ("the origin"). The child is stopped if it fails to report.
    """
    process = spawn(args, stdout=subprocess.PIPE, stderr=stderr)
    assert process.stdout is not None
    try:
        try:
            line = ChildLines(process).read_line(time.monotonic() + timeout)
        except TimeoutError:
            raise TimeoutError(f"{what} did not report its port in time") from None
        if line is None:
            raise ProcessExitedError(f"{what} exited with status {process.wait(timeout)}")
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"unexpected first line from {what}: {line!r}")
        port = int(line.split()[1])
    except BaseException:
        stop_process(process)
        raise
    process.stdout.close()  # It prints nothing more.
    return process, port


def tree_env(root: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with source tree ``root`` first on PYTHONPATH."""
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), child_env.get("PYTHONPATH", "")) if p
    )
    return child_env


def default_twistd() -> list[str]:
    """The command that runs ``twistd`` from the same environment as this Python."""
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def default_proxy_cmd(
    twistd: Sequence[str] | None = None, *, backlog: int | None = None
) -> list[str]:
    """Command template for the proxy; ``{port}`` and ``{config}`` are filled in later.

    ``twistd`` is the command that runs twistd (default :func:`default_twistd`); ``backlog``
    sets the listening socket's backlog (default: twistd's).
    """
    listen = f"tcp:{{port}}:interface={LOOPBACK}"
    if backlog is not None:
        listen += f":backlog={backlog}"
    return [
        *(default_twistd() if twistd is None else twistd),
        "-n",
        "--pidfile=",
        "interceptor",
        "--listen",
        listen,
        "--config",
        "{config}",
    ]


def fill_template(args: Iterable[str], **values: object) -> list[str]:
    """Replace ``{name}`` in every argument by ``values[name]`` (other braces are left alone)."""
    out = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", str(value))
        out.append(arg)
    return out


def access_log_config(enabled: bool) -> str:
    """The proxy config that turns its access log on or off (and leaves the rest default)."""
    return f"[log]\naccess = {'true' if enabled else 'false'}\n"


def start_proxy(
    port: int,
    config_text: str | None,
    *,
    workdir: str | Path,
    cmd: Sequence[str] | None = None,
    log_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    root: Path = REPO_ROOT,
) -> subprocess.Popen[bytes]:
    """Start the proxy listening on ``127.0.0.1:port``; return its process at once.

    ``config_text`` (if not None) is written to ``workdir/interceptor.toml``. ``cmd`` is a
    command template (default :func:`default_proxy_cmd`) in which ``{port}`` and ``{config}``
    are replaced. The proxy runs in the source tree ``root`` (default: this repository; for
    ``--compare``, an exported revision) with ``root`` first on PYTHONPATH, so that tree's
    ``interceptor`` package and twistd plugin win over any installed copy. Its
    stdout and stderr go to ``log_path`` (default ``workdir/proxy.log``), never to a pipe that
    could fill up and stall it. Follow with :func:`wait_for_port`; stop with
    :func:`stop_process`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "interceptor.toml"
    if config_text is not None:
        config_path.write_text(config_text)
    args = fill_template(
        cmd if cmd is not None else default_proxy_cmd(), port=port, config=config_path
    )
    log_path = Path(log_path) if log_path is not None else workdir / "proxy.log"
    with open(log_path, "ab") as log:
        return spawn(args, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=tree_env(root, env))


def start_proxy_on_free_port(
    cmd: Sequence[str],
    config_text: str | None,
    *,
    workdir: Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    root: Path = REPO_ROOT,
) -> tuple[subprocess.Popen[bytes], int, str]:
    """:func:`start_proxy` on a free loopback port; returns ``(process, port, description)``.

    The description ("started (pid N): <command>", plus "in ROOT" for another tree) is what
    the benchmarks print and record.
    """
    port = free_port()
    process = start_proxy(
        port, config_text, workdir=workdir, cmd=cmd, log_path=log_path, env=env, root=root
    )
    desc = f"started (pid {process.pid}): " + shlex.join(
        fill_template(cmd, port=port, config=workdir / "interceptor.toml")
    )
    if root != REPO_ROOT:
        desc += f" in {root}"
    return process, port, desc


def wait_for_proxy(
    host: str,
    port: int,
    timeout: float,
    process: subprocess.Popen[Any] | None,
    what: str = "the proxy",
) -> float:
    """Wait until the proxy accepts connections; returns the deadline used.

    Raises RuntimeError ("the proxy did not come up: ...", ``what`` naming the proxy) if it
    does not within ``timeout`` seconds or if ``process`` exits first.
    """
    deadline = time.monotonic() + timeout
    try:
        wait_for_port(host, port, deadline, process=process)
    except (TimeoutError, ProcessExitedError) as e:
        raise RuntimeError(f"{what} did not come up: {e}") from e
    return deadline


#: What a worker logs once it accepts on the supervisor's socket; its number is on the line
#: (``[interceptor worker=2] proxy accepting on ...`` or, with JSON logs, ``"worker": 2``).
_ACCEPTING = re.compile(rb"^.*proxy accepting on .*$", re.MULTILINE)
_WORKER_TAG = re.compile(rb'worker=(\d+)\]|"worker": ?(\d+)')


def wait_for_workers(
    log_path: Path,
    count: int,
    deadline: float,
    process: subprocess.Popen[Any],
    what: str = "the proxy",
    interval: float = 0.05,
) -> list[int]:
    """Wait until workers 1 to ``count`` have each logged that they accept; their pids.

    The supervisor's listening sockets take connections (in the kernel's backlog) before any
    worker runs, so the port answering says nothing about the workers: their own log lines
    do. Then each must be a child of ``process``. Raises RuntimeError if that is not so by
    ``deadline`` (a :func:`time.monotonic` value) or if ``process`` exits first.
    """
    wanted = set(range(1, count + 1))
    seen: set[int] = set()
    text = b""
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {process.returncode} before its workers accepted"
            )
        try:
            with open(log_path, "rb") as f:
                f.seek(len(text))
                text += f.read(1 << 20)
        except OSError:
            pass
        for line in _ACCEPTING.findall(text):
            tag = _WORKER_TAG.search(line)
            if tag:
                seen.add(int(tag.group(1) or tag.group(2)))
        if wanted <= seen:
            pids = [p for p in proc_tree(process.pid)[1:] if proc_worker_number(p) in wanted]
            if len(pids) >= count:
                return pids
        if time.monotonic() >= deadline:
            missing = ", ".join(str(n) for n in sorted(wanted - seen)) or "none"
            raise RuntimeError(
                f"{what}: not all of its {count} workers accept in time (not logged: "
                f"{missing}; worker processes found: {len(proc_tree(process.pid)) - 1})"
            )
        time.sleep(interval)


def report_error(
    error: BaseException,
    log_path: Path | None,
    log_kept: bool,
    more_logs: Sequence[Path] = (),
) -> None:
    """Print a failed run's error, and the tail of each proxy's output there is.

    ``more_logs`` are further proxies' logs (the ``--compare`` proxy's) that exist by now.
    """
    print(f"error: {error}", file=sys.stderr)
    for path in [log_path, *more_logs] if log_path is not None else more_logs:
        if not path.exists():
            continue
        kept = "" if log_kept else "; keep it with --proxy-log FILE"
        print(f"--- proxy output (tail of {path}{kept}) ---", file=sys.stderr)
        print(tail_text(path), file=sys.stderr)


def stop_proxy_and_origin(
    proxy: subprocess.Popen[bytes] | None,
    origin: tuple[subprocess.Popen[bytes], int] | None,
    *more_proxies: subprocess.Popen[bytes] | None,
) -> None:
    """Stop the started proxies (noting a failure status) and then the origin, if any."""
    for process in (proxy, *more_proxies):
        if process is not None:
            status = stop_process(process)
            if status is not None and status > 0:
                print(
                    f"note: the proxy (pid {process.pid}) exited with status {status}",
                    file=sys.stderr,
                )
    if origin is not None:
        stop_process(origin[0])


def start_origin(
    size: int,
    *,
    host: str = LOOPBACK,
    body: str = "octet",
    gzipped: bool = False,
    chunked: bool = False,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    timeout: float = 15.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the loopback origin (this file, ``origin`` mode) in its own process.

    It answers every request with 200 and :func:`origin_body` ``(size, body, gzipped)`` (a
    ``size``-byte body before any encoding) on a kernel-chosen port, sent chunked if
    ``chunked`` (else framed by its Content-Length), over TLS if ``tls_cert`` and ``tls_key``
    are given. Returns ``(process, port)`` once it listens; query its counters
    with :func:`origin_stats`, stop it with :func:`stop_process`.
    """
    require_loopback(host)
    if body not in ORIGIN_BODIES:
        raise ValueError(f"unknown origin body {body!r} (known: {', '.join(ORIGIN_BODIES)})")
    args = [sys.executable, str(Path(__file__).resolve()), "origin", "--size", str(size)]
    args += ["--host", host]
    # Only the non-default options, so the other benchmarks' origin command lines stay as they
    # were.
    if body != "octet":
        args += ["--body", body]
    if gzipped:
        args.append("--gzip")
    if chunked:
        args.append("--chunked")
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise ValueError("tls_cert and tls_key go together")
        args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    return start_port_reporter(args, what="the origin", timeout=timeout)


def origin_stats(
    port: int,
    host: str = LOOPBACK,
    timeout: float = 5.0,
    *,
    cafile: str | Path | None = None,
    server_name: str = "localhost",
) -> dict[str, int]:
    """The origin's counters: ``accepts`` (connections) and ``requests`` so far.

    Over HTTPS (checked against ``cafile`` for ``server_name``) when ``cafile`` is given. The
    statistics connection itself is not counted.
    """
    request = ORIGIN_STATS_PREFIX + b"HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n"
    if cafile is None:
        result = http_request(host, port, request, timeout=timeout)
    else:
        result = https_request(
            host, port, request, cafile=cafile, server_name=server_name, timeout=timeout
        )
    if result.status != 200:
        raise RuntimeError(f"origin statistics request answered {result.status}")
    return {k: int(v) for k, v in json.loads(result.body).items()}


# --------------------------------------------------------------------------------------------
# Small blocking HTTP and HTTPS clients
# --------------------------------------------------------------------------------------------


@dataclass
class HttpResult:
    """A parsed HTTP response."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = False


class _ResponseCollector:
    """httptools callbacks that gather one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _receive_response(
    sock: socket.socket, host: str, port: int, deadline: float, timeout: float
) -> HttpResult:
    """Read and parse one response from ``sock`` before ``deadline``."""
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    while not collector.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response from {host}:{port} in {timeout} s")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{host}:{port} closed the connection before responding")
        parser.feed_data(data)
    return HttpResult(
        status=parser.get_status_code(),
        headers=collector.headers,
        body=b"".join(collector.body),
        keep_alive=parser.should_keep_alive(),
    )


def receive_response(
    sock: socket.socket, host: str, port: int, deadline: float, timeout: float
) -> HttpResult:
    """Read and parse the next response on an open connection ``sock`` before ``deadline``.

    For a client that keeps its own keep-alive connection (one request outstanding, so no
    bytes of a later response can arrive with this one); ``host:port`` and ``timeout`` only
    name the peer and the limit in errors. Raises as :func:`http_request` does.
    """
    return _receive_response(sock, host, port, deadline, timeout)


def http_request(host: str, port: int, request: bytes, timeout: float = 10.0) -> HttpResult:
    """Send raw ``request`` bytes to ``host:port`` and read one response (blocking).

    Raises OSError (including socket.timeout) on connection trouble, and
    :class:`httptools.HttpParserError` or ConnectionError on a malformed or cut-short answer.
    """
    require_loopback(host)
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        return _receive_response(sock, host, port, deadline, timeout)


class TunnelRefusedError(Exception):
    """The proxy answered CONNECT with something other than 200 (or garbage)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def connect_request(authority: str) -> bytes:
    """The CONNECT request head for ``authority``."""
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def open_tunnel(raw: socket.socket, authority: str, deadline: float) -> None:
    """Send CONNECT on ``raw`` and read the proxy's reply head; TunnelRefusedError unless 200."""
    raw.sendall(connect_request(authority))
    reply = b""
    while b"\r\n\r\n" not in reply:  # bounded: the reply head may be at most 16 KiB
        raw.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = raw.recv(4096)
        if not chunk or len(reply) > 16384:
            raise TunnelRefusedError("connect_closed", f"CONNECT reply {reply[:200]!r}")
        reply += chunk
    status = tunnel_status(reply)
    if status != 200:
        raise TunnelRefusedError(f"connect_{status}", f"CONNECT reply {reply[:200]!r}")


def tunnel_status(reply: bytes) -> int:
    """The status code of a CONNECT reply head (raises TunnelRefusedError if malformed)."""
    parts = reply.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise TunnelRefusedError("connect_garbage", f"bad CONNECT reply {reply[:100]!r}")
    return int(parts[1])


def https_request(
    host: str,
    port: int,
    request: bytes,
    *,
    cafile: str | Path,
    server_name: str,
    tunnel: str | None = None,
    timeout: float = 10.0,
) -> HttpResult:
    """One HTTPS request (blocking), through a CONNECT tunnel to ``tunnel`` if given.

    The server must present a certificate for ``server_name`` that ``cafile`` vouches for.
    Raises OSError (ssl.SSLError, socket.timeout included), TunnelRefusedError,
    ConnectionError or httptools.HttpParserError.
    """
    require_loopback(host)
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if tunnel is not None:
            open_tunnel(raw, tunnel, deadline)
        with context.wrap_socket(raw, server_hostname=server_name) as sock:
            sock.sendall(request)
            return _receive_response(sock, host, port, deadline, timeout)


def request_until_up(
    fetch: Callable[[], _T],
    deadline: float,
    label: str,
    *,
    fatal: tuple[type[BaseException], ...] = (),
    retry: tuple[type[BaseException], ...] = (OSError,),
) -> _T:
    """``fetch()`` (a blocking request with a 10 s timeout), retried while the server is not up.

    Errors in ``retry`` are retried every 50 ms until ``deadline`` (the listener may be a moment
    ahead of the rest of the program); a timeout or an error in ``fatal`` fails at once. Every
    failure is a RuntimeError whose message starts with ``label``.
    """
    while True:
        try:
            return fetch()
        except fatal as e:
            raise RuntimeError(f"{label} failed: {e}") from e
        except TimeoutError as e:
            raise RuntimeError(f"{label}: no response in 10 s") from e
        except retry as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{label} failed: {e!r}") from e
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Throw-away TLS origin certificates
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


def make_origin_certs(
    directory: Path,
    *,
    root_cn: str = "interceptor bench origin root",
    dns_names: Sequence[str] = ("localhost",),
) -> tuple[Path, Path, Path]:
    """An origin root CA and a leaf it signed for ``dns_names`` and ``127.0.0.1``, as PEM.

    Made with ``tests/certs.py`` (EC P-256). Returns ``(root_cert, leaf_cert, leaf_key)`` paths.
    """
    certs = _load_test_certs()
    root = certs.make_origin_root(root_cn)
    root_path, _ = certs.write_pair(directory, "origin-root", root)
    leaf = certs.make_server_cert(root, dns_names=dns_names, ip_addresses=(LOOPBACK,))
    leaf_path, key_path = certs.write_pair(directory, "origin", leaf)
    return root_path, leaf_path, key_path


# --------------------------------------------------------------------------------------------
# Statistics and tables
# --------------------------------------------------------------------------------------------


def percentiles(values: Iterable[float], ps: Iterable[float]) -> list[float]:
    """Percentiles ``ps`` (0..100) of ``values``, linearly interpolated (numpy's default).

    Sorts once; returns NaN for each p when ``values`` is empty.
    """
    data = sorted(values)
    out = []
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside 0..100")
        if not data:
            out.append(float("nan"))
            continue
        rank = (len(data) - 1) * p / 100.0
        low = int(rank)
        high = min(low + 1, len(data) - 1)
        out.append(data[low] + (data[high] - data[low]) * (rank - low))
    return out


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``; see :func:`percentiles`."""
    return percentiles(values, [p])[0]


def format_table(rows: Iterable[Sequence[object]], headers: Sequence[str]) -> str:
    """Render rows as a plain-text table: first column left-aligned, the others right-aligned.

    None renders as ``-``; everything else with :func:`str`, so format numbers beforehand.
    """
    cells = [[str(h) for h in headers]]
    cells += [["-" if c is None else str(c) for c in row] for row in rows]
    width = max(len(r) for r in cells)
    for r in cells:
        r.extend([""] * (width - len(r)))
    widths = [max(len(r[i]) for r in cells) for i in range(width)]

    def line(r: list[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def print_table(
    rows: Iterable[Sequence[object]], headers: Sequence[str], file: IO[str] | None = None
) -> None:
    """Print :func:`format_table` of ``rows`` (to stdout unless ``file`` is given)."""
    print(format_table(rows, headers), file=file if file is not None else sys.stdout, flush=True)


def fmt_number(value: float | int | None, digits: int = 1) -> str | None:
    """A number for a table; None or NaN shows as '-' (None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def fmt_ratio(a: float | None, b: float | None) -> str | None:
    """``a / b`` as '0.42x'."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return f"{a / b:.2f}x"


def fmt_change(now: float | None, then: float | None) -> str | None:
    """Relative change from ``then`` to ``now`` as '+3.1%'."""
    if now is None or then is None or not then or math.isnan(now) or math.isnan(then):
        return None
    return f"{(now / then - 1) * 100:+.1f}%"


def read_float_array(path: Path, *, missing_ok: bool = False) -> array[float]:
    """The doubles a load generator wrote to ``path`` (which is then deleted).

    A missing file gives an empty array with ``missing_ok``, else FileNotFoundError.
    """
    values: array[float] = array("d")
    if missing_ok and not path.exists():
        return values
    values.frombytes(path.read_bytes())
    path.unlink()
    return values


# --------------------------------------------------------------------------------------------
# Direct-versus-proxy rounds: summaries, tables and goals (throughput.py, tls.py)
# --------------------------------------------------------------------------------------------


def sum_or_none(values: list[float | None]) -> float | None:
    """Sum of the values, or None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


def per_request_us(total_s: float | None, requests: int) -> float | None:
    """CPU seconds ``total_s`` per request, in µs (None if unmeasured or no requests)."""
    return total_s / requests * 1e6 if total_s is not None and requests else None


def pct_of_core(total_s: float | None, elapsed: float) -> float | None:
    """CPU seconds ``total_s`` over ``elapsed`` wall seconds, as % of one core."""
    return total_s / elapsed * 100 if total_s is not None and elapsed else None


def merged_array(parts: Iterable[Iterable[float]]) -> array[float]:
    """All of ``parts`` (e.g. each round's latencies) in one array."""
    merged: array[float] = array("d")
    for part in parts:
        merged.extend(part)
    return merged


def latency_fields(merged: Sequence[float]) -> dict[str, float]:
    """``p50_ms``, ``p90_ms``, ``p99_ms``, ``p999_ms`` and ``max_ms`` of latencies in seconds."""
    p50, p90, p99, p999 = percentiles(merged, [50, 90, 99, 99.9])
    return {
        "p50_ms": p50 * 1e3,
        "p90_ms": p90 * 1e3,
        "p99_ms": p99 * 1e3,
        "p999_ms": p999 * 1e3,
        "max_ms": max(merged) * 1e3 if merged else float("nan"),
    }


def error_fields(rounds: Sequence[Any]) -> dict[str, Any]:
    """``errors`` (by kind), ``error_count`` and ``reconnects`` over rounds that have them."""
    errors: Counter[str] = Counter()
    for r in rounds:
        errors.update(r.errors)
    return {
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "reconnects": sum(r.reconnects for r in rounds),
    }


def origin_fields(rounds: Sequence[Any], requests: int) -> dict[str, Any]:
    """``origin_accepts``, ``origin_requests`` and ``origin_accepts_per_1k`` over rounds."""
    accepts = sum(r.origin_accepts or 0 for r in rounds)
    return {
        "origin_accepts": accepts,
        "origin_requests": sum(r.origin_requests or 0 for r in rounds),
        "origin_accepts_per_1k": accepts / requests * 1000 if requests else None,
    }


#: A table row: (label, summary key, digits, ratio proxy/direct?, proxy only?)
Metric = tuple[str, str, int, bool, bool]


def print_direct_proxy_table(
    summary: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[Metric],
    base: Mapping[str, Any] | None,
    baseline_path: str | None,
    *,
    rate_key: str,
    rate_label: str,
    title: str | None = None,
    compare: Revision | None = None,
    compare_keys: Sequence[str] = (),
) -> None:
    """The direct/proxy results table, with baseline columns when ``base`` (its summary) is set.

    With ``compare`` (``--compare``), ``summary["compare"]`` is that revision's proxy: it gets
    a column and a tree/rev ratio column, and :func:`compare_line` of ``compare_keys`` follows.
    Under it, with a baseline, a line on how much the direct numbers (the machine) drifted.
    """
    rev = summary.get(COMPARE) if compare is not None else None
    headers = ["metric", "direct", "proxy" if rev is None else "proxy (tree)", "proxy/direct"]
    if compare is not None and rev is not None:
        headers += [f"proxy ({compare.label})", "tree/rev"]
    if base:
        headers += ["baseline proxy", "proxy vs baseline"]
    rows = []
    for label, key, digits, ratio, proxy_only in metrics:
        d, p = summary["direct"].get(key), summary["proxy"].get(key)
        if proxy_only:
            d = None
        row: list[str | None] = [
            label,
            fmt_number(d, digits),
            fmt_number(p, digits),
            fmt_ratio(p, d) if ratio else None,
        ]
        if rev is not None:
            row += [fmt_number(rev.get(key), digits), fmt_ratio(p, rev.get(key))]
        if base:
            b = base.get("proxy", {}).get(key)
            row += [fmt_number(b, digits), fmt_change(p, b)]
        rows.append(row)
    print()
    if title is not None:
        print(title)
    print_table(rows, headers)
    if compare is not None and rev is not None:
        print(compare_line(summary, metrics, compare, compare_keys))
    if base:
        bd = base.get("direct", {})
        print(
            f"direct vs baseline ({baseline_path}): {rate_label} "
            f"{fmt_change(summary['direct'][rate_key], bd.get(rate_key)) or '-'}, p50 "
            f"{fmt_change(summary['direct']['p50_ms'], bd.get('p50_ms')) or '-'} "
            "(how much the machine itself drifted)"
        )


# --------------------------------------------------------------------------------------------
# Side by side: several proxies of this tree (--variants, --workers) in one table
# --------------------------------------------------------------------------------------------

#: The environment variable that sets ``[proxy] workers``.
WORKERS_ENV = "INTERCEPTOR_PROXY_WORKERS"
#: The most workers ``--workers`` starts (each is a whole proxy process).
MAX_WORKERS = 64


def parse_worker_counts(text: str) -> list[int]:
    """``--workers`` ``"1,2"`` as ``[1, 2]``; ValueError (one line) for anything but distinct
    counts from 1 to MAX_WORKERS."""
    counts = []
    for word in text.split(","):
        try:
            count = int(word.strip())
        except ValueError:
            raise ValueError(f"{word.strip()!r} is not a number of workers") from None
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"{count} workers: give 1 to {MAX_WORKERS}")
        counts.append(count)
    if len(set(counts)) != len(counts):
        raise ValueError("a worker count is given twice")
    return counts


def workers_name(count: int) -> str:
    """The column and target name of the proxy with ``count`` workers: ``workers=2``."""
    return f"workers={count}"


def process_roles(root: int, per_pid: Mapping[str, float]) -> dict[str, float]:
    """A proxy's per-pid CPU seconds (:attr:`TreeCpuDelta.per_pid`, pids as strings) by role:
    "proxy" when it is one process, else "supervisor" (``root``) and "worker N" (from each
    one's ``--worker N``), in that order."""
    if len(per_pid) == 1:
        return {"proxy": sum(per_pid.values())}
    roles: dict[str, float] = {}
    for pid_text, seconds in per_pid.items():
        pid = int(pid_text)
        number = proc_worker_number(pid)
        role = "supervisor" if pid == root else f"worker {number}" if number else f"pid {pid}"
        roles[role] = roles.get(role, 0.0) + seconds
    return dict(sorted(roles.items(), key=lambda item: _role_order(item[0])))


def _role_order(role: str) -> tuple[int, int, str]:
    """Supervisor first, then workers by number, then anything else."""
    if role == "supervisor":
        return (0, 0, role)
    if role.startswith("worker "):
        return (1, int(role.split()[1]), role)
    return (2, 0, role)


def by_process_fields(by_round: Sequence[Mapping[str, float]], elapsed: float) -> dict[str, Any]:
    """Summary fields of a proxy's CPU by process over rounds (:func:`process_roles` of each):
    how many processes, each one's share of a core, and the busiest one's."""
    total: dict[str, float] = {}
    for roles in by_round:
        for role, seconds in roles.items():
            total[role] = total.get(role, 0.0) + seconds
    busiest = max(total.values(), default=None)
    return {
        "proxy_processes": len(total) or None,
        "proxy_cpu_pct_by_process": {role: pct_of_core(s, elapsed) for role, s in total.items()},
        "proxy_busiest_process_pct_of_core": pct_of_core(busiest, elapsed),
    }


def machine_fields(
    busy: float | None, total: float | None, ours: float | None, elapsed: float
) -> dict[str, Any]:
    """Summary fields of the whole machine over rounds: how busy all CPUs were, and what the
    rest of it took beside ``ours`` (the benchmark's own processes): other programs, and kernel
    work (loopback softirqs, mostly) billed to none of them."""
    rest = busy - ours if busy is not None and ours is not None else None
    return {
        "machine_busy_pct": busy / total * 100 if busy is not None and total else None,
        "rest_cpu_pct_of_core": pct_of_core(rest, elapsed),
    }


def rest_pct(busy: float | None, ours: Sequence[float | None], elapsed: float) -> float | None:
    """What the rest of the machine took in a round (% of one core, as in
    :func:`machine_fields`): all CPUs' ``busy`` seconds less ``ours`` (None if not all read)."""
    total = sum_or_none(list(ours))
    if busy is None or total is None or not elapsed:
        return None
    return (busy - total) / elapsed * 100


def rest_text(busy: float | None, ours: Sequence[float | None], elapsed: float) -> str:
    """``", rest 34%"`` for a round's progress line (:func:`rest_pct`); "" if not measured."""
    pct = rest_pct(busy, ours, elapsed)
    return f", rest {pct:.0f}%" if pct is not None else ""


#: Above this share of a core taken by the rest of the machine, a table gets a warning.
REST_NOTE_PCT = 20.0


def rest_note(summary: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str | None:
    """A warning line when the rest of the machine took more than REST_NOTE_PCT % of a core in
    the rounds of any of ``names`` (other programs competing for the same CPUs)."""
    busy = {
        name: pct
        for name in names
        if (pct := summary[name].get("rest_cpu_pct_of_core")) is not None and pct > REST_NOTE_PCT
    }
    if not busy:
        return None
    shares = ", ".join(f"{name} {pct:.0f}%" for name, pct in busy.items())
    return (
        f"note: the rest of the machine took {shares} of a core during those rounds: other "
        "work competed for these CPUs, so rates (and their ratios) say less than CPU per request"
    )


def by_process_text(pcts: Mapping[str, float | None] | None) -> str | None:
    """``"0 + 97 + 95"``: each process's share (supervisor first, then the workers by number)."""
    if not pcts:
        return None
    return " + ".join(fmt_number(p, 0) or "-" for p in pcts.values())


def print_side_by_side_table(
    summary: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    metrics: Sequence[Metric],
    ratio_rows: Mapping[str, str],
    title: str | None = None,
) -> None:
    """Direct and a column per proxy in ``names``; under each metric whose key is in
    ``ratio_rows``, a row (labelled by it) of each proxy's figure over the first's; under the
    busiest-process row, each proxy's CPU by process."""
    first = names[0]
    rows: list[list[str | None]] = []
    for label, key, digits, _, proxy_only in metrics:
        direct = None if proxy_only else fmt_number(summary["direct"].get(key), digits)
        rows.append([label, direct, *(fmt_number(summary[n].get(key), digits) for n in names)])
        if key in ratio_rows:
            rows.append(
                [
                    f"{ratio_rows[key]} / {first}'s",
                    None,
                    *(fmt_ratio(summary[n].get(key), summary[first].get(key)) for n in names),
                ]
            )
        if key == "proxy_busiest_process_pct_of_core":
            rows.append(
                [
                    "proxy CPU by process (% of one core)",
                    None,
                    *(by_process_text(summary[n].get("proxy_cpu_pct_by_process")) for n in names),
                ]
            )
    print()
    if title is not None:
        print(title)
    print_table(rows, ["metric", "direct", *names])


#: A round is a quiet one when the rest of the machine took at most this share of a core.
REST_QUIET_PCT = 10.0


def workers_scaling(
    rates: Mapping[tuple[str, int], float],
    rests: Mapping[tuple[str, int], float | None],
    summary: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    rate_key: str,
) -> dict[str, Any]:
    """Each proxy's rate over the first's (``names[0]``): over the whole run (``summary`` by
    name, figure ``rate_key``), round by round (``rates`` by name and round number: the
    proxies ran back to back in each round, so a round's ratio is the fairest one), and over
    the quiet rounds only: those in which the rest of the machine (``rests``, % of a core)
    took at most REST_QUIET_PCT in both proxies' turns."""
    first = names[0]
    rounds = sorted({n for _, n in rates})
    out: dict[str, Any] = {
        "first": first,
        "over_first": {},
        "over_first_per_round": {},
        "rest_pct_per_round": {
            name: [rests.get((name, n)) for n in rounds if (name, n) in rates] for name in names
        },
        "quiet_rest_pct_max": REST_QUIET_PCT,
        "quiet_rounds": {},
        "over_first_quiet": {},
    }
    base = summary[first][rate_key]
    for name in names[1:]:
        out["over_first"][name] = summary[name][rate_key] / base if base else None
        out["over_first_per_round"][name] = [
            rates[name, n] / rates[first, n] if rates.get((first, n)) else None
            for n in rounds
            if (name, n) in rates
        ]
        calm = [n for n in quiet_rounds(rests, [first, name]) if (name, n) in rates]
        out["quiet_rounds"][name] = calm
        # Rounds are equally long, so the mean of the rates is the rate of them all.
        under = sum(rates[first, n] for n in calm)
        out["over_first_quiet"][name] = sum(rates[name, n] for n in calm) / under if under else None
    return out


def quiet_rounds(rests: Mapping[tuple[str, int], float | None], names: Sequence[str]) -> list[int]:
    """The rounds in which the rest of the machine (``rests``, % of a core, by name and round)
    took at most REST_QUIET_PCT in the turn of every one of ``names``."""
    rounds = sorted({n for _, n in rests})
    return [n for n in rounds if all(_quiet(rests.get((name, n))) for name in names)]


def _quiet(rest: float | None) -> bool:
    """Whether a turn in which the rest of the machine took ``rest`` % of a core was quiet."""
    return rest is not None and rest <= REST_QUIET_PCT


def quiet_title(calm: Sequence[int], total: int) -> str:
    """The title of the table over the quiet rounds only."""
    return (
        f"over the {len(calm)} of {total} round(s) where the rest of the machine took <= "
        f"{REST_QUIET_PCT:g}% of a core in every proxy's turn (rounds "
        + ", ".join(map(str, calm))
        + "):"
    )


def scaling_lines(
    scaling: Mapping[str, Any], names: Sequence[str], what: str, goal: float | None = None
) -> list[str]:
    """The lines under a ``--workers`` table: each proxy's ``what`` ("requests/s") over the
    first's; with ``goal``, whether ``workers=2`` reached ``goal`` times ``workers=1``."""
    first = scaling["first"]
    lines = []
    rests = scaling["rest_pct_per_round"]
    for name in names[1:]:
        whole = scaling["over_first"][name]
        ratios = scaling["over_first_per_round"][name]
        per_round = ", ".join(
            f"{fmt_ratio(x, 1.0) or '-'} [{fmt_number(a, 0) or '-'}/{fmt_number(b, 0) or '-'}]"
            for x, a, b in zip(ratios, rests[first], rests[name], strict=False)
        )
        calm = scaling["quiet_rounds"][name]
        lines.append(
            f"scaling: {name} {what} / {first}'s = {fmt_ratio(whole, 1.0) or '-'}; rounds "
            f"[rest of the machine, % of a core, in {first}'s/{name}'s turn]: {per_round}"
        )
        lines.append(
            f"scaling: {name} / {first} in the {len(calm)} of {len(ratios)} round(s) where the "
            f"rest of the machine took <= {scaling['quiet_rest_pct_max']:g}% of a core in both: "
            + (fmt_ratio(scaling["over_first_quiet"][name], 1.0) or "-")
        )
    one, two = workers_name(1), workers_name(2)
    if goal is not None and first == one and two in names:
        ratio = scaling["over_first"][two]
        verdict = "not measured" if ratio is None else "NOT MET"
        if ratio is not None and ratio >= goal:
            verdict = "MET"
        # Three decimals: "1.30x: NOT MET" would read as a contradiction.
        shown = f"{ratio:.3f}x" if ratio is not None else "-"
        lines.append(
            f"goal: {two} {what} >= {goal:g} x {one}'s on {os.cpu_count()} CPUs -- measured "
            f"{shown}: {verdict}"
        )
    return lines


def goal_verdict(
    text: str,
    value: float | None,
    limit: float,
    shown: str,
    errors: int,
    failed: str,
    not_measured: str = " -- not measured",
) -> tuple[str, bool | None]:
    """The goal line ``text`` completed, and whether ``value <= limit`` (None if unmeasured).

    ``shown`` is ``value`` as printed; ``errors`` failed ``failed`` ("proxied requests") fail
    the goal whatever the value: a proxy that fails requests cheaply must not pass.
    """
    if value is None:
        return text + not_measured, None
    text += f" -- measured {shown}: "
    if errors:
        return text + f"NOT MET ({errors:,} {failed} failed)", False
    met = value <= limit
    return text + ("MET" if met else "NOT MET"), met


# --------------------------------------------------------------------------------------------
# Command line, baseline and the results file
# --------------------------------------------------------------------------------------------


def add_proxy_bench_args(
    parser: argparse.ArgumentParser,
    *,
    default_json: Path,
    access_log_help: str,
    baseline_help: str = "an earlier results JSON to compare with",
    check_help: str = "exit with status 1 if the goal is not met",
) -> None:
    """The options every direct-versus-proxy benchmark has, after its own.

    ``--access-log``, ``--startup-timeout``, ``--proxy-log``, ``--json``, ``--baseline``,
    ``--compare``, ``--check`` and the hidden ``--loadgen-worker``.
    """
    parser.add_argument("--access-log", action="store_true", help=access_log_help)
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for the proxy"
    )
    parser.add_argument("--proxy-log", help="keep the started proxy's output in this file")
    parser.add_argument(
        "--json",
        default=str(default_json),
        help=f"where to write the results (default: {default_json.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--baseline", help=baseline_help)
    parser.add_argument(
        "--compare",
        metavar="REV",
        help=(
            "also run the proxy of git revision REV (exported to a temporary directory) and "
            "measure it in the same run, its rounds interleaved with this tree's"
        ),
    )
    parser.add_argument("--check", action="store_true", help=check_help)
    parser.add_argument("--loadgen-worker", help=argparse.SUPPRESS)


def load_arg_checks(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """Range checks of ``--duration``, ``--rounds``, ``--size``, ``--warmup`` and
    ``--max-requests``, for :func:`check_args`."""
    return [
        (0 < args.duration <= 3600, "--duration must be in (0, 3600] seconds"),
        (1 <= args.rounds <= 100, "--rounds must be between 1 and 100"),
        (0 <= args.size <= 64 * 1024 * 1024, "--size must be between 0 and 64 MiB"),
        (0 <= args.warmup <= 60, "--warmup must be between 0 and 60 seconds"),
        (1 <= args.max_requests <= 50_000_000, "--max-requests must be between 1 and 50,000,000"),
    ]


def check_args(parser: argparse.ArgumentParser, checks: Iterable[tuple[bool, str]]) -> None:
    """``parser.error(message)`` for the first check that is not ok."""
    for ok, message in checks:
        if not ok:
            parser.error(message)


def load_baseline(
    path: str | None, params: Mapping[str, object], benchmark: str | None = None
) -> dict[str, Any] | None:
    """An earlier results file (None without ``path``), with a note per differing parameter.

    ``params`` are this run's values by JSON key (``--`` plus the key, ``_`` as ``-``, is the
    option); with ``benchmark`` a file from another benchmark is noted too.
    """
    if not path:
        return None
    baseline: dict[str, Any] = json.loads(Path(path).read_text())
    if benchmark is not None and baseline.get("benchmark") != benchmark:
        print(f"note: {path} is not a {benchmark} benchmark result; comparing anyway")
    old = baseline.get("params", {})
    for key, value in params.items():
        if key in old and old[key] != value:
            print(f"note: the baseline used --{key.replace('_', '-')} {old[key]}, this run {value}")
    return baseline


def git_revision() -> str | None:
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


#: The summary and round key of the ``--compare`` revision's proxy ("proxy" is this tree's).
COMPARE = "compare"
#: What a tree must have for ``twistd interceptor`` to find the proxy in it.
PLUGIN_PATH = "twisted/plugins/interceptor_plugin.py"


@dataclass(frozen=True)
class Revision:
    """A git revision given to ``--compare``, resolved to a commit."""

    rev: str  # as given, e.g. "main~3"
    sha: str
    short: str

    @property
    def label(self) -> str:
        """``main~3 = 06708fa`` (just the short sha when that is what was given)."""
        return self.short if self.sha.startswith(self.rev) else f"{self.rev} = {self.short}"

    def to_json(self) -> dict[str, str]:
        """The revision as JSON-ready data."""
        return {"rev": self.rev, "sha": self.sha, "short": self.short}


def _git(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """``git ARGS`` in this repository, output captured (raises OSError, SubprocessError)."""
    return subprocess.run(
        ["git", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def resolve_revision(rev: str) -> Revision:
    """``rev`` resolved in this repository; ValueError (one line naming it) if that fails.

    The commit must have :data:`PLUGIN_PATH`, or there would be no proxy to start from it.
    """
    try:
        # --end-of-options: a REV that starts with "-" is a revision, never an option.
        done = _git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        if done.returncode != 0:
            raise ValueError(f"--compare {rev}: not a commit in the repository at {REPO_ROOT}")
        sha = done.stdout.decode().strip()
        short = _git("rev-parse", "--short", sha).stdout.decode().strip() or sha[:7]
        if _git("cat-file", "-e", f"{sha}:{PLUGIN_PATH}").returncode != 0:
            raise ValueError(
                f"--compare {rev} (= {short}): its tree has no {PLUGIN_PATH}, so no proxy to run"
            )
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(f"--compare {rev}: could not run git: {e}") from None
    return Revision(rev, sha, short)


def compare_arg(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Revision | None:
    """``--compare`` resolved (None without it); exits 2 with one line if it does not resolve.

    Resolved while parsing, so a bad revision fails before any process is started.
    """
    if not args.compare:
        return None
    try:
        return resolve_revision(args.compare)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def export_revision(revision: Revision, dest: Path, timeout: float = 120.0) -> Path:
    """Write ``revision``'s tree into the new directory ``dest`` (``git archive | tar -x``).

    ``git archive`` rather than ``git worktree add``: it leaves nothing in the repository's
    metadata, so a run that is killed leaves no stale worktree for others to trip over; the
    caller puts ``dest`` in its temporary directory, which goes at exit whatever happens.
    Checks that Python, run as the proxy will be, imports ``interceptor`` from ``dest`` and not
    from an installed copy; raises RuntimeError if anything fails.
    """
    dest.mkdir(parents=True)
    try:
        archive = _git("archive", "--format=tar", revision.sha, timeout=timeout)
        if archive.returncode != 0:
            raise RuntimeError(archive.stderr.decode("utf-8", "replace").strip())
        untar = subprocess.run(
            ["tar", "-x", "-C", str(dest)],
            input=archive.stdout,
            capture_output=True,
            timeout=timeout,
        )
        if untar.returncode != 0:
            raise RuntimeError(untar.stderr.decode("utf-8", "replace").strip())
        found = subprocess.run(
            [sys.executable, "-c", "import interceptor; print(interceptor.__file__)"],
            cwd=dest,
            env=tree_env(dest),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        raise RuntimeError(f"could not export {revision.label} to {dest}: {e}") from None
    where = found.stdout.strip()
    if found.returncode != 0 or not Path(where).resolve().is_relative_to(dest.resolve()):
        raise RuntimeError(
            f"the tree of {revision.label} in {dest} does not provide the interceptor package "
            f"(Python found {where or found.stderr.strip()[-300:]!r})"
        )
    return dest


def round_order(names: Sequence[str], round_no: int) -> list[str]:
    """The order of round ``round_no``'s targets: ``names`` as given (direct, proxy, compare).

    Every other round the proxies after the first name swap places, so that a machine getting
    busier or quieter over the run favours neither proxy.
    """
    first, *proxies = names
    return [first, *(proxies if round_no % 2 else proxies[::-1])]


def compare_line(
    summary: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[Metric],
    compare: Revision,
    keys: Sequence[str],
) -> str:
    """The key figures of this tree's proxy next to ``compare``'s, with their ratio.

    E.g. ``tree vs main~3 = 06708fa: proxy CPU per request (µs) 120.3 vs 131.0 = 0.92x``.
    """
    labels = {key: (label, digits) for label, key, digits, _, _ in metrics}
    parts = []
    for key in keys:
        label, digits = labels[key]
        p, c = summary["proxy"].get(key), summary[COMPARE].get(key)
        parts.append(
            f"{label} {fmt_number(p, digits) or '-'} vs {fmt_number(c, digits) or '-'}"
            f" = {fmt_ratio(p, c) or '-'}"
        )
    return f"tree vs {compare.label}: " + "; ".join(parts)


def compare_ratios(
    summary: Mapping[str, Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, float | None]:
    """This tree's proxy over the ``--compare`` revision's, for each of ``keys``."""
    ratios = {}
    for key in keys:
        p, c = summary["proxy"].get(key), summary[COMPARE].get(key)
        ratios[key] = p / c if p is not None and c else None
    return ratios


def compare_results(compare: Revision, desc: str, ratios: Mapping[str, Any]) -> dict[str, Any]:
    """The ``compare`` entry of a results file: the revision, its proxy, tree/rev ``ratios``.

    The revision's figures themselves are a summary's ``"compare"`` entry, next to ``"proxy"``
    (this tree's), so a ``--baseline`` reading only ``"direct"`` and ``"proxy"`` still works.
    """
    return {**compare.to_json(), "proxy": desc, "ratios_tree_over_rev": dict(ratios)}


def results_header(benchmark: str, **host: object) -> dict[str, Any]:
    """The first keys of every results file: benchmark, time, git revision, host.

    ``host`` adds entries to the host description (before ``platform``).
    """
    return {
        "benchmark": benchmark,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_revision(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **host,
            "platform": platform.platform(),
        },
    }


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as strict, indented JSON to ``path`` (making its folder); return it."""
    json_path = Path(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    return json_path


# --------------------------------------------------------------------------------------------
# Origin servers (each runs in its own process)
# --------------------------------------------------------------------------------------------


async def serve_until_stopped(server: asyncio.Server, max_lifetime: float) -> None:
    """Print ``PORT n`` for the parent, then serve until told to stop; close the server.

    Stops on SIGTERM/SIGINT, when the parent process goes away, or after ``max_lifetime``
    seconds (0: no limit).
    """
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    started = time.monotonic()
    while not stop.is_set():
        if os.getppid() != parent:
            break  # Orphaned: whoever started us is gone.
        if max_lifetime and time.monotonic() - started > max_lifetime:
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    server.close()


#: The bodies the origin can serve (``--body``); the first is the default.
ORIGIN_BODIES = ("octet", "html")

_HTML_HEAD = b"<!DOCTYPE html>\n<html><head><title>cherry</title></head><body>\n"
_HTML_LINE = b"<p>A cherry on a cherry tart, and cherry jam beside it.</p>\n"
_HTML_TAIL = b"</body></html>\n"


@dataclass(frozen=True)
class OriginBody:
    """What the origin answers with: ``content`` (the body), ``wire`` (as sent), headers."""

    content: bytes
    wire: bytes
    content_type: bytes
    content_encoding: bytes | None  # b"gzip", or None for the identity

    def headers(self, chunked: bool = False) -> bytes:
        """The header lines that describe the body (CRLF after each), Content-Length last.

        With ``chunked``, ``Transfer-Encoding: chunked`` instead of the Content-Length (send
        :func:`chunked_wire` of ``wire`` then).
        """
        lines = b"Content-Type: %s\r\n" % self.content_type
        if self.content_encoding is not None:
            lines += b"Content-Encoding: %s\r\n" % self.content_encoding
        if chunked:
            return lines + b"Transfer-Encoding: chunked\r\n"
        return lines + b"Content-Length: %d\r\n" % len(self.wire)


#: The chunk size of :func:`chunked_wire` (the origin's ``--chunked``).
ORIGIN_CHUNK_SIZE = 64 * 1024


def chunked_wire(data: bytes, chunk_size: int = ORIGIN_CHUNK_SIZE) -> bytes:
    """``data`` in HTTP/1.1 chunked framing: ``chunk_size``-byte chunks, then the last chunk."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be > 0")
    view = memoryview(data)
    parts = []
    for i in range(0, len(data), chunk_size):
        piece = view[i : i + chunk_size]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def origin_body(size: int, kind: str = "octet", gzipped: bool = False) -> OriginBody:
    """The origin's body: ``size`` bytes of ``kind`` (see :data:`ORIGIN_BODIES`), maybe gzipped.

    ``octet`` is 0-9a-f repeated, served as application/octet-stream. ``html`` is a page that
    says "cherry" over and over (in the title and on every line), served as UTF-8 text/html, so
    an addon that rewrites HTML has work to do on every response. Deterministic (gzip with
    mtime 0), so a benchmark can compute what its origin serves and check the answers.
    """
    if kind == "octet":
        content = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        content_type = b"application/octet-stream"
    elif kind == "html":
        fill = size - len(_HTML_HEAD) - len(_HTML_TAIL)
        if fill >= 0:
            content = _HTML_HEAD + (_HTML_LINE * (fill // len(_HTML_LINE) + 1))[:fill] + _HTML_TAIL
        else:  # Too small for a whole page: still exactly size bytes, cherries first.
            content = (_HTML_LINE * (size // len(_HTML_LINE) + 1))[:size]
        content_type = b"text/html; charset=utf-8"
    else:
        raise ValueError(f"unknown origin body {kind!r} (known: {', '.join(ORIGIN_BODIES)})")
    # Compressed once here, never per request: the origin's CPU is not what is measured.
    wire = gzip.compress(content, compresslevel=6, mtime=0) if gzipped else content
    return OriginBody(content, wire, content_type, b"gzip" if gzipped else None)


class _OriginCounters:
    """Connection and request counts, served by the statistics request."""

    __slots__ = ("accepts", "requests")

    def __init__(self) -> None:
        self.accepts = 0
        self.requests = 0


class _OriginProtocol(asyncio.Protocol):
    """Answers every request (headers ending in CRLFCRLF; no bodies) with a fixed response."""

    __slots__ = ("_counters", "_response", "_transport", "_tail", "_first")

    def __init__(self, counters: _OriginCounters, response: bytes) -> None:
        self._counters = counters
        self._response = response
        self._transport: asyncio.Transport | None = None
        self._tail = b""
        self._first = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._counters.accepts += 1

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._first:
            self._first = False
            if data.startswith(ORIGIN_STATS_PREFIX):
                self._counters.accepts -= 1
                body = json.dumps(
                    {"accepts": self._counters.accepts, "requests": self._counters.requests}
                ).encode()
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                transport.close()
                return
        # Requests have no body, so each CRLFCRLF ends one; keep a short tail in case one is
        # split across reads.
        buf = self._tail + data if self._tail else data
        n = buf.count(b"\r\n\r\n")
        self._tail = b"" if buf.endswith(b"\r\n\r\n") else buf[-3:]
        if n:
            self._counters.requests += n
            transport.write(self._response if n == 1 else self._response * n)


async def _serve_origin(args: argparse.Namespace) -> None:
    """Run the origin until SIGTERM/SIGINT or until the parent process goes away."""
    body = origin_body(args.size, args.body, args.gzip)
    wire = chunked_wire(body.wire) if args.chunked else body.wire
    response = (
        b"HTTP/1.1 200 OK\r\n"
        + body.headers(args.chunked)
        + b"Connection: keep-alive\r\n\r\n"
        + wire
    )
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    counters = _OriginCounters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _OriginProtocol(counters, response),
        args.host,
        args.port,
        backlog=4096,
        reuse_address=True,
        ssl=ssl_context,
    )
    await serve_until_stopped(server, args.max_lifetime)


def _origin_main(argv: Sequence[str]) -> None:
    """Entry point of ``python bench/_common.py origin ...``."""
    parser = argparse.ArgumentParser(
        prog="_common.py origin", description="Fixed-response loopback HTTP/1.1 origin."
    )
    parser.add_argument(
        "--size", type=int, default=1024, help="body size in bytes (before any encoding)"
    )
    parser.add_argument(
        "--body", choices=ORIGIN_BODIES, default=ORIGIN_BODIES[0], help="what the body is"
    )
    parser.add_argument("--gzip", action="store_true", help="serve it gzip-encoded")
    parser.add_argument(
        "--chunked", action="store_true", help="send it chunked, not framed by Content-Length"
    )
    parser.add_argument("--host", default=LOOPBACK, help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: the kernel picks one")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--max-lifetime",
        type=float,
        default=6 * 3600,
        help="exit after this many seconds whatever happens (0: no limit)",
    )
    args = parser.parse_args(argv)
    require_loopback(args.host)
    if args.size < 0:
        parser.error("--size must be >= 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    asyncio.run(_serve_origin(args))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "origin":
        _origin_main(sys.argv[2:])
    else:
        sys.exit(
            f"usage: {sys.argv[0]} origin [--size N] [--body octet|html] [--gzip] [--chunked] "
            "[--port P] [--tls-cert C --tls-key K]"
        )
