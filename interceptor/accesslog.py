"""The access log: one line per exchange, as a hook on `done`.

Text lines read like a web server's; in JSON mode every field is its own key, so log shippers
need no parsing.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .flow import Flow

_log = Logger(namespace="interceptor.access")


class AccessLog:
    """Addon: logs client, method, URL, status, bytes and duration of each exchange."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def done(self, flow: Flow) -> None:
        """Log one finished (or failed) exchange."""
        req = flow.request
        duration = self.clock.seconds() - flow.started
        _log.info(
            "{client} {method} {url} {status} {bytes} {duration:.4f}s{error_text}",
            client=flow.client,
            method=req.method if req is not None else "-",
            url=req.url if req is not None else "-",
            status=flow.status,
            bytes=flow.bytes_out,
            bytes_in=flow.bytes_in,
            duration=duration,
            error=flow.error,
            error_text=f" ({flow.error})" if flow.error else "",
        )
