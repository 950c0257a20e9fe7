"""Shared black-box test support: a proxy subprocess, a scriptable origin, raw clients, curl.

Nothing here imports the `interceptor` package: the proxy is driven only as a `twistd`
subprocess over loopback TCP, exactly as a user would run it, so these helpers stay valid
whatever happens inside the package.

The pieces:

* `start_proxy()` / `ProxyProcess`: run `twistd -n interceptor` on a loopback port with an
  optional TOML config, wait until it accepts connections, read its log, stop it.
  `ProxyLauncher` starts several and stops them all (what the pytest fixtures use).
  `LoggedProcess`, its base, is any loopback daemon with a log file (read, wait for, stop);
  upstream_proxies.py builds tinyproxy and microsocks on it.
* `ThreadedServer`: the listen/accept/thread-per-connection/bounded-stop plumbing shared by the
  test servers (`OriginServer` here, `StreamOrigin` in storm.py, `TLSOrigin` in tls_origin.py).
* `OriginServer`: a threaded loopback HTTP/1.1 origin with per-path behaviours (`respond`,
  `respond_chunked`, `respond_until_close`, `echo`, `drip`, `close_before_headers`,
  `die_mid_body`, `respond_raw`). It counts accepted connections and records every request
  (method, target, headers, body, framing) so tests can see what the proxy forwarded.
  Its HTTP handling is its own few dozen lines, independent of the proxy's parser.
* `RawConnection` / `HTTPResponse`: send exact bytes, read back one complete response at a
  time (Content-Length, chunked, close-delimited, HEAD/1xx/204/304) or everything until close.
* `run_curl()`, `free_port()`, `wait_for()`, `unresponsive_port()`, `parse_access_line()`.

All waiting is polling against a deadline; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import http
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now.

    Bound and released at once, so another process may take it before the caller does (rare
    on loopback); `start_proxy` retries with a new port when its bind fails. Connecting to the
    returned port gets "connection refused", which makes it a handy refused upstream too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll `predicate()` until it returns something truthy and return that value.

    Raises AssertionError (so a test failure reads naturally) with `message` (a string, or a
    callable producing one, evaluated only on failure) once `timeout` seconds have passed.
    The predicate is always evaluated once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s: {text}")
        time.sleep(interval)


def _clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without proxy variables that could reroute curl."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            del env[name]
    return env


def run_curl(
    *args: str, timeout: float = 30.0, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `curl -q --silent --show-error ARGS...`; return the CompletedProcess (bytes).

    Never raises on a non-zero exit: check `.returncode` (e.g. 18 = partial transfer, 52 =
    empty reply). `*_proxy` environment variables are removed so only an explicit `-x` applies;
    `-q` (first) keeps any ~/.curlrc out. Raises subprocess.TimeoutExpired after `timeout`.
    """
    cmd = ["curl", "-q", "--silent", "--show-error", *args]
    return subprocess.run(
        cmd, capture_output=True, timeout=timeout, input=input, env=_clean_env(), check=False
    )


@contextlib.contextmanager
def unresponsive_port(probe_timeout: float = 0.3, max_fillers: int = 8) -> Iterator[int]:
    """A loopback port whose connection attempts hang (SYN dropped), for connect timeouts.

    A listener with backlog 0 that never accepts: once its accept queue is full, Linux drops
    further SYNs, so a connect() neither succeeds nor is refused until the client gives up.
    Filler connections occupy the queue; a probe connect with `probe_timeout` proves the
    effect before the port is handed out. Calls pytest.skip if the kernel does not behave
    that way. Everything is closed on exit.
    """
    import pytest

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(max_fillers):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(probe_timeout)
            try:
                probe.connect((LOOPBACK, port))
            except TimeoutError:
                probe.close()
                break  # a SYN went unanswered: the queue is full
            except OSError:
                probe.close()
                pytest.skip("cannot make an unresponsive loopback port here")
            fillers.append(probe)  # accepted into the queue: keep it there
        else:
            pytest.skip("accept queue never filled: no unresponsive loopback port here")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


# --------------------------------------------------------------------------------------------
# Raw HTTP client side
# --------------------------------------------------------------------------------------------


def _parse_headers(lines: Iterable[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"malformed header line {line!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return headers


def _take_exactly(buf: bytearray, n: int, more: Callable[[], object]) -> bytes:
    """Remove and return the first `n` bytes of `buf`, calling `more()` while it is shorter.

    `more()` must add bytes to `buf` or raise (the callers' readers do one of the two).
    """
    while len(buf) < n:
        more()
    data = bytes(buf[:n])
    del buf[:n]
    return data


def _take_through(buf: bytearray, marker: bytes, more: Callable[[], object]) -> bytes:
    """Remove and return the bytes of `buf` up to and including the first `marker`.

    Calls `more()` (which must add bytes to `buf` or raise) until the marker is there.
    """
    start = 0
    while (i := buf.find(marker, start)) < 0:
        start = max(0, len(buf) - len(marker) + 1)
        more()
    return _take_exactly(buf, i + len(marker), more)


def _read_chunked(
    until: Callable[[bytes, int], bytes],
    exactly: Callable[[int], bytes],
    bad_chunk: Callable[[], Exception],
) -> tuple[bytes, list[tuple[str, str]]]:
    """Decode a chunked body (after its head); returns (body, trailers).

    `until(marker, limit)` takes bytes through `marker` (allowed to refuse beyond `limit`
    bytes), `exactly(n)` takes `n` bytes; `bad_chunk()` is raised for chunk data not
    followed by CRLF, ValueError for a size line that is not hex.
    """
    body = bytearray()
    while True:
        size_line = until(b"\r\n", 4096)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        body += exactly(size)
        if exactly(2) != b"\r\n":
            raise bad_chunk()
    trailer_lines = []
    while (line := until(b"\r\n", 65536)) != b"\r\n":
        trailer_lines.append(line[:-2])
    return bytes(body), _parse_headers(trailer_lines)


class _HeaderLookup:
    """Case-insensitive access to an ordered list of (name, value) headers."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def has_header(self, name: str) -> bool:
        """Whether header `name` appears at all."""
        return bool(self.header_values(name))

    def header_tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every `name` header, lower-cased, in order."""
        return [t.strip().lower() for v in self.header_values(name) for t in v.split(",")]

    def connection_tokens(self) -> set[str]:
        """Lower-cased tokens of every Connection header."""
        return set(self.header_tokens("connection")) - {""}


@dataclass
class HTTPResponse(_HeaderLookup):
    """One response as a client received it.

    `body` is de-chunked; `raw` is every byte of this response as it arrived (head and framed
    body); `chunked` tells whether chunked transfer coding was used; `until_close` whether the
    body was delimited by the connection closing; `interim` holds 1xx responses that came
    before this one.
    """

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw: bytes = b""
    chunked: bool = False
    until_close: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[HTTPResponse] = field(default_factory=list)


class IncompleteResponse(Exception):
    """The connection ended (or timed out) before a complete response arrived.

    `data` holds the bytes of the partial response; `head` the parsed head if it was complete.
    """

    def __init__(self, message: str, data: bytes, head: HTTPResponse | None = None) -> None:
        super().__init__(f"{message}; got {len(data)} bytes: {data[:300]!r}")
        self.data = data
        self.head = head


class RawConnection:
    """A plain TCP client for exact-bytes HTTP: send anything, parse responses strictly.

    Reads are buffered, so several pipelined responses can be read one `read_response()` at a
    time. Every read has a deadline (`timeout` per call, default the connection's); a reset
    from the peer counts as end of stream (`.reset` is then True). Use as a context manager or
    call `close()`.
    """

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    @property
    def local_port(self) -> int:
        """This client's source port (what the proxy's access log shows as the client)."""
        return self.sock.getsockname()[1]

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        """Send all of `data` (raises OSError if the peer is gone)."""
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        """Half-close: send FIN, keep reading."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at end of stream. TimeoutError at deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """Everything (buffered and new) until the peer closes. TimeoutError if it does not."""
        deadline = self._deadline(timeout)
        while self._fill(deadline):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True if the peer closes within `timeout` (bytes arriving meanwhile are buffered)."""
        deadline = self._deadline(timeout)
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def read_available(self, min_bytes: int = 1, timeout: float | None = None) -> bytes:
        """Take at least `min_bytes` from the stream (fewer only at end of stream)."""
        deadline = self._deadline(timeout)
        while len(self.buf) < min_bytes and self._fill(deadline):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def wait_buffered(
        self, condition: bytes | Callable[[bytes], bool], timeout: float | None = None
    ) -> bytes:
        """Wait until the unread bytes contain `condition` (bytes) or satisfy it (a callable).

        Nothing is consumed, so `read_response()` still sees the whole response afterwards
        (e.g. to check that part of a body arrives before the origin sends the rest). Returns
        a copy of the unread bytes; IncompleteResponse if the stream ends or time runs out.
        """
        deadline = self._deadline(timeout)

        def met() -> bool:
            data = bytes(self.buf)
            return condition in data if isinstance(condition, bytes) else condition(data)

        while not met():
            self._more(deadline, "closed while waiting", "timed out waiting")
        return bytes(self.buf)

    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        """Take bytes up to and including `marker`; IncompleteResponse if the stream ends."""
        deadline = self._deadline(timeout)
        return _take_through(
            self.buf,
            marker,
            lambda: self._more(
                deadline, f"closed before {marker!r}", f"timed out waiting for {marker!r}"
            ),
        )

    def read_response(
        self, method: str = "GET", timeout: float | None = None, interim: bool = False
    ) -> HTTPResponse:
        """Read exactly one response.

        `method` is the request's method (HEAD responses have no body). 1xx responses are
        collected into `.interim` of the final one, unless `interim=True`, in which case a 1xx
        is returned on its own. Raises IncompleteResponse if the connection ends or the
        deadline passes first (mid-body included), never returns a truncated body.
        """
        deadline = self._deadline(timeout)
        interims: list[HTTPResponse] = []
        while True:
            resp = self._read_one(method, deadline)
            if 100 <= resp.status < 200 and resp.status != 101 and not interim:
                interims.append(resp)
                continue
            resp.interim = interims
            return resp

    def _read_one(self, method: str, deadline: float) -> HTTPResponse:
        raw = bytearray()
        timed_out = "timed out reading response"

        def take_until(marker: bytes, limit: int = 0) -> bytes:  # `limit`: not enforced here
            closed = f"connection closed before {marker!r}"
            data = _take_through(
                self.buf, marker, lambda: self._more(deadline, closed, timed_out, raw, head)
            )
            raw.extend(data)
            return data

        def take(n: int) -> bytes:
            def more() -> None:
                closed = f"connection closed with {n - len(self.buf)} body bytes missing"
                self._more(deadline, closed, timed_out, raw, head)

            data = _take_exactly(self.buf, n, more)
            raw.extend(data)
            return data

        head: HTTPResponse | None = None
        head_bytes = take_until(b"\r\n\r\n")
        lines = head_bytes[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise IncompleteResponse("malformed status line", bytes(raw))
        head = resp = HTTPResponse(
            version=parts[0].decode("latin-1"),
            status=int(parts[1]),
            reason=parts[2].decode("latin-1") if len(parts) > 2 else "",
            headers=_parse_headers(lines[1:]),
        )
        codings = resp.header_tokens("transfer-encoding")
        if method.upper() == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            pass
        elif codings and codings[-1] == "chunked":
            resp.chunked = True
            resp.body, resp.trailers = _read_chunked(
                take_until,
                take,
                lambda: IncompleteResponse("chunk not followed by CRLF", bytes(raw), head),
            )
        elif resp.has_header("content-length"):
            resp.body = take(int(resp.header("content-length") or "0"))
        else:
            resp.until_close = True
            try:
                while self._fill(deadline):
                    pass
            except TimeoutError:
                raise IncompleteResponse(
                    "close-delimited body never ended", bytes(raw + self.buf), head
                ) from None
            resp.body = bytes(self.buf)
            raw.extend(self.buf)
            self.buf.clear()
        resp.raw = bytes(raw)
        return resp

    def _more(
        self,
        deadline: float,
        closed: str,
        timed_out: str,
        raw: bytes | bytearray = b"",
        head: HTTPResponse | None = None,
    ) -> None:
        """Read more into the buffer, or raise IncompleteResponse if nothing more comes.

        Its message is `closed` at end of stream, `timed_out` at the deadline; its data is `raw`
        (what was taken from the buffer already) followed by the buffer.
        """
        try:
            filled = self._fill(deadline)
        except TimeoutError:
            raise IncompleteResponse(timed_out, bytes(raw + self.buf), head) from None
        if not filled:
            raise IncompleteResponse(closed, bytes(raw + self.buf), head)


@contextlib.contextmanager
def tunnel(port: int, authority: str, timeout: float = 10.0) -> Iterator[RawConnection]:
    """A connection to the proxy on `port` whose CONNECT to `authority` was answered 200."""
    with RawConnection(port, timeout=timeout) as conn:
        conn.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = conn.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        yield conn


def exchange(
    port: int, data: bytes, method: str = "GET", timeout: float = 10.0
) -> tuple[HTTPResponse, RawConnection]:
    """Open a connection, send `data`, read one response. Returns it and the open connection."""
    conn = RawConnection(port, timeout=timeout)
    try:
        conn.send(data)
        return conn.read_response(method=method), conn
    except BaseException:
        conn.close()
        raise


# --------------------------------------------------------------------------------------------
# Threaded loopback servers
# --------------------------------------------------------------------------------------------


class ThreadedServer:
    """The plumbing of a threaded loopback test server; subclasses implement `handle()`.

    `__init__` listens on a free port of `host` (`.port`, `.authority`); `listen()` adds
    listeners before `start()` (e.g. on ::1; `.ports` maps each host to its port).
    `start()` (or entering the context) runs one accept loop per listener; every accepted
    connection gets a daemon thread running `handle(sock, conn_id)` (`conn_id` counts accepts
    from 1), and its socket is closed when `handle` returns. `stop()` (or leaving the context)
    stops accepting, shuts down every open connection and joins every thread, bounded.

    Subclasses may use `_lock` for their own state, `_stopping` (set by `stop()`) to end long
    loops, and replace `_socks[conn_id]` (e.g. by the TLS-wrapped socket) under `_lock`: it is
    what `stop()` shuts down.
    """

    ACCEPT_POLL = 0.05  # accept() timeout, so an accept loop notices stop() promptly

    def __init__(self, host: str = LOOPBACK, backlog: int = 128, name: str = "server") -> None:
        self.host = host
        self.name = name
        self.backlog = backlog
        self.listeners: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptors: list[threading.Thread] = []
        self._threads: list[threading.Thread] = []
        self._socks: dict[int, socket.socket] = {}
        self._accepts = 0
        self.port: int = self.listen(host)

    def listen(self, host: str, port: int = 0) -> int:
        """Also listen on `host` (IPv6 if it has a colon; `port` 0: any); returns the port.

        Only listeners added before `start()` are served.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(self.backlog)
            sock.settimeout(self.ACCEPT_POLL)
        except BaseException:
            sock.close()
            raise
        self.listeners.append(sock)
        self.ports[host] = sock.getsockname()[1]
        return self.ports[host]

    def start(self) -> Self:
        """Start accepting on every listener (idempotent); returns self."""
        if not self._acceptors:
            for listener in self.listeners:
                t = threading.Thread(
                    target=self._accept_loop,
                    args=(listener,),
                    name=f"{self.name}-accept",
                    daemon=True,
                )
                self._acceptors.append(t)
                t.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def authority(self) -> str:
        """`host:port` of the first listener (what a Host header names)."""
        return f"{self.host}:{self.port}"

    @property
    def accepts(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._accepts

    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        with self._lock:
            return len(self._socks)

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """Serve one accepted connection (in its own thread); override."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every connection down, join all threads (within `timeout`)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for t in self._acceptors:  # an accept loop ends within ACCEPT_POLL
            t.join(max(0.0, deadline - time.monotonic()))
        for listener in self.listeners:
            listener.close()
        with self._lock:
            socks = list(self._socks.values())
            threads = list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self._lock:
                self._accepts += 1
                conn_id = self._accepts
                self._socks[conn_id] = sock
                t = threading.Thread(
                    target=self._connection,
                    args=(sock, conn_id),
                    name=f"{self.name}-conn-{conn_id}",
                    daemon=True,
                )
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _connection(self, sock: socket.socket, conn_id: int) -> None:
        try:
            self.handle(sock, conn_id)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._socks.pop(conn_id, None)


# --------------------------------------------------------------------------------------------
# The scriptable origin server
# --------------------------------------------------------------------------------------------


@dataclass
class OriginRequest(_HeaderLookup):
    """One request as the origin received it.

    `target` is the request-target exactly as sent (the proxy must send origin-form, `/p?q`);
    `chunked` tells whether the body arrived with chunked transfer coding; `raw_head` holds the
    head bytes verbatim; `conn_id` numbers the accepted connection it came on (1, 2, ...).
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw_head: bytes
    conn_id: int
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    continue_sent: bool = False

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


class OriginConnection:
    """What an origin behaviour uses to answer: send bytes, close (FIN) or reset (RST).

    Set `keep_alive = False` to close after the behaviour returns. Once `close()` or `reset()`
    has been called, the connection is finished.
    """

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.id = conn_id
        self.keep_alive = True
        self.closed = False

    def send(self, data: bytes) -> None:
        """Send all of `data`."""
        self.sock.sendall(data)

    def close(self) -> None:
        """Orderly close: FIN after anything already sent."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def reset(self) -> None:
        """Abortive close: RST (SO_LINGER 0), discarding anything unsent."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            self.sock.close()


Behaviour = Callable[[OriginRequest, OriginConnection], None]


@dataclass
class _Route:
    behaviour: Behaviour
    send_continue: bool


class _Closed(Exception):
    """The peer closed (or reset) the connection."""


class _SockReader:
    """Buffered reads from a socket with a size-limited head and exact-length bodies."""

    def __init__(self, sock: socket.socket, on_bytes: Callable[[bytes], None]) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.on_bytes = on_bytes

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, OSError) as e:
            raise _Closed(str(e)) from None
        if not data:
            raise _Closed("eof")
        self.on_bytes(data)
        self.buf += data

    def until(self, marker: bytes, limit: int) -> bytes:
        def more() -> None:
            if len(self.buf) > limit:
                raise ValueError(f"no {marker!r} within {limit} bytes")
            self._fill()

        return _take_through(self.buf, marker, more)

    def exactly(self, n: int) -> bytes:
        return _take_exactly(self.buf, n, self._fill)


def _status_line(status: int, reason: str | None = None) -> bytes:
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")


def response_head(
    status: int, headers: Iterable[tuple[str, str]] = (), reason: str | None = None
) -> bytes:
    """An HTTP/1.1 response head (status line, headers, blank line) as bytes."""
    out = bytearray(_status_line(status, reason))
    for name, value in headers:
        out += f"{name}: {value}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of chunked transfer coding (empty data is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


def _has(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(n.lower() == name.lower() for n, _ in headers)


def respond(
    body: bytes = b"",
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    reason: str | None = None,
    close: bool = False,
) -> Behaviour:
    """Behaviour: a Content-Length response (keep-alive unless `close`).

    HEAD requests get the same head without the body; 1xx/204/304 get neither body nor
    Content-Length. `close=True` adds `Connection: close` and closes after sending.
    """

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        hdrs = list(headers)
        bodiless = status < 200 or status in (204, 304)
        if not bodiless and not _has(hdrs, "content-length"):
            hdrs.append(("Content-Length", str(len(body))))
        if close:
            hdrs.append(("Connection", "close"))
            out.keep_alive = False
        send_body = not bodiless and req.method != "HEAD"
        out.send(response_head(status, hdrs, reason) + (body if send_body else b""))

    return behaviour


def respond_chunked(
    chunks: Sequence[bytes],
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    trailers: Sequence[tuple[str, str]] = (),
) -> Behaviour:
    """Behaviour: a chunked response, one chunk per non-empty item of `chunks`, then trailers."""

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        head = response_head(status, [*headers, ("Transfer-Encoding", "chunked")])
        if req.method == "HEAD":
            out.send(head)
            return
        data = bytearray(head)
        for c in chunks:
            if c:
                data += chunk(c)
        data += b"0\r\n"
        for name, value in trailers:
            data += f"{name}: {value}\r\n".encode("latin-1")
        data += b"\r\n"
        out.send(bytes(data))

    return behaviour


def respond_until_close(
    body: bytes, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> Behaviour:
    """Behaviour: a close-delimited response (no Content-Length, no Transfer-Encoding), FIN."""

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        out.send(response_head(status, headers) + (b"" if req.method == "HEAD" else body))
        out.close()

    return behaviour


def echo(status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Behaviour:
    """Behaviour: answer with the request body as a Content-Length body.

    Adds `X-Echo-Method`, `X-Echo-Target` and `X-Echo-Chunked: yes|no` (how the body came in).
    """

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        hdrs = [
            *headers,
            ("X-Echo-Method", req.method),
            ("X-Echo-Target", req.target),
            ("X-Echo-Chunked", "yes" if req.chunked else "no"),
        ]
        respond(req.body, status, hdrs)(req, out)

    return behaviour


def respond_raw(data: bytes, close: bool = False, reset: bool = False) -> Behaviour:
    """Behaviour: send `data` verbatim (any framing, valid or not), then maybe close/reset."""

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        out.send(data)
        if reset:
            out.reset()
        elif close:
            out.close()

    return behaviour


def close_before_headers(reset: bool = False) -> Behaviour:
    """Behaviour: read the request, then close (or reset) without sending a byte."""

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        if reset:
            out.reset()
        else:
            out.close()

    return behaviour


def die_mid_body(
    sent: bytes,
    total: int | None = None,
    chunked: bool = False,
    reset: bool = False,
    gate: threading.Event | None = None,
    gate_timeout: float = 30.0,
) -> Behaviour:
    """Behaviour: send a head promising more than `sent`, send `sent`, then close/reset.

    With Content-Length framing the head promises `total` bytes (default: twice `sent`);
    with `chunked=True` `sent` goes out as one chunk and the last chunk never does. With a
    `gate`, the origin waits for the test to set it (at most `gate_timeout` s) before dying.
    """

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        if chunked:
            out.send(response_head(200, [("Transfer-Encoding", "chunked")]) + chunk(sent))
        else:
            length = 2 * len(sent) if total is None else total
            out.send(response_head(200, [("Content-Length", str(length))]) + sent)
        if gate is not None:
            gate.wait(gate_timeout)
        if reset:
            out.reset()
        else:
            out.close()

    return behaviour


def drip(
    parts: Sequence[bytes | threading.Event],
    interval: float = 0.0,
    chunked: bool = True,
    headers: Sequence[tuple[str, str]] = (),
    gate_timeout: float = 30.0,
) -> Behaviour:
    """Behaviour: a slow body, sent part by part.

    Each `bytes` item is sent on its own (as one chunk if `chunked`, else raw under a
    Content-Length covering all bytes items), `interval` seconds apart. A `threading.Event`
    item pauses until the test sets it (at most `gate_timeout` s), which lets a test observe
    what got through before the rest is released.
    """

    def behaviour(req: OriginRequest, out: OriginConnection) -> None:
        hdrs = list(headers)
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        else:
            total = sum(len(p) for p in parts if isinstance(p, bytes))
            hdrs.append(("Content-Length", str(total)))
        out.send(response_head(200, hdrs))
        if req.method == "HEAD":
            return
        for p in parts:
            if isinstance(p, threading.Event):
                p.wait(gate_timeout)
                continue
            if interval:
                time.sleep(interval)  # the behaviour under test: a slow origin
            if p:
                out.send(chunk(p) if chunked else p)
        if chunked:
            out.send(chunk(b""))

    return behaviour


def _not_found(req: OriginRequest, out: OriginConnection) -> None:
    respond(f"origin: no route for {req.path}\n".encode(), status=404)(req, out)


class OriginServer(ThreadedServer):
    """A threaded loopback HTTP/1.1 origin with per-path behaviours.

    Usage::

        with OriginServer() as origin:
            origin.route("/a", respond(b"hello"))
            ... origin.url("/a") ...
            assert origin.accepts == 1
            assert origin.requests[0].header("host") == origin.authority

    Connections are persistent (HTTP/1.1 keep-alive) unless the request says
    `Connection: close` or a behaviour closes. Request bodies (Content-Length or chunked) are
    read before the behaviour runs; with `Expect: 100-continue` the origin first sends
    `100 Continue` (route option `send_continue`). Unrouted paths get 404.

    Observations (thread-safe snapshots): `accepts` (connections accepted), `requests` (every
    complete request, in arrival order), `errors` (requests it could not parse, behaviour
    crashes), `bytes_received` (all bytes read on all connections) and `raw_received()` (those
    bytes themselves). `open_connections()` counts connections not yet closed.
    """

    def __init__(self, host: str = LOOPBACK, read_timeout: float = 60.0) -> None:
        super().__init__(host, name="origin")
        self.read_timeout = read_timeout
        self._routes: dict[str, _Route] = {}
        self._requests: list[OriginRequest] = []
        self._errors: list[str] = []
        self._bytes = 0
        self._raw: dict[int, bytearray] = {}

    # -- setup ----------------------------------------------------------------------------------

    def route(self, path: str, behaviour: Behaviour, send_continue: bool = True) -> str:
        """Serve `path` (exact match, query ignored) with `behaviour`; returns its URL."""
        with self._lock:
            self._routes[path] = _Route(behaviour, send_continue)
        return self.url(path)

    def url(self, path: str = "/") -> str:
        """The absolute http:// URL of `path` on this origin."""
        return f"http://{self.authority}{path}"

    # -- observations ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[OriginRequest]:
        """Every complete request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Parse failures and behaviour crashes so far (a copy)."""
        with self._lock:
            return list(self._errors)

    @property
    def bytes_received(self) -> int:
        """Bytes read on all connections so far."""
        with self._lock:
            return self._bytes

    def raw_received(self, conn_id: int | None = None) -> bytes:
        """Bytes read so far on connection `conn_id`, or on all of them concatenated."""
        with self._lock:
            if conn_id is not None:
                return bytes(self._raw.get(conn_id, b""))
            return b"".join(bytes(self._raw[k]) for k in sorted(self._raw))

    def requests_for(self, path: str) -> list[OriginRequest]:
        """Requests received for `path` (query ignored)."""
        return [r for r in self.requests if r.path == path]

    # -- internals ------------------------------------------------------------------------------

    def _count(self, conn_id: int, data: bytes) -> None:
        with self._lock:
            self._bytes += len(data)
            self._raw.setdefault(conn_id, bytearray()).extend(data)

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """Serve requests on one connection until either side closes it."""
        sock.settimeout(self.read_timeout)
        reader = _SockReader(sock, lambda data: self._count(conn_id, data))
        out = OriginConnection(sock, conn_id)
        try:
            while not self._stopping.is_set() and not out.closed:
                try:
                    req = self._read_request(reader, out, conn_id)
                except _Closed:
                    break
                except (ValueError, UnicodeDecodeError) as e:
                    self._error(f"conn {conn_id}: bad request: {e}")
                    with contextlib.suppress(OSError):
                        out.send(response_head(400, [("Content-Length", "0")]))
                    break
                with self._lock:
                    self._requests.append(req)
                    route = self._routes.get(req.path)
                behaviour = route.behaviour if route else _not_found
                out.keep_alive = req.version == "HTTP/1.1" and "close" not in (
                    req.connection_tokens()
                )
                try:
                    behaviour(req, out)
                except OSError:
                    break  # the proxy went away while we answered: that is its business
                except Exception as e:  # a broken behaviour must show up in the test
                    self._error(f"conn {conn_id}: behaviour for {req.path} crashed: {e!r}")
                    break
                if not out.keep_alive:
                    break
        finally:
            out.close()

    def _read_request(
        self, reader: _SockReader, out: OriginConnection, conn_id: int
    ) -> OriginRequest:
        raw_head = reader.until(b"\r\n\r\n", limit=1 << 20)
        lines = raw_head[:-4].split(b"\r\n")
        parts = lines[0].decode("ascii").split(" ")
        if len(parts) != 3:
            raise ValueError(f"request line {lines[0]!r}")
        req = OriginRequest(
            method=parts[0],
            target=parts[1],
            version=parts[2],
            headers=_parse_headers(lines[1:]),
            raw_head=raw_head,
            conn_id=conn_id,
        )
        codings = req.header_tokens("transfer-encoding")
        lengths = req.header_values("content-length")
        if codings and lengths:
            raise ValueError("both Transfer-Encoding and Content-Length")
        if len(set(lengths)) > 1:
            raise ValueError(f"conflicting Content-Length {lengths}")
        has_body = bool(codings) or (bool(lengths) and int(lengths[0]) > 0)
        with self._lock:
            route = self._routes.get(req.path)
        expects = (req.header("expect") or "").lower() == "100-continue"
        if has_body and expects and (route is None or route.send_continue):
            out.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            req.continue_sent = True
        if codings:
            if codings != ["chunked"]:
                raise ValueError(f"unsupported Transfer-Encoding {codings}")
            req.chunked = True
            req.body, req.trailers = _read_chunked(
                reader.until, reader.exactly, lambda: ValueError("chunk data not followed by CRLF")
            )
        elif lengths:
            req.body = reader.exactly(int(lengths[0]))
        return req


# --------------------------------------------------------------------------------------------
# The proxy process
# --------------------------------------------------------------------------------------------

TWISTD = Path(sys.executable).with_name("twistd")

# Always set for proxy subprocesses (callers may override or remove any of them, see
# start_proxy): keep the CA out of ~/.interceptor, don't take port 8081, log every request.
BASE_ENV = {
    "INTERCEPTOR_ADMIN_LISTEN": "",
    "INTERCEPTOR_LOG_ACCESS": "true",
    "PYTHONUNBUFFERED": "1",
}

_ACCESS_MARK = "[interceptor.access#"
_ACCESS_RE = re.compile(
    r"^(?P<client>\S+) (?P<method>\S+) (?P<url>\S+) (?P<status>\d+) (?P<bytes>\d+) "
    r"(?P<duration>\d+\.\d+)s id=(?P<id>[0-9a-f-]{36})(?: parent=(?P<parent>[0-9a-f-]{36}))?"
    r"(?: via=(?P<via>\S+))?(?: \((?P<error>.*)\))?$"
)


@dataclass
class AccessEntry:
    """One parsed text-format access-log line."""

    client: str
    method: str
    url: str
    status: int
    bytes: int
    duration: float
    error: str | None
    id: str = ""
    parent: str | None = None  # the CONNECT's id, for a request inside an intercepted one
    via: str | None = None  # the upstream proxy it went through


_ERROR_LINE = re.compile(r"(?P<text>.+) \(request id [0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f-]{21}\)\n")


def error_line(body: bytes | str) -> str:
    """The reason in an error body of the proxy's own: exactly one line, which ends with the
    exchange's request id (checked, then left off)."""
    text = body.decode() if isinstance(body, bytes) else body
    m = _ERROR_LINE.fullmatch(text)
    assert m is not None, f"not one line ending with a request id: {text!r}"
    return m["text"]


def parse_access_line(line: str) -> AccessEntry | None:
    """Parse an access line (full twistd log line or just the message); None if not one."""
    if _ACCESS_MARK in line:
        line = line.split("] ", 1)[1]
    m = _ACCESS_RE.match(line.strip())
    if m is None:
        return None
    return AccessEntry(
        client=m["client"],
        method=m["method"],
        url=m["url"],
        status=int(m["status"]),
        bytes=int(m["bytes"]),
        duration=float(m["duration"]),
        error=m["error"],
        id=m["id"],
        parent=m["parent"],
        via=m["via"],
    )


class ProxyStartError(RuntimeError):
    """The proxy exited or never accepted connections; the message includes its output."""


class LoggedProcess:
    """A subprocess listening on a loopback port, its output in a file: read it, stop it.

    The base of `ProxyProcess` and of the upstream proxies in upstream_proxies.py. `popen` is
    the subprocess.Popen, `port` the loopback port it listens on, `log_path` the file its log
    goes to. A context manager: `stop()` on exit.
    """

    def __init__(self, popen: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.popen = popen
        self.port = port
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} port={self.port} log={self.log_path}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The subprocess's pid."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything in its log so far ("" before the file exists)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of its log (for failure messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 5.0) -> re.Match[str]:
        """Wait until a regex (multiline mode for str patterns) matches the log; the match."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        return wait_for(
            lambda: regex.search(self.log_text()),
            timeout,
            message=lambda: (
                f"no log line matching {regex.pattern!r}; log tail:\n" + self.log_tail()
            ),
        )

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the subprocess (the launcher, if one was used)."""
        if self.running():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Idempotent; returns the exit status."""
        return stop_process(self.popen, timeout)


class ProxyProcess(LoggedProcess):
    """A running `twistd -n interceptor` subprocess (see `start_proxy`).

    `port` is the loopback port it listens on, `popen` the subprocess.Popen (`pid` its pid:
    the launcher's pid when a launcher prefix was used), `workdir` its private directory (cwd,
    CA dir, config file, log file), `log_path` the file receiving its stdout and stderr.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        log_path: Path,
        cmd: list[str],
        env: dict[str, str],
    ) -> None:
        super().__init__(popen, port, log_path)
        self.workdir = workdir
        self.cmd = cmd
        self.env = env

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, the value for curl's `-x`."""
        return f"http://{LOOPBACK}:{self.port}"

    def access_entries(self) -> list[AccessEntry]:
        """Every access-log line so far, parsed (text log format)."""
        out = []
        for line in self.log_text().splitlines():
            if _ACCESS_MARK in line:
                entry = parse_access_line(line)
                if entry is not None:
                    out.append(entry)
        return out

    def wait_for_access(
        self, predicate: Callable[[AccessEntry], bool], count: int = 1, timeout: float = 5.0
    ) -> list[AccessEntry]:
        """Wait until at least `count` access entries satisfy `predicate`; return them all."""

        def matching() -> list[AccessEntry] | None:
            found = [e for e in self.access_entries() if predicate(e)]
            return found if len(found) >= count else None

        return wait_for(
            matching,
            timeout,
            message=lambda: (
                f"fewer than {count} matching access lines; log tail:\n" + self.log_tail()
            ),
        )

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Idempotent; returns the exit status.

        The proxy drains in-flight exchanges for up to `proxy.shutdown_timeout` (10 s by
        default) after SIGTERM, so `timeout` should exceed that.
        """
        return super().stop(timeout)


def stop_process(popen: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM `popen`, wait up to `timeout` s, then SIGKILL; idempotent; the exit status."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_proxy(
    config_text: str = "",
    env: Mapping[str, str | None] | None = None,
    *,
    workdir: Path | None = None,
    port: int | None = None,
    listen: bool = True,
    launcher: Sequence[str] = (),
    args: Sequence[str] = (),
    popen_kwargs: Mapping[str, Any] | None = None,
    ready_timeout: float = 15.0,
    wait_ready: bool = True,
) -> ProxyProcess:
    """Start `twistd -n --pidfile= interceptor --listen tcp:PORT:interface=127.0.0.1`.

    * `config_text`: TOML written to `<workdir>/interceptor.toml` and passed as `--config`
      (nothing passed when empty).
    * `env`: changes to the subprocess environment, applied last: a value replaces, None
      removes. The base is os.environ without any INTERCEPTOR_* variables, plus
      `INTERCEPTOR_TLS_CA_DIR=<workdir>/ca` and `BASE_ENV`. Environment variables beat the
      config file, so to set e.g. `log.access` from `config_text`, pass
      `env={"INTERCEPTOR_LOG_ACCESS": None}`.
    * `workdir`: the process's cwd, CA dir, config and log (a fresh temp dir if None; a fresh
      subdirectory is made inside it, so one workdir can host many proxies).
    * `port`: listen port (default: a free one; if the bind then fails, it retries with another
      port). `listen=False` omits `--listen` (the config decides); then pass the `port` to
      wait on, or `wait_ready=False`.
    * `launcher`: command prefix to run twistd under (e.g. a wrapper script that sets signal
      dispositions and execs); `args`: extra arguments after `interceptor`;
      `popen_kwargs`: extra subprocess.Popen arguments (e.g. `restore_signals=False`).
    * Readiness: polls a TCP connect to the port until `ready_timeout`; raises ProxyStartError
      with the process output as soon as it exits instead. `wait_ready=False` returns at once
      (for tests of start-up failures: use `.popen.wait()` and `.log_text()`).
    """
    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="interceptor-"))
    base.mkdir(parents=True, exist_ok=True)
    chosen = port is None and listen
    attempts = 3 if chosen else 1
    for attempt in range(attempts):
        proc_dir = Path(tempfile.mkdtemp(prefix="proxy-", dir=base))
        this_port = free_port() if chosen else port
        env_full = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
        env_full["INTERCEPTOR_TLS_CA_DIR"] = str(proc_dir / "ca")
        env_full.update(BASE_ENV)
        for k, v in (env or {}).items():
            if v is None:
                env_full.pop(k, None)
            else:
                env_full[k] = v
        cmd = [*launcher, str(TWISTD), "-n", "--pidfile=", "interceptor"]
        if listen:
            cmd += ["--listen", f"tcp:{this_port}:interface={LOOPBACK}"]
        if config_text:
            config_path = proc_dir / "interceptor.toml"
            config_path.write_text(config_text, encoding="utf-8")
            cmd += ["--config", str(config_path)]
        cmd += list(args)
        log_path = proc_dir / "proxy.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                cmd,
                cwd=proc_dir,
                env=env_full,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                **dict(popen_kwargs or {}),
            )
        proxy = ProxyProcess(popen, this_port or 0, proc_dir, log_path, cmd, env_full)
        if not wait_ready:
            return proxy
        if this_port is None:
            raise ValueError("listen=False needs port= (or wait_ready=False)")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                break
            if _accepts_connections(this_port):
                return proxy
            time.sleep(0.02)
        exited = popen.poll() is not None
        proxy.stop(timeout=5)
        output = proxy.log_text()
        if exited and attempt + 1 < attempts and "Address already in use" in output:
            continue  # someone took the free port between free_port() and the bind
        what = f"exited with {popen.returncode}" if exited else f"not ready in {ready_timeout}s"
        raise ProxyStartError(f"proxy {what}: {' '.join(cmd)}\n--- output ---\n{output}")
    raise AssertionError("unreachable")  # pragma: no cover


class ProxyLauncher:
    """Starts proxies into one base directory and stops them all at the end (fixtures)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.started: list[ProxyProcess] = []

    def start(
        self, config_text: str = "", env: Mapping[str, str | None] | None = None, **kwargs: Any
    ) -> ProxyProcess:
        """`start_proxy` with this launcher's workdir; the proxy is stopped by `stop_all`."""
        proxy = start_proxy(config_text, env, workdir=self.workdir, **kwargs)
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> None:
        """Stop every proxy started here (even if some fail to stop)."""
        while self.started:
            with contextlib.suppress(Exception):
                self.started.pop().stop()


# --------------------------------------------------------------------------------------------
# Request builders
# --------------------------------------------------------------------------------------------


def request_bytes(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    content_length: bool = True,
    host: bool = True,
) -> bytes:
    """A request head (absolute-form `url` as given) plus `body`.

    Adds `Content-Length` when `body` is non-empty and `content_length` is true and none was
    given, and a Host header naming the target's authority when none was given on HTTP/1.1, as
    every real client does (`host=False` leaves it out).
    """
    hdrs = list(headers)
    if host and version == "HTTP/1.1" and not _has(hdrs, "host"):
        authority = url if method == "CONNECT" else url.split("//", 1)[-1].split("/", 1)[0]
        hdrs.insert(0, ("Host", authority or "localhost"))
    if body and content_length and not _has(hdrs, "content-length"):
        hdrs.append(("Content-Length", str(len(body))))
    out = bytearray(f"{method} {url} {version}\r\n".encode("latin-1"))
    for name, value in hdrs:
        out += f"{name}: {value}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out) + body


def get(url: str, headers: Sequence[tuple[str, str]] = (), version: str = "HTTP/1.1") -> bytes:
    """A GET request for absolute `url` with a matching Host header."""
    authority = url.split("//", 1)[1].split("/", 1)[0]
    return request_bytes("GET", url, [("Host", authority), *headers], version=version)


def failed_start(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `twistd -n interceptor ARGS` once with `env` (INTERCEPTOR_* variables) on top of a
    clean environment, its own CA dir and no admin listener: for start-ups that must fail at
    once."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
    full.update(
        {"INTERCEPTOR_TLS_CA_DIR": str(tmp_path / "ca"), "INTERCEPTOR_ADMIN_LISTEN": "", **env}
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "interceptor", *args],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
