"""A small threaded loopback HTTPS origin for black-box TLS tests (Python's `ssl`, no Twisted).

`TLSOrigin(cert_pem, key_pem)` listens on 127.0.0.1 (and, with `ipv6=True`, on ::1 at the same
port when possible) and answers HTTP/1.1 keep-alive GET/HEAD requests:

* `/<n>`, `/<n>k`, `/<n>m`: n bytes, KiB or MiB of deterministic pseudo-random bytes (see
  `body_for`), e.g. `/1k`, `/10m`;
* `/marker`: `MARKER`, a recognisable text that must never reach a client when the proxy
  refuses this origin;
* anything else: 404.

It counts accepted TCP connections, completed TLS handshakes, requests and completely written
responses, and records the SNI name each handshake carried. Every socket operation has a
timeout and `stop()` joins every thread it started, so a misbehaving peer can neither hang a
test nor leak threads.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import socket
import ssl
import tempfile
import threading
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"

MARKER = b"tls-origin-marker: this body comes from the origin itself\n"

_SIZE_PATH = re.compile(r"^/(\d+)([km]?)$")
_MAX_HEAD = 64 * 1024


@functools.lru_cache(maxsize=8)
def body_for(path: str) -> bytes | None:
    """The body served at `path` (`/1k` -> 1024 deterministic bytes), or None for a 404.

    Bytes come from `random.Random(size)`, so a dropped, repeated or reordered block anywhere
    in a large body changes the content (a short repeating pattern would hide that).
    """
    if path == "/marker":
        return MARKER
    m = _SIZE_PATH.match(path)
    if m is None:
        return None
    size = int(m[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m[2]]
    return random.Random(size).randbytes(size)


class TLSOrigin:
    """Threaded HTTPS/1.1 origin presenting one certificate (see the module docstring).

    :param cert_pem: certificate chain (PEM) to present; :param key_pem: its private key.
    :param ipv6: also listen on ::1 (`ports["::1"]`), if the host has IPv6 loopback.
    :param io_timeout: per socket operation (handshake, each read and write).
    """

    def __init__(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        ipv6: bool = False,
        io_timeout: float = 10.0,
        alpn: tuple[str, ...] = ("http/1.1",),
    ) -> None:
        self.io_timeout = io_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._accepts = 0
        self._handshakes = 0
        self._requests: list[str] = []
        self._responses = 0
        self._sni: list[str | None] = []
        self.errors: list[str] = []

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="tls-origin-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            self.context.load_cert_chain(cert_path, key_path)
        if alpn:
            self.context.set_alpn_protocols(list(alpn))
        self.context.sni_callback = self._on_sni

        self.listeners: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        try:
            self._listen(socket.AF_INET, LOOPBACK, 0)
            if ipv6:
                try:
                    self._listen(socket.AF_INET6, LOOPBACK6, self.port)
                except OSError:
                    with contextlib.suppress(OSError):
                        self._listen(socket.AF_INET6, LOOPBACK6, 0)
        except BaseException:
            self.stop()
            raise
        for listener in self.listeners:
            self._spawn(self._accept_loop, listener)

    # -- public ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port on 127.0.0.1."""
        return self.ports[LOOPBACK]

    @property
    def accepts(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._accepts

    @property
    def handshakes(self) -> int:
        """TLS handshakes completed so far."""
        with self._lock:
            return self._handshakes

    @property
    def requests(self) -> list[str]:
        """The path of every request answered (or refused with 404), in order."""
        with self._lock:
            return list(self._requests)

    @property
    def responses(self) -> int:
        """Responses written completely (the last byte handed to the kernel)."""
        with self._lock:
            return self._responses

    @property
    def sni_names(self) -> list[str | None]:
        """The SNI name of every handshake that reached the servername stage (None: no SNI)."""
        with self._lock:
            return list(self._sni)

    def __enter__(self) -> TLSOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listeners and every open connection; join all threads (bounded)."""
        self._stop.set()
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        for thread in list(self._threads):
            thread.join(timeout)

    # -- internals ------------------------------------------------------------------------------

    def _listen(self, family: int, host: str, port: int) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.settimeout(0.1)  # so the accept loop notices stop() promptly
        except BaseException:
            sock.close()
            raise
        self.listeners.append(sock)
        self.ports[host] = sock.getsockname()[1]

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        with self._lock:
            self._sni.append(name)

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._accepts += 1
                self._conns.add(sock)
            self._spawn(self._serve, sock)

    def _serve(self, raw: socket.socket) -> None:
        conn: socket.socket = raw
        try:
            raw.settimeout(self.io_timeout)
            conn = self.context.wrap_socket(raw, server_side=True)
            with self._lock:
                self._conns.discard(raw)
                self._conns.add(conn)
                self._handshakes += 1
            buf = bytearray()
            while not self._stop.is_set():
                head = self._read_head(conn, buf)
                if head is None:
                    return
                if not self._answer(conn, head):
                    return
        except (OSError, ssl.SSLError, ValueError) as e:
            if not self._stop.is_set():
                self._error(f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._conns.discard(raw)
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _read_head(self, conn: socket.socket, buf: bytearray) -> bytes | None:
        """One request head (bytes before CRLFCRLF); None at a clean end of stream."""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_HEAD:
                raise ValueError("request head too large")
            data = conn.recv(65536)
            if not data:
                if buf:
                    raise ValueError(f"connection closed mid-head: {bytes(buf[:200])!r}")
                return None
            buf += data
        head = bytes(buf[:end])
        del buf[: end + 4]
        return head

    def _answer(self, conn: socket.socket, head: bytes) -> bool:
        """Send the response for one request head; False if the connection should close."""
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            raise ValueError("request bodies are not supported by this origin")
        path = target.split("?", 1)[0]
        with self._lock:
            self._requests.append(path)
        body = body_for(path)
        status = b"200 OK" if body is not None else b"404 Not Found"
        if body is None:
            body = b"not found\n"
        close = "close" in headers.get("connection", "").lower() or version == "HTTP/1.0"
        out = [
            b"HTTP/1.1 " + status,
            b"Content-Type: application/octet-stream",
            b"Content-Length: %d" % len(body),
        ]
        if close:
            out.append(b"Connection: close")
        head_bytes = b"\r\n".join(out) + b"\r\n\r\n"
        if method == "HEAD":
            body = b""
        # Head and the start of the body in one write: no small segment left waiting for an ACK.
        step = 256 * 1024
        conn.sendall(head_bytes + body[:step])
        view = memoryview(body)
        for i in range(step, len(body), step):
            conn.sendall(view[i : i + step])
        with self._lock:
            self._responses += 1
        return not close
