"""TLS for interception: the local CA, per-host leaf certificates, and upstream TLS.

Client side ("downstream"): after answering a CONNECT with "200 Connection established" the
proxy calls ``transport.startTLS(InterceptContextFactory(minter, authority_host))``.  The
factory presents a leaf certificate for the CONNECT authority and, when the client sends SNI,
switches to a leaf for the SNI name.  Leaves are minted by :class:`LeafMinter`, signed by the
:class:`CertificateAuthority` that users install in their trust stores.

Origin side ("upstream"): :class:`UpstreamTLS` hands out client connection creators that
verify the origin against the system trust store (plus an optional PEM bundle) and record the
exact X.509 verification error, so :func:`describe_tls_failure` can say *why* a 502 happened.

Everything here runs on the reactor thread and is cheap per connection: the CA is loaded (or
created) once at start-up, every leaf shares one EC P-256 key generated at start-up, and
both leaf contexts and upstream creators are cached.  RSA key generation (50-220 ms) never
happens here.
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import (
    DNS_ID,
    DNSPattern,
    IPAddress_ID,
    IPAddressPattern,
    verify_service_identity,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
)
from twisted.internet.ssl import CertificateOptions, OpenSSLDefaultPaths, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .hosts import normalize_host, parse_ip
from .text import one_line

__all__ = [
    "CertificateAuthority",
    "InterceptContextFactory",
    "LeafMinter",
    "TLSSetupError",
    "UpstreamCertificateError",
    "UpstreamNameMismatch",
    "UpstreamTLS",
    "describe_tls_failure",
]

_log = Logger()

_CA_VALIDITY = datetime.timedelta(days=3650)
# Under the 398 days browsers allow public leaves and the 825 days Apple enforces even for
# user-installed roots.
_LEAF_VALIDITY = datetime.timedelta(days=365)
# Backdate notBefore so clients whose clocks run slow still accept fresh certificates.
_BACKDATE = datetime.timedelta(days=1)
_CN_MAX = 64  # X.520 upper bound; cryptography refuses longer common names.

_HTTP11 = b"http/1.1"
# TLS 1.2 suites only (TLS 1.3 suites are configured separately and are all fine).  Leaves
# carry an EC key, so only ECDSA-authenticated suites are usable anyway.
_SERVER_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL:!MD5"


class TLSSetupError(Exception):
    """A TLS configuration problem found at start-up.

    The message is one line naming the file and the problem, e.g.
    ``/x/ca.key: private key does not match certificate /x/ca.pem``, fit for printing as the
    reason ``twistd`` refuses to start.
    """


# --------------------------------------------------------------------------------------------
# Certificate authority


def _utc(now: Callable[[], float]) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now(), tz=datetime.UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSSetupError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # e.g. EACCES on the directory
        raise TLSSetupError(f"{path}: cannot access: {e.strerror or e}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with *mode* from the moment it is created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        raise TLSSetupError(f"{path}: cannot create: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)  # a truncated file would read as "corrupt" next start
        raise TLSSetupError(f"{path}: cannot write: {e.strerror or e}") from None


def _spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CertificateAuthority:
    """The local CA that signs leaf certificates; users add ``ca.pem`` to their trust store.

    Use :meth:`load_or_create`.  ``ca.key`` is an unencrypted PEM private key written with
    mode 0600; ``ca.pem`` is the certificate.  The key is EC P-256 when created here; an
    existing RSA or EC CA is accepted.  ``certificate`` and ``private_key`` hold the parsed
    (*cryptography*) objects.
    """

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    cert_der: bytes
    created: bool

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        created: bool,
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.certificate = cert
        self.private_key = key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.created = created

    @classmethod
    def load_or_create(
        cls, ca_dir: str | os.PathLike[str], now: Callable[[], float] = time.time
    ) -> CertificateAuthority:
        """Load ``ca_dir/ca.pem`` + ``ca_dir/ca.key``, creating both on first use.

        A missing *ca_dir* is created with mode 0700.

        :raises TLSSetupError: (one line) if a file is unreadable or corrupt, the key does not
            match the certificate, the certificate is not a CA or has expired, or only one of
            the two files exists.
        """
        directory = Path(ca_dir)
        cert_path = directory / "ca.pem"
        key_path = directory / "ca.key"
        has_cert, has_key = _exists(cert_path), _exists(key_path)
        if has_cert and has_key:
            return cls._load(cert_path, key_path, now)
        if has_cert or has_key:
            present, missing = (cert_path, key_path) if has_cert else (key_path, cert_path)
            raise TLSSetupError(
                f"{missing}: missing while {present} exists; restore it, or remove {present} "
                "to create a new CA (clients must then trust the new one)"
            )
        return cls._create(directory, cert_path, key_path, now)

    @classmethod
    def _create(
        cls, directory: Path, cert_path: Path, key_path: Path, now: Callable[[], float]
    ) -> CertificateAuthority:
        if not directory.exists():
            try:
                directory.parent.mkdir(parents=True, exist_ok=True)
                directory.mkdir(mode=0o700)
                # mkdir's mode is filtered by the umask, which could leave us unable to write.
                directory.chmod(0o700)
            except OSError as e:
                raise TLSSetupError(
                    f"{directory}: cannot create directory: {e.strerror or e}"
                ) from None
        elif not directory.is_dir():
            raise TLSSetupError(f"{directory}: not a directory")

        key = ec.generate_private_key(ec.SECP256R1())
        host = socket.gethostname() or "unknown host"
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"interceptor CA on {host}"[:_CN_MAX]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interceptor"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"made on {host}"[:_CN_MAX]),
            ]
        )
        start = _utc(now) - _BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _CA_VALIDITY)
            # pathlen 0: this CA signs leaves only, never sub-CAs.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first: if we die in between, the next start refuses with "ca.pem missing"
        # rather than silently making a CA whose key might be lying around elsewhere.
        _write_new(key_path, key_pem, 0o600)
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert_path, key_path, cert, key, created=True)

    @classmethod
    def _load(
        cls, cert_path: Path, key_path: Path, now: Callable[[], float]
    ) -> CertificateAuthority:
        key_data = _read(key_path, "private key")
        cert_data = _read(cert_path, "certificate")
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            raise TLSSetupError(
                f"{key_path}: private key is encrypted; an unencrypted PEM key is required"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise TLSSetupError(f"{key_path}: not a valid PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TLSSetupError(
                f"{key_path}: unsupported key type {type(key).__name__}; use EC or RSA"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_data)
        except ValueError:
            raise TLSSetupError(f"{cert_path}: not a valid PEM certificate") from None
        if _spki(cert.public_key()) != _spki(key.public_key()):
            raise TLSSetupError(f"{key_path}: private key does not match certificate {cert_path}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        except ValueError:  # a malformed extension; cryptography parses them lazily
            raise TLSSetupError(f"{cert_path}: certificate has malformed extensions") from None
        if constraints is None or not constraints.ca:
            raise TLSSetupError(
                f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)"
            )
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise TLSSetupError(f"{cert_path}: CA certificate keyUsage lacks keyCertSign")
        if cert.not_valid_after_utc <= _utc(now):
            # Every leaf would fail to verify; better to refuse to start than to 'work'.
            raise TLSSetupError(
                f"{cert_path}: CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "remove ca.pem and ca.key to create a new CA"
            )
        return cls(cert_path, key_path, cert, key, created=False)


# --------------------------------------------------------------------------------------------
# Leaf certificates and server contexts


def _select_http11(conn: SSL.Connection, offered: list[bytes]) -> Any:
    """ALPN: we only speak HTTP/1.1 to clients; anything else means 'no ALPN', not failure."""
    return _HTTP11 if _HTTP11 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


class _Leaf:
    """A cached leaf certificate and the (lazily built) contexts presenting it.

    Contexts are immutable once used by a connection (pyOpenSSL enforces this), so the two
    variants are separate objects: ``plain`` is the target of ``set_context`` after SNI and
    carries no servername callback; ``initial`` is what factories return from
    ``getContext`` and does carry one.
    """

    __slots__ = ("host", "certificate", "expires", "_plain", "_initial")

    def __init__(self, host: str, certificate: x509.Certificate, expires: float) -> None:
        self.host = host
        self.certificate = certificate
        self.expires = expires
        self._plain: SSL.Context | None = None
        self._initial: SSL.Context | None = None


class LeafMinter:
    """Mints and caches (LRU, by lower-cased host) leaf certificates signed by *ca*.

    All leaves share one EC P-256 key generated here, which keeps minting at a fraction of a
    millisecond: one ECDSA signature plus building an :class:`OpenSSL.SSL.Context`.
    """

    hits: int
    misses: int

    def __init__(
        self,
        ca: CertificateAuthority,
        cache_size: int = 1000,
        now: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._ca = ca
        self._cache_size = cache_size
        self._now = now
        self._cache: OrderedDict[str, _Leaf] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key()
        self._ski = x509.SubjectKeyIdentifier.from_public_key(public)
        try:
            ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.certificate.public_key()  # type: ignore[arg-type]
            )

    def __len__(self) -> int:
        return len(self._cache)

    def context_for(self, host: str) -> SSL.Context:
        """A server context presenting a leaf for *host*, chained to the CA.

        DNS SAN for names, IP SAN for IP literals (IPv6 included); ALPN selects http/1.1
        only; TLS 1.2 minimum.  No servername callback.

        :raises ValueError: if *host* cannot be put into a certificate.
        """
        return self._plain_context(self._leaf(host))

    # Internals used by InterceptContextFactory as well.

    def _leaf(self, host: str) -> _Leaf:
        key = normalize_host(host)
        leaf = self._cache.get(key)
        if leaf is not None and leaf.expires > self._now():
            self.hits += 1
            self._cache.move_to_end(key)
            return leaf
        self.misses += 1
        leaf = self._mint(key)
        self._cache[key] = leaf
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return leaf

    def _mint(self, host: str) -> _Leaf:
        ip = parse_ip(host)
        san: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(host)
        now = _utc(self._now)
        start = now - _BACKDATE
        end = min(start + _LEAF_VALIDITY, self._ca.certificate.not_valid_after_utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:_CN_MAX])]))
            .issuer_name(self._ca.certificate.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(self._ski, critical=False)
            .sign(self._ca.private_key, hashes.SHA256())
        )
        # Re-mint a day before expiry so a long-running proxy never serves a stale leaf.
        expires = (end - _BACKDATE).timestamp()
        return _Leaf(host, certificate, expires)

    def _new_context(self, leaf: _Leaf) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        # Same stance as Twisted's CertificateOptions: no compression (CRIME), no session
        # tickets or server-side session cache (contexts are swapped by SNI, which makes
        # resumption across them error-prone), release idle buffers.
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_cipher_list(_SERVER_CIPHERS)
        ctx.use_certificate(leaf.certificate)
        ctx.use_privatekey(self._key)
        ctx.add_extra_chain_cert(self._ca.certificate)
        ctx.set_alpn_select_callback(_select_http11)
        return ctx

    def _plain_context(self, leaf: _Leaf) -> SSL.Context:
        if leaf._plain is None:
            leaf._plain = self._new_context(leaf)
        return leaf._plain

    def _initial_context(self, leaf: _Leaf) -> SSL.Context:
        if leaf._initial is None:
            ctx = self._new_context(leaf)
            ctx.set_tlsext_servername_callback(functools.partial(self._on_servername, leaf))
            leaf._initial = ctx
        return leaf._initial

    def _on_servername(self, leaf: _Leaf, conn: SSL.Connection) -> None:
        """Servername callback of ``leaf``'s initial context: SNI wins over the authority."""
        raw: bytes | None = None
        try:
            raw = conn.get_servername()
            if not raw:
                return  # no SNI (IP literal, or an old client): keep the authority's leaf
            try:
                name = normalize_host(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                # Nothing sensible to mint; the client will reject the authority's leaf
                # itself, which is more informative than aborting the handshake here.
                return
            if name == leaf.host:
                return
            conn.set_context(self._plain_context(self._leaf(name)))
        except Exception:
            # An exception escaping into OpenSSL would abort the handshake with an opaque
            # alert; log it and carry on with the authority's certificate instead.
            _log.failure("while selecting a certificate for SNI {sni!r}", sni=raw)


@implementer(IOpenSSLContextFactory)
class InterceptContextFactory:
    """Context factory for ``transport.startTLS`` on an intercepted client connection.

    One per intercepted CONNECT.  Presents a leaf for *default_host* (the CONNECT authority,
    which is all we know when the client sends no SNI, e.g. for IP literals) and switches to
    a leaf for the SNI name when the client sends one.  The SNI name actually used can be
    read after the handshake with ``transport.getHandle().get_servername()``.

    Never raises for a malformed *default_host* (say ``ex!ample``): such a connection gets a
    leaf for ``invalid`` (RFC 6761), which no client accepts for another name, unless the
    client's SNI names a usable host.  The proxy stays up either way.
    """

    def __init__(self, minter: LeafMinter, default_host: str) -> None:
        self._minter = minter
        try:
            self.default_host = normalize_host(default_host)
        except ValueError:
            self.default_host = "invalid"

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted interface name
        """The initial server context: *default_host*'s leaf plus the SNI callback."""
        return self._minter._initial_context(self._minter._leaf(self.default_host))


# --------------------------------------------------------------------------------------------
# Upstream (origin) TLS

_V = SSL.X509VerificationCodes
# OpenSSL 3 wording for the common cases, so messages stay the same whichever OpenSSL
# pyOpenSSL happens to be linked against (1.1 said "self signed certificate").
_VERIFY_MESSAGES: dict[int, str] = {
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT: "unable to get issuer certificate",
    _V.ERR_CERT_SIGNATURE_FAILURE: "certificate signature failure",
    _V.ERR_CERT_NOT_YET_VALID: "certificate is not yet valid",
    _V.ERR_CERT_HAS_EXPIRED: "certificate has expired",
    _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed certificate",
    _V.ERR_SELF_SIGNED_CERT_IN_CHAIN: "self-signed certificate in certificate chain",
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unable to get local issuer certificate",
    _V.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unable to verify the first certificate",
    _V.ERR_CERT_CHAIN_TOO_LONG: "certificate chain too long",
    _V.ERR_CERT_REVOKED: "certificate revoked",
    _V.ERR_INVALID_CA: "invalid CA certificate",
    _V.ERR_PATH_LENGTH_EXCEEDED: "path length constraint exceeded",
    _V.ERR_INVALID_PURPOSE: "unsupported certificate purpose",
    _V.ERR_CERT_UNTRUSTED: "certificate not trusted",
    _V.ERR_CERT_REJECTED: "certificate rejected",
    _V.ERR_KEYUSAGE_NO_CERTSIGN: "key usage does not include certificate signing",
    _V.ERR_UNHANDLED_CRITICAL_EXTENSION: "unhandled critical extension",
    _V.ERR_INVALID_NON_CA: "invalid non-CA certificate (has CA markings)",
    _V.ERR_PERMITTED_VIOLATION: "permitted subtree violation",
    _V.ERR_EXCLUDED_VIOLATION: "excluded subtree violation",
}


def _verify_message(code: int) -> str:
    message = _VERIFY_MESSAGES.get(code)
    if message is not None:
        return message
    try:
        # The linked OpenSSL's own wording for the rarer codes.
        from cryptography.hazmat.bindings.openssl.binding import Binding

        raw = Binding.lib.X509_verify_cert_error_string(code)
        return Binding.ffi.string(raw).decode("utf-8", "replace")
    except Exception:
        return f"X.509 verify error {code}"


class UpstreamCertificateError(SSL.Error):
    """The origin's certificate chain failed verification (expired, unknown CA, ...).

    Delivered as the ``connectionLost`` reason of upstream TLS connections made with
    :meth:`UpstreamTLS.creator_for`.  A subclass of :class:`OpenSSL.SSL.Error`, so code that
    checks for ``SSL.Error`` keeps working; it adds the X.509 verify result.

    :ivar code: the X509_V_ERR_* code; :ivar depth: where in the chain (0 = the leaf);
    :ivar reason: OpenSSL's text for *code*, e.g. ``certificate has expired``.
    """

    def __init__(self, code: int, depth: int, hostname: str) -> None:
        # Same args shape as the SSL.Error OpenSSL would have raised.
        super().__init__([("SSL routines", "", "certificate verify failed")])
        self.code = code
        self.depth = depth
        self.hostname = hostname
        self.reason = _verify_message(code)

    def __str__(self) -> str:
        return f"certificate verify failed: {self.reason}"


class UpstreamNameMismatch(VerificationError):
    """A service-identity :class:`VerificationError` that also knows both sides' names.

    :ivar hostname: the name (or IP literal) we connected for;
    :ivar presented: the DNS / IP subjectAltNames the origin's certificate carries.
    """

    hostname: str = ""
    presented: tuple[str, ...] = ()


def _presented_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        patterns = extract_patterns(certificate)
    except Exception:
        return ()
    names: list[str] = []
    for pattern in patterns:
        if isinstance(pattern, DNSPattern):
            names.append(pattern.pattern.decode("ascii", "replace"))
        elif isinstance(pattern, IPAddressPattern):
            names.append(str(pattern.pattern))
    return tuple(names)


class _SystemPlusBundle(OpenSSLDefaultPaths):
    """Trust the platform's default store plus extra CA certificates from a PEM bundle.

    Subclassing ``OpenSSLDefaultPaths`` (what ``platformTrust()`` returns) inherits its
    ``IOpenSSLTrustRoot`` declaration, which Twisted keeps in a private module.
    """

    def __init__(self, extra: Sequence[x509.Certificate]) -> None:
        self._extra = [X509.from_cryptography(c) for c in extra]

    def _addCACertsToContext(self, context: SSL.Context) -> None:  # noqa: N802
        super()._addCACertsToContext(context)
        store = context.get_cert_store()
        assert store is not None
        for cert in self._extra:
            store.add_cert(cert)


def _read_bundle(path: str) -> list[x509.Certificate]:
    data = _read(Path(path), "CA bundle")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSSetupError(f"{path}: no PEM certificates found in CA bundle")
    return certs


@implementer(IOpenSSLClientConnectionCreator)
class _OriginCreator:
    """Per-hostname connection creator sharing one client context.

    Does what ``optionsForClientTLS`` does per connection (SNI for DNS names, chain check
    plus service-identity name check at depth 0) but records *why* verification failed and
    fails closed on unexpected errors.
    """

    def __init__(self, options: CertificateOptions, hostname: str, verify: bool) -> None:
        self.hostname = hostname
        self._options = options
        self._verify = verify
        ip = parse_ip(hostname)
        self._sni: bytes | None = None  # RFC 6066: no IP literals in SNI
        self._service_id: DNS_ID | IPAddress_ID | None = None
        if ip is not None:
            self._service_id = IPAddress_ID(ip.compressed)
        else:
            # A trailing dot is valid DNS but never appears in certificates or SNI.
            name = hostname.strip()
            try:
                self._service_id = DNS_ID(name[:-1] if name.endswith(".") else name)
            except (ValueError, UnicodeError):
                # No certificate can match a name like this; fail at verification with a
                # name mismatch rather than raising into the proxy's connect path.
                pass
            else:
                self._sni = self._service_id.hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802 N803
        """Build the client connection for one upstream TLS handshake."""
        conn = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        if self._verify:
            conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_cb)
        return conn

    def _fail(self, conn: SSL.Connection, error: Exception) -> None:
        # Returning False alone would surface as a bare "certificate verify failed"; handing
        # the TLS protocol our own reason makes it the connectionLost reason instead.
        protocol = conn.get_app_data()
        fail = getattr(protocol, "failVerification", None)
        if fail is not None:
            fail(Failure(error))

    def _verify_cb(self, conn: SSL.Connection, cert: X509, err: int, depth: int, ok: int) -> bool:
        try:
            if not ok:
                self._fail(conn, UpstreamCertificateError(err, depth, self.hostname))
                return False
            if depth != 0:
                return True
            certificate = cert.to_cryptography()
            service_id = self._service_id
            try:
                if service_id is None:
                    raise VerificationError(errors=[])
                verify_service_identity(extract_patterns(certificate), [service_id], [])
            except (VerificationError, CertificateError):
                # CertificateError means no subjectAltName at all: still a name mismatch.
                mismatches = []
                if service_id is not None:
                    mismatches = [service_id.error_on_mismatch(mismatched_id=service_id)]
                error = UpstreamNameMismatch(errors=mismatches)
                error.hostname = self.hostname
                error.presented = _presented_names(certificate)
                self._fail(conn, error)
                return False
            return True
        except Exception:
            # Twisted's own callback returns the chain result here (fails open); we refuse.
            _log.failure("while verifying the certificate of {host}", host=self.hostname)
            return False


class UpstreamTLS:
    """Builds client connection creators for origins.  Created once per process.

    :param verify: check the origin's chain against the system trust store plus
        *extra_ca_bundle*, and its name with service-identity.  ``False`` checks nothing
        (SNI is still sent).
    :param extra_ca_bundle: path of a PEM file with extra trusted CA certificates, read now.
    :raises TLSSetupError: if the bundle is unreadable or holds no certificates.

    All creators share one client context: loading the system trust store costs ~4 ms per
    context, which would otherwise be paid on the reactor thread for every new origin host.
    """

    def __init__(self, verify: bool = True, extra_ca_bundle: str = "", cache_size: int = 1024):
        self.verify = verify
        self.extra_ca = _read_bundle(extra_ca_bundle) if extra_ca_bundle else []
        self._options = CertificateOptions(
            trustRoot=_SystemPlusBundle(self.extra_ca) if verify else None,
            acceptableProtocols=[_HTTP11],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        # Build the context (and load the trust store) now, at start-up.
        self._options.getContext()
        self._cache_size = max(1, cache_size)
        self._creators: OrderedDict[str, _OriginCreator] = OrderedDict()

    def creator_for(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Connection creator for the origin *hostname* (name or IP literal), cached.

        TLS 1.2 minimum, ALPN offering http/1.1, SNI for names.  Verification failures reach
        ``connectionLost`` as :class:`UpstreamCertificateError` (an ``SSL.Error``) or
        :class:`UpstreamNameMismatch` (a service-identity ``VerificationError``).  Never
        raises: a *hostname* no certificate can match fails verification as a mismatch.
        """
        creator = self._creators.get(hostname)
        if creator is None:
            creator = _OriginCreator(self._options, hostname, self.verify)
            self._creators[hostname] = creator
            if len(self._creators) > self._cache_size:
                self._creators.popitem(last=False)
        else:
            self._creators.move_to_end(hostname)
        return creator


# --------------------------------------------------------------------------------------------
# Failure descriptions


# Long enough for any OpenSSL reason plus a few certificate names; a 502 body and a log line
# should not carry an unbounded error string.
_DESCRIPTION_LIMIT = 300


def _one_line(text: str) -> str:
    return one_line(text, _DESCRIPTION_LIMIT)


def _openssl_reasons(error: SSL.Error) -> str:
    """The reason strings of a pyOpenSSL error queue, e.g. 'wrong version number'."""
    args = error.args
    if args and isinstance(args[0], list):
        reasons = [
            str(entry[2]) for entry in args[0] if isinstance(entry, tuple) and len(entry) >= 3
        ]
        if any(reasons):
            return "; ".join(r for r in reasons if r)
    return str(error) or type(error).__name__


def _mismatch_target(error: VerificationError) -> str:
    targets = []
    for mismatch in getattr(error, "errors", None) or ():
        service_id = getattr(mismatch, "mismatched_id", None)
        if isinstance(service_id, DNS_ID):
            targets.append(service_id.hostname.decode("ascii", "replace"))
        elif isinstance(service_id, IPAddress_ID):
            targets.append(str(service_id.ip))
        elif service_id is not None:
            targets.append(str(service_id))
    return ", ".join(targets) or getattr(error, "hostname", "") or "the requested host"


def describe_tls_failure(reason: Failure | BaseException) -> str:
    """One line describing an upstream TLS failure, for a 502 body or a log line.

    Starts with the cause class:

    * ``upstream certificate verify failed: certificate has expired`` (also
      ``self-signed certificate``, ``unable to get local issuer certificate``, ...),
    * ``upstream name mismatch: certificate is not valid for wrong.example``,
    * ``upstream TLS handshake failed: <openssl reason>`` otherwise.

    Never raises.
    """
    try:
        error = reason.value if isinstance(reason, Failure) else reason
        if isinstance(error, UpstreamCertificateError):
            return _one_line(f"upstream certificate verify failed: {error.reason}")
        if isinstance(error, VerificationError):
            message = (
                f"upstream name mismatch: certificate is not valid for {_mismatch_target(error)}"
            )
            presented = getattr(error, "presented", ())
            if presented:
                shown = ", ".join(presented[:3]) + (", ..." if len(presented) > 3 else "")
                message += f" (it is for {shown})"
            return _one_line(message)
        if isinstance(error, CertificateError):
            return _one_line(f"upstream name mismatch: {error}")
        if isinstance(error, SSL.Error):
            reasons = _openssl_reasons(error)
            if "certificate verify failed" in reasons:
                # Verified by something other than our creators: no recorded reason.
                return _one_line(f"upstream certificate verify failed: {reasons}")
            return _one_line(f"upstream TLS handshake failed: {reasons}")
        text = str(error)
        detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
        return _one_line(f"upstream TLS handshake failed: {detail}")
    except Exception:
        return "upstream TLS handshake failed: (unprintable error)"
