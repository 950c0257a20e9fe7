"""Process-wide start-up: the SIGPIPE policies, the descriptor limit, and the counters.

SIGPIPE: CPython ignores it at start-up, but launchers, embedders and `subprocess` children can
hand us SIG_DFL, under which a write to a reset socket kills the whole process (exit 141). So the
`ignore` policy sets SIG_IGN explicitly; `close` installs a handler that finds the failed sockets
through an epoll set and aborts them with their peers; `inherit` touches nothing (to show the
hazard).
"""

from __future__ import annotations

import os
import resource
import select
import signal
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol


class Histogram:
    """Counts of observations per bucket, and their sum: what a Prometheus histogram exports,
    kept as plain numbers (one bisect and two adds an observation) and turned into metric
    families only when /metrics is read."""

    __slots__ = ("bounds", "counts", "sum")

    # Seconds, from a fast loopback exchange to a slow origin (Prometheus' defaults, widened).
    SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0)  # fmt: skip

    def __init__(self, bounds: tuple[float, ...] = SECONDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """One observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as a histogram's buckets are exported, +Inf last."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Counters:
    """Every number the admin endpoint exports, kept in one place. Plain ints: cheap to bump."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()  # side -> connections open now
        self.total: Counter[str] = Counter()  # side -> connections ever made
        self.endings: Counter[tuple[str, str]] = Counter()  # (side, ending) -> n
        self.aborts: Counter[str] = Counter()  # reason -> n
        self.responses: Counter[str] = Counter()  # status class ("2xx") -> n
        self.response_codes: Counter[int] = Counter()  # status -> n
        self.tls_failure_reasons: Counter[tuple[str, str]] = Counter()  # (side, reason) -> n
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.tls_failures: Counter[str] = Counter()  # side -> n
        self.hook_failures: Counter[tuple[str, str]] = Counter()  # (addon, event) -> n
        self.refused: Counter[str] = Counter()  # access refusals: reason -> n
        self.upstream_proxy_failures: Counter[str] = Counter()  # reason -> n
        self.sigpipe_received = 0
        self.sigpipe_aborts = 0
        self.sigpipe_policy = ""
        self.sigpipe_replaced = ""
        # Seconds: a request's whole exchange, to its response head, an upstream connect, and
        # a TLS handshake with an origin and with an intercepted client.
        self.request_duration = Histogram()
        self.time_to_first_byte = Histogram()
        self.upstream_connect = Histogram()
        self.upstream_tls = Histogram()
        self.client_tls = Histogram()


class Abortable(Protocol):
    """What the SIGPIPE handler needs from a registered connection."""

    def sigpipe_abort(self) -> None:
        """Abort this connection and its peer (no logging: we may be in a signal handler)."""


class SocketRegistry:
    """Every proxied socket in an epoll set with an empty event mask.

    Hang-up and error are always reported by epoll, whatever the mask, so `failed()` is one
    non-blocking epoll_wait: microseconds even with ten thousand sockets registered.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._conns: dict[int, Abortable] = {}

    def add(self, fd: int, conn: Abortable) -> None:
        """Watch `fd` on behalf of `conn`."""
        try:
            self._epoll.register(fd, 0)
        except OSError:
            return
        self._conns[fd] = conn

    def remove(self, fd: int, conn: Abortable) -> None:
        """Stop watching; a no-op if `fd` was closed and reused meanwhile."""
        if self._conns.get(fd) is conn:
            del self._conns[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel dropped it from the set

    def failed(self) -> list[Abortable]:
        """Connections whose sockets hold a pending error (a reset Twisted has not seen yet).

        Only EPOLLERR counts. EPOLLHUP alone is also what an orderly close in both directions
        looks like (a tunnel whose FINs crossed, with data still to relay), and aborting that
        would cut a healthy transfer. The socket whose send() raised the SIGPIPE has had its
        error consumed by that send; Twisted reports that one as a lost connection by itself.
        """
        conns = self._conns
        return [
            conns[fd]
            for fd, events in self._epoll.poll(0)
            if events & select.EPOLLERR and fd in conns
        ]

    def __len__(self) -> int:
        return len(self._conns)


def _disposition_name(handler: Any) -> str:
    if handler is signal.SIG_IGN:
        return "SIG_IGN"
    if handler is signal.SIG_DFL:
        return "SIG_DFL"
    if handler is None:
        return "unknown (set outside Python)"
    return "a handler"


def apply_sigpipe_policy(
    mode: str, counters: Counters, registry: SocketRegistry | None
) -> tuple[str, str]:
    """Set the SIGPIPE disposition for `mode`; returns (policy applied, disposition replaced)."""
    previous = _disposition_name(signal.getsignal(signal.SIGPIPE))
    if mode == "ignore":
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    elif mode == "close":
        if registry is None:
            raise ValueError("close mode needs a socket registry")
        signal.signal(signal.SIGPIPE, _sigpipe_handler(counters, registry))
    counters.sigpipe_policy = mode
    counters.sigpipe_replaced = previous
    return mode, previous


def _sigpipe_handler(counters: Counters, registry: SocketRegistry) -> Callable[[int, Any], None]:
    # Tiny on purpose: count and abort. No logging: a dead log pipe is itself a SIGPIPE source.
    def handler(signum: int, frame: Any) -> None:
        counters.sigpipe_received += 1
        for conn in registry.failed():
            counters.sigpipe_aborts += 1
            try:
                conn.sigpipe_abort()
            except Exception:  # noqa: S110 - a handler must never raise into arbitrary code
                pass

    return handler


def raise_nofile(target: int | None) -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to `target` (None: the hard limit). Returns (old, new, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if target is None else target
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            want = soft
    return soft, want, hard


def open_fd_count() -> int:
    """Descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopper:
    """Stops the reactor once, however many signals and callers ask for it.

    twistd's own SIGINT and SIGTERM handlers call `reactor.stop()` on every signal, and a
    second call, while the first stop is still draining, raises ReactorNotRunning: a
    traceback for a user who presses Ctrl-C twice, or for a worker that gets the terminal's
    SIGINT (sent to the whole process group) and then its supervisor's SIGTERM. `install`
    replaces those handlers once the reactor runs; every stop of ours goes through `stop`.
    """

    def __init__(self, reactor: Any, log: Any) -> None:
        self.reactor = reactor
        self.log = log
        self.stopping = False

    def install(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        """Take `signals` over from the reactor (call it once the reactor runs)."""
        for sig in signals:
            signal.signal(sig, self._signalled)
        # (a stop that did not come through here, e.g. from a test, counts too)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._begun)

    def _begun(self) -> None:
        self.stopping = True

    def _signalled(self, signum: int, frame: Any) -> None:
        # As Twisted's handlers do: the work is done by the reactor, not in the handler.
        self.reactor.callFromThread(self.stop, signal.Signals(signum).name)

    def stop(self, why: str) -> None:
        """Stop the reactor, logging `why` (a signal's name, or a sentence); a no-op when a
        stop has begun already."""
        if self.stopping:
            self.log.info("{why} while stopping: already shutting down", why=why)
            return
        self.stopping = True
        if why.startswith("SIG"):
            self.log.info("Received {why}, shutting down.", why=why)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
