"""Host names, IP literals and host patterns: the one place that decides what they look like.

Configuration validation (``upstream.hosts``, ``tls.ca_page_host``, ``tls.passthrough``),
leaf certificates and cache keys (:func:`normalize_host`) and passthrough matching
(:class:`HostPatterns`) all use the definitions here, so a name that is accepted in one place
is accepted in all of them.

Pure functions on strings: no I/O, no reactor, no imports from the rest of the package.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence

__all__ = [
    "IPAddress",
    "HostPatterns",
    "check_pattern",
    "format_authority",
    "is_host_name",
    "is_ip_literal",
    "normalize_host",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------------------------
# IP literals


def parse_ip(host: str) -> IPAddress | None:
    """The address for an IP literal, else None.

    Surrounding whitespace, ``[...]`` brackets and an IPv6 zone id (``fe80::1%eth0``) are
    tolerated; the zone id is dropped. Only the canonical dotted-quad IPv4 form counts:
    ``127.1`` is a (strange) host name here, as it is for certificates.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    # A zone id is meaningful only on this machine: a peer cannot use it and it cannot go
    # into a certificate, so both sides of a comparison drop it.
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    """True if *host* is an IPv4 or IPv6 address literal (``[::1]`` included)."""
    return parse_ip(host) is not None


# --------------------------------------------------------------------------------------------
# Host names

# Underscores are accepted anywhere a letter is. RFC 952/1123 host names have none, but DNS
# names may (RFC 2181 section 11): "_dmarc.example.com", "_sip._tcp.example.com" and internal
# hosts such as "build_01.corp" exist, and curl and browsers connect to them. A client can
# CONNECT to such a host whatever we decide, so the proxy must be able to intercept it, pass it
# through and override its address like any other; rejecting "_" in the configuration would
# only make those hosts impossible to configure.
_NAME_CHAR = "A-Za-z0-9_"  # what a label may start and end with; "-" only inside
_LABEL = rf"[{_NAME_CHAR}](?:[{_NAME_CHAR}-]{{0,61}}[{_NAME_CHAR}])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
# A passthrough glob may use the characters of a host name plus "*". Nothing else of fnmatch
# ("?", "[...]") is offered: a bracket would be read as an IPv6 literal by people and as a
# character set by fnmatch.
_GLOB = re.compile(rf"[{_NAME_CHAR}.*-]+")


def is_host_name(name: str) -> bool:
    """True if *name* is a syntactically valid host name, case-insensitively.

    Dot-separated labels of letters, digits, ``-`` and ``_`` (see the note on underscores),
    1-63 characters each, not starting or ending with ``-``; at most 253 characters; no
    trailing dot. ASCII only: IDNA-encode first (:func:`normalize_host` does).
    """
    return _HOST_NAME.fullmatch(name) is not None


def normalize_host(host: str) -> str:
    """Canonical, lower-case form of a host for certificates and cache keys.

    IP literals become their compressed text form; names are lower-cased, lose one trailing
    dot, and are IDNA-encoded if they are not ASCII.

    :raises ValueError: if *host* is neither an IP literal nor a valid host name.
    """
    ip = parse_ip(host)
    if ip is not None:
        return ip.compressed
    name = _strip_name(host)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a valid host name: {host!r}") from None
    if not is_host_name(name):
        raise ValueError(f"not a valid host name: {host!r}")
    return name


def _strip_name(text: str) -> str:
    # "example.com." is the same host as "example.com" (fully qualified); certificates and
    # patterns never carry the dot.
    text = text.strip().lower()
    return text[:-1] if text.endswith(".") else text


def format_authority(host: str, port: int, default_port: int | None = None) -> str:
    """``host:port`` for a Host header or CONNECT target; IPv6 literals get brackets.

    The port is left out when it equals *default_port*. A host already in brackets is not
    bracketed twice.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port == default_port else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# Host patterns (tls.passthrough)


def check_pattern(pattern: str) -> None:
    """Check one passthrough pattern as written in the configuration.

    Accepted: a CIDR network (``10.0.0.0/8``, ``fd00::/8``), an IP address, or a host glob
    of host-name characters and ``*``.

    :raises ValueError: with a one-line message saying what is wrong.
    """
    if not pattern:
        raise ValueError("empty pattern")
    if "/" in pattern:
        try:
            ipaddress.ip_network(pattern, strict=False)
        except ValueError as error:
            raise ValueError(f"not a valid IP network {pattern!r}: {error}") from None
        return
    try:
        ipaddress.ip_address(pattern)
        return
    except ValueError:
        pass
    if not _GLOB.fullmatch(pattern):
        raise ValueError(
            f"not a host pattern, IP address or CIDR network: {pattern!r} "
            "(patterns may contain only letters, digits, '.', '-', '_' and '*')"
        )


class HostPatterns:
    """Compiled passthrough patterns; :meth:`matches` tells whether a host is covered.

    * Names are matched case-insensitively with :mod:`fnmatch` globs: ``*.bank.example``
      matches ``a.bank.example`` and ``x.y.bank.example`` but not ``bank.example``; a plain
      name matches only itself. One trailing dot is ignored on either side.
    * CIDR networks (``10.0.0.0/8``, ``fd00::/8``) and IP literals (bracketed or not) match
      IP hosts by address. IP hosts are also matched against globs by their compressed text
      form, so ``*`` and ``10.0.0.*`` work as expected.
    * Blank patterns are ignored. Patterns that name a port are not supported.

    Falsy when no usable pattern was given, so callers can skip matching altogether.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._networks: list[_Network] = []
        self._globs: list[str] = []
        for pattern in patterns:
            text = pattern.strip()
            if not text:
                continue
            bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            try:
                self._networks.append(ipaddress.ip_network(bare, strict=False))
            except ValueError:
                self._globs.append(_strip_name(text))

    def __bool__(self) -> bool:
        return bool(self._networks or self._globs)

    def matches(self, host: str) -> bool:
        """True if *host* (a name or an IP literal) matches any of the patterns."""
        ip = parse_ip(host)
        text = ip.compressed if ip is not None else _strip_name(host)
        if any(fnmatch.fnmatchcase(text, glob) for glob in self._globs):
            return True
        return ip is not None and any(
            ip.version == network.version and ip in network for network in self._networks
        )
