"""The upstream-proxy fixtures are real and usable: curl through tinyproxy and microsocks.

These pin what the real proxies do (status codes, curl exit codes, log lines), so the
upstream-proxy tests built on them can rely on it, and so a new tinyproxy or microsocks
version that behaves differently shows up here first rather than as a puzzling failure there.
Everything is loopback: a scriptable origin, curl, and the proxies the fixtures start.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import certs
from tests.support import LOOPBACK, OriginServer, respond, run_curl
from tests.tls_origin import MARKER, TLSOrigin
from tests.upstream_proxies import (
    SOCKS5_PASSWORD,
    SOCKS5_USER,
    TINYPROXY_PASSWORD,
    TINYPROXY_USER,
    MicroSocks,
    TinyProxy,
    listening_ports,
    require_tool,
)

BODY = b"from the origin\n"
# curl's exit codes for the refusals below (curl 7.88 on Debian 12).
CURLE_RECV_ERROR = 56  # the proxy answered CONNECT with something other than 2xx
CURLE_PROXY = 97  # the SOCKS5 handshake failed


@pytest.fixture
def hello(origin: OriginServer) -> str:
    """The URL of a route on the test's origin that answers 200 `BODY`."""
    return origin.route("/hello", respond(BODY))


def status_and_headers(result: bytes) -> tuple[int, str]:
    """From curl `-D - -o /dev/null -w '%{http_code}'` output: (final status, header text)."""
    text = result.decode("latin-1")
    return int(text[-3:]), text[:-3]


# -- tinyproxy -----------------------------------------------------------------------------


def test_tinyproxy_forwards_a_plain_get(
    tinyproxy: TinyProxy, origin: OriginServer, hello: str
) -> None:
    result = run_curl("-x", tinyproxy.url, hello)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY
    [request] = origin.requests
    assert request.target == "/hello"  # tinyproxy sends origin-form on
    assert "tinyproxy/" in (request.header("via") or "")  # it really went through tinyproxy
    tinyproxy.wait_for_log(rf"Request \(file descriptor \d+\): GET {re.escape(hello)} HTTP/1\.1$")
    assert tinyproxy.requests_logged() == [f"GET {hello} HTTP/1.1"]


def test_tinyproxy_tunnels_connect_to_any_loopback_port(
    tinyproxy: TinyProxy, origin: OriginServer, hello: str
) -> None:
    # No ConnectPort line in the fixture's config: CONNECT may reach any port, not just 443.
    result = run_curl("--proxytunnel", "-w", "%{http_connect}", "-x", tinyproxy.url, hello)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY + b"200"
    [request] = origin.requests
    assert not request.has_header("via")  # a tunnel: tinyproxy does not touch the bytes
    assert tinyproxy.requests_logged() == [f"CONNECT {origin.authority} HTTP/1.1"]
    tinyproxy.wait_for_log(r'Established connection to host "127\.0\.0\.1"')


def test_tinyproxy_tunnels_tls(tinyproxy: TinyProxy, tmp_path: Path) -> None:
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(tmp_path, "root", root)
    with TLSOrigin(*certs.good_cert(root)) as tls_origin:
        url = f"https://{tls_origin.authority}/marker"
        result = run_curl("--cacert", str(root_pem), "-x", tinyproxy.url, url)
        assert result.returncode == 0, result.stderr
        assert result.stdout == MARKER
        assert tls_origin.handshakes == 1
    assert tinyproxy.requests_logged() == [f"CONNECT {tls_origin.authority} HTTP/1.1"]


def test_tinyproxy_connect_ports_limit_connect(
    tmp_path: Path, origin: OriginServer, hello: str
) -> None:
    require_tool("tinyproxy")
    with TinyProxy(tmp_path, connect_ports=[443]) as upstream:
        result = run_curl("--proxytunnel", "-x", upstream.url, hello)
        assert result.returncode == CURLE_RECV_ERROR
        assert b"CONNECT tunnel failed, response 403" in result.stderr
        upstream.wait_for_log(rf"Refused CONNECT method on port {origin.port}$")
        # Plain requests are not CONNECT: ConnectPort does not restrict them.
        assert run_curl("-x", upstream.url, hello).stdout == BODY
    assert [r.target for r in origin.requests] == ["/hello"]


@pytest.mark.parametrize(
    ("credentials", "status", "challenge"),
    [
        # No Proxy-Authorization: the standard challenge.
        ("", 407, "Proxy-Authenticate: Basic"),
        # Wrong credentials: tinyproxy 1.11 answers 401 with a WWW-Authenticate challenge,
        # not 407 as most proxies do.
        (f"{TINYPROXY_USER}:wrong@", 401, "WWW-Authenticate: Basic"),
    ],
    ids=["no-credentials", "wrong-password"],
)
@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "connect"])
def test_tinyproxy_basic_auth_refusals(
    tinyproxy_auth: TinyProxy,
    origin: OriginServer,
    hello: str,
    credentials: str,
    status: int,
    challenge: str,
    tunnel: bool,
) -> None:
    proxy_url = f"http://{credentials}{tinyproxy_auth.address}"
    extra = ["--proxytunnel"] if tunnel else []
    result = run_curl(
        *extra, "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy_url, hello
    )
    code, headers = status_and_headers(result.stdout)
    assert f"HTTP/1.0 {status} " in headers
    assert challenge + ' realm="Tinyproxy"' in headers
    if tunnel:
        assert result.returncode == CURLE_RECV_ERROR
        assert f"CONNECT tunnel failed, response {status}".encode() in result.stderr
    else:
        assert (result.returncode, code) == (0, status)
    assert origin.accepts == 0
    # The refused request is logged all the same (tinyproxy logs it before checking auth).
    method = "CONNECT" if tunnel else "GET"
    tinyproxy_auth.wait_for_log(rf"Request \(file descriptor \d+\): {method} ")


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "connect"])
def test_tinyproxy_basic_auth_right_credentials(
    tinyproxy_auth: TinyProxy, origin: OriginServer, hello: str, tunnel: bool
) -> None:
    assert tinyproxy_auth.url.startswith(f"http://{TINYPROXY_USER}:{TINYPROXY_PASSWORD}@")
    extra = ["--proxytunnel"] if tunnel else []
    result = run_curl(*extra, "-x", tinyproxy_auth.url, hello)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY
    [request] = origin.requests
    # tinyproxy consumes Proxy-Authorization: the origin never sees the credentials.
    assert not request.has_header("proxy-authorization")


# -- microsocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--socks5", "socks5://", "socks5h://"])
def test_socks5_reaches_the_origin(
    socks5: MicroSocks, origin: OriginServer, hello: str, how: str
) -> None:
    if how == "--socks5":
        args = ["--socks5", socks5.address, "--proxy-user", f"{SOCKS5_USER}:{SOCKS5_PASSWORD}"]
    else:
        args = ["-x", socks5.url_h if how == "socks5h://" else socks5.url]
    result = run_curl(*args, hello)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY
    [request] = origin.requests
    assert not request.has_header("via")  # SOCKS relays bytes; nothing is added
    socks5.wait_for_log(rf"connected to {re.escape(origin.authority)}$")
    assert socks5.connections_logged() == [origin.authority]


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (f"{SOCKS5_USER}:wrong@", b"User was rejected by the SOCKS5 server"),
        ("", b"No authentication method was acceptable"),
    ],
    ids=["wrong-password", "no-credentials"],
)
def test_socks5_refuses_bad_credentials(
    socks5: MicroSocks, origin: OriginServer, hello: str, credentials: str, message: bytes
) -> None:
    result = run_curl("-x", f"socks5://{credentials}{socks5.address}", hello)
    assert result.returncode == CURLE_PROXY
    assert message in result.stderr
    assert origin.accepts == 0
    assert socks5.connections_logged() == []


# -- the fixture classes themselves ------------------------------------------------------------


def test_microsocks_without_a_user_needs_no_credentials(
    tmp_path: Path, origin: OriginServer, hello: str
) -> None:
    require_tool("microsocks")
    with MicroSocks(workdir=tmp_path) as upstream:
        assert upstream.url == f"socks5://{LOOPBACK}:{upstream.port}"
        assert run_curl("-x", upstream.url, hello).stdout == BODY


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    require_tool("tinyproxy")
    require_tool("microsocks")
    with TinyProxy(tmp_path) as http_proxy, MicroSocks(workdir=tmp_path) as socks:
        assert listening_ports(http_proxy.pid) == {http_proxy.port}
        assert listening_ports(socks.pid) == {socks.port}
    assert http_proxy.returncode is not None and socks.returncode is not None
    assert http_proxy.stop() == http_proxy.returncode  # idempotent
    for port in (http_proxy.port, socks.port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, port), timeout=1).close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_tinyproxy_retries_when_its_port_is_taken(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("tinyproxy")
    import tests.upstream_proxies as upstream_proxies

    real_free_port = upstream_proxies.free_port
    ports = iter([taken_port])
    monkeypatch.setattr(
        upstream_proxies, "free_port", lambda: next(ports, None) or real_free_port()
    )
    with TinyProxy(tmp_path) as upstream:
        assert upstream.port != taken_port
        assert listening_ports(upstream.pid) == {upstream.port}
        [failed] = set(tmp_path.glob("tinyproxy-*/tinyproxy.out")) - {upstream.output_path}
    assert "Could not create listening sockets" in failed.read_text()


@pytest.mark.parametrize("ci", ["", "1"])
def test_a_missing_tool_skips_or_fails_under_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERCEPTOR_CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no-such-proxy-binary is not installed"):
        require_tool("no-such-proxy-binary")
