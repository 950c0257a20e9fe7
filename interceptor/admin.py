"""The admin endpoint, on its own listener: /healthz, /readyz and /metrics (Prometheus text).

Metrics are read from the one `Counters` object at scrape time by a custom collector, so the hot
path only bumps plain ints and never touches prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory, IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from . import __version__
from .metricsmerge import merge_expositions, readiness
from .process import Histogram, open_fd_count

if TYPE_CHECKING:
    from .service import ProxyService
    from .workers import Supervisor


class _Collector:
    """Turns the service's counters into metric families on each scrape."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service

    def collect(self) -> Any:
        svc = self.service
        c = svc.counters
        g = GaugeMetricFamily(
            "interceptor_connections_open", "Connections open now", labels=["side"]
        )
        for side in ("client", "upstream"):
            g.add_metric([side], c.open[side])
        yield g
        m = CounterMetricFamily(
            "interceptor_connections", "Connections accepted or made", labels=["side"]
        )
        for side in ("client", "upstream"):
            m.add_metric([side], c.total[side])
        yield m
        m = CounterMetricFamily(
            "interceptor_connection_endings",
            "Connection endings by kind: clean, half_closed, reset, aborted, timed_out, tls_failed",
            labels=["side", "ending"],
        )
        for (side, ending), n in sorted(c.endings.items()):
            m.add_metric([side, ending], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_aborts", "Aborts done by us, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.aborts.items()):
            m.add_metric([reason], n)
        yield m
        ctx = svc.ctx
        if ctx is not None:
            m = CounterMetricFamily(
                "interceptor_learned_passthrough",
                "Hosts passed through after clients kept refusing our certificate",
            )
            m.add_metric([], ctx.learned.learned_total)
            yield m
        m = CounterMetricFamily(
            "interceptor_access_refusals",
            "Clients refused by [access]: address (403) or credentials (407)",
            labels=["reason"],
        )
        for reason, n in sorted(c.refused.items()):
            m.add_metric([reason], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_responses", "Responses to clients by status class", labels=["class"]
        )
        for cls, n in sorted(c.responses.items()):
            m.add_metric([cls], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_body_bytes", "Body bytes relayed", labels=["direction"]
        )
        m.add_metric(["from_client"], c.bytes_from_client)
        m.add_metric(["to_client"], c.bytes_to_client)
        yield m
        m = CounterMetricFamily("interceptor_tls_failures", "TLS failures by side", labels=["side"])
        for side in ("client", "upstream"):
            m.add_metric([side], c.tls_failures[side])
        yield m
        m = CounterMetricFamily(
            "interceptor_tls_failure_reasons",
            "Failed TLS handshakes by side and reason: untrusted_ca, no_shared_version, "
            "closed_in_handshake (client); verify_failed, name_mismatch (upstream); other",
            labels=["side", "reason"],
        )
        for (side, reason), n in sorted(c.tls_failure_reasons.items()):
            m.add_metric([side, reason], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_responses_by_code", "Responses to clients by status code", labels=["code"]
        )
        for code, n in sorted(c.response_codes.items()):
            m.add_metric([str(code) if code else "none"], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_hook_failures",
            "Addon hooks that raised, timed out or left an invalid head",
            labels=["addon", "event"],
        )
        for (addon, event), n in sorted(c.hook_failures.items()):
            m.add_metric([addon, event], n)
        yield m
        m = CounterMetricFamily(
            "interceptor_upstream_proxy_failures",
            "Upstream-proxy connections that failed: unreachable, timeout, auth (401/407 or "
            "SOCKS credentials refused), refused (it would not connect), handshake",
            labels=["reason"],
        )
        for reason in ("unreachable", "timeout", "auth", "refused", "handshake"):
            m.add_metric([reason], c.upstream_proxy_failures[reason])
        yield m
        writer = getattr(svc, "capture", None)
        if writer is not None:
            m = CounterMetricFamily(
                "interceptor_capture_flows", "Flows handed to the capture store", labels=["result"]
            )
            m.add_metric(["written"], writer.written)
            m.add_metric(["dropped"], writer.dropped)
            m.add_metric(["failed"], writer.failed)
            yield m
            yield CounterMetricFamily(
                "interceptor_capture_dropped",
                "Flows not captured because the writer's queue was full",
                value=writer.dropped,
            )
        ctx = svc.ctx
        if ctx is not None:
            yield GaugeMetricFamily(
                "interceptor_hook_buffered_bytes",
                "Body bytes held for request/response hooks now (bounded by buffer_budget)",
                value=ctx.hooks.buffered,
            )
        yield CounterMetricFamily(
            "interceptor_sigpipe_received", "SIGPIPE signals received", value=c.sigpipe_received
        )
        yield CounterMetricFamily(
            "interceptor_sigpipe_handler_aborts",
            "Connections aborted by the SIGPIPE handler (close mode)",
            value=c.sigpipe_aborts,
        )
        pool = svc.pool
        yield GaugeMetricFamily(
            "interceptor_upstream_pool_idle",
            "Idle pooled upstream connections",
            value=pool.idle_count() if pool is not None else 0,
        )
        yield GaugeMetricFamily(
            "interceptor_open_fds", "Open file descriptors", value=open_fd_count()
        )
        minter = svc.minter
        m = CounterMetricFamily(
            "interceptor_leaf_cache", "Leaf certificate cache", labels=["result"]
        )
        m.add_metric(["hit"], minter.hits if minter is not None else 0)
        m.add_metric(["miss"], minter.misses if minter is not None else 0)
        yield m
        yield _histogram(
            "interceptor_request_duration_seconds",
            "From a request head read to its exchange's end",
            c.request_duration,
        )
        yield _histogram(
            "interceptor_time_to_first_byte_seconds",
            "From a request head read to its response head",
            c.time_to_first_byte,
        )
        yield _histogram(
            "interceptor_upstream_connect_seconds", "TCP connects to origins", c.upstream_connect
        )
        tls = HistogramMetricFamily(
            "interceptor_tls_handshake_seconds", "TLS handshakes, by side", labels=["side"]
        )
        tls.add_metric(["client"], c.client_tls.cumulative(), c.client_tls.sum)
        tls.add_metric(["upstream"], c.upstream_tls.cumulative(), c.upstream_tls.sum)
        yield tls
        info = InfoMetricFamily("interceptor_build", "The running interceptor")
        info.add_metric([], {"version": __version__})
        yield info


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, text, buckets=histogram.cumulative(), sum_value=histogram.sum
    )


class _Text(Resource):
    isLeaf = True

    def __init__(self, fn: Callable[[], tuple[int, bytes, bytes]]) -> None:
        super().__init__()
        self.fn = fn

    def render_GET(self, request: IRequest) -> bytes:
        status, ctype, body = self.fn()
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype)
        return body


class _QuietSite(Site):
    """Scrapes every few seconds would drown the access log: this site logs no requests."""

    def log(self, request: object) -> None:
        pass


def admin_site(service: ProxyService) -> Site:
    """The admin web site for `service` (a ProxyService)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    # The standard process_* metrics: memory, CPU, descriptors, start time (from /proc).
    ProcessCollector(registry=registry)

    def healthz() -> tuple[int, bytes, bytes]:
        return 200, b"text/plain", b"ok\n"

    def readyz() -> tuple[int, bytes, bytes]:
        ctx = service.ctx
        ready = service.ready and ctx is not None and not ctx.draining and service.ca is not None
        if ready:
            return 200, b"text/plain", b"ready\n"
        return 503, b"text/plain", b"not ready\n"

    def metrics() -> tuple[int, bytes, bytes]:
        return 200, CONTENT_TYPE_LATEST.encode(), bytes(generate_latest(registry))

    def learned() -> tuple[int, bytes, bytes]:
        ctx = service.ctx
        rows = ctx.learned.listing() if ctx is not None else []
        text = "".join(f"{host} {left:.0f}\n" for host, left in rows)
        return 200, b"text/plain; charset=utf-8", text.encode()

    return _site(
        passthrough=_Text(learned), healthz=_Text(healthz), readyz=_Text(readyz),
        metrics=_Text(metrics),
    )  # fmt: skip


def _site(**children: Resource) -> Site:
    root = Resource()
    for name, child in children.items():
        root.putChild(name.encode(), child)
    site = _QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


# -- the supervisor's (workers > 1): one view of every worker ------------------------------

_ASK_TIMEOUT = 2.0  # seconds a worker's admin endpoint may take to answer a scrape


class _Async(Resource):
    """A GET answered when `fn`'s Deferred fires with (status, content type, body)."""

    isLeaf = True

    def __init__(self, fn: Callable[[], Deferred[tuple[int, bytes, bytes]]]) -> None:
        super().__init__()
        self.fn = fn

    def render_GET(self, request: IRequest) -> object:
        def answer(result: tuple[int, bytes, bytes]) -> None:
            status, ctype, body = result
            request.setResponseCode(status)
            request.setHeader(b"content-type", ctype)
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            # A scrape must always be answered: a hung one is worse than a 500 saying why.
            answer((500, b"text/plain", f"{failure.getErrorMessage()}\n".encode()))

        self.fn().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """http://worker-N/... goes to worker N's admin socket."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        number = int(uri.host.decode().removeprefix("worker-"))
        path = self.supervisor.admin_socket(number)
        return UNIXClientEndpoint(self.supervisor.reactor, path, timeout=_ASK_TIMEOUT)


def supervisor_site(supervisor: Supervisor) -> Site:
    """The admin web site of a supervisor: /healthz for itself, /readyz and /metrics for
    its workers (asked on their private admin sockets, merged into one view)."""
    reactor = supervisor.reactor
    agent = Agent.usingEndpointFactory(reactor, _WorkerSockets(supervisor))
    own = CollectorRegistry(auto_describe=False)
    own.register(_SupervisorCollector(supervisor))

    def ask(number: int, path: str) -> Deferred[tuple[int, bytes] | None]:
        d = agent.request(b"GET", f"http://worker-{number}{path}".encode())

        def read(response: Any) -> Deferred[tuple[int, bytes]]:
            return readBody(response).addCallback(lambda body: (response.code, body))

        d.addCallback(read)
        d.addTimeout(_ASK_TIMEOUT, reactor)
        answer: Deferred[tuple[int, bytes] | None] = d.addErrback(lambda _: None)
        return answer  # None: no answer

    def ask_all(path: str) -> Deferred[dict[str, tuple[int, bytes] | None]]:
        numbers = sorted(supervisor.workers)
        waiting = gatherResults([ask(n, path) for n in numbers])
        names = [str(n) for n in numbers]
        return waiting.addCallback(lambda answers: dict(zip(names, answers, strict=True)))

    def healthz() -> tuple[int, bytes, bytes]:
        return 200, b"text/plain", b"ok\n"

    def readyz() -> Deferred[tuple[int, bytes, bytes]]:
        def judge(answers: dict[str, tuple[int, bytes] | None]) -> tuple[int, bytes, bytes]:
            statuses = {n: (a[0] if a is not None else None) for n, a in answers.items()}
            ready, why = readiness(statuses)
            if ready and supervisor.ready:
                return 200, b"text/plain", b"ready\n"
            return 503, b"text/plain", f"not ready: {why or 'starting or stopping'}\n".encode()

        return ask_all("/readyz").addCallback(judge)

    def metrics() -> Deferred[tuple[int, bytes, bytes]]:
        def merge(answers: dict[str, tuple[int, bytes] | None]) -> tuple[int, bytes, bytes]:
            texts = {n: a[1].decode() for n, a in answers.items() if a is not None and a[0] == 200}
            body = merge_expositions(texts).encode() + bytes(generate_latest(own))
            return 200, CONTENT_TYPE_LATEST.encode(), body

        return ask_all("/metrics").addCallback(merge)

    return _site(healthz=_Text(healthz), readyz=_Async(readyz), metrics=_Async(metrics))


class _SupervisorCollector:
    """The supervisor's own figures: its workers, and how often they were started again."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        sup = self.supervisor
        running = sum(1 for w in sup.workers.values() if not w.ended.called)
        yield GaugeMetricFamily(
            "interceptor_workers_running", "Worker processes running now", value=running
        )
        yield CounterMetricFamily(
            "interceptor_worker_restarts",
            "Workers started again after they died",
            value=sup.restarts,
        )
