"""Worker processes: `[proxy] workers` above 1 makes the twistd process their supervisor.

The supervisor binds every proxy listener itself, before anything accepts, so a busy port is
still one line and exit 2. It binds each one once per worker with SO_REUSEPORT and hands worker
N its own set of sockets: the kernel then spreads new connections over the workers by a hash
of their addresses. (One socket shared by all workers balances worse: Twisted accepts up to a
hundred connections per wake-up, so whichever worker wakes first takes a whole burst.)

Workers are ordinary `twistd -n interceptor` processes started with `--worker N`: the same
service, which adopts the inherited sockets instead of listening, serves its admin endpoint on
a private Unix socket, and applies the SIGPIPE policy and descriptor limit itself. They share
the supervisor's stdout, and their log lines carry their worker id. The supervisor creates the
CA first, serves /healthz, /readyz (ready when every worker is) and /metrics (the workers'
merged: see metricsmerge), restarts a worker that dies with backoff, stops the proxy when one
keeps dying, and on SIGTERM or SIGINT has every worker drain, then exits 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import tls
from .config import Config, resolve_admin_listen, workers_wanted
from .logs import observe_stdout
from .process import Stopper

_log = Logger(namespace="interceptor")

# A worker that dies is started again after BACKOFF[i] seconds for its i-th death in a row;
# DEATHS deaths within WINDOW seconds stop the proxy (it would only keep failing).
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
DEATHS = 5
WINDOW = 60.0
# Seconds past shutdown_timeout a worker may take to exit before it is killed.
MARGIN = 5.0

# A worker is twistd run by this interpreter. CPython ignores SIGPIPE as it starts; a worker
# begins with the disposition the supervisor was started with instead (as a proxy started
# the same way would), and applies [proxy] sigpipe from there. It ignores SIGINT for its
# whole life: a terminal's Ctrl-C goes to the whole process group, and the supervisor turns
# it into the one SIGTERM each worker drains on (a SIGINT of its own would race that one, or
# kill a worker that has just finished draining, when Twisted has put the default back).
_TWISTD = (
    "import signal, sys; signal.signal(signal.SIGPIPE, signal.{disposition}); "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


class WorkerStartError(Exception):
    """The supervisor cannot start: the message is one line naming the setting."""


def listen_sockets(
    descriptions: tuple[str, ...], count: int, reactor: Any
) -> list[list[socket.socket]]:
    """For each worker, one listening socket per proxy endpoint, all bound with SO_REUSEPORT.

    :raises WorkerStartError: an endpoint that is not TCP, or that cannot be bound.
    """
    per_endpoint: list[list[socket.socket]] = []
    try:
        for description in descriptions:
            try:
                endpoint = endpoints.serverFromString(reactor, description)
            except ValueError as e:
                raise WorkerStartError(
                    f"proxy.listen: cannot use endpoint {description!r}: {e}"
                ) from None
            if isinstance(endpoint, endpoints.TCP6ServerEndpoint):
                family = socket.AF_INET6
            elif isinstance(endpoint, endpoints.TCP4ServerEndpoint):
                family = socket.AF_INET
            else:
                raise WorkerStartError(
                    f"proxy.listen: {description} is not a TCP endpoint: workers share TCP "
                    "listeners only (proxy.workers = 1 serves any endpoint)"
                )
            host = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            port = endpoint._port
            backlog = endpoint._backlog
            per_endpoint.append(_bind_all(description, family, host, port, backlog, count))
    except BaseException:
        for group in per_endpoint:
            for sock in group:
                sock.close()
        raise
    return [[group[i] for group in per_endpoint] for i in range(count)]


def _bind_all(
    description: str, family: int, host: str, port: int, backlog: int, count: int
) -> list[socket.socket]:
    # A port some other program holds with SO_REUSEPORT too (another supervisor on the same
    # port) would be shared silently: a plain bind first says whether it is free.
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: the one the kernel chose, for every worker
    except OSError as e:
        probe.close()
        raise WorkerStartError(
            f"proxy.listen: cannot listen on {description}: {e.strerror or e}"
        ) from None
    probe.close()
    bound: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as e:
        for sock in bound:
            sock.close()
        raise WorkerStartError(
            f"proxy.listen: cannot listen on {description}: {e.strerror or e}"
        ) from None
    return bound


def adopt(reactor: Any, fd: int, factory: IProtocolFactory) -> IListeningPort:
    """In a worker: accept on the listening socket the supervisor handed down as `fd`."""
    sock = socket.socket(fileno=fd)
    try:
        port: IListeningPort = reactor.adoptStreamPort(fd, sock.family, factory)
    finally:
        sock.close()  # a listening socket, not a connection: adoptStreamPort holds a duplicate
    return port


class _Worker(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = getattr(self.transport, "pid", None)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)

    def signal(self, sig: int) -> None:
        """Send `sig`, unless the process is gone already."""
        if self.transport is not None and self.pid is not None:
            try:
                self.transport.signalProcess(sig)
            except Exception:  # ProcessExitedAlready: it is ending on its own
                pass


class Supervisor(Service):
    """The twistd service when `[proxy] workers` > 1: binds, starts and watches the workers."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        config_path: str | None,
        environ: Mapping[str, str],
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.config_path = config_path
        self.environ = dict(environ)
        self.count = workers_wanted(config)
        self.sockets: list[list[socket.socket]] = []
        self.workers: dict[int, _Worker] = {}
        self.deaths: dict[int, deque[float]] = {}
        self.restarts = 0
        self.failed = False  # a worker kept dying: the exit status says so
        self.admin_ports: list[IListeningPort] = []
        self.stopping = False
        self.ready = False
        self.stopper = Stopper(reactor, _log)
        self.sockdir = ""
        # How SIGPIPE was set when this process started (twistd leaves it alone): the
        # workers start with the same.
        launched = signal.getsignal(signal.SIGPIPE)
        self.sigpipe_launched = "SIG_DFL" if launched == signal.SIG_DFL else "SIG_IGN"

    # -- start ---------------------------------------------------------------------------------

    def setServiceParent(self, parent: Any) -> Any:
        """Attach to twistd's application with our stdout log observer (as ProxyService)."""
        observe_stdout(parent, self.config.log.format)
        return super().setServiceParent(parent)

    def prepare(self) -> None:
        """What can fail on the user's input, before twistd logs: the addons (loaded here to
        be checked: a bad one is one line, not workers dying one after another) and the CA
        (created once, here, not by racing workers). Raises WorkerStartError. The listeners
        are bound in startService, the admin endpoint first, as a single proxy binds them."""
        from .addons.loader import AddonError, load_all

        try:
            load_all(self.config.hooks.scripts, self.config.hooks.addons)
        except AddonError as e:
            raise WorkerStartError(str(e)) from None
        try:
            tls.CertificateAuthority.load_or_create(self.config.tls.ca_dir)
        except tls.TLSSetupError as e:
            raise WorkerStartError(f"tls.ca_dir: {e}") from None
        except OSError as e:
            where = self.config.tls.ca_dir
            raise WorkerStartError(f"tls.ca_dir: {where}: {e.strerror or e}") from None
        # The workers' admin sockets: private to this user.
        self.sockdir = tempfile.mkdtemp(prefix="interceptor-workers-")

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self.stopper.install)
        from .admin import supervisor_site
        from .service import StartupError, listen

        if self.config.proxy.sigpipe != "inherit":
            # The supervisor writes to no client; a closed stdout must not kill it either.
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        # The admin listener first, as a single proxy does: a busy admin port stops start-up
        # (one line naming admin.listen, exit 2) before any proxy socket exists.
        site = supervisor_site(self)
        for description in resolve_admin_listen(self.config):
            self.admin_ports.append(listen(self.reactor, description, site, "admin.listen"))
            _log.info("admin listening on {endpoint}", endpoint=description)
        try:
            self.sockets = listen_sockets(self.config.proxy.listen, self.count, self.reactor)
        except WorkerStartError as e:
            raise StartupError(str(e), code=2) from None
        _log.info(
            "{text}",
            text=f"supervisor: {self.count} workers on "
            + ", ".join(self.config.proxy.listen)
            + " (SO_REUSEPORT, one socket each)",
        )
        for number in range(1, self.count + 1):
            self._spawn(number)
        self.ready = True

    def admin_socket(self, number: int) -> str:
        """Where worker `number` serves its admin endpoint."""
        return os.path.join(self.sockdir, f"worker-{number}.sock")

    def _spawn(self, number: int) -> None:
        if self.stopping:
            return
        worker = _Worker(self, number)
        self.workers[number] = worker
        code = _TWISTD.format(disposition=self.sigpipe_launched)
        args = [sys.executable, "-c", code, "-n", "--pidfile=", "interceptor"]
        if self.config_path:
            args += ["--config", self.config_path]
        for description in self.config.proxy.listen:
            args += ["--listen", description]
        args += ["--admin-listen", f"unix:{self.admin_socket(number)}", "--worker", str(number)]
        env = dict(self.environ)
        if number != 1:
            env["INTERCEPTOR_WEB_LISTEN"] = ""  # the flow UI: worker 1 serves it
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        for i, sock in enumerate(self.sockets[number - 1]):
            child_fds[3 + i] = sock.fileno()
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=child_fds)
        _log.info("{text}", text=f"worker {number} started (pid {worker.pid})")

    # -- watching ------------------------------------------------------------------------------

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        """A worker exited: expected while stopping, else logged and started again."""
        how = _exit_text(reason)
        if self.stopping:
            _log.info("{text}", text=f"worker {worker.number} (pid {worker.pid}) {how}")
            return
        now = self.reactor.seconds()
        deaths = self.deaths.setdefault(worker.number, deque(maxlen=DEATHS))
        deaths.append(now)
        if len(deaths) == DEATHS and now - deaths[0] <= WINDOW:
            _log.error(
                "{text}",
                text=f"worker {worker.number} keeps dying ({how}, {DEATHS} times in "
                f"{now - deaths[0]:.0f} s): stopping the proxy",
            )
            self.failed = True
            self.stopper.stop("a worker keeps dying")
            return
        delay = BACKOFF[min(len(deaths), len(BACKOFF)) - 1]
        _log.warn(
            "{text}",
            text=f"worker {worker.number} (pid {worker.pid}) {how}: starting it again in "
            f"{delay:g} s",
        )
        self.restarts += 1
        self.reactor.callLater(delay, self._spawn, worker.number)

    # -- stop ----------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.ready = False
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        running = [w for w in self.workers.values() if not w.ended.called]
        for worker in running:
            worker.signal(signal.SIGTERM)  # each drains, as a single proxy does
        waiting = defer.DeferredList([w.ended for w in running], consumeErrors=True)
        waiting.addTimeout(self.config.proxy.shutdown_timeout + MARGIN, self.reactor)
        try:
            await waiting
        except defer.TimeoutError:
            for worker in running:
                if not worker.ended.called:
                    _log.warn("{text}", text=f"worker {worker.number} did not stop: killing it")
                    worker.signal(signal.SIGKILL)
        for port in self.admin_ports:
            await defer.maybeDeferred(port.stopListening)
        for group in self.sockets:
            for sock in group:
                sock.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)
        if self.failed:
            # One clear line was logged; the exit status says it too.
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        elif hasattr(self.reactor, "_exitSignal"):
            self.reactor._exitSignal = None  # a drained stop is a success (as ProxyService)


def _exit_text(reason: Failure) -> str:
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"
