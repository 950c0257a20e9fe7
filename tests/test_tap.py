"""The twistd plugin as a user meets it: discovery, options, and one-line start-up errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TWISTD = str(Path(sys.executable).with_name("twistd"))


def twistd(*args: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
    full_env.update(
        {"INTERCEPTOR_TLS_CA_DIR": str(tmp_path / "ca"), "INTERCEPTOR_ADMIN_LISTEN": ""}
    )
    full_env.update(env or {})
    # cwd outside the checkout: plugin discovery must work from the installed copy.
    return subprocess.run(
        [TWISTD, *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_plugin_is_listed_by_twistd_help(tmp_path):
    result = twistd("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    assert "interceptor" in result.stdout
    assert "intercepting forward proxy" in result.stdout


def test_plugin_options_help(tmp_path):
    result = twistd("interceptor", "--help", tmp_path=tmp_path)
    assert result.returncode == 0
    assert "--config" in result.stdout and "--listen" in result.stdout


def test_unknown_config_key_is_one_line_and_nonzero(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[proxy]\nidle_timout = 5\n")
    result = twistd("-n", "--pidfile=", "interceptor", "--config", str(cfg), tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(cfg) in lines[0] and "proxy.idle_timout" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_environment_value_is_one_line_and_nonzero(tmp_path):
    result = twistd(
        "-n",
        "--pidfile=",
        "interceptor",
        tmp_path=tmp_path,
        env={"INTERCEPTOR_PROXY_IDLE_TIMEOUT": "soon"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "INTERCEPTOR_PROXY_IDLE_TIMEOUT" in lines[0]


def test_port_in_use_is_one_line_and_nonzero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = twistd(
            "-n",
            "--pidfile=",
            "interceptor",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            tmp_path=tmp_path,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    # By then twistd's logging has taken over stderr, so the line arrives through the log.
    output = result.stderr + result.stdout
    errors = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(errors) == 1 and f"cannot listen on tcp:{port}" in errors[0], output
    assert "Address already in use" in errors[0]


@pytest.mark.parametrize("flag", ["--version"])
def test_version(tmp_path, flag):
    result = twistd("interceptor", flag, tmp_path=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("interceptor ")
