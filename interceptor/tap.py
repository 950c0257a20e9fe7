"""twistd glue: command-line Options and makeService, the only place that touches the reactor."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from . import __version__
from .config import ConfigError, explain_config

# (config key, option, flag): the options that override a config key, and how a printed
# configuration names them as its source.
_OVERRIDES = (
    ("proxy.listen", "listen", "--listen"),
    ("admin.listen", "admin_listen", "--admin-listen"),
)


class Options(usage.Options):
    """`twistd interceptor` options. Everything else lives in the config file (conf/)."""

    synopsis = (
        "[--config FILE] [--listen ENDPOINT ...] [--admin-listen ENDPOINT ...] [--print-config]"
    )
    longdesc = (
        "An HTTP/TLS intercepting forward proxy. By default it listens on 127.0.0.1:8080, "
        "serves /healthz, /readyz and /metrics on 127.0.0.1 at the next port (8081), keeps its "
        "CA in ~/.interceptor (ca.pem: trust it once), and hands the CA to clients at "
        "http://interceptor.ca/ through the proxy. Settings come from, in order of "
        "precedence: these options, INTERCEPTOR_<SECTION>_<KEY> environment variables, the "
        "TOML file (--config or $INTERCEPTOR_CONFIG), built-in defaults; every key is in the "
        "project's docs/configuration.md and conf/interceptor.toml. --print-config shows the "
        "settings a start with the same options and environment would use, as TOML, each "
        "value with the source it came from (secrets redacted), and exits without starting."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $INTERCEPTOR_CONFIG)."],
        # Internal: how a supervisor ([proxy] workers > 1) starts its worker N.
        ["worker", None, None, "(internal) run as worker N of a supervisor.", int],
    ]
    optFlags = [
        [
            "print-config",
            None,
            "Print the effective configuration as TOML, each value's source in a comment "
            "(secrets redacted), and exit without starting.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["admin_listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to listen on: tcp:9090:interface=127.0.0.1, or 127.0.0.1:9090 (repeatable)."""
        self["listen"].append(endpoint)

    def opt_admin_listen(self, endpoint: str) -> None:
        """Endpoint for /healthz, /readyz and /metrics, e.g. 127.0.0.1:9091 (repeatable;
        default: 127.0.0.1, the port after the first --listen port's)."""
        self["admin_listen"].append(endpoint)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"interceptor {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """Load the configuration (a one-line error and exit 2 if it is bad); with
        --print-config, print it and exit 0 instead of going on to start."""
        overrides: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for key, option, flag in _OVERRIDES:
            if self[option]:
                overrides[key] = list(self[option])
                flags[key] = flag
        try:
            # --print-config loads through this same call, so it shows what a start would use.
            explained = explain_config(self["config"], os.environ, overrides, flags)
        except ConfigError as e:
            # One line naming file and key; a SystemExit, so twistd prints no usage or traceback.
            sys.stderr.write(f"interceptor: {e}\n")
            raise SystemExit(2) from None
        if self["print-config"]:
            sys.stdout.write(explained.to_toml())
            # Raised while twistd is still parsing options: no reactor, no service, no usage.
            raise SystemExit(0)
        self.config = explained.config
        hooks = self.config.hooks
        if hooks.scripts or hooks.addons:
            use_asyncio_reactor()


def use_asyncio_reactor() -> None:
    """Addons may await asyncio (mitmproxy's are written so): that needs a running asyncio
    loop, i.e. Twisted's asyncio reactor. Installed here, before twistd imports a reactor,
    unless one was chosen already (`--reactor`): then that one stays, and asyncio awaits in
    hooks fail with a line saying why. See the README for what it costs."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def makeService(options: Options) -> IService:
    """Build the proxy service on the global reactor."""
    from twisted.internet import reactor

    if options["worker"] is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A shell starts background jobs with SIGINT ignored, and Twisted then leaves it so:
        # such a proxy would never stop on SIGINT. mitmdump does; so does this, gracefully.
        # (A worker ignores it on purpose: see workers._TWISTD.)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    from .config import workers_wanted
    from .service import ProxyService, StartupError

    config = options.config
    if options["worker"] is None and workers_wanted(config) > 1:
        from .workers import Supervisor, WorkerStartError

        supervisor = Supervisor(config, reactor, options["config"], os.environ)
        try:
            supervisor.prepare()  # the CA and every listener, before anything accepts
        except WorkerStartError as e:
            raise StartupError(str(e), code=2) from None
        return supervisor
    service = ProxyService(config, reactor, os.environ, worker=options["worker"])
    service.prepare()  # before twistd takes over stderr: a bad CA or addon is one line there
    return service
