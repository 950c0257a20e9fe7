"""One request and its response: target, hooks, dispatch and retry, local answers, body relay
both ways, and the record of what happened.

An exchange moves through named states; every allowed move is a row of states.TRANSITIONS. It
owns its upstream leg while it runs: the leg reports to it (the ResponseSide it is built on), and
it reports endings to its session, whose `end` consults the lifecycle table and carries the
action out on both legs; the exchange then does the part that is not about connections (an
answer, a retry, a record) in `after`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from ..access import Refusal
from ..hosts import format_authority
from ..http import Error, Headers, HTTPFlow, Request
from . import http1
from .bodytap import BodyTap
from .events import (
    CHUNKED,
    END,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Body,
    ExtraHeaders,
    ProtocolError,
    RequestEvent,
    RequestHead,
)
from .headers import (
    content_length,
    forwarded_request_headers,
    max_forwards,
    passed_through,
    proxy_authorization,
    reframed,
    with_length,
    with_max_forwards,
)
from .leg import Leg, end
from .lifecycle import Action, Ending, Phase, Side
from .response import ResponseSide
from .states import PHASES, State, Step
from .targets import parse_target, split_authority
from .upstream import Key
from .via import Route, as_route

if TYPE_CHECKING:
    from .session import Session


class Exchange(ResponseSide):
    """One request/response on a client connection (or one refused request)."""

    __slots__ = ("refusal", "admitted", "_late_request", "_copy_in", "_route_default")

    def __init__(self, session: Session, head: RequestHead | ProtocolError) -> None:
        self.session = session
        self.ctx = ctx = session.ctx
        self.flow = flow = HTTPFlow(session.client_conn, ctx.clock.seconds())
        flow.parent_id = session.parent_id
        self.state = State.QUEUED
        self.upstream = None
        self.request_complete = False
        self.retried = False
        self.in_framing = self.out_framing = NO_BODY
        self.upstream_keep_alive = False
        self._request_bytes = b""
        self._key: Key = ("", "", 0, None)
        self._route_default: Route | None = None  # the configured route, until an addon's
        self._held = None
        self._buffer = None
        self._buffered = 0
        self._tap = None
        self._late_response = False
        self._end_waits = False
        self._late_request = False
        self._copy_in: BodyTap | None = None  # the request body's copy for capture
        self._copy_out = None
        self.refusal: ProtocolError | None = None
        self.admitted = False  # [access] let this request through
        if isinstance(head, ProtocolError):
            self.refusal = head
            self.head = RequestHead(b"", b"", "1.1", [], False, NO_BODY)
            self.keep_alive = False
        else:
            self.head = head
            self.flow.raw = (head.method, head.target)
            # An Upgrade the origin refuses leaves the client reader closed: close after.
            self.keep_alive = head.keep_alive and not ctx.draining and not head.upgrade
        self.http10 = self.head.version == "1.0"

    @property
    def phase(self) -> Phase:
        """The lifecycle phase of the connection pair while this exchange is the current one."""
        state = self.state
        if (state is State.RESPONDING or state is State.READING) and self.in_framing is UNTIL_CLOSE:
            return Phase.RESPONSE_UNTIL_CLOSE
        return PHASES[self.state]

    # -- routing ---------------------------------------------------------------------------

    def start(self) -> None:
        """This exchange's turn has come: refuse it, route its CONNECT, or send it upstream."""
        ctx = self.ctx
        if self.refusal is not None:
            self.request_complete = True
            self.answer_error(self.refusal.status, self.refusal.reason)
            return
        if not self.admitted and not ctx.access.open and not self._admit():
            return
        head = self.head
        if head.method == b"CONNECT":
            self._connect_method()
            return
        try:
            scheme, host, port, path = parse_target(head.target, self.session.intercepted)
        except ValueError as e:
            self.answer_error(400, str(e))
            return
        default_port = 443 if scheme == "https" else 80
        authority = format_authority(host, port, default_port).encode("ascii")
        if ctx.via is not None and passed_through(head.headers, ctx.via):
            # This proxy, reached again: through a name that resolves to it, or a proxy behind.
            self.answer_error(508, "loop detected: this request already passed through here")
            return
        headers = forwarded_request_headers(head, authority, ctx.via_for(head.version))
        flow = self.flow
        method = head.method.decode("ascii")
        flow.request = Request(
            method, scheme, host, port, path, Headers.wrap(headers), head.version,
            flow.timestamp_created,
        )  # fmt: skip
        if not ctx.routes.direct:
            # What the configuration chooses, for the hooks to see and change.
            self._route_default = flow.server_conn.via = ctx.routes.choose(scheme, host)
        self.run_hooks("requestheaders", self._request_headers_done)

    def _request_headers_done(self) -> None:
        flow = self.flow
        req = flow.request
        assert req is not None  # containment keeps the one the head made
        hooks = self.ctx.hooks
        if flow.killed:
            self.kill()
        elif flow.response is not None:
            self._answer_with(flow.response)
        elif not hooks.request_bodies:
            self._dispatch()
        elif req.stream is not False:
            self._late_request = self.head.framing is not NO_BODY
            self._dispatch()
        elif self.head.framing is NO_BODY:
            req._content = b""
            req.timestamp_end = req.timestamp_start
            self.run_hooks("request", self._request_done)
        elif hooks.over_limit(content_length(self.head.headers)):
            self._overflow_request()
        else:
            self._to(Step.BUFFER)
            self._buffer = deque()
            if not self.http10 and req.headers.get("expect", "").lower() == "100-continue":
                # The origin cannot ask for a body held back for the hook: we do (as mitmproxy
                # does), or the client waits for a 100 that never comes (curl: 1 s per upload).
                del req.headers["expect"]
                self.session.client.write(http1.CONTINUE)
            self.session.pump()  # body already read may be queued

    def _overflow_request(self, data: bytes = b"") -> None:
        """The request body is past [hooks] body_limit or buffer_budget."""
        hooks = self.ctx.hooks
        pieces = self._release_buffer()
        if data:
            pieces.append(data)
        if hooks.reject:
            self.answer_error(413, hooks.too_large("request"))
            return
        # What was read goes back ahead of the rest: it is sent once the upstream is ready.
        # It was counted as it arrived, and is again when it comes round: uncount it once.
        held = sum(len(piece) for piece in pieces)
        self.flow.bytes_in -= held
        self.ctx.counters.bytes_from_client -= held
        self.session.events.extendleft(reversed(pieces))
        self._late_request = True
        self._dispatch()

    def _request_done(self) -> None:
        flow = self.flow
        req = flow.request
        assert req is not None
        if flow.killed:
            self.kill()
        elif flow.response is not None:
            self._answer_with(flow.response)
        else:
            self._dispatch(req._content or b"")

    def _dispatch(self, body: bytes | None = None) -> None:
        """Send the request as the hooks left it (with its whole body, if it was buffered)."""
        ctx = self.ctx
        req = self.flow.request
        assert req is not None
        if req._port in ctx.own.ports and self._to_ourselves(req._host, req._port):
            return
        method = req.method
        fields = req.headers.fields
        if method == "OPTIONS" or method == "TRACE":
            # RFC 9110 7.6.2: at 0 we are the final recipient; else one hop fewer remains.
            hops = max_forwards(fields)
            if hops == 0:
                if method == "TRACE":
                    self.answer(200, b"message/http", http1.trace_echo(self.head))
                else:
                    self.answer(200, http1.TEXT, b"", http1.ALLOW)
                return
            if hops is not None:
                fields = with_max_forwards(fields, hops - 1)
        framing = self.head.framing
        if body is not None and (body or framing is not NO_BODY):
            # The body we send is the one we have: its length frames it.
            fields = with_length(fields, len(body))
        elif callable(req.stream) and framing is not NO_BODY:
            # A transform changes lengths: the request goes upstream in chunks.
            fields = [*with_length(fields, None), (b"Transfer-Encoding", b"chunked")]
            self.head.framing = CHUNKED
        elif ctx.hooks.addons_loaded:
            # The body streams as the client framed it, whatever a hook wrote in the head.
            declared = content_length(self.head.headers) if framing is LENGTH else None
            fields = reframed(fields, declared, framing is CHUNKED)
        if body is None and framing is not NO_BODY and ctx.hooks.tap_limit:
            req.tap = self._copy_in = BodyTap(ctx.hooks.tap_limit)
        scheme, host, target = req._scheme, req._host, req._path
        route = None
        if self.flow._server is not None:  # an addon or the configuration chose a route
            try:
                route = self._route(scheme, host)
            except ValueError as e:
                self.answer_error(502, f"flow.server_conn.via: {e}")
                return
        key_scheme = scheme
        credentials = None
        if route is not None and route.http and scheme == "http":
            if self.head.upgrade:
                # A WebSocket (or any upgrade) goes through a tunnel, as browsers send it:
                # proxies drop Upgrade as hop-by-hop. Its connections are pooled apart from
                # the absolute-form ones, which carry the proxy's credentials.
                key_scheme = "ws"
            else:
                # To the HTTP proxy itself: absolute form, with its credentials (RFC 9112 3.2.2).
                target = b"http://" + format_authority(host, req._port, 80).encode() + target
                credentials = route.proxy_authorization
                if credentials is not None:
                    fields = [*fields, (b"Proxy-Authorization", credentials)]
        head_bytes = http1.request_head(method.encode("ascii"), target, fields)
        self._request_bytes = head_bytes + body if body else head_bytes
        if ctx.hooks.tap_limit and credentials is None:
            # For capture (never the head with our upstream proxy's credentials in it).
            req.wire_head = head_bytes
        self._key = (key_scheme, host, req._port, route)
        conn = ctx.pool.acquire(self._key, self)
        if conn is None:
            self._connect()
        else:
            self.upstream = self.flow._server_leg = conn
            self._send_head(conn)

    def _connect(self) -> None:
        self._to(Step.DISPATCH)
        # A connect that fails at once reports before this returns; then the answer is given.
        conn = self.ctx.pool.connect(self._key, self)
        if self.state is State.CONNECTING:
            self.upstream = self.flow._server_leg = conn

    def _connect_method(self) -> None:
        # Intercept (answer 200, at once or once the origin is reached), relay opaquely (200
        # once connected), or refuse.
        head = self.head
        try:
            host, port = split_authority(head.target, 443)
        except (ValueError, UnicodeDecodeError):
            self.answer_error(400, "CONNECT target must be host:port")
            return
        self.flow.request = Request(
            "CONNECT",
            "https",
            host,
            port,
            b"",
            Headers.wrap(head.headers),
            head.version,
            self.flow.timestamp_created,
        )
        routes = self.ctx.routes
        if not routes.direct:
            self._route_default = self.flow.server_conn.via = routes.choose("https", host)
        self.run_hooks("http_connect", self._connect_decided)

    def _connect_decided(self) -> None:
        # After http_connect: a response set there answers the CONNECT (a refusal), or, if it
        # is a 2xx, stands for the origin (200 at once, as a lazy connect).
        ctx, session, flow = self.ctx, self.session, self.flow
        req = flow.request
        assert req is not None
        host, port = req._host, req._port
        resp = flow.response
        if flow.killed:
            self.kill()
            return
        if resp is not None and not 200 <= resp._status < 300:
            self.keep_alive = False
            self._answer_with(resp)
            return
        if self._to_ourselves(host, port):
            return
        try:
            route = self._route("https", host)
        except ValueError as e:
            self.answer_error(502, f"flow.server_conn.via: {e}")
            return
        self._key = ("https", host, port, route)
        if session.intercepted is not None:
            self.answer_error(400, "CONNECT inside an intercepted tunnel")
        elif ctx.passthrough(host) or host in ctx.learned or ctx.intercept is None:
            if ctx.tunnel_connect is None:
                self.answer_error(501, "CONNECT is not supported")
                return
            self.keep_alive = False
            self._to(Step.DISPATCH)
            self.upstream = ctx.tunnel_connect(host, port, self, route)
        elif ctx.eager and resp is None:
            self._open()
        else:
            self.connect_established(None)  # 200 at once; the requests inside connect

    def _open(self) -> None:
        # TCP to the origin first, so the CONNECT itself says when it cannot be reached (TLS
        # waits for the client's first bytes: they may not be TLS at all). A verified
        # connection already pooled proves as much, and gives the origin's certificate. A
        # failed CONNECT is the last request on its connection, as for a passthrough.
        certificate = self.ctx.pool.idle_certificate(self._key)
        if certificate is not None:
            self.connect_established(None, certificate)
            return
        self.keep_alive = False
        self._to(Step.OPEN)
        conn = self.ctx.pool.connect(self._key, self, tls=False)
        if self.state is State.OPENING:  # (a connect that failed at once has answered)
            self.upstream = conn

    def _route(self, scheme: str, host: str) -> Route | None:
        """The upstream proxy this flow goes through (None: direct): the configured one for
        where it goes now, unless an addon set `flow.server_conn.via` to another.

        :raises ValueError: what an addon set is not a route.
        """
        server = self.flow._server
        if server is None:
            return None  # no addon asked, and none is configured (or it would be set)
        via = server.via
        if via is self._route_default:
            # Left as configured: chosen again, for the host the hooks may have changed.
            return self.ctx.routes.choose(scheme, host)
        return as_route(via)

    def _admit(self) -> bool:
        """[access]: False if refused, or while a credential is checked (in a thread)."""
        access = self.ctx.access
        if self.session.intercepted is not None or access.open:
            self.admitted = True  # inside a CONNECT that was admitted, or nothing to check
            return True
        verdict = access.admit(
            self.session.client.peer_host, proxy_authorization(self.head.headers)
        )
        if isinstance(verdict, Deferred):
            verdict.addCallback(self._admission, resume=True)
            return False
        self._admission(verdict, resume=False)
        return self.admitted

    def _admission(self, refusal: Refusal | None, resume: bool) -> None:
        if self.state is not State.QUEUED or self.session.closed:
            return  # answered or cut while the credential was checked
        if refusal is None:
            self.admitted = True
            if resume:
                self.start()
        else:
            self.ctx.counters.refused[refusal.reason] += 1
            self.answer_error(refusal.status, refusal.text, refusal.headers)

    def _to_ourselves(self, host: str, port: int) -> bool:
        """Refuse (403) a destination that is one of this process's own listeners."""
        address = self.ctx.pool.hosts.get(host, host)
        if (address, port) not in self.ctx.own:
            return False
        self._refuse_ourselves()
        return True

    def _reached_ourselves(self, leg: Leg) -> bool:
        """A CONNECT whose name led to one of our own listeners is refused (403) once that is
        known, as the address given literally is before connecting: nested tunnels through
        ourselves would otherwise eat descriptors. (Plain requests meet their own Via: 508.)"""
        address = leg.stream.getPeer() if leg.stream is not None else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if host is None or port is None or (host, port) not in self.ctx.own:
            return False
        self.upstream = None
        end(Side.UPSTREAM, Ending.DONE, Phase.IDLE, leg)
        self._refuse_ourselves()
        return True

    def _refuse_ourselves(self) -> None:
        req = self.flow.request
        assert req is not None  # the target is known before its destination is checked
        self.answer_error(403, f"{format_authority(req.host, req.port)} is this proxy itself")

    # -- the request body ------------------------------------------------------------------

    def request_event(self, event: RequestEvent) -> None:
        """Body, end or a refusal of this exchange's request, in order, when it can take them."""
        if type(event) is Body:
            data = event
            self.flow.bytes_in += len(data)
            self.ctx.counters.bytes_from_client += len(data)
            if self.state is State.BUFFERING:
                if not self._hold(data):
                    self._overflow_request(data)
                return
            conn = self.upstream
            if conn is not None and self.state is not State.ANSWERED:
                req = self.flow.request
                if req is not None and callable(req.stream):
                    self._send_transformed(conn, req.stream, data)
                    return
                conn.write(http1.body_piece(data, self.head.framing))
                if self._copy_in is not None:
                    self._copy_in.keep(data)
        elif event is END:
            self.request_complete = True
            req = self.flow.request
            if req is not None:
                req.timestamp_end = self.ctx.clock.seconds()
            if self.state is State.BUFFERING:
                req = self.flow.request
                assert req is not None
                req._content = b"".join(self._release_buffer())
                self.run_hooks("request", self._request_done)
                return
            conn = self.upstream
            if conn is not None and self.head.framing is CHUNKED:
                if req is not None and callable(req.stream):
                    if not self._send_transformed(conn, req.stream, b""):
                        return
                conn.write(http1.LAST_CHUNK)
            if self._late_request:
                self._late_request = False
                self.ctx.hooks.run("request", self.flow)
            if self.state is State.ANSWERED:
                self._to(Step.COMPLETE)
                self._complete()
        elif isinstance(event, ProtocolError):
            self.keep_alive = False
            if self.session.end(Side.CLIENT, Ending.PROTOCOL_ERROR) is Action.ABORT_PEER:
                self.request_complete = True  # nothing was sent back yet: say why
                self.answer_error(event.status, event.reason)

    def _send_transformed(self, conn: Leg, stream: object, data: bytes) -> bool:
        """A request body piece through the hook's `stream` callable, upstream in chunks."""
        assert callable(stream)
        pieces = self.ctx.hooks.transform(stream, data, "requestbody", self.flow)
        if pieces is None:
            # What went upstream cannot be taken back: that request is cut there, and the
            # client hears why.
            self.keep_alive = False
            self.session.end(
                Side.UPSTREAM, Ending.PROTOCOL_ERROR, "an addon's stream function failed"
            )
            return False
        for piece in pieces:
            if piece:
                conn.write(http1.body_piece(piece, CHUNKED))
                if self._copy_in is not None:
                    self._copy_in.keep(piece)
        return True

    # -- answers of our own ----------------------------------------------------------------

    def answer_error(self, status: int, text: str, extra: ExtraHeaders = ()) -> None:
        """Answer with an error status and its one-line reason instead of an upstream's."""
        flow = self.flow
        flow.error = Error(text, self.ctx.clock.seconds())
        self.ctx.hooks.run("error", flow)  # told, not waited for: the answer is ours
        self.answer(status, http1.TEXT, http1.error_body(text, flow.id), extra)

    def _answer_with(self, resp: object) -> None:
        """A hook set `flow.response`: the response hooks see it (as mitmproxy emulates
        them), then the client gets it, without the origin."""
        self.flow.response.timestamp_start = self.ctx.clock.seconds()  # type: ignore[union-attr]
        self.run_hooks("responseheaders", self._answer_hooked)

    def _answer_hooked(self) -> None:
        flow = self.flow
        if flow.killed:
            self.kill()
        elif flow.response is not None and self.ctx.hooks.response_bodies:
            self.run_hooks("response", self._answer_made)
        else:
            self._answer_made()

    def _answer_made(self) -> None:
        flow = self.flow
        resp = flow.response
        if flow.killed or resp is None:
            self.kill()
            return
        body = resp._content or b""
        if self.head.method == b"HEAD":
            body = b""
        fields = with_length(resp.headers.fields, len(resp._content or b""))
        self._respond_locally(resp._status, resp._reason, fields, body)

    def answer(
        self, status: int, content_type: bytes, body: bytes, extra: ExtraHeaders = ()
    ) -> None:
        """Answer ourselves. A request body not yet read in full ends the connection: the client
        may never send the rest (it may be waiting for 100 Continue)."""
        if not self.request_complete and not self.session.drop_request_body():
            self.keep_alive = False
            self.session.stop_reading()
            self.session.client.linger = True  # what it still sends must not reset the answer
        self.request_complete = True
        flow = self.flow
        flow.status = status
        flow.bytes_out = len(body)
        self._to(Step.ANSWER)
        self.session.client.write(
            http1.local_response(status, content_type, body, not self.keep_alive, extra)
        )
        self._release_buffer()
        self._complete()

    def _respond_locally(self, status: int, reason: bytes, fields: list, body: bytes) -> None:
        """Answer with a response a hook made (head as left, framed by its body)."""
        if not self.request_complete and not self.session.drop_request_body():
            self.keep_alive = False
            self.session.stop_reading()
            self.session.client.linger = True
        self.request_complete = True
        data, _, self.keep_alive = http1.client_response_head(
            status, reason, fields, LENGTH, self.http10, self.keep_alive
        )
        flow = self.flow
        flow.status = status
        flow.bytes_out = len(body)
        self._to(Step.ANSWER)
        self.session.client.write(data + body if body else data)
        self._release_buffer()
        self._complete()

    # -- endings ---------------------------------------------------------------------------

    def after(self, action: Action, side: Side, ending: Ending, detail: str) -> None:
        """The owner's part of a lifecycle action the session has carried out on the legs."""
        if action is Action.FINISH_RESPONSE:
            if self.out_framing is UNTIL_CLOSE:
                self.keep_alive = False
            self._response_end()
            return
        if action is Action.NOTHING or action is Action.RELAY_HALF_CLOSE:
            return
        self._detach()  # every other action ended (or let go of) the upstream leg
        if action is Action.RESPOND_502 or action is Action.RESPOND_504:
            timeout = action is Action.RESPOND_504
            if not detail:
                detail = (
                    "upstream timed out"
                    if timeout
                    else f"upstream closed the connection before responding ({ending.value})"
                )
            self.answer_error(504 if timeout else 502, detail)
        elif action is Action.RETRY:
            self.retried = True
            self._connect()
        elif action is Action.TRUNCATE_PEER:
            self.keep_alive = False
            self.flow.error = Error(detail or f"upstream {ending.value} mid-response")
            self.ctx.hooks.run("error", self.flow)  # mitmproxy's too: told, not waited for

    def cut(self, why: str) -> None:
        """The client connection ended with this exchange unfinished: record it as such."""
        if self.state is State.DONE or self.state is State.UPGRADED:
            return
        flow = self.flow
        if flow.error is None and self.state is not State.ANSWERED:
            flow.error = Error(why)
            self.ctx.hooks.run("error", flow)
        elif flow.killed:
            self.ctx.hooks.run("error", flow)  # mitmproxy tells `error` of a kill too
        self._to(Step.CUT)
        self._detach()
        self._release_buffer()
        self.ctx.record(self.flow)
