"""Flow UI benchmark: how soon the first screen shows over a big capture store.

    .venv/bin/python bench/ui.py [--flows 100000] [--runs 5]

What: a store of ``--flows`` flows (default 100,000) is made directly with the capture's
``Writer`` (records shaped like the capture addon's: heads, a small JSON or HTML body, timings;
three hosts, one flow in twenty a 5xx), then a proxy of this tree serves it (``[capture] store``
is that file, the web UI on a loopback port). Debian's headless Chromium, driven by Playwright,
opens the page ``--runs`` times, each in a fresh browser context (no cache, the token moved to
its cookie again), and an init script times, from the navigation's start, DOMContentLoaded
and the first row put in the list; next to them, how long the page's own ``/api/flows``
fetch took to answer. Then, on one open
page, each filter of ``FILTERS`` is typed and Enter pressed, timed until the list is replaced
(or says it is empty): a filter that few flows match has to scan the store, which paging by
seq cannot help.

Why: the UI pages by the store's primary key so that its first screen costs one indexed query
whatever the store's size; this checks that it does, in a real browser, with the proxy's own
HTTP server, thread pool and JSON in the way.

Everything is on loopback; nothing is sent anywhere else. Prints a table (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import fmt_number, print_table

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from interceptor.capture.store import FlowRecord, Writer  # noqa: E402
from tests.support import ProxyProcess, start_proxy  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
T0 = 1_700_000_000.0
FILTERS = ("host:h1.test", "status:5xx", "method:POST url:/api/", "url:/no-such-path")
# Set on the rows shown before a filter is applied: the list is replaced once none is left.
_REPLACED = """() => {
  const rows = document.querySelector('#flows tbody').rows;
  const fresh = rows.length > 0 && !rows[0].dataset.old;
  return fresh || !document.querySelector('#empty').hidden;
}"""


def make_store(path: Path, n: int) -> float:
    """`n` flows written to a new store at `path`; the seconds it took."""
    began = time.perf_counter()
    writer = Writer(str(path), queue_size=n + 1, queue_bytes=1 << 40, max_bytes=1 << 40)
    request_heads = [("Host", ""), ("User-Agent", "curl/8.0"), ("Accept", "*/*")]
    for i in range(n):
        host = f"h{i % 3}.test"
        post = i % 4 == 0
        status = 503 if i % 20 == 0 else 200
        body = json.dumps({"id": i, "items": [i % 7, i % 11], "ok": status == 200}).encode()
        start = T0 + i * 0.01
        writer.put(
            FlowRecord(
                id=f"{i:08x}{'0' * 24}", kind="http", started=start, ended=start + 0.004,
                client=f"127.0.0.1:{40000 + i % 20000}", server=f"127.0.0.1:{8000 + i % 3}",
                method="POST" if post else "GET", url=f"http://{host}/api/items/{i}",
                host=host, http_version="HTTP/1.1",
                request_headers=[("Host", host), *request_heads[1:]],
                request_body=b'{"q": 1}' if post else None, request_size=8 if post else 0,
                status=status, reason="OK" if status == 200 else "Service Unavailable",
                response_headers=[("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))],
                response_body=body, response_size=len(body),
                timings={"start": start, "request_end": start + 0.001,
                         "response_start": start + 0.003, "end": start + 0.004},
            )
        )  # fmt: skip
    writer.close()
    if writer.written != n:
        raise SystemExit(f"the writer stored {writer.written} of {n} flows")
    return time.perf_counter() - began


def start_ui(store: Path, workdir: Path) -> tuple[ProxyProcess, str]:
    """A proxy serving `store` in its UI on loopback; the proxy and the UI's URL with token."""
    env = {"INTERCEPTOR_WEB_LISTEN": "tcp:0:interface=127.0.0.1"}
    env["INTERCEPTOR_CAPTURE_STORE"] = str(store)
    proxy = start_proxy(env=env, workdir=workdir, ready_timeout=60)
    found = proxy.wait_for_log(r"open (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", timeout=60)
    return proxy, found.group(1)


# Run before the page's own script (an init script, which the page's CSP does not apply to):
# times, from the navigation's start (the ?token= redirect included), of DOMContentLoaded, of
# each fetch (called, resolved) and of the first flow row put in the list.
_TIMES = """
window.__times = { fetches: [] };
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const called = performance.now();
  const response = await pageFetch(...args);
  window.__times.fetches.push([String(args[0]), called, performance.now()]);
  return response;
};
document.addEventListener("DOMContentLoaded", () => { window.__times.dcl = performance.now(); });
new MutationObserver((_, observer) => {
  if (document.querySelector("#flows tbody tr")) {
    window.__times.rows = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


def flows_ms(times: dict[str, Any]) -> float:
    """How long the page's last /api/flows fetch took to answer, in ms."""
    fetches = [f for f in times["fetches"] if f[0].startswith("/api/flows")]
    return float(fetches[-1][2] - fetches[-1][1]) if fetches else float("nan")


def measure(url: str, runs: int) -> list[list[object]]:
    """The table's rows: first screens, then each filter."""
    from playwright.sync_api import expect, sync_playwright

    table: list[list[object]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            screens: list[float] = []
            loaded: list[float] = []
            requests: list[float] = []
            page = None
            rows = 0
            for i in range(runs):
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(_TIMES)
                page = context.new_page()
                page.goto(url)
                expect(page.locator("#flows tbody tr").first).to_be_visible(timeout=60_000)
                times = page.evaluate("() => window.__times")
                screens.append(float(times["rows"]))
                loaded.append(float(times["dcl"]))
                requests.append(flows_ms(times))
                rows = page.locator("#flows tbody tr").count()
                if i != runs - 1:
                    context.close()
            table.append(row("first screen", screens, requests, rows, loaded))
            assert page is not None
            for expression in FILTERS:
                page.evaluate(
                    "() => { for (const r of document.querySelector('#flows tbody').rows)"
                    " r.dataset.old = '1'; }"
                )
                page.locator("#filter").fill(expression)
                began = time.perf_counter()
                page.locator("#filter").press("Enter")
                page.wait_for_function(_REPLACED, timeout=120_000)  # polled every frame
                took = (time.perf_counter() - began) * 1000
                rows = page.locator("#flows tbody tr").count()
                times = page.evaluate("() => window.__times")
                table.append(row(f"filter {expression}", [took], [flows_ms(times)], rows))
        finally:
            browser.close()
    return table


def row(
    name: str, took: list[float], api: list[float], rows: int, loaded: list[float] | None = None
) -> list[object]:
    """One line of the table: median and worst of the page's times, the API's median."""
    return [
        name,
        len(took),
        fmt_number(statistics.median(loaded)) if loaded else None,
        fmt_number(statistics.median(took)),
        fmt_number(max(took)),
        fmt_number(statistics.median(api)),
        rows,
    ]


def main() -> None:
    """Make the store, serve it, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--flows", type=int, default=100_000, help="flows in the store")
    parser.add_argument("--runs", type=int, default=5, help="page loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interceptor-ui-bench-") as tmp:
        store = Path(tmp) / "flows.db"
        made = make_store(store, args.flows)
        size = store.stat().st_size / (1 << 20)
        print(f"store: {args.flows:,} flows, {size:.0f} MiB, written in {made:.1f} s", flush=True)
        proxy, url = start_ui(store, Path(tmp))
        try:
            table = measure(url, args.runs)
        finally:
            proxy.stop()
    print_table(
        table,
        ["what", "runs", "DOM ready ms", "rows ms", "max ms", "/api/flows ms", "rows shown"],
    )
    print(
        "first screen: ms from the navigation's start (token redirect included) to DOMContentLoaded"
        " and to the first row listed; a filter: ms from Enter to the list replaced. /api/flows:"
        " the page's fetch, called to answered (median)."
    )


if __name__ == "__main__":
    main()
