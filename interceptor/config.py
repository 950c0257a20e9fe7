"""Configuration: one TOML file, ``INTERCEPTOR_*`` environment variables and command-line
overrides, merged into one frozen :class:`Config`.

Precedence, highest first: command line (``overrides``) > environment > file > built-in
defaults. Every setting is described once, in :data:`_FIELDS`; the file, environment and
command-line paths are all driven by that table, so adding a setting is one entry there plus
the matching attribute on its section dataclass.

Errors are reported as :class:`ConfigError`, whose ``str()`` is always a single line naming
where the bad value came from and which key it was, so that ``twistd`` can print it and exit
with status 2 instead of dumping a traceback.

Nothing here touches the reactor, and the only I/O is reading the one configuration file.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import cast

from twisted.internet.endpoints import serverFromString

from .hosts import check_pattern, is_host_name
from .text import one_line

__all__ = [
    "DEFAULT_CONFIG_ENV",
    "AccessConfig",
    "AdminConfig",
    "Config",
    "ConfigError",
    "ExplainedConfig",
    "LimitsConfig",
    "REDACTED",
    "Setting",
    "LogConfig",
    "HooksConfig",
    "ProxyConfig",
    "TLSConfig",
    "UpstreamConfig",
    "explain_config",
    "load_config",
    "resolve_admin_listen",
]

#: Environment variable naming the configuration file when no path is given explicitly.
DEFAULT_CONFIG_ENV = "INTERCEPTOR_CONFIG"

_ENV_PREFIX = "INTERCEPTOR_"
_SOURCE_DEFAULT = "default"
_SOURCE_ENV = "environment"
_SOURCE_CLI = "command line"


class ConfigError(Exception):
    """A configuration value that cannot be used.

    ``source`` is the file path, ``"environment"`` or ``"command line"``; ``key`` is
    ``"section.key"``, the environment variable name for environment errors, or ``""`` when
    the whole file is at fault. ``str()`` is always exactly one line.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        # tomllib and Twisted messages may span lines; a config error must stay one log line.
        source, key, problem = one_line(source), one_line(key), one_line(problem)
        # Passing all three keeps the exception picklable (it is re-created from args).
        super().__init__(source, key, problem)
        self.source = source
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.problem}"
        return f"{self.source}: {self.problem}"


def _expand_user(path: str) -> str:
    # expanduser falls back to the password database when HOME is unset and returns the path
    # unchanged if that fails too; the guard is for platforms where it raises instead.
    try:
        return os.path.expanduser(path)
    except (KeyError, OSError, ImportError):
        return path


# ---------------------------------------------------------------------------------------------
# The configuration objects handed to the rest of the proxy.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The client-facing proxy listener and its timeouts (seconds)."""

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    header_timeout: float = 10.0
    half_close_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    sigpipe: str = "ignore"
    workers: int = 1  # 0: "auto"
    via_name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", tuple(self.listen))


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Connections from the proxy to origin servers."""

    pool_size: int = 8
    pool_idle_timeout: float = 30.0
    read_timeout: float = 60.0
    hosts: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    proxy: str = ""
    no_proxy: tuple[str, ...] = ()
    proxy_credentials_file: str = ""

    def __post_init__(self) -> None:
        # Frozen must mean immutable all the way down; a plain dict could still be mutated.
        hosts = {name.lower(): address for name, address in self.hosts.items()}
        object.__setattr__(self, "hosts", types.MappingProxyType(hosts))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The interception CA, upstream certificate verification and pass-through hosts."""

    ca_dir: str = "~/.interceptor"
    verify_upstream: bool = True
    upstream_ca_bundle: str = ""
    passthrough: tuple[str, ...] = ()
    leaf_cache_size: int = 1000
    ca_page_host: str = "interceptor.ca"
    learn_passthrough: int = 0
    learn_passthrough_ttl: float = 3600.0
    connect: str = "eager"

    def __post_init__(self) -> None:
        # Expanded here, not only in the loader, so TLSConfig() equals a loaded default.
        object.__setattr__(self, "ca_dir", _expand_user(self.ca_dir))
        if self.upstream_ca_bundle:
            object.__setattr__(self, "upstream_ca_bundle", _expand_user(self.upstream_ca_bundle))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Who may use the proxy: client networks, and an htpasswd file of bcrypt credentials."""

    allow: tuple[str, ...] = ()
    users_file: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        if self.users_file:
            object.__setattr__(self, "users_file", _expand_user(self.users_file))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Process resource limits. ``max_open_files=None`` means raise the soft limit to hard."""

    max_open_files: int | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin/metrics endpoint; an empty ``listen`` disables it."""

    listen: tuple[str, ...] = ("auto",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", tuple(self.listen))


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging."""

    access: bool = True
    format: str = "text"


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Addons (mitmproxy's addon API): which to load, how long a hook may take, and how much
    of the bodies they read may be held in memory."""

    scripts: tuple[str, ...] = ()
    addons: tuple[str, ...] = ()
    timeout: float = 30.0
    body_limit: int = 8 * 1024 * 1024
    buffer_budget: int = 256 * 1024 * 1024
    body_overflow: str = "stream"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """Flow capture: the on-disk store every finished exchange is recorded to."""

    store: str = ""
    body_limit: int = 1024 * 1024
    max_bytes: int = 1024 * 1024 * 1024
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    redact_headers: tuple[str, ...] = ("proxy-authorization",)


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The flow UI over the capture store; an empty ``listen`` disables it."""

    listen: str = ""
    token: str = ""
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``source`` is the file loaded, or ``""`` if none was."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    web: WebConfig = field(default_factory=WebConfig)
    source: str = ""


_SECTIONS: dict[str, type] = {
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


# ---------------------------------------------------------------------------------------------
# Value kinds: how a TOML/Python value and an environment string become a typed value.
# ---------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem with one value; the caller adds the source and key."""


def _type_name(value: object) -> str:
    # Name types the way TOML does, since that is what most users will have written.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime | date | time):
        return "date/time"
    if value is None:
        return "nothing"
    return type(value).__name__


def _show(value: object) -> str:
    # -1.0 reads better as -1 in "must be > 0, got -1".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _as_is(value: object) -> object:
    return value


@dataclass(frozen=True, slots=True)
class _Kind:
    coerce: Callable[[object], object]  # TOML or Python value -> typed value
    parse_env: Callable[[str], object]  # environment string -> value for coerce()
    # typed value -> what to write in TOML for it; only needed where they differ (None).
    unparse: Callable[[object], object] = _as_is


def _coerce_float(value: object) -> float:
    # bool is an int subclass, but `true` meaning 1 second is never what anyone meant.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(f"expected a finite number, got {_show(number)}")
    return number


def _env_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise _Invalid(f"expected a number, got {text!r}") from None


def _coerce_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_type_name(value)}")
    return value


def _env_int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise _Invalid(f"expected an integer, got {text!r}") from None


def _coerce_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {_type_name(value)}")
    return value


_ENV_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _env_bool(text: str) -> bool:
    try:
        return _ENV_BOOLS[text.strip().lower()]
    except KeyError:
        raise _Invalid(f"expected true/false/1/0/yes/no/on/off, got {text!r}") from None


def _coerce_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_type_name(value)}")
    return value


def _coerce_strs(value: object) -> tuple[str, ...]:
    # A lone string is a one-item list, except "" which is the empty list (so `listen = ""`
    # disables the admin endpoint, as an empty environment variable does).
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list | tuple):
        raise _Invalid(f"expected a string or an array of strings, got {_type_name(value)}")
    for index, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise _Invalid(f"expected an array of strings, item {index} is {_type_name(item)}")
    return tuple(value)


def _env_strs(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _coerce_hosts(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a table of name = address, got {_type_name(value)}")
    hosts: dict[str, str] = {}
    for name, address in value.items():
        if not isinstance(name, str) or not is_host_name(name):
            raise _Invalid(f"not a host name: {name!r}")
        if not isinstance(address, str):
            raise _Invalid(f"address for {name!r}: expected a string, got {_type_name(address)}")
        if not address or any(ch.isspace() for ch in address):
            raise _Invalid(f"address for {name!r} must be a non-empty host or IP, got {address!r}")
        if name.lower() in hosts:
            raise _Invalid(f"host {name.lower()!r} given twice")
        hosts[name.lower()] = address
    return types.MappingProxyType(hosts)


def _env_hosts(text: str) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        name, sep, address = pair.partition("=")
        if not sep:
            raise _Invalid(f"expected comma-separated name=address pairs, got {pair.strip()!r}")
        if name.strip().lower() in hosts:
            raise _Invalid(f"host {name.strip().lower()!r} given twice")
        hosts[name.strip().lower()] = address.strip()
    return hosts


def _coerce_max_files(value: object) -> int | None:
    if value is None or value == "hard":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f'expected "hard" or an integer, got {_type_name(value)}')
    if isinstance(value, str):
        raise _Invalid(f'expected "hard" or an integer, got {value!r}')
    return value


def _coerce_workers(value: object) -> int:
    # 0 is how "auto" is held (the usable cores, counted at start-up).
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f'expected "auto" or an integer, got {_show(value)}')
    if value < 1:
        raise _Invalid(f"must be >= 1 (or \"auto\"), got {value}")
    return value


def _env_workers(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    return _env_int(text)


def workers_wanted(config: Config) -> int:
    """`proxy.workers` as a number: "auto" is the cores this process may run on."""
    return config.proxy.workers or len(os.sched_getaffinity(0))


def _env_max_files(text: str) -> int | str:
    if text.strip().lower() == "hard":
        return "hard"
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise _Invalid(f'expected "hard" or an integer, got {text!r}') from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}  # fmt: skip
_SIZE_TEXT = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


def _size_from_text(text: str) -> int:
    found = _SIZE_TEXT.fullmatch(text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _SIZE_UNITS:
        raise _Invalid(f'expected a size in bytes, e.g. 8388608 or "8 MiB", got {text!r}')
    return int(found.group(1)) * _SIZE_UNITS[unit]


def _coerce_size(value: object) -> int:
    if isinstance(value, str):
        return _size_from_text(value)
    return _coerce_int(value)


_FLOAT = _Kind(_coerce_float, _env_float)
_SIZE = _Kind(_coerce_size, _size_from_text)
_INT = _Kind(_coerce_int, _env_int)
_BOOL = _Kind(_coerce_bool, _env_bool)
_STR = _Kind(_coerce_str, lambda text: text)
_STRS = _Kind(_coerce_strs, _env_strs)
_HOSTS = _Kind(_coerce_hosts, _env_hosts)
# None (no number) is how "hard" is held; --print-config must write it back as "hard".
_MAX_FILES = _Kind(_coerce_max_files, _env_max_files, lambda v: "hard" if v is None else v)
_WORKERS = _Kind(_coerce_workers, _env_workers, lambda v: "auto" if v == 0 else v)


# ---------------------------------------------------------------------------------------------
# Validators: take the typed value, return it (possibly normalised) or raise _Invalid.
# ---------------------------------------------------------------------------------------------

_Check = Callable[[object], object]


def _greater_than(bound: float) -> _Check:
    def check(value: object) -> object:
        if not (isinstance(value, int | float) and value > bound):
            raise _Invalid(f"must be > {_show(bound)}, got {_show(value)}")
        return value

    return check


def _at_least(bound: float) -> _Check:
    def check(value: object) -> object:
        # None is max_open_files = "hard": no number to compare.
        if value is not None and not (isinstance(value, int | float) and value >= bound):
            raise _Invalid(f"must be >= {_show(bound)}, got {_show(value)}")
        return value

    return check


def _one_of(*choices: str) -> _Check:
    def check(value: object) -> object:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _non_empty(value: object) -> object:
    if not value:
        raise _Invalid("must not be empty")
    return value


_TCHAR = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def _token(value: object) -> object:
    # What Via allows as a received-by pseudonym (RFC 9110 5.6.2 token), kept short.
    text = str(value)
    if text and not _TCHAR.fullmatch(text):
        raise _Invalid(f"must be a token (letters, digits, -._~...; at most 64), got {value!r}")
    return text


def _hostname(value: object) -> object:
    name = str(value).lower()
    if not is_host_name(name):
        raise _Invalid(f"must be a host name, got {value!r}")
    return name


class _Stub:
    """Stands in for the reactor: serverFromString only stores it while parsing."""


# These endpoint types read key/certificate files or inherited descriptors while parsing, so
# checking them here would be I/O (and fail outside systemd); they are checked when listening.
_UNCHECKED_ENDPOINTS = frozenset({"ssl", "tls", "systemd"})


def _check_endpoint(description: str) -> None:
    if not description.strip():
        raise _Invalid("empty endpoint string")
    prefix = description.split(":", 1)[0].strip().lower()
    if prefix in _UNCHECKED_ENDPOINTS:
        return
    try:
        endpoint = serverFromString(_Stub(), description)
    except (ValueError, LookupError, TypeError) as error:
        hint = (
            # 'tcp:PORT' alone listens on every interface: an open proxy. Suggest loopback.
            f" (did you mean 'tcp:{description}:interface=127.0.0.1' or '127.0.0.1:"
            f"{description}'?)"
            if description.isdigit()
            else ""
        )
        raise _Invalid(f"not a valid endpoint {description!r}: {error}{hint}") from None
    # Twisted does not range-check ports while parsing; a typo like 80800 would otherwise
    # only surface as an OverflowError at startup.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise _Invalid(f"not a valid endpoint {description!r}: port {port} is out of range")


# HOST:PORT, as people write an address: 127.0.0.1:9090, [::1]:9090, localhost:9090.
_SHORTHAND = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>\d{1,3}(?:\.\d{1,3}){3})|(?P<name>localhost))"
    r":(?P<port>\d{1,5})"
)


def _expand_endpoint(description: str) -> str:
    """`HOST:PORT` (an IP literal or localhost) as the Twisted endpoint it stands for."""
    m = _SHORTHAND.fullmatch(description.strip())
    if m is None:
        return description
    if m["v6"]:
        return f"tcp6:{m['port']}:interface={m['v6'].replace(':', chr(92) + ':')}"
    return f"tcp:{m['port']}:interface={m['v4'] or '127.0.0.1'}"


def _endpoints(*, required: bool, auto: bool = False) -> _Check:
    def check(value: object) -> object:
        endpoints = tuple(_expand_endpoint(e) for e in cast("tuple[str, ...]", value))
        if auto and endpoints == ("auto",):
            return endpoints  # made concrete by the service, from the proxy's own port
        if required and not endpoints:
            raise _Invalid("at least one endpoint is required")
        for description in endpoints:
            _check_endpoint(description)
        if len(set(endpoints)) != len(endpoints):
            raise _Invalid("the same endpoint is listed twice")
        return endpoints

    return check


def _endpoint(value: object) -> object:
    if value:
        value = _expand_endpoint(str(value))
        _check_endpoint(value)
    return value


def _web_token(value: object) -> object:
    text = str(value)
    if text and (len(text) < 16 or not _URL_SAFE.fullmatch(text)):
        raise _Invalid("must be at least 16 letters, digits, '-' or '_' (or empty: a random one)")
    return text


_URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def _hostnames(value: object) -> object:
    return tuple(_hostname(name) for name in cast("tuple[str, ...]", value))


_ADDON_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _addon_refs(value: object) -> object:
    refs = cast("tuple[str, ...]", value)  # _STRS.coerce has run
    for ref in refs:
        if not _ADDON_REF.fullmatch(ref):
            raise _Invalid(f"not a 'module:name' reference: {ref!r}")
    return refs


def _scripts(value: object) -> object:
    # Checked now, so a wrong path is one line at start-up naming the key, exit 2; the script's
    # own errors are reported the same way when it is loaded.
    paths = tuple(_expand_user(p) for p in cast("tuple[str, ...]", value))
    for path in paths:
        if not path.endswith(".py"):
            raise _Invalid(f"not a Python file: {path!r}")
        if not os.path.isfile(path):
            raise _Invalid(f"no such file: {path!r}")
    return paths


def _passthrough(value: object) -> object:
    patterns = cast("tuple[str, ...]", value)  # _STRS.coerce has run
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except ValueError as error:
            raise _Invalid(str(error)) from None
    return patterns


def _upstream_proxy(value: object) -> object:
    # "" (direct) and "env" (the environment's variables, read at start-up) need no check.
    from .proxy.via import parse_route

    if value and value != "env":
        try:
            parse_route(str(value))
        except ValueError as error:
            raise _Invalid(str(error)) from None
    return value


def _credentials_file(value: object) -> object:
    # Read now, so a missing or malformed file is a one-line error at start-up, exit 2.
    from .proxy.via import read_credentials

    if value:
        try:
            read_credentials(str(value))
        except ValueError as error:
            raise _Invalid(str(error)) from None
    return value


def _path(value: object) -> object:
    return _expand_user(str(value)) if value else value


def _networks(value: object) -> object:
    networks = cast("tuple[str, ...]", value)  # _STRS.coerce has run
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise _Invalid(f"must be IP addresses or networks (CIDR), got {network!r}") from None
    return networks


def _users_file(value: object) -> object:
    # Read now, so a missing or malformed file is a one-line error at start-up, exit 2.
    from .access import UsersFileError, read_users

    if value:
        try:
            read_users(str(value))
        except UsersFileError as error:
            raise _Invalid(str(error)) from None
    return value


# ---------------------------------------------------------------------------------------------
# Redactors: a secret's value as it may be shown (printed configuration), never the secret.
# ---------------------------------------------------------------------------------------------

#: What a redacted secret is shown as.
REDACTED = "<redacted>"


def _redact_whole(value: object) -> object:
    # A token has no harmless part to keep.
    return REDACTED


def _redact_url_password(value: object) -> object:
    # For URLs with credentials (an upstream proxy's): scheme, user, host and port are what
    # one checks in a printout, and are no secret; the password is.
    text = str(value)
    try:
        parts = urllib.parse.urlsplit(text)
        password = parts.password
    except ValueError:  # e.g. an unbalanced [ in the host: keep nothing rather than guess
        return REDACTED
    if password is None:
        return text
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}"))


# A field's `redact=`: _SECRET for tokens; _SECRET_URL for URL-valued secrets (such as an
# upstream proxy URL with credentials), whose non-password parts one wants to check.
_SECRET = _redact_whole
_SECRET_URL = _redact_url_password


# ---------------------------------------------------------------------------------------------
# The schema. One entry per setting; it drives the file, environment and command-line paths.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    section: str
    key: str
    kind: _Kind
    default: object  # as written in TOML; goes through the same checks as any other value
    checks: tuple[_Check, ...]
    doc: str
    # Set for secrets: what may be shown of a (non-empty) value, e.g. by --print-config.
    redact: _Check | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{_ENV_PREFIX}{self.section}_{self.key}".upper()

    def check(self, value: object) -> object:
        value = self.kind.coerce(value)
        for check in self.checks:
            value = check(value)
        return value


_POSITIVE = (_greater_than(0),)
_F = _Field

_FIELDS: tuple[_Field, ...] = (
    _F("proxy", "listen", _STRS, ["tcp:8080:interface=127.0.0.1"], (_endpoints(required=True),),
       "Twisted endpoint(s) the proxy listens on."),
    _F("proxy", "idle_timeout", _FLOAT, 60.0, _POSITIVE,
       "Seconds a connection may sit idle before it is closed."),
    _F("proxy", "connect_timeout", _FLOAT, 10.0, _POSITIVE,
       "Seconds allowed to connect to an upstream server."),
    _F("proxy", "header_timeout", _FLOAT, 10.0, _POSITIVE,
       "Seconds allowed to receive a request head; slower clients get 408."),
    _F("proxy", "half_close_timeout", _FLOAT, 10.0, _POSITIVE,
       "Seconds a tunnel may stay half-closed before both sides are closed."),
    _F("proxy", "shutdown_timeout", _FLOAT, 10.0, (_at_least(0),),
       "Seconds to drain connections on SIGTERM before closing them."),
    _F("proxy", "sigpipe", _STR, "ignore", (_one_of("ignore", "close", "inherit"),),
       "SIGPIPE: ignore it, close (abort the failed connection) or inherit the parent's."),
    _F("proxy", "workers", _WORKERS, 1, (),
       "Worker processes sharing the listeners (\"auto\": one per usable core); above 1 the "
       "twistd process supervises them and serves the admin endpoint."),
    _F("proxy", "via_name", _STR, "", (_token,),
       "Pseudonym in the Via header we add, by which loops are detected (508); empty: "
       "derived from the host name and listeners, so two instances differ."),
    _F("upstream", "pool_size", _INT, 8, (_at_least(0),),
       "Idle persistent connections kept per (scheme, host, port); 0 disables pooling."),
    _F("upstream", "pool_idle_timeout", _FLOAT, 30.0, _POSITIVE,
       "Seconds an idle pooled connection is kept."),
    _F("upstream", "read_timeout", _FLOAT, 60.0, _POSITIVE,
       "Seconds without a byte from an upstream that owes a response (504, or a cut body)."),
    _F("upstream", "hosts", _HOSTS, {}, (),
       "Static name -> address overrides used instead of DNS (like curl --resolve)."),
    _F("upstream", "proxy", _STR, "", (_upstream_proxy,),
       "Leave through this upstream proxy: http://[user:pass@]host:port, socks5://... (names "
       "resolved here) or socks5h://... (by the proxy); \"env\": curl's https_proxy, "
       "http_proxy, all_proxy and no_proxy variables; empty: direct.", redact=_SECRET_URL),
    _F("upstream", "no_proxy", _STRS, [], (_passthrough,),
       "Host patterns, IP addresses and CIDR networks that go direct, not through the proxy."),
    _F("upstream", "proxy_credentials_file", _STR, "", (_path, _credentials_file),
       "A file whose first line is user:password for the upstream proxy (when its URL has "
       "none)."),
    _F("tls", "ca_dir", _STR, "~/.interceptor", (_non_empty, _path),
       "Directory holding the interception CA certificate and key."),
    _F("tls", "verify_upstream", _BOOL, True, (),
       "Verify upstream server certificates."),
    _F("tls", "upstream_ca_bundle", _STR, "", (_path,),
       "Extra PEM bundle of CAs trusted for upstream servers; empty for none."),
    _F("tls", "passthrough", _STRS, [], (_passthrough,),
       "Hosts (globs), IP addresses or CIDR networks tunnelled without interception."),
    _F("tls", "leaf_cache_size", _INT, 1000, (_at_least(1),),
       "Number of forged leaf certificates kept in memory."),
    _F("tls", "ca_page_host", _STR, "interceptor.ca", (_hostname,),
       "Host name at which the proxy serves its CA certificate for download."),
    _F("tls", "learn_passthrough", _INT, 0, (_at_least(0),),
       "After this many client handshakes in a row refuse our certificate for a host, pass "
       "that host through; 0 never does."),
    _F("tls", "learn_passthrough_ttl", _FLOAT, 3600.0, _POSITIVE,
       "Seconds a learned passthrough lasts before the host is intercepted again."),
    _F("tls", "connect", _STR, "eager", (_one_of("eager", "lazy"),),
       "eager: reach (and verify) the origin before answering an intercepted CONNECT; "
       "lazy: answer 200 at once and connect for the first request inside."),
    _F("access", "allow", _STRS, [], (_networks,),
       "Client addresses or networks (CIDR) allowed to use the proxy; empty allows all."),
    _F("access", "users_file", _STR, "", (_path, _users_file),
       "htpasswd file of bcrypt entries (htpasswd -B); if set, clients must authenticate."),
    _F("limits", "max_open_files", _MAX_FILES, "hard", (_at_least(64),),
       'Open-file soft limit to set at startup: "hard" (raise to the hard limit) or >= 64.'),
    _F("admin", "listen", _STRS, ["auto"], (_endpoints(required=False, auto=True),),
       'Twisted endpoint(s) for the admin/metrics endpoint; "auto": 127.0.0.1 on the port after '
       "the first proxy port's (8081 for 8080); empty disables it."),
    _F("log", "access", _BOOL, True, (),
       "Write one access-log line per request."),
    _F("log", "format", _STR, "text", (_one_of("text", "json"),),
       "Log line format: text or json."),
    _F("hooks", "scripts", _STRS, [], (_scripts,),
       "Addon scripts (mitmproxy's -s): a file's `addons` list, or the module itself."),
    _F("hooks", "addons", _STRS, [], (_addon_refs,),
       "Addons as 'module:name' (an object, or a class made with no arguments), run in order."),
    _F("hooks", "timeout", _FLOAT, 30.0, _POSITIVE,
       "Seconds an async (or @concurrent) hook may take before it counts as failed."),
    _F("hooks", "body_limit", _SIZE, 8 * 1024 * 1024, (_at_least(0),),
       "Bytes of one message body buffered for a request/response hook."),
    _F("hooks", "buffer_budget", _SIZE, 256 * 1024 * 1024, (_at_least(0),),
       "Bytes of bodies buffered for hooks at once, all exchanges together."),
    _F("hooks", "body_overflow", _STR, "stream", (_one_of("stream", "reject"),),
       "Past body_limit or buffer_budget: stream the rest (the hook sees content None) or "
       "reject (413 for a request, 502 for a response)."),
    _F("capture", "store", _STR, "", (_path,),
       "Path of the SQLite flow store (mode 0600); empty: no capture."),
    _F("capture", "body_limit", _SIZE, 1024 * 1024, (_at_least(0),),
       "Bytes of each body stored; the rest is cut (marked, the full size kept)."),
    _F("capture", "max_bytes", _SIZE, 1024 * 1024 * 1024, (_at_least(0),),
       "Stored body bytes past which the oldest flows are pruned."),
    _F("capture", "include", _STRS, [], (_passthrough,),
       "Host patterns to capture; empty captures every host."),
    _F("capture", "exclude", _STRS, [], (_passthrough,),
       "Host patterns never captured."),
    _F("capture", "redact_headers", _STRS, ["proxy-authorization"], (),
       "Header names stored as <redacted>."),
    _F("web", "listen", _STR, "", (_endpoint,),
       "Twisted endpoint of the flow UI (e.g. tcp:8082:interface=127.0.0.1); empty: no UI."),
    _F("web", "token", _STR, "", (_web_token,),
       "The UI's access token; empty: a random one each start, logged with the UI's URL.",
       redact=_SECRET),
    _F("web", "allowed_hosts", _STRS, [], (_hostnames,),
       "Host names the UI answers to besides its listening address (DNS-rebinding guard)."),
)  # fmt: skip

_BY_NAME = {f.name: f for f in _FIELDS}
_BY_ENV = {f.env: f for f in _FIELDS}


def _suggest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {match[0]}?)" if match else ""


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of the effective configuration and where its value came from.

    ``name`` is ``"section.key"``; ``value`` is typed as it is in :class:`Config` (never
    redacted: use :meth:`shown` to display it). ``source`` is ``"default"``,
    ``"file PATH"``, ``"env INTERCEPTOR_SECTION_KEY"`` or ``"command line (--flag)"``.
    """

    name: str
    value: object
    source: str

    @property
    def secret(self) -> bool:
        """Whether the key holds a secret (its field says how to redact it)."""
        return _BY_NAME[self.name].redact is not None

    def shown(self) -> object:
        """The value as it may be displayed: a non-empty secret redacted. An empty secret is
        shown as it is: it says "none set" (for web.token: a random one each start)."""
        redact = _BY_NAME[self.name].redact
        return redact(self.value) if redact is not None and self.value else self.value


def _from_file(path: str) -> dict[str, Setting]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError(path, "", f"cannot read file: {error.strerror or error}") from None
    try:
        # utf-8-sig: tolerate the byte-order mark some editors add.
        document = tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"malformed TOML: not UTF-8 text ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"malformed TOML: {error}") from None

    origin = f"file {path}"
    values: dict[str, Setting] = {}
    for section, table in document.items():
        if section not in _SECTIONS:
            raise ConfigError(path, section, "unknown section" + _suggest(section, [*_SECTIONS]))
        if not isinstance(table, dict):
            raise ConfigError(path, section, f"expected a table, got {_type_name(table)}")
        for key, value in table.items():
            name = f"{section}.{key}"
            spec = _BY_NAME.get(name)
            if spec is None:
                keys = [f.key for f in _FIELDS if f.section == section]
                raise ConfigError(path, name, "unknown key" + _suggest(key, keys))
            try:
                values[name] = Setting(name, spec.check(value), origin)
            except _Invalid as error:
                raise ConfigError(path, name, str(error)) from None
    return values


# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, <SERVICE>_PORT_8080_TCP... for every
# Service in the namespace; a Service named "interceptor" must not stop the proxy. No section is
# called "service" or "port", so these names can never be settings.
_FOREIGN_PREFIXES = (_ENV_PREFIX + "SERVICE_", _ENV_PREFIX + "PORT")


def _from_environ(environ: Mapping[str, str]) -> dict[str, Setting]:
    values: dict[str, Setting] = {}
    for variable in sorted(environ):
        if not variable.startswith(_ENV_PREFIX) or variable == DEFAULT_CONFIG_ENV:
            continue
        if variable.startswith(_FOREIGN_PREFIXES):
            continue
        spec = _BY_ENV.get(variable)
        if spec is None:
            # A typo must not silently fall back to the default.
            hint = _suggest(variable, [*_BY_ENV, DEFAULT_CONFIG_ENV])
            raise ConfigError(_SOURCE_ENV, variable, "unknown setting" + hint)
        try:
            value = spec.check(spec.kind.parse_env(environ[variable]))
            values[spec.name] = Setting(spec.name, value, f"env {variable}")
        except _Invalid as error:
            raise ConfigError(_SOURCE_ENV, variable, str(error)) from None
    return values


def _from_overrides(
    overrides: Mapping[str, object], flags: Mapping[str, str]
) -> dict[str, Setting]:
    values: dict[str, Setting] = {}
    for name, value in overrides.items():
        spec = _BY_NAME.get(name)
        if spec is None:
            raise ConfigError(_SOURCE_CLI, name, "unknown key" + _suggest(name, [*_BY_NAME]))
        flag = flags.get(name)
        origin = f"{_SOURCE_CLI} ({flag})" if flag else _SOURCE_CLI
        try:
            values[name] = Setting(name, spec.check(value), origin)
        except _Invalid as error:
            raise ConfigError(_SOURCE_CLI, name, str(error)) from None
    return values


@dataclass(frozen=True, slots=True)
class ExplainedConfig:
    """A :class:`Config` next to the :class:`Setting` (value and source) of every key, in
    :data:`_FIELDS` order, i.e. the order of ``conf/interceptor.toml``."""

    config: Config
    settings: tuple[Setting, ...]

    def setting(self, name: str) -> Setting:
        """The setting of ``"section.key"``; KeyError for an unknown key."""
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(name)

    def to_toml(self) -> str:
        """The effective configuration as TOML: every section and key, each value followed by
        ``# from <source>``, secrets redacted. Without secrets it loads back to the same
        configuration."""
        return _render_toml(self)


def explain_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    flags: Mapping[str, str] | None = None,
) -> ExplainedConfig:
    """Build the configuration from defaults, a TOML file, the environment and overrides,
    recording where each value came from.

    ``path=None`` uses ``environ["INTERCEPTOR_CONFIG"]`` when set and non-empty, otherwise no
    file is read (an empty ``path`` also means no file). ``environ=None`` means
    ``os.environ``. ``overrides`` maps ``"section.key"`` to already-typed values from the
    command line; ``flags`` maps such a key to the option that gave it (``"--listen"``), for
    its source. Later sources win: overrides > environment > file > defaults.

    Every source is validated in full even when a later one overrides a value, so a broken
    file is reported rather than masked. Raises :class:`ConfigError` on the first problem.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(DEFAULT_CONFIG_ENV) or None
    source = os.fspath(path) if path else ""

    layered = {f.name: Setting(f.name, f.check(f.default), _SOURCE_DEFAULT) for f in _FIELDS}
    if source:
        layered.update(_from_file(source))
    layered.update(_from_environ(environ))
    layered.update(_from_overrides(overrides or {}, flags or {}))

    sections = {
        section: cls(**{f.key: layered[f.name].value for f in _FIELDS if f.section == section})
        for section, cls in _SECTIONS.items()
    }
    settings = tuple(layered[f.name] for f in _FIELDS)
    return ExplainedConfig(Config(**sections, source=source), settings)


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """The configuration from defaults, a TOML file, the environment and overrides: see
    :func:`explain_config`, whose ``config`` this is. Raises :class:`ConfigError`."""
    return explain_config(path, environ, overrides).config


def resolve_admin_listen(config: Config) -> tuple[str, ...]:
    """``admin.listen`` as the service listens on it: ``"auto"`` becomes 127.0.0.1 at the port
    after the first TCP proxy port's (so instances that differ only in ``--listen`` have admin
    ports apart as well), or ``()`` when the proxy has no TCP port."""
    listen = config.admin.listen
    if listen != ("auto",):
        return listen
    for description in config.proxy.listen:
        m = re.match(r"tcp6?:(\d+)", description)
        if m is not None:
            return (f"tcp:{int(m[1]) + 1}:interface=127.0.0.1",)
    return ()


# ---------------------------------------------------------------------------------------------
# Printing (--print-config).
# ---------------------------------------------------------------------------------------------

# TOML forbids control characters other than tab in strings (unescaped) and in comments.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')


def _toml_string(text: str) -> str:
    def escape(found: re.Match[str]) -> str:
        char = found[0]
        return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _toml_value(value: object) -> str:
    # Only the types a typed setting can hold (after its kind's unparse).
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite (validated); repr is valid TOML for both, 1e+20 included
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        # Keys are quoted: host names have dots, which a bare key would turn into nesting.
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_comment(text: str) -> str:
    # A source names a file path, which may hold any character but must not end the comment.
    return _CONTROL.sub("?", one_line(text))


def _render_toml(explained: ExplainedConfig) -> str:
    config = explained.config
    read = f"file {config.source}" if config.source else "no configuration file"
    lines = [
        "# The effective interceptor configuration (--print-config); secrets are redacted.",
        "# Precedence: command line > environment > file > defaults; "
        + _toml_comment(f"{read}."),
    ]
    section = ""
    for setting, spec in zip(explained.settings, _FIELDS, strict=True):
        if spec.section != section:
            section = spec.section
            lines += ["", f"[{section}]"]
        note = f"from {setting.source}"
        if setting.secret and setting.value:
            note += ", redacted"
        if setting.name == "admin.listen" and setting.value == ("auto",):
            # Print "auto" as configured (it loads back as such) and say what it means now.
            derived = resolve_admin_listen(config)
            note += f"; auto: {derived[0]}" if derived else "; auto: off (no TCP proxy port)"
        value = _toml_value(spec.kind.unparse(setting.shown()))
        lines.append(f"{spec.key} = {value}  # {_toml_comment(note)}")
    return "\n".join(lines) + "\n"
