"""An honest CONNECT, through a real twistd: the answer says whether the origin can be reached.

With `[tls] connect = "eager"` (the default) the proxy connects, and verifies, before answering
an intercepted CONNECT; `"lazy"` answers 200 at once. Whatever the client then speaks inside its
tunnel is served: TLS is terminated, plain HTTP is relayed as HTTP, anything else opaquely.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    OriginServer,
    ProxyProcess,
    RawConnection,
    ThreadedServer,
    error_line,
    free_port,
    request_bytes,
    respond,
    run_curl,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0


def connect(proxy: ProxyProcess, authority: str) -> tuple[RawConnection, bytes]:
    """Send a CONNECT for `authority`; return the connection and the proxy's answer head."""
    conn = RawConnection(proxy.port, timeout=TIMEOUT)
    conn.send(request_bytes("CONNECT", authority))
    return conn, conn.read_until(b"\r\n\r\n")


class Silent(ThreadedServer):
    """Accepts connections and never says a word (a TLS handshake that never finishes)."""

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """Hold the connection until the server stops."""
        self._stopping.wait(30)


class Echo(ThreadedServer):
    """Sends back whatever it reads (a protocol that is neither TLS nor HTTP)."""

    def handle(self, sock: socket.socket, conn_id: int) -> None:
        """Echo until the peer closes."""
        sock.settimeout(TIMEOUT)
        while data := sock.recv(65536):
            sock.sendall(data)


def test_connect_to_a_dead_port_is_answered_502_on_the_connect_itself(
    proxy: ProxyProcess,
) -> None:
    dead = free_port()
    conn, head = connect(proxy, f"localhost:{dead}")
    with conn:
        assert head.startswith(b"HTTP/1.1 502 "), head
        body = conn.read_until_close()
    assert error_line(body) == "upstream refused the connection"
    # curl says so before any TLS: "CONNECT tunnel failed, response 502".
    result = run_curl("-x", proxy.url, f"https://localhost:{dead}/")
    assert result.returncode == 56, (result.returncode, result.stderr)
    assert b"502" in result.stderr, result.stderr


def test_connect_to_an_unknown_host_is_answered_502(proxy: ProxyProcess) -> None:
    conn, head = connect(proxy, "no-such-host.invalid:443")
    with conn:
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert error_line(conn.read_until_close()) == "upstream host not found"


def test_an_origin_that_never_finishes_its_handshake_is_a_504_inside(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    # It took the TCP connect, so the CONNECT is answered 200; the request inside is then
    # answered 504 once the handshake has had the read timeout, not left hanging.
    proxy = proxy_factory(env={"INTERCEPTOR_UPSTREAM_READ_TIMEOUT": "1"})
    cafile = Path(proxy.env["INTERCEPTOR_TLS_CA_DIR"]) / "ca.pem"
    with Silent() as silent:
        result = run_curl(
            "-x",
            proxy.url,
            "--cacert",
            str(cafile),
            "-w",
            "\n%{http_code}",
            f"https://localhost:{silent.port}/",
        )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"504" and error_line(body) == "upstream timed out", result.stdout


def test_lazy_connect_answers_200_first_and_the_request_inside_gets_the_502(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    proxy = proxy_factory(env={"INTERCEPTOR_TLS_CONNECT": "lazy"})
    dead = free_port()
    conn, head = connect(proxy, f"127.0.0.1:{dead}")
    with conn:
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        # Plain HTTP inside (no TLS to set up for a dead origin): the request says why.
        conn.send(request_bytes("GET", "/", [("Host", f"127.0.0.1:{dead}")]))
        resp = conn.read_response()
    assert resp.status == 502 and error_line(resp.body) == "upstream refused the connection"


@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_plain_http_inside_a_connect_gets_the_origins_response(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, mode: str
) -> None:
    origin.route("/inside", respond(b"plain inside the tunnel"))
    proxy = proxy_factory(env={"INTERCEPTOR_TLS_CONNECT": mode})
    conn, head = connect(proxy, origin.authority)
    with conn:
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        for _ in range(2):  # keep-alive inside the tunnel, as outside
            conn.send(request_bytes("GET", "/inside", [("Host", origin.authority)]))
            resp = conn.read_response()
            assert resp.status == 200 and resp.body == b"plain inside the tunnel"
    assert [r.path for r in origin.requests if r.path == "/inside"] == ["/inside"] * 2
    # A real client doing the same: curl's --proxytunnel for an http:// URL.
    result = run_curl("-p", "-x", proxy.url, origin.url("/inside"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"plain inside the tunnel"


@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_neither_tls_nor_http_inside_a_connect_is_relayed_opaquely(
    proxy_factory: Callable[..., ProxyProcess], mode: str
) -> None:
    proxy = proxy_factory(env={"INTERCEPTOR_TLS_CONNECT": mode})
    with Echo() as echo:
        conn, head = connect(proxy, f"127.0.0.1:{echo.port}")
        with conn:
            assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            data = b"\x00\x01 not http\r\n"
            conn.send(data)
            assert conn.read_available(len(data)) == data
            conn.send(b"more")
            assert conn.read_available(4) == b"more"
