"""The hook chain: addons see each flow's events in order, and none of them can break it.

Events have mitmproxy's names and order: `http_connect` (a CONNECT), `requestheaders`,
`request` (the body is here if buffered), `responseheaders`, `response`, `error`; and the addon
lifecycle `load(loader)`, `running()`, `done()`. `flow_end(flow)` is ours: every exchange ends
there once, however it ended (the access log and capture listen to it); so is `tunnel_end(flow)`,
once the relay a passthrough CONNECT or a 101 opened is over (capture).

A hook may return an awaitable (`async def`, a Deferred, or a sync hook marked
`@concurrent`, which runs in a thread): the flow waits for it, up to `[hooks] timeout`, while
the reactor serves everyone else. A coroutine may await Deferreds and, under the asyncio reactor,
asyncio futures too, in the same hook.

Containment: before each hook the flow's heads are noted; after it they are checked (header
names are tokens, values carry no CR, LF or NUL, `str` becomes bytes, the status is a final one,
the target is one we can send). A hook that raises, times out or leaves an invalid head has
failed: it is logged once (addon, event, URL), counted, and the flow goes on from the state
before that hook.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..http import Headers, HTTPFlow, Request, Response
from ..process import Counters

_log = Logger(namespace="interceptor.hooks")

FLOW_EVENTS = ("http_connect", "requestheaders", "request", "responseheaders", "response", "error")
LIFECYCLE_EVENTS = ("load", "running", "done")
# Ours, not mitmproxy's: the flow is over (access log, capture). Not contained like the rest:
# only the proxy's own addons are expected here, and they change nothing.
END_EVENT = "flow_end"
# Also ours: the relay a flow opened (passthrough CONNECT, 101) is over (capture).
TUNNEL_EVENT = "tunnel_end"
EVENTS = FLOW_EVENTS + LIFECYCLE_EVENTS + (END_EVENT, TUNNEL_EVENT)

# (addon name, bound hook, trusted): the proxy's own addons are trusted, so they skip the
# checks and the awaitable handling that every request would otherwise pay for (the CA page
# looks at every request head).
Handler = tuple[str, Callable[..., Any], bool]


def addon_name(addon: Any) -> str:
    """How logs and metrics name an addon: its `name`, a script's file name, or its class."""
    name = getattr(addon, "name", None)
    if isinstance(name, str) and name:
        return name
    if inspect.ismodule(addon):
        return str(getattr(addon, "__file__", None) or addon.__name__).rpartition("/")[2]
    return type(addon).__name__.lower()


class HookChain:
    """Dispatches flow events to addons, in order, containing their failures."""

    def __init__(
        self,
        addons: Sequence[Any] = (),
        clock: IReactorTime | None = None,
        timeout: float = 30.0,
        counters: Counters | None = None,
        body_limit: int = 8 * 1024 * 1024,
        buffer_budget: int = 256 * 1024 * 1024,
        reject: bool = False,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.counters = counters or Counters()
        # Bodies held for hooks: at most body_limit per message, buffer_budget in all; past
        # either the rest streams, or (reject) the message is refused.
        self.body_limit = body_limit
        self.buffer_budget = buffer_budget
        self.reject = reject
        self.buffered = 0
        self._overflow = "body_limit"
        self.addons: list[Any] = []
        self.addons_loaded = False  # a user's addon, not only the proxy's own
        self._by_event: dict[str, list[Handler]] = {e: [] for e in EVENTS}
        # Which bodies are buffered: only those a `request` or `response` hook will read.
        self.request_bodies = False
        self.response_bodies = False
        # Bytes of each streamed body copied for a trusted addon that sets `tap_bodies` (the
        # capture: it stores them); 0, no copy is made.
        self.tap_limit = 0
        for addon in addons:
            self.add(addon)

    @property
    def failures(self) -> int:
        """Hook failures so far, all addons and events."""
        return sum(self.counters.hook_failures.values())

    def add(self, addon: Any, trusted: bool = False) -> None:
        """Append an addon; only the events it implements are dispatched to it. `trusted`:
        one of the proxy's own, which changes heads only validly and never waits."""
        self.addons.append(addon)
        if not trusted:
            self.addons_loaded = True
        else:
            self.tap_limit = max(self.tap_limit, getattr(addon, "tap_bodies", 0))
        name = addon_name(addon)
        for event in EVENTS:
            fn = getattr(addon, event, None)
            if callable(fn):
                self._by_event[event].append((name, fn, trusted))
        self.request_bodies = bool(self._by_event["request"])
        self.response_bodies = bool(self._by_event["response"])

    # -- the body budget -------------------------------------------------------------------

    def over_limit(self, declared: int | None) -> bool:
        """A body whose declared length is past body_limit is never buffered."""
        if declared is not None and declared > self.body_limit:
            self._overflow = "body_limit"
            return True
        return False

    def take(self, held: int, more: int) -> bool:
        """Room for `more` bytes of a body of which `held` are buffered (and taken if so)."""
        if held + more > self.body_limit:
            self._overflow = "body_limit"
            return False
        if self.buffered + more > self.buffer_budget:
            self._overflow = "buffer_budget"
            return False
        self.buffered += more
        return True

    def give(self, n: int) -> None:
        """`n` buffered bytes are let go of."""
        self.buffered -= n

    def too_large(self, message: str) -> str:
        """The one-line reason a `message` ("request", "response") body was refused."""
        if self._overflow == "body_limit":
            return f"{message} body larger than [hooks] body_limit ({_size(self.body_limit)})"
        return (
            f"{message} body refused: [hooks] buffer_budget ({_size(self.buffer_budget)}) "
            "is in use by other exchanges"
        )

    def handles(self, event: str) -> bool:
        """Some addon implements `event`."""
        return bool(self._by_event[event])

    def events_of(self, addon: Any) -> list[str]:
        """The flow and lifecycle events `addon` handles (for the start-up log)."""
        return [e for e in FLOW_EVENTS + LIFECYCLE_EVENTS if callable(getattr(addon, e, None))]

    # -- flow events -----------------------------------------------------------------------

    def run(self, event: str, flow: HTTPFlow) -> Deferred[None] | None:
        """Run `event`'s hooks on `flow`. None when they all finished at once (the common
        case: no Deferred is made); else a Deferred that fires (never fails) when they have."""
        handlers = self._by_event[event]
        if not handlers:
            return None
        return self._run_from(handlers, 0, event, flow, None)

    def _run_from(
        self,
        handlers: list[Handler],
        i: int,
        event: str,
        flow: HTTPFlow,
        done: Deferred[None] | None,
    ) -> Deferred[None] | None:
        while i < len(handlers):
            name, fn, trusted = handlers[i]
            i += 1
            if trusted:
                try:
                    fn(flow)
                except Exception:
                    self._crashed(name, event, flow)
                continue
            before = _Snapshot(event, flow)
            try:
                if getattr(fn, "concurrent", False) and self.clock is not None:
                    result: Any = _in_thread(self.clock, fn, flow)
                else:
                    result = fn(flow)
                waiting = _awaitable(result)
            except Exception:
                self._failed(name, event, flow, before, Failure())
                continue
            if waiting is not None:
                if waiting.called:
                    # A coroutine that never had to wait (Twisted ran it at once): as a plain
                    # hook, with no timer, no pause and no Deferred for the exchange.
                    outcome: list[object] = []
                    waiting.addBoth(outcome.append)
                    if isinstance(outcome[0], Failure):
                        self._failed(name, event, flow, before, outcome[0])
                        continue
                else:
                    if self.clock is not None:
                        waiting.addTimeout(self.timeout, self.clock)
                    if done is None:
                        done = Deferred()
                    waiting.addBoth(self._resumed, name, handlers, i, event, flow, before, done)
                    return done
            if not self._settled(name, event, flow, before):
                continue
            if flow.intercepted:
                if done is None:
                    done = Deferred()
                flow.wait_for_resume().addCallback(self._go_on, handlers, i, event, flow, done)
                return done
        if done is not None:
            done.callback(None)
        return done

    def _resumed(
        self,
        result: object,
        name: str,
        handlers: list[Handler],
        i: int,
        event: str,
        flow: HTTPFlow,
        before: _Snapshot,
        done: Deferred[None],
    ) -> None:
        if isinstance(result, Failure):
            self._failed(name, event, flow, before, result)
        elif self._settled(name, event, flow, before) and flow.intercepted:
            flow.wait_for_resume().addCallback(self._go_on, handlers, i, event, flow, done)
            return
        self._run_from(handlers, i, event, flow, done)

    def _go_on(
        self,
        _: object,
        handlers: list[Handler],
        i: int,
        event: str,
        flow: HTTPFlow,
        done: Deferred[None],
    ) -> None:
        self._run_from(handlers, i, event, flow, done)

    def _settled(self, name: str, event: str, flow: HTTPFlow, before: _Snapshot) -> bool:
        """Check what the hook left; on a violation, restore and count it (False)."""
        try:
            problem = before.check(flow)
        except Exception as e:  # what a hook left may not even have the attributes we read
            problem = f"{type(e).__name__}: {e}"
        if problem is None:
            return True
        self._failed(name, event, flow, before, None, problem)
        return False

    def _failed(
        self,
        name: str,
        event: str,
        flow: HTTPFlow,
        before: _Snapshot,
        failure: Failure | None,
        problem: str = "",
    ) -> None:
        before.restore(flow)
        if failure is not None:
            problem = _describe(failure, self.timeout)
        self._report(name, event, flow, problem)

    def _report(self, name: str, event: str, flow: HTTPFlow, problem: str) -> None:
        self.counters.hook_failures[(name, event)] += 1
        req = flow.request
        url = req.url if req is not None else "-"
        _log.error(
            "{text}",
            text=f"addon {name} failed in {event} for {url} (request id {flow.id}): {problem}",
            addon=name,
            event=event,
            url=url,
            id=flow.id,
            parent_id=flow.parent_id,
        )

    def transform(
        self, fn: Callable[[bytes], Any], data: bytes, event: str, flow: HTTPFlow
    ) -> list[bytes] | None:
        """A body piece through a hook's `stream` callable: its pieces, or None if it failed
        (counted and logged against the addon it came from, event "requestbody"/"responsebody";
        the exchange is then cut, since what was sent of the body cannot be taken back)."""
        try:
            result = fn(data)
            if isinstance(result, bytes | bytearray | memoryview):
                return [bytes(result)]
            return [bytes(piece) for piece in result]
        except Exception:
            module = sys.modules.get(getattr(fn, "__module__", "") or "")
            owner = addon_name(module) if module is not None else "stream"
            self._report(owner, event, flow, _describe(Failure(), self.timeout))
            return None

    # -- the end of a flow, and the addon lifecycle ----------------------------------------

    def flow_end(self, flow: HTTPFlow) -> None:
        """The exchange is over, one way or another (access log, capture)."""
        if self.addons_loaded:
            flow.live = False  # (only addons can tell; most flows never get a __dict__)
        self._tell(END_EVENT, flow)

    def tunnel_end(self, flow: HTTPFlow) -> None:
        """The relay a flow opened (a passthrough CONNECT, a 101) is over: its totals are in
        `flow.bytes_in`/`bytes_out` (capture). The access log had the flow when it opened."""
        self._tell(TUNNEL_EVENT, flow)

    def _tell(self, event: str, flow: HTTPFlow) -> None:
        # The proxy's own addons, told and not waited for: a failure is logged and counted.
        for name, fn, _ in self._by_event[event]:
            try:
                fn(flow)
            except Exception:
                self._crashed(name, event, flow)

    def _crashed(self, name: str, event: str, flow: HTTPFlow) -> None:
        # One of the proxy's own addons raised: a bug of ours, so the traceback is logged.
        self.counters.hook_failures[(name, event)] += 1
        _log.failure(
            "addon {addon} failed in {event} (request id {id})", addon=name, event=event, id=flow.id
        )

    def lifecycle(self, event: str, *args: Any) -> list[Deferred[Any]]:
        """Run `running` or `done` on every addon (no flow); failures are logged, never
        raised. Returns the Deferreds of those that did not finish at once."""
        pending = []
        for name, fn, _ in self._by_event[event]:
            try:
                d = _awaitable(fn(*args))
            except Exception:
                self.counters.hook_failures[(name, event)] += 1
                _log.failure("addon {addon} failed in {event}", addon=name, event=event)
                continue
            if d is not None:
                if self.clock is not None:
                    d.addTimeout(self.timeout, self.clock)
                d.addErrback(self._lifecycle_failed, name, event)
                pending.append(d)
        return pending

    def _lifecycle_failed(self, failure: Failure, name: str, event: str) -> None:
        self.counters.hook_failures[(name, event)] += 1
        _log.error(
            "{text}", text=f"addon {name} failed in {event}: {_describe(failure, self.timeout)}"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _in_thread(clock: Any, fn: Callable[[HTTPFlow], Any], flow: HTTPFlow) -> Deferred[Any]:
    from twisted.internet.threads import deferToThreadPool

    reactor: IReactorThreads = clock
    return deferToThreadPool(clock, reactor.getThreadPool(), fn, flow)


def _awaitable(result: Any) -> Deferred[Any] | None:
    """What a hook returned, as a Deferred if it is something to wait for (None if not)."""
    if isinstance(result, Deferred):
        return result
    if result is None or not inspect.isawaitable(result):
        return None
    # Any other awaitable (an asyncio future, an object with __await__) goes the same way.
    coro = result if inspect.iscoroutine(result) else _awaited(result)
    loop = _running_loop()
    if loop is None:
        return Deferred.fromCoroutine(coro)  # Deferreds only: no asyncio loop runs
    return Deferred.fromFuture(loop.create_task(_bridge(coro, loop)))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _bridge(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> Any:
    """Drive a hook's coroutine inside an asyncio Task, so it may await asyncio futures (and
    use what needs a current task) and Deferreds alike: an asyncio Task alone rejects a
    Deferred ("Task got bad yield"), and Twisted alone cannot wait on an asyncio future."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.throw(error) if error is not None else coro.send(value)
        except StopIteration as stop:
            return stop.value
        value = error = None
        try:
            if isinstance(yielded, Deferred):
                await _fired(yielded, loop)  # the hook's own await then reads its result
            elif yielded is None:
                await asyncio.sleep(0)  # a bare yield: let the loop run once
            else:
                # An asyncio future the hook awaits: awaited here on its behalf, once its own
                # await's mark is cleared (asyncio refuses a future marked as already waited).
                yielded._asyncio_future_blocking = False
                value = await yielded
        except BaseException as e:  # CancelledError (the timeout) included: the hook sees it
            error = e


async def _fired(d: Deferred[Any], loop: asyncio.AbstractEventLoop) -> None:
    """Wait until `d` has a result, leaving the result in `d` (asFuture would take it)."""
    waiter = loop.create_future()

    def fired(result: object) -> object:
        if not waiter.done():
            waiter.set_result(None)
        return result

    d.addBoth(fired)
    try:
        await waiter
    except asyncio.CancelledError:
        d.cancel()
        raise


def _describe(failure: Failure, timeout: float) -> str:
    if failure.check(TimeoutError):
        return f"timed out after {timeout:g} s ([hooks] timeout)"
    value = failure.value
    text = type(value).__name__
    if str(value):
        text = f"{text}: {value}".splitlines()[0]
    if isinstance(value, RuntimeError) and "no running event loop" in str(value):
        text += " (asyncio needs the asyncio reactor: see the README's Addons section)"
    tb = failure.getTracebackObject()
    if tb is not None:
        frames = traceback.extract_tb(tb)
        if frames:
            last = frames[-1]
            text += f" ({last.filename.rpartition('/')[2]}:{last.lineno})"
    return text


# -- containment -------------------------------------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_HOST = re.compile(r"[\x00-\x20\x7f/?#@\\]")


# What a hook may change of each message, noted before it runs (the fields' list is copied:
# hooks change it in place).
_REQUEST_STATE = ("method", "_scheme", "_host", "_port", "_path", "headers", "_content", "stream")
_RESPONSE_STATE = ("_status", "_reason", "_reason_set", "headers", "_content", "stream")


def _note(message: object, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    if message is None:
        return None
    fields = getattr(getattr(message, "headers", None), "fields", None)
    if isinstance(fields, list):
        fields = list(fields)
    return (*(getattr(message, name, None) for name in names), fields)


def _put_back(message: object, names: tuple[str, ...], state: tuple[Any, ...] | None) -> None:
    if message is None or state is None:
        return
    for name, value in zip(names, state, strict=False):
        setattr(message, name, value)
    if isinstance(state[-1], list):
        message.headers.fields = list(state[-1])  # type: ignore[attr-defined]


class _Snapshot:
    """The heads of a flow as they were before one hook, to check and restore after it.

    Only what a hook changed is checked: what the parser produced is valid already, and most
    hooks change one header, if anything."""

    __slots__ = ("request", "response", "req", "resp")

    def __init__(self, event: str, flow: HTTPFlow) -> None:
        self.request = flow.request
        self.response = flow.response
        self.req = _note(flow.request, _REQUEST_STATE)
        self.resp = _note(flow.response, _RESPONSE_STATE)

    def restore(self, flow: HTTPFlow) -> None:
        """Put the heads back as they were."""
        flow.request = self.request
        _put_back(self.request, _REQUEST_STATE, self.req)
        flow.response = self.response
        _put_back(self.response, _RESPONSE_STATE, self.resp)

    def check(self, flow: HTTPFlow) -> str | None:
        """What is wrong with the flow's heads now (None: nothing); encodes `str` in place."""
        req = flow.request
        if req is not self.request:
            if not isinstance(req, Request):
                return f"flow.request must be a Request, not {type(req).__name__}"
            problem = _check_request(req)
        elif req is not None and _note(req, _REQUEST_STATE) != self.req:
            problem = _check_request(req)
        else:
            problem = None
        if problem:
            return problem
        resp = flow.response
        if resp is None:
            return "flow.response was removed" if self.response is not None else None
        if resp is not self.response:
            if not isinstance(resp, Response):
                return f"flow.response must be a Response, not {type(resp).__name__}"
            return _check_response(resp)
        if _note(resp, _RESPONSE_STATE) != self.resp:
            return _check_response(resp)
        return None


def _check_fields(headers: object) -> str | None:
    if not isinstance(headers, Headers):
        return f"headers must be Headers, not {type(headers).__name__}"
    fields = headers.fields
    if not isinstance(fields, list):
        try:
            headers.fields = fields = list(fields)
        except TypeError:
            return "headers.fields must be a list of (name, value) pairs"
    for i, field in enumerate(fields):
        try:
            name, value = field
        except (TypeError, ValueError):
            return f"header field {field!r} is not a (name, value) pair"
        if type(name) is not bytes or type(value) is not bytes:
            try:
                name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
                value = (
                    value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
                )
            except AttributeError:
                return f"header {field!r}: names and values are str or bytes"
            fields[i] = (name, value)
        if not _TOKEN.match(name):
            return f"header name {name!r} is not a token"
        if _BAD_VALUE.search(value):
            return f"header {name.decode('latin-1')} has CR, LF or NUL in its value"
    return None


def _check_body(body: object, stream: object) -> str | None:
    if body is not None and type(body) is not bytes:
        return f"the body must be bytes, not {type(body).__name__}"
    if not (isinstance(stream, bool) or callable(stream)):
        return f"stream must be a bool or a callable, not {type(stream).__name__}"
    return None


def _check_request(req: Request) -> str | None:
    if not isinstance(req, Request):
        return f"flow.request must be a Request, not {type(req).__name__}"
    problem = _check_fields(req.headers)
    if problem:
        return problem
    if not isinstance(req.method, str) or not _TOKEN.match(req.method.encode("latin-1", "replace")):
        return f"method {req.method!r} is not a token"
    if req._scheme not in ("http", "https"):
        return f"scheme {req._scheme!r} is neither http nor https"
    if not isinstance(req._host, str) or not req._host or _BAD_HOST.search(req._host):
        return f"host {req._host!r} is not a host name"
    port = req._port
    if type(port) is not int or not 0 < port < 65536:
        return f"port {port!r} is not 1-65535"
    if type(req._path) is not bytes or (req.method != "CONNECT" and _BAD_TARGET.search(req._path)):
        return "path has spaces or control characters"
    return _check_body(req._content, req.stream)


def _check_response(resp: Response) -> str | None:
    problem = _check_fields(resp.headers)
    if problem:
        return problem
    status = resp._status
    # A final response only: a 1xx here would make the client read the body as the next
    # response (the splitting the readers refuse from origins).
    if type(status) is not int or not 200 <= status <= 599:
        return f"status {status!r} is not a final status (200-599)"
    if type(resp._reason) is not bytes or _BAD_VALUE.search(resp._reason):
        return "reason has CR, LF or NUL"
    return _check_body(resp._content, resp.stream)


__all__ = ["EVENTS", "FLOW_EVENTS", "HookChain", "addon_name"]
