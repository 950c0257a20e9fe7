"""Log output never hurts the proxy: a closed or full stdout drops lines, nothing else."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import pytest
from twisted.logger import LogLevel

from interceptor.logs import StdoutObserver, json_line
from tests.support import OriginServer, ProxyProcess, respond, tunnel


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
        assert re.search(rf" down, \d+\.\d{{4}}s, {ENDING}$", line), line
        return
    found = proxy.wait_for_log(r'^\{.*"kind": ?"tunnel".*\}$').group(0)
    entry = json.loads(found)
    assert (entry["url"], entry["bytes_up"]) == (origin.authority, len(sent))
    assert entry["bytes_down"] > 500 and entry["duration"] >= 0
    assert re.fullmatch(ENDING, entry["ending"]), entry
