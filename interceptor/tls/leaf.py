"""Client side of interception: per-host leaf certificates and the server contexts presenting them.

After answering a CONNECT with "200 Connection established" the proxy calls
``transport.startTLS(InterceptContextFactory(minter, authority_host))``. The factory presents
a leaf for the CONNECT authority (plus the names of the origin's certificate, when the proxy
connected first) and, when the client sends SNI for a name that leaf lacks, switches to a leaf
for the SNI name. Leaves are minted by :class:`LeafMinter`, signed by the
:class:`~.ca.CertificateAuthority` users trust.

Cheap per connection, on the reactor thread: every leaf shares one EC P-256 key generated at
start-up (RSA key generation, 50-220 ms, never happens here), and leaves and their contexts
are cached.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from ..hosts import normalize_host, parse_ip
from .ca import CertificateAuthority
from .policy import BACKDATE, CN_MAX, HTTP11, utc

__all__ = ["InterceptContextFactory", "LeafMinter"]

_log = Logger()

# Under the 398 days browsers allow public leaves and the 825 days Apple enforces even for
# user-installed roots.
_LEAF_VALIDITY = datetime.timedelta(days=365)
# TLS 1.2 suites only (TLS 1.3 suites are configured separately and are all fine).  Leaves
# carry an EC key, so only ECDSA-authenticated suites are usable anyway.
_SERVER_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL:!MD5"


def _select_http11(conn: SSL.Connection, offered: list[bytes]) -> Any:
    """ALPN: we only speak HTTP/1.1 to clients; anything else means 'no ALPN', not failure."""
    return HTTP11 if HTTP11 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


class _Leaf:
    """A cached leaf certificate and the (lazily built) contexts presenting it.

    Contexts are immutable once used by a connection (pyOpenSSL enforces this), so the two
    variants are separate objects: ``plain`` is the target of ``set_context`` after SNI and
    carries no servername callback; ``initial`` is what factories return from
    ``getContext`` and does carry one.
    """

    __slots__ = ("host", "names", "certificate", "expires", "_plain", "_initial")

    def __init__(
        self, host: str, names: frozenset[str], certificate: x509.Certificate, expires: float
    ) -> None:
        self.host = host
        self.names = names  # every name it is valid for, host included
        self.certificate = certificate
        self.expires = expires
        self._plain: SSL.Context | None = None
        self._initial: SSL.Context | None = None


class LeafMinter:
    """Mints and caches (LRU, by lower-cased host and the origin's names) leaf certificates
    signed by *ca*.

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
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], _Leaf] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key()
        self._ski = x509.SubjectKeyIdentifier.from_public_key(public)
        try:
            ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
        except x509.ExtensionNotFound:
            # The CA's key, not certificate.public_key(): same key (CertificateAuthority checks
            # that), but typed as one that can sign, which the certificate's may not be.
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.private_key.public_key()
            )

    def intercept(
        self, host: str, port: int, origin: object | None = None
    ) -> InterceptContextFactory:
        """The client-side TLS context factory for an intercepted CONNECT to host:port.

        `origin`: the origin's certificate (an OpenSSL X509), when we connected first; the leaf
        then also names what it names (as mitmproxy's upstream_cert), so a client that asked
        by IP, or by another name of the same server, gets a certificate that matches.
        """
        return InterceptContextFactory(self, host, origin_names(origin))

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

    def _leaf(self, host: str, also: tuple[str, ...] = ()) -> _Leaf:
        host = normalize_host(host)
        key = (host, also)
        leaf = self._cache.get(key)
        if leaf is not None and leaf.expires > self._now():
            self.hits += 1
            self._cache.move_to_end(key)
            return leaf
        self.misses += 1
        leaf = self._mint(host, also)
        self._cache[key] = leaf
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return leaf

    def _mint(self, host: str, also: tuple[str, ...]) -> _Leaf:
        names = [host, *(name for name in also if name != host)]
        sans: list[x509.GeneralName] = []
        for name in names:
            ip = parse_ip(name)
            sans.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
        now = utc(self._now)
        start = now - BACKDATE
        end = min(start + _LEAF_VALIDITY, self._ca.certificate.not_valid_after_utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:CN_MAX])]))
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
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(self._ski, critical=False)
            .sign(self._ca.private_key, hashes.SHA256())
        )
        # Re-mint a day before expiry so a long-running proxy never serves a stale leaf.
        expires = (end - BACKDATE).timestamp()
        return _Leaf(host, frozenset(names), certificate, expires)

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
            if name in leaf.names:
                return  # the CONNECT's host, or a name the origin's certificate gave us
            conn.set_context(self._plain_context(self._leaf(name)))
        except Exception:
            # An exception escaping into OpenSSL would abort the handshake with an opaque
            # alert; log it and carry on with the authority's certificate instead.
            _log.failure("while selecting a certificate for SNI {sni!r}", sni=raw)


MAX_ORIGIN_NAMES = 100  # names copied from an origin's certificate, to bound a leaf's size


def origin_names(certificate: object | None) -> tuple[str, ...]:
    """The DNS names and IP addresses an origin's certificate (an OpenSSL X509) is valid for,
    sorted, at most MAX_ORIGIN_NAMES; () for None or a certificate without usable names."""
    if certificate is None:
        return ()
    try:
        cert = certificate.to_cryptography()  # type: ignore[attr-defined]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (AttributeError, ValueError, x509.ExtensionNotFound):
        return ()
    names: set[str] = set()
    for name in sans.get_values_for_type(x509.DNSName):
        try:
            wild = name.startswith("*.")
            names.add("*." + normalize_host(name[2:]) if wild else normalize_host(name))
        except ValueError:
            continue  # nothing we could put in a certificate of ours
    names.update(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    return tuple(sorted(names)[:MAX_ORIGIN_NAMES])


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

    def __init__(
        self, minter: LeafMinter, default_host: str, also: tuple[str, ...] = ()
    ) -> None:
        self._minter = minter
        self.also = also  # names the leaf carries besides default_host (the origin's)
        try:
            self.default_host = normalize_host(default_host)
        except ValueError:
            self.default_host = "invalid"
            self.also = ()

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted interface name
        """The initial server context: *default_host*'s leaf plus the SNI callback."""
        return self._minter._initial_context(self._minter._leaf(self.default_host, self.also))
