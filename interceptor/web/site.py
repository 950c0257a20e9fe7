"""The flow UI's site: static files and a JSON API over the capture store, behind a token.

Every request passes two checks before anything else: its Host header names this listener (or
a name in `[web] allowed_hosts`), so a page on another site cannot reach it through a DNS name
rebound to 127.0.0.1; and it carries the token, as `?token=` once (it moves to an HttpOnly,
SameSite=Strict cookie, as Jupyter does), as that cookie, or as `Authorization: Bearer`. Either
check failing is a 403 with a one-line reason. State changes (replay) are POSTs, which the
SameSite cookie keeps to our own pages; a POST whose Origin is foreign is refused too.

Store reads run in the reactor's thread pool: a filter over a large store scans it, and the
proxy's reactor must not wait for that. New flows reach open pages as Server-Sent Events:
every half second each open stream asks the store for what came after the last flow it sent.
"""

from __future__ import annotations

import hmac
import io
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, TextIO, cast
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..capture.filters import FilterError, compile_filter
from ..capture.har import write_har
from ..capture.replay import ReplayError, replay, request_of
from ..capture.store import StoreError, connect, read_flows
from . import api

_log = Logger(namespace="interceptor.web")

COOKIE = b"interceptor_token"
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_POLL = 0.5  # seconds between looks for new flows, for open event streams
_PING = 15.0  # seconds between keep-alive comments on an idle event stream

# What every answer carries: nothing here may be framed, sniffed, cached or sent elsewhere.
_HEADERS = (
    (b"X-Frame-Options", b"DENY"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Cache-Control", b"no-store"),
    (b"Referrer-Policy", b"no-referrer"),
    (
        b"Content-Security-Policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    ),
)


class WebUI:
    """What the UI's pages need: the store, the token, the names it answers to, and the
    proxy that replays go through (so that they are captured too)."""

    def __init__(
        self,
        store: str,
        token: str,
        clock: Any,
        pool: ThreadPool,
        reactor: Any,
        replay_proxy: Callable[[], str | None] = lambda: None,
        replay_cacert: str | None = None,
    ) -> None:
        self.store = store  # "" when capture is off: the page says how to turn it on
        self.token = token.encode("ascii")
        self.clock = clock
        self.pool = pool
        self.reactor = reactor
        self.replay_proxy = replay_proxy
        self.replay_cacert = replay_cacert
        self.hosts: set[str] = set()  # Host header values answered (lower case)
        self.origins: set[str] = set()  # Origin header values a POST may come from
        self._streams: list[_Stream] = []
        self._poll = LoopingCall(self._tick)
        self._poll.clock = clock

    def allow(self, names: Iterable[str], port: int) -> None:
        """Answer Host headers naming `names` (with this port, or bare where the name has none)."""
        for name in names:
            name = name.lower()
            bare = name[1:-1] if name.startswith("[") else name
            host = f"[{bare}]" if ":" in bare else bare
            self.hosts.update({f"{host}:{port}", host} if port in (80, 443) else {f"{host}:{port}"})
            self.origins.update({f"http://{host}:{port}", f"https://{host}:{port}"})

    def site(self) -> Site:
        """The twisted.web site to listen with."""
        site = Site(_Root(self))
        site.displayTracebacks = False
        site.noisy = False
        return site

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """`fn(db, *args)` in the thread pool, on a read-only connection of its own."""

        def work() -> Any:
            db = connect(self.store, readonly=True)
            try:
                return fn(db, *args)
            finally:
                db.close()

        return deferToThreadPool(self.reactor, self.pool, work)

    # -- event streams ---------------------------------------------------------------------

    def subscribe(self, stream: _Stream) -> None:
        """An open page wants new flows as they are stored."""
        self._streams.append(stream)
        if not self._poll.running:
            self._poll.start(_POLL, now=False)

    def unsubscribe(self, stream: _Stream) -> None:
        """The page went away."""
        if stream in self._streams:
            self._streams.remove(stream)
        if not self._streams and self._poll.running:
            self._poll.stop()

    def stop(self) -> None:
        """Shutdown: end every open stream."""
        for stream in list(self._streams):
            stream.finish()
        if self._poll.running:
            self._poll.stop()

    def _tick(self) -> None:
        for stream in list(self._streams):
            stream.poll()


class _Stream:
    """One open Server-Sent Events response: new flows matching its filter, as they come."""

    def __init__(self, ui: WebUI, request: Request, expression: str, after: int) -> None:
        self.ui = ui
        self.request = request
        self.expression = expression
        self.after = after
        self.busy = False
        self.last_write = ui.clock.seconds()
        self.open = True

    def poll(self) -> None:
        if self.busy or not self.open:
            return
        self.busy = True
        d = self.ui.run(api.new_flows, self.after, self.expression)
        d.addCallbacks(self._send, self._failed)

    def _send(self, flows: list[dict[str, Any]]) -> None:
        self.busy = False
        if not self.open:
            return
        now = self.ui.clock.seconds()
        for flow in flows:
            self.after = max(self.after, flow["seq"])
            self.request.write(f"event: flow\ndata: {json.dumps(flow)}\n\n".encode())
            self.last_write = now
        if now - self.last_write >= _PING:
            self.request.write(b": ping\n\n")
            self.last_write = now

    def _failed(self, failure: Failure) -> None:
        self.busy = False
        _log.warn("web: reading new flows failed: {e}", e=failure.getErrorMessage())

    def finish(self) -> None:
        if self.open:
            self.open = False
            self.ui.unsubscribe(self)
            self.request.finish()

    def gone(self, _: object) -> None:
        self.open = False
        self.ui.unsubscribe(self)


class ClientGone(Exception):
    """The client of a streamed export went away: the export stops where it is."""


class _TextToRequest(io.TextIOBase):
    """A text stream, written in a thread, whose writes go out on a request in the reactor,
    no faster than the client reads them.

    An export of a large store is far bigger than memory should hold: the request pauses and
    resumes this as its transport fills and drains (a streaming producer), and the writing
    thread waits while it is paused, with at most `_AHEAD` chunks handed to the reactor and
    not yet written. When the client is gone, the next write raises ClientGone."""

    _CHUNK = 64 * 1024
    _AHEAD = 4
    _STALL = 60.0  # seconds a client may read nothing before the export gives up on it

    def __init__(self, reactor: Any, request: Request) -> None:
        self.reactor = reactor
        self.request = request
        self._pending: list[str] = []
        self._size = 0
        self._writable = threading.Event()
        self._writable.set()
        self._ahead = threading.BoundedSemaphore(self._AHEAD)
        self.gone = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    # IPushProducer, called by the request in the reactor.
    def pauseProducing(self) -> None:
        self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        self.gone = True
        self._writable.set()

    def write(self, text: str) -> int:
        self._pending.append(text)
        self._size += len(text)
        if self._size >= self._CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        self._pending, self._size = [], 0
        if not (self._writable.wait(self._STALL) and self._ahead.acquire(timeout=self._STALL)):
            # Still connected, reading nothing: its connection would stay open for good.
            self.reactor.callFromThread(self._abandon)
            raise ClientGone("the client read nothing for a minute")
        if self.gone:
            self._ahead.release()
            raise ClientGone("the client went away")
        self.reactor.callFromThread(self._write, data)

    def _write(self, data: bytes) -> None:
        self._ahead.release()
        if not self.gone:
            self.request.write(data)

    def _abandon(self) -> None:
        # Timed out as twisted.web times out any client of its own (the UI's connections are
        # its, not the proxy's legs): a close, and an abort if that has not worked in 15 s.
        if not self.gone:
            self.gone = True
            self.request.unregisterProducer()
            channel = getattr(self.request, "channel", None)
            if channel is not None:
                channel.timeoutConnection()

    def finish(self) -> None:
        """In the reactor, once the export is written: the request is done."""
        if not self.gone:
            self.request.unregisterProducer()
            self.request.finish()


class _Root(Resource):
    """Every path: the two checks, then the route."""

    isLeaf = True

    def __init__(self, ui: WebUI) -> None:
        super().__init__()
        self.ui = ui

    def render(self, request: Request) -> bytes | int:
        for name, value in _HEADERS:
            request.setHeader(name, value)
        ui = self.ui
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        if host not in ui.hosts:
            return _error(request, 403, f"host {host or '(none)'!r} is not this UI's address")
        query_token = request.args.get(b"token", [None])[0]
        if query_token is not None and _same(query_token, ui.token):
            # The token moves into a cookie, and out of the address bar and the history.
            request.addCookie(COOKIE, ui.token, path=b"/", httpOnly=True, sameSite="strict")
            rest = {k: v for k, v in request.args.items() if k != b"token"}
            target = request.path + (b"?" + urlencode(rest, doseq=True).encode() if rest else b"")
            request.redirect(target)
            return b""
        if not self._authorized(request):
            return _error(
                request,
                403,
                "this UI needs its token: open the URL the proxy logged at start-up "
                "(it ends in ?token=...)",
            )
        if request.method == b"POST":
            origin = (request.getHeader(b"origin") or b"").decode("latin-1").lower()
            if origin and origin not in ui.origins:
                return _error(request, 403, f"a POST from {origin} is not from this UI")
        path = request.path.decode("latin-1")
        return self._route(request, path)

    def _authorized(self, request: Request) -> bool:
        token = self.ui.token
        cookie = request.getCookie(COOKIE)
        if cookie is not None and _same(cookie, token):
            return True
        auth = request.getHeader(b"authorization") or b""
        return auth.startswith(b"Bearer ") and _same(auth[7:].strip(), token)

    def _route(self, request: Request, path: str) -> bytes | int:
        method = request.method
        if method == b"GET" and path in ("/", "/index.html"):
            return _static(request, "index.html", "text/html; charset=utf-8")
        if method == b"GET" and path.startswith("/static/") and path[8:] in _STATIC:
            return _static(request, path[8:], _STATIC[path[8:]])
        if not path.startswith("/api/"):
            return _error(request, 404, f"no page {path}")
        if method == b"GET" and path == "/api/status":
            return _json(request, {"capture": bool(self.ui.store), "store": self.ui.store})
        if not self.ui.store:
            return _error(
                request, 409, "capture is off: set [capture] store in the config to record flows"
            )
        expression = _arg(request, b"filter")
        parts = path[5:].split("/")
        if method == b"GET" and parts == ["flows"]:
            before = _int_arg(request, b"before")
            return self._defer(request, api.list_flows, expression, before)
        if method == b"GET" and parts == ["events"]:
            return self._events(request, expression)
        if method == b"GET" and parts == ["har"]:
            return self._har(request, "flows.har", lambda db: read_flows(db, None, expression))
        if len(parts) == 2 and parts[0] == "flows" and method == b"GET":
            return self._defer(request, _detail, parts[1])
        if len(parts) == 3 and parts[0] == "flows" and parts[2] == "har" and method == b"GET":
            flow_id = parts[1]
            return self._har(request, f"flow-{flow_id[:8]}.har", lambda db: _one(db, flow_id))
        if len(parts) == 3 and parts[0] == "flows" and parts[2] == "replay":
            if method != b"POST":
                request.setHeader(b"Allow", b"POST")
                return _error(request, 405, "replay is a POST")
            return self._replay(request, parts[1])
        return _error(request, 404, f"no API {path}")

    def _defer(self, request: Request, fn: Callable[..., Any], *args: Any) -> int:
        d = self.ui.run(fn, *args)
        d.addCallbacks(lambda result: _finish_json(request, result), _failed_with, (), {},
                       (request,))  # fmt: skip
        return NOT_DONE_YET

    def _events(self, request: Request, expression: str) -> int:
        after = _int_arg(request, b"after")
        try:
            compile_filter(expression)
        except FilterError as e:
            request.write(_error(request, 400, str(e)))
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.write(b": flows as they are stored\n\n")  # headers out now: the page is live
        stream = _Stream(self.ui, request, expression, after or 0)
        request.notifyFinish().addBoth(stream.gone)
        if after is None:
            # Nothing seen yet: start from the newest flow stored.
            d = self.ui.run(api.last_seq)

            def begin(seq: int) -> None:
                stream.after = seq
                self.ui.subscribe(stream)

            d.addCallbacks(begin, _failed_with, (), {}, (request,))
        else:
            self.ui.subscribe(stream)
        return NOT_DONE_YET

    def _har(
        self,
        request: Request,
        name: str,
        rows: Callable[[sqlite3.Connection], Iterable[sqlite3.Row]],
    ) -> int:
        out = _TextToRequest(self.ui.reactor, request)

        def export(db: sqlite3.Connection) -> int:
            selected = iter(rows(db))  # a bad filter fails here, before any header is out
            first = next(selected, None)
            self.ui.reactor.callFromThread(_attachment, request, name)
            count = write_har(
                itertools.chain((first,) if first else (), selected), cast(TextIO, out)
            )
            out.flush()
            return count

        def failed(failure: Failure) -> None:
            if failure.check(ClientGone):  # (nobody left to tell but the log)
                _log.info("web: HAR export {name} stopped: {why}", name=name, why=failure.value)
                return
            if not out.gone:
                request.unregisterProducer()
            _failed_with(failure, request)

        d = self.ui.run(export)
        d.addCallbacks(lambda _: out.finish(), failed)
        return NOT_DONE_YET

    def _replay(self, request: Request, flow_id: str) -> int:
        ui = self.ui
        proxy = ui.replay_proxy()

        def send(db: sqlite3.Connection) -> dict[str, Any]:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchone()
            if row is None:
                raise LookupError(f"no flow {flow_id}")
            outcome = replay(request_of(row), proxy, ui.replay_cacert)
            return {
                "status_line": outcome.status_line,
                "headers": outcome.headers,
                "body_bytes": outcome.body_bytes,
                "elapsed_ms": round(outcome.elapsed_ms, 1),
                "via": proxy,
            }

        self._defer(request, send)
        return NOT_DONE_YET


def _attachment(request: Request, name: str) -> None:
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Content-Disposition", f'attachment; filename="{name}"'.encode())


def _one(db: sqlite3.Connection, flow_id: str) -> list[sqlite3.Row]:
    db.row_factory = sqlite3.Row
    found = db.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchall()
    if not found:
        raise LookupError(f"no flow {flow_id}")
    return found


def _detail(db: sqlite3.Connection, flow_id: str) -> dict[str, Any]:
    found = api.flow_detail(db, flow_id)
    if found is None:
        raise LookupError(f"no flow {flow_id}")
    return found


def _same(given: bytes, token: bytes) -> bool:
    return hmac.compare_digest(given, token)


def _arg(request: Request, name: bytes) -> str:
    value: bytes = request.args.get(name, [b""])[0]
    return value.decode("utf-8", "replace")


def _int_arg(request: Request, name: bytes) -> int | None:
    value = _arg(request, name)
    return int(value) if value.isdigit() else None


def _static(request: Request, name: str, kind: str) -> bytes:
    request.setHeader(b"Content-Type", kind.encode("ascii"))
    return (resources.files(__package__) / "static" / name).read_bytes()


def _json(request: Request, value: Any) -> bytes:
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _error(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    return _json(request, {"error": text})


def _finish_json(request: Request, value: Any) -> None:
    if not _gone(request):
        request.write(_json(request, value))
        request.finish()


def _failed_with(failure: Failure, request: Request) -> None:
    """A read, export or replay that failed: its one-line reason, never a traceback."""
    error = failure.value
    if isinstance(error, LookupError):
        status, text = 404, str(error.args[0]) if error.args else "not found"
    elif isinstance(error, FilterError):
        status, text = 400, str(error)
    elif isinstance(error, ReplayError):
        status, text = 400 if error.status == 2 else 502, str(error)
    elif isinstance(error, StoreError | sqlite3.Error):
        status, text = 503, f"the store cannot be read: {error}"
    else:
        _log.failure("web: request failed", failure)
        status, text = 500, "internal error (logged)"
    if _gone(request):
        return
    if getattr(request, "startedWriting", False):
        request.finish()  # a stream already under way: it ends short
        return
    request.write(_error(request, status, text))
    request.finish()


def _gone(request: Request) -> bool:
    return bool(getattr(request, "_disconnected", False) or getattr(request, "finished", False))
