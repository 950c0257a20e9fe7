"""Shared fixtures for black-box tests (the logic lives in tests/support.py).

* `origin`: a fresh scriptable OriginServer per test.
* `proxy`: one default proxy per test module (checked to be still running for each test).
* `proxy_factory`: start proxies with custom config/env for one test; all stopped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import OriginServer, ProxyLauncher, ProxyProcess


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
