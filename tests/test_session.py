"""The session state machine, driven in memory: no sockets, a fake clock, scripted upstreams.

Like mitmproxy's Playbook tests: bytes in from the client, check what reaches the upstream;
bytes in from the upstream, check what reaches the client; endings in, check what happens to the
peer.
"""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from interceptor.addons.chain import HookChain
from interceptor.process import Counters
from interceptor.proxy.downstream import ClientConnection
from interceptor.proxy.session import ProxyContext
from interceptor.proxy.upstream import Pool


class Transport(StringTransport):
    """A StringTransport that remembers aborts and tolerates late pause/resume."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self._lenient = True
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Rig:
    """A proxy context on a memory reactor, with helpers to play both sides."""

    def __init__(self, read_timeout: float = 60.0, **ctx_args) -> None:
        self.reactor = MemoryReactorClock()
        self.counters = Counters()
        self.pool = Pool(
            self.reactor, self.reactor, self.counters, None, 8, 30.0, 10.0, {}, None, read_timeout
        )
        self.ctx = ProxyContext(self.reactor, self.counters, self.pool, HookChain(), **ctx_args)
        self.upstreams: list[tuple[object, Transport]] = []

    def client(self) -> tuple[ClientConnection, Transport]:
        proto = ClientConnection(self.ctx)
        t = Transport()
        proto.makeConnection(t)
        return proto, t

    def complete_connect(self, index: int = -1):
        """Finish the upstream TCP connect the proxy started most recently."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        t = Transport()
        proto.makeConnection(t)
        self.upstreams.append((proto, t))
        return proto, t

    def fail_connect(self, reason: Exception, index: int = -1) -> None:
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(None, Failure(reason))


def lost(proto, exc=None) -> None:
    proto.connectionLost(Failure(exc or error.ConnectionDone()))


GET = b"GET http://127.0.0.1:9000/a HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_get_is_forwarded_and_answered_and_upstream_pooled():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(
        b"GET http://127.0.0.1:9000/a?b=1 HTTP/1.1\r\nHost: wrong\r\n"
        b"Proxy-Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n"
    )
    assert rig.reactor.tcpClients[0][:2] == ("127.0.0.1", 9000)
    up, ut = rig.complete_connect()
    sent = ut.value()
    assert sent.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n")
    assert b"X-End: 2" in sent
    assert b"X-Hop" not in sent and b"Proxy-Connection" not in sent
    up.dataReceived(OK)
    assert ct.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert ct.value().endswith(b"\r\n\r\nhello")
    assert rig.pool.idle_count() == 1
    # The second request reuses the pooled connection: no new connect.
    ut.clear()
    client.dataReceived(GET)
    assert len(rig.reactor.tcpClients) == 1
    assert ut.value().startswith(b"GET /a HTTP/1.1")


def test_pipelined_request_waits_for_the_first_response():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET + GET.replace(b"/a", b"/b"))
    up, ut = rig.complete_connect()
    assert ut.value().count(b"GET ") == 1
    up.dataReceived(OK)
    assert ut.value().count(b"GET ") == 2
    assert b"GET /b" in ut.value()
    up.dataReceived(OK)
    assert ct.value().count(b"HTTP/1.1 200 OK") == 2


def test_client_lost_mid_response_aborts_upstream_at_once():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    lost(client, error.ConnectionLost())
    assert ut.aborted
    assert rig.counters.aborts["client_reset"] == 1
    assert rig.counters.endings["client", "reset"] == 1


def test_client_half_close_mid_exchange_is_treated_as_gone():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    client.readConnectionLost()
    assert ut.aborted and ct.aborted


def test_upstream_lost_before_headers_gives_502_and_keeps_client():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    lost(up, error.ConnectionLost())
    assert ct.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"upstream closed the connection before responding" in ct.value()
    assert not ct.disconnecting  # the request had no body: the connection stays usable


def test_upstream_lost_mid_body_truncates_client_visibly():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    lost(up, error.ConnectionDone())  # even a clean close: the body is short
    # What was relayed is delivered, then the connection ends short of Content-Length.
    assert ct.value().endswith(b"partial")
    assert ct.disconnecting and not ct.aborted
    assert rig.counters.aborts["upstream_clean"] == 1


def test_upstream_lost_mid_close_delimited_body_resets_http10_client():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(b"GET http://127.0.0.1:9000/a HTTP/1.0\r\n\r\n")
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    lost(up, error.ConnectionLost())
    assert ct.aborted  # a FIN would read as a complete close-delimited body


def test_close_delimited_response_is_chunked_to_http11_client():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
    lost(up, error.ConnectionDone())
    out = ct.value()
    assert b"Transfer-Encoding: chunked" in out
    assert out.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert not ct.aborted and not ct.disconnecting


def test_http10_client_never_gets_chunked():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(b"GET http://127.0.0.1:9000/a HTTP/1.0\r\n\r\n")
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    out = ct.value()
    assert b"chunked" not in out.lower()
    assert b"Connection: close" in out
    assert out.endswith(b"\r\n\r\nabc")
    assert ct.disconnecting


def test_connect_refused_gives_502_with_reason():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    rig.fail_connect(error.ConnectionRefusedError())
    assert ct.value().startswith(b"HTTP/1.1 502 ")
    assert b"upstream refused the connection" in ct.value()


def test_connect_timeout_gives_504():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    rig.fail_connect(error.TimeoutError())
    assert ct.value().startswith(b"HTTP/1.1 504 ")


def test_origin_form_is_refused_and_connection_closes():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 400 ")
    assert b"absolute URL" in ct.value()
    assert not rig.reactor.tcpClients


def test_malformed_request_400_and_close_nothing_upstream():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(
        b"POST http://127.0.0.1:9000/ HTTP/1.1\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert ct.value().startswith(b"HTTP/1.1 400 ")
    assert ct.disconnecting
    assert not rig.reactor.tcpClients


def test_chunked_request_body_is_forwarded_chunked():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(
        b"POST http://127.0.0.1:9000/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    up, ut = rig.complete_connect()
    client.dataReceived(b"0\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" in ut.value()


def test_slow_request_head_gets_408():
    rig = Rig(header_timeout=10.0, idle_timeout=60.0)
    client, ct = rig.client()
    client.dataReceived(b"GET http://127.0.0.1:9000/ HTTP/1.1\r\nHost: a\r\n")
    rig.reactor.advance(9.0)
    assert ct.value() == b""
    rig.reactor.advance(1.5)
    assert ct.value().startswith(b"HTTP/1.1 408 ")
    assert ct.disconnecting


def test_idle_keep_alive_client_is_closed_at_its_bound():
    rig = Rig(idle_timeout=60.0)
    client, ct = rig.client()
    rig.reactor.advance(30)
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(OK)
    rig.reactor.advance(59)
    assert not ct.disconnecting
    rig.reactor.advance(2)
    assert ct.disconnecting
    lost(client)
    assert rig.counters.endings["client", "timed_out"] == 1


def test_upstream_backpressure_pauses_client_reading():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    ct.producer.pauseProducing()  # the client's send buffer is full
    assert ut.producerState == "paused"
    ct.producer.resumeProducing()
    assert ut.producerState == "producing"


def test_pooled_connection_idle_expiry():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(OK)
    assert rig.pool.idle_count() == 1
    rig.reactor.advance(31)
    rig.reactor.advance(16)
    assert ut.disconnecting


def test_intercepted_connect_starts_tls_and_serves_origin_form():
    started = []
    rig = Rig(intercept=lambda host, port: ("ctx", host, port))
    client, ct = rig.client()
    client.start_tls = lambda factory, leftover: started.append((factory, leftover))
    client.dataReceived(b"CONNECT example.test:8443 HTTP/1.1\r\nHost: example.test\r\n\r\n\x16\x03")
    assert ct.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert started == [(("ctx", "example.test", 8443), b"\x16\x03")]
    ct.clear()
    rig.pool.tls_creator = lambda host: optionsForClientTLS(host)
    client.dataReceived(b"GET /p HTTP/1.1\r\nHost: example.test:8443\r\n\r\n")
    assert len(rig.reactor.tcpClients) == 1  # the request inside the tunnel went upstream


def test_silent_upstream_gets_504_at_read_timeout():
    rig = Rig(read_timeout=5.0)
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    rig.reactor.advance(4.9)
    assert not ut.aborted
    rig.reactor.advance(0.2)
    assert ut.aborted
    lost(up, error.ConnectionAborted())
    assert ct.value().startswith(b"HTTP/1.1 504 ")
    assert rig.counters.endings["upstream", "timed_out"] == 1


def test_upstream_stalling_mid_body_truncates_client():
    rig = Rig(read_timeout=5.0)
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    rig.reactor.advance(3)
    up.dataReceived(b"def")  # activity pushes the deadline
    rig.reactor.advance(3)
    assert not ut.aborted
    rig.reactor.advance(2.5)
    assert ut.aborted
    lost(up, error.ConnectionAborted())
    assert ct.value().endswith(b"abcdef") and ct.disconnecting


def test_upstream_paused_by_slow_client_does_not_time_out():
    rig = Rig(read_timeout=5.0)
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    ct.producer.pauseProducing()
    rig.reactor.advance(30)
    assert not ut.aborted
    ct.producer.resumeProducing()
    rig.reactor.advance(5.5)
    assert ut.aborted


def test_early_error_with_unread_body_closes_without_waiting_for_it():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(
        b"POST /origin-form HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert ct.value().startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in ct.value()
    assert ct.disconnecting


def _exchange_on(rig, count: int) -> list:
    """`count` clients each fetch once, concurrently; returns their upstream transports."""
    clients = [rig.client() for _ in range(count)]
    for c, _ in clients:
        c.dataReceived(GET)
    ups = [rig.complete_connect(i) for i in range(-count, 0)]
    for up, _ in ups:
        up.dataReceived(OK)
    return [ut for _, ut in ups]


def test_pool_keeps_a_burst_surplus_for_a_grace_then_trims_to_size():
    rig = Rig()
    rig.pool.size = 2
    transports = _exchange_on(rig, 5)
    assert rig.pool.idle_count() == 5  # nothing closed at release
    rig.reactor.advance(0.5)
    assert rig.pool.idle_count() == 5
    rig.reactor.advance(0.6)
    assert rig.pool.idle_count() == 2
    assert sum(t.disconnecting for t in transports) == 3
    # The two kept are the most recently released; they expire at the idle timeout.
    rig.reactor.advance(31)
    rig.reactor.advance(16)
    assert rig.pool.idle_count() == 0


def test_pool_size_zero_closes_at_release():
    rig = Rig()
    rig.pool.size = 0
    (t,) = _exchange_on(rig, 1)
    assert rig.pool.idle_count() == 0 and t.disconnecting


def test_connect_authority_parsing():
    from interceptor.proxy.session import _split_authority

    assert _split_authority(b"Example.COM:8443", 443) == ("example.com", 8443)
    assert _split_authority(b"[::1]:8443", 443) == ("::1", 8443)
    assert _split_authority(b"10.0.0.1", 443) == ("10.0.0.1", 443)
    for bad in (b"a:b", b"a:99999", b"ex!ample:443", b"user@host:443", b"host:443/path", b""):
        with pytest.raises(ValueError):
            _split_authority(bad, 443)


def test_bad_connect_target_is_400():
    rig = Rig(intercept=lambda host, port: None)
    client, ct = rig.client()
    client.dataReceived(b"CONNECT host:notaport HTTP/1.1\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 400 ")
    assert b"CONNECT target must be host:port" in ct.value()


UPGRADE_REQUEST = (
    b"GET http://127.0.0.1:9000/chat HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\r\n"
)


def test_websocket_upgrade_switches_to_an_opaque_relay():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(UPGRADE_REQUEST + b"early")
    up, ut = rig.complete_connect()
    sent = ut.value()
    assert b"Connection: Upgrade\r\n" in sent and b"Upgrade: websocket\r\n" in sent
    assert b"Sec-WebSocket-Key: abc" in sent
    assert b"early" not in sent  # nothing of the new protocol before the 101
    ut.clear()
    up.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: xyz\r\n\r\n\x81\x02hi"
    )
    out = ct.value()
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: websocket" in out and out.endswith(b"\r\n\r\n\x81\x02hi")
    assert ut.value() == b"early"  # what the client sent early follows the 101
    ct.clear()
    ut.clear()
    client.dataReceived(b"\x81\x03abc")
    up.dataReceived(b"\x81\x03def")
    assert ut.value() == b"\x81\x03abc" and ct.value() == b"\x81\x03def"
    rig.reactor.advance(3600)  # no read timeout on a quiet WebSocket
    assert not ut.disconnecting and not ct.disconnecting
    lost(up, error.ConnectionDone())
    assert ct.disconnecting and not ct.aborted
    assert rig.pool.idle_count() == 0


def test_refused_upgrade_is_answered_and_the_connection_closes():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(UPGRADE_REQUEST)
    up, ut = rig.complete_connect()
    up.dataReceived(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
    assert ct.value().startswith(b"HTTP/1.1 426 ")
    assert b"Connection: close" in ct.value()
    assert ct.disconnecting


def test_unasked_101_is_a_502():
    rig = Rig()
    client, ct = rig.client()
    client.dataReceived(GET)
    up, ut = rig.complete_connect()
    up.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    assert ct.value().startswith(b"HTTP/1.1 502 ")
    assert ut.aborted
