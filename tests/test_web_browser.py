"""The flow UI in a real browser: Debian's headless Chromium driven by Playwright.

What a person does with the page, against a real proxy (`start_ui` from test_web.py): the
token moves to a cookie, earlier flows are listed, a new one arrives live, a gzip body shows
decoded, filters narrow the list (a bad one says why), the list's HAR downloads, replay
answers. The page runs under a strict CSP (`default-src 'self'`), so any console error, from
an inline style or script the policy blocked for instance, fails the test.

Chromium comes from Debian (`apt-get install chromium`, as .ci/run does), never from
`playwright install`, which downloads a browser build this project does not fetch.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import OriginServer, ProxyProcess, respond, run_curl, wait_for
from tests.test_web import TIMEOUT, UI, start_ui

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
LIVE_MS = 5_000  # a new flow must be listed this soon after it is stored
STEP_MS = 10_000  # any other wait for the page


def chromium() -> str:
    """Chromium's path, or a skip (a failure under INTERCEPTOR_CI=1) when it or Playwright is
    missing."""
    missing = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "Playwright is not installed: `.venv/bin/pip install '.[test]'`"
    if not missing and not CHROMIUM.is_file():
        missing = f"{CHROMIUM} is not installed: `apt-get install chromium`"
    if not missing:
        return str(CHROMIUM)
    if os.environ.get("INTERCEPTOR_CI") == "1":
        pytest.fail(f"INTERCEPTOR_CI=1 and {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (a page or context per test)."""
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """Every console error and uncaught exception of a page, for one final check."""

    def __init__(self, page: Page, allowed: Callable[[str, str], bool]) -> None:
        self.errors: list[str] = []
        self.allowed = allowed
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            url = str(message.location.get("url", ""))
            if not self.allowed(message.text, url):
                self.errors.append(f"{message.text} ({url})")


def rows(page: Page) -> Any:
    """The flow list's rows."""
    return page.locator("#flows tbody tr")


def curl(proxy: ProxyProcess, url: str) -> None:
    """One request through the proxy, which must get an answer."""
    result = run_curl("-x", proxy.url, url)
    assert result.returncode == 0, result.stderr


def stored(ui: UI, count: int) -> list[dict[str, Any]]:
    """Wait until the store lists `count` flows (the writer is a thread that batches)."""

    def listed() -> list[dict[str, Any]] | None:
        flows: list[dict[str, Any]] = ui.json("/api/flows")["flows"]
        return flows if len(flows) >= count else None

    found = wait_for(listed, TIMEOUT)
    assert found is not None
    return found


def test_the_page_lists_shows_filters_downloads_and_replays(
    browser: Browser,
    tmp_path: Path,
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(proxy_factory, tmp_path)
    page_url = origin.route(
        "/page",
        respond(
            gzip.compress(b"<h1>cherry</h1>"),
            headers=[("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
        ),
    )
    json_url = origin.route(
        "/api/items", respond(b'{"items": [1, 2]}', headers=[("Content-Type", "application/json")])
    )
    only_url = origin.route("/only-this", respond(b"just me"))
    later_url = origin.route("/later", respond(b"late"))
    for url in (page_url, json_url, only_url):
        curl(ui.proxy, url)
    stored(ui, 3)

    def allowed(text: str, url: str) -> bool:
        # The one error the test causes: a bad filter is a 400 that the page then explains.
        return "status of 400" in text and "/api/flows?filter=hots" in url

    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        console = Console(page, allowed)
        base = f"http://127.0.0.1:{ui.port}/"
        page.goto(f"{base}?token={ui.token}")
        # The token left the address bar for an HttpOnly, SameSite=Strict cookie.
        expect(page).to_have_url(base)
        (cookie,) = [c for c in context.cookies() if c["name"] == "interceptor_token"]
        assert cookie["value"] == ui.token and cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"

        # The flows made before the page opened, newest first.
        expect(rows(page)).to_have_count(3, timeout=STEP_MS)
        expect(rows(page).nth(0)).to_contain_text(only_url)
        expect(rows(page).nth(2)).to_contain_text(page_url)
        expect(page.locator("#live")).to_have_text("live", timeout=STEP_MS)

        # A flow made now appears on top without a reload.
        curl(ui.proxy, later_url)
        expect(rows(page).nth(0)).to_contain_text(later_url, timeout=LIVE_MS)
        expect(rows(page)).to_have_count(4)

        # Its detail: the gzip body decoded, heads, a timing bar.
        rows(page).filter(has_text=page_url).click()
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        expect(page.locator("#d-title")).to_have_text(f"GET {page_url}")
        body = page.locator("#d-resp-body")
        expect(body.locator("pre")).to_have_text("<h1>cherry</h1>")
        expect(body).to_contain_text("decoded from gzip")
        expect(page.locator("#d-resp-heads")).to_contain_text("Content-Encoding")
        expect(page.locator("#d-timing .bar span").first).to_be_attached()
        expect(rows(page).filter(has_text=page_url)).to_have_class(re.compile(r"\bselected\b"))

        # Replay goes through the proxy and says what came back.
        page.locator("#replay").click()
        expect(page.locator("#action-result")).to_contain_text("HTTP/1.1 200 OK", timeout=STEP_MS)
        # The replay is captured too, and listed live, marked as one.
        expect(rows(page).nth(0)).to_contain_text("↻", timeout=LIVE_MS)

        # A filter narrows the list; the HAR link follows it.
        page.locator("#filter").fill("url:/only-this")
        page.locator("#filter").press("Enter")
        expect(rows(page)).to_have_count(1, timeout=STEP_MS)
        expect(rows(page).nth(0)).to_contain_text(only_url)
        with page.expect_download(timeout=STEP_MS) as download:
            page.locator("#har-all").click()
        har = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert [e["request"]["url"] for e in har["log"]["entries"]] == [only_url]
        assert download.value.suggested_filename == "flows.har"

        # A bad filter says why, and leaves the list as it was.
        page.locator("#filter").fill("hots:x")
        page.locator("#filter").press("Enter")
        expect(page.locator("#notice")).to_contain_text("unknown filter term", timeout=STEP_MS)
        expect(page.locator("#filter")).to_have_class(re.compile(r"\bbad\b"))
        expect(rows(page)).to_have_count(1)

        # Cleared, the whole list is back and live again.
        page.locator("#filter").fill("")
        page.locator("#filter").press("Enter")
        expect(page.locator("#notice")).to_be_hidden(timeout=STEP_MS)
        expect(rows(page)).to_have_count(5, timeout=STEP_MS)
        with page.expect_download(timeout=STEP_MS) as download:
            page.locator("#har-all").click()
        har = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert len(har["log"]["entries"]) == 5
        expect(page.locator("#live")).to_have_text("live", timeout=STEP_MS)
        assert console.errors == []
    finally:
        context.close()


def test_without_the_token_the_page_is_403(
    browser: Browser,
    tmp_path: Path,
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
) -> None:
    ui = start_ui(proxy_factory, tmp_path)
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"http://127.0.0.1:{ui.port}/")
        assert response is not None and response.status == 403
        assert "needs its token" in page.locator("body").inner_text()
        assert context.cookies() == []
    finally:
        context.close()
