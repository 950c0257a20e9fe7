"""The hook chain: ordered addons that see each exchange; a failing hook never breaks the proxy.

An addon is any object with some of: `request(flow)`, `response(flow)`, `error(flow)`,
`done(flow)`. They run in order; an exception is logged and counted, and the chain goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from .flow import Flow

_log = Logger(namespace="interceptor.hooks")

_EVENTS = ("request", "response", "error", "done")


class HookChain:
    """Dispatches flow events to addons, in order, containing their failures."""

    def __init__(self, addons: Sequence[Any] = ()) -> None:
        self.failures = 0
        self._by_event: dict[str, list[Any]] = {e: [] for e in _EVENTS}
        for addon in addons:
            self.add(addon)

    def add(self, addon: Any) -> None:
        """Append an addon; only the events it implements are dispatched to it."""
        for event in _EVENTS:
            fn = getattr(addon, event, None)
            if fn is not None:
                self._by_event[event].append(fn)

    def _run(self, event: str, flow: Flow) -> None:
        for fn in self._by_event[event]:
            try:
                fn(flow)
            except Exception:
                self.failures += 1
                _log.failure("hook {hook!r} failed on {event}", hook=fn, event=event)

    def request(self, flow: Flow) -> None:
        """A request head arrived (may set flow.local to answer without an upstream)."""
        if self._by_event["request"]:
            self._run("request", flow)

    def response(self, flow: Flow) -> None:
        """A response head arrived from upstream, before it is sent on."""
        if self._by_event["response"]:
            self._run("response", flow)

    def error(self, flow: Flow) -> None:
        """The exchange failed (flow.error says why)."""
        if self._by_event["error"]:
            self._run("error", flow)

    def done(self, flow: Flow) -> None:
        """The exchange ended, one way or another (access logging lives here)."""
        if self._by_event["done"]:
            self._run("done", flow)
