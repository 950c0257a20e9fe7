"""The `interceptor` command (a console script of the package) reading a flow store."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from interceptor.capture.store import FlowRecord, Writer
from tests.support import OriginServer, ProxyProcess, respond, run_curl, wait_for

COMMAND = Path(sys.executable).with_name("interceptor")
TIMEOUT = 20.0


def interceptor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with a gzip JSON POST, a binary download cut at 64 bytes and a failed request."""
    path = tmp_path / "flows.db"
    writer = Writer(str(path))
    payload = json.dumps({"items": [1, 2], "name": "café"}).encode()
    writer.put(
        FlowRecord(
            id="11111111-aaaa", kind="intercepted", started=1_700_000_000.0, ended=1_700_000_000.25,
            client="127.0.0.1:5000", server="127.0.0.1:443", method="POST",
            url="https://api.test/items", host="api.test", http_version="HTTP/1.1",
            request_headers=[("Host", "api.test"), ("Content-Type", "application/json"),
                             ("Content-Encoding", "gzip")],
            request_body=gzip.compress(payload), request_size=len(payload),
            status=201, reason="Created", response_headers=[("Content-Length", "0")],
        )
    )  # fmt: skip
    writer.put(
        FlowRecord(
            id="22222222-bbbb", kind="http", started=1_700_000_001.0, ended=1_700_000_002.0,
            client="127.0.0.1:5001", method="GET", url="http://files.test/blob", host="files.test",
            status=200, reason="OK",
            response_headers=[("Content-Type", "application/octet-stream")],
            response_body=bytes(range(64)), response_size=5_242_880, response_cut=True,
        )
    )  # fmt: skip
    writer.put(
        FlowRecord(
            id="22223333-cccc", kind="http", started=1_700_000_003.0, ended=1_700_000_003.01,
            client="127.0.0.1:5002", method="GET", url="http://127.0.0.1:1/", status=502,
            error="upstream refused the connection",
        )
    )  # fmt: skip
    writer.close()
    return path


def test_list_prints_one_line_a_flow_id_first(store: Path) -> None:
    result = interceptor("flows", "list", str(store))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "11111111-aaaa 2023-11-14T22:13:20.000Z 127.0.0.1:5000 POST https://api.test/items"
        " 201 0 0.2500s",
        "22222222-bbbb 2023-11-14T22:13:21.000Z 127.0.0.1:5001 GET http://files.test/blob"
        " 200 5242880 1.0000s",
        "22223333-cccc 2023-11-14T22:13:23.000Z 127.0.0.1:5002 GET http://127.0.0.1:1/"
        " 502 0 0.0100s",
    ]
    limited = interceptor("flows", "list", str(store), "--limit", "1")
    assert limited.stdout.count("\n") == 1


def test_list_merges_several_stores_by_start_time(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "replica-b.db"
    writer = Writer(str(other))
    for n, started in enumerate([1_700_000_000.5, 1_700_000_004.0]):
        writer.put(
            FlowRecord(
                id=f"b-{n}", kind="http", started=started, ended=started + 1, client="10.0.0.2:1",
                method="GET", url=f"http://b.test/{n}", status=204,
            )
        )  # fmt: skip
    writer.close()
    result = interceptor("flows", "list", str(store), str(other))
    assert result.returncode == 0, result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines()]
    assert ids == ["11111111-aaaa", "b-0", "22222222-bbbb", "22223333-cccc", "b-1"]
    limited = interceptor("flows", "list", str(other), str(store), "--limit", "2")
    assert [line.split()[0] for line in limited.stdout.splitlines()] == ["11111111-aaaa", "b-0"]
    missing = interceptor("flows", "list", str(store), str(tmp_path / "gone.db"))
    assert missing.returncode == 2 and "gone.db: no such store" in missing.stderr
    assert missing.stdout == ""  # every store is opened before the first line


def test_show_decodes_pretty_prints_and_summarises(store: Path) -> None:
    post = interceptor("flows", "show", str(store), "1111")
    assert post.returncode == 0, post.stderr
    assert "POST https://api.test/items HTTP/1.1\nHost: api.test\n" in post.stdout
    assert '"name": "café"' in post.stdout and '"items": [\n    1,' in post.stdout
    assert "201 Created" in post.stdout
    blob = interceptor("flows", "show", str(store), "22222222")
    assert "[64 bytes of binary (stored cut at 64 of 5242880 bytes)] 00 01 02" in blob.stdout
    failed = interceptor("flows", "show", str(store), "22223333")
    assert "error: upstream refused the connection" in failed.stdout
    # Ids begin with their time: the end of one names it as well as the start.
    by_end = interceptor("flows", "show", str(store), "cccc")
    assert by_end.returncode == 0 and by_end.stdout == failed.stdout


def test_errors_are_one_line_with_exit_2(store: Path, tmp_path: Path) -> None:
    for args, words in [
        (["flows", "show", str(store), "2222"], "names more than one flow"),
        (["flows", "show", str(store), "9999"], "no flow '9999'"),
        (["flows", "list", str(tmp_path / "missing.db")], "no such store"),
    ]:
        result = interceptor(*args)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_capturing_proxy_is_read_back_while_it_runs(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    path = tmp_path / "live.db"
    proxy = proxy_factory(env={"INTERCEPTOR_CAPTURE_STORE": str(path)})
    url = origin.route("/hello", respond(b"hello there", headers=[("Content-Type", "text/plain")]))
    assert run_curl("-x", proxy.url, url).stdout == b"hello there"

    def listed() -> str | None:
        out = interceptor("flows", "list", str(path)).stdout
        return out if url in out else None

    line = wait_for(listed, TIMEOUT).splitlines()[0]
    flow_id = line.split()[0]
    assert f" GET {url} 200 11 " in line
    shown = interceptor("flows", "show", str(path), flow_id)
    assert "200 OK\n" in shown.stdout and "Content-Type: text/plain" in shown.stdout


def test_list_takes_a_filter_and_refuses_a_bad_one_in_one_line(store: Path) -> None:
    result = interceptor("flows", "list", str(store), "--filter", "status:5xx")
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["22223333-cccc"]
    result = interceptor("flows", "list", str(store), "--filter", "host:api.test method:post")
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["11111111-aaaa"]
    bad = interceptor("flows", "list", str(store), "--filter", "stauts:500")
    assert bad.returncode == 2 and bad.stderr.startswith("interceptor: unknown filter term")
    assert bad.stderr.count("\n") == 1
