"""Tests for interceptor.tls: CA files, leaf minting, interception handshakes, upstream TLS.

Handshakes are real TLS over 127.0.0.1.  Twisted runs on a *private* reactor instance in a
background thread for this module only (the global reactor is never started, so other test
modules are free to use it); Python's ``ssl`` plays the intercepted client.  Every blocking
step has a timeout.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import tls as twisted_tls
from twisted.python.failure import Failure
from zope.interface import implementer

from interceptor.tls import (
    CertificateAuthority,
    InterceptContextFactory,
    LeafMinter,
    TLSSetupError,
    UpstreamTLS,
    describe_client_tls_failure,
    describe_tls_failure,
)
from interceptor.tls.leaf import MAX_ORIGIN_NAMES, origin_names
from interceptor.tls.origin import UpstreamCertificateError
from tests import certs

TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Harness


class ReactorThread:
    """A private Twisted reactor running in a daemon thread, driven with call()."""

    def __init__(self) -> None:
        self.reactor = SelectReactor()
        self._thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self.call(lambda: None)  # returns once the reactor is processing calls

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = TIMEOUT) -> Any:
        """Run fn in the reactor thread; wait for its result (a Deferred's, if it is one)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as e:
                future.set_exception(e)
                return
            if isinstance(result, Deferred):
                result.addCallbacks(future.set_result, lambda f: future.set_exception(f.value))
            else:
                future.set_result(result)

        self.reactor.callFromThread(run)
        return future.result(timeout)

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "reactor thread did not stop"


@pytest.fixture(autouse=True)
def no_logged_failures() -> Iterator[None]:
    """Fail a test if Twisted logged a traceback meanwhile (e.g. from one of our callbacks)."""
    failures: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not failures, [f"{formatEvent(e)}\n{e['log_failure'].getTraceback()}" for e in failures]


@pytest.fixture(scope="module")
def rt() -> Iterator[ReactorThread]:
    runner = ReactorThread()
    with pytest.MonkeyPatch.context() as mp:
        # startTLS builds its TLS factory with the *global* reactor as the clock for write
        # aggregation; Twisted keeps this hook for tests exactly so it can be redirected.
        mp.setattr(twisted_tls, "_get_default_clock", lambda: runner.reactor)
        runner.start()
        try:
            yield runner
        finally:
            runner.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture(scope="module")
def minter(ca: CertificateAuthority) -> LeafMinter:
    return LeafMinter(ca)


def leaf_of(ctx: SSL.Context) -> x509.Certificate:
    cert = SSL.Connection(ctx).get_certificate(as_cryptography=True)
    assert cert is not None
    return cert


def san_of(cert: x509.Certificate) -> list[Any]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def memory_handshake(
    server_ctx: SSL.Context,
    sni: bytes | None = None,
    alpn: list[bytes] | None = None,
    client_ctx: SSL.Context | None = None,
) -> tuple[SSL.Connection, SSL.Connection]:
    """Handshake a pyOpenSSL client with *server_ctx* through memory BIOs (no sockets)."""
    client_ctx = client_ctx or SSL.Context(SSL.TLS_METHOD)
    server = SSL.Connection(server_ctx)
    server.set_accept_state()
    client = SSL.Connection(client_ctx)
    client.set_connect_state()
    if sni:
        client.set_tlsext_host_name(sni)
    if alpn:
        client.set_alpn_protos(alpn)
    done = {client: False, server: False}
    for _ in range(50):
        for conn in (client, server):
            try:
                conn.do_handshake()
                done[conn] = True
            except SSL.WantReadError:
                pass
        moved = False
        for a, b in ((client, server), (server, client)):
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                continue
            b.bio_write(data)
            moved = True
        if all(done.values()) and not moved:
            return client, server
    raise AssertionError("memory handshake did not finish")


# --- interception server: CONNECT, 200, startTLS, then answer one "ping" and close ---------


class ConnectThenTLS(Protocol):
    """The interception sequence in miniature, using the real startTLS path."""

    def __init__(self, minter: LeafMinter) -> None:
        self.minter = minter
        self.buffer = b""
        self.tls = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if not self.tls:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            authority = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            host = authority.rsplit(":", 1)[0]
            self.buffer = rest
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.transport.startTLS(InterceptContextFactory(self.minter, host))
            self.tls = True
        elif self.buffer.endswith(b"ping"):
            handle = self.transport.getHandle()
            sni = handle.get_servername() or b"-"
            alpn = handle.get_alpn_proto_negotiated() or b"-"
            self.transport.write(b"pong sni=" + sni + b" alpn=" + alpn)
            self.transport.loseConnection()


@pytest.fixture(scope="module")
def intercept_port(rt: ReactorThread, minter: LeafMinter) -> Iterator[int]:
    factory = Factory.forProtocol(lambda: ConnectThenTLS(minter))
    port = rt.call(rt.reactor.listenTCP, 0, factory, 50, "127.0.0.1")
    yield port.getHost().port
    rt.call(port.stopListening)


def intercept(
    port: int,
    authority: str,
    cafile: Path,
    server_hostname: str | None,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    check_hostname: bool = True,
) -> tuple[x509.Certificate, str | None, bytes]:
    """Play a client through the proxy: CONNECT, then TLS with Python's ssl, then ping."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: do not swallow TLS bytes
            byte = raw.recv(1)
            assert byte, f"proxy closed during CONNECT: {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 200 ")
        ctx = ssl.create_default_context(cafile=str(cafile))
        # Python 3.13 turns strict mode on by default; make sure our leaves pass it.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.check_hostname = check_hostname
        ctx.set_alpn_protocols(list(alpn))
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            chosen = tls.selected_alpn_protocol()
            tls.sendall(b"ping")
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
        return cert, chosen, reply
    finally:
        raw.close()


# --- loopback origins and an upstream client --------------------------------------------------


@implementer(IHandshakeListener)
class OriginProtocol(Protocol):
    def __init__(self, seen_sni: list[bytes | None]) -> None:
        self.seen_sni = seen_sni

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.seen_sni.append(self.transport.getHandle().get_servername())


@implementer(IHandshakeListener)
class UpstreamClient(Protocol):
    """Reports (handshake_ok, negotiated ALPN, connectionLost reason) through a Deferred."""

    def __init__(self, done: Deferred[tuple[bool, bytes | None, Failure]]) -> None:
        self.done = done
        self.ok = False
        self.alpn: bytes | None = None

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.ok = True
        self.alpn = self.transport.negotiatedProtocol
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self.done.callback((self.ok, self.alpn, reason))


class UpstreamClientFactory(ClientFactory):
    def __init__(self) -> None:
        self.done: Deferred[tuple[bool, bytes | None, Failure]] = Deferred()

    def buildProtocol(self, addr: Any) -> UpstreamClient:  # noqa: N802
        return UpstreamClient(self.done)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.done.errback(reason)


class Origins:
    """TLS origins on 127.0.0.1, one per certificate kind, all recording the SNI they saw."""

    def __init__(self, rt: ReactorThread, tmp: Path) -> None:
        self.rt = rt
        self.root = certs.make_origin_root()
        self.pairs = {
            "good": certs.good_cert(self.root),
            "expired": certs.expired_cert(self.root),
            "wrong": certs.wrong_name_cert(self.root),
            "self": certs.self_signed_cert(),
        }
        self.root_bundle, _ = certs.write_pair(tmp, "origin-root", self.root)
        self.sni: dict[str, list[bytes | None]] = {}
        self.ports: dict[str, int] = {}
        self._listening = []
        for kind, (cert_pem, key_pem) in self.pairs.items():
            seen: list[bytes | None] = []
            factory = twisted_tls.TLSMemoryBIOFactory(
                certs.origin_context_factory(cert_pem, key_pem),
                False,
                Factory.forProtocol(lambda seen=seen: OriginProtocol(seen)),
                clock=rt.reactor,
            )
            port = rt.call(rt.reactor.listenTCP, 0, factory, 50, "127.0.0.1")
            self._listening.append(port)
            self.sni[kind] = seen
            self.ports[kind] = port.getHost().port

    def connect(
        self, upstream: UpstreamTLS, hostname: str, kind: str
    ) -> tuple[bool, bytes | None, Failure]:
        def go() -> Deferred[tuple[bool, bytes | None, Failure]]:
            client = UpstreamClientFactory()
            wrapped = twisted_tls.TLSMemoryBIOFactory(
                upstream.creator_for(hostname), True, client, clock=self.rt.reactor
            )
            self.rt.reactor.connectTCP("127.0.0.1", self.ports[kind], wrapped, timeout=5)
            return client.done

        return self.rt.call(go)

    def close(self) -> None:
        for port in self._listening:
            self.rt.call(port.stopListening)


@pytest.fixture(scope="module")
def origins(rt: ReactorThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origins]:
    o = Origins(rt, tmp_path_factory.mktemp("origins"))
    yield o
    o.close()


@pytest.fixture(scope="module")
def upstream(origins: Origins) -> UpstreamTLS:
    return UpstreamTLS(verify=True, extra_ca_bundle=str(origins.root_bundle))


# ---------------------------------------------------------------------------------------------
# CertificateAuthority


def test_ca_created_with_private_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "conf" / "ca"
    authority = CertificateAuthority.load_or_create(ca_dir)
    assert authority.created
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(authority.key_path.stat().st_mode) == 0o600
    assert authority.key_path == ca_dir / "ca.key"
    assert authority.cert_path == ca_dir / "ca.pem"
    assert authority.cert_path.read_bytes() == authority.cert_pem


def test_ca_key_is_never_world_readable_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        authority = CertificateAuthority.load_or_create(tmp_path / "ca")
    finally:
        os.umask(old)
    assert stat.S_IMODE(authority.key_path.stat().st_mode) == 0o600


def test_ca_reload_gives_same_certificate(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    second = CertificateAuthority.load_or_create(str(tmp_path))
    assert first.created and not second.created
    assert second.cert_der == first.cert_der
    assert second.cert_pem == first.cert_pem


def test_ca_certificate_contents(ca: CertificateAuthority) -> None:
    cert = x509.load_der_x509_certificate(ca.cert_der)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    subject = cert.subject.rfc4514_string()
    assert "interceptor" in subject
    assert socket.gethostname()[:20] in subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 9.5 < years < 10.5
    cert.verify_directly_issued_by(cert)  # self-signed


def _one_line_error(ca_dir: Path) -> str:
    with pytest.raises(TLSSetupError) as info:
        CertificateAuthority.load_or_create(ca_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ca_corrupt_key_is_refused(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    authority.key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{authority.key_path}: ")
    assert "private key" in message


def test_ca_corrupt_cert_is_refused(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    authority.cert_path.write_bytes(b"garbage")
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{authority.cert_path}: ")
    assert "certificate" in message


def test_ca_unreadable_key_is_refused(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    authority.key_path.unlink()
    authority.key_path.mkdir()  # exists, but reading it fails (works even as root)
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{authority.key_path}: cannot read")


def test_ca_mismatched_key_is_refused(tmp_path: Path) -> None:
    one = CertificateAuthority.load_or_create(tmp_path / "one")
    two = CertificateAuthority.load_or_create(tmp_path / "two")
    one.key_path.write_bytes(two.key_path.read_bytes())
    message = _one_line_error(tmp_path / "one")
    assert message == f"{one.key_path}: private key does not match certificate {one.cert_path}"


def test_ca_non_ca_certificate_is_refused(tmp_path: Path) -> None:
    cert_pem, key_pem = certs.self_signed_cert()  # a leaf: basicConstraints CA:FALSE
    tmp_path.joinpath("ca.pem").write_bytes(cert_pem)
    tmp_path.joinpath("ca.key").write_bytes(key_pem)
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'ca.pem'}: not a CA certificate")


@pytest.mark.parametrize("remove", ["ca.pem", "ca.key"])
def test_ca_with_only_one_file_is_refused(tmp_path: Path, remove: str) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / remove).unlink()
    message = _one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / remove}: missing")


def test_ca_expired_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    with pytest.raises(TLSSetupError, match="expired"):
        CertificateAuthority.load_or_create(tmp_path, now=lambda: time.time() + 11 * 365 * 86400)


# ---------------------------------------------------------------------------------------------
# LeafMinter


def test_leaf_for_dns_name(ca: CertificateAuthority) -> None:
    fixed = 1_800_000_000.0
    leaf = leaf_of(LeafMinter(ca, now=lambda: fixed).context_for("Example.COM"))
    ca_cert = x509.load_der_x509_certificate(ca.cert_der)
    leaf.verify_directly_issued_by(ca_cert)
    assert san_of(leaf) == [x509.DNSName("example.com")]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "example.com"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    now = datetime.datetime.fromtimestamp(fixed, tz=datetime.UTC)
    assert leaf.not_valid_before_utc == now - datetime.timedelta(days=1)
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=300) < validity < datetime.timedelta(days=398)


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[2001:DB8::1]", "2001:db8::1")],
)
def test_leaf_for_ip_literal_has_ip_san(minter: LeafMinter, host: str, address: str) -> None:
    assert san_of(leaf_of(minter.context_for(host))) == [
        x509.IPAddress(ipaddress.ip_address(address))
    ]


def origin_x509(dns: list[str], ips: list[str]) -> Any:
    """An origin certificate (as pyOpenSSL hands it over) naming `dns` and `ips`."""
    from OpenSSL import crypto

    pem, _ = certs.make_server_cert(None, dns, ips)
    return crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pem))


def test_leaf_copies_the_origins_names(minter: LeafMinter) -> None:
    origin = origin_x509(["Example.COM", "*.example.com", "other.example"], ["192.0.2.1"])
    assert origin_names(origin) == ("*.example.com", "192.0.2.1", "example.com", "other.example")
    leaf = leaf_of(minter.intercept("192.0.2.1", 443, origin).getContext())
    assert san_of(leaf) == [
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),  # the requested name comes first
        x509.DNSName("*.example.com"),
        x509.DNSName("example.com"),
        x509.DNSName("other.example"),
    ]
    # A name the origin's certificate had is served by that leaf; another gets its own.
    factory = minter.intercept("192.0.2.1", 443, origin)
    client, _ = memory_handshake(factory.getContext(), sni=b"other.example")
    assert san_of(client.get_peer_certificate(as_cryptography=True)) == san_of(leaf)
    client, _ = memory_handshake(factory.getContext(), sni=b"elsewhere.example")
    cert = client.get_peer_certificate(as_cryptography=True)
    assert san_of(cert) == [x509.DNSName("elsewhere.example")]


def test_origin_names_are_bounded_and_tolerate_no_certificate() -> None:
    assert origin_names(None) == ()
    many = origin_x509([f"h{i}.example" for i in range(150)], [])
    assert len(origin_names(many)) == MAX_ORIGIN_NAMES


def test_leaf_common_name_is_truncated_to_64(minter: LeafMinter) -> None:
    host = ".".join(["a" * 60, "b" * 60, "example"])
    leaf = leaf_of(minter.context_for(host))
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host[:64]
    assert san_of(leaf) == [x509.DNSName(host)]


def test_leaf_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {leaf_of(LeafMinter(ca).context_for("same.example")).serial_number for _ in "ab"}
    assert len(serials) == 2


def test_invalid_hosts_are_rejected(minter: LeafMinter) -> None:
    for bad in ["", "a b", "bad/host", "x" * 64 + ".example", "-lead.example"]:
        with pytest.raises(ValueError):
            minter.context_for(bad)
        # The factory must not raise into the proxy's CONNECT handling: it falls back.
        factory = InterceptContextFactory(minter, bad)
        assert san_of(leaf_of(factory.getContext())) == [x509.DNSName("invalid")]


def test_lru_cache_hits_misses_and_eviction(ca: CertificateAuthority) -> None:
    m = LeafMinter(ca, cache_size=2)
    a = m.context_for("a.example")
    assert (m.hits, m.misses, len(m)) == (0, 1, 1)
    assert m.context_for("A.Example") is a  # cached by lower-cased host
    assert (m.hits, m.misses) == (1, 1)
    m.context_for("b.example")
    m.context_for("a.example")  # a becomes most recently used
    m.context_for("c.example")  # evicts b
    assert len(m) == 2
    assert (m.hits, m.misses) == (2, 3)
    assert m.context_for("a.example") is a
    m.context_for("b.example")  # minted again
    assert (m.hits, m.misses) == (3, 4)


def test_expiring_leaf_is_reminted(ca: CertificateAuthority) -> None:
    clock = [time.time()]
    m = LeafMinter(ca, now=lambda: clock[0])
    first = m.context_for("old.example")
    clock[0] += 364 * 86400
    assert m.context_for("old.example") is not first
    assert m.misses == 2


def test_mint_time(ca: CertificateAuthority) -> None:
    m = LeafMinter(ca)
    start = time.perf_counter()
    for i in range(200):
        m.context_for(f"host{i}.example")
    per_leaf = (time.perf_counter() - start) / 200
    print(f"\nminted 200 leaves + contexts: {per_leaf * 1000:.3f} ms per leaf")
    assert m.misses == 200


def test_chain_alpn_and_minimum_version(minter: LeafMinter, ca: CertificateAuthority) -> None:
    client, _ = memory_handshake(minter.context_for("chain.example"), alpn=[b"h2", b"http/1.1"])
    chain = client.get_peer_cert_chain(as_cryptography=True)
    assert len(chain) == 2
    assert chain[1] == x509.load_der_x509_certificate(ca.cert_der)
    assert client.get_alpn_proto_negotiated() == b"http/1.1"

    # h2-only clients get no ALPN rather than a failed handshake.
    client, _ = memory_handshake(minter.context_for("chain.example"), alpn=[b"h2"])
    assert client.get_alpn_proto_negotiated() == b""

    old = SSL.Context(SSL.TLS_METHOD)
    old.set_min_proto_version(0)
    old.set_max_proto_version(SSL.TLS1_1_VERSION)
    old.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    # OpenSSL's default security level alone already refuses TLS 1.1; lower it on a fresh
    # (not yet used) server context so only our minimum version stands in the way.
    server_ctx = minter.context_for("tls11.example")
    server_ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    with pytest.raises(SSL.Error, match="unsupported protocol"):
        memory_handshake(server_ctx, client_ctx=old)


def test_sni_callback_switches_context_in_memory(minter: LeafMinter) -> None:
    ctx = InterceptContextFactory(minter, "authority.example").getContext()
    client, server = memory_handshake(ctx, sni=b"Other.Example")
    cert = client.get_peer_certificate(as_cryptography=True)
    assert san_of(cert) == [x509.DNSName("other.example")]
    assert server.get_context() is minter.context_for("other.example")
    # Garbage SNI keeps the authority's certificate instead of failing the handshake.
    client, _ = memory_handshake(ctx, sni=b"bad name")
    cert = client.get_peer_certificate(as_cryptography=True)
    assert san_of(cert) == [x509.DNSName("authority.example")]


def test_get_context_is_cheap_and_shared(minter: LeafMinter) -> None:
    one = InterceptContextFactory(minter, "shared.example").getContext()
    two = InterceptContextFactory(minter, "SHARED.example").getContext()
    assert one is two
    assert one is not minter.context_for("shared.example")  # plain one has no SNI callback


# ---------------------------------------------------------------------------------------------
# Interception over loopback (real startTLS, Python ssl client)


def test_intercept_localhost_verifies_against_ca(
    intercept_port: int, ca: CertificateAuthority
) -> None:
    cert, alpn, reply = intercept(intercept_port, "localhost:443", ca.cert_path, "localhost")
    assert san_of(cert) == [x509.DNSName("localhost")]
    assert alpn == "http/1.1"
    assert reply == b"pong sni=localhost alpn=http/1.1"


def test_intercept_ip_literal_without_sni(intercept_port: int, ca: CertificateAuthority) -> None:
    # Python's ssl (like browsers) sends no SNI for IP literals and checks the IP SAN.
    cert, _, reply = intercept(intercept_port, "127.0.0.1:443", ca.cert_path, "127.0.0.1")
    assert san_of(cert) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    assert reply.startswith(b"pong sni=- ")


def test_intercept_sni_wins_over_authority(intercept_port: int, ca: CertificateAuthority) -> None:
    cert, _, reply = intercept(intercept_port, "localhost:443", ca.cert_path, "other.example")
    assert san_of(cert) == [x509.DNSName("other.example")]
    assert reply.startswith(b"pong sni=other.example ")


def test_intercept_no_sni_gets_authority_certificate(
    intercept_port: int, ca: CertificateAuthority
) -> None:
    cert, _, _ = intercept(
        intercept_port, "authority.example:443", ca.cert_path, None, check_hostname=False
    )
    assert san_of(cert) == [x509.DNSName("authority.example")]


def test_intercept_h2_only_client_gets_no_alpn(
    intercept_port: int, ca: CertificateAuthority
) -> None:
    _, alpn, reply = intercept(
        intercept_port, "localhost:443", ca.cert_path, "localhost", alpn=("h2",)
    )
    assert alpn is None
    assert reply == b"pong sni=localhost alpn=-"


def test_intercept_untrusted_without_ca(intercept_port: int, origins: Origins) -> None:
    # Sanity check that the client really verifies: another CA must not be accepted.
    with pytest.raises(ssl.SSLCertVerificationError):
        intercept(intercept_port, "localhost:443", origins.root_bundle, "localhost")


# ---------------------------------------------------------------------------------------------
# Upstream TLS and describe_tls_failure


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_upstream_good_certificate(origins: Origins, upstream: UpstreamTLS, hostname: str) -> None:
    ok, alpn, reason = origins.connect(upstream, hostname, "good")
    assert ok, describe_tls_failure(reason)
    assert alpn == b"http/1.1"


def test_upstream_sends_sni_for_names_only(origins: Origins, upstream: UpstreamTLS) -> None:
    seen = origins.sni["good"]
    seen.clear()
    assert origins.connect(upstream, "localhost", "good")[0]
    assert origins.connect(upstream, "127.0.0.1", "good")[0]
    assert seen == [b"localhost", None]


def _failure(origins: Origins, upstream: UpstreamTLS, hostname: str, kind: str) -> Failure:
    ok, _, reason = origins.connect(upstream, hostname, kind)
    assert not ok, f"{kind} certificate was accepted"
    return reason


def test_upstream_expired(origins: Origins, upstream: UpstreamTLS) -> None:
    reason = _failure(origins, upstream, "localhost", "expired")
    assert reason.check(SSL.Error)
    assert isinstance(reason.value, UpstreamCertificateError)
    assert describe_tls_failure(reason) == (
        "upstream certificate verify failed: certificate has expired"
    )


def test_upstream_self_signed(origins: Origins, upstream: UpstreamTLS) -> None:
    reason = _failure(origins, upstream, "localhost", "self")
    assert reason.check(SSL.Error)
    assert describe_tls_failure(reason) == (
        "upstream certificate verify failed: self-signed certificate"
    )


def test_upstream_unknown_ca(origins: Origins) -> None:
    system_only = UpstreamTLS(verify=True)
    reason = _failure(origins, system_only, "localhost", "good")
    assert describe_tls_failure(reason) == (
        "upstream certificate verify failed: unable to get local issuer certificate"
    )


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_upstream_name_mismatch(origins: Origins, upstream: UpstreamTLS, hostname: str) -> None:
    reason = _failure(origins, upstream, hostname, "wrong")
    assert reason.check(VerificationError)
    message = describe_tls_failure(reason)
    assert message.startswith(f"upstream name mismatch: certificate is not valid for {hostname}"), (
        message
    )
    assert "wrong.example" in message


def test_upstream_self_signed_in_bundle_verifies(origins: Origins, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(origins.root[0] + origins.pairs["self"][0])
    trusting = UpstreamTLS(verify=True, extra_ca_bundle=str(bundle))
    ok, _, reason = origins.connect(trusting, "localhost", "self")
    assert ok, describe_tls_failure(reason)


@pytest.mark.parametrize("kind", ["expired", "wrong", "self"])
def test_upstream_verify_false_accepts_anything_but_sends_sni(origins: Origins, kind: str) -> None:
    lax = UpstreamTLS(verify=False)
    origins.sni[kind].clear()
    ok, alpn, reason = origins.connect(lax, "localhost", kind)
    assert ok, describe_tls_failure(reason)
    assert alpn == b"http/1.1"
    assert origins.sni[kind] == [b"localhost"]


def test_upstream_creators_are_cached(origins: Origins) -> None:
    small = UpstreamTLS(extra_ca_bundle=str(origins.root_bundle), cache_size=2)
    a = small.creator_for("a.example")
    assert small.creator_for("a.example") is a
    assert small.creator_for("b.example") is not a
    small.creator_for("c.example")  # evicts a (least recently used)
    assert small.creator_for("a.example") is not a


def test_upstream_unusable_hostname_is_a_mismatch_not_an_exception(
    origins: Origins, upstream: UpstreamTLS
) -> None:
    reason = _failure(origins, upstream, "ex!ample", "good")
    assert reason.check(VerificationError)
    assert describe_tls_failure(reason).startswith(
        "upstream name mismatch: certificate is not valid for ex!ample (it is for localhost"
    )


def test_upstream_bundle_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSSetupError) as info:
        UpstreamTLS(extra_ca_bundle=str(missing))
    assert str(info.value).startswith(f"{missing}: cannot read")
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificates here\n")
    with pytest.raises(TLSSetupError) as info:
        UpstreamTLS(extra_ca_bundle=str(empty))
    assert str(info.value) == f"{empty}: no PEM certificates found in CA bundle"


def test_describe_other_failures_and_never_raises() -> None:
    handshake = SSL.Error([("SSL routines", "", "wrong version number")])
    assert describe_tls_failure(Failure(handshake)) == (
        "upstream TLS handshake failed: wrong version number"
    )
    assert describe_tls_failure(SSL.Error()).startswith("upstream TLS handshake failed: ")
    assert (
        describe_tls_failure(SSL.Error("odd\nshape")) == "upstream TLS handshake failed: odd shape"
    )
    assert describe_tls_failure(ConnectionResetError("reset")) == (
        "upstream TLS handshake failed: ConnectionResetError: reset"
    )

    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_tls_failure(Nasty()).startswith("upstream TLS handshake failed")


@pytest.mark.parametrize(
    "error, words",
    [
        (SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]),
         "client does not trust the proxy's CA for a.test (tlsv1 alert unknown ca)"),
        (SSL.Error([("SSL routines", "", "no shared cipher")]),
         "no shared protocol version or cipher with the client for a.test (no shared cipher)"),
        (ConnectionDone(), "client closed during the TLS handshake for a.test"),
        (ValueError("odd\nthing"), "client TLS handshake for a.test failed: ValueError: odd thing"),
    ],
)  # fmt: skip
def test_a_client_handshake_failure_is_one_line_in_words(error: Exception, words: str) -> None:
    assert describe_client_tls_failure(Failure(error), "a.test") == words
