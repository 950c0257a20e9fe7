"""Request targets: where a request or a CONNECT wants to go, through llhttp's URL parser.

Stricter than the parser where a proxy must be (RFC 9110 4.2, RFC 3986 3.2.2): no userinfo, no
port 0, and brackets only around an IPv6 literal. Each refusal is a one-line reason for a 400.
"""

from __future__ import annotations

from typing import Any

import httptools

from ..hosts import parse_ip


def _host(url: Any, raw: bytes) -> str:
    """The lowered host of parsed `url`, refusing what llhttp lets through."""
    if url.userinfo:
        raise ValueError("userinfo (user:password@) is not allowed in a request target")
    host: str = url.host.decode("ascii").lower()
    if b"[" in raw and b"[" + url.host + b"]" in raw:
        ip = parse_ip(host)
        if ip is None or ip.version != 6:
            raise ValueError("only an IPv6 address may stand in brackets")
    return host


def _port(url: Any, default: int) -> int:
    if url.port is None:
        return default
    if not 0 < url.port < 65536:
        raise ValueError("port out of range")
    return int(url.port)


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
    return _host(url, authority), _port(url, default_port)


def parse_target(
    target: bytes, intercepted: tuple[str, str, int] | None
) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, path) of a request target: absolute-form, or origin-form inside an
    intercepted CONNECT (`intercepted`: its scheme, https or plain http inside, host, port)."""
    if target.startswith(b"/"):
        if intercepted is None:
            raise ValueError(
                "origin-form request: this is a proxy, send an absolute URL (GET http://host/path)"
            )
        inside, host, port = intercepted
        return inside, host, port, target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ValueError("malformed request target") from None
    scheme = (url.schema or b"").lower()
    if scheme not in (b"http", b"https") or not url.host:
        raise ValueError("request target must be an http:// or https:// URL")
    host = _host(url, target)
    port = _port(url, 443 if scheme == b"https" else 80)
    path = url.path or b"/"
    if url.query:
        path += b"?" + url.query
    return scheme.decode(), host, port, path
