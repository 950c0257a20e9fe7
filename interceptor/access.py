"""Who may use the proxy: client networks (`[access] allow`) and proxy credentials
(`[access] users_file`, an htpasswd file with bcrypt entries as `htpasswd -B` writes them).

A bcrypt check costs milliseconds by design, so it never runs in the reactor thread: the first
check of a credential goes to a thread, and its answer, good or bad, is remembered until the file
changes (a bounded number of them). Checks of one credential already under way are shared, and
at most _MAX_CHECKING run or wait at once: beyond that a new credential is refused (407) rather
than queued without bound. The file's modification time is looked at once a second at most; when
it changed, the file is read again, and if it then cannot be read, the users already loaded stay
in force and the failure is logged once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import bcrypt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .hosts import parse_ip

_log = Logger(namespace="interceptor.access")

# Answers cached per (user, password digest); beyond this the oldest are forgotten.
_CACHE_SIZE = 4096
# Different credentials being checked in threads at once; more are refused, not queued.
_MAX_CHECKING = 64
# Seconds between looks at the users file's modification time.
_RECHECK = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Runs a function in a thread, its result on a Deferred (deferToThreadPool on the reactor).
InThread = Callable[[Callable[[], bool]], Deferred[bool]]


class UsersFileError(Exception):
    """The users file cannot be read or has a line that is not user:bcrypt-hash."""


def read_users(path: str) -> dict[bytes, bytes]:
    """user -> bcrypt hash from an htpasswd file (comments and blank lines skipped)."""
    try:
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError as e:
        raise UsersFileError(f"cannot read {path}: {e.strerror or e}") from None
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not user or not hashed.startswith((b"$2a$", b"$2b$", b"$2y$")):
            raise UsersFileError(f"{path} line {number}: not user:bcrypt-hash (htpasswd -B)")
        users[user] = hashed
    return users


class Users:
    """Proxy credentials from a users file, checked with bcrypt off the reactor thread."""

    def __init__(self, path: str, in_thread: InThread, clock: IReactorTime) -> None:
        self.path = path
        self._in_thread = in_thread
        self._clock = clock
        self._mtime = os.stat(path).st_mtime_ns
        self._next_look = clock.seconds() + _RECHECK
        self._users = read_users(path)
        self._answers: OrderedDict[tuple[bytes, bytes], bool] = OrderedDict()
        self._checking: dict[tuple[bytes, bytes], list[Deferred[bool]]] = {}

    def check(self, authorization: bytes | None) -> bool | Deferred[bool]:
        """Whether a Proxy-Authorization value names a user with the right password: at once
        if known, else on a Deferred (the bcrypt check runs in a thread)."""
        self._reload_if_changed()
        credentials = _basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(password).digest())
        known = self._answers.get(key)
        if known is not None:
            return known
        waiting = self._checking.get(key)
        if waiting is not None:  # the same credential is being checked: share its answer
            d: Deferred[bool] = Deferred()
            waiting.append(d)
            return d
        if len(self._checking) >= _MAX_CHECKING:
            return False
        self._checking[key] = waiting = []

        def remember(ok: bool) -> bool:
            del self._checking[key]
            self._answers[key] = ok
            if len(self._answers) > _CACHE_SIZE:
                self._answers.popitem(last=False)
            for other in waiting:
                other.callback(ok)
            return ok

        return self._in_thread(lambda: bcrypt.checkpw(password, hashed)).addCallback(remember)

    def _reload_if_changed(self) -> None:
        now = self._clock.seconds()
        if now < self._next_look:
            return
        self._next_look = now + _RECHECK
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as e:
            mtime, error = -1, f"{e.strerror or e}"
        else:
            error = ""
        if mtime == self._mtime:
            return  # unchanged (or still unreadable: said so already)
        self._mtime = mtime
        if not error:
            try:
                users = read_users(self.path)
            except UsersFileError as e:
                error = str(e)
            else:
                self._users = users
                self._answers.clear()
                _log.info("users file {path} read again: {n} users", path=self.path, n=len(users))
                return
        _log.warn(
            "users file {path} not read again ({e}): keeping the users loaded",
            path=self.path,
            e=error,
        )


def _basic(authorization: bytes | None) -> tuple[bytes, bytes] | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


class Refusal(NamedTuple):
    """Why a client may not use the proxy: the status and one-line reason it is answered."""

    status: int
    text: str
    reason: str  # counted by this (interceptor_access_refusals_total)
    headers: Sequence[tuple[bytes, bytes]] = ()


# How to authenticate is said with every 407 (RFC 9110 11.7.1).
_BAD_CREDENTIALS = Refusal(
    407,
    "proxy authentication required",
    "credentials",
    ((b"Proxy-Authenticate", b'Basic realm="interceptor"'),),
)


class Access:
    """The access policy: which client addresses may connect, and which credentials are good."""

    def __init__(self, allow: Sequence[str] = (), users: Users | None = None) -> None:
        self._allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allow
        )
        self.users = users
        # Neither an allow list nor credentials: anyone who can connect may use the proxy.
        self.open = not self._allow and users is None

    def admit(
        self, client: str, credentials: bytes | None
    ) -> Refusal | None | Deferred[Refusal | None]:
        """None if `client` (its address) with `credentials` (its Proxy-Authorization) may use
        the proxy, else why not; on a Deferred while a credential is checked in a thread."""
        if not self.client_allowed(client):
            text = f"client address {client} is not allowed to use this proxy"
            return Refusal(403, text, "address")
        if self.users is None:
            return None
        verdict = self.users.check(credentials)
        if verdict is True or verdict is False:
            return None if verdict else _BAD_CREDENTIALS
        return verdict.addCallbacks(
            lambda ok: None if ok else _BAD_CREDENTIALS, lambda failure: _BAD_CREDENTIALS
        )

    def client_allowed(self, host: str) -> bool:
        """The client address is in `allow` (or `allow` is empty)."""
        if not self._allow:
            return True
        ip = parse_ip(host)
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip is not None and any(ip in network for network in self._allow)
