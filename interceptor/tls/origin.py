"""Origin side: TLS to upstream servers, and saying in one line why it failed.

:class:`UpstreamTLS` hands out client connection creators that verify the origin against the
system trust store (plus an optional PEM bundle) and record the exact X.509 verification
error or name mismatch, so :func:`describe_tls_failure` can say *why* a 502 happened.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
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
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, OpenSSLDefaultPaths, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..hosts import parse_ip
from ..text import one_line
from .errors import TLSSetupError, read_file
from .policy import HTTP11

__all__ = [
    "UpstreamCertificateError",
    "UpstreamNameMismatch",
    "UpstreamTLS",
    "describe_tls_failure",
]

_log = Logger()

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
        # cffi's ffi object is untyped; the annotation states what ffi.string().decode() gives.
        text: str = Binding.ffi.string(raw).decode("utf-8", "replace")
        return text
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
    data = read_file(Path(path), "CA bundle")
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

    def __init__(
        self, verify: bool = True, extra_ca_bundle: str = "", cache_size: int = 1024
    ) -> None:
        self.verify = verify
        extra_ca = _read_bundle(extra_ca_bundle) if extra_ca_bundle else []
        self._options = CertificateOptions(
            trustRoot=_SystemPlusBundle(extra_ca) if verify else None,
            acceptableProtocols=[HTTP11],
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


# What a client's alert or OpenSSL's reason says about why it refused our handshake.
_DISTRUST = ("unknown ca", "certificate unknown", "bad certificate", "unsupported certificate")
_NO_SHARED = ("no shared cipher", "unsupported protocol", "version too low", "no protocols",
              "wrong version number", "protocol version")  # fmt: skip


def describe_client_tls_failure(reason: Failure | BaseException, host: str) -> str:
    """One line saying why an intercepted client's TLS handshake for `host` failed:

    * ``client does not trust the proxy's CA for localhost (tlsv1 alert unknown ca)``,
    * ``no shared protocol version or cipher with the client for ... (...)``,
    * ``client closed during the TLS handshake for ...``, or the handshake's own error.

    Never raises."""
    try:
        error = reason.value if isinstance(reason, Failure) else reason
        if isinstance(error, SSL.Error):
            why = _openssl_reasons(error)
            if any(word in why for word in _DISTRUST):
                text = f"client does not trust the proxy's CA for {host} ({why})"
            elif any(word in why for word in _NO_SHARED):
                text = f"no shared protocol version or cipher with the client for {host} ({why})"
            else:
                text = f"client TLS handshake for {host} failed: {why}"
        elif isinstance(error, ConnectionDone | ConnectionLost):
            text = f"client closed during the TLS handshake for {host}"
        else:
            text = f"client TLS handshake for {host} failed: {type(error).__name__}: {error}"
        return one_line(text, limit=300)
    except Exception:
        return f"client TLS handshake for {host} failed: (unprintable error)"


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
        # Bounded: the text quotes certificate names and OpenSSL's queue, both from the peer.
        return one_line(_describe(error), limit=300)
    except Exception:
        return "upstream TLS handshake failed: (unprintable error)"


def _describe(error: BaseException | None) -> str:
    if isinstance(error, UpstreamCertificateError):
        return f"upstream certificate verify failed: {error.reason}"
    if isinstance(error, VerificationError):
        message = f"upstream name mismatch: certificate is not valid for {_mismatch_target(error)}"
        presented = getattr(error, "presented", ())
        if presented:
            shown = ", ".join(presented[:3]) + (", ..." if len(presented) > 3 else "")
            message += f" (it is for {shown})"
        return message
    if isinstance(error, CertificateError):
        return f"upstream name mismatch: {error}"
    if isinstance(error, SSL.Error):
        reasons = _openssl_reasons(error)
        if "certificate verify failed" in reasons:
            # Verified by something other than our creators: no recorded reason.
            return f"upstream certificate verify failed: {reasons}"
        return f"upstream TLS handshake failed: {reasons}"
    text = str(error)
    detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"upstream TLS handshake failed: {detail}"
