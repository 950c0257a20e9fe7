"""Make the flow UI's screenshots, docs/ui-list.png and docs/ui-detail.png (run by hand).

    .venv/bin/python docs/screenshots.py [--out docs]

A proxy with capture and the web UI on, and an origin, both on loopback (as
tests/test_web_browser.py starts them); about fifteen varied flows through the proxy (a gzip
HTML page, JSON API calls, a POST, a redirect, a 404, a 500, a refused port that the proxy
answers 502, an image, ...); then Debian's headless Chromium (`apt-get install chromium`),
driven by Playwright, opens the page at 1280x800 and saves the list, then one flow opened
(heads, the body decoded from gzip, the timing bar).

Not a test, and nothing here runs in CI: the pictures are for the documentation, and looking
at them is how the page's layout is checked.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: tests.support is the harness

from tests.support import (  # noqa: E402
    OriginConnection,
    OriginRequest,
    OriginServer,
    ProxyProcess,
    free_port,
    respond,
    run_curl,
    start_proxy,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
Behaviour = Callable[[OriginRequest, OriginConnection], None]

PAGE = b"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Cherry Orchard</title>
<link rel="stylesheet" href="/static/site.css"></head>
<body>
  <h1>Cherry Orchard</h1>
  <p>Fresh cherries, picked this morning: Bing, Rainier and Montmorency.</p>
  <ul id="orders"></ul>
  <script src="/static/app.js"></script>
</body>
</html>
"""


def png(width: int = 48, height: int = 48) -> bytes:
    """A small PNG (a gradient), made here so that no image file has to be shipped."""
    raw = b"".join(
        b"\x00" + b"".join(bytes((200, 40 + 4 * x, 60 + 3 * y)) for x in range(width))
        for y in range(height)
    )

    def part(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + part(b"IHDR", header)
        + part(b"IDAT", zlib.compress(raw))
        + part(b"IEND", b"")
    )


def slow(behaviour: Behaviour, seconds: float) -> Behaviour:
    """`behaviour` after a think time of the origin's, so the timing bar has a wait to show."""

    def answer(request: OriginRequest, out: OriginConnection) -> None:
        time.sleep(seconds)  # the origin's think time is the point, not a wait for a condition
        behaviour(request, out)

    return answer


def as_json(value: object, status: int = 200) -> Behaviour:
    """A JSON answer."""
    body = json.dumps(value, indent=None).encode()
    return respond(body, status=status, headers=[("Content-Type", "application/json")])


def start_ui(store: Path, workdir: Path) -> tuple[ProxyProcess, str]:
    """A proxy capturing to `store`, its UI on a loopback port; the proxy and the UI's URL
    (with its token, as the proxy logs it)."""
    env = {"INTERCEPTOR_WEB_LISTEN": "tcp:0:interface=127.0.0.1"}
    env["INTERCEPTOR_CAPTURE_STORE"] = str(store)
    proxy = start_proxy(env=env, workdir=workdir)
    found = proxy.wait_for_log(r"open (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", timeout=30)
    return proxy, found.group(1)


def make_flows(proxy: ProxyProcess, origin: OriginServer) -> int:
    """Varied flows through the proxy; how many."""
    gz = gzip.compress(PAGE)
    origin.route(
        "/",
        slow(
            respond(gz, headers=[("Content-Type", "text/html"), ("Content-Encoding", "gzip")]),
            0.04,
        ),
    )
    origin.route(
        "/static/site.css",
        respond(b"body { font: 16px serif; }", headers=[("Content-Type", "text/css")]),
    )
    origin.route(
        "/static/app.js",
        respond(
            b"fetch('/api/orders').then(r => r.json());",
            headers=[("Content-Type", "text/javascript")],
        ),
    )
    origin.route("/logo.png", respond(png(), headers=[("Content-Type", "image/png")]))
    origin.route(
        "/api/cherries",
        slow(as_json([{"id": 1, "name": "Bing"}, {"id": 2, "name": "Rainier"}]), 0.02),
    )
    origin.route("/api/cherries/2", as_json({"id": 2, "name": "Rainier", "stock": 140}))
    origin.route("/api/orders", slow(as_json({"id": 7, "status": "open"}, status=201), 0.03))
    origin.route("/api/orders/7", as_json({"id": 7, "status": "open", "items": [2, 2, 1]}))
    origin.route("/api/cart", respond(b"", status=204))
    origin.route("/old-shop", respond(b"", status=302, headers=[("Location", "/")]))
    origin.route("/api/reports", as_json({"error": "database unavailable"}, status=500))
    origin.route("/robots.txt", respond(b"User-agent: *\nDisallow:\n"))
    origin.route("/api/search", as_json({"q": "cherry", "hits": 3}))
    refused = f"http://127.0.0.1:{free_port()}/api/stock"
    requests: list[list[str]] = [
        [origin.url("/")],
        [origin.url("/static/site.css")],
        [origin.url("/static/app.js")],
        [origin.url("/logo.png")],
        [origin.url("/api/cherries"), "-H", "Accept: application/json"],
        [origin.url("/api/cherries/2"), "-H", "Accept: application/json"],
        [origin.url("/api/orders"), "-H", "Content-Type: application/json",
         "--data-binary", json.dumps({"cherry": 2, "quantity": 3})],
        [origin.url("/api/orders/7")],
        [origin.url("/api/cart"), "-X", "DELETE"],
        [origin.url("/old-shop")],
        [origin.url("/favicon.ico")],  # no route: the origin's 404
        [origin.url("/api/reports")],
        [refused],  # nothing listens: the proxy's 502
        [origin.url("/robots.txt")],
        [origin.url("/api/search?q=cherry")],
    ]  # fmt: skip
    for args in requests:
        run_curl("-x", proxy.url, "-o", "/dev/null", *args)
    return len(requests)


def shoot(url: str, flows: int, out: Path) -> None:
    """The two screenshots of the page at `url`, which lists `flows` flows."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            rows = page.locator("#flows tbody tr")
            expect(rows).to_have_count(flows, timeout=15_000)
            expect(page.locator("#live")).to_have_text("live", timeout=15_000)
            page.screenshot(path=str(out / "ui-list.png"))
            rows.last.click()  # the gzip page, the first flow made
            expect(page.locator("#d-resp-body pre")).to_contain_text("Cherry Orchard")
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.screenshot(path=str(out / "ui-detail.png"))
        finally:
            browser.close()


def main() -> None:
    """Run it all; say where the pictures are."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interceptor-shots-") as tmp:
        proxy, url = start_ui(Path(tmp) / "flows.db", Path(tmp))
        try:
            with OriginServer() as origin:
                flows = make_flows(proxy, origin)
                # The capture writer stores in batches: wait until the last flow is in.
                wait_for(lambda: len(proxy.access_entries()) >= flows, 15)
                shoot(url, flows, args.out)
        finally:
            proxy.stop()
    for name in ("ui-list.png", "ui-detail.png"):
        path = args.out / name
        print(f"{path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
