"""Leaving through upstream proxies: real tinyproxy (HTTP, with and without BasicAuth) and
real microsocks (SOCKS5 with a user and password) on loopback, a real proxy in front of them,
curl as the client.

Each path is covered through each kind: plain HTTP (absolute form to an HTTP proxy), HTTPS
intercepted (CONNECT or SOCKS5, then verified TLS to the origin), passthrough, a WebSocket;
and what a user sees when the upstream proxy says no: a 502 naming it and what it answered.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from interceptor.config import load_config
from interceptor.proxy.via import Route, configured_routes, parse_route
from tests.support import (
    OriginServer,
    ProxyProcess,
    RawConnection,
    error_line,
    failed_start,
    free_port,
    request_bytes,
    respond,
    run_curl,
    wait_for,
)
from tests.test_operations import admin_env, metric_value, scrape
from tests.test_proxy_http import switch_and_echo, websocket_headers
from tests.tls_origin import MARKER, TLSOrigin
from tests.upstream_proxies import MicroSocks, TinyProxy

TIMEOUT = 20.0


def _start(
    proxy_factory: Callable[..., ProxyProcess],
    route: str,
    root: Path,
    config: str = "",
    **env: str,
) -> ProxyProcess:
    return proxy_factory(
        config,
        env={
            "INTERCEPTOR_UPSTREAM_PROXY": route,
            "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root),
            **env,
        },
    )


def _curl(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    cafile = Path(proxy.env["INTERCEPTOR_TLS_CA_DIR"]) / "ca.pem"
    return run_curl("-sS", "-x", proxy.url, "--cacert", str(cafile), *args, timeout=TIMEOUT)


def _status_and_body(result: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes]:
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


# -- HTTP upstream proxy (tinyproxy) ---------------------------------------------------------


def test_plain_and_intercepted_requests_go_through_tinyproxy_with_credentials(
    proxy_factory: Callable[..., ProxyProcess],
    tinyproxy_auth: TinyProxy,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
    tmp_path: Path,
) -> None:
    tls, root = tls_origin
    # A capture store that redacts nothing: still, it never gets our upstream proxy's password.
    store = tmp_path / "flows.db"
    config = f'[capture]\nstore = "{store}"\nredact_headers = []\n'
    proxy = _start(proxy_factory, tinyproxy_auth.url, root, config)
    url = origin.route("/plain", respond(b"through tinyproxy"))
    plain = _curl(proxy, url)
    assert plain.returncode == 0 and plain.stdout == b"through tinyproxy", plain
    secure = f"https://localhost:{tls.port}/marker"
    result = _curl(proxy, secure)
    assert result.returncode == 0 and result.stdout == MARKER, result
    # tinyproxy's log shows both: the plain GET in absolute form, the HTTPS as a CONNECT.
    wait_for(
        lambda: {f"GET {url} HTTP/1.1", f"CONNECT localhost:{tls.port} HTTP/1.1"}
        <= set(tinyproxy_auth.requests_logged()),
        TIMEOUT,
        message=lambda: tinyproxy_auth.log_tail(),
    )
    # The origin never sees the upstream proxy's credentials.
    (got,) = origin.requests_for("/plain")
    assert got.header("proxy-authorization") is None
    # The access log names the route (without the password).
    lines = proxy.wait_for_access(lambda e: e.url in (url, secure), count=2)
    assert {e.via for e in lines} == {f"http://alice@127.0.0.1:{tinyproxy_auth.port}"}, lines
    assert "pw@" not in proxy.log_text()
    heads: list[tuple[str, str]] = []

    def stored() -> bool:
        with contextlib.closing(sqlite3.connect(store)) as db:
            heads[:] = db.execute(
                "SELECT url, request_headers FROM flows WHERE url IN (?, ?)", (url, secure)
            ).fetchall()
        return len(heads) == 2

    wait_for(stored, TIMEOUT, message=lambda: f"stored: {heads}")
    for stored_url, head in heads:
        assert "proxy-authorization" not in head.lower(), (stored_url, head)
        assert head.startswith("Host: ") or "\r\nHost: " in head, (stored_url, head)


def test_a_wrong_password_is_a_502_saying_what_tinyproxy_answered(
    proxy_factory: Callable[..., ProxyProcess],
    tinyproxy_auth: TinyProxy,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    tls, root = tls_origin
    wrong = f"http://alice:wrong@127.0.0.1:{tinyproxy_auth.port}"
    proxy = _start(proxy_factory, wrong, root, **admin_env(admin := free_port()))
    result = _curl(proxy, "-w", "\n%{http_code}", f"https://localhost:{tls.port}/marker")
    # curl reports the proxy's refusal of its CONNECT: our 502 and its one line.
    assert b"502" in result.stderr or result.stdout.endswith(b"502"), result
    line = proxy.wait_for_log(r"CONNECT localhost:\d+ 502 .*\((.*)\)$")[1]
    assert line == (
        f"upstream proxy http://alice@127.0.0.1:{tinyproxy_auth.port} answered 401 Unauthorized "
        "to CONNECT"
    ), line
    # A plain GET likewise: tinyproxy's own 401 (no Via: it made it, relayed nothing).
    status, body = _status_and_body(
        _curl(proxy, "-w", "\n%{http_code}", origin.route("/g", respond(b"never")))
    )
    named = f"upstream proxy http://alice@127.0.0.1:{tinyproxy_auth.port}"
    assert (status, error_line(body)) == (502, f"{named} answered 401 Unauthorized")
    # An origin's own 401 passes through the proxy marked with its Via: relayed as it is.
    own = _start(proxy_factory, tinyproxy_auth.url, root)
    asks = origin.route("/login", respond(b"log in first", status=401))
    status, body = _status_and_body(_curl(own, "-w", "\n%{http_code}", asks))
    assert (status, body) == (401, b"log in first")
    # Without any credentials tinyproxy says 407; on a plain request that is a 502 too (the
    # client never spoke to that proxy: its 407 is not the client's to answer).
    bare = _start(proxy_factory, f"http://127.0.0.1:{tinyproxy_auth.port}", root)
    status, body = _status_and_body(
        _curl(bare, "-w", "\n%{http_code}", origin.route("/p", respond(b"never")))
    )
    assert status == 502, body
    assert error_line(body).endswith("answered 407 Proxy Authentication Required")
    assert origin.requests_for("/p") == []
    text = scrape(admin)
    assert metric_value(text, "interceptor_upstream_proxy_failures_total", {"reason": "auth"}) == 2


def test_a_dead_upstream_proxy_is_a_502_naming_it(
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    tls, root = tls_origin
    dead = free_port()
    proxy = _start(proxy_factory, f"socks5://u:p@127.0.0.1:{dead}", root)
    status, body = _status_and_body(
        _curl(proxy, "-w", "\n%{http_code}", origin.route("/d", respond(b"never")))
    )
    assert status == 502
    assert error_line(body) == (
        f"upstream proxy socks5://u@127.0.0.1:{dead} refused the connection"
    )
    # The CONNECT itself is answered 502 (eager connects reach through the proxy first).
    result = _curl(proxy, f"https://localhost:{tls.port}/marker")
    assert result.returncode != 0
    proxy.wait_for_log(rf"CONNECT localhost:{tls.port} 502 .*socks5://u@127\.0\.0\.1:{dead}")


# -- SOCKS5 upstream proxy (microsocks) ------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_plain_intercepted_and_passthrough_go_through_socks5(
    proxy_factory: Callable[..., ProxyProcess],
    socks5: MicroSocks,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
    scheme: str,
) -> None:
    tls, root = tls_origin
    route = socks5.url if scheme == "socks5" else socks5.url_h
    proxy = _start(proxy_factory, route, root, INTERCEPTOR_TLS_PASSTHROUGH="127.0.0.1")
    url = origin.route("/s", respond(b"through socks"))
    plain = _curl(proxy, url)
    assert plain.returncode == 0 and plain.stdout == b"through socks", plain
    intercepted = _curl(proxy, f"https://localhost:{tls.port}/marker")
    assert intercepted.returncode == 0 and intercepted.stdout == MARKER, intercepted
    # 127.0.0.1 is passed through (the origin's certificate names localhost only: -k).
    passthrough = run_curl(
        "-sS", "-k", "-x", proxy.url, f"https://127.0.0.1:{tls.port}/marker", timeout=TIMEOUT
    )
    assert passthrough.returncode == 0 and passthrough.stdout == MARKER, passthrough
    proxy.wait_for_log(rf"tunnel 127\.0\.0\.1:{tls.port} closed: ")
    # microsocks connected to each: socks5 sends the address it resolved, socks5h the name.
    name = "127.0.0.1" if scheme == "socks5" else "localhost"
    wait_for(
        lambda: {origin.authority, f"{name}:{tls.port}", f"127.0.0.1:{tls.port}"}
        <= set(socks5.connections_logged()),
        TIMEOUT,
        message=lambda: socks5.log_tail(),
    )


def test_a_wrong_socks5_password_is_a_502_saying_so(
    proxy_factory: Callable[..., ProxyProcess],
    socks5: MicroSocks,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    proxy = _start(proxy_factory, f"socks5h://u:wrong@127.0.0.1:{socks5.port}", tls_origin[1])
    status, body = _status_and_body(
        _curl(proxy, "-w", "\n%{http_code}", origin.route("/w", respond(b"never")))
    )
    assert status == 502
    assert error_line(body) == (
        f"upstream proxy socks5h://u@127.0.0.1:{socks5.port} refused the user name and password"
    )


def test_a_websocket_goes_through_socks5_and_through_a_tunnel_of_tinyproxy(
    proxy_factory: Callable[..., ProxyProcess],
    socks5: MicroSocks,
    tinyproxy: TinyProxy,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    origin.route("/chat", switch_and_echo)
    headers = websocket_headers(origin.authority)
    for route in (socks5.url_h, tinyproxy.url):
        proxy = _start(proxy_factory, route, tls_origin[1])
        with RawConnection(proxy.port) as conn:
            conn.send(request_bytes("GET", origin.url("/chat"), headers))
            head = conn.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), (route, head)
            conn.send(b"hello")
            echoed = b""
            while len(echoed) < 5:
                echoed += conn.read_available()
            assert echoed == b"HELLO"
    # Through the HTTP proxy the upgrade went as a CONNECT, as browsers send WebSockets.
    assert f"CONNECT {origin.authority} HTTP/1.1" in tinyproxy.requests_logged()


# -- which flows go through it ---------------------------------------------------------------


def test_no_proxy_sends_that_origin_direct(
    proxy_factory: Callable[..., ProxyProcess],
    tinyproxy: TinyProxy,
    origin: OriginServer,
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    tls, root = tls_origin
    proxy = _start(
        proxy_factory, tinyproxy.url, root, INTERCEPTOR_UPSTREAM_NO_PROXY="127.0.0.1"
    )
    direct = origin.route("/direct", respond(b"direct"))
    assert _curl(proxy, direct).stdout == b"direct"
    assert _curl(proxy, f"https://localhost:{tls.port}/marker").stdout == MARKER
    wait_for(
        lambda: f"CONNECT localhost:{tls.port} HTTP/1.1" in tinyproxy.requests_logged(),
        TIMEOUT,
        message=lambda: tinyproxy.log_tail(),
    )
    assert not any("/direct" in line for line in tinyproxy.requests_logged())
    (entry,) = proxy.wait_for_access(lambda e: e.url == direct)
    assert entry.via is None


ROUTING_ADDON = """
def request(flow):
    if flow.request.path == "/routed":
        flow.server_conn.via = "{route}"
"""


def test_an_addon_routes_one_request_through_tinyproxy(
    proxy_factory: Callable[..., ProxyProcess],
    tinyproxy: TinyProxy,
    origin: OriginServer,
    tmp_path: Path,
) -> None:
    script = tmp_path / "route.py"
    script.write_text(ROUTING_ADDON.format(route=tinyproxy.url))
    proxy = proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    routed = origin.route("/routed", respond(b"routed"))
    direct = origin.route("/direct", respond(b"direct"))
    assert _curl(proxy, routed).stdout == b"routed"
    assert _curl(proxy, direct).stdout == b"direct"
    wait_for(
        lambda: f"GET {routed} HTTP/1.1" in tinyproxy.requests_logged(),
        TIMEOUT,
        message=lambda: tinyproxy.log_tail(),
    )
    assert not any("/direct" in line for line in tinyproxy.requests_logged())
    # Each pooled apart: the direct request did not ride the proxy's connection.
    (got,) = origin.requests_for("/routed")
    assert got.header("via") is not None and "tinyproxy" in got.header("via")
    assert origin.requests_for("/direct")[0].header("via").count(",") == 0


def test_an_addon_routes_a_connect_before_the_eager_connect(
    proxy_factory: Callable[..., ProxyProcess],
    tls_origin: tuple[TLSOrigin, Path],
    tmp_path: Path,
) -> None:
    """http_connect runs before the eager connect: the route it picks is the one the
    origin's certificate is fetched through (the combination mitmproxy cannot offer)."""
    tls, root = tls_origin
    script = tmp_path / "route.py"
    # mitmproxy's tuple form carries no credentials: a SOCKS5 proxy without them.
    with MicroSocks(workdir=tmp_path) as open_socks:
        script.write_text(
            "def http_connect(flow):\n"
            f"    flow.server_conn.via = ('socks5', ('127.0.0.1', {open_socks.port}))\n"
        )
        proxy = proxy_factory(
            env={
                "INTERCEPTOR_HOOKS_SCRIPTS": str(script),
                "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root),
            }
        )
        result = _curl(proxy, f"https://localhost:{tls.port}/marker")
        assert result.returncode == 0 and result.stdout == MARKER, result
        wait_for(
            lambda: f"127.0.0.1:{tls.port}" in open_socks.connections_logged(),
            TIMEOUT,
            message=lambda: open_socks.log_tail(),
        )


def test_a_bad_via_from_an_addon_is_a_502_naming_it(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, tmp_path: Path
) -> None:
    script = tmp_path / "route.py"
    script.write_text("def request(flow):\n    flow.server_conn.via = 'ftp://x:21'\n")
    proxy = proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    status, body = _status_and_body(
        _curl(proxy, "-w", "\n%{http_code}", origin.route("/x", respond(b"never")))
    )
    assert status == 502
    assert error_line(body).startswith("flow.server_conn.via: proxy scheme 'ftp'")


# -- configuration ---------------------------------------------------------------------------


def test_routes_parse_urls_and_never_show_the_password() -> None:
    route = parse_route("http://alice:s%40cret@proxy.example:3128")
    assert route == Route("http", "proxy.example", 3128, "alice", "s@cret")
    assert str(route) == "http://alice@proxy.example:3128" and "cret" not in repr(route)
    assert route.proxy_authorization == b"Basic YWxpY2U6c0BjcmV0"
    assert parse_route("socks5h://[::1]").port == 1080  # curl's default port
    for bad, why in [
        ("proxy.example:3128", "a URL"),
        ("https://proxy.example:3128", "TLS to the proxy itself"),
        ("http://:3128", "no host"),
        ("http://p.example:3128/path", "nothing after"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_route(bad)


def test_env_takes_curls_variables_with_curls_meanings() -> None:
    environ = {
        "https_proxy": "http://secure.example:3128",
        "HTTP_PROXY": "http://ignored.example:1",  # curl ignores the uppercase one (httpoxy)
        "all_proxy": "socks5h://any.example:1080",
        "NO_PROXY": "internal.example, .corp.example, 10.0.0.0/8",
    }
    routes = configured_routes("env", [], "", environ)
    assert routes.choose("https", "a.example") == parse_route("http://secure.example:3128")
    assert routes.choose("http", "a.example") == parse_route("socks5h://any.example:1080")
    for direct in ("internal.example", "x.internal.example", "a.corp.example", "10.1.2.3"):
        assert routes.choose("https", direct) is None, direct
    assert configured_routes("env", [], "", {**environ, "no_proxy": "*"}).direct
    with pytest.raises(ValueError, match="https_proxy"):
        configured_routes("env", [], "", {"https_proxy": "nonsense"})


def test_credentials_from_a_file_and_a_bad_proxy_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("bob:hunter2\n")
    routes = configured_routes("socks5://127.0.0.1:1080", [], "bob:hunter2", {})
    assert routes.choose("http", "x") == Route("socks5", "127.0.0.1", 1080, "bob", "hunter2")
    config = load_config(None, {"INTERCEPTOR_UPSTREAM_PROXY_CREDENTIALS_FILE": str(secret)})
    assert config.upstream.proxy_credentials_file == str(secret)
    with pytest.raises(Exception, match="INTERCEPTOR_UPSTREAM_PROXY.*not one of"):
        load_config(None, {"INTERCEPTOR_UPSTREAM_PROXY": "ftp://x:1"})


def test_print_config_redacts_the_proxy_password(tmp_path: Path) -> None:
    result = failed_start(
        tmp_path, "--print-config", INTERCEPTOR_UPSTREAM_PROXY="http://alice:s3cret@p.example:3128"
    )
    assert result.returncode == 0, result
    assert "s3cret" not in result.stdout
    assert 'proxy = "http://alice:<redacted>@p.example:3128"' in result.stdout
