"""Black-box TLS interception tests: a real twistd proxy, loopback HTTPS origins, curl, `ssl`.

The proxy is only ever driven over loopback TCP. Origins are `tests.tls_origin.TLSOrigin`
instances presenting certificates from `tests.certs`: a good one signed by a throw-away "origin
root" (given to the proxy as `tls.upstream_ca_bundle`), and expired, wrong-name, self-signed and
unknown-issuer ones. Clients are curl and Python's `ssl` speaking through `CONNECT`.

Covered: byte-exact transfers through intercepted TLS (names, IPv4 and IPv6 literals, 10 MiB),
one tunnel for several requests, what the client's certificate looks like (issuer = proxy CA,
matching SAN), 502s naming the upstream verification failure without leaking the origin's
content, the bundle making a self-signed origin acceptable, passthrough tunnels, minting many
names without stalling other clients, CA file modes and a corrupt key at start-up, the CA
download page, ALPN, and a ClientHello pipelined behind the CONNECT head.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests import certs
from tests.support import (
    BASE_ENV,
    LOOPBACK,
    TWISTD,
    AccessEntry,
    HTTPResponse,
    IncompleteResponse,
    OriginServer,
    ProxyLauncher,
    ProxyProcess,
    RawConnection,
    exchange,
    free_port,
    get,
    respond,
    run_curl,
    wait_for,
)
from tests.tls_origin import MARKER, TLSOrigin, body_for

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
CURL_CERT_ERROR = 60  # "peer certificate cannot be authenticated with known CA certificates"


# --- PKI, origins and proxies ----------------------------------------------------------------


@dataclass
class PKI:
    """Origin-side certificates for this module, as PEM pairs and files in `directory`.

    `root_pem` is the origin root (what the proxy gets as its upstream bundle); `bundle_with_self`
    holds the origin root plus the self-signed origin certificate.
    """

    directory: Path
    root: certs.PemPair
    root_pem: Path
    other_root: certs.PemPair
    good: certs.PemPair
    expired: certs.PemPair
    wrong_name: certs.PemPair
    self_signed: certs.PemPair
    unknown_ca: certs.PemPair
    bundle_with_self: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One origin root and every origin certificate the module uses."""
    directory = tmp_path_factory.mktemp("pki")
    root = certs.make_origin_root()
    other_root = certs.make_origin_root("Some Other Root")
    root_pem, _ = certs.write_pair(directory, "origin-root", root)
    self_signed = certs.self_signed_cert()
    bundle = directory / "bundle-with-self-signed.pem"
    bundle.write_bytes(root[0] + self_signed[0])
    return PKI(
        directory=directory,
        root=root,
        root_pem=root_pem,
        other_root=other_root,
        good=certs.make_server_cert(root, ("localhost",), ("127.0.0.1", "::1")),
        expired=certs.expired_cert(root),
        wrong_name=certs.wrong_name_cert(root),
        self_signed=self_signed,
        unknown_ca=certs.good_cert(other_root),
        bundle_with_self=bundle,
    )


@pytest.fixture(scope="module")
def origins(pki: PKI) -> Iterator[dict[str, TLSOrigin]]:
    """Running TLS origins by kind: good (also on ::1), expired, wrong-name, self-signed, ..."""
    made: dict[str, TLSOrigin] = {}
    try:
        made["good"] = TLSOrigin(*pki.good, ipv6=True)
        # Large transfers get their own origin (so their own pooled upstream connections).
        made["bulk"] = TLSOrigin(*pki.good)
        made["expired"] = TLSOrigin(*pki.expired)
        made["wrong-name"] = TLSOrigin(*pki.wrong_name)
        made["self-signed"] = TLSOrigin(*pki.self_signed)
        made["unknown-ca"] = TLSOrigin(*pki.unknown_ca)
        yield made
    finally:
        for origin in made.values():
            origin.stop()


@pytest.fixture(scope="module")
def _launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLauncher]:
    launcher = ProxyLauncher(tmp_path_factory.mktemp("tls-proxy"))
    try:
        yield launcher
    finally:
        launcher.stop_all()


def _start(launcher: ProxyLauncher, pki: PKI, **env: str) -> ProxyProcess:
    """A proxy trusting the origins' root, with `env` on top."""
    return launcher.start(env={"INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(pki.root_pem), **env})


@pytest.fixture(scope="module")
def _module_tls_proxy(_launcher: ProxyLauncher, pki: PKI) -> ProxyProcess:
    return _start(_launcher, pki)


@pytest.fixture(scope="module")
def lazy_proxy(_launcher: ProxyLauncher, pki: PKI) -> ProxyProcess:
    """An intercepting proxy that answers CONNECT before connecting ([tls] connect = "lazy")."""
    return _start(_launcher, pki, INTERCEPTOR_TLS_CONNECT="lazy")


@pytest.fixture(scope="module")
def passthrough_proxy(_launcher: ProxyLauncher, pki: PKI) -> ProxyProcess:
    """A proxy tunnelling `localhost` opaquely (INTERCEPTOR_TLS_PASSTHROUGH=localhost)."""
    return _start(_launcher, pki, INTERCEPTOR_TLS_PASSTHROUGH="localhost")


@pytest.fixture
def tls_proxy(_module_tls_proxy: ProxyProcess) -> ProxyProcess:
    """The module's intercepting proxy (upstream bundle = origin root); must still be running."""
    if not _module_tls_proxy.running():
        pytest.fail(
            f"the TLS proxy exited ({_module_tls_proxy.returncode}); log tail:\n"
            + _module_tls_proxy.log_tail()
        )
    return _module_tls_proxy


# --- helpers ---------------------------------------------------------------------------------


def ca_dir(proxy: ProxyProcess) -> Path:
    """The proxy's CA directory (start_proxy points INTERCEPTOR_TLS_CA_DIR at it)."""
    return Path(proxy.env["INTERCEPTOR_TLS_CA_DIR"])


def ca_pem(proxy: ProxyProcess) -> Path:
    """`<ca_dir>/ca.pem`, once the proxy has written it."""
    path = ca_dir(proxy) / "ca.pem"
    wait_for(path.exists, TIMEOUT, message=f"{path} never appeared")
    return path


def ca_certificate(proxy: ProxyProcess) -> x509.Certificate:
    """The proxy's CA certificate as read from disk."""
    return x509.load_pem_x509_certificate(ca_pem(proxy).read_bytes())


def client_context(cafile: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A verifying client context trusting only `cafile` (hostname checks on)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect_head(authority: str) -> bytes:
    """A CONNECT request head for `authority` (host:port)."""
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def url_host(host: str) -> str:
    """`host` as written in a URL authority (IPv6 literals bracketed)."""
    return f"[{host}]" if ":" in host else host


class TLSTunnel(RawConnection):
    """A client TLS connection through the proxy: CONNECT, then a handshake over the tunnel.

    After construction `self.sock` is the `ssl.SSLSocket`, so the inherited `send` and
    `read_response` speak HTTP inside the tunnel. `server_hostname` is the SNI name and the
    name verified (Python sends no SNI for IP literals). Raises AssertionError if the CONNECT
    is not answered with 200, `ssl.SSLError` if the handshake fails.
    """

    def __init__(
        self,
        proxy_port: int,
        authority: str,
        context: ssl.SSLContext,
        server_hostname: str,
        timeout: float = TIMEOUT,
    ) -> None:
        super().__init__(proxy_port, timeout=timeout)
        try:
            self.send(connect_head(authority))
            self.connect_head = self.read_until(b"\r\n\r\n")
            assert self.connect_head.startswith(b"HTTP/1.1 200 "), self.connect_head
            assert not self.buf, f"bytes before the handshake: {bytes(self.buf)!r}"
            self.sock.settimeout(timeout)
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException:
            self.close()
            raise

    @property
    def tls(self) -> ssl.SSLSocket:
        """The TLS socket."""
        assert isinstance(self.sock, ssl.SSLSocket)
        return self.sock

    def peer_certificate(self) -> x509.Certificate:
        """The certificate the other end of the tunnel presented."""
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def get(self, path: str, host: str) -> HTTPResponse:
        """Send an origin-form GET for `path` (Host: `host`) and read its response."""
        self.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("ascii"))
        return self.read_response()


def san_of(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses as text) from the certificate's subjectAltName."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


def assert_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """`cert` names `issuer`'s subject as issuer and carries a valid signature by it."""
    assert cert.issuer == issuer.subject, (cert.issuer, issuer.subject)
    cert.verify_directly_issued_by(issuer)


def curl_https(
    proxy: ProxyProcess, url: str, cacert: Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    """curl through `proxy` (CONNECT) trusting only `cacert`."""
    return run_curl("-x", proxy.url, "--cacert", str(cacert), *extra, url)


def new_entries(proxy: ProxyProcess, before: int) -> list[AccessEntry]:
    """Access entries logged after the first `before` ones."""
    return proxy.access_entries()[before:]


# --- 1. interception: content, the certificate the client sees ----------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_intercepted_fetch_is_byte_exact_and_signed_by_proxy_ca(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin], pki: PKI, host: str
) -> None:
    origin = origins["good"]
    port = origin.ports.get("127.0.0.1" if host == "localhost" else host)
    if port is None:
        pytest.skip(f"no origin listener on {host}")
    authority = f"{url_host(host)}:{port}"
    url = f"https://{authority}/1k"
    cafile = ca_pem(tls_proxy)

    result = curl_https(tls_proxy, url, cafile)
    assert result.returncode == 0, result.stderr.decode() + tls_proxy.log_tail()
    assert result.stdout == body_for("/1k")

    # The certificate a client sees: minted for this host, issued and signed by the proxy CA.
    with TLSTunnel(tls_proxy.port, authority, client_context(cafile), host) as tunnel:
        leaf = tunnel.peer_certificate()
        resp = tunnel.get("/1k", authority)
    assert resp.status == 200 and resp.body == body_for("/1k")
    assert_issued_by(leaf, ca_certificate(tls_proxy))
    # Connected first (eager), the leaf names the requested host and copies the origin's
    # names (localhost, 127.0.0.1, ::1): a client that connects by IP, without SNI, or by
    # another name of the same server, gets a certificate that matches.
    dns, ips = san_of(leaf)
    assert dns == ["localhost"] and sorted(ips) == ["127.0.0.1", "::1"], (dns, ips)
    assert (host in dns) or (host in ips)

    # The origin's own root is not what the client is shown.
    result = curl_https(tls_proxy, url, pki.root_pem)
    assert result.returncode == CURL_CERT_ERROR, (result.returncode, result.stderr)
    assert result.stdout == b""


def test_origin_root_alone_does_not_verify_the_intercepted_connection(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin], pki: PKI
) -> None:
    authority = f"localhost:{origins['good'].port}"
    with pytest.raises(ssl.SSLCertVerificationError):
        TLSTunnel(tls_proxy.port, authority, client_context(pki.root_pem), "localhost").close()


def test_sni_name_wins_over_connect_authority(
    tls_proxy: ProxyProcess, lazy_proxy: ProxyProcess, origins: dict[str, TLSOrigin]
) -> None:
    """CONNECT to an IP literal with SNI `localhost`: the leaf is valid for the SNI name (here
    the one the origin's names gave it); with lazy connects it is minted for that name alone."""
    authority = f"127.0.0.1:{origins['good'].port}"
    ctx = client_context(ca_pem(tls_proxy))
    with TLSTunnel(tls_proxy.port, authority, ctx, "localhost") as tunnel:
        dns, ips = san_of(tunnel.peer_certificate())
    assert "localhost" in dns and "127.0.0.1" in ips
    lazy_ctx = client_context(ca_pem(lazy_proxy))
    with TLSTunnel(lazy_proxy.port, authority, lazy_ctx, "localhost") as tunnel:
        assert san_of(tunnel.peer_certificate()) == (["localhost"], [])


# --- 2. large bodies and one tunnel for several requests -----------------------------------


def test_ten_mebibytes_cross_intercepted_tls_byte_exact(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin]
) -> None:
    url = f"https://localhost:{origins['bulk'].port}/10m"
    started = time.monotonic()
    result = curl_https(tls_proxy, url, ca_pem(tls_proxy))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode() + tls_proxy.log_tail()
    expected = body_for("/10m")
    assert len(result.stdout) == len(expected) == 10 * 1024 * 1024
    assert result.stdout == expected
    print(f"10 MiB through intercepted TLS in {elapsed:.2f}s")


def fetch_slowly(tunnel: TLSTunnel, authority: str, size: int, chunk: int) -> int:
    """GET `/<size>` inside `tunnel`, reading the body `chunk` bytes per recv; body length read.

    Small reads keep the proxy's client-side send buffer full, so the proxy has to pause
    reading its upstream (backpressure) while it relays the response.
    """
    tunnel.send(f"GET /{size} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii"))
    head = tunnel.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    got = len(tunnel.read_available(0))
    tunnel.sock.settimeout(TIMEOUT)
    for _ in range(size // chunk + 100):
        if got >= size:
            break
        data = tunnel.tls.recv(chunk)
        if not data:
            break
        got += len(data)
    return got


def test_pooled_upstream_still_read_after_backpressured_response(
    _launcher: ProxyLauncher, pki: PKI
) -> None:
    """After a large response relayed under backpressure, the next request is answered.

    Whether the proxy happens to be paused when a response ends depends on timing, so this
    repeats (bounded) with varying sizes and read sizes; each round reuses the one pooled
    upstream connection.
    """
    proxy = _launcher.start(env={"INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(pki.root_pem)})
    ctx = client_context(ca_pem(proxy))
    with TLSOrigin(*pki.good) as origin:
        authority = f"localhost:{origin.port}"
        for round_no in range(60):
            size = 1024 * 1024 + 4099 * round_no
            chunk = (1024, 4096, 65536)[round_no % 3]
            with TLSTunnel(proxy.port, authority, ctx, "localhost") as tunnel:
                assert fetch_slowly(tunnel, authority, size, chunk) == size
            responses = origin.responses
            with TLSTunnel(proxy.port, authority, ctx, "localhost", timeout=3) as tunnel:
                try:
                    resp = tunnel.get("/1k", authority)
                except (IncompleteResponse, TimeoutError) as e:
                    wait_for(lambda n=responses: origin.responses > n, TIMEOUT)
                    raise AssertionError(
                        f"round {round_no}: GET /1k after a {size}-byte response got no "
                        f"response in 3 s although the origin sent it (origin accepts="
                        f"{origin.accepts}, requests={origin.requests[-2:]}); "
                        f"proxy log tail:\n{proxy.log_tail(4)}"
                    ) from e
            assert resp.status == 200 and resp.body == body_for("/1k")


def test_three_requests_in_one_curl_share_one_tunnel(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin]
) -> None:
    origin = origins["good"]
    base = f"https://localhost:{origin.port}"
    # Small bodies: see test_pooled_upstream_still_read_after_backpressured_response for why.
    paths = ["/1k", "/3k", "/2k"]
    before_log = len(tls_proxy.access_entries())
    before_accepts = origin.accepts
    urls = [base + p for p in paths]
    result = run_curl("-x", tls_proxy.url, "--cacert", str(ca_pem(tls_proxy)), "-v", *urls)
    assert result.returncode == 0, result.stderr.decode() + tls_proxy.log_tail()
    assert result.stdout == b"".join(body_for(p) or b"" for p in paths)
    verbose = result.stderr.decode("utf-8", "replace")
    assert len(re.findall(r"(?i)re-?using existing", verbose)) == 2, verbose

    # Inner requests are logged when they finish, the CONNECT before any of them.
    def logged() -> list[AccessEntry] | None:
        entries = new_entries(tls_proxy, before_log)
        done = [e for e in entries if e.method == "GET" and e.url.startswith(base)]
        return entries if len(done) >= len(paths) else None

    entries = wait_for(logged, TIMEOUT, message=lambda: tls_proxy.log_tail())
    # A CONNECT is logged by its target, host:port (as Squid and mitmproxy show it).
    connects = [e for e in entries if e.method == "CONNECT" and "https://" + e.url == base]
    gets = [e for e in entries if e.method == "GET" and e.url.startswith(base)]
    assert len(connects) == 1, entries
    assert [e.url for e in gets] == [base + p for p in paths], entries
    assert all(e.status == 200 for e in gets), entries
    # And the proxy reused its upstream connection too (an idle pooled one may already exist).
    assert origin.accepts - before_accepts <= 1


# --- 3. upstream verification failures -----------------------------------------------------


BAD_ORIGINS = {
    "expired": "upstream certificate verify failed: certificate has expired",
    "self-signed": "upstream certificate verify failed: self-signed certificate",
    "unknown-ca": "upstream certificate verify failed: unable to get local issuer certificate",
    "wrong-name": "upstream name mismatch: certificate is not valid for localhost",
}


@pytest.mark.parametrize("kind", list(BAD_ORIGINS))
def test_bad_origin_certificate_gives_502_naming_the_cause(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin], kind: str
) -> None:
    origin = origins[kind]
    authority = f"localhost:{origin.port}"
    ctx = client_context(ca_pem(tls_proxy))
    with TLSTunnel(tls_proxy.port, authority, ctx, "localhost") as tunnel:
        first = tunnel.get("/marker", authority)
        # The tunnel survives the 502: the next request on it is answered the same way.
        second = tunnel.get("/marker", authority)
    for resp in (first, second):
        assert resp.status == 502, resp.raw[:500]
        assert (resp.header("content-type") or "").startswith("text/plain"), resp.headers
        text = resp.body.decode("utf-8", "replace")
        assert BAD_ORIGINS[kind] in text, text
        assert MARKER not in resp.raw
    if kind == "wrong-name":
        assert "wrong.example" in first.body.decode(), first.body
    assert origin.requests == [], "a request reached an origin that failed verification"

    # curl sees the same 502, and nothing of the origin's content.
    result = curl_https(
        tls_proxy, f"https://{authority}/marker", ca_pem(tls_proxy), "-w", "\n%{http_code}"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"\n502"), result.stdout
    assert BAD_ORIGINS[kind].encode() in result.stdout
    assert MARKER not in result.stdout


def test_self_signed_origin_passes_when_in_upstream_bundle(
    _launcher: ProxyLauncher, origins: dict[str, TLSOrigin], pki: PKI
) -> None:
    proxy = _launcher.start(env={"INTERCEPTOR_TLS_UPSTREAM_CA_BUNDLE": str(pki.bundle_with_self)})
    origin = origins["self-signed"]
    result = curl_https(proxy, f"https://localhost:{origin.port}/marker", ca_pem(proxy))
    assert result.returncode == 0, result.stderr.decode() + proxy.log_tail()
    assert result.stdout == MARKER
    # Only that certificate was added: another unknown issuer is still refused.
    other = origins["unknown-ca"]
    result = curl_https(
        proxy, f"https://localhost:{other.port}/marker", ca_pem(proxy), "-w", "\n%{http_code}"
    )
    assert result.stdout.endswith(b"\n502") and MARKER not in result.stdout, result.stdout


def test_verify_upstream_false_accepts_bad_origins_and_says_so(
    _launcher: ProxyLauncher, origins: dict[str, TLSOrigin]
) -> None:
    proxy = _launcher.start(env={"INTERCEPTOR_TLS_VERIFY_UPSTREAM": "false"})
    proxy.wait_for_log(r"verify_upstream = false: upstream certificates are NOT checked")
    for kind in ("self-signed", "expired", "wrong-name"):
        origin = origins[kind]
        result = curl_https(proxy, f"https://localhost:{origin.port}/marker", ca_pem(proxy))
        assert result.returncode == 0, kind + result.stderr.decode() + proxy.log_tail()
        assert result.stdout == MARKER, kind


def test_a_json_access_line_gives_id_upstream_tls_and_timings(
    _launcher: ProxyLauncher, pki: PKI, origins: dict[str, TLSOrigin]
) -> None:
    proxy = _start(_launcher, pki, INTERCEPTOR_LOG_FORMAT="json")
    port = origins["bulk"].ports["127.0.0.1"]
    url = f"https://localhost:{port}/1k"
    assert curl_https(proxy, url, ca_pem(proxy)).returncode == 0

    def entry(target: str) -> dict[str, Any] | None:
        for line in proxy.log_text().splitlines():
            if line.startswith("{") and f'"url": "{target}"' in line:
                return dict(json.loads(line))
        return None

    found = wait_for(lambda: entry(url), TIMEOUT, message=lambda: proxy.log_tail())
    assert uuid.UUID(found["id"]).version == 7
    # The request inside names the CONNECT it came through as its parent.
    connect = wait_for(lambda: entry(f"localhost:{port}"), TIMEOUT, message=proxy.log_tail)
    assert connect["method"] == "CONNECT" and connect["parent_id"] is None, connect
    assert found["parent_id"] == connect["id"] != found["id"], (found, connect)
    assert found["upstream"] == f"127.0.0.1:{port}" and found["upstream_reused"] is False
    assert found["client_tls"] in ("TLSv1.2", "TLSv1.3") and found["client_sni"] == "localhost"
    assert found["upstream_tls"] in ("TLSv1.2", "TLSv1.3")
    # connect and tls: the connection's, made for the CONNECT before this request (eager).
    assert all(found[key] >= 0 for key in ("connect_s", "tls_s", "ttfb_s")), found
    assert found["ttfb_s"] <= found["total_s"], found


def test_a_client_that_does_not_trust_the_ca_is_named_in_the_log(
    _launcher: ProxyLauncher, pki: PKI, origins: dict[str, TLSOrigin]
) -> None:
    """curl without the proxy's CA refuses our leaf (alert unknown ca): the log says so in
    words, naming the host, where it used to show a bare CONNECT ... 200; /metrics counts it
    by reason."""
    admin = free_port()
    proxy = _start(_launcher, pki, INTERCEPTOR_ADMIN_LISTEN=f"tcp:{admin}:interface=127.0.0.1")
    port = origins["good"].ports["127.0.0.1"]
    empty = proxy.workdir / "no-such-ca.pem"
    empty.write_bytes(certs.make_origin_root("Nobody")[0])  # trusts something else only
    result = run_curl("-x", proxy.url, "--cacert", str(empty), f"https://localhost:{port}/1k")
    assert result.returncode == 60, result  # curl: the peer's certificate was not trusted
    line = proxy.wait_for_log(
        r"client does not trust the proxy's CA for localhost \(.*unknown ca.*\)$"
    ).group(0)
    assert line.count("\n") == 0
    metrics = run_curl(f"http://127.0.0.1:{admin}/metrics").stdout.decode()
    assert 'interceptor_tls_failure_reasons_total{reason="untrusted_ca",side="client"} 1.0' in (
        metrics
    ), metrics


# --- 4. passthrough ------------------------------------------------------------------------


def test_passthrough_host_shows_origin_certificate(
    passthrough_proxy: ProxyProcess, origins: dict[str, TLSOrigin], pki: PKI
) -> None:
    proxy = passthrough_proxy
    origin = origins["good"]
    root = x509.load_pem_x509_certificate(pki.root[0])

    # curl trusting only the origin root gets the content byte-exact.
    result = curl_https(proxy, f"https://localhost:{origin.port}/1m", pki.root_pem)
    assert result.returncode == 0, result.stderr.decode() + proxy.log_tail()
    assert result.stdout == body_for("/1m")

    authority = f"localhost:{origin.port}"
    with TLSTunnel(proxy.port, authority, client_context(pki.root_pem), "localhost") as tunnel:
        leaf = tunnel.peer_certificate()
        resp = tunnel.get("/1k", authority)
    assert resp.status == 200 and resp.body == body_for("/1k")
    assert leaf.public_bytes(serialization.Encoding.PEM) == pki.good[0]
    assert_issued_by(leaf, root)

    # A host that does not match the pattern is still intercepted.
    authority = f"127.0.0.1:{origin.port}"
    with TLSTunnel(proxy.port, authority, client_context(ca_pem(proxy)), "127.0.0.1") as tunnel:
        assert_issued_by(tunnel.peer_certificate(), ca_certificate(proxy))


# --- 5. many names minted while other clients are served ------------------------------------


def test_minting_200_names_keeps_other_clients_prompt(
    lazy_proxy: ProxyProcess, origin: OriginServer
) -> None:
    # Lazy connects: these names exist nowhere, and eagerly each CONNECT would be a 502.
    tls_proxy = lazy_proxy
    origin.route("/small", respond(b"small and plain"))
    request = get(origin.url("/small"))
    done = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []

    def fetch_loop() -> None:
        deadline = time.monotonic() + 45
        while (not done.is_set() or len(latencies) < 5) and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                resp, conn = exchange(tls_proxy.port, request, timeout=TIMEOUT)
                conn.close()
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
                if len(failures) > 20:
                    return
                continue
            latencies.append(time.monotonic() - started)
            if resp.status != 200 or resp.body != b"small and plain":
                failures.append(f"{resp.status} {resp.body[:100]!r}")

    fetcher = threading.Thread(target=fetch_loop, daemon=True)
    ctx = client_context(ca_pem(tls_proxy))
    started = time.monotonic()
    fetcher.start()
    try:
        for n in range(200):
            name = f"h{n}.test"
            # Handshake only: nothing is requested, so no upstream is involved.
            with TLSTunnel(tls_proxy.port, f"{name}:443", ctx, name) as tunnel:
                dns, ips = san_of(tunnel.peer_certificate())
            assert (dns, ips) == ([name], []), (n, dns, ips)
    finally:
        done.set()
        fetcher.join(50)
    mint_time = time.monotonic() - started
    assert not fetcher.is_alive(), "fetch loop did not finish"
    assert not failures, failures[:5]
    assert len(latencies) >= 5
    print(
        f"200 names minted in {mint_time:.2f}s; {len(latencies)} plain fetches meanwhile, "
        f"max latency {max(latencies) * 1000:.1f} ms"
    )
    assert max(latencies) < 2.0, "a plain request waited > 2 s: reactor blocked?"


# --- 6. CA files ---------------------------------------------------------------------------


def test_ca_files_have_private_modes(tls_proxy: ProxyProcess) -> None:
    ca_pem(tls_proxy)
    directory = ca_dir(tls_proxy)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600


def run_twistd_with_ca_dir(directory: Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run `twistd -n interceptor` with `directory` as its CA dir; it is expected to exit.

    Run directly (not through start_proxy) to keep stdout and stderr apart.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
    env.update(BASE_ENV)
    env["INTERCEPTOR_TLS_CA_DIR"] = str(directory)
    listen = f"tcp:{free_port()}:interface={LOOPBACK}"
    cmd = [str(TWISTD), "-n", "--pidfile=", "interceptor", "--listen", listen]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=30, check=False)


@pytest.fixture
def corrupt_key_run(
    tls_proxy: ProxyProcess, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[bytes], Path]:
    """A start-up with a valid ca.pem next to a corrupt ca.key: (its result, the key path)."""
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o700)
    shutil.copy(ca_pem(tls_proxy), directory / "ca.pem")
    key_path = directory / "ca.key"
    key_path.write_bytes(CORRUPT_KEY)
    key_path.chmod(0o600)
    return run_twistd_with_ca_dir(directory, tmp_path), key_path


CORRUPT_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"


def describe_run(proc: subprocess.CompletedProcess[bytes]) -> str:
    """Exit status, stdout and stderr of a finished process, for failure messages."""
    return (
        f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout.decode(errors='replace')}"
        f"--- stderr ---\n{proc.stderr.decode(errors='replace')}"
    )


def test_corrupt_ca_key_stops_startup_with_one_line(
    corrupt_key_run: tuple[subprocess.CompletedProcess[bytes], Path],
) -> None:
    proc, key_path = corrupt_key_run
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode == 2, describe_run(proc)  # a configuration error, as config's are
    assert "Traceback" not in output, describe_run(proc)
    naming = [line for line in output.splitlines() if str(key_path) in line]
    assert len(naming) == 1, describe_run(proc)
    assert "not a valid PEM private key" in naming[0], describe_run(proc)
    assert key_path.read_bytes() == CORRUPT_KEY, "the corrupt key was rewritten"


def test_corrupt_ca_key_error_line_is_on_stderr(
    corrupt_key_run: tuple[subprocess.CompletedProcess[bytes], Path],
) -> None:
    proc, key_path = corrupt_key_run
    stderr = proc.stderr.decode("utf-8", "replace")
    naming = [line for line in stderr.splitlines() if str(key_path) in line]
    assert len(naming) == 1, describe_run(proc)
    assert naming[0].startswith(f"interceptor: tls.ca_dir: {key_path}: "), describe_run(proc)


# --- 7. CA download page -------------------------------------------------------------------


def test_ca_page_serves_the_ca_certificate(tls_proxy: ProxyProcess) -> None:
    on_disk = ca_pem(tls_proxy).read_bytes()
    responses = {}
    for path in ("/", "/ca.pem", "/ca.der"):
        resp, conn = exchange(tls_proxy.port, get(f"http://interceptor.ca{path}"))
        conn.close()
        assert resp.status == 200, (path, resp.status, resp.body[:200])
        responses[path] = resp
    assert (responses["/"].header("content-type") or "").startswith("text/html")
    page = responses["/"].body.decode()
    assert "ca.pem" in page and "ca.der" in page
    # The fingerprint to check, the proxy address this client used, steps per platform, and
    # nothing about the server (its CA path least of all).
    digest = hashlib.sha256(responses["/ca.der"].body).hexdigest().upper()
    assert ":".join(digest[i : i + 2] for i in range(0, 64, 2)) in page
    assert f"curl -x http://127.0.0.1:{tls_proxy.port} --cacert ca.pem" in page
    assert "certutil -d sql:$HOME/.pki/nssdb" in page and "&lt;-loopback&gt;" in page
    assert str(ca_dir(tls_proxy)) not in page and "On disk" not in page
    assert responses["/ca.pem"].header("content-type") == "application/x-pem-file"
    assert responses["/ca.pem"].body == on_disk
    assert responses["/ca.der"].header("content-type") == "application/x-x509-ca-cert"
    der = x509.load_der_x509_certificate(responses["/ca.der"].body)
    assert der == x509.load_pem_x509_certificate(on_disk)

    # curl, as the page tells users to do it.
    result = run_curl("-x", tls_proxy.url, "http://interceptor.ca/ca.pem")
    assert result.returncode == 0 and result.stdout == on_disk, result.stderr


# --- 8. ALPN ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "selected"), [(["h2", "http/1.1"], "http/1.1"), (["h2"], None)]
)
def test_alpn_selects_http11(
    tls_proxy: ProxyProcess,
    origins: dict[str, TLSOrigin],
    offered: list[str],
    selected: str | None,
) -> None:
    authority = f"localhost:{origins['good'].port}"
    ctx = client_context(ca_pem(tls_proxy), alpn=offered)
    with TLSTunnel(tls_proxy.port, authority, ctx, "localhost") as tunnel:
        assert tunnel.tls.selected_alpn_protocol() == selected
        resp = tunnel.get("/1k", authority)
    assert resp.status == 200 and resp.body == body_for("/1k")


# --- 9. ClientHello in the same write as the CONNECT head ---------------------------------


def pipelined_get(
    proxy_port: int, authority: str, cafile: Path, path: str
) -> tuple[bytes, bytes, x509.Certificate]:
    """CONNECT and the ClientHello in one write, then GET `path`: (head, body, peer cert).

    The TLS client is an `ssl.SSLObject` over memory BIOs, so the test decides exactly which
    bytes go out in which write. SNI and the verified name are `localhost`.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cafile).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:10]  # a TLS handshake record

    with RawConnection(proxy_port) as conn:
        conn.send(connect_head(authority) + hello)  # one write
        head = conn.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        deadline = time.monotonic() + TIMEOUT

        def pump() -> None:
            """Flush TLS output, then feed the next bytes from the proxy into the TLS object."""
            if pending := outgoing.read():
                conn.send(pending)
            data = conn.read_available(1, timeout=max(0.0, deadline - time.monotonic()))
            if not data:
                raise AssertionError("proxy closed the tunnel")
            incoming.write(data)

        incoming.write(conn.read_available(0))  # bytes already buffered behind the 200
        for _ in range(100):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        else:
            raise AssertionError("handshake did not complete in 100 rounds")
        der = tls.getpeercert(binary_form=True)
        assert der is not None

        tls.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        plain = bytearray()
        expected = len(body_for(path) or b"")
        for _ in range(1000):
            try:
                while chunk := tls.read(65536):
                    plain += chunk
            except ssl.SSLWantReadError:
                pass
            end = plain.find(b"\r\n\r\n")
            if end >= 0 and len(plain) >= end + 4 + expected:
                break
            pump()
        else:
            raise AssertionError(f"no complete response: {bytes(plain[:200])!r}")
    head, _, body = bytes(plain).partition(b"\r\n\r\n")
    return head, body, x509.load_der_x509_certificate(der)


def test_client_hello_pipelined_behind_connect_completes(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin]
) -> None:
    authority = f"localhost:{origins['good'].port}"
    head, body, leaf = pipelined_get(tls_proxy.port, authority, ca_pem(tls_proxy), "/1k")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert re.search(rb"(?im)^content-length: *1024\r?$", head), head
    assert body == body_for("/1k")
    assert_issued_by(leaf, ca_certificate(tls_proxy))


def test_client_hello_pipelined_behind_connect_to_passthrough_host(
    passthrough_proxy: ProxyProcess, origins: dict[str, TLSOrigin], pki: PKI
) -> None:
    authority = f"localhost:{origins['good'].port}"
    head, body, leaf = pipelined_get(passthrough_proxy.port, authority, pki.root_pem, "/1k")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == body_for("/1k")
    assert leaf.public_bytes(serialization.Encoding.PEM) == pki.good[0]


def test_connection_close_inside_tunnel_ends_cleanly_and_promptly(
    tls_proxy: ProxyProcess, origins: dict[str, TLSOrigin]
) -> None:
    """`Connection: close` inside an intercepted tunnel: the proxy sends close_notify and FIN
    right after the response, not a reset after its drain bound (Twisted's TLS layer holds the
    close while a producer is registered)."""
    origin = origins["good"]
    authority = f"localhost:{origin.port}"
    ctx = client_context(ca_pem(tls_proxy))
    with TLSTunnel(tls_proxy.port, authority, ctx, "localhost") as tunnel:
        tunnel.send(f"GET /1k HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        response = tunnel.read_response()
        assert response.status == 200 and response.body == body_for("/1k")
        started = time.monotonic()
        rest = tunnel.tls.recv(1)  # clean TLS close: b"" (a reset would raise)
        elapsed = time.monotonic() - started
    assert rest == b""
    assert elapsed < 2.0, f"close took {elapsed:.2f}s"
