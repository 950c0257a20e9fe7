"""Where each setting came from (explain_config), its redaction, and `--print-config`."""

from __future__ import annotations

import dataclasses
import socket
import tomllib
from pathlib import Path

import pytest

from interceptor import config as config_module
from interceptor.config import (
    REDACTED,
    Config,
    ExplainedConfig,
    explain_config,
    load_config,
    resolve_admin_listen,
)
from tests.support import LOOPBACK, failed_start, free_port

TOKEN = "file-token-0123456789abcdef"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "interceptor.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def sources(explained: ExplainedConfig) -> dict[str, str]:
    return {s.name: s.source for s in explained.settings}


def comments(toml_text: str) -> dict[str, str]:
    """`section.key` -> the comment after its value, from printed TOML."""
    found: dict[str, str] = {}
    section = ""
    for line in toml_text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key = line.split(" = ", 1)[0]
            found[f"{section}.{key}"] = line.rpartition("  # ")[2]
    return found


# --- sources ------------------------------------------------------------------------------------


def test_every_value_is_a_default_without_file_env_or_overrides() -> None:
    explained = explain_config(None, {})
    assert explained.config == Config()
    assert [s.name for s in explained.settings] == [f.name for f in config_module._FIELDS]
    assert set(sources(explained).values()) == {"default"}


def test_override_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nidle_timeout = 5\nconnect_timeout = 5\nheader_timeout = 5\n")
    environ = {"INTERCEPTOR_PROXY_IDLE_TIMEOUT": "6", "INTERCEPTOR_PROXY_CONNECT_TIMEOUT": "6"}
    explained = explain_config(
        path, environ, {"proxy.idle_timeout": 7}, {"proxy.idle_timeout": "--idle"}
    )

    got = {s.name: (s.value, s.source) for s in explained.settings}
    assert got["proxy.idle_timeout"] == (7.0, "command line (--idle)")
    assert got["proxy.connect_timeout"] == (6.0, "env INTERCEPTOR_PROXY_CONNECT_TIMEOUT")
    assert got["proxy.header_timeout"] == (5.0, f"file {path}")
    assert got["proxy.half_close_timeout"] == (10.0, "default")
    # The same layering is what load_config returns: the values agree with the sources.
    assert explained.config == load_config(path, environ, {"proxy.idle_timeout": 7})


def test_an_override_without_a_flag_is_just_the_command_line() -> None:
    explained = explain_config(None, {}, {"proxy.listen": ["tcp:9999"]})
    assert explained.setting("proxy.listen").source == "command line"


def test_the_file_named_by_interceptor_config_is_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nformat = 'json'\n")
    explained = explain_config(None, {"INTERCEPTOR_CONFIG": path})
    assert explained.setting("log.format").source == f"file {path}"
    assert explained.config.source == path


def test_setting_of_an_unknown_key_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        explain_config(None, {}).setting("proxy.nope")


# --- redaction ----------------------------------------------------------------------------------


def test_only_secrets_are_marked_and_paths_are_not_secrets() -> None:
    secret = {f.name for f in config_module._FIELDS if f.redact is not None}
    assert secret == {"web.token", "upstream.proxy"}
    explained = explain_config(None, {})
    assert not explained.setting("access.users_file").secret
    assert explained.setting("web.token").secret


def test_a_token_is_redacted_whole_but_kept_in_the_config() -> None:
    explained = explain_config(None, {"INTERCEPTOR_WEB_TOKEN": TOKEN})
    token = explained.setting("web.token")
    assert token.value == TOKEN == explained.config.web.token
    assert token.shown() == REDACTED
    text = explained.to_toml()
    assert TOKEN not in text
    assert tomllib.loads(text)["web"]["token"] == REDACTED
    assert comments(text)["web.token"] == "from env INTERCEPTOR_WEB_TOKEN, redacted"


def test_an_empty_token_is_shown_since_it_hides_nothing() -> None:
    # Empty means "a random one each start": worth seeing, and no secret.
    text = explain_config(None, {}).to_toml()
    assert tomllib.loads(text)["web"]["token"] == ""
    assert comments(text)["web.token"] == "from default"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:s3cret@proxy.example:3128", f"http://alice:{REDACTED}@proxy.example:3128"),
        ("http://alice:a:b@c@proxy.example", f"http://alice:{REDACTED}@proxy.example"),
        ("http://:s3cret@proxy.example", f"http://:{REDACTED}@proxy.example"),
        ("http://alice@proxy.example:3128", "http://alice@proxy.example:3128"),
        ("http://proxy.example:3128", "http://proxy.example:3128"),
        ("http://alice:s3cret@[::1", REDACTED),
    ],
)
def test_a_url_secret_loses_only_its_password(url: str, shown: str) -> None:
    assert config_module._SECRET_URL(url) == shown


# --- the printed TOML ---------------------------------------------------------------------------


def test_printed_defaults_load_back_to_the_same_config(tmp_path: Path) -> None:
    text = explain_config(None, {}).to_toml()
    document = tomllib.loads(text)
    assert [f"{s}.{k}" for s, table in document.items() for k in table] == [
        f.name for f in config_module._FIELDS
    ]
    path = write(tmp_path, text)
    assert load_config(path, {}) == dataclasses.replace(Config(), source=path)


def test_printed_values_of_every_kind_load_back(tmp_path: Path) -> None:
    odd = str(tmp_path / 'a "quoted"\\path\nwith a newline')
    explained = explain_config(
        None,
        {
            "INTERCEPTOR_UPSTREAM_HOSTS": "a.example=127.0.0.1,b.example=::1",
            "INTERCEPTOR_LIMITS_MAX_OPEN_FILES": "4096",
            "INTERCEPTOR_TLS_PASSTHROUGH": "*.bank.example,10.0.0.0/8",
            "INTERCEPTOR_TLS_VERIFY_UPSTREAM": "off",
            "INTERCEPTOR_PROXY_IDLE_TIMEOUT": "1e20",
        },
        {"capture.store": odd, "admin.listen": []},
    )
    text = explained.to_toml()
    path = write(tmp_path, text)
    assert load_config(path, {}) == dataclasses.replace(explained.config, source=path)
    assert len(text.splitlines()) == len(explain_config(None, {}).to_toml().splitlines())


def test_each_value_says_where_it_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nconnect_timeout = 3\n")
    explained = explain_config(
        path,
        {"INTERCEPTOR_PROXY_IDLE_TIMEOUT": "7"},
        {"proxy.listen": ["tcp:9090"]},
        {"proxy.listen": "--listen"},
    )
    got = comments(explained.to_toml())
    assert got["proxy.listen"] == "from command line (--listen)"
    assert got["proxy.idle_timeout"] == "from env INTERCEPTOR_PROXY_IDLE_TIMEOUT"
    assert got["proxy.connect_timeout"] == f"from file {path}"
    assert got["proxy.header_timeout"] == "from default"
    assert len(got) == len(config_module._FIELDS)


def test_a_file_name_cannot_break_out_of_its_comment(tmp_path: Path) -> None:
    path = tmp_path / "odd\nname\x01.toml"
    path.write_text("[proxy]\nconnect_timeout = 3\n", encoding="utf-8")
    text = explain_config(str(path), {}).to_toml()
    assert tomllib.loads(text)["proxy"]["connect_timeout"] == 3.0
    assert comments(text)["proxy.connect_timeout"] == f"from file {tmp_path}/odd name?.toml"


@pytest.mark.parametrize(
    ("listen", "note"),
    [
        ("tcp:9090:interface=127.0.0.1", "auto: tcp:9091:interface=127.0.0.1"),
        ("unix:/tmp/proxy.sock", "auto: off (no TCP proxy port)"),
    ],
)
def test_auto_admin_listen_is_printed_as_configured_with_what_it_means(
    listen: str, note: str
) -> None:
    explained = explain_config(None, {}, {"proxy.listen": [listen]})
    text = explained.to_toml()
    assert tomllib.loads(text)["admin"]["listen"] == ["auto"]
    assert comments(text)["admin.listen"] == f"from default; {note}"


def test_resolve_admin_listen() -> None:
    assert resolve_admin_listen(Config()) == ("tcp:8081:interface=127.0.0.1",)
    assert resolve_admin_listen(load_config(None, {"INTERCEPTOR_ADMIN_LISTEN": ""})) == ()
    given = load_config(None, {"INTERCEPTOR_ADMIN_LISTEN": "tcp:7000"})
    assert resolve_admin_listen(given) == ("tcp:7000",)


# --- twistd interceptor --print-config ----------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def test_print_config_prints_what_a_start_would_use_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(f'[proxy]\nconnect_timeout = 3\n\n[web]\ntoken = "{TOKEN}"\n')
    port = free_port()
    result = failed_start(
        tmp_path,
        "--config",
        str(config),
        "--listen",
        f"{LOOPBACK}:{port}",
        "--print-config",
        INTERCEPTOR_PROXY_IDLE_TIMEOUT="7",
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" not in result.stdout + result.stderr

    document = tomllib.loads(result.stdout)
    assert document["proxy"]["listen"] == [f"tcp:{port}:interface={LOOPBACK}"]
    assert document["proxy"]["idle_timeout"] == 7.0
    assert document["proxy"]["connect_timeout"] == 3.0
    assert document["proxy"]["header_timeout"] == 10.0
    assert document["tls"]["ca_dir"] == str(tmp_path / "ca")
    assert document["web"]["token"] == REDACTED
    assert TOKEN not in result.stdout + result.stderr
    assert len(comments(result.stdout)) == len(config_module._FIELDS)

    got = comments(result.stdout)
    assert got["proxy.listen"] == "from command line (--listen)"
    assert got["proxy.idle_timeout"] == "from env INTERCEPTOR_PROXY_IDLE_TIMEOUT"
    assert got["proxy.connect_timeout"] == f"from file {config}"
    assert got["proxy.header_timeout"] == "from default"
    assert got["web.token"] == f"from file {config}, redacted"

    # Nothing started: the port is free and no CA was made (a start creates one first).
    assert port_is_free(port)
    assert not (tmp_path / "ca").exists()


def test_print_config_with_a_bad_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[proxy]\nidle_timout = 5\n")
    result = failed_start(tmp_path, "--config", str(config), "--print-config")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "proxy.idle_timout" in lines[0]


def test_help_mentions_print_config(tmp_path: Path) -> None:
    result = failed_start(tmp_path, "--help")
    assert result.returncode == 0
    assert "--print-config" in result.stdout
