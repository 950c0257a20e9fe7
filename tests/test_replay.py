"""`interceptor flows replay`: a stored request sent again to real loopback origins, directly and
through a real proxy, over plain HTTP and verified TLS; and the replays it must refuse."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interceptor.capture.store import FlowRecord
from tests import certs
from tests.support import (
    OriginServer,
    ProxyProcess,
    echo,
    free_port,
    respond,
    wait_for,
)
from tests.test_cli import interceptor
from tests.test_har import write_store
from tests.tls_origin import TLSOrigin, body_for

TIMEOUT = 20.0
BODY = gzip.compress(b'{"name": "caf\xc3\xa9"}')


def flow(flow_id: str, target: str, **fields: object) -> FlowRecord:
    """A stored GET of `target` (any field can be given instead)."""
    authority = target.split("//", 1)[1].split("/", 1)[0]
    defaults: dict[str, object] = {
        "kind": "http", "started": 1.0, "ended": 2.0, "client": "127.0.0.1:1", "method": "GET",
        "url": target, "host": authority.rsplit(":", 1)[0], "http_version": "HTTP/1.1",
        "status": 200, "request_headers": [("Host", authority), ("Accept", "*/*")],
    }  # fmt: skip
    defaults.update(fields)
    return FlowRecord(id=flow_id, **defaults)  # type: ignore[arg-type]


def posted(origin_url: str) -> FlowRecord:
    """A gzip JSON POST as a client sent it through the proxy, with what is not to be resent."""
    authority = origin_url.split("//", 1)[1].split("/", 1)[0]
    return flow(
        "post-1", origin_url + "?q=1&r=2", method="POST",
        request_headers=[
            ("Host", authority), ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"), ("Content-Length", "999"),
            ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "<redacted>"), ("Authorization", "<redacted>"),
            ("X-Interceptor-Replay", "an-older-flow"), ("X-Keep", "a"), ("X-Keep", "b"),
        ],
        request_body=BODY, request_size=len(BODY),
    )  # fmt: skip


def test_a_replay_sends_the_stored_request_less_what_was_for_its_connection(
    tmp_path: Path, origin: OriginServer
) -> None:
    url = origin.route("/items", echo(headers=[("X-Origin", "yes")]))
    store = write_store(tmp_path / "flows.db", [posted(url)])
    result = interceptor("flows", "replay", str(store), "post")
    assert result.returncode == 0, result.stderr
    status, summary = result.stdout.splitlines()
    assert status == "HTTP/1.1 200 OK"
    assert summary.startswith(f"5 headers, {len(BODY)} body bytes, ") and summary.endswith(" ms")
    (got,) = origin.requests
    assert (got.method, got.target, got.body) == ("POST", "/items?q=1&r=2", BODY)
    assert got.headers == [
        ("Host", origin.authority), ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"), ("X-Keep", "a"), ("X-Keep", "b"),
        ("Content-Length", str(len(BODY))), ("X-Interceptor-Replay", "post-1"),
    ]  # fmt: skip


def test_a_bodiless_request_gets_no_length_and_a_replay_goes_through_a_proxy(
    tmp_path: Path, origin: OriginServer, proxy: ProxyProcess
) -> None:
    url = origin.route("/page", respond(b"hello", headers=[("Content-Type", "text/plain")]))
    store = write_store(tmp_path / "flows.db", [flow("get-1", url), posted(url)])
    direct = interceptor("flows", "replay", str(store), "get-1")
    assert direct.returncode == 0, direct.stderr
    assert origin.requests[0].headers == [
        ("Host", origin.authority), ("Accept", "*/*"), ("X-Interceptor-Replay", "get-1"),
    ]  # fmt: skip
    for flow_id, method, target, body in [
        ("get-1", "GET", "/page", b""),
        ("post-1", "POST", "/page?q=1&r=2", BODY),
    ]:
        result = interceptor("flows", "replay", str(store), flow_id, "--proxy", proxy.url)
        assert result.returncode == 0, result.stderr
        status, summary = result.stdout.splitlines()
        assert status == "HTTP/1.1 200 OK" and ", 5 body bytes, " in summary
        got = origin.requests[-1]
        assert (got.method, got.target, got.body) == (method, target, body)
        assert got.has_header("via")  # it came through the proxy
        assert not got.has_header("proxy-authorization")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TLSOrigin]]:
    """The origin root's PEM file and an HTTPS origin whose certificate it signed."""
    root = certs.make_origin_root()
    directory = tmp_path_factory.mktemp("pki")
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root[0])
    with TLSOrigin(*certs.good_cert(root)) as tls_origin:
        yield root_pem, tls_origin


def test_https_is_verified_directly_and_through_an_intercepting_proxy(
    tmp_path: Path,
    pki: tuple[Path, TLSOrigin],
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    root_pem, tls_origin = pki
    url = f"https://localhost:{tls_origin.port}/1k"
    store = write_store(tmp_path / "flows.db", [flow("tls-1", url, kind="intercepted")])
    direct = interceptor("flows", "replay", str(store), "tls-1", "--cacert", str(root_pem))
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.startswith(f"HTTP/1.1 200 OK\n2 headers, {len(body_for('/1k'))} body")
    assert tls_origin.requests[-1] == "/1k"

    untrusted = interceptor("flows", "replay", str(store), "tls-1")  # the system's store
    assert untrusted.returncode == 1 and untrusted.stdout == ""
    assert untrusted.stderr.count("\n") == 1 and "certificate not accepted" in untrusted.stderr

    proxy = proxy_factory(env={"INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root_pem)})
    proxy_ca = Path(proxy.env["INTERCEPTOR_TLS_CA_DIR"]) / "ca.pem"
    wait_for(proxy_ca.exists, TIMEOUT, message=f"{proxy_ca} never appeared")
    requests = len(tls_origin.requests)
    through = interceptor(
        "flows", "replay", str(store), "tls-1", "--proxy", proxy.url, "--cacert", str(proxy_ca)
    )
    assert through.returncode == 0, through.stderr
    assert through.stdout.startswith("HTTP/1.1 200 OK\n")
    assert tls_origin.requests[requests:] == ["/1k"]
    # The origin's root is not the proxy's CA: the tunnel's certificate is the proxy's own.
    wrong = interceptor(
        "flows", "replay", str(store), "tls-1", "--proxy", proxy.url, "--cacert", str(root_pem)
    )
    assert wrong.returncode == 1 and "certificate not accepted" in wrong.stderr


def test_replays_that_cannot_be_made_are_refused_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    store = write_store(
        tmp_path / "flows.db",
        [flow("cut", url, method="POST", request_body=b"x" * 64, request_size=5000,
             request_cut=True),
        flow("unstored", url, method="POST", request_size=5000),
        flow("tunnel", url, kind="passthrough", method="CONNECT", url="a.test:443"),
        flow("socket", url, kind="websocket"),
        flow("refused", url)],
    )  # fmt: skip
    for args, status, words in [
        (["cut"], 2, "the store kept 64 of its 5000 request body bytes"),
        (["unstored"], 2, "the store kept none of its 5000 request body bytes"),
        (["tunnel"], 2, "is a passthrough tunnel: there is no request to replay"),
        (["socket"], 2, "is a WebSocket relay"),
        (["nope"], 2, "no flow 'nope'"),
        (["refused", "--proxy", "127.0.0.1:8080"], 2, "give it as http://host:port"),
        (["refused", "--cacert", str(tmp_path / "none.pem")], 2, "No such file"),
        (["refused", "--timeout", "0"], 2, "above 0"),
        (["refused"], 1, f"replay to 127.0.0.1:{url.split(':')[2][:-1]}: connection refused"),
        (["refused", "--proxy", f"http://127.0.0.1:{free_port()}"], 1, "connection refused"),
    ]:
        result = interceptor("flows", "replay", str(store), *args)
        assert result.returncode == status, (args, result)
        assert result.stderr.count("\n") == 1 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
