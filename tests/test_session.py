"""The session state machine, driven in memory: no sockets, a fake clock, scripted upstreams.

Each test is a playbook (tests/playbook.py): what happens to the proxy (`>>`) and everything the
proxy does about it (`<<`), exactly; an effect the script does not state fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import error
from twisted.internet.ssl import optionsForClientTLS

from interceptor.proxy.context import OwnAddresses
from interceptor.proxy.lifecycle import DRAIN_GRACE
from tests.playbook import (
    Playbook,
    Rig,
    advance,
    all_asserted,
    client_aborted,
    client_buffer_drained,
    client_buffer_full,
    client_closed,
    client_closes,
    client_half_closed,
    client_half_closes,
    client_receives,
    client_resets,
    client_sends,
    client_starts_tls,
    connect_fails,
    connected,
    connects,
    head,
    pooled,
    refusal,
    split_authority,
    upstream_aborted,
    upstream_closed,
    upstream_closes,
    upstream_lost,
    upstream_reading_paused,
    upstream_reading_resumed,
    upstream_receives,
    upstream_resets,
    upstream_sends,
)


@pytest.fixture(autouse=True)
def _playbooks_asserted() -> Iterator[None]:
    with all_asserted():
        yield


HOST = "127.0.0.1"
PORT = 9000
ORIGIN = b"Host: 127.0.0.1:9000"

GET = head(b"GET http://127.0.0.1:9000/a HTTP/1.1", ORIGIN)
GET_UP = head(b"GET /a HTTP/1.1", ORIGIN)  # GET as the origin receives it
GET_10 = head(b"GET http://127.0.0.1:9000/a HTTP/1.0")  # no Host: HTTP/1.0
OK = head(b"HTTP/1.1 200 OK", b"Content-Length: 5") + b"hello"
LONG_HEAD = head(b"HTTP/1.1 200 OK", b"Content-Length: 1000")
HEAD_100 = head(b"HTTP/1.1 200 OK", b"Content-Length: 100")
CHUNKED_HEAD = head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
CLOSED_502 = b"upstream closed the connection before responding"
ORIGIN_FORM_REFUSED = (
    b"origin-form request: this is a proxy, send an absolute URL (GET http://host/path)"
)


def fetched(rig: Rig | None = None) -> Playbook:
    """A playbook that has sent GET and seen it reach a freshly connected upstream 0."""
    return (
        Playbook(rig or Rig())
        >> client_sends(GET)
        << connects(HOST, PORT, timeout=10.0)
        >> connected()
        << upstream_receives(GET_UP)
    )


def test_get_is_forwarded_and_answered_and_upstream_pooled():
    assert (
        Playbook(Rig())
        >> client_sends(
            head(
                b"GET http://127.0.0.1:9000/a?b=1 HTTP/1.1",
                b"Host: wrong",
                b"Proxy-Connection: keep-alive",
                b"Connection: X-Hop",
                b"X-Hop: 1",
                b"X-End: 2",
            )
        )
        << connects(HOST, PORT)
        >> connected()
        # Host is the target's, the hop-by-hop headers (named by Connection too) are gone.
        << upstream_receives(head(b"GET /a?b=1 HTTP/1.1", ORIGIN, b"X-End: 2"))
        >> upstream_sends(OK)
        << client_receives(OK)
        << pooled(1)
        # The second request reuses the pooled connection: no new connect.
        >> client_sends(GET)
        << upstream_receives(GET_UP)
        << pooled(0)
    )


def test_pipelined_request_waits_for_the_first_response():
    get_b = GET.replace(b"/a", b"/b")
    assert (
        Playbook(Rig())
        >> client_sends(GET + get_b)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(GET_UP)
        >> upstream_sends(OK)
        << client_receives(OK)
        << upstream_receives(GET_UP.replace(b"/a", b"/b"))
        >> upstream_sends(OK)
        << client_receives(OK)
        << pooled(1)
    )


def test_client_lost_mid_response_aborts_upstream_at_once():
    rig = Rig()
    assert (
        fetched(rig)
        >> upstream_sends(LONG_HEAD + b"partial")
        << client_receives(LONG_HEAD + b"partial")
        >> client_resets()
        << upstream_aborted()
    )
    assert rig.counters.aborts["client_reset"] == 1
    assert rig.counters.endings["client", "reset"] == 1


def test_client_half_close_mid_exchange_is_treated_as_gone():
    assert fetched() >> client_half_closes() << upstream_aborted() << client_aborted()


def test_upstream_lost_before_headers_gives_502_and_keeps_client():
    # The request had no body: the connection stays usable (no close follows the 502).
    assert (
        fetched()
        >> upstream_resets()
        << client_receives(refusal(b"502 Bad Gateway", CLOSED_502 + b" (reset)"))
    )


def test_upstream_lost_mid_body_truncates_client_visibly():
    rig = Rig()
    assert (
        fetched(rig)
        >> upstream_sends(LONG_HEAD + b"partial")
        << client_receives(LONG_HEAD + b"partial")
        # Even a clean close: the body is short. What was relayed is delivered, then the
        # connection ends short of Content-Length (a FIN, not a reset).
        >> upstream_closes()
        << client_closed()
    )
    assert rig.counters.aborts["upstream_clean"] == 1


def test_upstream_lost_mid_close_delimited_body_resets_http10_client():
    assert (
        Playbook(Rig())
        >> client_sends(GET_10)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(GET_UP)
        >> upstream_sends(CHUNKED_HEAD + b"3\r\nabc\r\n")
        << client_receives(head(b"HTTP/1.1 200 OK", b"Connection: close") + b"abc")
        >> upstream_resets()
        << client_aborted()  # a FIN would read as a complete close-delimited body
    )


def test_close_delimited_response_is_chunked_to_http11_client():
    assert (
        fetched()
        >> upstream_sends(head(b"HTTP/1.1 200 OK") + b"abc")
        << client_receives(CHUNKED_HEAD + b"3\r\nabc\r\n")
        >> upstream_closes()
        << client_receives(b"0\r\n\r\n")
    )


def test_http10_client_never_gets_chunked():
    assert (
        Playbook(Rig())
        >> client_sends(GET_10)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(GET_UP)
        >> upstream_sends(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\n")
        << client_receives(head(b"HTTP/1.1 200 OK", b"Connection: close") + b"abc")
        << client_closed()
        << pooled(1)
    )


def test_connect_refused_gives_502_with_reason():
    assert (
        Playbook(Rig())
        >> client_sends(GET)
        << connects(HOST, PORT)
        >> connect_fails(error.ConnectionRefusedError())
        << client_receives(refusal(b"502 Bad Gateway", b"upstream refused the connection"))
    )


def test_connect_timeout_gives_504():
    assert (
        Playbook(Rig())
        >> client_sends(GET)
        << connects(HOST, PORT)
        >> connect_fails(error.TimeoutError())
        << client_receives(refusal(b"504 Gateway Timeout", b"upstream connect timed out"))
    )


def test_origin_form_is_refused_and_nothing_goes_upstream():
    # (Formerly "..._and_connection_closes", which it never checked and does not do: the
    # request had no body, so the connection stays usable after the 400.)
    assert (
        Playbook(Rig())
        >> client_sends(head(b"GET /x HTTP/1.1", b"Host: a"))
        << client_receives(refusal(b"400 Bad Request", ORIGIN_FORM_REFUSED))
    )


def test_malformed_request_400_and_close_nothing_upstream():
    assert (
        Playbook(Rig())
        >> client_sends(
            head(
                b"POST http://127.0.0.1:9000/ HTTP/1.1",
                b"Content-Length: 1",
                b"Transfer-Encoding: chunked",
            )
        )
        << client_receives(
            refusal(
                b"400 Bad Request",
                b"malformed request: Transfer-Encoding can't be present with Content-Length",
                close=True,
            )
        )
        << client_closed()
    )


def test_chunked_request_body_is_forwarded_chunked():
    assert (
        Playbook(Rig())
        >> client_sends(
            head(b"POST http://127.0.0.1:9000/ HTTP/1.1", ORIGIN, b"Transfer-Encoding: chunked")
            + b"3\r\nabc\r\n"
        )
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(
            head(b"POST / HTTP/1.1", ORIGIN, b"Transfer-Encoding: chunked") + b"3\r\nabc\r\n"
        )
        >> client_sends(b"0\r\n\r\n")
        << upstream_receives(b"0\r\n\r\n")
    )


def test_request_without_host_is_400_but_http10_needs_none():
    assert (
        Playbook(Rig())
        >> client_sends(b"GET http://127.0.0.1:9000/ HTTP/1.1\r\n\r\n")
        << client_receives(refusal(b"400 Bad Request", b"no Host header", True))
        << client_closed()
    )
    assert (
        Playbook(Rig())
        >> client_sends(b"GET http://127.0.0.1:9000/ HTTP/1.0\r\n\r\n")
        << connects(HOST, PORT)
    )


def test_slow_request_head_gets_408():
    assert (
        Playbook(Rig(header_timeout=10.0, idle_timeout=60.0))
        >> client_sends(b"GET http://127.0.0.1:9000/ HTTP/1.1\r\nHost: a\r\n")
        >> advance(9.0)
        >> advance(1.5)
        << client_receives(refusal(b"408 Request Timeout", b"request head timed out", True))
        << client_closed()
    )


def test_idle_keep_alive_client_is_closed_at_its_bound():
    rig = Rig(idle_timeout=60.0)
    assert (
        Playbook(rig)
        >> advance(30)
        >> client_sends(GET)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(GET_UP)
        >> upstream_sends(OK)
        << client_receives(OK)
        << pooled(1)
        >> advance(59)  # the pooled upstream expires meanwhile; the client stays
        << upstream_closed()
        << pooled(0)
        >> advance(2)
        << client_closed()
        >> client_closes()
    )
    assert rig.counters.endings["client", "timed_out"] == 1


def test_upstream_backpressure_pauses_client_reading():
    assert (
        fetched()
        >> upstream_sends(HEAD_100)
        << client_receives(HEAD_100)
        >> client_buffer_full()
        << upstream_reading_paused()
        >> client_buffer_drained()
        << upstream_reading_resumed()
    )


def test_pooled_connection_idle_expiry():
    assert (
        fetched()
        >> upstream_sends(OK)
        << client_receives(OK)
        << pooled(1)
        >> advance(31)  # the sweep at 30 s finds it idle for the whole idle timeout
        << upstream_closed()
        << pooled(0)
        >> upstream_closes()  # the origin answers our FIN
        >> advance(16)
    )


def test_intercepted_connect_starts_tls_and_serves_origin_form():
    rig = Rig(
        intercept=lambda host, port, origin: ("ctx", host, port),
        tls_creator=lambda host: optionsForClientTLS(host),
    )
    assert (
        Playbook(rig)
        >> client_sends(
            head(b"CONNECT example.test:8443 HTTP/1.1", b"Host: example.test") + b"\x16\x03"
        )
        << client_receives(b"HTTP/1.1 200 Connection established\r\n\r\n")
        << client_starts_tls(("ctx", "example.test", 8443), hello=b"\x16\x03")
        # Inside the tunnel (plaintext from here): the request goes upstream, over TLS to the
        # CONNECT target (the memory reactor resolves every hostname to 127.0.0.1).
        >> client_sends(head(b"GET /p HTTP/1.1", b"Host: example.test:8443"))
        << connects("127.0.0.1", 8443)
    )


EAGER = dict(intercept=lambda host, port, origin: ("ctx", host, port), eager=True)
VIA = b"Via: 1.1 us"


def test_via_is_added_to_requests_and_responses_and_ours_coming_back_is_508():
    assert (
        Playbook(Rig(via="us"))
        >> client_sends(head(b"GET http://127.0.0.1:9000/a HTTP/1.1", ORIGIN, b"Via: 1.0 them"))
        << connects(HOST, PORT, timeout=10.0)
        >> connected()
        << upstream_receives(head(b"GET /a HTTP/1.1", ORIGIN, b"Via: 1.0 them", VIA))
        >> upstream_sends(OK)
        << client_receives(head(b"HTTP/1.1 200 OK", b"Content-Length: 5", VIA) + b"hello")
        << pooled(1)
        >> client_sends(head(b"GET http://127.0.0.1:9000/a HTTP/1.1", ORIGIN, b"Via: 1.1 us"))
        << client_receives(
            refusal(
                b"508 Loop Detected", b"loop detected: this request already passed through here"
            )
        )
    )


CONNECT_TARGET = head(b"CONNECT 127.0.0.1:9000 HTTP/1.1", ORIGIN)


def test_eager_connect_to_an_unreachable_origin_is_answered_502_on_the_connect():
    assert (
        Playbook(Rig(**EAGER))
        >> client_sends(CONNECT_TARGET)
        << connects(HOST, PORT)
        >> connect_fails(error.ConnectionRefusedError())
        << client_receives(refusal(b"502 Bad Gateway", b"upstream refused the connection", True))
        << client_closed()
    )


def opened() -> Playbook:
    """An eager CONNECT answered 200 once its origin (upstream 0) connected."""
    return (
        Playbook(Rig(**EAGER))
        >> client_sends(CONNECT_TARGET)
        << connects(HOST, PORT)
        >> connected()
        << client_receives(b"HTTP/1.1 200 Connection established\r\n\r\n")
    )


def test_eager_connect_answers_200_once_connected_and_plain_http_reuses_that_connection():
    assert (
        opened()
        # Not a ClientHello: plain HTTP inside, over the connection the CONNECT opened.
        >> client_sends(head(b"GET /in HTTP/1.1", ORIGIN))
        << upstream_receives(head(b"GET /in HTTP/1.1", ORIGIN))
    )


def test_an_eager_origin_that_speaks_first_is_let_go_and_the_client_still_served():
    assert (
        opened()
        >> upstream_sends(b"220 server speaks first\r\n")  # not ours to relay: no one asked
        << upstream_aborted()
        >> upstream_lost(error.ConnectionAborted())
        >> client_sends(b"\x16\x03\x01")
        << client_starts_tls(("ctx", HOST, PORT), hello=b"\x16\x03\x01")
    )


def test_client_leaving_before_its_first_bytes_takes_the_eager_origin_with_it():
    assert opened() >> client_closes() << upstream_aborted()


def test_connect_whose_name_leads_back_to_the_proxy_is_refused_once_connected():
    # A name we cannot tell is ours before connecting (the memory reactor resolves every name
    # to 127.0.0.1): the connection's peer says so.
    rig = Rig(**EAGER)
    rig.ctx.own = OwnAddresses([(HOST, PORT)], frozenset())
    assert (
        Playbook(rig)
        >> client_sends(head(b"CONNECT loop.example:9000 HTTP/1.1", b"Host: loop.example:9000"))
        << connects(HOST, PORT)
        >> connected()
        << upstream_closed()
        << client_receives(
            refusal(b"403 Forbidden", b"loop.example:9000 is this proxy itself", True)
        )
        << client_closed()
    )


def test_silent_upstream_gets_504_at_read_timeout():
    rig = Rig(read_timeout=5.0)
    assert (
        fetched(rig)
        >> advance(4.9)
        >> advance(0.2)
        # The timeout is the ending: the upstream is cut and the client told at once; the
        # loss that Twisted reports afterwards changes nothing.
        << upstream_aborted()
        << client_receives(refusal(b"504 Gateway Timeout", b"upstream timed out"))
        >> upstream_lost(error.ConnectionAborted())
    )
    assert rig.counters.endings["upstream", "timed_out"] == 1


def test_upstream_stalling_mid_body_truncates_client():
    assert (
        fetched(Rig(read_timeout=5.0))
        >> upstream_sends(HEAD_100 + b"abc")
        << client_receives(HEAD_100 + b"abc")
        >> advance(3)
        >> upstream_sends(b"def")  # activity pushes the deadline
        << client_receives(b"def")
        >> advance(3)
        >> advance(2.5)
        << upstream_aborted()
        << client_closed()  # truncated: what was relayed is flushed, then the FIN
        >> upstream_lost(error.ConnectionAborted())
    )


def test_upstream_paused_by_slow_client_does_not_time_out():
    assert (
        fetched(Rig(read_timeout=5.0))
        >> upstream_sends(HEAD_100 + b"abc")
        << client_receives(HEAD_100 + b"abc")
        >> client_buffer_full()
        << upstream_reading_paused()
        >> advance(30)
        >> client_buffer_drained()
        << upstream_reading_resumed()
        >> advance(5.5)
        << upstream_aborted()
        << client_closed()  # truncated at the timeout: flushed, then the FIN
    )


def test_early_error_with_unread_body_closes_without_waiting_for_it():
    """The body may never come (the client waits for 100 Continue): the answer goes out and
    our side closes at once; the connection lingers for what the client may still send, up to
    DRAIN_GRACE, and is aborted after it (a client that keeps sending)."""
    request = head(
        b"POST /origin-form HTTP/1.1",
        b"Host: a",
        b"Content-Length: 100",
        b"Expect: 100-continue",
    )
    assert (
        Playbook(Rig())
        >> client_sends(request)
        << client_receives(refusal(b"400 Bad Request", ORIGIN_FORM_REFUSED, close=True))
        << client_half_closed()
        >> client_sends(b"x" * 100)  # dropped
        >> client_half_closes()
        << client_closed()
    )
    assert (
        Playbook(Rig())
        >> client_sends(request)
        << client_receives(refusal(b"400 Bad Request", ORIGIN_FORM_REFUSED, close=True))
        << client_half_closed()
        >> advance(DRAIN_GRACE)
        << client_aborted()
    )


def _exchange_on(rig: Rig, count: int) -> Playbook:
    """`count` clients each fetch once, concurrently, on upstreams 0..count-1; all pooled."""
    pb = Playbook(rig, clients=count)
    for n in range(count):
        pb >> client_sends(GET, n) << connects(HOST, PORT)
    for n in range(count):
        pb >> connected(n) << upstream_receives(GET_UP, n)
    for n in range(count):
        pb >> upstream_sends(OK, n) << client_receives(OK, n) << pooled(n + 1)
    return pb


def test_pool_keeps_a_burst_surplus_for_a_grace_then_trims_to_size():
    pb = _exchange_on(Rig(pool_size=2), 5)  # nothing closed at release: 5 idle
    assert (
        pb
        >> advance(0.5)
        >> advance(0.6)
        << upstream_closed(0)
        << upstream_closed(1)
        << upstream_closed(2)
        << pooled(2)
    )
    for n in range(3):
        pb >> upstream_closes(n)  # the origins answer our FINs
    # The two kept are the most recently released; they expire at the idle timeout.
    assert pb >> advance(31) << upstream_closed(3) << upstream_closed(4) << pooled(0)
    assert pb >> upstream_closes(3) >> upstream_closes(4) >> advance(16)


def test_pool_size_zero_closes_at_release():
    assert (
        Playbook(Rig(pool_size=0))
        >> client_sends(GET)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(GET_UP)
        >> upstream_sends(OK)
        << client_receives(OK)
        << upstream_closed()
    )


def test_connect_authority_parsing():
    assert split_authority(b"Example.COM:8443", 443) == ("example.com", 8443)
    assert split_authority(b"[::1]:8443", 443) == ("::1", 8443)
    assert split_authority(b"10.0.0.1", 443) == ("10.0.0.1", 443)
    for bad in (b"a:b", b"a:99999", b"ex!ample:443", b"user@host:443", b"host:443/path", b""):
        with pytest.raises(ValueError):
            split_authority(bad, 443)


def test_bad_connect_target_is_400():
    assert (
        Playbook(Rig(intercept=lambda host, port, origin: None))
        >> client_sends(b"CONNECT host:notaport HTTP/1.1\r\nHost: host:notaport\r\n\r\n")
        << client_receives(refusal(b"400 Bad Request", b"CONNECT target must be host:port"))
        << client_closed()  # nothing after a CONNECT head can be read as HTTP
    )


UPGRADE = (b"Connection: Upgrade", b"Upgrade: websocket")
UPGRADE_REQUEST = head(
    b"GET http://127.0.0.1:9000/chat HTTP/1.1", ORIGIN, *UPGRADE, b"Sec-WebSocket-Key: abc"
)
UPGRADE_UP = head(b"GET /chat HTTP/1.1", ORIGIN, b"Sec-WebSocket-Key: abc", *UPGRADE)
SWITCHING = b"HTTP/1.1 101 Switching Protocols"


def test_websocket_upgrade_switches_to_an_opaque_relay():
    rig = Rig()
    assert (
        Playbook(rig)
        >> client_sends(UPGRADE_REQUEST + b"early")
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(UPGRADE_UP)  # nothing of the new protocol before the 101
        >> upstream_sends(head(SWITCHING, *UPGRADE, b"Sec-WebSocket-Accept: xyz") + b"\x81\x02hi")
        << client_receives(head(SWITCHING, b"Sec-WebSocket-Accept: xyz", *UPGRADE) + b"\x81\x02hi")
        << upstream_receives(b"early")  # what the client sent early follows the 101
        >> client_sends(b"\x81\x03abc")
        << upstream_receives(b"\x81\x03abc")
        >> upstream_sends(b"\x81\x03def")
        << client_receives(b"\x81\x03def")
        >> advance(3600)  # no read timeout on a quiet WebSocket
        >> upstream_closes()
        << client_closed()
    )
    assert rig.pool.idle_count() == 0


def test_refused_upgrade_is_answered_and_the_connection_closes():
    assert (
        Playbook(Rig())
        >> client_sends(UPGRADE_REQUEST)
        << connects(HOST, PORT)
        >> connected()
        << upstream_receives(UPGRADE_UP)
        >> upstream_sends(head(b"HTTP/1.1 426 Upgrade Required", b"Content-Length: 2") + b"no")
        << client_receives(
            head(b"HTTP/1.1 426 Upgrade Required", b"Content-Length: 2", b"Connection: close")
            + b"no"
        )
        << client_closed()
        << pooled(1)
    )


def test_unasked_101_is_a_502():
    assert (
        fetched()
        >> upstream_sends(head(SWITCHING, b"Upgrade: x", b"Connection: upgrade"))
        << client_receives(refusal(b"502 Bad Gateway", b"upstream switched protocols unasked"))
        << upstream_aborted()
    )
