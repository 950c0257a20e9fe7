"""`interceptor flows har`: the HAR 1.2 mapping, streaming, several stores, and the log checked
against the HAR schema by npm's har-validator (installed by .ci/run into tests/node_modules)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interceptor.capture.har import write_har, write_har_file
from interceptor.capture.store import FlowRecord, Writer, connect, read_flows
from tests.support import OriginServer, ProxyProcess, respond, run_curl, wait_for
from tests.test_cli import COMMAND, interceptor

TIMEOUT = 20.0
T0 = 1_700_000_000.0
VALIDATOR = Path(__file__).with_name("har_validate.js")
NODE_MODULES = Path(__file__).with_name("node_modules")
PAYLOAD = json.dumps({"items": [1, 2], "name": "café"}).encode()
PAGE = b'{"ok": true}'
GZ_PAYLOAD = gzip.compress(PAYLOAD)
GZ_PAGE = gzip.compress(PAGE)


def flows() -> list[FlowRecord]:
    """One flow of each shape the mapping has to tell apart."""
    return [
        FlowRecord(
            id="post", kind="intercepted", started=T0, ended=T0 + 0.1, client="10.0.0.1:5000",
            server="127.0.0.1:8443", method="POST", url="https://api.test/items?a=1&b=&a=2",
            host="api.test", http_version="HTTP/1.1",
            request_headers=[("Host", "api.test"), ("Content-Type", "application/json"),
                             ("Content-Encoding", "gzip"), ("Cookie", "sid=abc; theme=dark")],
            request_body=GZ_PAYLOAD, request_size=len(GZ_PAYLOAD),
            status=201, reason="Created",
            response_headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                              ("Set-Cookie", "sid=new; Path=/; HttpOnly; Secure; "
                                             "Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
                              ("Location", "/items/7")],
            response_body=GZ_PAGE, response_size=len(GZ_PAGE),
            client_tls={"version": "TLSv1.3", "sni": "api.test", "alpn": "http/1.1",
                        "cipher": "TLS_AES_128_GCM_SHA256"},
            timings={"start": T0, "tcp_start": T0 + 0.002, "tcp_done": T0 + 0.012,
                     "tls_done": T0 + 0.032, "request_end": T0 + 0.033,
                     "response_start": T0 + 0.083, "end": T0 + 0.1},
        ),
        FlowRecord(
            id="blob", kind="http", started=T0 + 1, ended=T0 + 2, client="10.0.0.1:5001",
            server="[::1]:8080", method="GET", url="http://files.test/blob", host="files.test",
            http_version="HTTP/1.1", status=200, reason="OK",
            response_headers=[("Content-Type", "application/octet-stream")],
            response_body=bytes(range(64)), response_size=5_242_880, response_cut=True,
            # A pooled connection, and clocks read in different places that disagree a little.
            timings={"start": T0 + 1, "request_end": T0 + 0.999, "response_start": T0 + 1.5,
                     "end": T0 + 2},
        ),
        FlowRecord(
            id="refused", kind="http", started=T0 + 3, ended=T0 + 3.01, client="10.0.0.1:5002",
            method="PUT", url="http://127.0.0.1:1/upload", host="127.0.0.1",
            http_version="HTTP/1.1", request_headers=[("Content-Type", "image/png")],
            request_body=b"\x89PNG\r\n\x1a\n\x00\xff", request_size=10,
            status=502, reason="Bad Gateway", error="upstream refused the connection",
            timings={"start": T0 + 3, "tcp_start": T0 + 3.001, "end": T0 + 3.01},
        ),
        FlowRecord(
            id="streamed", kind="http", started=T0 + 4, ended=T0 + 5, client="10.0.0.1:5003",
            method="POST", url="http://up.test/stream", host="up.test", http_version="HTTP/1.1",
            request_size=4096, status=0, error="client reset",
            response_headers=[("Content-Encoding", "gzip")], response_body=b"not gzip",
            response_size=8,
        ),
        FlowRecord(
            id="connect", kind="connect", started=T0 + 6, ended=T0 + 6.5, client="10.0.0.1:5004",
            method="CONNECT", url="203.0.113.9:443", host="203.0.113.9",
            http_version="HTTP/1.1", status=504, reason="Gateway Timeout",
            error="upstream connect timed out",
        ),
        FlowRecord(
            id="tunnel", kind="passthrough", started=T0 + 7, ended=T0 + 9, client="10.0.0.1:5005",
            server="[::1]:443", method="CONNECT", url="::1:443", host="::1",
            http_version="HTTP/1.1", status=200, request_size=517, response_size=4321,
        ),
        FlowRecord(
            id="socket", kind="websocket", started=T0 + 10, ended=T0 + 20,
            client="10.0.0.1:5006", server="127.0.0.1:80", method="GET",
            url="http://ws.test/chat", host="ws.test", http_version="HTTP/1.1",
            request_headers=[("Upgrade", "websocket")], status=101,
            reason="Switching Protocols", response_headers=[("Upgrade", "websocket")],
            request_size=300, response_size=7000, is_replay="request",
        ),
        # A client whose head did not parse: no request, so no URL, which HAR needs.
        FlowRecord(
            id="garbage", kind="http", started=T0 + 21, ended=T0 + 21, client="10.0.0.1:5007",
            status=400, error="malformed request head",
        ),
    ]  # fmt: skip


def write_store(path: Path, records: list[FlowRecord]) -> Path:
    writer = Writer(str(path), queue_size=len(records) + 1)
    for rec in records:
        assert writer.put(rec)
    writer.close()
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "flows.db", flows())


def har_of(*args: str) -> dict[str, Any]:
    result = interceptor("flows", "har", *args)
    assert result.returncode == 0, result.stderr
    log: dict[str, Any] = json.loads(result.stdout)
    return log


def entries_by_id(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["_id"]: e for e in log["log"]["entries"]}


def test_requests_responses_and_bodies_map_to_har(store: Path) -> None:
    log = har_of(str(store))
    assert log["log"]["version"] == "1.2" and log["log"]["creator"]["name"] == "interceptor"
    found = entries_by_id(log)
    assert list(found) == ["post", "blob", "refused", "streamed", "connect", "tunnel", "socket"]

    post = found["post"]
    assert post["startedDateTime"] == "2023-11-14T22:13:20.000Z"
    assert (post["_kind"], post["_client"], post["_error"]) == (
        "intercepted", "10.0.0.1:5000", None,
    )  # fmt: skip
    assert (post["serverIPAddress"], post["connection"]) == ("127.0.0.1", "8443")
    request = post["request"]
    assert request["queryString"] == [
        {"name": "a", "value": "1"}, {"name": "b", "value": ""}, {"name": "a", "value": "2"},
    ]  # fmt: skip
    assert request["cookies"] == [
        {"name": "sid", "value": "abc"}, {"name": "theme", "value": "dark"},
    ]  # fmt: skip
    assert {"name": "Cookie", "value": "sid=abc; theme=dark"} in request["headers"]
    assert request["headersSize"] == -1 and request["bodySize"] == len(GZ_PAYLOAD)
    assert request["postData"] == {"mimeType": "application/json", "text": PAYLOAD.decode()}
    response = post["response"]
    assert (response["status"], response["statusText"]) == (201, "Created")
    assert response["redirectURL"] == "/items/7"
    assert response["cookies"] == [
        {"name": "sid", "value": "new", "path": "/", "expires": "2037-10-21T07:28:00.000Z",
         "httpOnly": True, "secure": True},
    ]  # fmt: skip
    assert response["content"] == {
        "size": len(PAGE),
        "compression": len(PAGE) - len(GZ_PAGE),
        "mimeType": "application/json",
        "text": PAGE.decode(),
    }

    blob = found["blob"]["response"]["content"]
    assert blob["size"] == 5_242_880 and blob["_truncated"] is True
    assert (blob["encoding"], base64.b64decode(blob["text"])) == ("base64", bytes(range(64)))
    assert found["blob"]["serverIPAddress"] == "::1"

    post_data = found["refused"]["request"]["postData"]
    assert post_data["_encoding"] == "base64" and "encoding" not in post_data
    assert base64.b64decode(post_data["text"]) == b"\x89PNG\r\n\x1a\n\x00\xff"
    assert found["refused"]["_error"] == "upstream refused the connection"

    streamed = found["streamed"]
    assert streamed["request"]["postData"] == {"mimeType": ""}  # 4096 bytes, none stored
    assert streamed["response"]["status"] == 0 and streamed["response"]["httpVersion"] == ""
    assert streamed["response"]["content"]["text"] == "not gzip"
    assert streamed["response"]["content"]["comment"].startswith("not decoded: invalid gzip")
    assert "serverIPAddress" not in streamed and "connection" not in streamed


def test_tunnels_and_connects_are_entries_with_their_bytes(store: Path) -> None:
    found = entries_by_id(har_of(str(store)))
    assert found["connect"]["request"]["url"] == "tcp://203.0.113.9:443"
    assert found["connect"]["response"]["status"] == 504
    tunnel = found["tunnel"]
    assert tunnel["request"]["method"] == "CONNECT"
    assert tunnel["request"]["url"] == "tcp://[::1]:443"
    assert (tunnel["_bytes_up"], tunnel["_bytes_down"]) == (517, 4321)
    assert tunnel["request"]["bodySize"] == -1 and tunnel["response"]["bodySize"] == -1
    assert "postData" not in tunnel["request"]
    socket = found["socket"]
    assert socket["response"]["status"] == 101 and socket["_is_replay"] == "request"
    assert (socket["_bytes_up"], socket["_bytes_down"]) == (300, 7000)
    assert "_bytes_up" not in found["post"]


def test_timings_tile_the_flow_and_none_is_negative(store: Path) -> None:
    found = entries_by_id(har_of(str(store)))
    timings = {key: e["timings"] for key, e in found.items()}
    assert timings["post"] == {
        "blocked": 2.0, "dns": -1, "connect": 30.0, "ssl": 20.0, "send": 1.0, "wait": 50.0,
        "receive": 17.0,
    }  # fmt: skip
    assert found["post"]["time"] == 100.0
    # Pooled: no connection was made; the request ended "before" it started by another clock.
    assert timings["blob"] == {
        "blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0.0, "wait": 500.0,
        "receive": 500.0,
    }  # fmt: skip
    # The connect that failed took the rest of the flow.
    assert timings["refused"]["blocked"] == 1.0 and timings["refused"]["connect"] == 9.0
    assert timings["refused"]["ssl"] == -1
    for key, entry in found.items():
        values = entry["timings"]
        assert all(v >= 0 or v == -1 for v in values.values()), (key, values)
        assert all(values[k] >= 0 for k in ("send", "wait", "receive")), (key, values)
        spent = sum(v for k, v in values.items() if k != "ssl" and v != -1)
        assert entry["time"] == pytest.approx(spent, abs=0.01), key
    assert found["socket"]["time"] == 10_000.0  # no stamps stored but start and end


def har_validator() -> list[str]:
    """The command that validates a HAR file, or a skip (a failure under INTERCEPTOR_CI=1)."""
    node = shutil.which("node")
    if node is None:
        missing = "node is not installed"
    elif not (NODE_MODULES / "har-validator").is_dir():
        missing = f"har-validator is not installed in {NODE_MODULES}"
    else:
        return [node, str(VALIDATOR)]
    reason = f"{missing}: run `npm install --prefix tests --no-save har-validator@5.1.5`"
    if os.environ.get("INTERCEPTOR_CI") == "1":
        pytest.fail(f"INTERCEPTOR_CI=1 and {reason}")
    pytest.skip(reason)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*har_validator(), str(path)], capture_output=True, text=True, timeout=TIMEOUT
    )


def test_the_log_validates_against_the_har_schema(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "flows.har"
    result = interceptor("flows", "har", str(store), "-o", str(out))
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # decrypted traffic, as the store
    checked = validate(out)
    assert checked.returncode == 0, checked.stderr
    # The validator does reject what breaks the schema: a bad entry must not pass unseen.
    log = json.loads(out.read_text())
    log["log"]["entries"][0]["request"]["url"] = "not a url"
    del log["log"]["entries"][1]["timings"]["send"]
    broken = tmp_path / "broken.har"
    broken.write_text(json.dumps(log))
    rejected = validate(broken)
    assert rejected.returncode == 1 and "send" in rejected.stderr and "uri" in rejected.stderr


def test_what_a_real_proxy_captured_exports_and_validates(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    path = tmp_path / "live.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(path)})
    page = origin.route("/page", respond(b"hello", headers=[("Content-Type", "text/plain")]))
    url = page + "?x=1"
    fetched = run_curl("-x", proxy.url, url, "-b", "k=v")
    assert fetched.stdout == b"hello", (fetched.stderr, proxy.log_tail())

    def exported() -> dict[str, Any] | None:
        log = har_of(str(path))
        return log if log["log"]["entries"] else None

    (entry,) = wait_for(exported, TIMEOUT)["log"]["entries"]
    assert entry["request"]["url"] == url and entry["response"]["content"]["size"] == 5
    assert entry["request"]["cookies"] == [{"name": "k", "value": "v"}]
    assert entry["request"]["queryString"] == [{"name": "x", "value": "1"}]
    assert entry["time"] >= 0 and entry["timings"]["wait"] >= 0
    out = tmp_path / "live.har"
    out.write_text(json.dumps(har_of(str(path))))
    checked = validate(out)
    assert checked.returncode == 0, checked.stderr


def test_several_stores_merge_and_the_filter_applies(store: Path, tmp_path: Path) -> None:
    other = write_store(
        tmp_path / "b.db",
        [
            FlowRecord(
                id="b-late", kind="http", started=T0 + 8, ended=T0 + 8.5, client="10.0.0.9:1",
                method="GET", url="http://b.test/", host="b.test", status=200,
            )
        ],
    )  # fmt: skip
    merged = har_of(str(store), str(other))["log"]["entries"]
    ids = ["post", "blob", "refused", "streamed", "connect", "tunnel", "b-late", "socket"]
    assert [e["_id"] for e in merged] == ids
    selected = har_of(str(store), str(other), "--filter", "status:2xx")["log"]["entries"]
    assert [e["_id"] for e in selected] == ["post", "blob", "tunnel", "b-late"]


def test_failures_are_one_line_and_leave_no_output(store: Path, tmp_path: Path) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    out = directory / "out.har"
    for args, words in [
        ([str(store), "--filter", "stauts:5xx", "-o", str(out)], "unknown filter term"),
        ([str(store), "--filter", "stauts:5xx"], "unknown filter term"),
        ([str(store), str(tmp_path / "gone.db")], "gone.db: no such store"),
        ([str(store), "-o", str(directory / "no" / "x.har")], "No such file or directory"),
    ]:
        result = interceptor("flows", "har", *args)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert result.stdout == ""
    assert list(directory.iterdir()) == []  # not even a temporary file is left
    failed = interceptor("flows", "har", str(store), "-o", str(directory))  # a directory
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert list(directory.iterdir()) == []


class Recorder(io.StringIO):
    """An output that counts the entries written to it so far."""

    def entries(self) -> int:
        return self.getvalue().count('"_id":')


def test_each_entry_is_written_before_the_next_row_is_read(tmp_path: Path) -> None:
    with_urls = [rec for rec in flows() if rec.url is not None]
    out = Recorder()
    db = connect(str(write_store(tmp_path / "flows.db", with_urls)), readonly=True)
    read = 0

    def rows() -> Iterator[sqlite3.Row]:
        nonlocal read
        for row in read_flows(db):
            assert out.entries() == read  # every row read so far is out already
            read += 1
            yield row

    assert write_har(rows(), out) == len(with_urls) == read == out.entries()
    db.close()
    json.loads(out.getvalue())


def peak_memory(path: Path, n: int, tmp_path: Path) -> int:
    body = b"x" * 2000
    write_store(
        path,
        [
            FlowRecord(
                id=f"f{i}", kind="http", started=T0 + i, ended=T0 + i + 1, client="c:1",
                method="GET", url=f"http://a.test/{i}", status=200, response_body=body,
                response_size=len(body), response_headers=[("Content-Type", "text/plain")],
            )
            for i in range(n)
        ],
    )  # fmt: skip
    db = connect(str(path), readonly=True)
    tracemalloc.start()
    try:
        assert write_har_file(read_flows(db), str(tmp_path / f"{n}.har")) == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        db.close()


def test_memory_does_not_grow_with_the_number_of_flows(tmp_path: Path) -> None:
    small = peak_memory(tmp_path / "small.db", 500, tmp_path)
    large = peak_memory(tmp_path / "large.db", 5000, tmp_path)
    # Kept entries would be over 10 MB more for the large store; streamed, the peak is one
    # entry and the cursor's page cache either way.
    assert large < small + 1_000_000, (small, large)


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path: Path) -> None:
    text = [("Content-Type", "text/plain")]
    store = write_store(
        tmp_path / "many.db",
        [
            FlowRecord(
                id=f"f{i}", kind="http", started=T0 + i, ended=T0 + i, client="c:1",
                method="GET", url=f"http://a.test/{i}", status=200, response_headers=text,
                response_body=b"y" * 500, response_size=500,
            )
            for i in range(3000)
        ],
    )  # fmt: skip
    export = subprocess.Popen(
        [str(COMMAND), "flows", "har", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.read(100).startswith(b'{"log"')  # as `| head -c 100` would
    export.stdout.close()
    assert export.wait(TIMEOUT) == 0
    assert export.stderr.read() == b""
