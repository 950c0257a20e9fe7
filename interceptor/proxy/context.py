"""What every session of one proxy service shares, and the seams it is wired through."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.python.failure import Failure

from ..addons.chain import HookChain
from ..flow import Flow
from ..process import Counters
from .upstream import Pool

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


# intercept(host, port) -> the client-side TLS context factory for that CONNECT authority
Intercept = Callable[[str, int], IOpenSSLContextFactory]
# tunnel_connect(host, port, owner) -> the upstream leg of a passthrough tunnel, connecting
TunnelConnect = Callable[[str, int, TunnelOwner], "TunnelUpstream"]


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
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.pool = pool
        self.hooks = hooks
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.half_close_timeout = half_close_timeout
        self.intercept = intercept  # None: every CONNECT is an opaque tunnel
        self.passthrough = passthrough or _never
        self.tunnel_connect = tunnel_connect
        self.describe_tls_failure = describe_tls_failure or Failure.getErrorMessage
        self.sessions: set[Session] = set()
        self.draining = False
        self._closed: list[Callable[[], None]] = []

    def record(self, flow: Flow) -> None:
        """An exchange is over: count what the client got and tell the hooks (the access log)."""
        status = flow.status
        self.counters.responses[f"{status // 100}xx" if status else "none"] += 1
        self.hooks.done(flow)

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
