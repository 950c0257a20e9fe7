"""A playbook: the proxy's conversation with a client and its upstreams, stated exactly.

Reading one::

    assert (
        Playbook(Rig())
        >> client_sends(GET)                     # something happens to the proxy
        << connects("127.0.0.1", 9000)           # ...and this is everything it did about it
        >> connected()
        << upstream_receives(GET_UPSTREAM)
        >> upstream_sends(OK)
        << client_receives(OK)
        << pooled(1)
    )

`>>` adds an input (bytes or an ending arriving from one side, a connect completing or failing,
the clock advancing, a send buffer filling or draining). `<<` adds an expected effect of the
input before it (bytes a side receives, a close or abort, a connect attempt, reading paused or
resumed, the pool's idle count). Nothing runs until the playbook is evaluated by `assert`; it
then replays the inputs one by one, records what the proxy did to the fake transports, the
reactor and the pool, and compares:

* Strict: the effects of each input must be exactly the expectations written after it. An
  effect nobody expected (extra bytes, a close, an abort, a connect) fails the test, and so does
  an expected one that did not happen. No expectation after an input means "nothing happened".
* Order is checked per channel, where it is observable: everything one leg receives (bytes,
  FIN, RST, TLS start) is one ordered sequence; connect attempts are another. Across legs, order
  is not checked (which peer hears first within one reactor callback is invisible on the wire).
* Bytes: consecutive writes to one leg are joined, and so are consecutive `*_receives`
  expectations, so a response written as head then body is compared as one byte string, exactly.
  Bytes written to a leg after its abort or FIN are never delivered: they are reported as such,
  and no expectation matches them.
* Reading (backpressure): a leg's reading state is compared before and after each input, and a
  net change is an effect to expect (`client_reading_paused`, ...). Redundant pause/resume calls
  are invisible on a real socket, and so they are here; a real change is strict, because that is
  the only way backpressure is visible at all.
* The pool: a change of `idle_count()` over an input is an effect (`pooled(n)`).

Legs are numbered: client `n` (the Playbook accepts `clients` of them at the start) and upstream
`n`, the n-th connect attempt in `reactor.tcpClients`. The fake transports deliver nothing that a
real one would not: an input that sends on a leg the proxy closed, aborted or paused is a script
error, as is sending on a connection that is already lost. Our own close or abort does not report
itself back; the loss arrives as an input (`upstream_lost(ConnectionAborted())` after an abort),
so a script shows what happens both before and after it does.

A failing playbook prints the script, the input whose effects differ marked with `==>`, the
unexpected and missing effects named, and a line diff of any bytes that differ. Playbooks may be
asserted in parts (`assert pb >> a << b`, then `assert pb >> c`); one left with inputs or
expectations never evaluated fails the test (see `all_asserted`).

Import everything a session test needs from here: this module is the one place that knows where
the proxy's classes live.
"""

from __future__ import annotations

import difflib
import re
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from interceptor.addons.chain import HookChain
from interceptor.process import Counters
from interceptor.proxy.context import ProxyContext
from interceptor.proxy.downstream import ClientConnection
from interceptor.proxy.targets import split_authority
from interceptor.proxy.upstream import Pool

# Our error bodies end with the exchange's request id, random by design: what a leg receives
# has it replaced by this one (same length, so Content-Length still holds), which `refusal`
# writes too.
REQUEST_ID = b"00000000-0000-7000-8000-000000000000"
_REQUEST_ID = re.compile(rb"\(request id [0-9a-f-]{36}\)\n")

__all__ = [
    "head",
    "refusal",
    "Rig",
    "Playbook",
    "PlaybookError",
    "all_asserted",
    "split_authority",
    # inputs
    "client_sends",
    "client_half_closes",
    "client_closes",
    "client_resets",
    "client_lost",
    "client_buffer_full",
    "client_buffer_drained",
    "connected",
    "connect_fails",
    "upstream_sends",
    "upstream_half_closes",
    "upstream_closes",
    "upstream_resets",
    "upstream_lost",
    "upstream_buffer_full",
    "upstream_buffer_drained",
    "advance",
    # expectations
    "client_receives",
    "client_closed",
    "client_half_closed",
    "client_aborted",
    "client_starts_tls",
    "client_reading_paused",
    "client_reading_resumed",
    "connects",
    "connect_cancelled",
    "upstream_receives",
    "upstream_closed",
    "upstream_half_closed",
    "upstream_aborted",
    "upstream_reading_paused",
    "upstream_reading_resumed",
    "pooled",
]

CLIENT = "client"
UPSTREAM = "upstream"
Leg = tuple[str, int]  # (CLIENT or UPSTREAM, number)


class Rig:
    """The proxy under test: one ProxyContext and Pool on a MemoryReactorClock, no sockets.

    `ctx_args` go to ProxyContext (idle_timeout, header_timeout, intercept, ...). The pool keeps
    `pool_size` idle connections per origin for 30 s and connects with a 10 s timeout. `hooks`:
    a HookChain of test addons (one without a clock gets the rig's, for its hook timeout).
    """

    def __init__(
        self,
        read_timeout: float = 60.0,
        pool_size: int = 8,
        tls_creator: Callable[[str], Any] | None = None,
        hooks: HookChain | None = None,
        **ctx_args: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        if hooks is not None and hooks.clock is None:
            hooks.clock = self.reactor
        self.counters = Counters()
        self.pool = Pool(
            reactor=self.reactor,
            clock=self.reactor,
            counters=self.counters,
            registry=None,
            size=pool_size,
            idle_timeout=30.0,
            connect_timeout=10.0,
            hosts={},
            tls_creator=tls_creator,
            read_timeout=read_timeout,
        )
        self.ctx = ProxyContext(
            clock=self.reactor,
            counters=self.counters,
            pool=self.pool,
            hooks=hooks if hooks is not None else HookChain(),
            **ctx_args,
        )

    def new_client(self) -> ClientConnection:
        """A client-side protocol for one accepted connection (not yet connected)."""
        return ClientConnection(self.ctx)


# -- effects ------------------------------------------------------------------------------------


@dataclass
class Effect:
    """One thing the proxy did that a peer can observe, or its expectation.

    `channel` groups effects whose relative order is observable; `value` is compared for
    equality, except where `wildcard` says a part of it is not checked.
    """

    channel: tuple[Any, ...]
    kind: str
    leg: Leg | None
    value: Any = None
    wildcard: frozenset[int] = field(default_factory=frozenset)
    note: str = ""  # shown, never compared

    def matches(self, actual: Effect) -> bool:
        """Whether `actual` is what this expectation describes."""
        if (self.channel, self.kind, self.leg) != (actual.channel, actual.kind, actual.leg):
            return False
        if not self.wildcard:
            return bool(self.value == actual.value)
        pairs = enumerate(zip(self.value, actual.value, strict=True))
        return all(i in self.wildcard or a == b for i, (a, b) in pairs)

    def describe(self) -> str:
        """One line for reports."""
        who = _leg_name(self.leg) if self.leg is not None else ""
        kind = self.kind
        if kind == "receives":
            return f"{who} receives {_short(self.value)}"
        if kind == "discarded":
            return f"{who} is sent {_short(self.value)} after its abort or FIN: never delivered"
        if kind == "connects":
            host, port, timeout = self.value
            t = "" if 2 in self.wildcard else f" (timeout {timeout})"
            return f"connect to {host}:{port}{t}{self.note}"
        if kind == "pooled":
            return f"pool idle count becomes {self.value}"
        if kind == "starts_tls":
            ctx, hello = self.value
            return f"{who} starts TLS with {ctx!r}, handing it {_short(hello)}"
        return f"{who} {kind.replace('_', ' ')}"


def _clients(count: int) -> str:
    return "client 0" if count == 1 else f"clients 0-{count - 1}"


def _leg_name(leg: Leg) -> str:
    return f"{leg[0]} {leg[1]}"


def _short(data: bytes, limit: int = 70) -> str:
    text = repr(data)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({len(data)} bytes)" if len(data) > 20 else text


def _wire(leg: Leg, kind: str, value: Any = None) -> Effect:
    return Effect(("wire", leg), kind, leg, value)


def _merged(effects: list[Effect]) -> list[Effect]:
    """Join consecutive byte effects of one leg (writes are a stream, not messages)."""
    out: list[Effect] = []
    last: dict[tuple[Any, ...], Effect] = {}
    for e in effects:
        prev = last.get(e.channel)
        if e.kind in ("receives", "discarded") and prev is not None and prev.kind == e.kind:
            prev.value += e.value
            continue
        e = Effect(e.channel, e.kind, e.leg, e.value, e.wildcard, e.note)
        out.append(e)
        last[e.channel] = e
    return out


# -- the fake transport -------------------------------------------------------------------------


class FakeTransport(StringTransport):
    """A StringTransport that reports every observable call to the playbook's log.

    Reading state is tracked as a bool (`reading`): only its value before and after an input
    matters. After `startTLS`, `protocol` is a stand-in TLS layer that records what it is handed;
    bytes in both directions are then the plaintext a real TLS layer would carry.
    """

    def __init__(self, leg: Leg, log: list[Effect], peer: IPv4Address) -> None:
        super().__init__(peerAddress=peer, lenient=True)
        self.leg = leg
        self.log = log
        self.reading = True
        self.shut_for_writing = False  # aborted, half-closed, or lost: writes go nowhere
        self.lost = False  # connectionLost has been delivered
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        kind = "discarded" if self.shut_for_writing or self.lost else "receives"
        seen = _REQUEST_ID.sub(b"(request id " + REQUEST_ID + b")\n", bytes(data))
        self.log.append(_wire(self.leg, kind, seen))
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.log.append(_wire(self.leg, "closed"))
        self.disconnecting = True

    def loseWriteConnection(self) -> None:
        self.log.append(_wire(self.leg, "half_closed"))
        self.shut_for_writing = True

    def abortConnection(self) -> None:
        self.log.append(_wire(self.leg, "aborted"))
        self.disconnected = self.disconnecting = True
        self.shut_for_writing = True

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        effect = _wire(self.leg, "starts_tls", (ctx, b""))
        self.log.append(effect)
        self.protocol = _TLSLayer(effect)


class _TLSLayer:
    """Stands in for the TLS layer: what the proxy hands it is recorded with its startTLS."""

    def __init__(self, effect: Effect) -> None:
        self.effect = effect

    def dataReceived(self, data: bytes) -> None:
        ctx, hello = self.effect.value
        self.effect.value = (ctx, hello + data)


# -- script entries -------------------------------------------------------------------------------


class PlaybookError(Exception):
    """The script asks for something a real network could not do (a mistake in the test)."""


@dataclass
class Input:
    """Something that happens to the proxy (`>>`)."""

    text: str
    run: Callable[[Playbook], None]

    def __str__(self) -> str:
        return f">> {self.text}"


@dataclass
class Expect:
    """An effect the input before it must have (`<<`)."""

    effect: Effect

    def __str__(self) -> str:
        return f"<< {self.effect.describe()}"


@dataclass
class _Attempt:
    host: str
    port: int
    factory: Any
    connector: Any
    state: str = "pending"  # pending, connected, failed
    protocol: Any = None
    transport: FakeTransport | None = None


@dataclass
class _Block:
    """One input, the expectations written after it, and (once run) what it did."""

    input: Input
    expects: list[Expect]
    actual: list[Effect] = field(default_factory=list)
    crash: str | None = None


_live: list[Playbook] = []


class Playbook:
    """Drives a Rig through a script of inputs and checks its exact effects; see the module doc."""

    def __init__(self, rig: Rig, clients: int = 1) -> None:
        self.rig = rig
        self.clients: list[tuple[ClientConnection, FakeTransport]] = []
        self.attempts: list[_Attempt] = []
        self._log: list[Effect] = []
        self.script: list[Input | Expect] = [
            Input(f"start: {_clients(clients)} connected", lambda pb: pb._accept(clients))
        ]
        self._ran: list[tuple[list[Effect], str | None]] = []  # per input run so far
        self._checked = 0  # script entries covered by the last successful evaluation
        self._checked_blocks = 0  # and the inputs among them (marked in a later report)
        self._failed = False
        _live.append(self)

    # -- building the script -------------------------------------------------------------------

    def __rshift__(self, entry: Input) -> Playbook:
        """Add an input: the next thing that happens to the proxy."""
        if not isinstance(entry, Input):
            raise TypeError(f">> takes an input, not {entry!r}")
        self.script.append(entry)
        return self

    def __lshift__(self, entry: Expect) -> Playbook:
        """Add an effect that the latest input must have."""
        if not isinstance(entry, Expect):
            raise TypeError(f"<< takes an expectation, not {entry!r}")
        self.script.append(entry)
        return self

    # -- evaluating ----------------------------------------------------------------------------

    def __bool__(self) -> bool:
        """Play the inputs not yet played and check every input's effects; raise if they differ."""
        __tracebackhide__ = True  # the report says it all; pytest need not show this frame
        blocks = self._blocks()
        for i, block in enumerate(blocks):
            if i == len(self._ran):
                self._ran.append(self._run(block.input))
            block.actual, block.crash = self._ran[i]
            problem = block.crash or _compare(block.expects, block.actual)
            if problem is not None:
                self._failed = True
                raise AssertionError(_report(blocks, i, problem, self._checked_blocks))
        self._checked = len(self.script)
        self._checked_blocks = len(blocks)
        return True

    def unevaluated(self) -> int:
        """Script entries added since the last successful `assert` of this playbook."""
        return len(self.script) - self._checked

    def _blocks(self) -> list[_Block]:
        blocks: list[_Block] = []
        for entry in self.script:
            if isinstance(entry, Input):
                blocks.append(_Block(entry, []))
            else:
                blocks[-1].expects.append(entry)
        return blocks

    def _run(self, entry: Input) -> tuple[list[Effect], str | None]:
        """Play one input; returns its effects and, if it could not run, why."""
        before = self._snapshot()
        self._log.clear()
        crash = None
        try:
            entry.run(self)
        except PlaybookError as e:
            crash = f"the script is impossible here: {e}"
        except Exception:
            crash = "the proxy raised:\n" + traceback.format_exc()
        effects = list(self._log)
        self._log.clear()
        effects += self._changes(before, self._snapshot())
        return _merged(effects), crash

    def _snapshot(self) -> dict[str, Any]:
        legs = [t for _, t in self.clients] + [
            a.transport for a in self.attempts if a.transport is not None
        ]
        return {
            "reading": {t.leg: t.reading for t in legs},
            "attempts": len(self.rig.reactor.tcpClients),
            "cancelled": {
                i for i, c in enumerate(self.rig.reactor.connectors) if c.stoppedConnecting
            },
            "idle": self.rig.pool.idle_count(),
        }

    def _changes(self, before: dict[str, Any], after: dict[str, Any]) -> list[Effect]:
        out: list[Effect] = []
        reactor = self.rig.reactor
        for i in range(before["attempts"], after["attempts"]):
            host, port, factory, timeout, _bind = reactor.tcpClients[i]
            self.attempts.append(_Attempt(host, port, factory, reactor.connectors[i]))
            value = (host, port, timeout)
            out.append(Effect(("connects",), "connects", None, value, note=f" (upstream {i})"))
        for i in sorted(after["cancelled"] - before["cancelled"]):
            out.append(_wire((UPSTREAM, i), "connect_cancelled"))
        for leg, reading in after["reading"].items():
            if before["reading"].get(leg, True) != reading:
                kind = "reading_resumed" if reading else "reading_paused"
                out.append(Effect(("reading", leg), kind, leg))
        if after["idle"] != before["idle"]:
            out.append(Effect(("pool",), "pooled", None, after["idle"]))
        return out

    # -- what inputs do ------------------------------------------------------------------------

    def _accept(self, count: int) -> None:
        for _ in range(count):
            n = len(self.clients)
            proto = self.rig.new_client()
            t = FakeTransport((CLIENT, n), self._log, IPv4Address("TCP", "127.0.0.1", 40000 + n))
            self.clients.append((proto, t))
            proto.makeConnection(t)

    def leg(self, side: str, n: int) -> tuple[Any, FakeTransport]:
        """The protocol and transport of a connected leg (for inputs)."""
        if side == CLIENT:
            if not 0 <= n < len(self.clients):
                raise PlaybookError(f"there is no client {n}")
            return self.clients[n]
        transport = self.attempts[n].transport if 0 <= n < len(self.attempts) else None
        if transport is None:
            raise PlaybookError(f"upstream {n} is not connected")
        return self.attempts[n].protocol, transport

    def readable(self, side: str, n: int) -> tuple[Any, FakeTransport]:
        """A leg that could deliver bytes or a FIN to the proxy now."""
        proto, t = self.leg(side, n)
        name = _leg_name((side, n))
        if t.lost:
            raise PlaybookError(f"{name} is already lost")
        if t.disconnecting or t.disconnected:
            raise PlaybookError(f"the proxy closed or aborted {name}: it reads nothing more")
        if not t.reading:
            raise PlaybookError(f"the proxy paused reading {name}: nothing arrives until resumed")
        return proto, t

    def attempt(self, n: int | None) -> _Attempt:
        """Connect attempt `n`, or the only one still pending."""
        if n is None:
            pending = [i for i, a in enumerate(self.attempts) if a.state == "pending"]
            if len(pending) != 1:
                raise PlaybookError(f"say which attempt: pending are {pending}")
            n = pending[0]
        if not 0 <= n < len(self.attempts):
            raise PlaybookError(f"there is no connect attempt {n}")
        a = self.attempts[n]
        if a.state != "pending":
            raise PlaybookError(f"connect attempt {n} is already {a.state}")
        return a


# -- comparing and reporting --------------------------------------------------------------------


def _compare(expects: list[Expect], actual: list[Effect]) -> str | None:
    """None if the effects are exactly the expected ones; else what differs, in words."""
    expected = _merged([x.effect for x in expects])
    channels = list(dict.fromkeys([e.channel for e in expected] + [e.channel for e in actual]))
    lines: list[str] = []
    for ch in channels:
        exp = [e for e in expected if e.channel == ch]
        act = [e for e in actual if e.channel == ch]
        if len(exp) == len(act) and all(x.matches(a) for x, a in zip(exp, act, strict=True)):
            continue
        lines += _explain(exp, act)
    if not lines:
        return None
    lines.append("")
    lines.append("what it did, in order:")
    lines += [f"    {e.describe()}" for e in actual] or ["    nothing"]
    return "\n".join(lines)


def _explain(exp: list[Effect], act: list[Effect]) -> list[str]:
    unmatched_act = list(act)
    missing: list[Effect] = []
    for x in exp:
        for a in unmatched_act:
            if x.matches(a):
                unmatched_act.remove(a)
                break
        else:
            missing.append(x)
    lines: list[str] = []
    for a in unmatched_act:
        lines.append(f"unexpected: {a.describe()}")
    for x in missing:
        lines.append(f"missing:    {x.describe()}")
    if not unmatched_act and not missing:
        lines.append("the same effects, in another order:")
        lines += [f"    expected: {x.describe()}" for x in exp]
        lines += [f"    actual:   {a.describe()}" for a in act]
    for x in missing:
        for a in unmatched_act:
            if x.kind == a.kind == "receives" and x.leg is not None and x.leg == a.leg:
                lines.append(f"bytes {_leg_name(x.leg)} received (- expected, + actual):")
                lines += _bytes_diff(x.value, a.value)
    return lines


def _byte_lines(data: bytes) -> list[str]:
    out = []
    for line in data.splitlines(keepends=True):
        for i in range(0, len(line), 64):
            out.append(repr(line[i : i + 64]))
    return out


def _bytes_diff(expected: bytes, actual: bytes) -> list[str]:
    diff = difflib.ndiff(_byte_lines(expected), _byte_lines(actual))
    return [f"    {line}" for line in diff if not line.startswith("?")]


def _report_entries(blocks: list[_Block], failed: int, asserted: int) -> Iterator[str]:
    for i, block in enumerate(blocks):
        if i == asserted and i:
            yield "    ---- asserted before, up to here ----"
        mark = "==> " if i == failed else "    "
        later = " (not run)" if i > failed else ""
        yield f"{mark}{block.input}{later}"
        for x in block.expects:
            yield f"        {x}"


def _report(blocks: list[_Block], failed: int, problem: str, asserted: int) -> str:
    if blocks[failed].crash is not None:
        head = "Playbook stopped: the input marked ==> could not be played."
    else:
        head = "Playbook mismatch: what the input marked ==> did is not what the script says."
    body = "\n".join(_report_entries(blocks, failed, asserted))
    detail = "\n".join(f"  {line}" for line in problem.splitlines())
    return f"{head}\n\n{body}\n\nafter {blocks[failed].input}:\n{detail}"


@contextmanager
def all_asserted() -> Iterator[None]:
    """Around a test: fail it if a playbook built inside was left partly never asserted.

    (A playbook only runs when asserted; a forgotten `assert` would otherwise pass silently.)
    """
    first = len(_live)
    try:
        yield
    finally:
        created = _live[first:]
        del _live[first:]
    for pb in created:
        left = pb.unevaluated()
        if left and not pb._failed:
            entries = "\n".join(f"    {entry}" for entry in pb.script[-left:])
            raise AssertionError(f"a playbook was never asserted after these entries:\n{entries}")


# -- inputs -------------------------------------------------------------------------------------


def client_sends(data: bytes, n: int = 0) -> Input:
    """Client `n` sends `data` (delivered to the proxy in one read)."""

    def run(pb: Playbook) -> None:
        proto, _ = pb.readable(CLIENT, n)
        proto.dataReceived(data)

    return Input(f"client {n} sends {_short(data)}", run)


def _half_close(proto: Any) -> None:
    # A protocol that is not half-closeable hears a FIN as the end of the connection: Twisted
    # delivers connectionLost(ConnectionDone) to it.
    if IHalfCloseableProtocol.providedBy(proto):
        proto.readConnectionLost()
    else:
        proto.connectionLost(Failure(error.ConnectionDone()))


def _lose(pb: Playbook, side: str, n: int, reason: Exception) -> None:
    proto, t = pb.leg(side, n)
    if t.lost:
        raise PlaybookError(f"{_leg_name((side, n))} is already lost")
    t.lost = True
    proto.connectionLost(Failure(reason))


def client_half_closes(n: int = 0) -> Input:
    """Client `n` sends FIN (readConnectionLost) and keeps reading."""

    def run(pb: Playbook) -> None:
        proto, _ = pb.readable(CLIENT, n)
        _half_close(proto)

    return Input(f"client {n} half-closes (FIN)", run)


def client_closes(n: int = 0) -> Input:
    """Client `n`'s connection ends cleanly (connectionLost with ConnectionDone)."""
    return Input(f"client {n} closes", lambda pb: _lose(pb, CLIENT, n, error.ConnectionDone()))


def client_resets(n: int = 0) -> Input:
    """Client `n`'s connection is reset (connectionLost with ConnectionLost)."""
    return Input(f"client {n} resets", lambda pb: _lose(pb, CLIENT, n, error.ConnectionLost()))


def client_lost(reason: Exception, n: int = 0) -> Input:
    """Client `n`'s connection is lost for `reason` (e.g. ConnectionAborted after our abort)."""
    text = f"client {n} lost: {type(reason).__name__}"
    return Input(text, lambda pb: _lose(pb, CLIENT, n, reason))


def _buffer(side: str, n: int, full: bool) -> Input:
    def run(pb: Playbook) -> None:
        _, t = pb.leg(side, n)
        if t.producer is None:
            raise PlaybookError(f"no producer is registered on {_leg_name((side, n))}")
        if full:
            t.producer.pauseProducing()
        else:
            t.producer.resumeProducing()

    what = "full" if full else "drained"
    return Input(f"{side} {n}'s send buffer is {what}", run)


def client_buffer_full(n: int = 0) -> Input:
    """Client `n`'s send buffer fills: the transport pauses the producer registered on it."""
    return _buffer(CLIENT, n, True)


def client_buffer_drained(n: int = 0) -> Input:
    """Client `n`'s send buffer drains: the transport resumes the producer registered on it."""
    return _buffer(CLIENT, n, False)


def connected(n: int | None = None) -> Input:
    """Connect attempt `n` (default: the only pending one) completes: upstream `n` exists."""

    def run(pb: Playbook) -> None:
        a = pb.attempt(n)
        index = pb.attempts.index(a)
        peer = IPv4Address("TCP", a.host, a.port)
        a.protocol = a.factory.buildProtocol(peer)
        a.transport = FakeTransport((UPSTREAM, index), pb._log, peer)
        a.state = "connected"
        a.protocol.makeConnection(a.transport)

    which = "the pending connect" if n is None else f"connect attempt {n}"
    return Input(f"{which} completes", run)


def connect_fails(reason: Exception, n: int | None = None) -> Input:
    """Connect attempt `n` (default: the only pending one) fails: refused, DNS, timeout..."""

    def run(pb: Playbook) -> None:
        a = pb.attempt(n)
        a.state = "failed"
        a.factory.clientConnectionFailed(a.connector, Failure(reason))

    which = "the pending connect" if n is None else f"connect attempt {n}"
    return Input(f"{which} fails: {type(reason).__name__}", run)


def upstream_sends(data: bytes, n: int = 0) -> Input:
    """Upstream `n` sends `data` (delivered to the proxy in one read)."""

    def run(pb: Playbook) -> None:
        proto, _ = pb.readable(UPSTREAM, n)
        proto.dataReceived(data)

    return Input(f"upstream {n} sends {_short(data)}", run)


def upstream_half_closes(n: int = 0) -> Input:
    """Upstream `n` sends FIN (a connection lost, unless its protocol is half-closeable)."""

    def run(pb: Playbook) -> None:
        proto, t = pb.readable(UPSTREAM, n)
        if not IHalfCloseableProtocol.providedBy(proto):
            t.lost = True
        _half_close(proto)

    return Input(f"upstream {n} half-closes (FIN)", run)


def upstream_closes(n: int = 0) -> Input:
    """Upstream `n`'s connection ends cleanly (connectionLost with ConnectionDone)."""
    text = f"upstream {n} closes"
    return Input(text, lambda pb: _lose(pb, UPSTREAM, n, error.ConnectionDone()))


def upstream_resets(n: int = 0) -> Input:
    """Upstream `n`'s connection is reset (connectionLost with ConnectionLost)."""
    text = f"upstream {n} resets"
    return Input(text, lambda pb: _lose(pb, UPSTREAM, n, error.ConnectionLost()))


def upstream_lost(reason: Exception, n: int = 0) -> Input:
    """Upstream `n`'s connection is lost for `reason` (e.g. ConnectionAborted after our abort)."""
    text = f"upstream {n} lost: {type(reason).__name__}"
    return Input(text, lambda pb: _lose(pb, UPSTREAM, n, reason))


def upstream_buffer_full(n: int = 0) -> Input:
    """Upstream `n`'s send buffer fills: the transport pauses the producer registered on it."""
    return _buffer(UPSTREAM, n, True)


def upstream_buffer_drained(n: int = 0) -> Input:
    """Upstream `n`'s send buffer drains: the transport resumes the producer registered on it."""
    return _buffer(UPSTREAM, n, False)


def advance(seconds: float) -> Input:
    """The clock moves on by `seconds`, running the timers that fall due."""
    return Input(f"{seconds} s pass", lambda pb: pb.rig.reactor.advance(seconds))


# -- expectations -------------------------------------------------------------------------------


def client_receives(data: bytes, n: int = 0) -> Expect:
    """Client `n` receives exactly `data` (consecutive writes and expectations are joined)."""
    return Expect(_wire((CLIENT, n), "receives", data))


def upstream_receives(data: bytes, n: int = 0) -> Expect:
    """Upstream `n` receives exactly `data` (consecutive writes and expectations are joined)."""
    return Expect(_wire((UPSTREAM, n), "receives", data))


def client_closed(n: int = 0) -> Expect:
    """The proxy closes client `n` in order (loseConnection: FIN once written)."""
    return Expect(_wire((CLIENT, n), "closed"))


def upstream_closed(n: int = 0) -> Expect:
    """The proxy closes upstream `n` in order (loseConnection: FIN once written)."""
    return Expect(_wire((UPSTREAM, n), "closed"))


def client_half_closed(n: int = 0) -> Expect:
    """The proxy shuts client `n` for writing (loseWriteConnection) and keeps reading."""
    return Expect(_wire((CLIENT, n), "half_closed"))


def upstream_half_closed(n: int = 0) -> Expect:
    """The proxy shuts upstream `n` for writing (loseWriteConnection) and keeps reading."""
    return Expect(_wire((UPSTREAM, n), "half_closed"))


def client_aborted(n: int = 0) -> Expect:
    """The proxy aborts client `n` (RST)."""
    return Expect(_wire((CLIENT, n), "aborted"))


def upstream_aborted(n: int = 0) -> Expect:
    """The proxy aborts upstream `n` (RST)."""
    return Expect(_wire((UPSTREAM, n), "aborted"))


def client_starts_tls(ctx: Any, hello: bytes = b"", n: int = 0) -> Expect:
    """The proxy starts TLS on client `n` with `ctx`, handing the TLS layer `hello` at once."""
    return Expect(_wire((CLIENT, n), "starts_tls", (ctx, hello)))


def client_reading_paused(n: int = 0) -> Expect:
    """The proxy stops reading client `n` (and had been reading it)."""
    return Expect(Effect(("reading", (CLIENT, n)), "reading_paused", (CLIENT, n)))


def client_reading_resumed(n: int = 0) -> Expect:
    """The proxy reads client `n` again."""
    return Expect(Effect(("reading", (CLIENT, n)), "reading_resumed", (CLIENT, n)))


def upstream_reading_paused(n: int = 0) -> Expect:
    """The proxy stops reading upstream `n` (and had been reading it)."""
    return Expect(Effect(("reading", (UPSTREAM, n)), "reading_paused", (UPSTREAM, n)))


def upstream_reading_resumed(n: int = 0) -> Expect:
    """The proxy reads upstream `n` again."""
    return Expect(Effect(("reading", (UPSTREAM, n)), "reading_resumed", (UPSTREAM, n)))


def connects(host: str, port: int, timeout: float | None = None) -> Expect:
    """The proxy starts a connect to host:port (with `timeout`, if given); it becomes the next
    upstream number. Through a hostname the memory reactor resolves every name to 127.0.0.1."""
    value = (host, port, timeout)
    return Expect(
        Effect(("connects",), "connects", None, value, frozenset({2} if timeout is None else ()))
    )


def connect_cancelled(n: int = 0) -> Expect:
    """The proxy gives up connect attempt `n` before it completed."""
    return Expect(_wire((UPSTREAM, n), "connect_cancelled"))


def pooled(count: int) -> Expect:
    """The pool's idle count changes to `count` (`Pool.idle_count()`)."""
    return Expect(Effect(("pool",), "pooled", None, count))


def head(*lines: bytes) -> bytes:
    """A message head: the start line and header lines, each CRLF-ended, then the blank line."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def refusal(status: bytes, text: bytes, close: bool = False) -> bytes:
    """A response the proxy makes itself: `status` such as b"502 Bad Gateway", a text body
    (which ends with the request id, REQUEST_ID here)."""
    body = text + b" (request id " + REQUEST_ID + b")\n"
    lines = [
        b"HTTP/1.1 " + status,
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
    ]
    if close:
        lines.append(b"Connection: close")
    return head(*lines) + body
