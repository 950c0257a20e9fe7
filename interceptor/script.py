"""`@concurrent` (`interceptor.script.concurrent`): run a synchronous hook in a thread.

As in mitmproxy: the flow waits for the hook while the reactor serves everyone else. The hook
runs in the reactor's thread pool, so it must touch nothing but its flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def concurrent(fn: F) -> F:
    """Mark a hook to run in a thread (the hook runner does the rest)."""
    if fn.__name__ in ("load", "running", "done"):
        raise ValueError(f"@concurrent is not supported for the {fn.__name__} event")
    fn.concurrent = True  # type: ignore[attr-defined]
    return fn


__all__ = ["concurrent"]
