"""One request and its response: target, hooks, dispatch and retry, local answers, body relay
both ways, and the record of what happened.

An exchange moves through named states; every allowed move is a row of states.TRANSITIONS. It
owns its upstream leg while it runs: the leg reports to it (the ResponseSide it is built on), and
it reports endings to its session, whose `end` consults the lifecycle table and carries the
action out on both legs; the exchange then does the part that is not about connections (an
answer, a retry, a record) in `after`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from ..access import Refusal
from ..flow import Flow, Request
from ..hosts import format_authority
from . import http1
from .events import (
    CHUNKED,
    END,
    NO_BODY,
    UNTIL_CLOSE,
    Body,
    ExtraHeaders,
    ProtocolError,
    RequestEvent,
    RequestHead,
)
from .headers import (
    forwarded_request_headers,
    max_forwards,
    passed_through,
    proxy_authorization,
    with_max_forwards,
)
from .leg import Leg, end
from .lifecycle import Action, Ending, Phase, Side
from .response import ResponseSide
from .states import PHASES, State, Step
from .targets import parse_target, split_authority
from .upstream import Key

if TYPE_CHECKING:
    from .session import Session


class Exchange(ResponseSide):
    """One request/response on a client connection (or one refused request)."""

    __slots__ = ("refusal", "admitted", "_key")

    def __init__(self, session: Session, head: RequestHead | ProtocolError) -> None:
        self.session = session
        self.ctx = ctx = session.ctx
        self.flow = Flow(session.client.peer, ctx.clock.seconds())
        self.state = State.QUEUED
        self.upstream = None
        self.request_complete = False
        self.retried = False
        self.in_framing = self.out_framing = NO_BODY
        self.upstream_keep_alive = False
        self._request_bytes = b""
        self._key: Key = ("", "", 0)
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
        if self.state is State.RESPONDING and self.in_framing is UNTIL_CLOSE:
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
        flow.request = req = Request(method, scheme, host, port, path, headers, head.version)
        ctx.hooks.request(flow)
        if flow.local is not None:
            self.answer(*flow.local)
            return
        if req.port in ctx.own.ports and self._to_ourselves(req.host, req.port):
            return
        if method == "OPTIONS" or method == "TRACE":
            # RFC 9110 7.6.2: at 0 we are the final recipient; else one hop fewer remains.
            hops = max_forwards(req.headers)
            if hops == 0:
                if method == "TRACE":
                    self.answer(200, b"message/http", http1.trace_echo(head))
                else:
                    self.answer(200, http1.TEXT, b"", http1.ALLOW)
                return
            if hops is not None:
                req.headers = with_max_forwards(req.headers, hops - 1)
        self._request_bytes = http1.request_head(req.method.encode("ascii"), req.path, req.headers)
        self._key = (req.scheme, req.host, req.port)
        conn = ctx.pool.acquire(self._key, self)
        if conn is None:
            self._connect()
        else:
            self.upstream = conn
            self._send_head(conn)

    def _connect(self) -> None:
        self._to(Step.DISPATCH)
        # A connect that fails at once reports before this returns; then the answer is given.
        conn = self.ctx.pool.connect(self._key, self)
        if self.state is State.CONNECTING:
            self.upstream = conn

    def _connect_method(self) -> None:
        # Intercept (answer 200, at once or once the origin is reached), relay opaquely (200
        # once connected), or refuse.
        head, ctx, session = self.head, self.ctx, self.session
        try:
            host, port = split_authority(head.target, 443)
        except (ValueError, UnicodeDecodeError):
            self.answer_error(400, "CONNECT target must be host:port")
            return
        self.flow.request = Request("CONNECT", "https", host, port, b"", head.headers, head.version)
        if self._to_ourselves(host, port):
            return
        if session.intercepted is not None:
            self.answer_error(400, "CONNECT inside an intercepted tunnel")
        elif ctx.passthrough(host) or host in ctx.learned or ctx.intercept is None:
            if ctx.tunnel_connect is None:
                self.answer_error(501, "CONNECT is not supported")
                return
            self.keep_alive = False
            self._to(Step.DISPATCH)
            self.upstream = ctx.tunnel_connect(host, port, self)
        elif ctx.eager:
            self._open(host, port)
        else:
            self.connect_established(None)  # 200 at once; the requests inside connect

    def _open(self, host: str, port: int) -> None:
        # TCP to the origin first, so the CONNECT itself says when it cannot be reached (TLS
        # waits for the client's first bytes: they may not be TLS at all). A verified
        # connection already pooled proves as much, and gives the origin's certificate. A
        # failed CONNECT is the last request on its connection, as for a passthrough.
        self._key = ("https", host, port)
        certificate = self.ctx.pool.idle_certificate(self._key)
        if certificate is not None:
            self.connect_established(None, certificate)
            return
        self.keep_alive = False
        self._to(Step.OPEN)
        conn = self.ctx.pool.connect(self._key, self, tls=False)
        if self.state is State.OPENING:  # (a connect that failed at once has answered)
            self.upstream = conn

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
            conn = self.upstream
            if conn is not None and self.state is not State.ANSWERED:
                conn.write(http1.body_piece(data, self.head.framing))
        elif event is END:
            self.request_complete = True
            conn = self.upstream
            if conn is not None and self.head.framing is CHUNKED:
                conn.write(http1.LAST_CHUNK)
            if self.state is State.ANSWERED:
                self._to(Step.COMPLETE)
                self._complete()
        elif isinstance(event, ProtocolError):
            self.keep_alive = False
            if self.session.end(Side.CLIENT, Ending.PROTOCOL_ERROR) is Action.ABORT_PEER:
                self.request_complete = True  # nothing was sent back yet: say why
                self.answer_error(event.status, event.reason)

    # -- answers of our own ----------------------------------------------------------------

    def answer_error(self, status: int, text: str, extra: ExtraHeaders = ()) -> None:
        """Answer with an error status and its one-line reason instead of an upstream's."""
        self.flow.error = text
        self.ctx.hooks.error(self.flow)
        self.answer(status, http1.TEXT, http1.text_body(text), extra)

    def answer(
        self, status: int, content_type: bytes, body: bytes, extra: ExtraHeaders = ()
    ) -> None:
        """Answer ourselves. A request body not yet read in full ends the connection: the client
        may never send the rest (it may be waiting for 100 Continue)."""
        if not self.request_complete and not self.session.drop_request_body():
            self.keep_alive = False
            self.session.stop_reading()
        self.request_complete = True
        flow = self.flow
        flow.status = status
        flow.bytes_out = len(body)
        self._to(Step.ANSWER)
        self.session.client.write(
            http1.local_response(status, content_type, body, not self.keep_alive, extra)
        )
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
            self.flow.error = detail or f"upstream {ending.value} mid-response"

    def cut(self, why: str) -> None:
        """The client connection ended with this exchange unfinished: record it as such."""
        if self.state is State.DONE or self.state is State.UPGRADED:
            return
        if self.flow.error is None and self.state is not State.ANSWERED:
            self.flow.error = why
        self._to(Step.CUT)
        self._detach()
        self.ctx.record(self.flow)
