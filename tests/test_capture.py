"""Flow capture: the SQLite store in memory of one process, and a real twistd recording to it."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from interceptor.capture.addon import Capture
from interceptor.capture.filters import FilterError, compile_filter
from interceptor.capture.rows import heads, timings
from interceptor.capture.store import (
    SCHEMA_VERSION,
    FlowRecord,
    StoreError,
    Writer,
    connect,
    merge_flows,
    read_flows,
)
from interceptor.http import Client, Error, Headers, HTTPFlow, Request, Response
from tests.support import (
    OriginConnection,
    OriginRequest,
    OriginServer,
    ProxyProcess,
    RawConnection,
    echo,
    failed_start,
    free_port,
    request_bytes,
    respond,
    respond_chunked,
    response_head,
    run_curl,
    tunnel,
    wait_for,
)

TIMEOUT = 20.0


def record(n: int, body: bytes | None = None) -> FlowRecord:
    return FlowRecord(
        id=f"flow-{n}",
        kind="http",
        started=float(n),
        ended=float(n) + 0.5,
        client="127.0.0.1:1",
        method="GET",
        url=f"http://a.test/{n}",
        host="a.test",
        status=200,
        request_headers=[("Host", "a.test")],
        response_body=body,
        response_size=len(body or b""),
    )


def rows(path: Path) -> list[sqlite3.Row]:
    db = connect(str(path), readonly=True)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM flows ORDER BY seq"))
    finally:
        db.close()


def test_the_writer_stores_records_in_a_private_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    writer = Writer(str(path))
    for n in range(5):
        assert writer.put(record(n))
    writer.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    got = rows(path)
    assert [r["id"] for r in got] == [f"flow-{n}" for n in range(5)]
    assert got[0]["request_headers"] == "Host: a.test"
    assert writer.written == 5 and writer.dropped == 0
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    db.close()


def test_absent_values_read_back_as_null_and_empty_ones_as_empty(tmp_path: Path) -> None:
    # Rows carry store.NULL for None in the columns that are mostly NULL (the INSERT turns it
    # back): an empty body or error must not turn into NULL, nor NULL into 0.
    path = tmp_path / "flows.db"
    writer = Writer(str(path))
    assert writer.put(record(1))
    tls = {"version": "TLSv1.3", "sni": "a.test", "alpn": None, "cipher": "X"}
    assert writer.put(
        FlowRecord(
            id="full", kind="intercepted", started=1.0, ended=2.0, client="c", request_body=b"",
            error="", client_tls=tls, server_tls=tls, is_replay="request",
            timings={"start": 1.0, "tcp_start": 1.1, "tcp_done": 1.2, "tls_done": 1.3},
        )
    )  # fmt: skip
    writer.close()
    empty, full = rows(path)
    for column in ("request_body", "error", "client_tls", "server_tls", "is_replay"):
        assert empty[column] is None, column
    assert timings(empty) == {}
    assert (full["request_body"], full["error"], full["is_replay"]) == (b"", "", "request")
    text = '{"version":"TLSv1.3","sni":"a.test","alpn":null,"cipher":"X"}'
    assert full["client_tls"] == full["server_tls"] == text
    assert timings(full) == {"start": 1.0, "tcp_start": 1.1, "tcp_done": 1.2, "tls_done": 1.3}


def write_store(path: Path, numbers: list[int]) -> sqlite3.Connection:
    """A store holding record(n) for each of `numbers`, stored in that order; opened read-only."""
    writer = Writer(str(path))
    for n in numbers:
        writer.put(record(n))
    writer.close()
    return connect(str(path), readonly=True)


class _Leg:
    """What the capture reads of a connection's Leg: the address, TLS or not, its setup."""

    def __init__(self, peer: str, setup: tuple[float, float | None, float | None] | None):
        self.peer = self.peer_text = peer
        self.transport = None
        self.tls = False
        self.setup = setup

    def first_use(self) -> tuple[float, float | None, float | None] | None:
        return self.setup


def test_the_addon_makes_the_row_a_flow_record_would(tmp_path: Path) -> None:
    # Capture.row builds the INSERT's values itself, in the reactor: they must be the ones, in
    # the columns' order, that FlowRecord.row makes of the same flow.
    clock = Clock()
    clock.advance(100.0)
    writer = Writer(str(tmp_path / "flows.db"))
    writer.close()
    capture = Capture(writer, clock, body_limit=4, redact=["cookie"])
    flow = HTTPFlow(Client(_Leg("10.0.0.1:5000", None), 90.0), 99.0)
    flow.request = req = Request(
        "POST", "http", "a.test", 8080, b"/up?x=1",
        Headers([(b"Host", b"a.test:8080"), (b"Cookie", b"s=1"), (b"Set-Cookie", b"t")]),
        "1.1", 99.0, b"12345",
    )  # fmt: skip
    req.timestamp_end = 99.25
    flow.response = Response(201, b"Created", Headers([(b"Via", b"1.1 x")]), "1.1", 99.5)
    flow.response._content = b""
    flow._server_leg = _Leg("10.0.0.2:8080", (99.0, 99.125, None))
    flow.status, flow.bytes_in, flow.bytes_out = 201, 5, 0
    expected = FlowRecord(
        id=flow.id, kind="http", started=99.0, ended=100.0, client="10.0.0.1:5000",
        server="10.0.0.2:8080", method="POST", url="http://a.test:8080/up?x=1", host="a.test",
        http_version="HTTP/1.1",
        request_headers=[("Host", "a.test:8080"), ("Cookie", "<redacted>"), ("Set-Cookie", "t")],
        request_body=b"1234", request_size=5, request_cut=True, status=201, reason="Created",
        response_headers=[("Via", "1.1 x")], response_body=b"", response_size=0,
        timings={"start": 99.0, "tcp_start": 99.0, "tcp_done": 99.125, "request_end": 99.25,
                 "response_start": 99.5, "end": 100.0},
    )  # fmt: skip
    assert capture.row(flow) == expected.row()
    # A flow that got no further than its head: no server, no response, an error.
    bare = HTTPFlow(Client(_Leg("10.0.0.1:5001", None), 90.0), 99.0)
    bare.error = Error("client reset")
    expected = FlowRecord(
        id=bare.id, kind="passthrough", started=99.0, ended=100.0, client="10.0.0.1:5001",
        error="client reset", timings={"start": 99.0, "end": 100.0},
    )  # fmt: skip
    assert capture.row(bare, "passthrough") == expected.row()


def test_heads_are_stored_as_sent_on_and_redacted_whatever_their_case(tmp_path: Path) -> None:
    writer = Writer(str(tmp_path / "flows.db"))
    writer.close()
    capture = Capture(writer, Clock(), redact=["proxy-authorization", "cookie"])
    fields = [(b"Host", b"a.test"), (b"PROXY-Authorization", b"Basic c2VjcmV0")]
    sent = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nVia: 1.1 us\r\n\r\n"
    # What went on, sliced: with the fields the proxy added (Via), without its first line.
    assert capture._wire(sent, fields) == "Host: a.test\r\nVia: 1.1 us"
    assert capture._wire(b"HTTP/1.1 204 No Content\r\n\r\n", []) is None
    # A redacted name anywhere in the head, in any case: the fields, with its value hidden.
    hidden = sent.replace(b"Via: 1.1 us", b"PROXY-Authorization: Basic c2VjcmV0")
    assert capture._wire(hidden, fields) == "Host: a.test\r\nPROXY-Authorization: <redacted>"
    assert "c2VjcmV0" not in capture._wire(b"GET / HTTP/1.1\r\ncookie: c2VjcmV0\r\n\r\n", [
        (b"cookie", b"c2VjcmV0")
    ])  # fmt: skip
    # No wire head (the proxy answered itself, or an upstream proxy's credentials were in it).
    assert capture._wire(None, fields) == "Host: a.test\r\nPROXY-Authorization: <redacted>"


def test_flows_come_oldest_start_first_and_stores_merge_by_start(tmp_path: Path) -> None:
    # A long flow that started first ends, and is stored, after a short one started later.
    a = write_store(tmp_path / "a.db", [3, 1, 6])
    b = write_store(tmp_path / "b.db", [2, 5, 4])
    assert [row["id"] for row in read_flows(a)] == ["flow-1", "flow-3", "flow-6"]
    merged = merge_flows([a, b])
    assert [row["id"] for row in merged] == [f"flow-{n}" for n in range(1, 7)]
    assert [row["id"] for row in merge_flows([a, b], 3)] == ["flow-1", "flow-2", "flow-3"]
    assert [row["id"] for row in merge_flows([a, b], None, "url:/5")] == ["flow-5"]
    with pytest.raises(FilterError):
        merge_flows([a, b], None, "nonsense")  # at the call, not at the first row
    a.close()
    b.close()


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    writer = Writer(str(tmp_path / "flows.db"), queue_size=1)
    writer.close()  # the thread is gone: nothing takes records off the queue any more
    assert writer.put(record(1))
    assert not writer.put(record(2))
    assert writer.dropped == 1


def test_a_queue_full_of_bodies_drops_too_however_few_records(tmp_path: Path) -> None:
    writer = Writer(str(tmp_path / "flows.db"), queue_bytes=3000)
    writer.close()  # nothing takes records off the queue any more
    assert writer.put(record(1, b"x" * 2000))
    assert not writer.put(record(2, b"x" * 2000))  # 4000 bytes of bodies would be queued
    assert writer.put(record(3))  # a record without a body still fits
    assert writer.dropped == 1


def test_the_oldest_flows_are_pruned_past_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    writer = Writer(str(path), max_bytes=10_000)
    for n in range(30):
        writer.put(record(n, b"x" * 1000))
    writer.close()
    kept = [r["id"] for r in rows(path)]
    assert kept[-1] == "flow-29"
    assert 5 <= len(kept) <= 10, kept  # at most max_bytes of bodies, pruned to 9/10 of it
    assert kept == [f"flow-{n}" for n in range(30 - len(kept), 30)]


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    db.commit()
    db.close()
    with pytest.raises(StoreError) as info:
        Writer(str(other))
    assert str(info.value) == f"{other}: schema version 99, this interceptor reads 1"
    with pytest.raises(StoreError, match="no such store"):
        connect(str(tmp_path / "missing.db"), readonly=True)


def test_an_unusable_store_path_stops_start_up_with_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "no" / "such" / "dir" / "flows.db"
    result = failed_start(tmp_path, INTERCEPTOR_CAPTURE_STORE=str(store))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interceptor: capture.store: "), result.stderr
    assert "No such file or directory" in lines[0]


def test_a_proxy_records_what_passed_and_what_failed(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(store)})
    proxy.wait_for_log(r"capturing flows to ")
    url = origin.route("/page", respond(b"hello", headers=[("Content-Type", "text/plain")]))
    ok = run_curl("-x", proxy.url, "-H", "Authorization: Bearer secret", url, timeout=TIMEOUT)
    assert ok.stdout == b"hello"
    refused = run_curl("-x", proxy.url, f"http://127.0.0.1:{free_port()}/", timeout=TIMEOUT)
    assert refused.stdout.startswith(b"upstream refused the connection")

    def stored() -> list[sqlite3.Row] | None:
        found = rows(store)
        return found if len(found) >= 2 else None

    page, failed = wait_for(stored, TIMEOUT)
    assert (page["kind"], page["method"], page["url"], page["status"]) == ("http", "GET", url, 200)
    assert page["response_size"] == 5 and page["server"].startswith("127.0.0.1:")
    assert ("Content-Type", "text/plain") in heads(page["response_headers"])
    assert ("Authorization", "Bearer secret") in heads(page["request_headers"])
    assert failed["status"] == 502 and failed["error"] == "upstream refused the connection"
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600


def test_redacted_headers_are_stored_as_redacted(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_CAPTURE_STORE": str(store),
            "INTERCEPTOR_CAPTURE_REDACT_HEADERS": "authorization,cookie",
            "INTERCEPTOR_CAPTURE_EXCLUDE": "skipped.test",
        }
    )
    url = origin.route("/secret", respond(b"ok"))
    run_curl("-x", proxy.url, "-H", "Authorization: Bearer secret", "-b", "s=1", url)
    run_curl("-x", proxy.url, "http://skipped.test/")  # excluded: never stored
    (row,) = wait_for(lambda: rows(store) or None, TIMEOUT)
    assert "secret" not in row["request_headers"] and "s=1" not in row["request_headers"]
    assert ("Authorization", "<redacted>") in heads(row["request_headers"])
    proxy.popen.terminate()
    assert proxy.popen.wait(timeout=TIMEOUT) == 0
    assert [r["url"] for r in rows(store)] == [url]


def stored_rows(store: Path, n: int) -> list[sqlite3.Row]:
    """The first `n` flows once the writer has stored them."""
    return wait_for(lambda: (found := rows(store)) and len(found) >= n and found or None, TIMEOUT)


def test_streamed_bodies_are_copied_up_to_the_body_limit(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    """No addon buffers anything: what is stored is copied as the bodies stream, both ways,
    chunked or not; past [capture] body_limit the copy is cut and marked, its size kept."""
    store = tmp_path / "flows.db"
    proxy = proxy_factory(
        env={"INTERCEPTOR_CAPTURE_STORE": str(store), "INTERCEPTOR_CAPTURE_BODY_LIMIT": "64 KiB"}
    )
    small = bytes(range(256)) * 20
    big = b"b" * 300_000
    origin.route("/small", respond(small))
    origin.route("/big", respond_chunked([big[:100_000], big[100_000:]]))
    origin.route("/upload", echo())
    assert run_curl("-x", proxy.url, origin.url("/small")).stdout == small
    assert run_curl("-x", proxy.url, origin.url("/big")).stdout == big
    upload = b"u" * 50_000
    posted = run_curl("-x", proxy.url, "--data-binary", "@-", origin.url("/upload"), input=upload)
    assert posted.stdout == upload
    got_small, got_big, got_upload = stored_rows(store, 3)
    assert (got_small["response_body"], got_small["response_cut"]) == (small, 0)
    assert got_big["response_body"] == big[: 64 * 1024] and got_big["response_cut"] == 1
    assert got_big["response_size"] == len(big)
    assert got_upload["request_body"] == upload and got_upload["request_cut"] == 0
    assert got_upload["response_body"] == upload


def test_a_passthrough_tunnel_is_one_flow_with_its_bytes_each_way(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(
        '[tls]\npassthrough = ["127.0.0.1"]\n', env={"INTERCEPTOR_CAPTURE_STORE": str(store)}
    )
    origin.route("/inside", respond(b"x" * 1000))
    with tunnel(proxy.port, origin.authority) as conn:
        sent = f"GET /inside HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
        conn.send(sent)
        assert conn.read_response().body == b"x" * 1000
        assert rows(store) == []  # recorded when it is over, with its totals
    (row,) = stored_rows(store, 1)
    assert (row["kind"], row["method"], row["url"]) == ("passthrough", "CONNECT", origin.authority)
    assert row["request_size"] == len(sent)
    assert 1000 < row["response_size"] < 1200  # the body and the inner response's head
    assert row["ended"] >= row["started"]


def switch_and_echo(req: OriginRequest, out: OriginConnection) -> None:
    """Switch protocols, then echo what arrives until the client half-closes."""
    out.send(response_head(101, [("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    for _ in range(100):  # bounded
        data = out.sock.recv(65536)
        if not data:
            break
        out.send(data)
    out.close()


def test_a_websocket_relay_is_one_flow_with_its_heads_and_bytes(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(store)})
    origin.route("/chat", switch_and_echo)
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    with RawConnection(proxy.port) as conn:
        conn.send(request_bytes("GET", origin.url("/chat"), headers))
        assert conn.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")
        conn.send(b"\x81\x05hello")
        assert conn.read_available(7) == b"\x81\x05hello"
        conn.shutdown_write()
        assert conn.wait_closed()
    (row,) = stored_rows(store, 1)
    assert (row["kind"], row["status"], row["url"]) == ("websocket", 101, origin.url("/chat"))
    assert (row["request_size"], row["response_size"]) == (7, 7)
    assert ("Upgrade", "websocket") in heads(row["request_headers"])


def test_a_replay_is_marked_and_its_mark_goes_no_further(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(store)})
    origin.route("/again", respond(b"ok"))
    run_curl("-x", proxy.url, "-H", "X-Interceptor-Replay: 1234", origin.url("/again"))
    run_curl("-x", proxy.url, origin.url("/again"))
    replay, plain = stored_rows(store, 2)
    assert replay["is_replay"] == "request" and plain["is_replay"] is None
    assert "X-Interceptor-Replay" not in replay["request_headers"]
    assert [r.header("x-interceptor-replay") for r in origin.requests] == [None, None]


def test_timings_name_the_connect_of_the_flow_that_made_it(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    store = tmp_path / "flows.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(store)})
    origin.route("/t", respond(b"ok"))
    with RawConnection(proxy.port) as conn:  # one client connection: the second reuses
        for _ in range(2):
            conn.send(request_bytes("GET", origin.url("/t")))
            assert conn.read_response().status == 200
    first, second = (timings(r) for r in stored_rows(store, 2))
    assert first["start"] <= first["tcp_start"] <= first["tcp_done"] <= first["response_start"]
    assert first["response_start"] <= first["end"]
    assert "tcp_start" not in second and "tls_done" not in first
    assert second["start"] <= second["request_end"] <= second["response_start"] <= second["end"]


FLOWS = [
    # (id, kind, method, host, url, status, error)
    ("a", "http", "GET", "www.example.com", "http://www.example.com/", 200, None),
    ("b", "intercepted", "POST", "api.example.com", "https://api.example.com/api/items", 201, None),
    ("c", "intercepted", "GET", "api.example.com", "https://api.example.com/api/x", 503, None),
    ("d", "http", "GET", "other.test", "http://other.test/100%_done", 0, "client reset"),
    ("e", "connect", "CONNECT", "api.example.com", "api.example.com:443", 200, None),
]


@pytest.fixture
def filtered_store(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "flows.db"
    writer = Writer(str(path))
    for n, (flow_id, kind, method, host, url, status, error) in enumerate(FLOWS):
        writer.put(
            FlowRecord(
                id=flow_id, kind=kind, started=float(n), ended=float(n), client=f"10.0.0.{n}:9",
                method=method, url=url, host=host, status=status, error=error,
            )
        )  # fmt: skip
    writer.close()
    return connect(str(path), readonly=True)


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("", "abcde"),
        ("host:*.example.com", "abce"),
        ("host:API.example.com method:post", "b"),
        ("status:5xx", "c"),
        ("status:200-299 !kind:connect", "ab"),
        ("status:none", "d"),
        ("status:201", "b"),
        ("url:/api/", "bc"),
        ("url:100%_", "d"),  # LIKE's wildcards in the text match themselves only
        ("error", "d"),
        ("!error host:api.example.com", "bce"),
        ("kind:intercepted", "bc"),
        ("client:10.0.0.4", "e"),
    ],
)
def test_filters_select_in_sql(
    filtered_store: sqlite3.Connection, expression: str, expected: str
) -> None:
    assert "".join(row["id"] for row in read_flows(filtered_store, None, expression)) == expected


@pytest.mark.parametrize(
    "expression, words",
    [
        ("hots:x", "unknown filter term 'hots:x'"),
        ("POST", "unknown filter term 'POST'"),
        ("status:6xx", "status is like 200, 5xx, 400-499 or none"),
        ("status:299-200", "status is like"),
        ("kind:tunnel", "kind is one of connect, http, intercepted, passthrough"),
        ("method:G-T", "not a method"),
    ],
)
def test_a_bad_filter_names_its_term(expression: str, words: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expression)
    assert words in str(info.value) and "\n" not in str(info.value)
