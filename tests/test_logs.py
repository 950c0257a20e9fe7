"""Log output never hurts the proxy: a closed or full stdout drops lines, nothing else."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.logger import LogLevel

from interceptor.logs import StdoutObserver, json_line
from tests.support import (
    OriginServer,
    ProxyProcess,
    error_line,
    exchange,
    free_port,
    get,
    respond,
    tunnel,
)


def event(**fields):
    base = {
        "log_format": "{client} {status}",
        "log_level": LogLevel.info,
        "log_namespace": "interceptor.access",
        "log_time": 1_700_000_000.0,
    }
    base.update(fields)
    return base


def test_json_line_is_flat():
    data = json.loads(json_line(event(client="127.0.0.1:1", status=200, obj=object())))
    assert data["text"] == "127.0.0.1:1 200"
    assert data["status"] == 200 and data["client"] == "127.0.0.1:1"
    assert data["level"] == "info" and data["namespace"] == "interceptor.access"
    assert "obj" not in data
    assert data["time"].startswith("2023-11-14T")


def test_closed_pipe_turns_logging_off_without_raising():
    r, w = os.pipe()
    try:
        obs = StdoutObserver("text", fd=w)
        os.close(r)
        obs(event(client="c", status=200))  # EPIPE: SIGPIPE is ignored under pytest
        assert obs.dead
        obs(event(client="c", status=200))
    finally:
        os.close(w)


def test_full_pipe_drops_lines_instead_of_blocking():
    r, w = os.pipe()
    try:
        obs = StdoutObserver("json", fd=w)
        for _ in range(10_000):  # a pipe holds 64 KiB: this overflows it many times
            obs(event(client="c" * 100, status=200))
        assert obs.dropped > 0
        assert not obs.dead
        assert os.read(r, 65536)
    finally:
        os.close(r)
        os.close(w)


def test_text_line_fast_path_matches_twistd_style():
    r, w = os.pipe()
    try:
        obs = StdoutObserver("text", fd=w)
        obs(event(log_format="{text}", text="127.0.0.1:1 GET http://a/ 200 5 0.0010s"))
        obs(event(log_format="{client} {status}", client="c", status=404))
        lines = os.read(r, 65536).decode().splitlines()
    finally:
        os.close(r)
        os.close(w)
    assert lines[0] == (
        "2023-11-14T22:13:20+0000 [interceptor.access#info] 127.0.0.1:1 GET http://a/ 200 5 0.0010s"
    )
    assert lines[1].endswith("[interceptor.access#info] c 404")


# -- the access log's line for a tunnel, when it closes (a real proxy) ------------------------


def _tunnel_through(proxy: ProxyProcess, origin: OriginServer) -> bytes:
    """A passthrough CONNECT carrying one GET, then the client's FIN; what it sent."""
    with tunnel(proxy.port, origin.authority) as conn:
        sent = f"GET /t HTTP/1.1\r\nHost: {origin.authority}\r\nConnection: close\r\n\r\n".encode()
        conn.send(sent)
        assert conn.read_until_close().endswith(b"x" * 500)
    return sent


# The origin closes after its answer: its FIN is relayed, then the client closes.
ENDING = r"client clean after upstream FIN"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_tunnel_is_logged_when_it_closes_with_its_bytes_and_ending(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, fmt: str
) -> None:
    proxy = proxy_factory(
        '[tls]\npassthrough = ["127.0.0.1"]\n', env={"INTERCEPTOR_LOG_FORMAT": fmt}
    )
    origin.route("/t", respond(b"x" * 500))
    sent = _tunnel_through(proxy, origin)
    if fmt == "text":
        line = proxy.wait_for_log(rf"tunnel {origin.authority} closed: .*$").group(0)
        assert f"closed: {len(sent)} bytes up, " in line
        m = re.search(rf" down, \d+\.\d{{4}}s, {ENDING} id=(\S+)$", line)
        assert m is not None, line
        # The same id as the CONNECT's line when it opened.
        (opened,) = proxy.wait_for_access(lambda e: e.method == "CONNECT")
        assert opened.id == m[1], (opened, line)
        return
    found = proxy.wait_for_log(r'^\{.*"kind": ?"tunnel".*\}$').group(0)
    entry = json.loads(found)
    opening = proxy.wait_for_log(r'^\{.*"method": ?"CONNECT".*\}$').group(0)
    assert entry["id"] == json.loads(opening)["id"], (entry, opening)
    assert (entry["url"], entry["bytes_up"]) == (origin.authority, len(sent))
    assert entry["bytes_down"] > 500 and entry["duration"] >= 0
    assert re.fullmatch(ENDING, entry["ending"]), entry


# -- request ids: one id joins an exchange's access line, its hook failures and its error body --

FAILING_HOOK = """
def request(flow):
    if flow.request.path == "/boom":
        raise RuntimeError("boom")
"""


def test_one_request_id_joins_the_access_line_a_hook_failure_and_an_error_body(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer, tmp_path: Path
) -> None:
    script = tmp_path / "failing.py"
    script.write_text(FAILING_HOOK)
    proxy = proxy_factory(env={"INTERCEPTOR_HOOKS_SCRIPTS": str(script)})
    origin.route("/boom", respond(b"served anyway"))
    resp, conn = exchange(proxy.port, get(origin.url("/boom")))
    conn.close()
    assert resp.status == 200 and resp.body == b"served anyway"
    (served,) = proxy.wait_for_access(lambda e: e.url == origin.url("/boom"))
    failure = proxy.wait_for_log(r"addon failing failed in request for \S+ \(request id (\S+)\)")
    assert failure[1] == served.id, failure.group(0)

    refused = f"http://127.0.0.1:{free_port()}/gone"
    resp, conn = exchange(proxy.port, get(refused))
    conn.close()
    assert resp.status == 502
    (line,) = proxy.wait_for_access(lambda e: e.url == refused)
    assert error_line(resp.body) == "upstream refused the connection"
    assert resp.body.decode().endswith(f"(request id {line.id})\n"), (resp.body, line)
    assert line.id != served.id
