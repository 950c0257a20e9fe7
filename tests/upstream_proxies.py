"""Real upstream proxies on loopback for the upstream-proxy tests: tinyproxy and microsocks.

The proxy is tested leaving through the proxies people really run, not through fakes written
to match our own reading of the RFCs:

* `TinyProxy`: Debian's `tinyproxy` (1.11) as the HTTP upstream proxy, plain or with
  BasicAuth. It forwards absolute-form requests and opens CONNECT tunnels, adds
  `Via: 1.1 <host> (tinyproxy/1.11.x)` to what it forwards, and logs every request.
* `MicroSocks`: Debian's `microsocks` (1.0.3) as the SOCKS5 server, with or without a
  user/password (RFC 1929). It logs every connection it opens.

Both are started in `__init__` (running and listening when the constructor returns), are
`LoggedProcess`es (`port`, `log_path`, `log_text()`, `wait_for_log()`, `stop()`) and context
managers, and listen on 127.0.0.1 only. The pytest fixtures (`tinyproxy`, `tinyproxy_auth`,
`socks5`, in conftest.py) call `require_tool()` first, so a missing binary skips the test
(fails it under INTERCEPTOR_CI=1, where .ci/run has installed both).

What these proxies answer, as observed with tinyproxy 1.11.1 and microsocks 1.0.3 / curl 7.88
(tests/test_upstream_proxies_fixtures.py pins it):

* tinyproxy with BasicAuth, no Proxy-Authorization: `407 Proxy Authentication Required` with
  `Proxy-Authenticate: Basic realm="Tinyproxy"`; wrong credentials: `401 Unauthorized` with
  `WWW-Authenticate` (a tinyproxy 1.11 quirk: most proxies say 407 both times). Both on
  HTTP/1.0 with `Connection: close`, for CONNECT as for plain requests.
* tinyproxy CONNECT to a port outside `connect_ports`: `403 Access violation`.
* microsocks with a user: a client offering no user/password method is refused ("No
  authentication method was acceptable", curl exit 97), a wrong password is rejected
  ("User was rejected by the SOCKS5 server (1 2)", curl exit 97).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from tests.support import LOOPBACK, LoggedProcess, free_port, stop_process

TINYPROXY_USER, TINYPROXY_PASSWORD = "alice", "pw"
SOCKS5_USER, SOCKS5_PASSWORD = "u", "p"

# Where Debian's packages put the binaries (tinyproxy: /usr/bin; other builds use /usr/sbin,
# which is not on every user's PATH).
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")
# tinyproxy's stderr when its Port is taken (it exits at once, status 71).
_TINYPROXY_BIND_FAILED = "Could not create listening sockets"


class UpstreamStartError(RuntimeError):
    """An upstream proxy exited or never listened; the message includes its output."""


def find_tool(name: str) -> str | None:
    """The path of executable `name` on PATH or in the sbin directories, or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """The path of `name` (an apt package of the same name), or a skip (a failure under
    INTERCEPTOR_CI=1, where .ci/run has installed it), like the HAR and browser tests."""
    import pytest

    path = find_tool(name)
    if path is not None:
        return path
    missing = f"{name} is not installed: `apt-get install {name}` (.ci/run does)"
    if os.environ.get("INTERCEPTOR_CI") == "1":
        pytest.fail(f"INTERCEPTOR_CI=1 and {missing}")
    pytest.skip(missing)


def listening_ports(pid: int) -> set[int]:
    """The IPv4 TCP ports process `pid` itself listens on (Linux /proc; empty once it is gone).

    Asking the process rather than connecting to the port tells "our daemon is ready" from
    "something else took the port", and reads the port a daemon told to bind port 0 got.
    """
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        table = Path(f"/proc/{pid}/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return set()
    ports = set()
    for line in table:
        # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _await_listening(
    popen: subprocess.Popen[bytes], port: int | None, timeout: float
) -> int | None:
    """Poll until `popen` listens on `port` (on any port if None): that port. None if it exits
    or `timeout` passes first (the caller tells which from `popen.poll()`)."""
    deadline = time.monotonic() + timeout
    while popen.poll() is None:
        ports = listening_ports(popen.pid)
        if port is None and ports:
            return min(ports)
        if port in ports:
            return port
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
    return None


def _credentials(user: str | None, password: str | None) -> str:
    """`user:password@`, percent-encoded for a URL ("" without a user)."""
    if user is None:
        return ""
    return f"{quote(user, safe='')}:{quote(password or '', safe='')}@"


def _check_credentials(user: str | None, password: str | None) -> None:
    if (user is None) != (password is None):
        raise ValueError("give both user and password, or neither")


def _start_failed(what: str, popen: subprocess.Popen[bytes], cmd: list[str], *logs: Path) -> str:
    """Stop `popen` and describe why it did not come up, with the content of `logs`."""
    exited = popen.poll() is not None
    stop_process(popen, 5)
    state = f"exited with {popen.returncode}" if exited else "never listened"
    parts = [f"{what} {state}: {' '.join(cmd)}"]
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        parts.append(f"--- {log.name} ---\n{text}")
    return "\n".join(parts)


class TinyProxy(LoggedProcess):
    """`tinyproxy -d -c <generated config>` listening on 127.0.0.1 on a free port.

    * `workdir`: a fresh `tinyproxy-*` directory is made inside it (so one workdir can host
      several) for the config (`tinyproxy.conf`), the log (`tinyproxy.log`, LogLevel Info:
      every client connection and request line) and the process's own stdout/stderr
      (`tinyproxy.out`: start-up errors go there, not to the log).
    * `user`/`password`: `BasicAuth user password`; then every request, CONNECT included,
      must carry matching Proxy-Authorization (see the module docstring for the answers).
    * `connect_ports`: the ports CONNECT may reach. Empty (the default) writes no
      `ConnectPort` line, which tinyproxy takes as "every port" (the 443/563 limit is only in
      the stock /etc/tinyproxy config; `ConnectPort 0` would forbid CONNECT altogether).

    No `User`/`Group` lines: tinyproxy then keeps the current user (root in CI, with a
    "You SHOULD set a UserName" warning in its log), so it needs no account of its own and
    its files stay the test's.
    tinyproxy cannot bind port 0, so the port comes from `free_port()` and start-up retries
    with another one when tinyproxy reports it taken. Ready means tinyproxy itself listens.
    """

    def __init__(
        self,
        workdir: Path,
        user: str | None = None,
        password: str | None = None,
        connect_ports: Sequence[int] = (),
        *,
        ready_timeout: float = 10.0,
        attempts: int = 3,
    ) -> None:
        _check_credentials(user, password)
        self.user, self.password = user, password
        self.connect_ports = tuple(connect_ports)
        binary = find_tool("tinyproxy") or "tinyproxy"
        Path(workdir).mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            self.workdir = Path(tempfile.mkdtemp(prefix="tinyproxy-", dir=workdir))
            port = free_port()
            log_path = self.workdir / "tinyproxy.log"
            self.config_path = self.workdir / "tinyproxy.conf"
            self.config_path.write_text(self.config_text(port, log_path), encoding="utf-8")
            self.output_path = self.workdir / "tinyproxy.out"
            self.cmd = [binary, "-d", "-c", str(self.config_path)]
            popen = _spawn(self.cmd, self.workdir, self.output_path)
            if _await_listening(popen, port, ready_timeout) == port:
                super().__init__(popen, port, log_path)
                return
            report = _start_failed("tinyproxy", popen, self.cmd, self.output_path, log_path)
            if attempt + 1 < attempts and _TINYPROXY_BIND_FAILED in report:
                continue  # someone took the free port between free_port() and the bind
            raise UpstreamStartError(report)
        raise AssertionError("unreachable")  # pragma: no cover

    def config_text(self, port: int, log_path: Path) -> str:
        """The tinyproxy.conf for listening on `port` and logging to `log_path`."""
        lines = [
            f"Listen {LOOPBACK}",
            f"Port {port}",
            f"Allow {LOOPBACK}",
            f'LogFile "{log_path}"',
            "LogLevel Info",
            "MaxClients 50",
            # An idle tunnel or keep-alive client is dropped after this long, so a test that
            # forgets a connection cannot keep a thread busy for the default 10 minutes.
            "Timeout 60",
        ]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        """`http://[user:password@]127.0.0.1:PORT`: curl's `-x`, an upstream proxy setting."""
        return f"http://{_credentials(self.user, self.password)}{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, without scheme or credentials."""
        return f"{LOOPBACK}:{self.port}"

    def requests_logged(self) -> list[str]:
        """Every request line tinyproxy logged so far (`GET http://h:p/x HTTP/1.1`, `CONNECT
        h:p HTTP/1.1`), in order: which requests reached it. It logs the line before checking
        BasicAuth or ConnectPort, so refused requests are listed too; a forwarded one is
        followed by `Established connection to host "h"`."""
        marker = "]: Request (file descriptor "
        out = []
        for line in self.log_text().splitlines():
            if marker in line:
                out.append(line.split("): ", 1)[1])
        return out


class MicroSocks(LoggedProcess):
    """`microsocks -i 127.0.0.1 -p 0 [-u USER -P PASSWORD]`: a SOCKS5 server on loopback.

    It binds port 0 and `port` is read from the kernel (its own listening socket), so there
    is no race for a free port. Its stderr and stdout go to `log_path`
    (`<workdir>/microsocks-*/microsocks.log`; `workdir` defaults to a fresh temporary
    directory): microsocks 1.0.3 logs `client[N] 127.0.0.1: connected to HOST:PORT` for each
    connection it opens (HOST as the client sent it: a name with socks5h, an address with
    socks5) and nothing for refused authentication.
    """

    def __init__(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        workdir: Path | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        _check_credentials(user, password)
        self.user, self.password = user, password
        base = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="microsocks-", dir=base))
        log_path = self.workdir / "microsocks.log"
        binary = find_tool("microsocks") or "microsocks"
        self.cmd = [binary, "-i", LOOPBACK, "-p", "0"]
        if user is not None:
            self.cmd += ["-u", user, "-P", password or ""]
        popen = _spawn(self.cmd, self.workdir, log_path)
        port = _await_listening(popen, None, ready_timeout)
        if port is None:
            raise UpstreamStartError(_start_failed("microsocks", popen, self.cmd, log_path))
        super().__init__(popen, port, log_path)

    @property
    def url(self) -> str:
        """`socks5://[user:password@]127.0.0.1:PORT` (the client resolves names)."""
        return f"socks5://{_credentials(self.user, self.password)}{LOOPBACK}:{self.port}"

    @property
    def url_h(self) -> str:
        """`socks5h://[user:password@]127.0.0.1:PORT` (names are sent to microsocks)."""
        return "socks5h" + self.url.removeprefix("socks5")

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, without scheme or credentials (curl's `--socks5`)."""
        return f"{LOOPBACK}:{self.port}"

    def connections_logged(self) -> list[str]:
        """Every `HOST:PORT` microsocks connected to for a client so far, in order."""
        marker = ": connected to "
        return [line.split(marker, 1)[1] for line in self.log_text().splitlines() if marker in line]


def _spawn(cmd: list[str], cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` in `cwd` with stdout and stderr appended to `output`, no stdin."""
    with open(output, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
