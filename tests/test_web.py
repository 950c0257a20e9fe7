"""The flow UI's server side: the JSON API over a store, and a real twistd serving it behind
its token and Host checks (the browser itself is in test_web_browser.py)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from interceptor.capture.store import FlowRecord, Writer, connect
from interceptor.capture.views import body_view
from interceptor.web import api
from tests.support import OriginServer, ProxyProcess, respond, run_curl, wait_for
from tests.test_backpressure import rss

TIMEOUT = 20.0


def make_store(path: Path, n: int) -> None:
    writer = Writer(str(path))
    for i in range(n):
        writer.put(
            FlowRecord(
                id=f"f{i:04d}", kind="http", started=float(i), ended=i + 0.25, client="c",
                method="POST" if i % 2 else "GET", url=f"http://h{i % 3}.test/{i}",
                host=f"h{i % 3}.test", status=200 if i % 5 else 503,
            )
        )  # fmt: skip
    writer.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    make_store(tmp_path / "flows.db", 450)
    db = connect(str(tmp_path / "flows.db"), readonly=True)
    yield db
    db.close()


def test_lists_are_newest_first_and_paged_by_seq(store: sqlite3.Connection) -> None:
    first = api.list_flows(store)
    assert len(first["flows"]) == api.PAGE and first["more"]
    assert first["flows"][0]["id"] == "f0449" and first["flows"][-1]["id"] == "f0250"
    second = api.list_flows(store, before=first["flows"][-1]["seq"])
    assert second["flows"][0]["id"] == "f0249" and second["more"]
    third = api.list_flows(store, before=second["flows"][-1]["seq"])
    assert len(third["flows"]) == 50 and not third["more"]
    assert third["flows"][-1]["id"] == "f0000"


def test_filters_and_new_flows_run_in_sql(store: sqlite3.Connection) -> None:
    page = api.list_flows(store, "host:h1.test status:5xx")
    ids = [f["id"] for f in page["flows"]]
    assert ids and all(int(i[1:]) % 3 == 1 and int(i[1:]) % 5 == 0 for i in ids)
    newest = api.last_seq(store)
    assert api.new_flows(store, newest) == []
    later = api.new_flows(store, newest - 10, "method:POST")
    assert [f["seq"] for f in later] == sorted(f["seq"] for f in later)
    assert len(later) == 5 and all(f["method"] == "POST" for f in later)


@pytest.mark.parametrize(
    "body, heads, kind, shown",
    [
        (b'{"a":[1,2]}', [("Content-Type", "application/json")], "json", '{\n  "a": [\n    1,'),
        (gzip.compress(b"<p>hi</p>"), [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
         "text", "<p>hi</p>"),
        (b"\x89PNG\r\n\x1a\n", [("Content-Type", "image/png")], "image", "iVBORw0KGgo="),
        (bytes(range(256)) * 2, [], "binary", "00 01 02"),
    ],
)  # fmt: skip
def test_bodies_are_shown_by_type(
    body: bytes, heads: list[tuple[str, str]], kind: str, shown: str
) -> None:
    view = body_view(body, len(body), False, heads)
    assert view["kind"] == kind
    assert shown in (view.get("text") or view.get("data") or view.get("hex") or "")


def test_a_cut_body_is_marked_and_not_decoded() -> None:
    cut = gzip.compress(b"x" * 1000)[:10]
    view = body_view(cut, 1234, True, [("Content-Encoding", "gzip")])
    assert view["cut"] and "cut at 10 of 1234" in view["note"] and "decoded" not in view


# -- the site, in a real proxy ---------------------------------------------------------------


@dataclass
class UI:
    proxy: ProxyProcess
    port: int
    token: str

    def request(
        self,
        path: str,
        method: str = "GET",
        token: bool = True,
        host: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            sent = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
            if token:
                sent["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, headers=sent)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, path: str, method: str = "GET") -> Any:
        status, _, body = self.request(path, method)
        assert status == 200, body
        return json.loads(body)


def start_ui(factory: Callable[..., ProxyProcess], tmp_path: Path, capture: bool = True) -> UI:
    env = {"INTERCEPTOR_WEB_LISTEN": "tcp:0:interface=127.0.0.1"}
    if capture:
        env["INTERCEPTOR_CAPTURE_STORE"] = str(tmp_path / "flows.db")
    proxy = factory(env=env)
    found = proxy.wait_for_log(r"open http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)")
    return UI(proxy, int(found.group(1)), found.group(2))


@pytest.fixture
def ui(tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer) -> UI:
    return start_ui(proxy_factory, tmp_path)


def test_without_the_token_or_from_a_foreign_host_every_path_is_403(ui: UI) -> None:
    for path in ("/", "/api/flows", "/static/app.js", "/api/events"):
        status, heads, body = ui.request(path, token=False)
        assert status == 403, (path, body)
        assert b"needs its token" in body and b"\n" not in body.strip()
    status, _, body = ui.request("/", host="evil.example:80")
    assert status == 403 and b"not this UI's address" in body
    status, _, _ = ui.request(f"/?token={ui.token}", token=False, host="evil.example")
    assert status == 403
    status, _, _ = ui.request("/", token=False, headers={"Authorization": "Bearer wrong"})
    assert status == 403


def test_the_token_moves_to_a_strict_http_only_cookie(ui: UI) -> None:
    status, heads, _ = ui.request(f"/?token={ui.token}", token=False)
    assert status == 302 and heads["location"] == "/"
    cookie = heads["set-cookie"]
    assert cookie.startswith(f"interceptor_token={ui.token}")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    status, heads, body = ui.request(
        "/", token=False, headers={"Cookie": f"interceptor_token={ui.token}"}
    )
    assert status == 200 and b"/static/app.js" in body
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        # Served from the installed package: package data the wheel must carry.
        status, heads, body = ui.request(f"/static/{name}")
        assert status == 200 and heads["content-type"].startswith(kind) and len(body) > 1000
    assert (
        heads["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in heads["content-security-policy"]
    )


def test_flows_detail_har_and_replay(ui: UI, origin: OriginServer) -> None:
    page = gzip.compress(b"<h1>cherry</h1>")
    url = origin.route(
        "/page",
        respond(page, headers=[("Content-Type", "text/html"), ("Content-Encoding", "gzip")]),
    )
    assert run_curl("-x", ui.proxy.url, url).returncode == 0
    (flow,) = wait_for(lambda: ui.json("/api/flows")["flows"] or None, TIMEOUT)
    assert (flow["url"], flow["status"], flow["kind"]) == (url, 200, "http")
    detail = ui.json(f"/api/flows/{flow['id']}")
    assert detail["response_body"]["kind"] == "text"
    assert detail["response_body"]["text"] == "<h1>cherry</h1>"
    assert detail["timings"]["start"] <= detail["timings"]["end"]
    status, heads, body = ui.request(f"/api/flows/{flow['id']}/har")
    assert status == 200 and "attachment" in heads["content-disposition"]
    (entry,) = json.loads(body)["log"]["entries"]
    assert entry["request"]["url"] == url
    status, _, body = ui.request("/api/har?filter=status:5xx")
    assert status == 200 and json.loads(body)["log"]["entries"] == []
    status, _, body = ui.request("/api/flows?filter=hots:x")
    assert status == 400 and b"unknown filter term" in body

    status, _, body = ui.request(f"/api/flows/{flow['id']}/replay")
    assert status == 405
    result = ui.json(f"/api/flows/{flow['id']}/replay", method="POST")
    assert result["status_line"] == "HTTP/1.1 200 OK"
    replayed = wait_for(
        lambda: [f for f in ui.json("/api/flows")["flows"] if f["is_replay"]] or None, TIMEOUT
    )
    assert replayed[0]["url"] == url
    status, _, body = ui.request("/api/flows/nope")
    assert status == 404 and json.loads(body) == {"error": "no flow nope"}


def test_a_foreign_origin_cannot_post(ui: UI) -> None:
    status, _, body = ui.request(
        "/api/flows/x/replay", method="POST", headers={"Origin": "http://evil.example"}
    )
    assert status == 403 and b"not from this UI" in body


def test_new_flows_arrive_as_server_sent_events(ui: UI, origin: OriginServer) -> None:
    url = origin.route("/live", respond(b"ok"))
    sock = socket.create_connection(("127.0.0.1", ui.port), timeout=TIMEOUT)
    try:
        sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n"
            f"Authorization: Bearer {ui.token}\r\n\r\n".encode()
        )
        got = b""
        while b"flows as they are stored" not in got:  # subscribed: the stream has begun
            got += sock.recv(65536)
        assert b"text/event-stream" in got
        assert run_curl("-x", ui.proxy.url, url).returncode == 0
        # Until this flow's event: an earlier test's flows, still queued for the writer when
        # the stream began, may come first.
        while not got.rstrip().endswith(b"}") or url.encode() not in got:
            more = sock.recv(65536)
            assert more, got
            got += more
    finally:
        sock.close()
    urls = [json.loads(data)["url"] for data in re.findall(rb"data: (\{.*\})", got)]
    assert url in urls


def test_the_ui_is_not_reachable_through_the_proxy(ui: UI) -> None:
    result = run_curl(
        "-x", ui.proxy.url, "-H", f"Authorization: Bearer {ui.token}",
        f"http://127.0.0.1:{ui.port}/api/flows",
    )  # fmt: skip
    assert result.stdout.startswith(b"127.0.0.1:") and b"is this proxy itself" in result.stdout


def test_without_capture_the_ui_says_how_to_turn_it_on(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    ui = start_ui(proxy_factory, tmp_path, capture=False)
    assert ui.json("/api/status") == {"capture": False, "store": ""}
    status, _, body = ui.request("/api/flows")
    assert status == 409 and b"[capture] store" in body
    ui.proxy.wait_for_log(r"web UI: \[capture\] store is empty")


def _big_store(path: Path, flows: int, body: int) -> None:
    """`flows` flows of `body` random bytes each (base64 in HAR: a third more)."""
    writer = Writer(str(path))
    for i in range(flows):
        record = FlowRecord(
            id=f"big{i:04d}", kind="http", started=float(i), ended=i + 0.5, client="c",
            method="GET", url=f"http://big.test/{i}", host="big.test", status=200,
            response_headers=[("Content-Type", "application/octet-stream")],
            response_body=os.urandom(body), response_size=body,
        )  # fmt: skip
        wait_for(lambda r=record: writer.put(r), TIMEOUT)  # (a full queue: offer it again)
    writer.close(TIMEOUT)


def test_a_har_export_goes_no_faster_than_its_client_reads_and_stops_when_it_leaves(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    # 250 flows of 200 KiB: a 68 MB export. Without backpressure it all waits in the UI's
    # transport for a client that reads slowly, or is written on for one that has left.
    _big_store(tmp_path / "flows.db", 250, 200 * 1024)
    ui = start_ui(proxy_factory, tmp_path)
    baseline = rss(ui.proxy.pid)
    headers = {"Host": f"127.0.0.1:{ui.port}", "Authorization": f"Bearer {ui.token}"}
    slow = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=TIMEOUT)
    slow.sock = sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", ui.port))
    try:
        slow.request("GET", "/api/har", headers=headers)
        resp = slow.getresponse()
        assert resp.status == 200
        first = resp.read(65536)
        # The client reads nothing for a while: the export must wait, not buffer.
        peak = baseline
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            peak = max(peak, rss(ui.proxy.pid))
        assert peak - baseline < 40 << 20, f"RSS grew {(peak - baseline) >> 20} MiB"
        har = json.loads(first + resp.read())
    finally:
        slow.close()
    assert len(har["log"]["entries"]) == 250
    # A client that leaves mid-export: the export stops, and the UI serves the next one.
    ask = "GET /api/har HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", ui.port), timeout=TIMEOUT) as gone:
        gone.sendall(ask.encode() + b"\r\n")
        assert gone.recv(65536).startswith(b"HTTP/1.1 200")
    ui.proxy.wait_for_log(r"web: HAR export \S+ stopped: the client went away")
    assert ui.json("/api/flows")["flows"]
    wait_for(lambda: rss(ui.proxy.pid) - baseline < 40 << 20, TIMEOUT)
    assert "Traceback" not in ui.proxy.log_text(), ui.proxy.log_tail()


class _StubChannel:
    def __init__(self) -> None:
        self.timed_out = False

    def timeoutConnection(self) -> None:
        self.timed_out = True


class _StubRequest:
    """What the export stream uses of a twisted.web request (its state only)."""

    def __init__(self) -> None:
        self.channel = _StubChannel()
        self.producer: object = None
        self.written: list[bytes] = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> Deferred[None]:
        return Deferred()

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _NowReactor:
    def callFromThread(self, fn: Callable[..., object], *args: object) -> None:
        fn(*args)


def test_an_export_to_a_client_that_stops_reading_gives_up_and_times_it_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from interceptor.web.site import ClientGone, _TextToRequest

    monkeypatch.setattr(_TextToRequest, "_STALL", 0.05)
    request = _StubRequest()
    out = _TextToRequest(_NowReactor(), request)  # type: ignore[arg-type]
    out.write("a" * 10)
    out.flush()
    assert request.written == [b"a" * 10] and request.producer is out
    out.pauseProducing()  # the client's buffers are full, and it reads nothing more
    out.write("b")
    with pytest.raises(ClientGone, match="read nothing"):
        out.flush()
    # Not left open for good: its connection is timed out, the producer gone, nothing written.
    assert request.channel.timed_out and request.producer is None and out.gone
    assert request.written == [b"a" * 10]
