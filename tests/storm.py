"""Storm clients, a streaming origin and /proc probes for the process-level lifecycle tests.

Nothing here imports the `interceptor` package: like tests/support.py, these helpers drive the
proxy only as a subprocess over loopback TCP and look at it only through /proc and its sockets.

The pieces:

* `sigdfl_launcher()`: a launcher prefix for `start_proxy` that starts twistd with SIGPIPE at
  SIG_DFL (what an embedder or a careless launcher hands the process).
* `/proc` probes: `sigpipe_state()`, `fd_count()`, `nofile_limits()`.
* `StreamOrigin`: a threaded loopback origin (plain or TLS) serving `/small` (keep-alive) and
  `/big?id=ID` (a large Content-Length body streamed until the peer goes away). For every
  `/big` request it records when the proxy's leg to it closed, so tests can measure how fast
  the proxy lets go of an upstream after its client vanished.
* Storm clients: `storm_connection()` (one client that starts a download over plain HTTP, a
  passthrough tunnel or an intercepted TLS tunnel, reads a little, half-closes, then resets),
  `Storm` (many of them from worker threads, bounded in count and time), `GoodClient` (a
  well-behaved keep-alive client fetching small files meanwhile and recording every failure).
* `scrape()` / `metric_value()`: read the admin endpoint's Prometheus text.

Every wait has a deadline and every loop is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support import LOOPBACK, IncompleteResponse, RawConnection, ThreadedServer

BIG_BODY = 10 * 1024 * 1024  # the "10 MiB download" every storm client starts
SIGPIPE_BIT = 1 << (signal.SIGPIPE - 1)  # signal 13 -> bit 12 of SigIgn / SigCgt
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_BLOCK = b"x" * 65536

# --------------------------------------------------------------------------------------------
# The process under test, seen through /proc
# --------------------------------------------------------------------------------------------

_SIGDFL_CODE = (
    "import signal, sys\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
    "from twisted.scripts.twistd import run\n"
    "sys.argv = ['twistd'] + sys.argv[2:]\n"
    "run()\n"
)


def sigdfl_launcher() -> list[str]:
    """A `start_proxy(launcher=...)` prefix running twistd with SIGPIPE at SIG_DFL.

    `start_proxy` appends `<venv>/bin/twistd -n ...`; the `-c` program drops the twistd path
    and runs twistd in the same process, so the proxy's pid is the pid of the Popen.
    """
    return [sys.executable, "-c", _SIGDFL_CODE]


def proc_status(pid: int) -> dict[str, str]:
    """`/proc/PID/status` as a dict of field -> value (stripped)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def sigpipe_state(pid: int) -> tuple[bool, bool]:
    """(ignored, caught) for SIGPIPE in process `pid`, from its SigIgn/SigCgt masks."""
    status = proc_status(pid)
    ignored = bool(int(status["SigIgn"], 16) & SIGPIPE_BIT)
    caught = bool(int(status["SigCgt"], 16) & SIGPIPE_BIT)
    return ignored, caught


def fd_count(pid: int) -> int:
    """Descriptors process `pid` has open now."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds descriptors for."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().name
            if target.startswith("socket:["):
                out.add(int(target[len("socket:[") : -1]))
    return out


def tcp_inode(local_port: int, remote_port: int) -> int | None:
    """Inode of the IPv4 TCP socket with these loopback ports (/proc/net/tcp), or None.

    Only sockets still owned by a process have a non-zero inode.
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if (
            inode
            and int(local.rsplit(":", 1)[1], 16) == local_port
            and int(remote.rsplit(":", 1)[1], 16) == remote_port
        ):
            return inode
    return None


def nofile_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) "Max open files" of process `pid`, as /proc/PID/limits shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            fields = line[len("Max open files") :].split()
            return fields[0], fields[1]
    raise AssertionError(f"no 'Max open files' line in /proc/{pid}/limits")


# --------------------------------------------------------------------------------------------
# Admin endpoint
# --------------------------------------------------------------------------------------------


def scrape(port: int, path: str = "/metrics", timeout: float = 5.0) -> str:
    """GET `path` from the admin endpoint on loopback `port`; the body (status must be 200)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise AssertionError(f"admin {path}: {head[:200]!r}")
    if b"chunked" in head.lower():
        body = _dechunk(body)
    return body.decode("utf-8", "replace")


def _dechunk(body: bytes) -> bytes:
    """Undo chunked transfer coding of a complete body (trailers ignored)."""
    out = bytearray()
    for _ in range(100000):
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def metric_value(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in Prometheus text, or None if absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            return float(parts[1])
    return None


# --------------------------------------------------------------------------------------------
# The streaming origin
# --------------------------------------------------------------------------------------------


@dataclass
class LegRecord:
    """What the origin saw of one `/big` request's connection (times are time.monotonic()).

    `closed_at`: when the proxy's leg to us was seen closed (send failed, HUP/ERR, or a probe
    written after its FIN bounced); `how` says which. `eof_at`: when its FIN arrived.
    """

    request_id: str
    started_at: float
    conn_id: int
    tls: bool
    bytes_sent: int = 0
    completed: bool = False
    eof_at: float | None = None
    closed_at: float | None = None
    how: str = ""


class StreamOrigin(ThreadedServer):
    """A threaded loopback origin (plain, or TLS with `cert_file`/`key_file`).

    Routes: `/small` answers a short body and keeps the connection; `/big?id=ID[&size=N]`
    answers `N` bytes (default `BIG_BODY`) under Content-Length, streamed with blocking sends,
    and records a `LegRecord` under ID. After the body (or when a send fails) it watches the
    connection until the proxy's leg is closed (bounded by `watch_timeout`): a FIN alone is not
    taken as closed (a tunnel relays half-closes), so after a FIN it writes a one-byte probe
    every `probe_interval` s, which a closed socket answers with RST.
    """

    SMALL = b"small file\n" * 10

    def __init__(
        self,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        watch_timeout: float = 15.0,
        probe_interval: float = 0.01,
    ) -> None:
        self._ctx: ssl.SSLContext | None = None
        if cert_file is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert_file), str(key_file))
            self._ctx = ctx
        self.watch_timeout = watch_timeout
        self.probe_interval = probe_interval
        self.records: dict[str, LegRecord] = {}
        self.small_served = 0
        self.errors: list[str] = []
        super().__init__(LOOPBACK, backlog=1024, name="stream-origin")

    def record(self, request_id: str) -> LegRecord | None:
        """The record of `/big` request ID (None if it never arrived)."""
        with self._lock:
            return self.records.get(request_id)

    # -- internals -------------------------------------------------------------------------

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """Serve one connection: TLS handshake if configured, then requests in turn."""
        sock.settimeout(self.watch_timeout)
        try:
            if self._ctx is not None:
                try:
                    sock = self._ctx.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    return  # the proxy went away during the handshake: its business
                with self._lock:
                    self._socks[conn_id] = sock  # what stop() shuts down from now on
            buf = bytearray()
            for _ in range(10000):  # requests per connection, bounded
                head = self._read_head(sock, buf)
                if head is None:
                    return
                target = head.split(b" ", 2)[1].decode("latin-1")
                path, _, query = target.partition("?")
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                if path == "/small":
                    body = self.SMALL
                    sock.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    with self._lock:
                        self.small_served += 1
                    continue
                if path == "/big":
                    self._big(sock, conn_id, params)
                    return
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()  # the TLS socket, if wrapped (the base closes the accepted one)

    def _read_head(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        """The next request head (without the blank line), or None at end of stream."""
        for _ in range(1000):
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(buf[:i])
                del buf[: i + 4]
                return head
            if len(buf) > 65536:
                return None
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        return None

    def _big(self, sock: socket.socket, conn_id: int, params: dict[str, str]) -> None:
        """Stream the big body, recording when and how the proxy's leg closed."""
        size = int(params.get("size", BIG_BODY))
        rec = LegRecord(params.get("id", f"conn{conn_id}"), time.monotonic(), conn_id, self.tls)
        with self._lock:
            self.records[rec.request_id] = rec
        try:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            left = size
            while left > 0:
                piece = _BLOCK[: min(left, len(_BLOCK))]
                sock.sendall(piece)
                left -= len(piece)
                rec.bytes_sent += len(piece)
        except TimeoutError:
            rec.how = "send stuck"
            return
        except (OSError, ssl.SSLError) as e:
            rec.closed_at = time.monotonic()
            rec.how = f"send: {type(e).__name__}"
            return
        rec.completed = True
        self._watch(sock, rec)

    @property
    def tls(self) -> bool:
        """Whether this origin speaks TLS."""
        return self._ctx is not None

    def _watch(self, sock: socket.socket, rec: LegRecord) -> None:
        """Wait (bounded) until the proxy's leg is closed; record when and how."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        deadline = time.monotonic() + self.watch_timeout
        sock.settimeout(0.05)
        while time.monotonic() < deadline and not self._stopping.is_set():
            events = poller.poll(self.probe_interval * 1000 if rec.eof_at else 50)
            now = time.monotonic()
            mask = events[0][1] if events else 0
            if mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                rec.closed_at, rec.how = now, "hup"
                return
            if mask & (select.POLLIN | select.POLLRDHUP) and rec.eof_at is None:
                try:
                    data = sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError) as e:
                    rec.closed_at, rec.how = now, f"recv: {type(e).__name__}"
                    return
                if not data:
                    rec.eof_at = now
                    poller.modify(sock.fileno(), 0)  # only ERR/HUP from now on
                continue
            if rec.eof_at is not None:
                try:
                    sock.send(b"\0")  # after a FIN: only a closed socket answers with RST
                except (OSError, ssl.SSLError) as e:
                    rec.closed_at, rec.how = time.monotonic(), f"probe: {type(e).__name__}"
                    return
        rec.how = rec.how or "still open"


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def open_tunnel(proxy_port: int, authority: str, timeout: float = 5.0) -> socket.socket:
    """Connect to the proxy, CONNECT to `authority`, check the 200; the socket, bytes unread."""
    sock = socket.create_connection((LOOPBACK, proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = bytearray()
        for _ in range(1000):
            if head.endswith(b"\r\n\r\n"):
                break
            byte = sock.recv(1)  # one byte at a time: nothing after the head is consumed
            if not byte:
                raise ConnectionError(f"proxy closed during CONNECT: {bytes(head)!r}")
            head += byte
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {bytes(head)!r}")
        return sock
    except BaseException:
        sock.close()
        raise


def client_tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client context trusting only the proxy's CA (`<workdir>/ca/ca.pem`)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def reset(sock: socket.socket) -> float:
    """Close `sock` with RST (SO_LINGER 0); returns the time.monotonic() just before."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    at = time.monotonic()
    with contextlib.suppress(OSError):
        sock.close()
    return at


@dataclass
class StormResult:
    """One storm client's outcome. `error` is set if it could not even start its download."""

    kind: str
    request_id: str
    received: int = 0
    half_closed_at: float | None = None
    reset_at: float | None = None
    error: str | None = None


@dataclass
class StormTargets:
    """Where storm clients go: the proxy and the origins behind it.

    `tunnel_authority`: a CONNECT target the proxy tunnels opaquely to the plain origin;
    `tls_authority`: a CONNECT target it intercepts, in front of the TLS origin, whose forged
    certificate `tls_context` trusts.
    """

    proxy_port: int
    http_authority: str
    tunnel_authority: str | None = None
    tls_authority: str | None = None
    tls_context: ssl.SSLContext | None = None


def storm_connection(
    kind: str,
    targets: StormTargets,
    request_id: str,
    read_bytes: int = 32768,
    timeout: float = 5.0,
) -> StormResult:
    """One misbehaving client: start a 10 MiB download, read a little, half-close, reset.

    `kind` is "http" (absolute-form GET), "tunnel" (GET through a passthrough CONNECT) or
    "tls" (GET through an intercepted CONNECT). It keeps reading between its FIN and its RST
    (up to `read_bytes` more), so the proxy is still writing to it when the reset lands.
    """
    res = StormResult(kind, request_id)
    path = f"/big?id={request_id}"
    sock: socket.socket | None = None
    try:
        if kind == "http":
            sock = socket.create_connection((LOOPBACK, targets.proxy_port), timeout=timeout)
            url = f"http://{targets.http_authority}{path}"
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {targets.http_authority}\r\n\r\n".encode())
        elif kind == "tunnel":
            assert targets.tunnel_authority
            sock = open_tunnel(targets.proxy_port, targets.tunnel_authority, timeout)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {targets.http_authority}\r\n\r\n".encode())
        elif kind == "tls":
            assert targets.tls_authority and targets.tls_context
            raw = open_tunnel(targets.proxy_port, targets.tls_authority, timeout)
            host = targets.tls_authority.rsplit(":", 1)[0]
            try:
                sock = targets.tls_context.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {targets.tls_authority}\r\n\r\n".encode())
        else:
            raise ValueError(kind)
        while res.received < read_bytes:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {res.received} bytes")
            res.received += len(data)
    except (OSError, ssl.SSLError, AssertionError) as e:
        res.error = f"{type(e).__name__}: {e}"
        if sock is not None:
            reset(sock)
        return res
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)  # the raw FIN, also under TLS
        res.half_closed_at = time.monotonic()
        sock.settimeout(0.2)
        more = 0
        while more < read_bytes:  # keep the proxy writing to us while our FIN is processed
            data = sock.recv(65536)
            if not data:
                break
            more += len(data)
        res.received += more
    except (OSError, ssl.SSLError):
        pass
    res.reset_at = reset(sock)
    return res


class Storm:
    """Storm clients from `workers` threads, cycling through `kinds`, bounded in count and time.

    `run()` returns once `max_connections` have been made, `duration` seconds have passed, or
    `stop_when()` (checked between connections) is true. Results are in `results`.
    """

    def __init__(
        self,
        targets: StormTargets,
        kinds: tuple[str, ...],
        workers: int = 8,
        max_connections: int = 300,
        duration: float = 20.0,
        stop_when: Callable[[], bool] | None = None,
        read_bytes: int = 32768,
    ) -> None:
        self.targets = targets
        self.kinds = kinds
        self.workers = workers
        self.max_connections = max_connections
        self.duration = duration
        self.stop_when = stop_when or (lambda: False)
        self.read_bytes = read_bytes
        self.results: list[StormResult] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._stop = threading.Event()
        self.started_at = 0.0
        self.elapsed = 0.0

    def _next(self) -> int | None:
        """The next connection number, or None once `max_connections` are used up."""
        with self._lock:
            n = next(self._counter)
        return n if n < self.max_connections else None

    def _worker(self, deadline: float) -> None:
        """Run storm connections one after another until a bound is reached."""
        while not self._stop.is_set() and time.monotonic() < deadline:
            n = self._next()
            if n is None:
                return
            kind = self.kinds[n % len(self.kinds)]
            res = storm_connection(kind, self.targets, f"s{n}-{kind}", self.read_bytes)
            with self._lock:
                self.results.append(res)
            if self.stop_when():
                self._stop.set()

    def run(self) -> list[StormResult]:
        """Run the storm to its bound; the results."""
        self.started_at = time.monotonic()
        deadline = self.started_at + self.duration
        threads = [
            threading.Thread(target=self._worker, args=(deadline,), daemon=True)
            for _ in range(self.workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.duration + 30)
        self.elapsed = time.monotonic() - self.started_at
        return self.results


class GoodClient:
    """A well-behaved keep-alive client fetching `/small` in a loop until stopped.

    `kind`: "http" (absolute-form through the proxy) or "tls" (inside an intercepted CONNECT).
    Every request must get a 200 with the full small body on the same connection; anything
    else ends the loop and is appended to `failures`.
    """

    def __init__(self, targets: StormTargets, kind: str = "http", max_requests: int = 100000):
        self.targets = targets
        self.kind = kind
        self.max_requests = max_requests
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GoodClient:
        """Start fetching in a thread."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current request."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _connect(self) -> tuple[RawConnection, str, str]:
        """(connection, request target, Host value), through an intercepted CONNECT for tls."""
        t = self.targets
        conn = RawConnection(t.proxy_port, timeout=5.0)
        if self.kind == "http":
            return conn, f"http://{t.http_authority}/small", t.http_authority
        assert t.tls_authority and t.tls_context
        try:
            conn.send(
                f"CONNECT {t.tls_authority} HTTP/1.1\r\nHost: {t.tls_authority}\r\n\r\n".encode()
            )
            head = conn.read_until(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"CONNECT refused: {head!r}")
            host = t.tls_authority.rsplit(":", 1)[0]
            conn.sock = t.tls_context.wrap_socket(conn.sock, server_hostname=host)
        except BaseException:
            conn.close()
            raise
        return conn, "/small", t.tls_authority

    def _run(self) -> None:
        """Fetch until stopped or the first failure."""
        conn = None
        try:
            conn, target, host = self._connect()
            req = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            for _ in range(self.max_requests):
                if self._stop.is_set():
                    return
                conn.send(req)
                resp = conn.read_response(timeout=5.0)
                if resp.status != 200 or resp.body != StreamOrigin.SMALL:
                    raise AssertionError(f"unexpected response {resp.raw[:300]!r}")
                self.ok += 1
        except (OSError, ssl.SSLError, AssertionError, IncompleteResponse) as e:
            self.failures.append(f"{self.kind} after {self.ok} ok: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()
