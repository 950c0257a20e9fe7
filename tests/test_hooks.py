"""Hooks: the addon chain in memory, and addons changing real traffic through a real twistd."""

from __future__ import annotations

import textwrap

import pytest

from interceptor.addons.chain import HookChain
from interceptor.addons.loader import AddonError, load_addons
from interceptor.http import Client, Headers, HTTPFlow, Request
from tests.support import OriginServer, ProxyProcess, failed_start, respond, run_curl


def make_flow() -> HTTPFlow:
    flow = HTTPFlow(Client(None, 0.0), 0.0)
    flow.request = Request("GET", "http", "a.test", 80, b"/", Headers(host="a.test"))
    return flow


def test_chain_runs_addons_in_order_and_contains_failures():
    seen = []

    class First:
        def request(self, flow):
            seen.append("first")
            raise RuntimeError("boom")

    class Second:
        def request(self, flow):
            seen.append("second")

        def flow_end(self, flow):
            seen.append("end")

    chain = HookChain([First(), Second()])
    flow = make_flow()
    assert chain.run("request", flow) is None  # all synchronous: no Deferred made
    assert chain.run("response", flow) is None  # nobody listens: nothing happens
    chain.flow_end(flow)
    assert seen == ["first", "second", "end"]
    assert chain.failures == 1
    assert chain.counters.hook_failures[("first", "request")] == 1


def test_load_addons_instantiates_classes_and_takes_objects(tmp_path, monkeypatch):
    (tmp_path / "my_addons.py").write_text(
        textwrap.dedent(
            """
            class Tag:
                def request(self, flow):
                    pass

            class Helper:
                pass

            tagger = Tag()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    first, second = load_addons(["my_addons:Tag", "my_addons:tagger"])
    assert type(first).__name__ == "Tag" and type(second).__name__ == "Tag"
    for bad, words in [
        ("my_addons:Missing", "cannot load 'my_addons:Missing'"),
        ("no_such_module_xyz:X", "cannot load"),
        ("my_addons:Helper", "not an addon"),
    ]:
        with pytest.raises(AddonError) as info:
            load_addons([bad])
        assert words in str(info.value) and "\n" not in str(info.value)


ADDON_MODULE = """
from interceptor import http


class Tag:
    \"\"\"Marks requests going upstream and responses coming back; blocks one host.\"\"\"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == "blocked.test":
            flow.response = http.Response.make(403, b"blocked by policy\\n")
            return
        flow.request.headers["X-Tagged"] = "yes"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        flow.response.headers["X-Seen-By"] = "interceptor"
"""


def test_addons_change_real_traffic(tmp_path, proxy_factory, origin: OriginServer):
    (tmp_path / "traffic_addons.py").write_text(ADDON_MODULE)
    proxy: ProxyProcess = proxy_factory(
        env={
            "PYTHONPATH": str(tmp_path),
            "INTERCEPTOR_HOOKS_ADDONS": "traffic_addons:Tag",
        }
    )
    url = origin.route("/hello", respond(b"hello"))
    result = run_curl("-x", f"http://127.0.0.1:{proxy.port}", "-i", url)
    assert result.returncode == 0, result.stderr
    assert b"X-Seen-By: interceptor" in result.stdout
    assert result.stdout.endswith(b"hello")
    (req,) = origin.requests_for("/hello")
    assert req.header("X-Tagged") == "yes"
    blocked = run_curl("-x", f"http://127.0.0.1:{proxy.port}", "-i", "http://blocked.test/")
    assert blocked.stdout.startswith(b"HTTP/1.1 403 ")
    assert blocked.stdout.endswith(b"blocked by policy\n")


def test_a_bad_addon_stops_start_up_with_one_line(tmp_path):
    result = failed_start(tmp_path, INTERCEPTOR_HOOKS_ADDONS="no_such_module_xyz:Thing")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_module_xyz:Thing" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_any_awaitable_a_hook_returns_is_waited_for_and_a_failing_one_is_contained():
    class Done:
        """An awaitable that is not a coroutine (as an asyncio future or a library's is)."""

        def __await__(self):
            return iter(())

    class Broken:
        def __await__(self):
            raise RuntimeError("cannot be awaited")

    seen = []

    class Returns:
        def request(self, flow):
            flow.request.headers["X-Done"] = "1"
            return Done()

    class Fails:
        def request(self, flow):
            return Broken()

    class After:
        def request(self, flow):
            seen.append(flow.request.headers.get("X-Done"))

    chain = HookChain([Returns(), Fails(), After()])
    flow = make_flow()
    result = chain.run("request", flow)
    assert result is None or result.called  # nothing had to wait
    assert seen == ["1"]
    assert dict(chain.counters.hook_failures) == {("fails", "request"): 1}
