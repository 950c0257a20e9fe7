"""Log output never hurts the proxy: a closed or full stdout drops lines, nothing else."""

from __future__ import annotations

import json
import os

from twisted.logger import LogLevel

from interceptor.logs import StdoutObserver, json_line


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
