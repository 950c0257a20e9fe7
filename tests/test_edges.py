"""Safe at the edges, through a real twistd: the proxy never becomes a path to itself.

A destination that is one of the process's own listeners (the proxy port, the admin port) is
refused with 403 before anything connects: asked to reach itself, a proxy otherwise nests hop
inside hop until its descriptors run out, and its admin endpoint (metrics; later the flow UI)
would be readable by anyone who can use the proxy.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from interceptor.service import via_pseudonym
from tests import certs
from tests.storm import fd_count
from tests.support import (
    OriginServer,
    ProxyProcess,
    RawConnection,
    error_line,
    exchange,
    get,
    request_bytes,
    respond,
    run_curl,
    wait_for,
)
from tests.test_operations import admin_get, metric_value, start_with_admin
from tests.tls_origin import TLSOrigin, body_for

pytestmark = pytest.mark.timeout(60)


def test_admin_endpoint_is_not_reachable_through_the_proxy(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    proxy, admin_port = start_with_admin(proxy_factory)
    for host in ("127.0.0.1", "localhost"):
        resp, conn = exchange(proxy.port, get(f"http://{host}:{admin_port}/metrics"))
        conn.close()
        assert resp.status == 403, resp.body
        assert error_line(resp.body) == f"{host}:{admin_port} is this proxy itself"
        assert b"interceptor_" not in resp.body


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"])
def test_requests_to_the_proxy_itself_are_refused(proxy: ProxyProcess, target: str) -> None:
    resp, conn = exchange(proxy.port, get(f"http://{target}:{proxy.port}/"))
    conn.close()
    if target == "[::1]":
        # The proxy listens on 127.0.0.1 only: ::1 is not it (nothing listens there).
        assert resp.status == 502, resp.body
    else:
        assert resp.status == 403, resp.body
        assert "is this proxy itself" in error_line(resp.body)


def test_via_is_added_both_ways_and_a_request_that_carries_ours_is_a_loop(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    origin.route("/v", respond(b"via", headers=[("Via", "1.1 far-away")]))
    resp, conn = exchange(proxy.port, get(origin.url("/v"), [("Via", "1.0 client-side")]))
    conn.close()
    assert resp.status == 200
    (up,) = origin.requests_for("/v")
    # Ours comes after the hops before us, received as HTTP/1.1 (RFC 9110 7.6.3).
    assert up.header_values("via") == ["1.0 client-side", f"1.1 {pseudonym(proxy)}"]
    assert resp.header_values("via") == ["1.1 far-away", f"1.1 {pseudonym(proxy)}"]
    # Come round again (a name that resolves here, a proxy behind that sends it back): 508.
    looped = get(origin.url("/v"), [("Via", f"1.1 {pseudonym(proxy)}, 1.1 other")])
    resp, conn = exchange(proxy.port, looped)
    conn.close()
    assert resp.status == 508
    assert error_line(resp.body) == "loop detected: this request already passed through here"
    assert len(origin.requests_for("/v")) == 1


def pseudonym(proxy: ProxyProcess) -> str:
    """The proxy's Via pseudonym, as its start-up log says."""
    match = proxy.wait_for_log(r"Via pseudonym (\S+)")
    return match.group(1)


def test_two_instances_have_different_pseudonyms() -> None:
    one = via_pseudonym("host-a", ["tcp:8080"])
    assert one == via_pseudonym("host-a", ["tcp:8080"])  # stable across restarts
    assert one != via_pseudonym("host-a", ["tcp:8081"])
    assert one != via_pseudonym("host-b", ["tcp:8080"])
    assert "host-a" not in one


def settled_fds(proxy: ProxyProcess, admin_port: int) -> int:
    """The proxy's descriptors once no client connection is open (as its metrics say)."""

    def clients_open() -> float:
        text = admin_get(admin_port, "/metrics")[2].decode()
        return metric_value(text, "interceptor_connections_open", {"side": "client"})

    wait_for(lambda: clients_open() == 0, timeout=10, message="client connections stay open")
    return fd_count(proxy.pid)


@pytest.mark.parametrize("passthrough", [False, True], ids=["intercept", "passthrough"])
def test_a_thousand_connects_to_the_proxy_itself(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, passthrough: bool
) -> None:
    config = '[tls]\npassthrough = ["127.0.0.1", "localhost"]\n' if passthrough else ""
    proxy, admin_port = start_with_admin(proxy_factory, config)
    origin.route("/ok", respond(b"still serving"))
    # The baseline: settled, with the one pooled upstream connection the storm's bystander
    # will use again.
    resp, conn = exchange(proxy.port, get(origin.url("/ok")))
    conn.close()
    baseline = settled_fds(proxy, admin_port)
    connects = b"".join(
        f"CONNECT 127.0.0.1:{proxy.port} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n".encode()
        for _ in range(1000)
    )
    with RawConnection(proxy.port) as storm:
        storm.send(connects)
        # Another client is served meanwhile.
        resp, conn = exchange(proxy.port, get(origin.url("/ok")))
        conn.close()
        assert resp.status == 200 and resp.body == b"still serving"
        refused = storm.read_response(method="CONNECT")
        assert refused.status == 403
        assert error_line(refused.body) == f"127.0.0.1:{proxy.port} is this proxy itself"
        # What followed the first CONNECT is not HTTP to this connection any more: it closes.
        assert storm.wait_closed(timeout=10)
    assert origin.accepts == 1  # only the bystander's requests went anywhere, on one connection
    # Settled, the descriptors come back to the baseline: the connection each refused CONNECT
    # made to ourselves may still be closing when the clients are gone, so that is polled
    # (a leaked one never comes back). Either count may hold the scrape's own admin
    # connection, still closing: one fewer than the baseline is that, never a leak.
    settled_fds(proxy, admin_port)
    wait_for(
        lambda: fd_count(proxy.pid) <= baseline,
        timeout=10,
        message=lambda: f"{fd_count(proxy.pid)} descriptors, {baseline} before the storm",
    )


def test_options_with_max_forwards_zero_is_answered_by_the_proxy(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    origin.route("/o", respond(b"origin"))
    data = request_bytes(
        "OPTIONS", origin.url("/o"), [("Host", origin.authority), ("Max-Forwards", "0")]
    )
    resp, conn = exchange(proxy.port, data)
    conn.close()
    assert resp.status == 200 and resp.body == b""
    assert "OPTIONS" in (resp.header("allow") or "")
    assert origin.requests == []


def test_trace_with_max_forwards_zero_echoes_the_request_without_credentials(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    headers = [
        ("Host", origin.authority),
        ("Max-Forwards", "0"),
        ("X-Probe", "seen"),
        ("Cookie", "session=secret"),
        ("Authorization", "Basic c2VjcmV0"),
    ]
    resp, conn = exchange(proxy.port, request_bytes("TRACE", origin.url("/t"), headers))
    conn.close()
    assert resp.status == 200
    assert resp.header("content-type") == "message/http"
    assert resp.body.startswith(f"TRACE {origin.url('/t')} HTTP/1.1\r\n".encode())
    assert b"X-Probe: seen" in resp.body
    assert b"secret" not in resp.body and b"c2VjcmV0" not in resp.body
    assert origin.requests == []


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_max_forwards_is_decremented_on_the_way(
    proxy: ProxyProcess, origin: OriginServer, method: str
) -> None:
    origin.route("/m", respond(b"origin"))
    data = request_bytes(
        method, origin.url("/m"), [("Host", origin.authority), ("Max-Forwards", "3")]
    )
    resp, conn = exchange(proxy.port, data)
    conn.close()
    assert resp.status == 200 and resp.body == b"origin"
    assert [r.header("max-forwards") for r in origin.requests] == ["2"]


def test_a_client_that_keeps_refusing_our_certificate_gets_passthrough(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    # A pinning client, played by curl trusting only the origin's CA: it refuses every leaf we
    # mint, so after learn_passthrough = 2 refusals the host is tunnelled to the real origin.
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(tmp_path, "root", root)
    origin = TLSOrigin(*certs.make_server_cert(root, ("localhost",), ("127.0.0.1",)))
    try:
        proxy, admin_port = start_with_admin(
            proxy_factory,
            "[tls]\nlearn_passthrough = 2\n",
            INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE=str(root_pem),
        )
        url = f"https://localhost:{origin.ports['127.0.0.1']}/1k"

        def fetch() -> subprocess.CompletedProcess[bytes]:
            return run_curl("-s", "-x", proxy.url, "--cacert", str(root_pem), url)

        for attempt in (1, 2):
            result = fetch()
            assert result.returncode == 60, (attempt, result)  # our leaf: not its CA
        wait_for(
            lambda: "passing localhost through" in proxy.log_text(),
            timeout=5,
            message=proxy.log_tail,
        )
        result = fetch()
        assert result.returncode == 0, result.stderr
        assert result.stdout == body_for("/1k")
        listing = admin_get(admin_port, "/passthrough")[2].decode()
        assert listing.startswith("localhost "), listing
    finally:
        origin.stop()


def test_an_answer_before_the_body_is_read_reaches_the_client_whole(
    proxy: ProxyProcess,
) -> None:
    """A 403 given to a 4 MiB upload before its body is read: the proxy half-closes, drops what
    still comes and closes at the client's FIN (a lingering close). A plain close would leave
    the body unread in the socket, and the kernel's reset would then destroy the answer
    before this client, which sends everything first, ever reads it."""
    import socket

    body = b"u" * (4 << 20)
    target = f"127.0.0.1:{proxy.port}"
    head = (
        f"POST http://{target}/upload HTTP/1.1\r\nHost: {target}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for attempt in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(head + body)  # a reset would fail this, or the reads below
            sock.shutdown(socket.SHUT_WR)
            received = b""
            for _ in range(1000):  # bounded: the proxy closes, or the 10 s timeout raises
                piece = sock.recv(65536)
                if not piece:
                    break
                received += piece
        assert received.startswith(b"HTTP/1.1 403 "), (attempt, received[:200])
        assert b"is this proxy itself (request id " in received, (attempt, received[-200:])
