"""The addon API end to end: the issue's demo addon, bodies, containment, through real twistd.

The demo addon (examples/demo.py) is loaded as a script, as a user would: it rewrites a gzip
HTML page over plain HTTP and intercepted HTTPS, tags requests, counts a POST body, blocks a
path and awaits a Deferred and then asyncio in one hook, while other clients go on.
"""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    OriginServer,
    ProxyProcess,
    ProxyStartError,
    echo,
    error_line,
    free_port,
    respond,
    run_curl,
    wait_for,
)
from tests.test_operations import admin_env, admin_status, metric_value, scrape
from tests.tls_origin import FRUIT, TLSOrigin

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"
TIMEOUT = 20.0
PAGE = b"<html><body><p>cherry pie, cherry jam</p></body></html>\n"


@pytest.fixture
def demo(
    proxy_factory: Callable[..., ProxyProcess], tls_origin: tuple[TLSOrigin, Path]
) -> tuple[ProxyProcess, int]:
    """A proxy with the demo addon as a script and its admin endpoint: (proxy, admin port)."""
    admin_port = free_port()
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_HOOKS_SCRIPTS": str(DEMO),
            "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(tls_origin[1]),
            **admin_env(admin_port),
        }
    )
    wait_for(lambda: admin_status(admin_port, "/healthz") == 200, timeout=10)
    return proxy, admin_port


def _curl(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_curl("-x", proxy.url, *args, timeout=TIMEOUT)


@contextlib.contextmanager
def curl_in_background(proxy: ProxyProcess, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A curl fetching `url` through `proxy` while the test goes on; killed at the end."""
    process = subprocess.Popen(["curl", "-q", "-s", "-x", proxy.url, url], stdout=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_the_demo_addon_loads_and_says_what_it_handles(demo: tuple[ProxyProcess, int]) -> None:
    proxy, _ = demo
    proxy.wait_for_log(r"addon demo loaded: request, response")
    proxy.wait_for_log(r"reactor AsyncioSelectorReactor")


def test_a_gzip_html_page_is_rewritten_over_plain_http(
    demo: tuple[ProxyProcess, int], origin: OriginServer
) -> None:
    proxy, _ = demo
    url = origin.route(
        "/fruit.html",
        respond(
            gzip.compress(PAGE),
            headers=[("Content-Type", "text/html; charset=utf-8"), ("Content-Encoding", "gzip")],
        ),
    )
    result = _curl(proxy, "--compressed", "-i", url)
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert body == PAGE.replace(b"cherry", b"banana")
    assert b"X-Rewritten: 1" in head
    assert b"Content-Encoding: gzip" in head  # re-encoded as it came
    (req,) = origin.requests_for("/fruit.html")
    assert req.header("X-Seen") == "yes"


def test_a_gzip_html_page_is_rewritten_over_intercepted_https(
    demo: tuple[ProxyProcess, int], tls_origin: tuple[TLSOrigin, Path]
) -> None:
    proxy, _ = demo
    origin, _ = tls_origin
    ca = proxy.workdir / "ca" / "ca.pem"
    result = _curl(
        proxy,
        "--cacert",
        str(ca),
        "--compressed",
        "-i",
        f"https://localhost:{origin.port}/fruit.html",
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.rpartition(b"\r\n\r\n")  # after the CONNECT's own head
    assert body == FRUIT.replace(b"cherry", b"banana")
    assert b"X-Rewritten: 1" in head


def test_a_300_kb_post_arrives_whole_and_counted(
    demo: tuple[ProxyProcess, int], origin: OriginServer
) -> None:
    proxy, _ = demo
    url = origin.route("/upload", echo())
    body = bytes(range(256)) * (300_000 // 256) + b"x" * (300_000 % 256)
    result = run_curl("-x", proxy.url, "--data-binary", "@-", url, input=body, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    (req,) = origin.requests_for("/upload")
    assert req.header("X-Body-Len") == "300000"
    assert req.body == body
    assert result.stdout == body


def test_a_blocked_path_is_answered_by_the_addon(
    demo: tuple[ProxyProcess, int], origin: OriginServer
) -> None:
    proxy, _ = demo
    url = origin.route("/block/x", respond(b"never"))
    result = _curl(proxy, "-i", url)
    assert result.stdout.startswith(b"HTTP/1.1 403 Forbidden\r\n"), result.stdout
    assert result.stdout.endswith(b"\r\n\r\nblocked\n")
    assert origin.requests_for("/block/x") == []


def test_a_slow_hook_delays_only_its_own_client(
    demo: tuple[ProxyProcess, int], origin: OriginServer
) -> None:
    proxy, _ = demo
    slow_url = origin.route("/slow", respond(b"slow"))
    fast_url = origin.route("/fast", respond(b"fast"))
    with curl_in_background(proxy, slow_url) as slow:
        # The origin has answered /slow: its response hook now awaits a Deferred, then asyncio.
        wait_for(lambda: origin.requests_for("/slow") or None, TIMEOUT)
        fast = _curl(proxy, fast_url)
        assert fast.stdout == b"fast"
        assert slow.poll() is None, "the slow hook should still be waiting"
        out, _ = slow.communicate(timeout=TIMEOUT)
        assert out == b"slow"
    # Both awaits completed inside the hook (a failure would have been logged and counted).
    assert "addon demo failed" not in proxy.log_text(), proxy.log_tail()


INJECTING = """
from interceptor import http


def responseheaders(flow: http.HTTPFlow) -> None:
    flow.response.headers["X-Note"] = "a\\r\\nInjected: 1"


def response(flow: http.HTTPFlow) -> None:
    flow.response.status_code = 410
"""


def test_a_header_injection_is_that_hooks_failure_and_the_client_gets_the_rest(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    script = tmp_path / "inject.py"
    script.write_text(textwrap.dedent(INJECTING))
    admin_port = free_port()
    proxy = proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script), **admin_env(admin_port)})
    url = origin.route("/page", respond(b"the page", headers=[("Content-Type", "text/plain")]))
    result = _curl(proxy, "-i", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 410 Gone\r\n"), result.stdout
    assert b"Injected" not in result.stdout and b"X-Note" not in result.stdout
    assert result.stdout.endswith(b"\r\n\r\nthe page")
    proxy.wait_for_log(
        r"addon inject failed in responseheaders for http://.*/page \(request id \S+\): .*CR, LF"
    )
    text = scrape(admin_port)
    labels = {"addon": "inject", "event": "responseheaders"}
    assert metric_value(text, "interceptor_hook_failures_total", labels) == 1
    (entry,) = proxy.wait_for_access(lambda e: e.url.endswith("/page"))
    assert entry.status == 410


def test_a_script_that_imports_mitmproxy_stops_start_up_with_one_line(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    script = tmp_path / "old.py"
    script.write_text("from mitmproxy import http\n\ndef request(flow):\n    pass\n")
    with pytest.raises(ProxyStartError) as info:
        proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    text = str(info.value)
    assert "hooks.scripts" in text and "change `mitmproxy` to `interceptor`" in text, text
    assert "Traceback" not in text


LIFECYCLE = """
import asyncio
import logging
import time
from pathlib import Path

from interceptor import http
from interceptor.script import concurrent

MARKS = Path({marks!r})


def load(loader):
    MARKS.joinpath("load").write_text("1")


async def running():
    await asyncio.sleep(0.01)  # mitmproxy's `running` may await asyncio too
    MARKS.joinpath("running").write_text("1")


def done():
    MARKS.joinpath("done").write_text("1")


def http_connect(flow: http.HTTPFlow) -> None:
    if flow.request.host == "refused.test":
        flow.response = http.Response.make(403, b"no tunnels to refused.test\\n")


@concurrent
def request(flow: http.HTTPFlow) -> None:
    if flow.request.path == "/threaded":
        # In a thread, until the test says so: the reactor serves others meanwhile.
        logging.info("threaded request started")
        deadline = time.monotonic() + 10
        while not MARKS.joinpath("release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        logging.info("threaded request done")
    if flow.request.path == "/kill":
        flow.kill()
    # Left as str pairs on purpose: the proxy encodes them after the hook.
    flow.request.headers.fields.append(("X-Str", "given as str"))
"""


@pytest.fixture
def lifecycle(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> tuple[ProxyProcess, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "lifecycle.py"
    script.write_text(LIFECYCLE.format(marks=str(marks)))
    proxy = proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    return proxy, marks


def test_load_running_and_done_run_once_each(lifecycle: tuple[ProxyProcess, Path]) -> None:
    proxy, marks = lifecycle
    wait_for(lambda: (marks / "running").exists() or None, TIMEOUT)
    assert (marks / "load").exists() and not (marks / "done").exists()
    proxy.popen.terminate()
    assert proxy.popen.wait(timeout=TIMEOUT) == 0
    assert (marks / "done").exists()


def test_a_connect_refused_by_http_connect_gets_that_response(
    lifecycle: tuple[ProxyProcess, Path],
) -> None:
    proxy, _ = lifecycle
    result = _curl(proxy, "-v", "https://refused.test/")
    assert result.returncode == 56, result.stderr  # CONNECT tunnel failed
    assert b"CONNECT tunnel failed, response 403" in result.stderr


def test_a_concurrent_hook_runs_in_a_thread_and_str_headers_are_encoded(
    lifecycle: tuple[ProxyProcess, Path], origin: OriginServer
) -> None:
    proxy, marks = lifecycle
    slow_url = origin.route("/threaded", respond(b"threaded"))
    fast_url = origin.route("/other", respond(b"other"))
    with curl_in_background(proxy, slow_url) as slow:
        # Its hook runs in a thread and holds until the test releases it: meanwhile another
        # client's request goes through.
        proxy.wait_for_log(r"addon lifecycle: threaded request started", timeout=TIMEOUT)
        fast = _curl(proxy, fast_url)
        assert fast.stdout == b"other"
        assert slow.poll() is None, "the threaded hook should still be holding its request"
        (marks / "release").write_text("1")
        out, _ = slow.communicate(timeout=TIMEOUT)
        assert out == b"threaded"
    (req,) = origin.requests_for("/other")
    assert req.header("X-Str") == "given as str"
    proxy.wait_for_log(r"addon lifecycle: threaded request done")


def test_a_killed_flow_gets_nothing_and_is_logged_as_nothing(
    lifecycle: tuple[ProxyProcess, Path], origin: OriginServer
) -> None:
    proxy, _ = lifecycle
    url = origin.route("/kill", respond(b"never"))
    result = _curl(proxy, url)
    assert result.returncode == 56, result  # reset: the connection was cut (mitmproxy's kill)
    (entry,) = proxy.wait_for_access(lambda e: e.url.endswith("/kill"))
    assert entry.status == 0 and "killed" in (entry.error or "").lower(), entry
    assert origin.requests_for("/kill") == []


def test_an_addon_declaring_an_option_stops_start_up_with_one_line(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    script = tmp_path / "opts.py"
    script.write_text(
        "def load(loader):\n"
        "    loader.add_option('greeting', str, 'hi', 'what to say')\n\n"
        "def request(flow):\n"
        "    pass\n"
    )
    with pytest.raises(ProxyStartError) as info:
        proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    text = str(info.value)
    assert "hooks.scripts: addon opts declares option 'greeting'" in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("overflow", ["stream", "reject"])
def test_a_body_past_body_limit_streams_or_is_refused(
    overflow: str, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_HOOKS_SCRIPTS": str(DEMO),
            "INTERCEPTOR_HOOKS_BODY_LIMIT": "64 KiB",
            "INTERCEPTOR_HOOKS_BODY_OVERFLOW": overflow,
        }
    )
    body = bytes(range(256)) * 4096  # 1 MiB
    url = origin.route("/big", respond(body, headers=[("Content-Type", "application/zip")]))
    result = _curl(proxy, "-i", url)
    assert result.returncode == 0, result.stderr
    head, _, got = result.stdout.partition(b"\r\n\r\n")
    if overflow == "stream":
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got == body
    else:
        assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert error_line(got) == "response body larger than [hooks] body_limit (64 KiB)"
    upload = run_curl("-x", proxy.url, "--data-binary", "@-", origin.route("/up", echo()),
                      input=body, timeout=TIMEOUT)  # fmt: skip
    if overflow == "stream":
        assert upload.stdout == body
        (req,) = origin.requests_for("/up")
        assert req.body == body
    else:
        assert error_line(upload.stdout) == "request body larger than [hooks] body_limit (64 KiB)"
        assert origin.requests_for("/up") == []


CONNECTIONS = """
from interceptor import http


def responseheaders(flow: http.HTTPFlow) -> None:
    c, s = flow.client_conn, flow.server_conn
    flow.response.headers["X-Client"] = f"{c.tls_established} {c.tls_version} {c.sni} {c.alpn}"
    flow.response.headers["X-Server"] = f"{s.address} {s.tls_version} {s.sni}"
    flow.response.headers["X-Flow"] = f"{len(flow.id)} {flow.request.http_version}"
"""


def test_hooks_see_both_connections_tls_details(
    tmp_path: Path,
    proxy_factory: Callable[..., ProxyProcess],
    tls_origin: tuple[TLSOrigin, Path],
) -> None:
    script = tmp_path / "connections.py"
    script.write_text(CONNECTIONS)
    origin, root = tls_origin
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_HOOKS_SCRIPTS": str(script),
            "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root),
        }
    )
    ca = proxy.workdir / "ca" / "ca.pem"
    url = f"https://localhost:{origin.port}/fruit.html"
    result = _curl(proxy, "--cacert", str(ca), "-i", url)
    assert result.returncode == 0, result.stderr
    head = result.stdout.rpartition(b"\r\n\r\n")[0].decode("latin-1")
    assert "X-Client: True TLSv1.3 localhost b'http/1.1'" in head, head
    assert f"X-Server: ('localhost', {origin.port}) TLSv1.3 localhost" in head, head
    assert "X-Flow: 36 HTTP/1.1" in head, head
