"""Merging workers' /metrics into the supervisor's one view (interceptor/metricsmerge.py).

The inputs are real expositions: prometheus-client registries rendered by `generate_latest`, as
a worker's admin endpoint renders them, and the admin endpoint's own /metrics resource over a
stub service. Every merged output is parsed back, so what is checked is what a scraper reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.test.requesthelper import DummyRequest

from interceptor import __version__
from interceptor.admin import admin_site
from interceptor.metricsmerge import merge_expositions, readiness
from interceptor.process import Counters

Series = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> tuple[dict[str, str], dict[Series, float]]:
    """(family name -> type, series -> value) of an exposition; fails on a repeated series."""
    types: dict[str, str] = {}
    values: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"family {family.name} twice"
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in values, f"duplicate sample {key}"
            values[key] = s.value
    return types, values


def v(values: dict[Series, float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def names(values: dict[Series, float]) -> set[str]:
    return {name for name, _ in values}


def worker_exposition(n: int, *, only_here: bool = False) -> str:
    """A small realistic worker /metrics: `n` scales every figure so workers differ."""
    r = CollectorRegistry()
    requests = Counter("interceptor_requests_total", "Requests", ["side"], registry=r)
    requests.labels("client").inc(3 * n)
    requests.labels("upstream").inc(n)
    if n == 1:
        requests.labels("only_one").inc(7)  # a label set in one worker only
    duration = Histogram(
        "interceptor_request_duration_seconds", "Durations", registry=r, buckets=(0.1, 1.0)
    )
    for value in (0.05, 0.5, 5.0)[: n + 1]:
        duration.observe(value)
    tls = Histogram("interceptor_tls_seconds", "TLS", ["side"], registry=r, buckets=(0.5,))
    tls.labels("client").observe(0.25 * n)
    size = Summary("interceptor_body_size", "Sizes", registry=r)
    size.observe(100 * n)
    Gauge("interceptor_connections_open", "Open", ["side"], registry=r).labels("client").set(n)
    Gauge("interceptor_open_fds", "Fds", registry=r).set(10 + n)
    Info("interceptor_build", "The running interceptor", registry=r).info({"version": "9.9"})
    if only_here:
        Counter("interceptor_rare_total", "Only in one worker", registry=r).inc(5)
        Gauge("interceptor_rare_gauge", "Only in one worker", registry=r).set(2)
    ProcessCollector(registry=r)
    return generate_latest(r).decode()


@pytest.fixture(scope="module")
def merged() -> tuple[dict[str, str], dict[Series, float]]:
    return parse(
        merge_expositions({"1": worker_exposition(1), "2": worker_exposition(2, only_here=True)})
    )


def test_counters_are_summed_per_label_set(merged: tuple[dict, dict]) -> None:
    types, values = merged
    assert types["interceptor_requests"] == "counter"
    assert v(values, "interceptor_requests_total", side="client") == 9
    assert v(values, "interceptor_requests_total", side="upstream") == 3
    assert v(values, "interceptor_requests_total", side="only_one") == 7  # missing = 0


def test_counter_sample_names_keep_one_total(merged: tuple[dict, dict]) -> None:
    _, values = merged
    assert not any("_total_total" in name for name in names(values))
    # _created companions are dropped: no single creation time is true of a sum.
    assert not any(name.endswith("_created") for name in names(values))


def test_histograms_merge_buckets_sum_and_count(merged: tuple[dict, dict]) -> None:
    types, values = merged
    assert types["interceptor_request_duration_seconds"] == "histogram"
    h = "interceptor_request_duration_seconds"
    # Worker 1 observed 0.05, 0.5; worker 2 observed 0.05, 0.5, 5.0.
    assert v(values, f"{h}_bucket", le="0.1") == 2
    assert v(values, f"{h}_bucket", le="1.0") == 4
    assert v(values, f"{h}_bucket", le="+Inf") == 5
    assert v(values, f"{h}_count") == 5
    assert v(values, f"{h}_sum") == pytest.approx(0.05 + 0.5 + 0.05 + 0.5 + 5.0)
    # With labels: per label set and per le.
    assert v(values, "interceptor_tls_seconds_bucket", side="client", le="0.5") == 2
    assert v(values, "interceptor_tls_seconds_bucket", side="client", le="+Inf") == 2
    assert v(values, "interceptor_tls_seconds_sum", side="client") == pytest.approx(0.75)
    assert v(values, "interceptor_tls_seconds_count", side="client") == 2


def test_summaries_sum_their_sum_and_count(merged: tuple[dict, dict]) -> None:
    types, values = merged
    assert types["interceptor_body_size"] == "summary"
    assert v(values, "interceptor_body_size_sum") == 300
    assert v(values, "interceptor_body_size_count") == 2


def test_gauges_carry_a_worker_label(merged: tuple[dict, dict]) -> None:
    _, values = merged
    assert v(values, "interceptor_connections_open", side="client", worker="1") == 1
    assert v(values, "interceptor_connections_open", side="client", worker="2") == 2
    assert v(values, "interceptor_open_fds", worker="1") == 11
    assert v(values, "interceptor_open_fds", worker="2") == 12
    for name in ("process_start_time_seconds", "process_resident_memory_bytes"):
        assert {dict(labels).get("worker") for n, labels in values if n == name} == {"1", "2"}
    # Per-process CPU stays per worker too, though it is a counter.
    assert v(values, "process_cpu_seconds_total", worker="2") >= 0


def test_build_info_appears_once(merged: tuple[dict, dict]) -> None:
    _, values = merged
    infos = [labels for name, labels in values if name == "interceptor_build_info"]
    assert infos == [(("version", "9.9"),)]


def test_a_family_in_one_worker_only_is_merged(merged: tuple[dict, dict]) -> None:
    _, values = merged
    assert v(values, "interceptor_rare_total") == 5
    assert v(values, "interceptor_rare_gauge", worker="2") == 2


def test_output_round_trips() -> None:
    """Parsing the merged text and rendering it again gives the same text, so the same numbers
    and sample names (a doubled `_total` or a dropped label would show)."""
    text = merge_expositions({"1": worker_exposition(1), "2": worker_exposition(2)})
    assert render(text) == text


def render(text: str) -> str:
    """Parse `text` and render it again with prometheus-client."""

    class Fixed:
        def collect(self) -> Iterable[Metric]:
            return text_string_to_metric_families(text)

    r = CollectorRegistry(auto_describe=False)
    r.register(Fixed())
    return generate_latest(r).decode()


def test_help_is_the_first_seen_and_untyped_gets_worker_label() -> None:
    one = "# HELP a_thing First\n# TYPE a_thing gauge\na_thing 1\nloose_sample 4\n"
    two = "# HELP a_thing Second\n# TYPE a_thing gauge\na_thing 2\nloose_sample 5\n"
    text = merge_expositions({"2": two, "1": one})
    assert "# HELP a_thing First\n" in text
    _, values = parse(text)
    assert v(values, "loose_sample", worker="1") == 4
    assert v(values, "loose_sample", worker="2") == 5


def test_workers_sort_numerically() -> None:
    texts = {str(n): f"# TYPE g gauge\ng {n}\n" for n in (10, 2, 1)}
    text = merge_expositions(texts)
    assert [line.split()[0] for line in text.splitlines() if line.startswith("g{")] == [
        'g{worker="1"}',
        'g{worker="2"}',
        'g{worker="10"}',
    ]


def test_histograms_with_different_bounds_stay_cumulative() -> None:
    """Workers share bounds; if one did not, the buckets must still never decrease."""
    one = '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_count 2\nh_sum 3\n'
    two = (
        "# TYPE h histogram\n"
        'h_bucket{le="0.5"} 1\nh_bucket{le="1.0"} 3\nh_bucket{le="+Inf"} 4\nh_count 4\nh_sum 2\n'
    )
    _, values = parse(merge_expositions({"1": one, "2": two}))
    assert v(values, "h_bucket", le="0.5") == 1  # worker 1 has nothing known below 1
    assert v(values, "h_bucket", le="1") == 4  # "1" and "1.0" are one bound: first spelling
    assert v(values, "h_bucket", le="+Inf") == 6
    assert v(values, "h_count") == 6
    assert v(values, "h_sum") == 5


def test_summary_quantiles_stay_per_worker() -> None:
    """Quantiles cannot be added up: each worker's keeps a worker label; _sum/_count are summed."""

    def summary(n: int) -> str:
        return f'# TYPE s summary\ns{{quantile="0.5"}} {n}\ns_sum {10 * n}\ns_count {n}\n'

    _, values = parse(merge_expositions({"1": summary(1), "2": summary(2)}))
    assert v(values, "s", quantile="0.5", worker="1") == 1
    assert v(values, "s", quantile="0.5", worker="2") == 2
    assert v(values, "s_sum") == 30
    assert v(values, "s_count") == 3


def test_info_versions_that_differ_both_show() -> None:
    """During a rolling upgrade two versions run: one copy of each, still no worker label."""

    def info(version: str) -> str:
        name = "interceptor_build_info"
        return f'# TYPE {name} gauge\n{name}{{version="{version}"}} 1\n'

    _, values = parse(merge_expositions({"1": info("1.0"), "2": info("1.1"), "3": info("1.0")}))
    assert sorted(values) == [
        ("interceptor_build_info", (("version", "1.0"),)),
        ("interceptor_build_info", (("version", "1.1"),)),
    ]


def test_an_existing_worker_label_is_kept_as_exported_worker() -> None:
    """As Prometheus does with a clashing target label: no two series may become one."""
    text = '# TYPE g gauge\ng{worker="x"} 1\ng 2\n'
    _, values = parse(merge_expositions({"1": text, "2": text}))
    assert v(values, "g", exported_worker="x", worker="1") == 1
    assert v(values, "g", worker="1") == 2
    assert v(values, "g", exported_worker="x", worker="2") == 1
    assert len(values) == 4


def test_inconsistent_workers_still_give_a_valid_exposition() -> None:
    """Version skew: one worker types `a_total` as a counter, another leaves it untyped; one
    writes `s_count` twice. One `a_total` family comes out, and no series twice."""
    one = "# TYPE a_total counter\na_total 1\n"
    two = "a_total 2\ns_count 1\n# TYPE s summary\ns_count 1\ns_sum 3\n"
    text = merge_expositions({"1": one, "2": two})
    assert text.count("# TYPE a_total ") == 1
    types, values = parse(text)
    assert types["a"] == "counter"
    assert v(values, "a_total") == 3


def test_special_values_survive() -> None:
    text = merge_expositions({"1": "# TYPE g gauge\ng NaN\n# TYPE c_total counter\nc_total +Inf\n"})
    _, values = parse(text)
    assert math.isnan(v(values, "g", worker="1"))
    assert v(values, "c_total") == math.inf


def test_no_workers_is_an_empty_exposition() -> None:
    assert merge_expositions({}) == ""


def test_unparsable_text_names_the_worker() -> None:
    with pytest.raises(ValueError, match="worker 2"):
        merge_expositions({"1": "# TYPE g gauge\ng 1\n", "2": "g{oops 1\n"})


# The admin endpoint's real /metrics, rendered in process over a stub service


def stub_service(n: int) -> SimpleNamespace:
    """What interceptor.admin's collector reads from a ProxyService, with worker-distinct counts."""
    c = Counters()
    c.open["client"] = n
    c.total["client"] = 10 * n
    c.total["upstream"] = 5 * n
    c.responses["2xx"] = 7 * n
    c.response_codes[200] = 7 * n
    c.bytes_to_client = 1000 * n
    c.endings[("client", "clean")] = n
    for _ in range(n):
        c.request_duration.observe(0.02)
    c.client_tls.observe(0.3 * n)
    return SimpleNamespace(
        counters=c,
        ctx=SimpleNamespace(
            learned=SimpleNamespace(learned_total=n), hooks=SimpleNamespace(buffered=64 * n)
        ),
        pool=SimpleNamespace(idle_count=lambda: n),
        minter=SimpleNamespace(hits=3 * n, misses=n),
        capture=SimpleNamespace(written=n, dropped=0, failed=0),
    )


def admin_metrics(service: SimpleNamespace) -> str:
    """GET /metrics from the admin site, without a listener: the resource renders it."""
    site = admin_site(service)
    request = DummyRequest([b"metrics"])
    resource = site.getResourceFor(request)
    body = resource.render(request)
    assert request.responseCode in (None, 200)
    return body.decode()


def test_real_admin_expositions_merge() -> None:
    texts = {"1": admin_metrics(stub_service(1)), "2": admin_metrics(stub_service(2))}
    for text in texts.values():
        parse(text)  # each input is itself a valid exposition
    types, values = parse(merge_expositions(texts))
    # Every family of a worker is in the merged view, with its type.
    assert set(parse(texts["1"])[0].items()) <= set(types.items())
    assert v(values, "interceptor_connections_total", side="client") == 30
    assert v(values, "interceptor_connections_total", side="upstream") == 15
    assert v(values, "interceptor_responses_total", **{"class": "2xx"}) == 21
    assert v(values, "interceptor_responses_by_code_total", code="200") == 21
    assert v(values, "interceptor_body_bytes_total", direction="to_client") == 3000
    assert v(values, "interceptor_learned_passthrough_total") == 3
    assert v(values, "interceptor_leaf_cache_total", result="hit") == 9
    h = "interceptor_request_duration_seconds"
    assert v(values, f"{h}_bucket", le="0.025") == 3
    assert v(values, f"{h}_bucket", le="0.01") == 0
    assert v(values, f"{h}_bucket", le="+Inf") == 3
    assert v(values, f"{h}_count") == 3
    assert v(values, f"{h}_sum") == pytest.approx(0.06)
    assert v(values, "interceptor_tls_handshake_seconds_count", side="client") == 2
    assert v(values, "interceptor_tls_handshake_seconds_sum", side="client") == pytest.approx(0.9)
    assert v(values, "interceptor_connections_open", side="client", worker="2") == 2
    assert v(values, "interceptor_upstream_pool_idle", worker="1") == 1
    assert v(values, "interceptor_hook_buffered_bytes", worker="2") == 128
    assert ("interceptor_open_fds", (("worker", "1"),)) in values
    assert v(values, "interceptor_build_info", version=__version__) == 1
    assert [n for n, _ in values if n == "interceptor_build_info"] == ["interceptor_build_info"]
    assert {
        dict(labels)["worker"] for n, labels in values if n == "process_start_time_seconds"
    } == {
        "1",
        "2",
    }


# readiness


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({"1": 200, "2": 200}, (True, "all 2 workers ready")),
        ({"1": 200}, (True, "1 worker ready")),
        ({"1": 200, "2": 503}, (False, "worker 2 not ready (503)")),
        ({"1": None, "2": 200}, (False, "worker 1 did not answer")),
        (
            {"10": 503, "2": None, "1": 200},
            (False, "worker 2 did not answer; worker 10 not ready (503)"),
        ),
        ({}, (False, "no workers")),
    ],
)
def test_readiness(statuses: dict[str, int | None], expected: tuple[bool, str]) -> None:
    assert readiness(statuses) == expected
