"""TLS for interception: the local CA, per-host leaf certificates, and upstream TLS.

* :mod:`.ca`: the :class:`CertificateAuthority` users trust, created or loaded at start-up.
* :mod:`.leaf`: :class:`LeafMinter` and :class:`InterceptContextFactory`, the client side
  of an intercepted CONNECT (leaf per host, SNI, ALPN).
* :mod:`.origin`: :class:`UpstreamTLS`, verification of origins, and
  :func:`describe_tls_failure`.
* :mod:`.errors` and :mod:`.policy`, the floor the others share: :class:`TLSSetupError`,
  reading the user's files, certificate times and the ALPN protocol.

Host names and patterns are not TLS business: they live in :mod:`interceptor.hosts`.
"""

from .ca import CertificateAuthority
from .errors import TLSSetupError
from .leaf import InterceptContextFactory, LeafMinter
from .origin import UpstreamTLS, describe_client_tls_failure, describe_tls_failure

# What the service uses; the rest (UpstreamCertificateError, ...) is imported from its module.
__all__ = [
    "CertificateAuthority",
    "InterceptContextFactory",
    "LeafMinter",
    "TLSSetupError",
    "UpstreamTLS",
    "describe_client_tls_failure",
    "describe_tls_failure",
]
