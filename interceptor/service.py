"""The service tree: signal policy, descriptor limit, CA, listeners, admin endpoint, start/stop.

Start order: process policy (SIGPIPE, RLIMIT_NOFILE) first, so no socket exists before a dead
peer is made harmless; then the CA (a bad one stops start-up with one line); then listeners.
Stop order: stop accepting, mark draining (readiness fails), let in-flight exchanges finish up to
`shutdown_timeout`, abort the rest, close pooled connections.
"""

from __future__ import annotations

import hashlib
import inspect
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import process, tls
from .access import Access, Users
from .addons.accesslog import AccessLog
from .addons.capage import CAPage
from .addons.chain import HookChain, addon_name
from .addons.loader import AddonError, load_all
from .capture.addon import Capture
from .capture.store import StoreError, Writer
from .config import Config, resolve_admin_listen
from .hosts import HostPatterns, IPAddress, parse_ip
from .logs import AddonLogBridge, observe_stdout
from .proxy.context import OwnAddresses, ProxyContext, TunnelOwner
from .proxy.downstream import ProxyFactory
from .proxy.passthrough import LearnedPassthrough
from .proxy.session import Session
from .proxy.tunnel import TunnelUpstream, connect_tunnel
from .proxy.upstream import Pool
from .proxy.via import Route, Routes, configured_routes, read_credentials
from .web.site import WebUI
from .workers import adopt

_log = Logger(namespace="interceptor")


class StartupError(SystemExit):
    """A start-up failure shown to the user as one line, with a non-zero exit.

    A SystemExit whose message Python prints to stderr: twistd shows no traceback for it. With
    `code` 2 (the user's configuration is wrong, as for config errors) the line is written here
    and the status is 2.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        if code == 1:
            super().__init__(f"interceptor: {message}")
        else:
            sys.stderr.write(f"interceptor: {message}\n")
            super().__init__(code)


class ProxyService(Service):
    """The whole proxy as one twistd service."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        environ: Mapping[str, str] | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        # Worker N of a supervisor (workers.py): the proxy listeners are the sockets it
        # inherited (descriptors 3, 4, ...: one per proxy.listen), not its own to bind.
        self.worker = worker
        # Where `[upstream] proxy = "env"` finds its variables (the process's, by default).
        self.environ = environ if environ is not None else {}
        self.routes: Routes | None = None
        self.counters = process.Counters()
        self.registry: process.SocketRegistry | None = None
        self.ports: list[IListeningPort] = []
        self.admin_ports: list[IListeningPort] = []
        self.ctx: ProxyContext | None = None
        self.pool: Pool | None = None
        self.minter: tls.LeafMinter | None = None
        self.ca: tls.CertificateAuthority | None = None
        self.upstream_tls: tls.UpstreamTLS | None = None
        self.addons: list[object] = []
        self.hooks: HookChain | None = None
        self.capture: Writer | None = None
        self.web: WebUI | None = None
        self.web_ports: list[IListeningPort] = []
        self._log_bridge: AddonLogBridge | None = None
        self.ready = False
        self.stopper = process.Stopper(reactor, _log)

    def setServiceParent(self, parent: Any) -> Any:
        """Attach to twistd's application, and give it our stdout log observer."""
        observe_stdout(parent, self.config.log.format, self.worker)
        return super().setServiceParent(parent)

    # -- start ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # twistd opens our ports before the reactor runs and installs its SIGTERM handler; a
        # SIGTERM in between (an orchestrator that is quick to stop us) would kill the process
        # outright. Until the reactor takes over, it means "stop as soon as running".
        signal.signal(signal.SIGTERM, self._stop_when_running)
        # (a worker leaves SIGINT ignored: its supervisor turns one into SIGTERM for it)
        stop_signals = (signal.SIGTERM,) if self.worker is not None else process.STOP_SIGNALS
        self.reactor.callWhenRunning(self.stopper.install, stop_signals)
        cfg = self.config
        if cfg.proxy.sigpipe == "close":
            self.registry = process.SocketRegistry()
        mode, previous = process.apply_sigpipe_policy(
            cfg.proxy.sigpipe, self.counters, self.registry
        )
        _log.info("SIGPIPE policy {mode} (replaced {previous})", mode=mode, previous=previous)
        old, new, hard = process.raise_nofile(cfg.limits.max_open_files)
        _log.info(
            "open files limit: soft {old} -> {new} (hard {hard})", old=old, new=new, hard=hard
        )
        hcfg = cfg.hooks
        self.hooks = hooks = HookChain(
            clock=self.reactor,
            timeout=hcfg.timeout,
            counters=self.counters,
            body_limit=hcfg.body_limit,
            buffer_budget=hcfg.buffer_budget,
            reject=hcfg.body_overflow == "reject",
        )
        ca, upstream_tls = self.prepare()
        minter = self._start_tls(hooks, ca)
        self._start_addons(hooks)
        if self.capture is not None:
            ccfg = cfg.capture
            hooks.add(
                Capture(
                    self.capture,
                    self.reactor,
                    ccfg.body_limit,
                    ccfg.include,
                    ccfg.exclude,
                    ccfg.redact_headers,
                ),
                trusted=True,
            )
            _log.info("capturing flows to {path}", path=ccfg.store)
        if cfg.log.access:
            hooks.add(AccessLog(self.reactor, cfg.log.format == "json"), trusted=True)
        self.pool = pool = Pool(
            reactor=self.reactor,
            clock=self.reactor,
            counters=self.counters,
            registry=self.registry,
            size=cfg.upstream.pool_size,
            idle_timeout=cfg.upstream.pool_idle_timeout,
            connect_timeout=cfg.proxy.connect_timeout,
            hosts=cfg.upstream.hosts,
            tls_creator=upstream_tls.creator_for,
            read_timeout=cfg.upstream.read_timeout,
        )
        passthrough = HostPatterns(cfg.tls.passthrough)
        via = cfg.proxy.via_name or via_pseudonym(socket.gethostname(), cfg.proxy.listen)
        self.ctx = ProxyContext(
            clock=self.reactor,
            counters=self.counters,
            pool=pool,
            hooks=hooks,
            idle_timeout=cfg.proxy.idle_timeout,
            header_timeout=cfg.proxy.header_timeout,
            half_close_timeout=cfg.proxy.half_close_timeout,
            intercept=minter.intercept,
            passthrough=passthrough.matches if passthrough else None,
            tunnel_connect=self._tunnel_connect,
            describe_tls_failure=tls.describe_tls_failure,
            describe_client_tls_failure=tls.describe_client_tls_failure,
            eager=cfg.tls.connect == "eager",
            via=via,
            routes=self.routes,
        )
        _log.info("Via pseudonym {via}", via=via)
        if self.routes is not None and not self.routes.direct:
            _log.info("{text}", text=f"upstream: {self.routes}")
        # The proxy's own listeners first: a busy admin or UI port stops start-up before the
        # proxy's port exists, so nothing is proxied by an instance that is about to exit.
        self._start_admin()
        self._start_web(ca)
        factory = ProxyFactory(self.ctx, self.registry)
        for i, description in enumerate(cfg.proxy.listen):
            if self.worker is not None:
                self.ports.append(adopt(self.reactor, 3 + i, factory))
                _log.info("proxy accepting on {endpoint} (the supervisor's)", endpoint=description)
                continue
            self.ports.append(self._listen(description, factory, "proxy.listen"))
            _log.info("proxy listening on {endpoint}", endpoint=description)
        if self.worker is not None:
            _watch_supervisor(self.reactor, self.stopper)
        self.ctx.learned = LearnedPassthrough(
            self.reactor, cfg.tls.learn_passthrough, cfg.tls.learn_passthrough_ttl
        )
        self.ctx.access = access = self._access()
        if access.open:
            for host in beyond_loopback(p.getHost() for p in self.ports):
                _log.warn(
                    "proxy listening beyond loopback ({host}) with neither [access] allow "
                    "nor users_file: an open proxy for anyone who can reach it",
                    host=host,
                )
        self.ctx.own = OwnAddresses(
            [
                (address.host, address.port)
                for p in self.ports + self.admin_ports + self.web_ports
                if isinstance(address := p.getHost(), IPv4Address | IPv6Address)
            ],
            _local_addresses(),
        )
        self.ready = True

    def _start_addons(self, hooks: HookChain) -> None:
        """Add the user's addons to the chain, say what each handles, hear their logging."""
        scripts: dict[str, str] = {}
        for addon in self.addons:
            hooks.add(addon)
            events = ", ".join(hooks.events_of(addon)) or "nothing"
            _log.info("addon {addon} loaded: {events}", addon=addon_name(addon), events=events)
            # A script's `logging` records are known by their file: name them after it.
            module = addon if inspect.ismodule(addon) else sys.modules.get(type(addon).__module__)
            if module is not None and module.__name__.startswith("__interceptor_script_"):
                # Named as its (first) addon is everywhere else: start-up, failures, metrics.
                scripts.setdefault(str(module.__file__), addon_name(addon))
        if self.addons:
            reactor_name = type(self.reactor).__name__
            _log.info(
                "hooks: timeout {timeout:g} s, body_limit {limit}, buffer_budget {budget}, "
                "body_overflow {overflow}; reactor {reactor}",
                timeout=hooks.timeout,
                limit=hooks.body_limit,
                budget=hooks.buffer_budget,
                overflow=self.config.hooks.body_overflow,
                reactor=reactor_name,
            )
            self._log_bridge = AddonLogBridge(scripts)
            self._log_bridge.install()
            # From inside the running loop (callWhenRunning fires before the asyncio reactor's
            # loop runs): an async `running` may await asyncio.
            self.reactor.callLater(0, hooks.lifecycle, "running")

    def _access(self) -> Access:
        cfg = self.config.access
        users = None
        if cfg.users_file:
            # bcrypt checks take milliseconds by design: they run in the reactor's threads.
            def in_thread(check: Callable[[], bool]) -> defer.Deferred[bool]:
                return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), check)

            users = Users(cfg.users_file, in_thread, self.reactor)
        return Access(cfg.allow, users)

    def _stop_when_running(self, signum: int, frame: Any) -> None:
        self.stopper.stop("SIGTERM")

    def _listen(self, description: str, factory: IProtocolFactory, key: str) -> IListeningPort:
        return listen(self.reactor, description, factory, key)

    def _start_tls(self, hooks: HookChain, ca: tls.CertificateAuthority) -> tls.LeafMinter:
        """The leaf minter and the CA page, on the CA that `prepare` loaded."""
        cfg = self.config.tls
        verb = "created" if ca.created else "loaded"
        _log.info("CA certificate {verb}: {path} (trust this file)", verb=verb, path=ca.cert_path)
        if not cfg.verify_upstream:
            _log.warn("verify_upstream = false: upstream certificates are NOT checked")
        self.minter = minter = tls.LeafMinter(ca, cfg.leaf_cache_size)
        hooks.add(CAPage(cfg.ca_page_host, ca.cert_pem, ca.cert_der), trusted=True)
        return minter

    def prepare(self) -> tuple[tls.CertificateAuthority, tls.UpstreamTLS]:
        """Load what can fail on the user's input: the CA, the trust store, the addons.

        makeService calls this before twistd starts logging, so a bad CA, bundle or addon is
        reported on stderr as one line, not inside the log. Idempotent.
        """
        if self.ca is not None and self.upstream_tls is not None:
            return self.ca, self.upstream_tls
        try:
            self.addons = load_all(self.config.hooks.scripts, self.config.hooks.addons)
        except AddonError as e:
            raise StartupError(str(e), code=2) from None
        ucfg = self.config.upstream
        try:
            secret = ucfg.proxy_credentials_file
            credentials = read_credentials(secret) if secret else ""
            self.routes = configured_routes(ucfg.proxy, ucfg.no_proxy, credentials, self.environ)
        except ValueError as e:
            raise StartupError(f"upstream.proxy: {e}", code=2) from None
        ccfg = self.config.capture
        if ccfg.store and self.capture is None:
            try:
                self.capture = Writer(
                    ccfg.store,
                    max_bytes=ccfg.max_bytes,
                    on_error=lambda text: _log.error("{text}", text=text),
                )
            except StoreError as e:
                raise StartupError(f"capture.store: {e}", code=2) from None

        cfg = self.config.tls
        # Both name the setting to change, and exit 2 as a configuration error does.
        try:
            ca = tls.CertificateAuthority.load_or_create(cfg.ca_dir)
        except tls.TLSSetupError as e:
            raise StartupError(f"tls.ca_dir: {e}", code=2) from None
        except OSError as e:
            raise StartupError(f"tls.ca_dir: {cfg.ca_dir}: {e.strerror or e}", code=2) from None
        try:
            upstream_tls = tls.UpstreamTLS(cfg.verify_upstream, cfg.upstream_ca_bundle)
        except tls.TLSSetupError as e:
            raise StartupError(f"tls.upstream_ca_bundle: {e}", code=2) from None
        self.ca, self.upstream_tls = ca, upstream_tls
        return ca, upstream_tls

    def _tunnel_connect(
        self, host: str, port: int, owner: TunnelOwner, route: Route | None
    ) -> TunnelUpstream:
        cfg = self.config
        return connect_tunnel(
            self.reactor,
            self.counters,
            self.registry,
            cfg.upstream.hosts,
            cfg.proxy.connect_timeout,
            host,
            port,
            owner,
            route,
        )

    def _start_admin(self) -> None:
        if not self.config.admin.listen:
            return
        try:
            from .admin import admin_site
        except ImportError:
            return
        site = admin_site(self)
        for description in self.admin_endpoints():
            self.admin_ports.append(self._listen(description, site, "admin.listen"))
            _log.info("admin listening on {endpoint}", endpoint=description)

    def admin_endpoints(self) -> tuple[str, ...]:
        """`[admin] listen`, with "auto" made the loopback port after the first proxy port's:
        instances that differ only in `--listen` then have admin ports apart as well."""
        endpoints = resolve_admin_listen(self.config)
        if not endpoints and self.config.admin.listen:
            _log.info("admin endpoint off: [admin] listen is auto and the proxy has no TCP port")
        return endpoints

    def _start_web(self, ca: tls.CertificateAuthority) -> None:
        cfg = self.config
        if not cfg.web.listen:
            return
        token = cfg.web.token or secrets.token_urlsafe(24)

        def proxy() -> str | None:
            # Replays from the UI go through this proxy, so they are captured as well.
            first = self.ports[0].getHost() if self.ports else None
            if isinstance(first, IPv4Address | IPv6Address):
                return f"http://{_url_host(first.host)}:{first.port}"
            return None

        self.web = web = WebUI(
            cfg.capture.store,
            token,
            self.reactor,
            self.reactor.getThreadPool(),
            self.reactor,
            replay_proxy=proxy,
            replay_cacert=str(ca.cert_path),
        )
        port = self._listen(cfg.web.listen, web.site(), "web.listen")
        self.web_ports.append(port)
        address = port.getHost()
        if not isinstance(address, IPv4Address | IPv6Address):
            web.allow(cfg.web.allowed_hosts, 80)
            _log.info("web UI on {endpoint}: token {token}", endpoint=cfg.web.listen, token=token)
        else:
            names = [address.host, *cfg.web.allowed_hosts]
            if address.host in ("0.0.0.0", "::") or parse_ip(address.host) in _LOOPBACK_NAMES:
                names += ["127.0.0.1", "localhost", "::1"]
            web.allow(names, address.port)
            host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else _url_host(address.host)
            _log.info(
                "web UI on {endpoint}: open http://{host}:{port}/?token={token}",
                endpoint=cfg.web.listen, host=host, port=address.port, token=token,
            )  # fmt: skip
        if not cfg.capture.store:
            _log.warn("web UI: [capture] store is empty, so there are no flows to show")

    # -- stop ----------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.ready = False
        return defer.ensureDeferred(self._drain())

    async def _all_closed(self, ctx: ProxyContext, timeout: float) -> bool:
        """Wait until every client connection has ended (True), or `timeout` s (False)."""
        closed: defer.Deferred[None] = defer.Deferred()

        def all_closed() -> None:
            if not closed.called:  # the deadline may have come first
                closed.callback(None)

        ctx.when_closed(all_closed)
        closed.addTimeout(timeout, self.reactor)
        try:
            await closed
        except defer.TimeoutError:
            return False
        return True

    async def _drain(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            ctx.draining = True
        await defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in self.ports], consumeErrors=True
        )
        if ctx is not None:
            # Idle keep-alive clients are closed now, busy ones once their exchange is done;
            # what is still open at the deadline is cut. Both are said: a stop that takes
            # its whole timeout must not look like a hang.
            limit = self.config.proxy.shutdown_timeout
            began = self.reactor.seconds()
            busy = _in_flight(ctx.sessions)
            if busy:
                _log.info(
                    "{text}", text=f"draining: waiting up to {limit:g} s for {_listing(busy)}"
                )
            for s in list(ctx.sessions):
                s.drain()
            if await self._all_closed(ctx, limit):
                if busy:
                    took = self.reactor.seconds() - began
                    _log.info("{text}", text=f"drained: all finished in {took:.2f} s")
            else:
                cut = _listing(_in_flight(ctx.sessions))
                _log.warn(
                    "{text}", text=f"drain: shutdown_timeout ({limit:g} s) passed, cutting {cut}"
                )
                for s in list(ctx.sessions):
                    s.shutdown()
                # An aborted connection is lost on the reactor's next turn: its exchange is
                # recorded (access log, capture) then, and must be before the store closes.
                await self._all_closed(ctx, _CUT_GRACE)
        if self.pool is not None:
            self.pool.close_all()
        if self.hooks is not None and self.addons:
            # mitmproxy's `done`: once, at shutdown, with no arguments; a slow one is bounded.
            pending = self.hooks.lifecycle("done")
            if pending:
                waiting = defer.DeferredList(pending, consumeErrors=True)
                waiting.addTimeout(self.config.hooks.timeout, self.reactor)
                try:
                    await waiting
                except defer.TimeoutError:
                    pass
        if self.web is not None:
            self.web.stop()
            for p in self.web_ports:
                await defer.maybeDeferred(p.stopListening)
        if self.capture is not None:
            # What is queued is written (the writer's thread, bounded), then the file closes.
            await threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self.capture.close
            )
        if self._log_bridge is not None:
            self._log_bridge.uninstall()
        for p in self.admin_ports:
            await defer.maybeDeferred(p.stopListening)
        # twistd re-raises the stopping signal on itself after shutdown (exit status 143); a
        # drained stop is a success, and orchestrators read anything else as a crash.
        if hasattr(self.reactor, "_exitSignal"):
            self.reactor._exitSignal = None


# Seconds for the connections cut at the drain deadline to be lost (their last turn).
_CUT_GRACE = 1.0


def listen(reactor: Any, description: str, factory: IProtocolFactory, key: str) -> IListeningPort:
    """Listen on `description` for the setting `key`; a failure is one line naming both,
    exit 2 (what to change is the configuration)."""
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except ValueError as e:
        raise StartupError(f"{key}: cannot use endpoint {description!r}: {e}", code=2) from None
    result: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(result.append)
    if not result:
        raise StartupError(f"{key}: listening on {description} did not complete at start-up")
    port = result[0]
    if isinstance(port, Failure):
        raise StartupError(
            f"{key}: cannot listen on {description}: {port.getErrorMessage()}", code=2
        )
    return port


def _watch_supervisor(reactor: Any, stopper: process.Stopper) -> None:
    """A worker stops (draining) when its supervisor is gone: the pipe it has as stdin then
    closes, whatever killed the supervisor (even SIGKILL)."""
    from twisted.internet import process

    class Orphaned:
        # What a ProcessReader reports to (it was made for a child's pipes; here it reads
        # ours from the supervisor).
        def childDataReceived(self, name: str, data: bytes) -> None:
            pass

        def childConnectionLost(self, name: str, reason: Failure) -> None:
            if not stopper.stopping:
                _log.warn("{text}", text="supervisor gone: this worker stops")
                stopper.stop("supervisor gone")

    process.ProcessReader(reactor, Orphaned(), "stdin", 0).startReading()


def _in_flight(sessions: Iterable[Session]) -> list[str]:
    """What the open client connections are busy with (idle ones left out)."""
    return [what for what in (s.in_flight() for s in sessions) if what is not None]


def _listing(items: list[str], shown: int = 5) -> str:
    """ "2 exchanges: a; b", at most `shown` named and the rest counted (a drain may cut
    thousands: one line stays one line)."""
    head = "; ".join(items[:shown])
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    noun = "exchange" if len(items) == 1 else "exchanges"
    return f"{len(items)} {noun}: {head}{more}"


_LOOPBACK_NAMES = {parse_ip("127.0.0.1"), parse_ip("::1")}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _local_addresses() -> frozenset[IPAddress]:
    """This machine's addresses as its own name resolves (best effort: no network needed)."""
    found: set[IPAddress] = set()
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        infos = []
    for info in infos:
        ip = parse_ip(str(info[4][0]))
        if ip is not None:
            found.add(ip)
    return frozenset(found)


def beyond_loopback(addresses: Iterable[IAddress]) -> list[str]:
    """The hosts of the IP listening addresses not on loopback (a Unix socket is not reachable
    from the network)."""
    return [
        a.host
        for a in addresses
        if isinstance(a, IPv4Address | IPv6Address)
        and not ((ip := parse_ip(a.host)) is not None and ip.is_loopback)
    ]


def via_pseudonym(host_name: str, listen: Iterable[str]) -> str:
    """The default `[proxy] via_name`: the same for one instance across restarts, different
    for two (another machine, or other listeners), and without naming the machine."""
    seed = " ".join([host_name, *listen]).encode("utf-8", "replace")
    return "interceptor-" + hashlib.sha256(seed).hexdigest()[:10]
