"""The local certificate authority: created on first use, loaded and checked on every start.

``ca_dir/ca.key`` (unencrypted PEM, mode 0600) and ``ca_dir/ca.pem`` are what users trust;
everything that can be wrong with them is found here, at start-up, and reported as one
:class:`~.errors.TLSSetupError` line, so the proxy never runs with a CA that cannot sign.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import TLSSetupError, read_file
from .policy import BACKDATE, CN_MAX, utc

__all__ = ["CertificateAuthority"]

_CA_VALIDITY = datetime.timedelta(days=3650)


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


def _spki(key: PublicKeyTypes) -> bytes:
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
                x509.NameAttribute(NameOID.COMMON_NAME, f"interceptor CA on {host}"[:CN_MAX]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interceptor"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"made on {host}"[:CN_MAX]),
            ]
        )
        start = utc(now) - BACKDATE
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
        key_data = read_file(key_path, "private key")
        cert_data = read_file(cert_path, "certificate")
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
        if cert.not_valid_after_utc <= utc(now):
            # Every leaf would fail to verify; better to refuse to start than to 'work'.
            raise TLSSetupError(
                f"{cert_path}: CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "remove ca.pem and ca.key to create a new CA"
            )
        return cls(cert_path, key_path, cert, key, created=False)
