"""A small threaded loopback HTTPS origin for black-box TLS tests (Python's `ssl`, no Twisted).

`TLSOrigin(cert_pem, key_pem)` listens on 127.0.0.1 (and, with `ipv6=True`, on ::1 at the same
port when possible) and answers HTTP/1.1 keep-alive GET/HEAD requests:

* `/<n>`, `/<n>k`, `/<n>m`: n bytes, KiB or MiB of deterministic pseudo-random bytes (see
  `body_for`), e.g. `/1k`, `/10m`;
* `/marker`: `MARKER`, a recognisable text that must never reach a client when the proxy
  refuses this origin;
* `/fruit.html`: `FRUIT`, a gzip-encoded HTML page (for addons that rewrite bodies);
* anything else: 404.

It counts accepted TCP connections, completed TLS handshakes, requests and completely written
responses, and records the SNI name each handshake carried. Every socket operation has a
timeout and `stop()` joins every thread it started, so a misbehaving peer can neither hang a
test nor leak threads.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import random
import re
import socket
import ssl
import tempfile
from pathlib import Path

from tests.support import LOOPBACK, ThreadedServer

LOOPBACK6 = "::1"

MARKER = b"tls-origin-marker: this body comes from the origin itself\n"
FRUIT = b"<html><body><p>cherry pie, cherry jam</p></body></html>\n"
# path -> (extra head lines, body as sent)
_PAGES = {
    "/fruit.html": (
        [b"Content-Type: text/html; charset=utf-8", b"Content-Encoding: gzip"],
        gzip.compress(FRUIT, mtime=0),
    )
}

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


class TLSOrigin(ThreadedServer):
    """Threaded HTTPS/1.1 origin presenting one certificate (see the module docstring).

    It accepts from construction on; use it as a context manager or call `stop()`.

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

        super().__init__(LOOPBACK, name="tls-origin")
        if ipv6:
            try:
                self.listen(LOOPBACK6, self.port)
            except OSError:
                with contextlib.suppress(OSError):
                    self.listen(LOOPBACK6, 0)
        self.start()

    # -- public ---------------------------------------------------------------------------------

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

    # -- internals ------------------------------------------------------------------------------

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        with self._lock:
            self._sni.append(name)

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """TLS handshake, then keep-alive requests until either side closes."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn: socket.socket = sock
        try:
            sock.settimeout(self.io_timeout)
            conn = self.context.wrap_socket(sock, server_side=True)
            with self._lock:
                self._socks[conn_id] = conn  # what stop() shuts down from now on
                self._handshakes += 1
            buf = bytearray()
            while not self._stopping.is_set():
                head = self._read_head(conn, buf)
                if head is None:
                    return
                if not self._answer(conn, head):
                    return
        except (OSError, ssl.SSLError, ValueError) as e:
            if not self._stopping.is_set():
                self._error(f"{type(e).__name__}: {e}")
        finally:
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
        extra, body = _PAGES.get(path) or (
            [b"Content-Type: application/octet-stream"],
            body_for(path),
        )
        status = b"200 OK" if body is not None else b"404 Not Found"
        if body is None:
            body = b"not found\n"
        close = "close" in headers.get("connection", "").lower() or version == "HTTP/1.0"
        out = [b"HTTP/1.1 " + status, *extra, b"Content-Length: %d" % len(body)]
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
