"""Capture as a new user meets it: a real proxy records a plain gzip page, a 300 KB POST over
intercepted HTTPS, a 5 MiB download and a refused port; the `interceptor` command lists them,
shows the POST, exports a HAR the schema accepts, and replays the POST through the proxy."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import certs
from tests.support import OriginServer, ProxyProcess, free_port, respond, run_curl, wait_for
from tests.test_cli import interceptor
from tests.test_har import validate

TIMEOUT = 30.0
PAGE = b"<html><body><p>cherry pie</p></body></html>"
UPLOAD = os.urandom(300_000)
DOWNLOAD = 5 * 1024 * 1024


class _Upload(BaseHTTPRequestHandler):
    """An HTTPS origin's one page: POST /upload reads the body and says how long it was."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        got = self.rfile.read(length)
        body = f"got {len(got)} bytes\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_origin(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, root certificate) of a loopback HTTPS origin for "localhost"."""
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(tmp_path, "root", root)
    cert_pem, key_pem = certs.make_server_cert(root, ("localhost",), ("127.0.0.1",))
    cert, key = tmp_path / "origin.pem", tmp_path / "origin.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upload)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], root_pem
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_new_user_records_lists_shows_exports_and_replays(
    tmp_path: Path,
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
    https_origin: tuple[int, Path],
) -> None:
    port, root_pem = https_origin
    store = tmp_path / "flows.db"
    proxy = proxy_factory(
        env={
            "INTERCEPTOR_CAPTURE_STORE": str(store),
            "INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(root_pem),
        }
    )
    ca = Path(proxy.wait_for_log(r"CA certificate \w+: (\S+) \(trust").group(1))
    page_url = origin.route(
        "/page.html",
        respond(
            gzip.compress(PAGE),
            headers=[("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
        ),
    )
    big_url = origin.route("/big", respond(b"z" * DOWNLOAD))
    upload_url = f"https://localhost:{port}/upload"
    refused_url = f"http://127.0.0.1:{free_port()}/nothing"

    assert run_curl("-x", proxy.url, "--compressed", page_url).stdout == PAGE
    posted = run_curl(
        "-x", proxy.url, "--cacert", str(ca), "--data-binary", "@-", upload_url, input=UPLOAD
    )
    assert posted.stdout == b"got 300000 bytes\n", posted
    assert len(run_curl("-x", proxy.url, big_url).stdout) == DOWNLOAD
    assert run_curl("-x", proxy.url, refused_url).stdout.startswith(b"upstream refused")

    def listed() -> list[str] | None:
        lines = interceptor("flows", "list", str(store)).stdout.splitlines()
        return lines if len(lines) >= 4 else None

    lines = wait_for(listed, TIMEOUT)
    for url, status in ((page_url, 200), (upload_url, 200), (big_url, 200), (refused_url, 502)):
        (line,) = [line for line in lines if f" {url} " in line]
        assert f" {url} {status} " in line, line
    post_id = next(line.split()[0] for line in lines if upload_url in line)
    with contextlib.closing(sqlite3.connect(store)) as db:
        kinds = dict(
            db.execute(
                "SELECT url, kind FROM flows WHERE url IN (?, ?)", (page_url, upload_url)
            ).fetchall()
        )
        (client_tls,) = db.execute(
            "SELECT client_tls FROM flows WHERE url = ?", (upload_url,)
        ).fetchone()
    assert kinds == {page_url: "http", upload_url: "intercepted"}, kinds
    assert json.loads(client_tls)["version"].startswith("TLSv1."), client_tls

    shown = interceptor("flows", "show", str(store), post_id[-8:])  # ids end apart
    assert shown.returncode == 0, shown.stderr
    assert f"POST {upload_url}" in shown.stdout
    assert "Content-Length: 300000" in shown.stdout
    assert "[300000 bytes of binary]" in shown.stdout

    har_path = tmp_path / "out.har"
    exported = interceptor("flows", "har", str(store), "-o", str(har_path))
    assert exported.returncode == 0, exported.stderr
    checked = validate(har_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    entries = {e["request"]["url"]: e for e in json.loads(har_path.read_text())["log"]["entries"]}
    assert entries[page_url]["response"]["content"]["text"] == PAGE.decode()
    post_data = entries[upload_url]["request"]["postData"]
    assert base64.b64decode(post_data["text"]) == UPLOAD
    big = entries[big_url]["response"]["content"]
    assert big["size"] == DOWNLOAD and big["_truncated"] is True
    assert len(big["text"]) == 1024 * 1024  # the stored part: [capture] body_limit

    replayed = interceptor(
        "flows", "replay", str(store), post_id, "--proxy", proxy.url, "--cacert", str(ca)
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("HTTP/1.1 200 OK"), replayed.stdout

    def replays() -> list[str] | None:
        found = interceptor("flows", "har", str(store), "--filter", "method:POST").stdout
        posts = json.loads(found)["log"]["entries"]
        return [e["_is_replay"] for e in posts] if len(posts) == 2 else None

    assert wait_for(replays, TIMEOUT) == [None, "request"]
