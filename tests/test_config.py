"""Tests for interceptor.config: defaults, file/env/override parsing, precedence, errors."""

from __future__ import annotations

import dataclasses
import os
import pickle
import pwd
import tomllib
from pathlib import Path

import pytest

from interceptor import config as config_module
from interceptor.config import (
    DEFAULT_CONFIG_ENV,
    AccessConfig,
    AdminConfig,
    CaptureConfig,
    Config,
    ConfigError,
    HooksConfig,
    LimitsConfig,
    LogConfig,
    ProxyConfig,
    TLSConfig,
    UpstreamConfig,
    WebConfig,
    load_config,
)

ROOT = Path(__file__).parent.parent
REFERENCE = ROOT / "conf/interceptor.toml"
DOCS = ROOT / "docs/configuration.md"
SECTION_CLASSES = {
    "proxy": ProxyConfig,
    "upstream": UpstreamConfig,
    "tls": TLSConfig,
    "access": AccessConfig,
    "limits": LimitsConfig,
    "admin": AdminConfig,
    "log": LogConfig,
    "hooks": HooksConfig,
    "capture": CaptureConfig,
    "web": WebConfig,
}
ALL_KEYS = [f.name for f in config_module._FIELDS]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "interceptor.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def get(cfg: Config, name: str) -> object:
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


# --- defaults and the reference file ----------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg == Config()
    assert cfg.source == ""
    assert cfg.proxy.listen == ("tcp:8080:interface=127.0.0.1",)
    assert cfg.proxy.idle_timeout == 60.0
    assert cfg.proxy.connect_timeout == 10.0
    assert cfg.proxy.header_timeout == 10.0
    assert cfg.proxy.half_close_timeout == 10.0
    assert cfg.proxy.shutdown_timeout == 10.0
    assert cfg.proxy.sigpipe == "ignore"
    assert cfg.upstream.pool_size == 8
    assert cfg.upstream.pool_idle_timeout == 30.0
    assert dict(cfg.upstream.hosts) == {}
    assert cfg.tls.ca_dir == os.path.expanduser("~/.interceptor")
    assert not cfg.tls.ca_dir.startswith("~")
    assert cfg.tls.verify_upstream is True
    assert cfg.tls.upstream_ca_bundle == ""
    assert cfg.tls.passthrough == ()
    assert cfg.tls.leaf_cache_size == 1000
    assert cfg.tls.ca_page_host == "interceptor.ca"
    assert cfg.limits.max_open_files is None
    assert cfg.admin.listen == ("auto",)  # 127.0.0.1, the port after the proxy's
    assert cfg.log.access is True
    assert cfg.log.format == "text"


def test_schema_matches_dataclasses() -> None:
    # Drift guard: the table and the dataclasses must describe the same keys.
    for section, cls in SECTION_CLASSES.items():
        keys = [f.key for f in config_module._FIELDS if f.section == section]
        assert keys == [f.name for f in dataclasses.fields(cls)], section
    assert [f.name for f in dataclasses.fields(Config)] == [*SECTION_CLASSES, "source"]


def test_env_names_are_unique() -> None:
    names = [f.env for f in config_module._FIELDS]
    assert len(set(names)) == len(names)
    assert DEFAULT_CONFIG_ENV not in names


def test_config_is_frozen() -> None:
    cfg = load_config(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.proxy.idle_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.upstream.hosts["x"] = "y"  # type: ignore[index]


def test_reference_file_loads_to_defaults() -> None:
    cfg = load_config(str(REFERENCE), environ={})
    assert cfg == dataclasses.replace(Config(), source=str(REFERENCE))
    assert cfg.source == str(REFERENCE)


def test_reference_file_lists_every_key_and_env_var() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    document = tomllib.loads(text)
    present = [f"{section}.{key}" for section, table in document.items() for key in table]
    assert sorted(present) == sorted(ALL_KEYS)
    for spec in config_module._FIELDS:
        assert spec.env in text, spec.env
    assert "twistd -n --pidfile= interceptor --config conf/interceptor.toml" in text
    assert DEFAULT_CONFIG_ENV in text


def test_docs_list_every_key_and_env_var() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for spec in config_module._FIELDS:
        assert f"| `{spec.name}` |" in text, spec.name
        assert f"`{spec.env}`" in text, spec.env
    assert "--config PATH" in text
    assert "--listen ENDPOINT" in text


# --- file errors --------------------------------------------------------------------------------

FILE_ERRORS = [
    # (file text, key, expected problem text)
    ("[proxy\nlisten = 1\n", "", "malformed TOML: "),
    ("[nope]\nx = 1\n", "nope", "unknown section"),
    ("proxy = 1\n", "proxy", "expected a table, got integer"),
    ("[proxy]\nidel_timeout = 1\n", "proxy.idel_timeout", "unknown key"),
    ('[proxy]\nidle_timeout = "5"\n', "proxy.idle_timeout", "expected a number, got string"),
    ("[proxy]\nidle_timeout = true\n", "proxy.idle_timeout", "expected a number, got boolean"),
    ("[proxy]\nidle_timeout = -1\n", "proxy.idle_timeout", "must be > 0, got -1"),
    ("[proxy]\nidle_timeout = 0\n", "proxy.idle_timeout", "must be > 0, got 0"),
    ("[proxy]\nconnect_timeout = inf\n", "proxy.connect_timeout", "finite"),
    ("[proxy]\nheader_timeout = nan\n", "proxy.header_timeout", "finite"),
    ("[proxy]\nhalf_close_timeout = -0.5\n", "proxy.half_close_timeout", "must be > 0, got -0.5"),
    ("[proxy]\nshutdown_timeout = -1\n", "proxy.shutdown_timeout", "must be >= 0, got -1"),
    (
        '[proxy]\nsigpipe = "x"\n',
        "proxy.sigpipe",
        "must be one of ignore, close, inherit, got 'x'",
    ),
    ("[proxy]\nsigpipe = 1\n", "proxy.sigpipe", "expected a string, got integer"),
    ("[proxy]\nlisten = []\n", "proxy.listen", "at least one endpoint"),
    ('[proxy]\nlisten = ""\n', "proxy.listen", "at least one endpoint"),
    ("[proxy]\nlisten = 8080\n", "proxy.listen", "got integer"),
    ('[proxy]\nlisten = ["tcp:1", 2]\n', "proxy.listen", "item 2 is integer"),
    ('[proxy]\nlisten = "tcp:abc"\n', "proxy.listen", "not a valid endpoint 'tcp:abc'"),
    ('[proxy]\nlisten = "bogus:1"\n', "proxy.listen", "not a valid endpoint"),
    ('[proxy]\nlisten = "tcp:80:nope=1"\n', "proxy.listen", "not a valid endpoint"),
    ('[proxy]\nlisten = "tcp"\n', "proxy.listen", "not a valid endpoint"),
    ('[proxy]\nlisten = "8080"\n', "proxy.listen", "did you mean 'tcp:8080:interface=127.0.0.1'"),
    ('[proxy]\nlisten = "tcp:80800"\n', "proxy.listen", "out of range"),
    ('[proxy]\nlisten = ["tcp:1", ""]\n', "proxy.listen", "empty endpoint"),
    ('[proxy]\nlisten = ["tcp:1", "tcp:1"]\n', "proxy.listen", "twice"),
    ('[admin]\nlisten = "tcp:x"\n', "admin.listen", "not a valid endpoint"),
    ("[upstream]\npool_size = -1\n", "upstream.pool_size", "must be >= 0, got -1"),
    ("[upstream]\npool_size = 2.5\n", "upstream.pool_size", "expected an integer, got float"),
    ("[upstream]\npool_size = false\n", "upstream.pool_size", "expected an integer, got boolean"),
    ("[upstream]\npool_idle_timeout = 0\n", "upstream.pool_idle_timeout", "must be > 0"),
    ('[upstream]\nhosts = "a=b"\n', "upstream.hosts", "expected a table"),
    ("[upstream]\nhosts = { a = 1 }\n", "upstream.hosts", "expected a string, got integer"),
    ('[upstream]\nhosts = { a = "" }\n', "upstream.hosts", "non-empty"),
    ('[upstream]\nhosts = { "a b" = "1.2.3.4" }\n', "upstream.hosts", "not a host name"),
    ('[upstream]\nhosts = { "-a.example" = "1.2.3.4" }\n', "upstream.hosts", "not a host name"),
    ('[upstream]\nhosts = { "a..example" = "1.2.3.4" }\n', "upstream.hosts", "not a host name"),
    ('[upstream]\nhosts = { A = "1.1.1.1", a = "2.2.2.2" }\n', "upstream.hosts", "twice"),
    ('[tls]\nverify_upstream = "yes"\n', "tls.verify_upstream", "expected a boolean, got string"),
    ('[proxy]\nvia_name = "a b"\n', "proxy.via_name", "must be a token"),
    ("[tls]\nverify_upstream = 1\n", "tls.verify_upstream", "expected a boolean, got integer"),
    ('[tls]\nca_dir = ""\n', "tls.ca_dir", "must not be empty"),
    ('[tls]\npassthrough = ["exa mple.com"]\n', "tls.passthrough", "not a host pattern"),
    # "_" is a host-name character (see interceptor.hosts); "!" and "?" are not.
    ('[tls]\npassthrough = ["a!b.example"]\n', "tls.passthrough", "not a host pattern"),
    ('[tls]\npassthrough = ["a?.example"]\n', "tls.passthrough", "not a host pattern"),
    ('[tls]\npassthrough = [""]\n', "tls.passthrough", "empty pattern"),
    ('[tls]\npassthrough = ["10.0.0.0/33"]\n', "tls.passthrough", "not a valid IP network"),
    ('[tls]\npassthrough = ["bank.example/8"]\n', "tls.passthrough", "not a valid IP network"),
    ("[tls]\npassthrough = 3\n", "tls.passthrough", "got integer"),
    ("[tls]\nleaf_cache_size = 0\n", "tls.leaf_cache_size", "must be >= 1, got 0"),
    ('[tls]\nca_page_host = ""\n', "tls.ca_page_host", "must be a host name"),
    ('[tls]\nca_page_host = "bad host"\n', "tls.ca_page_host", "must be a host name"),
    ('[tls]\nca_page_host = "ca.local."\n', "tls.ca_page_host", "must be a host name"),
    ("[limits]\nmax_open_files = 63\n", "limits.max_open_files", "must be >= 64, got 63"),
    ('[limits]\nmax_open_files = "soft"\n', "limits.max_open_files", 'expected "hard"'),
    ("[limits]\nmax_open_files = true\n", "limits.max_open_files", "got boolean"),
    ("[limits]\nmax_open_files = 100.0\n", "limits.max_open_files", "got float"),
    ('[log]\nformat = "xml"\n', "log.format", "must be one of text, json, got 'xml'"),
    ('[log]\naccess = "true"\n', "log.access", "expected a boolean, got string"),
    ("[log]\nwhen = 1979-05-27\n", "log.when", "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "problem"), FILE_ERRORS)
def test_file_errors(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    err = info.value
    message = str(err)
    assert "\n" not in message and "\r" not in message
    assert err.source == path
    assert err.key == key
    assert problem in err.problem
    prefix = f"{path}: {key}: " if key else f"{path}: "
    assert message.startswith(prefix)
    assert message == prefix + err.problem


def test_file_error_is_reported_even_when_env_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nidle_timeout = -1\n")
    with pytest.raises(ConfigError, match="proxy.idle_timeout"):
        load_config(path, environ={"INTERCEPTOR_PROXY_IDLE_TIMEOUT": "5"})


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"{path}: cannot read file: No such file or directory"
    assert info.value.key == ""


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), environ={})
    assert info.value.problem.startswith("cannot read file: ")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    os.chmod(path, 0)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problem == "cannot read file: Permission denied"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[log]\nformat = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert info.value.problem.startswith("malformed TOML: ")
    assert "\n" not in str(info.value)


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbf[log]\nformat = "json"\n')
    assert load_config(str(path), environ={}).log.format == "json"


def test_underscores_are_host_name_characters_everywhere(tmp_path: Path) -> None:
    # One host-name definition (interceptor.hosts) for every setting that names hosts.
    path = write(
        tmp_path,
        '[upstream.hosts]\n"_Dmarc.Example" = "127.0.0.1"\n'
        '[tls]\npassthrough = ["*.build_01.corp", "_sip._tcp.example"]\n'
        'ca_page_host = "ca_page.local"\n',
    )
    cfg = load_config(path, environ={})
    assert dict(cfg.upstream.hosts) == {"_dmarc.example": "127.0.0.1"}
    assert cfg.tls.passthrough == ("*.build_01.corp", "_sip._tcp.example")
    assert cfg.tls.ca_page_host == "ca_page.local"


def test_error_message_is_squashed_to_one_line() -> None:
    err = ConfigError("f.toml", "proxy.listen", "first line\n  second line\r\nthird")
    assert str(err) == "f.toml: proxy.listen: first line second line third"
    assert str(ConfigError("f.toml", "", "bad\nthing")) == "f.toml: bad thing"


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("environment", "INTERCEPTOR_X", "unknown")))
    assert (err.source, err.key, err.problem) == ("environment", "INTERCEPTOR_X", "unknown")
    assert str(err) == "environment: INTERCEPTOR_X: unknown"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    assert load_config(path, environ={}) == dataclasses.replace(Config(), source=path)


# --- file values ------------------------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[proxy]
listen = ["tcp:9090:interface=127.0.0.1", "unix:/tmp/interceptor.sock"]
idle_timeout = 5
connect_timeout = 2.5
shutdown_timeout = 0
sigpipe = "inherit"
[upstream]
pool_size = 0
[upstream.hosts]
"API.Example.com" = "127.0.0.1"
"v6.example" = "::1"
[tls]
ca_dir = "/srv/ca"
verify_upstream = false
upstream_ca_bundle = "/etc/ssl/extra.pem"
passthrough = ["*.bank.example", "example.com", "10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
leaf_cache_size = 1
ca_page_host = "CA.Local"
[limits]
max_open_files = 4096
[admin]
listen = ""
[log]
access = false
format = "json"
""",
    )
    cfg = load_config(path, environ={})
    assert cfg.source == path
    assert cfg.proxy.listen == ("tcp:9090:interface=127.0.0.1", "unix:/tmp/interceptor.sock")
    assert cfg.proxy.idle_timeout == 5.0 and type(cfg.proxy.idle_timeout) is float
    assert cfg.proxy.connect_timeout == 2.5
    assert cfg.proxy.shutdown_timeout == 0.0
    assert cfg.proxy.sigpipe == "inherit"
    assert cfg.upstream.pool_size == 0
    assert dict(cfg.upstream.hosts) == {"api.example.com": "127.0.0.1", "v6.example": "::1"}
    assert cfg.tls.ca_dir == "/srv/ca"
    assert cfg.tls.verify_upstream is False
    assert cfg.tls.upstream_ca_bundle == "/etc/ssl/extra.pem"
    assert cfg.tls.passthrough == (
        "*.bank.example",
        "example.com",
        "10.0.0.0/8",
        "192.0.2.7",
        "2001:db8::/32",
    )
    assert cfg.tls.leaf_cache_size == 1
    assert cfg.tls.ca_page_host == "ca.local"
    assert cfg.limits.max_open_files == 4096
    assert cfg.admin.listen == ()
    assert cfg.log.access is False
    assert cfg.log.format == "json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"tcp:9090"', ("tcp:9090",)),
        ('["tcp:9090"]', ("tcp:9090",)),
        ('["tcp:9090", "tcp6:9091"]', ("tcp:9090", "tcp6:9091")),
        ("'tcp6:9090:interface=\\:\\:1'", ("tcp6:9090:interface=\\:\\:1",)),
    ],
)
def test_listen_string_or_list(tmp_path: Path, value: str, expected: tuple[str, ...]) -> None:
    path = write(tmp_path, f"[proxy]\nlisten = {value}\n[admin]\nlisten = {value}\n")
    cfg = load_config(path, environ={})
    assert cfg.proxy.listen == expected
    assert cfg.admin.listen == expected


@pytest.mark.parametrize("value", ['""', "[]"])
def test_admin_listen_empty_disables(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[admin]\nlisten = {value}\n")
    assert load_config(path, environ={}).admin.listen == ()


@pytest.mark.parametrize("description", ["ssl:8443:privateKey=/nonexistent.pem", "systemd:INET"])
def test_file_reading_endpoints_are_not_opened(tmp_path: Path, description: str) -> None:
    # These would read files / inherited descriptors while parsing; that waits for listen time.
    path = write(tmp_path, f'[proxy]\nlisten = "{description}"\n')
    assert load_config(path, environ={}).proxy.listen == (description,)


@pytest.mark.parametrize(("value", "expected"), [('"hard"', None), ("64", 64), ("65536", 65536)])
def test_max_open_files(tmp_path: Path, value: str, expected: int | None) -> None:
    path = write(tmp_path, f"[limits]\nmax_open_files = {value}\n")
    assert load_config(path, environ={}).limits.max_open_files == expected


def test_ca_dir_tilde_expanded_with_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    path = write(tmp_path, '[tls]\nca_dir = "~/ca"\nupstream_ca_bundle = "~/b.pem"\n')
    cfg = load_config(path, environ={})
    assert cfg.tls.ca_dir == "/home/someone/ca"
    assert cfg.tls.upstream_ca_bundle == "/home/someone/b.pem"
    assert load_config(environ={}).tls.ca_dir == "/home/someone/.interceptor"


def test_ca_dir_kept_when_home_cannot_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_user(uid: int) -> None:
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_such_user)
    cfg = load_config(environ={})
    assert cfg.tls.ca_dir == "~/.interceptor"


# --- environment --------------------------------------------------------------------------------

ENV_VALUES = (
    [
        # (variable, value, key, expected)
        ("INTERCEPTOR_PROXY_LISTEN", "tcp:9090", "proxy.listen", ("tcp:9090",)),
        (
            "INTERCEPTOR_PROXY_LISTEN",
            " tcp:9090:interface=127.0.0.1 , unix:/tmp/s ,, ",
            "proxy.listen",
            ("tcp:9090:interface=127.0.0.1", "unix:/tmp/s"),
        ),
        ("INTERCEPTOR_PROXY_IDLE_TIMEOUT", "2.5", "proxy.idle_timeout", 2.5),
        ("INTERCEPTOR_PROXY_CONNECT_TIMEOUT", " 3 ", "proxy.connect_timeout", 3.0),
        ("INTERCEPTOR_PROXY_HEADER_TIMEOUT", "1e1", "proxy.header_timeout", 10.0),
        ("INTERCEPTOR_PROXY_HALF_CLOSE_TIMEOUT", "0.25", "proxy.half_close_timeout", 0.25),
        ("INTERCEPTOR_PROXY_SHUTDOWN_TIMEOUT", "0", "proxy.shutdown_timeout", 0.0),
        ("INTERCEPTOR_PROXY_SIGPIPE", "close", "proxy.sigpipe", "close"),
        ("INTERCEPTOR_UPSTREAM_POOL_SIZE", "0", "upstream.pool_size", 0),
        ("INTERCEPTOR_UPSTREAM_POOL_SIZE", "32", "upstream.pool_size", 32),
        ("INTERCEPTOR_UPSTREAM_POOL_IDLE_TIMEOUT", "90", "upstream.pool_idle_timeout", 90.0),
        ("INTERCEPTOR_TLS_CA_DIR", "/var/lib/ic", "tls.ca_dir", "/var/lib/ic"),
        ("INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE", "", "tls.upstream_ca_bundle", ""),
        ("INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE", "/x.pem", "tls.upstream_ca_bundle", "/x.pem"),
        (
            "INTERCEPTOR_TLS_PASSTHROUGH",
            "*.bank.example, 10.0.0.0/8,::1",
            "tls.passthrough",
            ("*.bank.example", "10.0.0.0/8", "::1"),
        ),
        ("INTERCEPTOR_TLS_PASSTHROUGH", "", "tls.passthrough", ()),
        ("INTERCEPTOR_TLS_LEAF_CACHE_SIZE", "5", "tls.leaf_cache_size", 5),
        ("INTERCEPTOR_TLS_CA_PAGE_HOST", "ca.test", "tls.ca_page_host", "ca.test"),
        ("INTERCEPTOR_LIMITS_MAX_OPEN_FILES", "hard", "limits.max_open_files", None),
        ("INTERCEPTOR_LIMITS_MAX_OPEN_FILES", "HARD", "limits.max_open_files", None),
        ("INTERCEPTOR_LIMITS_MAX_OPEN_FILES", "4096", "limits.max_open_files", 4096),
        ("INTERCEPTOR_ADMIN_LISTEN", "", "admin.listen", ()),
        ("INTERCEPTOR_ADMIN_LISTEN", "tcp:9999", "admin.listen", ("tcp:9999",)),
        ("INTERCEPTOR_LOG_FORMAT", "json", "log.format", "json"),
        ("INTERCEPTOR_TLS_CONNECT", "lazy", "tls.connect", "lazy"),
    ]
    + [
        ("INTERCEPTOR_TLS_VERIFY_UPSTREAM", word, "tls.verify_upstream", expected)
        for words, expected in [
            (["true", "TRUE", "1", "yes", "Yes", "on", " on "], True),
            (["false", "False", "0", "no", "NO", "off"], False),
        ]
        for word in words
    ]
    + [
        ("INTERCEPTOR_LOG_ACCESS", "off", "log.access", False),
    ]
)


@pytest.mark.parametrize(("variable", "value", "key", "expected"), ENV_VALUES)
def test_env_values(variable: str, value: str, key: str, expected: object) -> None:
    cfg = load_config(environ={variable: value})
    assert get(cfg, key) == expected
    assert type(get(cfg, key)) is type(expected)
    assert cfg.source == ""


def test_env_hosts() -> None:
    cfg = load_config(
        environ={"INTERCEPTOR_UPSTREAM_HOSTS": "A.example=127.0.0.1, b.example = ::1,"}
    )
    assert dict(cfg.upstream.hosts) == {"a.example": "127.0.0.1", "b.example": "::1"}


def test_every_key_has_a_working_env_var(tmp_path: Path) -> None:
    # Feed each default back through its environment variable in environment syntax.
    users = tmp_path / "users"
    users.write_text("alice:$2y$05$" + "a" * 53 + "\n")
    script = tmp_path / "addon.py"
    script.write_text("def request(flow):\n    pass\n")
    samples = {
        "access.allow": "10.0.0.0/8, 192.0.2.7",
        "access.users_file": str(users),
        "proxy.listen": "tcp:1234",
        "upstream.hosts": "h=1.2.3.4",
        "upstream.proxy": "socks5h://u:p@127.0.0.1:1080",
        "upstream.no_proxy": "*.corp.example, 10.0.0.0/8",
        "upstream.proxy_credentials_file": str(users),
        "tls.passthrough": "*.x",
        "admin.listen": "tcp:1235",
        "limits.max_open_files": "100",
        "tls.verify_upstream": "no",
        "log.access": "no",
        "proxy.sigpipe": "close",
        "log.format": "json",
        "tls.connect": "lazy",
        "tls.ca_dir": "/ca",
        "tls.upstream_ca_bundle": "/b.pem",
        "tls.ca_page_host": "ca.test",
        "hooks.addons": "pkg.mod:Addon, other:thing",
        "hooks.scripts": str(script),
        "hooks.body_overflow": "reject",
        "web.listen": "tcp:8082",
        "web.token": "a-token-of-sixteen-or-more",
        "web.allowed_hosts": "ui.example",
    }
    for spec in config_module._FIELDS:
        value = samples.get(spec.name, "7")
        cfg = load_config(environ={spec.env: value})
        assert get(cfg, spec.name) != get(Config(), spec.name), spec.name


ENV_ERRORS = [
    # (variable, value, expected problem text)
    ("INTERCEPTOR_PROXY_IDLE_TIMEOUT", "soon", "expected a number, got 'soon'"),
    ("INTERCEPTOR_PROXY_IDLE_TIMEOUT", "", "expected a number, got ''"),
    ("INTERCEPTOR_PROXY_IDLE_TIMEOUT", "-1", "must be > 0, got -1"),
    ("INTERCEPTOR_PROXY_IDLE_TIMEOUT", "inf", "finite"),
    ("INTERCEPTOR_UPSTREAM_POOL_SIZE", "8.0", "expected an integer, got '8.0'"),
    ("INTERCEPTOR_UPSTREAM_POOL_SIZE", "-3", "must be >= 0, got -3"),
    ("INTERCEPTOR_TLS_VERIFY_UPSTREAM", "maybe", "expected true/false"),
    ("INTERCEPTOR_TLS_VERIFY_UPSTREAM", "", "expected true/false"),
    ("INTERCEPTOR_PROXY_LISTEN", "", "at least one endpoint"),
    ("INTERCEPTOR_PROXY_LISTEN", "tcp:x", "not a valid endpoint"),
    ("INTERCEPTOR_UPSTREAM_HOSTS", "a.example", "name=address"),
    ("INTERCEPTOR_UPSTREAM_HOSTS", "a.example=", "non-empty"),
    ("INTERCEPTOR_UPSTREAM_HOSTS", "a=1.1.1.1,A=2.2.2.2", "twice"),
    ("INTERCEPTOR_LIMITS_MAX_OPEN_FILES", "soft", 'expected "hard" or an integer'),
    ("INTERCEPTOR_LIMITS_MAX_OPEN_FILES", "10", "must be >= 64"),
    ("INTERCEPTOR_TLS_PASSTHROUGH", "ok.example,bad!", "not a host pattern"),
    ("INTERCEPTOR_LOG_FORMAT", "xml", "must be one of text, json"),
    ("INTERCEPTOR_PROXY_IDEL_TIMEOUT", "5", "unknown setting"),
    ("INTERCEPTOR_LISTEN", "tcp:1", "unknown setting"),
    ("INTERCEPTOR_", "x", "unknown setting"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), ENV_ERRORS)
def test_env_errors(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={variable: value})
    err = info.value
    assert err.source == "environment"
    assert err.key == variable
    assert problem in err.problem
    assert str(err) == f"environment: {variable}: {err.problem}"
    assert "\n" not in str(err)


def test_env_typo_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match="did you mean INTERCEPTOR_PROXY_IDLE_TIMEOUT"):
        load_config(environ={"INTERCEPTOR_PROXY_IDEL_TIMEOUT": "5"})


def test_unrelated_env_vars_are_ignored() -> None:
    environ = {"PATH": "/bin", "interceptor_proxy_listen": "x", "INTERCEPTORX": "y"}
    assert load_config(environ=environ) == Config()


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INTERCEPTOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INTERCEPTOR_LOG_FORMAT", "json")
    assert load_config().log.format == "json"


# --- choosing the file --------------------------------------------------------------------------


def test_interceptor_config_picks_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nidle_timeout = 7\n")
    cfg = load_config(environ={DEFAULT_CONFIG_ENV: path})
    assert cfg.proxy.idle_timeout == 7.0
    assert cfg.source == path


def test_explicit_path_beats_interceptor_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "[proxy]\nidle_timeout = 7\n")
    other = str(tmp_path / "does-not-exist.toml")
    cfg = load_config(chosen, environ={DEFAULT_CONFIG_ENV: other})
    assert cfg.proxy.idle_timeout == 7.0
    assert cfg.source == chosen


def test_empty_interceptor_config_means_no_file() -> None:
    assert load_config(environ={DEFAULT_CONFIG_ENV: ""}) == Config()


def test_interceptor_config_missing_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(environ={DEFAULT_CONFIG_ENV: path})
    assert info.value.source == path
    assert "cannot read file" in str(info.value)


# --- precedence and overrides -------------------------------------------------------------------


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nidle_timeout = 5\nconnect_timeout = 5\nheader_timeout = 5\n")
    environ = {"INTERCEPTOR_PROXY_IDLE_TIMEOUT": "6", "INTERCEPTOR_PROXY_CONNECT_TIMEOUT": "6"}
    overrides = {"proxy.idle_timeout": 7}

    cfg = load_config(path, environ=environ, overrides=overrides)
    assert cfg.proxy.idle_timeout == 7.0  # command line beats environment and file
    assert cfg.proxy.connect_timeout == 6.0  # environment beats file
    assert cfg.proxy.header_timeout == 5.0  # file beats defaults
    assert cfg.proxy.half_close_timeout == 10.0  # default

    assert load_config(path, environ=environ).proxy.idle_timeout == 6.0
    assert load_config(path, environ={}).proxy.idle_timeout == 5.0


def test_lists_are_replaced_not_merged(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nlisten = ["tcp:1001", "tcp:1002"]\n')
    cfg = load_config(path, environ={"INTERCEPTOR_PROXY_LISTEN": "tcp:1003"})
    assert cfg.proxy.listen == ("tcp:1003",)
    cfg = load_config(path, environ={}, overrides={"proxy.listen": ["tcp:1004"]})
    assert cfg.proxy.listen == ("tcp:1004",)


def test_overrides_typed_values() -> None:
    cfg = load_config(
        environ={},
        overrides={
            "proxy.listen": ["tcp:9090:interface=127.0.0.1", "unix:/tmp/s"],
            "upstream.hosts": {"X.example": "10.1.2.3"},
            "limits.max_open_files": 1024,
            "tls.verify_upstream": False,
            "admin.listen": [],
        },
    )
    assert cfg.proxy.listen == ("tcp:9090:interface=127.0.0.1", "unix:/tmp/s")
    assert dict(cfg.upstream.hosts) == {"x.example": "10.1.2.3"}
    assert cfg.limits.max_open_files == 1024
    assert cfg.tls.verify_upstream is False
    assert cfg.admin.listen == ()
    assert cfg.source == ""


@pytest.mark.parametrize("value", ["hard", None])
def test_override_max_open_files_hard(value: object) -> None:
    overrides = {"limits.max_open_files": value}
    assert load_config(environ={}, overrides=overrides).limits.max_open_files is None


OVERRIDE_ERRORS = [
    ("proxy.listen", [], "at least one endpoint"),
    ("proxy.listen", ["tcp:nope"], "not a valid endpoint"),
    ("proxy.listen", 8080, "got integer"),
    ("proxy.idle_timeout", True, "expected a number, got boolean"),
    ("proxy.idle_timeout", "5", "expected a number, got string"),
    ("upstream.pool_size", True, "expected an integer, got boolean"),
    ("tls.verify_upstream", 1, "expected a boolean, got integer"),
    ("limits.max_open_files", False, "got boolean"),
    ("upstream.hosts", [("a", "b")], "expected a table"),
    ("proxy.nope", 1, "unknown key"),
    ("nope", 1, "unknown key"),
]


@pytest.mark.parametrize(("key", "value", "problem"), OVERRIDE_ERRORS)
def test_override_errors(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={key: value})
    err = info.value
    assert err.source == "command line"
    assert err.key == key
    assert problem in err.problem
    assert str(err) == f"command line: {key}: {err.problem}"


# --- direct construction keeps the same invariants ----------------------------------------------


def test_direct_construction_normalises() -> None:
    tls = TLSConfig(ca_dir="~/x", passthrough=["a.example"])  # type: ignore[arg-type]
    assert tls.ca_dir == os.path.expanduser("~/x")
    assert tls.passthrough == ("a.example",)
    upstream = UpstreamConfig(hosts={"A.Example": "1.2.3.4"})
    assert dict(upstream.hosts) == {"a.example": "1.2.3.4"}
    with pytest.raises(TypeError):
        upstream.hosts["b"] = "c"  # type: ignore[index]
    assert ProxyConfig(listen=["tcp:1"]).listen == ("tcp:1",)  # type: ignore[arg-type]


def test_kubernetes_service_variables_are_not_settings():
    env = {
        "INTERCEPTOR_SERVICE_HOST": "10.0.0.1",
        "INTERCEPTOR_SERVICE_PORT": "8080",
        "INTERCEPTOR_PORT": "tcp://10.0.0.1:8080",
        "INTERCEPTOR_PORT_8080_TCP_ADDR": "10.0.0.1",
    }
    assert load_config(None, env) == load_config(None, {})


def test_addon_references_are_validated():
    cfg = load_config(environ={"INTERCEPTOR_HOOKS_ADDONS": "a.b:C,d:e"})
    assert cfg.hooks.addons == ("a.b:C", "d:e")
    with pytest.raises(ConfigError) as info:
        load_config(environ={"INTERCEPTOR_HOOKS_ADDONS": "not a reference"})
    assert "module:name" in str(info.value)


@pytest.mark.parametrize(
    "given, endpoint",
    [
        ("127.0.0.1:9090", "tcp:9090:interface=127.0.0.1"),
        ("localhost:9090", "tcp:9090:interface=127.0.0.1"),
        ("[::1]:9090", "tcp6:9090:interface=\\:\\:1"),
        ("tcp:9090:interface=127.0.0.1", "tcp:9090:interface=127.0.0.1"),
    ],
)
def test_host_port_is_shorthand_for_a_tcp_endpoint(given: str, endpoint: str) -> None:
    # As `--listen` gives it (the same checks as the file and the environment).
    assert load_config(None, {}, {"proxy.listen": [given]}).proxy.listen == (endpoint,)
    assert load_config(environ={"INTERCEPTOR_WEB_LISTEN": given}).web.listen == endpoint


def test_a_bare_port_is_refused_with_a_hint_that_keeps_to_loopback() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"proxy.listen": ["9090"]})
    assert "did you mean 'tcp:9090:interface=127.0.0.1' or '127.0.0.1:9090'?" in str(info.value)
