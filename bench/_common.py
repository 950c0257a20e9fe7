"""Helpers shared by the interceptor benchmarks (not tests; pytest never collects them).

What is here:

* process control: :func:`start_proxy`, :func:`start_origin`, :func:`stop_process`,
  :func:`wait_for_port`, :func:`free_port`;
* ``/proc`` readings: :func:`proc_cpu_seconds`, :func:`proc_rss_bytes`, :func:`proc_fd_count`;
* a tiny blocking HTTP/1.1 client for warm-up checks: :func:`http_request`;
* statistics and output: :func:`percentile`, :func:`percentiles`, :func:`format_table`,
  :func:`print_table`.

This file is also the loopback origin server that :func:`start_origin` runs in its own process
(so its CPU is not counted as the proxy's and it never shares a GIL with the load generator)::

    python bench/_common.py origin --size 1024 [--port 0] [--tls-cert C --tls-key K]

Every address used here is a loopback one; :func:`require_loopback` refuses anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httptools

#: The repository root (this file lives in ``<root>/bench``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The only interface the benchmarks ever bind or connect to.
LOOPBACK = "127.0.0.1"

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: First bytes of the origin's statistics request (see :func:`origin_stats`).
ORIGIN_STATS_PREFIX = b"GET /__origin_stats__ "


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


# --------------------------------------------------------------------------------------------
# /proc readings
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


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (from ``/proc/PID/statm``)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_SIZE


def proc_fd_count(pid: int) -> int:
    """Number of open file descriptors of process ``pid`` (needs the right to read its fds)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


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


def default_twistd() -> list[str]:
    """The command that runs ``twistd`` from the same environment as this Python."""
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def default_proxy_cmd() -> list[str]:
    """Command template for the proxy; ``{port}`` and ``{config}`` are filled in later."""
    return [
        *default_twistd(),
        "-n",
        "--pidfile=",
        "interceptor",
        "--listen",
        "tcp:{port}:interface=127.0.0.1",
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


def start_proxy(
    port: int,
    config_text: str | None,
    *,
    workdir: str | Path,
    cmd: Sequence[str] | None = None,
    log_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the proxy listening on ``127.0.0.1:port``; return its process at once.

    ``config_text`` (if not None) is written to ``workdir/interceptor.toml``. ``cmd`` is a
    command template (default :func:`default_proxy_cmd`) in which ``{port}`` and ``{config}``
    are replaced. The proxy runs in the repository root with the root first on PYTHONPATH, so
    the ``interceptor`` package and its twistd plugin are found without being installed. Its
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
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    log_path = Path(log_path) if log_path is not None else workdir / "proxy.log"
    with open(log_path, "ab") as log:
        return spawn(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=child_env)


def start_origin(
    size: int,
    *,
    host: str = LOOPBACK,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    timeout: float = 15.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the loopback origin (this file, ``origin`` mode) in its own process.

    It answers every request with 200 and a ``size``-byte body on a kernel-chosen port, over
    TLS if ``tls_cert`` and ``tls_key`` are given. Returns ``(process, port)`` once it
    listens; query its counters with :func:`origin_stats`, stop it with :func:`stop_process`.
    """
    require_loopback(host)
    args = [sys.executable, str(Path(__file__).resolve()), "origin", "--size", str(size)]
    args += ["--host", host]
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise ValueError("tls_cert and tls_key go together")
        args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    process = spawn(args, stdout=subprocess.PIPE)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    fd = process.stdout.fileno()
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the origin did not report its port in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 256)
                if not chunk:
                    status = process.wait(timeout)
                    raise ProcessExitedError(f"the origin exited with status {status}")
                line += chunk
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"unexpected first line from the origin: {line!r}")
        port = int(line.split()[1])
    except BaseException:
        stop_process(process)
        raise
    process.stdout.close()  # It prints nothing more.
    return process, port


def origin_stats(port: int, host: str = LOOPBACK, timeout: float = 5.0) -> dict[str, int]:
    """The origin's counters: ``accepts`` (connections) and ``requests`` so far.

    The statistics connection itself is not counted.
    """
    result = http_request(
        host,
        port,
        ORIGIN_STATS_PREFIX + b"HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n",
        timeout=timeout,
    )
    if result.status != 200:
        raise RuntimeError(f"origin statistics request answered {result.status}")
    return {k: int(v) for k, v in json.loads(result.body).items()}


# --------------------------------------------------------------------------------------------
# A small blocking HTTP client
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


def http_request(host: str, port: int, request: bytes, timeout: float = 10.0) -> HttpResult:
    """Send raw ``request`` bytes to ``host:port`` and read one response (blocking).

    Raises OSError (including socket.timeout) on connection trouble, and
    :class:`httptools.HttpParserError` or ConnectionError on a malformed or cut-short answer.
    """
    require_loopback(host)
    deadline = time.monotonic() + timeout
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
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


# --------------------------------------------------------------------------------------------
# The origin server (runs in its own process)
# --------------------------------------------------------------------------------------------


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
    body = (b"0123456789abcdef" * (args.size // 16 + 1))[: args.size]
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body)
    ) + body
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
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    started = time.monotonic()
    while not stop.is_set():
        if os.getppid() != parent:
            break  # Orphaned: whoever started us is gone.
        if args.max_lifetime and time.monotonic() - started > args.max_lifetime:
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    server.close()


def _origin_main(argv: Sequence[str]) -> None:
    """Entry point of ``python bench/_common.py origin ...``."""
    parser = argparse.ArgumentParser(
        prog="_common.py origin", description="Fixed-response loopback HTTP/1.1 origin."
    )
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
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
        sys.exit(f"usage: {sys.argv[0]} origin [--size N] [--port P] [--tls-cert C --tls-key K]")
