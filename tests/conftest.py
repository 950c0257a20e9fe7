"""Shared fixtures for black-box tests (the logic lives in tests/support.py).

* `origin`: a fresh scriptable OriginServer per test.
* `tls_origin`: a TLS origin for localhost per module, and the root its certificate chains to.
* `proxy`: one default proxy per test module (checked to be still running for each test).
* `proxy_factory`: start proxies with custom config/env for one test; all stopped afterwards.
* `tinyproxy`, `tinyproxy_auth`, `socks5`: real upstream proxies on loopback, one per test
  (tests/upstream_proxies.py); skipped when the binary is missing, failed under INTERCEPTOR_CI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import certs
from tests.support import OriginServer, ProxyLauncher, ProxyProcess
from tests.tls_origin import TLSOrigin
from tests.upstream_proxies import (
    SOCKS5_PASSWORD,
    SOCKS5_USER,
    TINYPROXY_PASSWORD,
    TINYPROXY_USER,
    MicroSocks,
    TinyProxy,
    require_tool,
)


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TLSOrigin, Path]]:
    """A TLS origin serving /fruit.html, and the root its certificate chains to."""
    directory = tmp_path_factory.mktemp("pki")
    root = certs.make_origin_root()
    root_pem, _ = certs.write_pair(directory, "root", root)
    with TLSOrigin(*certs.good_cert(root)) as origin:
        yield origin, root_pem


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    """A started OriginServer, stopped at teardown."""
    with OriginServer() as server:
        yield server


@pytest.fixture(scope="module")
def _module_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    launcher = ProxyLauncher(tmp_path_factory.mktemp("proxy"))
    try:
        yield launcher.start()
    finally:
        launcher.stop_all()


@pytest.fixture
def proxy(_module_proxy: ProxyProcess) -> ProxyProcess:
    """The module's default proxy; fails fast if an earlier test left it dead."""
    if not _module_proxy.running():
        pytest.fail(
            f"the module proxy exited ({_module_proxy.returncode}); log tail:\n"
            + _module_proxy.log_tail()
        )
    return _module_proxy


@pytest.fixture
def proxy_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ProxyProcess]]:
    """`start(config_text="", env=None, **start_proxy_kwargs) -> ProxyProcess`, stopped after."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("proxy"))
    try:
        yield launcher.start
    finally:
        launcher.stop_all()


# -- real upstream proxies (tests/upstream_proxies.py) ---------------------------------------
# Function-scoped: each starts in milliseconds, and a fresh one per test means its log holds
# only that test's traffic, so "its log shows the request" needs no bookkeeping.


@pytest.fixture
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A tinyproxy without authentication, CONNECT allowed to every port."""
    require_tool("tinyproxy")
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy")) as upstream:
        yield upstream


@pytest.fixture
def tinyproxy_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A tinyproxy with `BasicAuth alice pw` (TINYPROXY_USER, TINYPROXY_PASSWORD)."""
    require_tool("tinyproxy")
    workdir = tmp_path_factory.mktemp("tinyproxy")
    with TinyProxy(workdir, TINYPROXY_USER, TINYPROXY_PASSWORD) as upstream:
        yield upstream


@pytest.fixture
def socks5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MicroSocks]:
    """A microsocks SOCKS5 server with user "u", password "p" (SOCKS5_USER, SOCKS5_PASSWORD)."""
    require_tool("microsocks")
    workdir = tmp_path_factory.mktemp("microsocks")
    with MicroSocks(SOCKS5_USER, SOCKS5_PASSWORD, workdir=workdir) as upstream:
        yield upstream
