"""The tunnel handshakes through upstream proxies, as state and parsing: SOCKS5 replies of
every address type, split anywhere; CONNECT answers; what follows the handshake reaching the
protocol the tunnel was for. (Real tinyproxy and microsocks: tests/test_upstream_proxies.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from interceptor.proxy.via import Route, UpstreamProxyError, ViaEndpoint


class Inner(Protocol):
    """The protocol the tunnel is for: records what reaches it."""

    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ToProxy:
    """Stands for the TCP endpoint to the proxy: connects at once to a StringTransport."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


def _open(route: Route, host: str = "origin.example", port: int = 443) -> tuple[Any, ...]:
    reactor = MemoryReactorClock()
    proxy = ToProxy()
    inner = Inner()
    endpoint = ViaEndpoint(reactor, route, host, port, 10.0, proxy)  # type: ignore[arg-type]
    results: list[object] = []
    endpoint.connect(Factory.forProtocol(lambda: inner)).addBoth(results.append)
    return reactor, proxy, inner, results


SOCKS = Route("socks5h", "127.0.0.1", 1080, "u", "p")


def _socks_reply(address: bytes) -> bytes:
    return b"\x05\x00\x00" + address + b"\x01\xbb"


@pytest.mark.parametrize(
    "address",
    [b"\x01\x7f\x00\x00\x01", b"\x04" + bytes(16), b"\x03\x0borigin.test"],
    ids=["ipv4", "ipv6", "name"],
)
def test_socks5_with_credentials_opens_the_tunnel_whatever_the_reply_splits(
    address: bytes,
) -> None:
    reactor, proxy, inner, results = _open(SOCKS)
    sent = proxy.transport
    assert sent.value() == b"\x05\x01\x02"  # only username/password offered
    sent.clear()
    answer = b"\x05\x02" + b"\x01\x00" + _socks_reply(address) + b"first bytes"
    for i in range(len(answer)):  # one byte at a time: every split point
        proxy.protocol.dataReceived(answer[i : i + 1])
        if i == 1:
            assert sent.value() == b"\x01\x01u\x01p"
            sent.clear()
        if i == 3:
            request = sent.value()
            assert request == b"\x05\x01\x00\x03\x0eorigin.example\x01\xbb", request
    assert results == [inner] and inner.made
    assert inner.received == b"first bytes"  # what followed the reply is the tunnel's
    assert not reactor.getDelayedCalls()  # the handshake timer is gone


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"\x05\x02\x01\x01", "refused the user name and password"),
        (b"\x05\xff", "offered no acceptable authentication"),
        (b"\x05\x02\x01\x00\x05\x05\x00\x01" + bytes(6), "connection refused"),
        (b"HTTP/1.1 400 Bad\r\n", "does not speak SOCKS5"),
    ],
    ids=["bad-password", "no-method", "refused", "not-socks"],
)
def test_socks5_refusals_say_why_and_end_the_connection(answer: bytes, says: str) -> None:
    _, proxy, inner, results = _open(SOCKS)
    proxy.protocol.dataReceived(answer)
    (failure,) = results
    assert isinstance(failure, Failure) and failure.check(UpstreamProxyError)
    assert says in str(failure.value) and "socks5h://u@127.0.0.1:1080" in str(failure.value)
    assert proxy.transport.disconnecting or proxy.transport.disconnected
    assert not inner.made


def test_connect_through_an_http_proxy_sends_credentials_and_keeps_what_follows() -> None:
    route = Route("http", "127.0.0.1", 3128, "alice", "pw")
    _, proxy, inner, results = _open(route)
    assert proxy.transport.value() == (
        b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6cHc=\r\n\r\n"
    )
    proxy.protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03")
    assert results == [inner] and inner.received == b"\x16\x03"
    proxy.protocol.dataReceived(b"more")
    assert inner.received == b"\x16\x03more"


def test_a_refused_connect_names_the_status_and_a_silent_proxy_times_out() -> None:
    route = Route("http", "127.0.0.1", 3128)
    _, proxy, _, results = _open(route)
    proxy.protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    (failure,) = results
    assert str(failure.value) == (  # type: ignore[union-attr]
        "upstream proxy http://127.0.0.1:3128 answered 403 Forbidden to CONNECT"
    )
    reactor, proxy, _, results = _open(route)
    reactor.advance(10)
    (failure,) = results
    assert failure.value.status == 504 and "within 10 s" in str(failure.value)  # type: ignore[union-attr]
