"""Framing through llhttp: events, strictness, serialisation. No I/O."""

from __future__ import annotations

import pytest

from interceptor.proxy import http1
from interceptor.proxy.events import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Body,
    EndOfMessage,
    Interim,
    ProtocolError,
    RequestHead,
    ResponseHead,
    TunnelData,
    Upgraded,
)
from interceptor.proxy.http1 import RequestReader, ResponseReader

# Events are typed objects; the assertions read them as (kind, payload).
HEAD, BODY, END, TUNNEL, ERROR, INFO, UPGRADED = (
    "head",
    "body",
    "end",
    "tunnel",
    "error",
    "info",
    "upgraded",
)
_KINDS = {
    RequestHead: HEAD,
    ResponseHead: HEAD,
    Body: BODY,
    EndOfMessage: END,
    TunnelData: TUNNEL,
    ProtocolError: ERROR,
    Interim: INFO,
    Upgraded: UPGRADED,
}


def kind(event) -> str:
    return _KINDS[type(event)]


def payload(event):
    """What the old tuple carried: the head, the bytes, the error (None for END)."""
    if isinstance(event, Body):
        return event
    if isinstance(event, TunnelData):
        return event.data
    if isinstance(event, Interim | Upgraded):
        return event.head
    if isinstance(event, EndOfMessage):
        return None
    return event


def pairs(events):
    return [(kind(e), payload(e)) for e in events]


def read_request(data: bytes) -> list:
    r = RequestReader()
    r.feed(data)
    return r.events


def kinds(events):
    return [kind(e) for e in events]


def test_simple_request_events():
    ev = read_request(b"GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert kinds(ev) == [HEAD, END]
    head = payload(ev[0])
    assert head.method == b"GET"
    assert head.target == b"http://a.example/x?y=1"
    assert head.version == "1.1"
    assert head.keep_alive
    assert head.framing == NO_BODY
    assert head.headers == [(b"Host", b"a.example")]


def test_body_in_pieces_and_pipelining():
    r = RequestReader()
    r.feed(b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe")
    r.feed(b"lloGET http://b/ HTTP/1.1\r\nHost: b\r\n\r\n")
    assert kinds(r.events) == [HEAD, BODY, BODY, END, HEAD, END]
    assert payload(r.events[0]).framing == LENGTH
    assert b"".join(p for k, p in pairs(r.events) if k == BODY) == b"hello"


def test_chunked_request_is_dechunked():
    ev = read_request(
        b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert payload(ev[0]).framing == CHUNKED
    assert b"".join(p for k, p in pairs(ev) if k == BODY) == b"abcde"
    assert kind(ev[-1]) == END


@pytest.mark.parametrize(
    "raw,status",
    [
        (
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET http://a/\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHo\x01st: a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET http://a/ HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        (b"GET http://a/ HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        (b"GET http://a/ HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"NOT A REQUEST\r\n\r\n", 400),
    ],
)
def test_refused_requests(raw, status):
    ev = read_request(raw)
    assert HEAD not in kinds(ev)
    assert kind(ev[-1]) == ERROR
    assert payload(ev[-1]).status == status
    assert "\n" not in payload(ev[-1]).reason


def test_two_host_headers_are_refused():
    ev = read_request(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n")
    assert kinds(ev) == [ERROR] and payload(ev[0]).status == 400
    assert payload(ev[0]).reason == "more than one Host header"


def test_host_is_required_on_http11_only():
    ev = read_request(b"GET http://a/ HTTP/1.1\r\n\r\n")
    assert kinds(ev) == [ERROR] and payload(ev[0]).reason == "no Host header"
    assert kinds(read_request(b"GET http://a/ HTTP/1.0\r\n\r\n"))[0] == HEAD
    assert kinds(read_request(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n")) == [HEAD, END]


def test_head_that_never_ends_is_bounded():
    r = RequestReader()
    r.feed(b"GET http://a/ HTTP/1.1\r\nX: ")
    for _ in range(100):
        r.feed(b"a" * 4096)
        if r.closed:
            break
    assert r.events and kind(r.events[-1]) == ERROR and payload(r.events[-1]).status == 431


def test_connect_yields_tunnel_bytes():
    ev = read_request(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01")
    assert kinds(ev) == [HEAD, END, TUNNEL]
    assert payload(ev[0]).method == b"CONNECT"
    assert payload(ev[2]) == b"\x16\x03\x01"


def test_no_reads_after_non_persistent_request():
    r = RequestReader()
    r.feed(b"GET http://a/ HTTP/1.0\r\n\r\n")
    assert r.closed
    r.feed(b"GET http://b/ HTTP/1.0\r\n\r\n")
    assert kinds(r.events) == [HEAD, END]


def read_response(data: bytes, head_only: bool = False) -> ResponseReader:
    r = ResponseReader()
    r.expect(head_only)
    r.feed(data)
    return r


def test_response_framings():
    r = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert kinds(r.events) == [HEAD, BODY, END]
    assert payload(r.events[0]).framing == LENGTH and payload(r.events[0]).keep_alive
    r = read_response(b"HTTP/1.1 200 OK\r\n\r\nhello")
    assert kinds(r.events) == [HEAD, BODY]
    assert payload(r.events[0]).framing == UNTIL_CLOSE and not payload(r.events[0]).keep_alive
    r = read_response(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert kinds(r.events) == [HEAD, END] and payload(r.events[0]).framing == NO_BODY


def test_interim_response_then_final():
    r = read_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert kinds(r.events) == [INFO, HEAD, END]
    assert payload(r.events[0]).status == 100


@pytest.mark.parametrize("status", [100, 102, 103, 150, 199])
@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 7\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"],
)
def test_interim_response_with_body_framing_is_an_error(status, framing):
    # Response splitting: the "body" would otherwise reach the client as the next response.
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    r = read_response(b"HTTP/1.1 %d Evil\r\n%s\r\n" % (status, framing) + forged)
    assert kinds(r.events) == [ERROR]
    assert payload(r.events[0]).status == 502
    assert payload(r.events[0]).reason == f"upstream sent a {status} response with a body"


def test_interim_response_without_framing_is_interim():
    r = read_response(b"HTTP/1.1 150 Odd\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert kinds(r.events) == [INFO, HEAD, END]
    assert payload(r.events[0]).status == 150


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_status_outside_100_599_is_an_error(status):
    r = read_response(b"HTTP/1.1 " + status + b" Zero\r\nContent-Length: 0\r\n\r\n")
    assert kinds(r.events) == [ERROR]
    assert payload(r.events[0]).status == 502
    assert payload(r.events[0]).reason == f"upstream sent invalid status {status.decode()}"


def test_head_response_has_no_body_and_parser_is_reusable():
    r = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head_only=True)
    assert kinds(r.events) == [HEAD, END]
    assert payload(r.events[0]).framing == NO_BODY
    r.events = []
    r.expect(False)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert kinds(r.events) == [HEAD, BODY, END]
    assert not r.spurious


def test_bytes_after_head_response_are_spurious():
    r = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", head_only=True)
    assert r.spurious


@pytest.mark.parametrize("status", [204, 304])
def test_bytes_after_a_bodiless_response_are_spurious(status):
    # llhttp ends a 204/304 at its head; what follows would be read as the next request's answer.
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    r = read_response(b"HTTP/1.1 %d X\r\n\r\n" % status + stray)
    assert kinds(r.events) == [HEAD, END, ERROR]
    assert payload(r.events[2]).status == 502
    assert r.spurious


def test_a_second_response_nobody_asked_for_is_spurious():
    r = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert kinds(r.events) == [HEAD, BODY, END] and not r.spurious
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny")
    assert kind(r.events[-1]) == ERROR and r.spurious
    r = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", head_only=True)
    r.feed(b"HTTP/1.1 200 OK\r\n\r\n")  # after a HEAD response, the parser starts afresh
    assert kind(r.events[-1]) == ERROR and r.spurious


def test_interim_then_final_is_all_one_response():
    r = read_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert kinds(r.events) == [INFO, INFO, HEAD, END] and not r.spurious


def test_garbage_response_is_an_error():
    r = read_response(b"SMTP ready\r\n")
    assert kind(r.events[-1]) == ERROR and payload(r.events[-1]).status == 502


def test_strip_hop_by_hop_includes_connection_tokens():
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"close, X-Foo"),
        (b"X-Foo", b"1"),
        (b"Keep-Alive", b"5"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"TE", b"trailers"),
        (b"X-Keep", b"yes"),
    ]
    assert http1.strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"X-Keep", b"yes")]


def test_serialisation_round_trips_through_the_parser():
    raw = http1.request_head(b"PUT", b"/x", [(b"Host", b"a"), (b"Content-Length", b"3")])
    ev = read_request(raw + b"abc")
    assert kinds(ev) == [HEAD, BODY, END]
    assert http1.body_piece(b"hello", CHUNKED) == b"5\r\nhello\r\n"
    body = http1.error_body("upstream refused", "0192-id")
    resp = http1.local_response(502, http1.TEXT, body, close=True)
    r = read_response(resp)
    assert payload(r.events[0]).status == 502
    got = b"".join(p for k, p in pairs(r.events) if k == BODY)
    assert got == b"upstream refused (request id 0192-id)\n"


def test_via_names_a_hop_by_its_received_by_part_only() -> None:
    from interceptor.proxy.headers import passed_through, via_value

    assert via_value("1.0", b"us") == b"1.0 us"
    ours = [(b"Host", b"h"), (b"VIA", b"1.1 them (comment us), HTTP/1.1 us")]
    assert passed_through(ours, b"us")
    assert not passed_through([(b"Via", b"1.1 them (us)"), (b"Via", b"us")], b"us")
    assert not passed_through([(b"Via", b"1.1 usx")], b"us")
