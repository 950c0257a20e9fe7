"""The Grafana dashboard in deploy/grafana/: a dashboard JSON model that queries only metrics
the proxy really exposes.

* The JSON is a dashboard (schema version, a Prometheus datasource variable, an `instance`
  variable from `label_values`), and every panel but a row has at least one target with a
  PromQL expression that uses both variables.
* A real `twistd` proxy, with its admin endpoint, capture and a failing hook script on, gets
  a little of every kind of traffic over loopback: plain HTTP answered 200, 404 and 502, one
  request whose hook raises, one intercepted HTTPS request to a TLS origin, and one client
  that refuses the proxy's CA. Labelled families have no samples until something is counted,
  so this traffic makes sure that every family the dashboard reads has some. Its /metrics is
  parsed with prometheus-client, and every `interceptor_*` and `process_*` name in the
  dashboard's expressions (its panels' and its variables') must be one of the exposed
  sample names, which carry the `_total`, `_bucket`, `_count` and `_sum` suffixes.

The dashboard is read from its file, never restated here, so a metric misspelt or renamed in
either the dashboard or the proxy fails the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import certs
from tests.support import OriginServer, ProxyLauncher, free_port, respond, run_curl, wait_for
from tests.test_operations import fetch, metric_value, scrape, start_with_admin
from tests.tls_origin import TLSOrigin

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "interceptor-dashboard.json"
# The proxy's own metrics and prometheus-client's standard process collector.
METRIC_NAME = re.compile(r"\b(?:interceptor|process)_[a-z0-9_]+")
HISTOGRAMS = (
    "interceptor_request_duration_seconds",
    "interceptor_time_to_first_byte_seconds",
    "interceptor_upstream_connect_seconds",
    "interceptor_tls_handshake_seconds",
)
TIMEOUT = 10.0
CURL_CERT_ERROR = 60  # curl: the peer's certificate was not trusted

FAILING_HOOK = """\
def request(flow):
    if flow.request.path == "/hook-fails":
        raise RuntimeError("the dashboard test's failing hook")
"""

# --------------------------------------------------------------------------------------------
# The dashboard file
# --------------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON model, as Grafana would import it."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict), type(dashboard)
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data: top-level ones and those inside rows, rows themselves not."""
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every query variable (what the dashboard asks Prometheus besides panels)."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def panel_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every target expression of every panel."""
    return [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]


def referenced_metrics(expressions: list[str]) -> set[str]:
    """The `interceptor_*` and `process_*` names the expressions use."""
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def missing_metrics(expressions: list[str], exposition: str) -> set[str]:
    """The referenced names that are no sample name of the Prometheus text `exposition`."""
    exposed = {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    return referenced_metrics(expressions) - exposed


def balanced(expr: str) -> bool:
    """Whether (), [] and {} nest properly in `expr` (quoted label values skipped)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_the_dashboard_is_a_grafana_dashboard_whose_panels_all_query_prometheus() -> None:
    """Schema, variables, and a target expression using both variables in every panel."""
    dashboard = load_dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and dashboard["uid"] and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"]["uid"] == "${datasource}"
    assert variable_queries(dashboard) == ["label_values(interceptor_build_info, instance)"]

    panels = query_panels(dashboard)
    assert panels
    rows = [p for p in dashboard["panels"] if p.get("type") == "row"]
    ids = [p["id"] for p in rows + panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        where = f"panel {panel['title']!r}"
        assert panel["type"] in ("timeseries", "stat"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["targets"], f"{where} has no targets"
        for target in panel["targets"]:
            expr = target.get("expr", "")
            assert expr.strip(), f"{where}: a target without an expression"
            assert '{instance=~"$instance"' in expr, f"{where} ignores $instance: {expr}"
            assert balanced(expr), f"{where}: unbalanced brackets in {expr}"
            assert target["datasource"] == panel["datasource"], where

    expressions = panel_expressions(dashboard)
    for histogram in HISTOGRAMS:
        assert any(
            e.startswith("histogram_quantile(") and f"{histogram}_bucket" in e for e in expressions
        ), f"no quantile panel for {histogram}"
    stats = [p for p in panels if p["type"] == "stat"]
    assert any("interceptor_build_info" in t["expr"] for p in stats for t in p["targets"])


# --------------------------------------------------------------------------------------------
# A running proxy's /metrics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a proxy that has counted one of everything the dashboard reads."""
    directory = tmp_path_factory.mktemp("dashboard")
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(directory, "origin-root", root)
    untrusted_pem, _ = certs.write_pair(directory, "other-root", certs.make_origin_root("Other"))
    script = directory / "fails.py"
    script.write_text(FAILING_HOOK, encoding="utf-8")
    launcher = ProxyLauncher(directory)
    try:
        with OriginServer() as origin, TLSOrigin(*certs.good_cert(root)) as tls_origin:
            proxy, admin_port = start_with_admin(
                launcher.start,
                INTERCEPTOR_CAPTURE_STORE=str(directory / "flows.db"),
                INTERCEPTOR_HOOKS_SCRIPTS=str(script),
                INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE=str(root_pem),
            )
            ok = origin.route("/ok", respond(b"ok\n"))
            origin.route("/hook-fails", respond(b"answered all the same\n"))
            assert fetch(proxy.port, ok) == (200, b"ok\n")
            assert fetch(proxy.port, origin.url("/missing"))[0] == 404
            assert fetch(proxy.port, f"http://127.0.0.1:{free_port()}/")[0] == 502
            assert fetch(proxy.port, origin.url("/hook-fails"))[0] == 200

            ca_pem = Path(proxy.env["INTERCEPTOR_TLS_CA_DIR"]) / "ca.pem"
            wait_for(ca_pem.exists, TIMEOUT, message=f"{ca_pem} never appeared")
            https = f"https://localhost:{tls_origin.port}/1k"
            result = run_curl("-x", proxy.url, "--cacert", str(ca_pem), "-o", "/dev/null", https)
            assert result.returncode == 0, result.stderr
            refused = run_curl("-x", proxy.url, "--cacert", str(untrusted_pem), https)
            assert refused.returncode == CURL_CERT_ERROR, refused

            def counted() -> str | None:
                text = scrape(admin_port)
                hook = {"addon": "fails", "event": "request"}
                tls = {"side": "client", "reason": "untrusted_ca"}
                done = (
                    metric_value(text, "interceptor_request_duration_seconds_count", {}) >= 5
                    and metric_value(text, "interceptor_hook_failures_total", hook) >= 1
                    and metric_value(text, "interceptor_tls_failure_reasons_total", tls) >= 1
                )
                return text if done else None

            text = wait_for(
                counted,
                TIMEOUT,
                message=lambda: f"the traffic was not all counted; /metrics:\n{scrape(admin_port)}",
            )
            assert text is not None  # wait_for returns only a truthy value
            yield text
    finally:
        launcher.stop_all()


def test_every_metric_the_dashboard_queries_is_exposed(exposition: str) -> None:
    """Each `interceptor_*` and `process_*` name in an expression is an exposed sample name."""
    dashboard = load_dashboard()
    expressions = panel_expressions(dashboard) + variable_queries(dashboard)
    referenced = referenced_metrics(expressions)
    assert {f"{h}_bucket" for h in HISTOGRAMS} <= referenced, referenced
    missing = missing_metrics(expressions, exposition)
    assert not missing, f"not exposed by the proxy: {sorted(missing)}; /metrics:\n{exposition}"


def test_a_misspelt_metric_would_be_caught(exposition: str) -> None:
    """The check above can fail: one name misspelt in the dashboard is reported, alone."""
    text = DASHBOARD.read_text(encoding="utf-8")
    good = "interceptor_tls_failure_reasons_total"
    assert good in text
    misspelt = json.loads(text.replace(good, "interceptor_tls_failure_reason_total"))
    expressions = panel_expressions(misspelt) + variable_queries(misspelt)
    assert missing_metrics(expressions, exposition) == {"interceptor_tls_failure_reason_total"}
