"""[access], through a real twistd and curl: a client allowlist, and proxy credentials from an
htpasswd file of bcrypt entries, for plain requests and intercepted HTTPS alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from interceptor.service import beyond_loopback
from tests import certs
from tests.support import (
    OriginServer,
    ProxyProcess,
    error_line,
    exchange,
    get,
    request_bytes,
    respond,
    run_curl,
    wait_for,
)
from tests.test_proxy_tls import ca_pem
from tests.tls_origin import TLSOrigin, body_for

pytestmark = pytest.mark.timeout(60)


def htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file as `htpasswd -B` writes it ($2y$ bcrypt entries)."""
    lines = [
        f"{user}:" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$")
        for user, pw in users.items()
    ]
    path.write_text("# made by the tests\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TLSOrigin, Path]]:
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(tmp_path_factory.mktemp("pki"), "root", root)
    origin = TLSOrigin(*certs.make_server_cert(root, ("localhost",), ("127.0.0.1",)))
    try:
        yield origin, root_pem
    finally:
        origin.stop()


@pytest.fixture
def guarded(
    proxy_factory: Callable[..., ProxyProcess],
    tmp_path: Path,
    tls_origin: tuple[TLSOrigin, Path],
) -> ProxyProcess:
    users = htpasswd(tmp_path / "users", {"alice": "wonderland"})
    config = f'[access]\nusers_file = "{users}"\n'
    return proxy_factory(config, env={"INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(tls_origin[1])})


def proxy_url(proxy: ProxyProcess, credentials: str = "") -> str:
    return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{proxy.port}"


@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        ("", 407),
        ("alice:looking-glass", 407),
        ("mallory:wonderland", 407),
        ("alice:wonderland", 200),
    ],
    ids=["none", "wrong-password", "unknown-user", "right"],
)
def test_plain_requests_need_credentials(
    guarded: ProxyProcess, origin: OriginServer, credentials: str, status: int
) -> None:
    origin.route("/p", respond(b"inside"))
    result = run_curl(
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-x",
        proxy_url(guarded, credentials),
        origin.url("/p"),
    )
    body, _, code = result.stdout.rpartition(b"\n")
    assert int(code) == status, result.stderr
    if status == 200:
        assert body == b"inside"
        assert "proxy-authorization" not in {h.lower() for h, _ in origin.requests[-1].headers}
    else:
        assert origin.requests == []


def test_a_407_says_how_to_authenticate(guarded: ProxyProcess, origin: OriginServer) -> None:
    resp, conn = exchange(guarded.port, get(origin.url("/p")))
    conn.close()
    assert resp.status == 407
    assert resp.header("proxy-authenticate") == 'Basic realm="interceptor"'
    assert error_line(resp.body) == "proxy authentication required"


@pytest.mark.parametrize(
    ("credentials", "ok"), [("", False), ("alice:nope", False), ("alice:wonderland", True)]
)
def test_intercepted_https_needs_credentials_on_the_connect(
    guarded: ProxyProcess, tls_origin: tuple[TLSOrigin, Path], credentials: str, ok: bool
) -> None:
    origin, _ = tls_origin
    url = f"https://localhost:{origin.ports['127.0.0.1']}/1k"
    result = run_curl(
        "-s", "-x", proxy_url(guarded, credentials), "--cacert", str(ca_pem(guarded)), url
    )
    if ok:
        assert result.returncode == 0, result.stderr
        assert result.stdout == body_for("/1k")
    else:
        assert result.returncode != 0
        assert result.stdout == b""


def test_credentials_are_checked_again_after_the_file_changes(
    guarded: ProxyProcess, origin: OriginServer, tmp_path: Path
) -> None:
    origin.route("/p", respond(b"inside"))

    def code(credentials: str) -> int:
        result = run_curl(
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            proxy_url(guarded, credentials),
            origin.url("/p"),
        )
        return int(result.stdout)

    assert code("alice:wonderland") == 200
    htpasswd(tmp_path / "users", {"alice": "changed"})  # the file the proxy reads
    wait_for(lambda: code("alice:wonderland") == 407, 10, message="old password still works")
    assert code("alice:changed") == 200


def test_clients_outside_allow_are_refused(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy = proxy_factory('[access]\nallow = ["192.0.2.0/24"]\n')
    origin.route("/p", respond(b"inside"))
    resp, conn = exchange(proxy.port, get(origin.url("/p")))
    conn.close()
    assert resp.status == 403
    assert error_line(resp.body) == "client address 127.0.0.1 is not allowed to use this proxy"
    connect = request_bytes("CONNECT", "localhost:443", [("Host", "localhost:443")])
    resp, conn = exchange(proxy.port, connect, method="CONNECT")
    conn.close()
    assert resp.status == 403
    assert origin.requests == []


def test_clients_inside_allow_are_served(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy = proxy_factory('[access]\nallow = ["127.0.0.0/8", "::1"]\n')
    origin.route("/p", respond(b"inside"))
    resp, conn = exchange(proxy.port, get(origin.url("/p")))
    conn.close()
    assert resp.status == 200 and resp.body == b"inside"


def test_listeners_beyond_loopback_are_the_ones_warned_about() -> None:
    # The start-up warning for an open proxy names these; tested without binding a wildcard
    # address, which would expose an open proxy on the test machine.
    addresses = [
        IPv4Address("TCP", "127.0.0.1", 8080),
        IPv4Address("TCP", "127.0.0.2", 8080),
        IPv6Address("TCP", "::1", 8080),
        IPv4Address("TCP", "0.0.0.0", 8080),
        IPv6Address("TCP", "::", 8080),
        IPv4Address("TCP", "192.0.2.7", 8080),
        UNIXAddress(b"/run/interceptor.sock"),
    ]
    assert beyond_loopback(addresses) == ["0.0.0.0", "::", "192.0.2.7"]
