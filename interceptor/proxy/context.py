"""What every session of one proxy service shares, and the seams it is wired through."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.python.failure import Failure

from ..access import Access
from ..addons.chain import HookChain
from ..hosts import HostPatterns, IPAddress, parse_ip
from ..http import HTTPFlow
from ..process import Counters
from .headers import via_value
from .passthrough import LearnedPassthrough
from .upstream import Pool
from .via import Route, Routes

if TYPE_CHECKING:
    from .session import Session
    from .tunnel import TunnelUpstream


class TunnelOwner(Protocol):
    """What a passthrough tunnel's upstream leg reports to while it connects."""

    @property
    def gone(self) -> bool:
        """The client this tunnel was for has ended."""

    def tunnel_connected(self, leg: TunnelUpstream) -> None:
        """The upstream leg is connected: relay opaquely from now on."""

    def tunnel_failed(self, reason: Failure) -> None:
        """The upstream leg could not be connected."""


# intercept(host, port, origin certificate or None) -> the client-side TLS context factory for
# that CONNECT authority (the leaf also names what the origin's certificate names)
Intercept = Callable[[str, int, object | None], IOpenSSLContextFactory]
# tunnel_connect(host, port, owner, route) -> the upstream leg of a passthrough tunnel,
# connecting (through `route`'s upstream proxy, or direct for None)
TunnelConnect = Callable[[str, int, TunnelOwner, Route | None], "TunnelUpstream"]


class OwnAddresses:
    """The addresses this process listens on (proxy, admin...): a destination there would be
    the proxy talking to itself, hop after hop, until descriptors run out.

    Checked before connecting, for IP literals and `localhost` (after `[upstream] hosts`): a
    listener on 0.0.0.0 or :: takes every address of this machine that we know of.
    """

    def __init__(self, listening: list[tuple[str, int]], local: frozenset[IPAddress]) -> None:
        self._exact = {(parse_ip(host), port) for host, port in listening}
        self._wildcard_ports = {
            port for ip, port in self._exact if ip is not None and ip.is_unspecified
        }
        self._local = local
        self.ports = frozenset(port for _, port in self._exact)  # a quick first test

    def __contains__(self, destination: tuple[str, int]) -> bool:
        host, port = destination
        if port not in self.ports:
            return False  # nearly every destination: decided without parsing the host
        ips: tuple[IPAddress | None, ...] = _LOCALHOST if host == "localhost" else (parse_ip(host),)
        for ip in ips:
            if ip is None:
                continue
            if ip.is_unspecified:  # a connect to 0.0.0.0 or :: reaches this machine's loopback
                ip = _LOCALHOST[0] if ip.version == 4 else _LOCALHOST[1]
            if (ip, port) in self._exact:
                return True
            if port in self._wildcard_ports and (ip.is_loopback or ip in self._local):
                return True
        return False


_LOCALHOST: tuple[IPAddress, IPAddress] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


class ProxyContext:
    """Shared by every session: clock, counters, the pool, hooks, timeouts, TLS wiring."""

    def __init__(
        self,
        clock: IReactorTime,
        counters: Counters,
        pool: Pool,
        hooks: HookChain,
        idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        half_close_timeout: float = 10.0,
        intercept: Intercept | None = None,
        passthrough: Callable[[str], bool] | None = None,
        tunnel_connect: TunnelConnect | None = None,
        describe_tls_failure: Callable[[Failure], str] | None = None,
        describe_client_tls_failure: Callable[[Failure, str], str] | None = None,
        eager: bool = False,
        via: str | None = None,
        routes: Routes | None = None,
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.pool = pool
        self.hooks = hooks
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.half_close_timeout = half_close_timeout
        self.intercept = intercept  # None: every CONNECT is an opaque tunnel
        self.eager = eager  # [tls] connect = "eager": reach the origin before answering CONNECT
        # [proxy] via_name: the pseudonym in the Via we add, and the one loops are known by
        # (None: no Via at all, for unit tests of everything else; the service always sets one).
        self.via = via.encode("ascii") if via is not None else None
        self._via_values = {v: via_value(v, self.via) for v in ("1.1", "1.0")} if self.via else {}
        self.passthrough = passthrough or _never
        # [upstream] proxy and no_proxy: each flow's default route (an addon may change it).
        self.routes = routes or Routes(None, None, HostPatterns([]), False)
        self.tunnel_connect = tunnel_connect
        self.describe_tls_failure = describe_tls_failure or Failure.getErrorMessage
        self.describe_client_tls_failure = describe_client_tls_failure or (
            lambda reason, host: f"client TLS handshake for {host} failed: "
            + reason.getErrorMessage()
        )
        # Set by the service once it listens; destinations there are refused (403).
        self.own = OwnAddresses([], frozenset())
        self.access = Access()  # who may use the proxy ([access]); the service sets it
        self.learned = LearnedPassthrough(clock)  # [tls] learn_passthrough; off by default
        self.sessions: set[Session] = set()
        self.draining = False
        self._closed: list[Callable[[], None]] = []

    def via_for(self, version: str) -> bytes | None:
        """Our Via value for a message received as HTTP/`version` (None: we add none)."""
        value = self._via_values.get(version)
        if value is None and self.via is not None:
            value = via_value(version, self.via)
        return value

    def record(self, flow: HTTPFlow) -> None:
        """An exchange is over: count what the client got and tell the hooks (the access log)."""
        status = flow.status
        counters = self.counters
        counters.responses[f"{status // 100}xx" if status else "none"] += 1
        counters.response_codes[status] += 1
        started = flow.timestamp_created
        counters.request_duration.observe(self.clock.seconds() - started)
        resp = flow.response
        if resp is not None:
            counters.time_to_first_byte.observe(resp.timestamp_start - started)
        self.hooks.flow_end(flow)

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every client connection has ended (at once if none is open)."""
        if not self.sessions:
            callback()
        else:
            self._closed.append(callback)

    def forget(self, session: Session) -> None:
        """A client connection ended."""
        self.sessions.discard(session)
        if self._closed and not self.sessions:
            waiters, self._closed = self._closed, []
            for callback in waiters:
                callback()


def _never(host: str) -> bool:
    return False


# How a described TLS failure (tls.describe_tls_failure, describe_client_tls_failure) begins,
# and the metric label it is counted under.
_TLS_FAILURE_KINDS = (
    ("client does not trust", "untrusted_ca"),
    ("no shared protocol", "no_shared_version"),
    ("client closed during", "closed_in_handshake"),
    ("upstream certificate verify failed", "verify_failed"),
    ("upstream name mismatch", "name_mismatch"),
)


def tls_failure_kind(description: str) -> str:
    """The reason label of a TLS failure's one-line description ("other" if none fits)."""
    for start, kind in _TLS_FAILURE_KINDS:
        if description.startswith(start):
            return kind
    return "other"
