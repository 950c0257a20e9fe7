"""The addons in examples/ and examples/mitmproxy/, each loaded as a script into a real twistd
proxy and checked end to end with curl or raw sockets, as a user would copy and run them.

One proxy per group of examples that do not interfere (started once for the module):

* ours: add_header, block_host, rewrite_html, log_json_bodies, async_lookup;
* mitmproxy's: http-reply-from-proxy, http-redirect-requests, http-modify-query-string,
  http-add-header, internet-in-mirror (in that order: the query string must be added after
  http-reply-from-proxy compared the URL);
* http-stream-modify alone (it streams every response, which would starve the others of bodies);
* nonblocking alone (it holds every request for 5 s).

Names the examples target (example.com, example.org, mitmproxy.org, ads.example, ...) are mapped
to loopback origins with `[upstream] hosts`: nothing here leaves the machine.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import os
import re
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from tests.support import (
    OriginServer,
    ProxyLauncher,
    ProxyProcess,
    RawConnection,
    drip,
    echo,
    get,
    respond,
    run_curl,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MITMPROXY = EXAMPLES / "mitmproxy"
TIMEOUT = 20.0

OUR_SCRIPTS = ["add_header", "block_host", "rewrite_html", "log_json_bodies", "async_lookup"]
MITMPROXY_SCRIPTS = [
    "http-reply-from-proxy",
    "http-redirect-requests",
    "http-modify-query-string",
    "http-add-header",
    "internet-in-mirror",
]


def _scripts(directory: Path, names: list[str]) -> str:
    """The value of INTERCEPTOR_HOOKS_SCRIPTS for these example files (absolute: the proxy's
    working directory is its own temporary one)."""
    return ",".join(str(directory / f"{name}.py") for name in names)


def _alive(proxy: ProxyProcess) -> ProxyProcess:
    """The module's proxy, failing fast if an earlier test left it dead."""
    if not proxy.running():
        pytest.fail(f"the proxy exited ({proxy.returncode}); log tail:\n{proxy.log_tail()}")
    return proxy


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLauncher]:
    """Starts this module's proxies, each at most once, and stops them all at the end."""
    started = ProxyLauncher(tmp_path_factory.mktemp("examples"))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def _ours(launcher: ProxyLauncher) -> ProxyProcess:
    # body_limit with "reject": a body that block_host waited for would be refused with 413,
    # so a 403 for a large upload shows it answered on the head alone.
    return launcher.start(
        env={
            "INTERCEPTOR_HOOKS_SCRIPTS": _scripts(EXAMPLES, OUR_SCRIPTS),
            "INTERCEPTOR_UPSTREAM_HOSTS": (
                "ads.example=127.0.0.1,tracker.example=127.0.0.1,api.example=127.0.0.1"
            ),
            "INTERCEPTOR_HOOKS_BODY_LIMIT": "64 KiB",
            "INTERCEPTOR_HOOKS_BODY_OVERFLOW": "reject",
        }
    )


@pytest.fixture
def ours(_ours: ProxyProcess) -> ProxyProcess:
    """A proxy running our five examples."""
    return _alive(_ours)


@pytest.fixture(scope="module")
def _mitm(launcher: ProxyLauncher) -> ProxyProcess:
    # example.org on another loopback address than mitmproxy.org: a request that was not
    # redirected reaches a different origin.
    return launcher.start(
        env={
            "INTERCEPTOR_HOOKS_SCRIPTS": _scripts(MITMPROXY, MITMPROXY_SCRIPTS),
            "INTERCEPTOR_UPSTREAM_HOSTS": (
                "example.com=127.0.0.1,example.org=127.0.0.2,mitmproxy.org=127.0.0.1"
            ),
        }
    )


@pytest.fixture
def mitm(_mitm: ProxyProcess) -> ProxyProcess:
    """A proxy running five of mitmproxy's examples together."""
    return _alive(_mitm)


@pytest.fixture(scope="module")
def _streaming(launcher: ProxyLauncher) -> ProxyProcess:
    return launcher.start(
        env={"INTERCEPTOR_HOOKS_SCRIPTS": _scripts(MITMPROXY, ["http-stream-modify"])}
    )


@pytest.fixture
def streaming(_streaming: ProxyProcess) -> ProxyProcess:
    """A proxy running mitmproxy's http-stream-modify."""
    return _alive(_streaming)


@pytest.fixture(scope="module")
def _nonblocking(launcher: ProxyLauncher) -> ProxyProcess:
    return launcher.start(env={"INTERCEPTOR_HOOKS_SCRIPTS": _scripts(MITMPROXY, ["nonblocking"])})


@pytest.fixture
def nonblocking(_nonblocking: ProxyProcess) -> ProxyProcess:
    """A proxy running mitmproxy's nonblocking example."""
    return _alive(_nonblocking)


def _curl(proxy: ProxyProcess, *args: str, body: bytes | None = None) -> tuple[bytes, bytes]:
    """`curl -i` through `proxy`: (head, body) of the last response; fails on a curl error."""
    result = run_curl("-x", proxy.url, "-i", *args, input=body, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    head, _, got = result.stdout.rpartition(b"\r\n\r\n")  # after any 100 Continue's head
    return head, got


def _header(head: bytes, name: str) -> str | None:
    """A header's value in a response head as curl printed it (the first; None if absent)."""
    found = re.search(rb"^" + re.escape(name.encode()) + rb": *([^\r\n]*)", head, re.I | re.M)
    return found.group(1).decode("latin-1") if found else None


def _popen_curl(proxy: ProxyProcess, url: str) -> subprocess.Popen[bytes]:
    """curl in the background (no *_proxy variable may send it elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    cmd = ["curl", "-q", "-s", "--max-time", str(TIMEOUT), "-x", proxy.url, url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.kill()
    popen.wait(TIMEOUT)


# -- the files themselves ----------------------------------------------------------------------

# sha256 (its first half) of each file as it is in mitmproxy's repository (examples/addons/,
# commit 8fc25b304593).
UPSTREAM_SHA256 = {
    "http-add-header.py": "0c13f192216cd46ef58f01a5fa435a12",
    "http-modify-query-string.py": "a578427585c5c44070ff54117568ec9d",
    "http-redirect-requests.py": "3c0e604e2866979b09ab562969880640",
    "http-reply-from-proxy.py": "a5ad2d548d67c5d0546602466841052d",
    "http-stream-modify.py": "901c47e1615753f9b338fad83d37cdb9",
    "internet-in-mirror.py": "e4acbcc6627c0866c6482acf30eca64f",
    "nonblocking.py": "38851ae3433095b9e744a9a5c9f11383",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_a_mitmproxy_copy_differs_only_in_its_imports_and_header(name: str) -> None:
    text = (MITMPROXY / name).read_text(encoding="utf-8")
    header, sep, body = text.partition("\n\n")
    assert sep and all(line.startswith("# ") for line in header.splitlines()), header
    assert "# Copyright (c) 2013, Aldo Cortesi. All rights reserved." in header
    assert "MIT" in header and "github.com/mitmproxy/mitmproxy" in header
    assert f"INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/{name}" in header
    # Undo the one permitted change; what is left must be mitmproxy's file, byte for byte.
    upstream = re.sub(r"(?m)^(from|import) interceptor([. ])", r"\1 mitmproxy\2", body)
    assert hashlib.sha256(upstream.encode()).hexdigest()[:32] == UPSTREAM_SHA256[name]
    assert "mitmproxy" not in "".join(re.findall(r"(?m)^(?:from|import) .*$", body))
    assert (MITMPROXY / "LICENSE").read_text().startswith("Copyright (c) 2013, Aldo Cortesi.")


@pytest.mark.parametrize("name", OUR_SCRIPTS)
def test_an_example_says_what_it_does_and_how_to_load_it(name: str) -> None:
    docstring = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    assert docstring is not None
    assert f'scripts = ["examples/{name}.py"]' in docstring
    assert f"INTERCEPTOR_HOOKS_SCRIPTS=examples/{name}.py" in docstring


# -- ours --------------------------------------------------------------------------------------


def test_our_examples_load_and_say_what_they_handle(ours: ProxyProcess) -> None:
    for line in (
        "addon addheader loaded: responseheaders",
        "addon block_host loaded: requestheaders",
        "addon rewrite_html loaded: response",
        "addon log_json_bodies loaded: request",
        "addon async_lookup loaded: requestheaders",
    ):
        ours.wait_for_log(re.escape(line))


def test_add_header_numbers_every_response(ours: ProxyProcess, origin: OriginServer) -> None:
    url = origin.route("/counted", respond(b"counted", headers=[("Content-Type", "text/plain")]))
    first, body = _curl(ours, url)
    second, _ = _curl(ours, url)
    assert body == b"counted"
    count = _header(first, "X-Response-Count")
    assert count is not None and count.isdigit(), first
    assert _header(second, "X-Response-Count") == str(int(count) + 1)


def test_block_host_answers_403_itself(ours: ProxyProcess, origin: OriginServer) -> None:
    origin.route("/", respond(b"never"))
    head, body = _curl(ours, f"http://ads.example:{origin.port}/")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), head
    assert body == b"blocked by block_host: ads.example\n"
    assert _header(head, "X-Response-Count") is not None  # a response made by an addon, too
    # An upload past body_limit (64 KiB, "reject") would be a 413 had the body been waited for.
    upload = b"x" * (1 << 20)
    blocked = f"http://tracker.example:{origin.port}/"
    # With Expect, curl sends the body only once told to: the early 403 cannot race the upload.
    expect = "Expect: 100-continue"
    head, body = _curl(ours, "-H", expect, "--data-binary", "@-", blocked, body=upload)
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), head
    assert body == b"blocked by block_host: tracker.example\n"
    assert origin.requests == []
    # Another name mapped to the same origin goes through: the 403s were the addon's.
    head, body = _curl(ours, f"http://api.example:{origin.port}/")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"never"


PAGE = (
    '<html><head><meta charset="utf-8"><title>Cherry</title></head>'
    "<body><p>cherry pie, Cherry jam, Kirschen für alle</p></body></html>\n"
).encode()
REWRITTEN = PAGE.replace(b"cherry", b"banana").replace(b"Cherry", b"Banana")
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda data: data,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.compress,
}


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_rewrite_html_rewrites_a_page_in_any_coding(
    coding: str, ours: ProxyProcess, origin: OriginServer
) -> None:
    headers = [("Content-Type", "text/html; charset=utf-8")]
    if coding != "identity":
        headers.append(("Content-Encoding", coding))
    url = origin.route("/page.html", respond(ENCODERS[coding](PAGE), headers=headers))
    head, body = _curl(ours, "--compressed", url)
    assert body == REWRITTEN
    assert _header(head, "Content-Encoding") == (None if coding == "identity" else coding)


def test_rewrite_html_leaves_other_types_alone(ours: ProxyProcess, origin: OriginServer) -> None:
    text = b"cherry, as plain text\n"
    url = origin.route("/note.txt", respond(text, headers=[("Content-Type", "text/plain")]))
    _, body = _curl(ours, url)
    assert body == text


def test_log_json_bodies_logs_the_body_with_the_addons_name(
    ours: ProxyProcess, origin: OriginServer
) -> None:
    url = origin.route("/api/items", echo())
    sent = b'{"n": 3, "fruit": "cherry"}'
    json_type = "Content-Type: application/json"
    _, body = _curl(ours, "-H", json_type, "--data-binary", "@-", url, body=sent)
    assert body == sent  # the origin got it unchanged
    ours.wait_for_log(re.escape(f'addon log_json_bodies: POST {url} {{"fruit": "cherry", "n": 3}}'))
    _curl(ours, "-H", json_type, "--data-binary", "{oops", f"{url}?bad")
    ours.wait_for_log(re.escape(f"addon log_json_bodies: POST {url}?bad: body is not JSON"))
    _curl(ours, "-H", "Content-Type: text/plain", "--data-binary", "plain-marker", f"{url}?txt")
    ours.wait_for_access(lambda e: e.url.endswith("?txt"))  # logged after the request hook
    assert "plain-marker" not in ours.log_text()


def test_async_lookup_tags_the_request_after_awaiting_asyncio_and_a_deferred(
    ours: ProxyProcess, origin: OriginServer
) -> None:
    origin.route("/tagged", respond(b"tagged"))
    _curl(ours, origin.url("/tagged"))
    _curl(ours, f"http://api.example:{origin.port}/tagged")
    by_host, by_name = origin.requests_for("/tagged")
    assert by_host.header("X-Lookup") == "owner=loopback; risk=low"
    assert by_name.header("X-Lookup") == "owner=unknown; risk=unrated"
    assert "async_lookup failed" not in ours.log_text()


# -- mitmproxy's -------------------------------------------------------------------------------


def test_mitmproxy_examples_load_as_they_are(mitm: ProxyProcess) -> None:
    for name in MITMPROXY_SCRIPTS:
        if name == "http-add-header":  # an `addons` list: named after its class, AddHeader
            name = "addheader"
        mitm.wait_for_log(re.escape(f"addon {name} loaded: "))
    mitm.wait_for_log(r"addon addheader loaded: response$")


def test_http_reply_from_proxy_answers_its_url(mitm: ProxyProcess, origin: OriginServer) -> None:
    # http://example.com/path is answered by the addon: example.com:80 (127.0.0.1:80 here) is
    # never connected to. Any other URL of that host reaches its origin.
    head, body = _curl(mitm, "http://example.com/path")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert _header(head, "Content-Type") == "text/html"
    assert body == b"Hello World"
    origin.route("/path", respond(b"from the origin"))
    _, body = _curl(mitm, f"http://example.com:{origin.port}/path")
    assert body == b"from the origin"


def test_http_redirect_requests_sends_example_org_to_mitmproxy_org(
    mitm: ProxyProcess, origin: OriginServer
) -> None:
    # `origin` is mitmproxy.org (127.0.0.1); example.org is 127.0.0.2, on the same port, since
    # the example changes the host and keeps the port.
    origin.route("/page", respond(b"mitmproxy.org's page"))
    with OriginServer(host="127.0.0.2") as example_org:
        example_org.listen("127.0.0.2", origin.port)
        example_org.start()
        example_org.route("/page", respond(b"example.org's page"))
        _, body = _curl(mitm, f"http://example.org:{origin.port}/page")
        assert body == b"mitmproxy.org's page"
        assert example_org.requests == []
    (req,) = origin.requests_for("/page")
    assert req.header("Host") == f"mitmproxy.org:{origin.port}"


def test_http_modify_query_string_adds_a_parameter(
    mitm: ProxyProcess, origin: OriginServer
) -> None:
    url = origin.route("/search", respond(b"found"))
    _curl(mitm, f"{url}?q=cherry")
    (req,) = origin.requests_for("/search")
    assert req.target == "/search?q=cherry&mitmproxy=rocks"


def test_http_add_header_counts_responses(mitm: ProxyProcess, origin: OriginServer) -> None:
    url = origin.route("/counted", respond(b"counted"))
    first, _ = _curl(mitm, url)
    second, _ = _curl(mitm, url)
    count = _header(first, "count")
    assert count is not None and count.isdigit(), first
    assert _header(second, "count") == str(int(count) + 1)


def test_internet_in_mirror_injects_its_style(mitm: ProxyProcess, origin: OriginServer) -> None:
    headers = [("Content-Type", "text/html"), ("Content-Encoding", "gzip")]
    url = origin.route("/mirror.html", respond(gzip.compress(PAGE), headers=headers))
    head, body = _curl(mitm, "--compressed", url)
    style = b"<style>body {transform: scaleX(-1);}</style>"
    assert body == PAGE.replace(b"</head>", style + b"</head>")
    assert _header(head, "Content-Encoding") == "gzip"


# -- http-stream-modify ------------------------------------------------------------------------


def test_http_stream_modify_transforms_a_body_as_it_streams(
    streaming: ProxyProcess, origin: OriginServer
) -> None:
    gate = threading.Event()
    parts: list[bytes | threading.Event] = [b"foo one\n", gate, b"foo two\n"]
    url = origin.route("/stream", drip(parts, headers=[("Content-Type", "text/plain")]))
    try:
        with RawConnection(streaming.port, timeout=TIMEOUT) as conn:
            conn.send(get(url))
            # The first part is through, transformed, while the origin holds back the rest.
            seen = conn.wait_buffered(b"bar one\n")
            assert b"foo" not in seen
            gate.set()
            resp = conn.read_response()
    finally:
        gate.set()
    assert resp.status == 200
    assert resp.body == b"bar one\nbar two\n"


def test_http_stream_modify_reframes_a_length_delimited_body(
    streaming: ProxyProcess, origin: OriginServer
) -> None:
    # Small enough to arrive in one read: a "foo" split across two reads stays "foo", as the
    # example's docstring warns (in mitmproxy too).
    body = b"foo, food, foobar\n" * 50
    url = origin.route("/sized", respond(body))
    with RawConnection(streaming.port, timeout=TIMEOUT) as conn:
        conn.send(get(url))
        resp = conn.read_response()
    # A transform may change lengths: the proxy sends it chunked instead.
    assert resp.chunked and resp.header("Content-Length") is None
    assert resp.body == b"bar, bard, barbar\n" * 50


# -- nonblocking -------------------------------------------------------------------------------


def test_nonblocking_lets_others_through_while_a_hook_waits(
    nonblocking: ProxyProcess, origin: OriginServer
) -> None:
    # Each request waits 5 s in the example's hook. While /a waits: a client the proxy answers
    # itself (the CA page, no `request` hook) finishes, and /b's hook starts.
    a_url = origin.route("/a", respond(b"a"))
    b_url = origin.route("/b", respond(b"b"))
    host = re.escape(origin.host)  # the example logs host and path, without the port
    a = _popen_curl(nonblocking, a_url)
    b: subprocess.Popen[bytes] | None = None
    try:
        nonblocking.wait_for_log(rf"addon nonblocking: handle request: {host}/a", TIMEOUT)
        _, ca = _curl(nonblocking, "http://interceptor.ca/ca.pem")
        assert b"BEGIN CERTIFICATE" in ca
        assert a.poll() is None, "/a should still be waiting in its hook"
        b = _popen_curl(nonblocking, b_url)
        nonblocking.wait_for_log(rf"addon nonblocking: handle request: {host}/b", TIMEOUT)
        assert a.poll() is None, "/a should still be waiting in its hook"
        assert a.communicate(timeout=TIMEOUT)[0] == b"a"
        assert b.communicate(timeout=TIMEOUT)[0] == b"b"
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    log = nonblocking.log_text()
    order = [("handle", "a"), ("handle", "b"), ("start ", "a"), ("start ", "b")]
    marks = [f"{what} request: {origin.host}/{path}" for what, path in order]
    positions = [log.find(mark) for mark in marks]
    assert -1 not in positions and positions == sorted(positions), (marks, positions)
