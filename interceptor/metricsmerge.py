"""One /metrics view of several worker processes (issue 14): merge their Prometheus expositions.

The supervisor scrapes each worker's admin endpoint and must answer its own /metrics as if it
were one proxy. This module is pure (no I/O, no Twisted): text in, text out, so the rules below
can be tested on real expositions without starting processes.

Rules, per metric family (families are matched by name across workers; one present in only
some workers is still merged, the others counting as absent, i.e. 0 for sums):

* counter: summed per label set. The merged counter is the proxy's total; a worker restart
  looks like any counter reset to `rate()`.
* histogram (and gauge histogram): `_bucket` summed per label set and `le`, `_sum` and `_count`
  summed per label set. Workers share bucket bounds; if they ever did not, each worker's
  cumulative count at a bound it lacks is taken from its nearest lower bound, so the merged
  buckets stay cumulative (never decreasing) and `+Inf` still equals `_count`.
* summary: `_sum` and `_count` summed per label set; quantiles cannot be added up, so each
  worker's quantile samples are kept with a `worker` label.
* `*_created` (a counter's, histogram's or summary's creation time, which prometheus-client's
  text format writes as a separate gauge family): dropped. A sum over workers resets whenever
  any of them restarts, so no single creation time is true of it, the minimum included.
* info families (type `info`, or any family whose name ends in `_info`, such as
  `interceptor_build_info`): the same in every worker by nature, so one copy of each distinct
  label set and no `worker` label. During a rolling upgrade both versions show, which is true.
* families named `process_*` (prometheus-client's ProcessCollector): describe one OS process,
  so every sample keeps a `worker` label, counters (`process_cpu_seconds_total`) included;
  PromQL can still `sum()` them.
* gauge, untyped/unknown, stateset, anything else: one sample per worker with a `worker` label
  added (the other labels kept). A sample that already carries a `worker` label has it
  renamed `exported_worker`, as Prometheus renames a scraped label that clashes with a target
  label, so that no two samples become the same series.

HELP: the first non-empty one seen, in worker order ("1", "2", ... "10": numeric ids sort as
numbers). Type: the first seen. Timestamps are dropped from sums (they belong to one worker)
and kept on per-worker samples; exemplars are dropped (the text format has no place for them).
Within one worker a repeated series (invalid input) counts once: the last one wins.

Counter sample names come out exactly as the input wrote them when they end in `_total`, as
every prometheus-client counter's does: the parser hands over the family name without `_total`
and the samples with it, and the output is rendered from those same two names. (A counter whose
samples lack `_total` is given it by the parser, and prometheus-client cannot write otherwise.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["WORKER_LABEL", "merge_expositions", "merge_families", "readiness"]

WORKER_LABEL = "worker"

# Families whose samples are sums, and so whose `_created` companions are dropped.
_SUMMED_TYPES = frozenset({"counter", "histogram", "gaugehistogram", "summary"})
_HISTOGRAM_TYPES = frozenset({"histogram", "gaugehistogram"})
# Per-process figures: summing two processes' memory or start time means nothing.
_PER_PROCESS_PREFIXES = ("process_",)

# A series within a family: its sample name and its labels, order-free.
_LabelKey = tuple[tuple[str, str], ...]
_SeriesKey = tuple[str, _LabelKey]


def _label_key(labels: Mapping[str, str]) -> _LabelKey:
    return tuple(sorted(labels.items()))


def _worker_order(worker: str) -> tuple[int, int, str]:
    """Sort key for worker ids: "2" before "10", non-numeric ids after the numeric ones."""
    if worker.isdigit():
        return (0, int(worker), "")
    return (1, 0, worker)


def _written_name(metric: Metric) -> str:
    """The name generate_latest writes a family's HELP and TYPE under."""
    if metric.type == "counter":
        return f"{metric.name}_total"
    if metric.type == "info":
        return f"{metric.name}_info"
    return metric.name


@dataclass
class _Family:
    """One family as seen across workers: each worker's samples by series, in arrival order."""

    name: str
    type: str
    documentation: str
    samples: dict[str, dict[_SeriesKey, Sample]] = field(default_factory=dict)


def merge_families(families: Mapping[str, Iterable[Metric]]) -> list[Metric]:
    """Merge each worker's parsed metric families (keyed by worker id) into one list.

    `families` maps a worker id to what `text_string_to_metric_families` gave for its /metrics.
    The result follows the module's rules and is in first-seen order, workers taken in id order.
    """
    # Keyed by the name the family is written under: a counter `x` is written `x_total`, and
    # an untyped `x_total` from another worker must join it, not become a second `x_total`.
    merged: dict[str, _Family] = {}
    for worker in sorted(families, key=_worker_order):
        for metric in families[worker]:
            written_as = _written_name(metric)
            fam = merged.get(written_as)
            if fam is None:
                fam = merged[written_as] = _Family(metric.name, metric.type, metric.documentation)
            elif not fam.documentation:
                fam.documentation = metric.documentation
            own = fam.samples.setdefault(worker, {})
            for sample in metric.samples:
                own[(sample.name, _label_key(sample.labels))] = sample

    # `X_created` gauges are companions of the summed family X: see the module docstring.
    created = {f"{f.name}_created" for f in merged.values() if f.type in _SUMMED_TYPES}
    out: list[Metric] = []
    # Inconsistent input (one worker naming a series in two families, or two workers typing a
    # family differently) could still yield one series twice, which a scraper rejects whole:
    # the first one wins.
    written: set[_SeriesKey] = set()
    for fam in merged.values():
        if fam.name in created:
            continue
        metric = Metric(fam.name, fam.documentation, fam.type)
        for sample in _merge_samples(fam):
            series = (sample.name, _label_key(sample.labels))
            if series not in written:
                written.add(series)
                metric.samples.append(sample)
        out.append(metric)
    return out


def _merge_samples(fam: _Family) -> Iterator[Sample]:
    """The samples of one merged family, by the rule its name and type call for."""
    # Drop `_created` samples too when they come inside the family (OpenMetrics-style input).
    created = f"{fam.name}_created"
    per_worker = {
        worker: [s for s in samples.values() if s.name != created]
        for worker, samples in fam.samples.items()
    }
    if fam.type == "info" or fam.name.endswith("_info"):
        return _one_copy(per_worker)
    if fam.name.startswith(_PER_PROCESS_PREFIXES):
        return _per_worker(per_worker)
    if fam.type == "counter":
        return _summed(per_worker)
    if fam.type in _HISTOGRAM_TYPES:
        return _histogram(fam.name, per_worker)
    if fam.type == "summary":
        quantiles = {w: [s for s in ss if "quantile" in s.labels] for w, ss in per_worker.items()}
        rest = {w: [s for s in ss if "quantile" not in s.labels] for w, ss in per_worker.items()}
        return iter([*_summed(rest), *_per_worker(quantiles)])
    return _per_worker(per_worker)


def _one_copy(per_worker: Mapping[str, list[Sample]]) -> Iterator[Sample]:
    seen: set[_SeriesKey] = set()
    for samples in per_worker.values():
        for s in samples:
            key = (s.name, _label_key(s.labels))
            if key not in seen:
                seen.add(key)
                yield Sample(s.name, dict(s.labels), s.value)


def _with_worker(labels: Mapping[str, str], worker: str) -> dict[str, str]:
    out = dict(labels)
    if WORKER_LABEL in out:
        # Replacing it could make two of the worker's series one: keep it under another name.
        name = f"exported_{WORKER_LABEL}"
        while name in out:
            name = f"exported_{name}"
        out[name] = out.pop(WORKER_LABEL)
    out[WORKER_LABEL] = worker
    return out


def _per_worker(per_worker: Mapping[str, list[Sample]]) -> Iterator[Sample]:
    for worker, samples in per_worker.items():
        for s in samples:
            yield Sample(s.name, _with_worker(s.labels, worker), s.value, s.timestamp)


def _summed(per_worker: Mapping[str, list[Sample]]) -> Iterator[Sample]:
    # First-seen order, so the output reads like one worker's exposition.
    totals: dict[_SeriesKey, Sample] = {}
    for samples in per_worker.values():
        for s in samples:
            key = (s.name, _label_key(s.labels))
            prev = totals.get(key)
            value = s.value if prev is None else prev.value + s.value
            totals[key] = Sample(s.name, dict(s.labels), value)
    return iter(totals.values())


def _bound(le: str | None) -> float | None:
    """A bucket's upper bound as a number ("1", "1.0" and "1e0" are one bucket), or None."""
    if le is None:
        return None
    try:
        return float(le)
    except ValueError:
        return None


@dataclass
class _Series:
    """One histogram series (its labels bar `le`): buckets per worker, and its other samples."""

    labels: dict[str, str]
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # worker -> le -> n
    le_text: dict[float, str] = field(default_factory=dict)  # how `le` was first written
    others: dict[_SeriesKey, None] = field(default_factory=dict)  # _count, _sum: in order


def _histogram(name: str, per_worker: Mapping[str, list[Sample]]) -> Iterator[Sample]:
    bucket_name = f"{name}_bucket"
    series: dict[_LabelKey, _Series] = {}
    others: dict[str, list[Sample]] = {}
    for worker, samples in per_worker.items():
        for s in samples:
            bound = _bound(s.labels.get("le")) if s.name == bucket_name else None
            if bound is None:
                labels = dict(s.labels)
            else:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
            one = series.setdefault(_label_key(labels), _Series(labels))
            if bound is None:
                one.others[(s.name, _label_key(s.labels))] = None
                others.setdefault(worker, []).append(s)
            else:
                one.buckets.setdefault(worker, {})[bound] = s.value
                one.le_text.setdefault(bound, s.labels["le"])
    # _count and _sum are plain sums; index them so each series' come right after its buckets.
    sums = {(s.name, _label_key(s.labels)): s for s in _summed(others)}
    for one in series.values():
        yield from _merged_buckets(bucket_name, one)
        for key in one.others:
            yield sums[key]


def _merged_buckets(bucket_name: str, one: _Series) -> Iterator[Sample]:
    bounds = sorted(one.le_text)
    totals = [0.0] * len(bounds)
    for own in one.buckets.values():
        own_bounds = sorted(own)
        for i, bound in enumerate(bounds):
            # The worker's count at its largest bound <= this one: exact when bounds are shared,
            # a lower bound otherwise, and cumulative either way.
            j = bisect_right(own_bounds, bound)
            if j:
                totals[i] += own[own_bounds[j - 1]]
    for bound, total in zip(bounds, totals, strict=True):
        yield Sample(bucket_name, {**one.labels, "le": one.le_text[bound]}, total)


class _Fixed:
    """A collector that yields families already built: how a merged view gets rendered."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def merge_expositions(texts: Mapping[str, str]) -> str:
    """Merge each worker's /metrics text (keyed by worker id: "1", "2", ...) into one exposition.

    Returns Prometheus text format 0.0.4, rendered by prometheus-client, that parses back to the
    merged numbers. Raises ValueError naming the worker whose text does not parse.
    """
    families: dict[str, list[Metric]] = {}
    for worker, text in texts.items():
        try:
            families[worker] = list(text_string_to_metric_families(text))
        except ValueError as exc:  # what the parser raises on text it cannot read
            raise ValueError(f"worker {worker}: /metrics does not parse: {exc}") from exc
    # A throwaway registry: auto_describe off, so no collector is called at registration.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merge_families(families)))
    return generate_latest(registry).decode("utf-8")


def readiness(statuses: Mapping[str, int | None]) -> tuple[bool, str]:
    """Whether the supervisor is ready, from each worker's /readyz status (None: no answer).

    Ready iff there is at least one worker and every one answered 200. The reason is one line:
    "all 2 workers ready", or the workers that are not, e.g. "worker 2 not ready (503); worker 3
    did not answer".
    """
    if not statuses:
        return False, "no workers"
    problems = []
    for worker in sorted(statuses, key=_worker_order):
        status = statuses[worker]
        if status is None:
            problems.append(f"worker {worker} did not answer")
        elif status != 200:
            problems.append(f"worker {worker} not ready ({status})")
    if problems:
        return False, "; ".join(problems)
    n = len(statuses)
    return True, "1 worker ready" if n == 1 else f"all {n} workers ready"
