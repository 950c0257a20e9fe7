"""The hook chain: ordered addons that see each exchange; a failing hook never breaks the proxy.

An addon is any object with some of: `request(flow)`, `response(flow)`, `error(flow)`,
`done(flow)`. They run in order; an exception is logged and counted, and the chain goes on.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from ..flow import Flow

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


class AddonError(Exception):
    """An addon reference that cannot be loaded; the message is one line naming it."""


def load_addons(refs: Sequence[str]) -> list[Any]:
    """Import each 'module:name'; a class (or other callable type) is instantiated with no args."""
    addons = []
    for ref in refs:
        module_name, _, attr = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as e:  # ImportError, AttributeError, or the module's own failure
            raise AddonError(
                f"hooks.addons: cannot load {ref!r}: {type(e).__name__}: {e}"
            ) from None
        if isinstance(obj, type):
            try:
                obj = obj()
            except Exception as e:
                raise AddonError(f"hooks.addons: {ref!r} failed to start: {e}") from None
        if not any(callable(getattr(obj, event, None)) for event in _EVENTS):
            raise AddonError(
                f"hooks.addons: {ref!r} has none of {', '.join(_EVENTS)}: not an addon"
            )
        addons.append(obj)
    return addons
