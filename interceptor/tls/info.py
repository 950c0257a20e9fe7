"""Reading a live connection's TLS details (for the addon API's client_conn / server_conn)."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL


def tls_connection(transport: Any) -> SSL.Connection | None:
    """The OpenSSL connection under a Twisted transport, if it speaks TLS.

    A TLS endpoint's transport is the TLS wrapper itself; a TCP transport that started TLS in
    place (our intercepted clients, an eager CONNECT's origin) has the wrapper as its protocol.
    """
    for candidate in (transport, getattr(transport, "protocol", None)):
        get = getattr(candidate, "getHandle", None)
        if get is None:
            continue
        try:
            handle = get()
        except Exception:  # a transport mid-teardown
            continue
        if isinstance(handle, SSL.Connection):
            return handle
    return None
