"""Tag each request with the answer of a lookup the hook awaits, without holding up others.

`requestheaders` is a coroutine: while it awaits, the proxy serves every other client, and this
request waits (up to `[hooks] timeout`) before it goes upstream with `X-Lookup: <answer>`. The
lookup stands for a network call: an asyncio one (`asyncio.sleep` here; aiohttp, an async DNS
resolver, ...) and a Twisted one (a Deferred: `treq`, `twisted.names`, ...), awaited in the
same hook. asyncio needs the asyncio reactor, which the proxy installs whenever scripts or
addons are configured; the Deferred alone would work on any reactor.

Load it:

    [hooks]
    scripts = ["examples/async_lookup.py"]

or `INTERCEPTOR_HOOKS_SCRIPTS=examples/async_lookup.py twistd -n --pidfile= interceptor`.
"""

import asyncio

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from interceptor import http

# What the pretend services know; anything else is "unknown".
OWNERS = {"127.0.0.1": "loopback", "localhost": "loopback"}
DELAY = 0.05  # seconds each pretend call takes


async def owner_of(host: str) -> str:
    """An asyncio lookup: who owns `host`."""
    await asyncio.sleep(DELAY)
    return OWNERS.get(host, "unknown")


def risk_of(host: str) -> Deferred[str]:
    """A Twisted lookup: how risky `host` is, as a Deferred that fires later."""
    return task.deferLater(reactor, DELAY, lambda: "low" if host in OWNERS else "unrated")


async def requestheaders(flow: http.HTTPFlow) -> None:
    """Await both lookups, then tag the request with what they said."""
    host = flow.request.host
    owner = await owner_of(host)
    risk = await risk_of(host)
    flow.request.headers["X-Lookup"] = f"owner={owner}; risk={risk}"
