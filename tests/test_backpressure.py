"""Backpressure through a real twistd: a slow reader on one leg pauses the other, memory stays flat.

Without it the proxy reads a loopback origin at gigabytes per second and holds whatever the slow
client has not taken yet; with it, the proxy's resident memory barely moves while hundreds of
megabytes are on offer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import OriginConnection, OriginRequest, OriginServer, ProxyProcess

BIG = 512 * 1024 * 1024  # on offer; far more than the test lets through
BLOCK = b"x" * (1024 * 1024)
ALLOWED_GROWTH = 32 * 1024 * 1024  # RSS growth that still counts as flat


def rss(pid: int) -> int:
    """Resident set size of `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def endless(req: OriginRequest, out: OriginConnection) -> None:
    """Origin behaviour: a BIG Content-Length body, sent as fast as the proxy takes it."""
    out.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
    sent = 0
    try:
        while sent < BIG:
            out.send(BLOCK)
            sent += len(BLOCK)
    except OSError:
        out.reset()  # the proxy aborted us when the client left: expected


def slow_client_download(port: int, url: str, seconds: float) -> int:
    """Read the response to GET `url` slowly for `seconds`; returns the bytes read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(16 * 1024)
            if not chunk:
                break
            got += len(chunk)
            time.sleep(0.005)  # the point of the test: a client slower than the origin
    finally:
        sock.close()
    return got


def test_slow_client_keeps_proxy_memory_flat(proxy: ProxyProcess, origin: OriginServer) -> None:
    url = origin.route("/endless", endless)
    before = rss(proxy.pid)
    peak = before
    result: list[int] = []
    reader = threading.Thread(
        target=lambda: result.append(slow_client_download(proxy.port, url, 3.0))
    )
    reader.start()
    while reader.is_alive():
        peak = max(peak, rss(proxy.pid))
        reader.join(0.05)
    got = result[0]
    print(
        f"slow client read {got / 1e6:.1f} MB; proxy RSS {before / 1e6:.1f} -> peak "
        f"{peak / 1e6:.1f} MB"
    )
    assert got > 1024 * 1024, "the download did not progress"
    assert got < BIG // 4, "the client was not slow after all: the test proves nothing"
    assert peak - before < ALLOWED_GROWTH


@pytest.fixture
def slow_sink() -> Iterator[tuple[int, list[int]]]:
    """A raw origin that reads a request body slowly; yields (port, [bytes it read])."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    read: list[int] = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            conn.settimeout(0.5)
            with conn:
                while not stop.is_set():
                    try:
                        chunk = conn.recv(16 * 1024)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not chunk:
                        break
                    read[0] += len(chunk)
                    time.sleep(0.005)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], read
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_slow_upstream_keeps_proxy_memory_flat_on_upload(
    proxy: ProxyProcess, slow_sink: tuple[int, list[int]]
) -> None:
    port, read = slow_sink
    before = rss(proxy.pid)
    peak = before
    sent = 0
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    head = (
        f"POST http://127.0.0.1:{port}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n"
    ).encode()
    pending = memoryview(head + BLOCK)
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            try:
                n = sock.send(pending)
                sent += n
                pending = pending[n:] if n < len(pending) else memoryview(BLOCK)
            except BlockingIOError:
                time.sleep(0.01)  # the proxy stopped reading us: backpressure at work
            peak = max(peak, rss(proxy.pid))
    finally:
        sock.close()
    print(
        f"client pushed {sent / 1e6:.1f} MB, slow origin read {read[0] / 1e6:.1f} MB; proxy "
        f"RSS {before / 1e6:.1f} -> peak {peak / 1e6:.1f} MB"
    )
    assert read[0] > 1024 * 1024, "the upload did not progress"
    assert sent < BIG // 4, "the client was never held back: the test proves nothing"
    assert peak - before < ALLOWED_GROWTH
