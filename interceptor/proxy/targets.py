"""Request targets: where a request or a CONNECT wants to go, through llhttp's URL parser."""

from __future__ import annotations

import httptools


def split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """host and port of a CONNECT target (`host:port`, `[v6]:port`), through llhttp's URL parser.

    Raises ValueError for anything that is not a valid authority (including a path or userinfo).
    """
    try:
        url = httptools.parse_url(b"http://" + authority + b"/")
    except httptools.HttpParserInvalidURLError:
        raise ValueError("malformed authority") from None
    if not url.host or url.path != b"/" or url.userinfo or url.query or url.fragment:
        raise ValueError("malformed authority")
    port = url.port or default_port
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return url.host.decode("ascii").lower(), port


def parse_target(target: bytes, intercepted: tuple[str, int] | None) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, path) of a request target: absolute-form, or origin-form inside an
    intercepted CONNECT."""
    if target.startswith(b"/"):
        if intercepted is None:
            raise ValueError(
                "origin-form request: this is a proxy, send an absolute URL (GET http://host/path)"
            )
        host, port = intercepted
        return "https", host, port, target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ValueError("malformed request target") from None
    scheme = (url.schema or b"").lower()
    if scheme not in (b"http", b"https") or not url.host:
        raise ValueError("request target must be an http:// or https:// URL")
    port = url.port or (443 if scheme == b"https" else 80)
    path = url.path or b"/"
    if url.query:
        path += b"?" + url.query
    return scheme.decode(), url.host.decode("ascii").lower(), port, path
