"""Learned passthrough: hosts whose clients keep refusing our certificate are tunnelled as-is.

Apps that pin their server's certificate reject the leaf we mint: their TLS handshake with us
fails (an alert such as unknown CA or bad certificate, or a close before it completes). After
`threshold` such failures in a row for one host, CONNECTs to it are relayed opaquely for `ttl`
seconds, so the app works (unseen) instead of breaking. A completed handshake resets the count.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger(namespace="interceptor.passthrough")

# Hosts whose failures are counted (and hosts learned) at once; beyond this the oldest count,
# or the learned host nearest its end, is forgotten, so a client naming random hosts cannot grow
# either table.
_TRACKED = 10_000


class LearnedPassthrough:
    """Per-host counts of refused handshakes, and the hosts learned from them (with expiry)."""

    def __init__(self, clock: IReactorTime, threshold: int = 0, ttl: float = 3600.0) -> None:
        self.clock = clock
        self.threshold = threshold  # 0: never learn
        self.ttl = ttl
        self.learned_total = 0
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._until: dict[str, float] = {}  # host -> when its passthrough ends

    def __contains__(self, host: str) -> bool:
        until = self._until.get(host)
        if until is None:
            return False
        if until <= self.clock.seconds():
            del self._until[host]
            _log.info("learned passthrough for {host} expired: intercepting again", host=host)
            return False
        return True

    def refused(self, host: str) -> None:
        """A client's TLS handshake for `host` failed: it did not accept our certificate."""
        if not self.threshold:
            return
        n = self._failures.pop(host, 0) + 1
        if n < self.threshold:
            self._failures[host] = n
            if len(self._failures) > _TRACKED:
                self._failures.popitem(last=False)
            return
        now = self.clock.seconds()
        if len(self._until) >= _TRACKED:
            self._until = {h: t for h, t in self._until.items() if t > now}
            if len(self._until) >= _TRACKED:
                del self._until[min(self._until, key=self._until.__getitem__)]
        self._until[host] = now + self.ttl
        self.learned_total += 1
        _log.warn(
            "passing {host} through for {ttl:.0f} s: {n} client handshakes in a row refused "
            "our certificate (a pinning client?)",
            host=host,
            ttl=self.ttl,
            n=n,
        )

    def accepted(self, host: str) -> None:
        """A client completed its TLS handshake for `host`: our certificate is fine there."""
        self._failures.pop(host, None)

    def listing(self) -> list[tuple[str, float]]:
        """(host, seconds left) of every host passed through now, soonest to expire first."""
        now = self.clock.seconds()
        return sorted(
            ((host, until - now) for host, until in self._until.items() if until > now),
            key=lambda item: item[1],
        )
