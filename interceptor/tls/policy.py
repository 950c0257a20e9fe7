"""Choices that the CA, the leaves and the origin side must make the same way.

The lowest floor of :mod:`interceptor.tls`, beside :mod:`.errors`: the certificate times
shared by :mod:`.ca` and :mod:`.leaf`, and the one application protocol that both the
client side (:mod:`.leaf`) and the origin side (:mod:`.origin`) negotiate.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

__all__ = ["BACKDATE", "CN_MAX", "HTTP11", "utc"]

# The only ALPN protocol we speak, to clients and to origins: the proxy is HTTP/1.1 only.
HTTP11 = b"http/1.1"
# Backdate notBefore so clients whose clocks run slow still accept fresh certificates.
BACKDATE = datetime.timedelta(days=1)
CN_MAX = 64  # X.520 upper bound; cryptography refuses longer common names.


def utc(now: Callable[[], float]) -> datetime.datetime:
    """The reading of *now* (a ``time.time``-like clock, replaced in tests) as aware UTC."""
    return datetime.datetime.fromtimestamp(now(), tz=datetime.UTC)
