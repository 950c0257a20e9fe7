"""Throw-away origin certificates for tests (pure functions, no pytest fixtures).

An "origin root" CA plays a public CA that the proxy does not trust by default; the origin
server certificates below are what loopback TLS origins present to the proxy's upstream side.
Everything is EC P-256: generating a key takes about a millisecond.

Every function returns PEM bytes as ``(cert_pem, key_pem)``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions

PemPair = tuple[bytes, bytes]

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> PemPair:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interceptor tests"),
        ]
    )


def make_origin_root(cn: str = "Test Origin Root") -> PemPair:
    """A self-signed CA standing in for a public root the proxy does not trust by default."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def make_server_cert(
    root: PemPair | None,
    dns_names: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = ("127.0.0.1",),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> PemPair:
    """A server certificate signed by *root*, or self-signed when *root* is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    dns_names = list(dns_names)
    ip_addresses = list(ip_addresses)
    cn = (dns_names or ip_addresses or ["origin"])[0]
    subject = _name(cn)
    if root is None:
        issuer_name, signing_key = subject, key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    else:
        root_cert = x509.load_pem_x509_certificate(root[0])
        signing_key = serialization.load_pem_private_key(root[1], password=None)
        issuer_name = root_cert.subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(root_cert.public_key())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _DAY)
        .not_valid_after(not_after or now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(aki, critical=False)
        .sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _pem(cert, key)


def good_cert(root: PemPair) -> PemPair:
    """Valid for ``localhost`` and ``127.0.0.1``, signed by *root*."""
    return make_server_cert(root)


def expired_cert(root: PemPair) -> PemPair:
    """Right names, signed by *root*, expired yesterday."""
    now = _now()
    return make_server_cert(root, not_before=now - 30 * _DAY, not_after=now - _DAY)


def wrong_name_cert(root: PemPair) -> PemPair:
    """Signed by *root* and current, but only valid for ``wrong.example``."""
    return make_server_cert(root, dns_names=("wrong.example",), ip_addresses=())


def self_signed_cert() -> PemPair:
    """Valid for ``localhost`` and ``127.0.0.1`` but signed by its own key."""
    return make_server_cert(None)


def write_pair(directory: str | Path, stem: str, pair: PemPair) -> tuple[Path, Path]:
    """Write ``stem.pem`` and ``stem.key`` into *directory*; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(pair[0])
    key_path.write_bytes(pair[1])
    key_path.chmod(0o600)
    return cert_path, key_path


def origin_context_factory(
    cert_pem: bytes, key_pem: bytes, acceptable_protocols: Iterable[bytes] | None = (b"http/1.1",)
) -> CertificateOptions:
    """Server-side Twisted TLS options for a loopback origin presenting *cert_pem*."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    # CertificateOptions hands these straight to pyOpenSSL, which prefers cryptography objects
    # (passing pyOpenSSL X509/PKey is deprecated there).
    return CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certificate,  # type: ignore[arg-type]
        acceptableProtocols=list(acceptable_protocols) if acceptable_protocols else None,
    )
