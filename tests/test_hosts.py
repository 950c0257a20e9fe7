"""Tests for interceptor.hosts: IP literals, the host-name syntax, normalisation, patterns."""

from __future__ import annotations

import ipaddress

import pytest

from interceptor.hosts import (
    HostPatterns,
    IPAddress,
    check_pattern,
    format_authority,
    is_host_name,
    is_ip_literal,
    normalize_host,
    parse_ip,
)

# ---------------------------------------------------------------------------------------------
# IP literals (cases moved from test_tls.py, where these helpers used to live)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("fe80::1%eth0", True),
        ("example.com", False),
        ("127.1", False),
        ("", False),
    ],
)
def test_is_ip_literal(host: str, expected: bool) -> None:
    assert is_ip_literal(host) is expected


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("a.bank.example", ["*.bank.example"], True),
        ("x.y.bank.example", ["*.bank.example"], True),
        ("bank.example", ["*.bank.example"], False),
        ("A.Bank.Example", ["*.BANK.example"], True),
        ("bank.example", ["bank.example"], True),
        ("bank.example.", ["bank.example"], True),
        ("notbank.example", ["bank.example"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("11.1.2.3", ["10.0.0.0/8"], False),
        ("192.0.2.7", ["192.0.2.7"], True),
        ("::1", ["::1/128"], True),
        ("[2001:db8::5]", ["2001:db8::/32"], True),
        ("2001:db8::5", ["10.0.0.0/8"], False),
        ("10.0.0.5", ["10.0.0.*"], True),
        ("10.example", ["10.0.0.0/8"], False),
        ("anything.example", ["*"], True),
        ("a.example", [], False),
        ("a.example", ["", "  "], False),
    ],
)
def test_host_matches(host: str, patterns: list[str], expected: bool) -> None:
    assert HostPatterns(patterns).matches(host) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ipaddress.IPv4Address("127.0.0.1")),
        (" 10.0.0.1 ", ipaddress.IPv4Address("10.0.0.1")),
        ("::1", ipaddress.IPv6Address("::1")),
        ("[::1]", ipaddress.IPv6Address("::1")),
        ("[2001:DB8:0:0::5]", ipaddress.IPv6Address("2001:db8::5")),
        ("fe80::1%eth0", ipaddress.IPv6Address("fe80::1")),
        ("[fe80::1%25eth0]", ipaddress.IPv6Address("fe80::1")),
        ("::ffff:192.0.2.1", ipaddress.IPv6Address("::ffff:192.0.2.1")),
        ("[127.0.0.1]", ipaddress.IPv4Address("127.0.0.1")),
        ("127.1", None),
        ("1.2.3.4.5", None),
        ("[::1", None),
        ("::1]", None),
        ("[]", None),
        ("example.com", None),
        ("", None),
    ],
)
def test_parse_ip(host: str, expected: IPAddress | None) -> None:
    assert parse_ip(host) == expected
    assert is_ip_literal(host) is (expected is not None)


# ---------------------------------------------------------------------------------------------
# Host names


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "EXAMPLE.com",
        "localhost",
        "a",
        "0.example",
        "10.0.0.1",  # all-digit labels are fine syntactically
        "xn--bcher-kva.example",
        "a-b.example",
        "_dmarc.example.com",
        "_sip._tcp.example.com",
        "build_01.corp",
        "a_.example",
        "x" * 63 + ".example",
        ".".join(["a"] * 127),  # 253 characters
    ],
)
def test_valid_host_names(name: str) -> None:
    assert is_host_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "example.com.",  # canonical form has no trailing dot; normalize_host strips it
        ".example.com",
        "a..example",
        "-a.example",
        "a-.example",
        "x" * 64 + ".example",
        ".".join(["a"] * 127) + "a",  # 254 characters
        "exa mple.com",
        "a!b.example",
        "*.example",
        "a\n",
        "b\u00fccher.example",  # not ASCII: IDNA-encode first
        "::1",
    ],
)
def test_invalid_host_names(name: str) -> None:
    assert not is_host_name(name)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        (" example.com. ", "example.com"),
        ("_DMARC.Example.com", "_dmarc.example.com"),
        ("B\u00fccher.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("2001:DB8:0::5", "2001:db8::5"),
        ("fe80::1%eth0", "fe80::1"),
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize("host", ["", ".", "ex!ample", "a..b", "-a", "x" * 64, "a b"])
def test_normalize_host_refuses_what_no_certificate_can_carry(host: str) -> None:
    with pytest.raises(ValueError, match="not a valid host name"):
        normalize_host(host)


@pytest.mark.parametrize(
    ("host", "port", "default", "expected"),
    [
        ("example.com", 443, 443, "example.com"),
        ("example.com", 8443, 443, "example.com:8443"),
        ("example.com", 80, None, "example.com:80"),
        ("::1", 443, 443, "[::1]"),
        ("::1", 8080, 80, "[::1]:8080"),
        ("[::1]", 8080, 80, "[::1]:8080"),
        ("127.0.0.1", 80, 80, "127.0.0.1"),
    ],
)
def test_format_authority(host: str, port: int, default: int | None, expected: str) -> None:
    assert format_authority(host, port, default) == expected


# ---------------------------------------------------------------------------------------------
# Host patterns


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        # Underscores are name characters in patterns as in hosts.
        ("_dmarc.example.com", ["_dmarc.example.com"], True),
        ("a.build_01.corp", ["*.build_01.corp"], True),
        ("build_01.corp", ["build_0?.corp"], True),  # fnmatch syntax, as before
        # A trailing dot on the pattern is ignored, as on the host.
        ("bank.example", ["bank.example."], True),
        ("bank.example.", ["bank.example."], True),
        # Bracketed and zone-id forms of IP hosts and patterns.
        ("[::1]", ["::1"], True),
        ("::1", ["[::1]"], True),
        ("fe80::1%eth0", ["fe80::/10"], True),
        ("[2001:db8::5]", ["2001:db8::*"], True),  # glob against the compressed text form
        ("2001:0db8:0::5", ["2001:db8::5"], True),
        ("2001:db8::5", ["2001:db8:0:0:0:0:0:5"], True),
        # IPv4 hosts never match IPv6 networks, and names never match networks.
        ("10.0.0.1", ["::/0"], False),
        ("::ffff:10.0.0.1", ["10.0.0.0/8"], False),
        ("localhost", ["127.0.0.0/8"], False),
        ("a.example", ["  A.Example  "], True),
    ],
)
def test_pattern_semantics(host: str, patterns: list[str], expected: bool) -> None:
    assert HostPatterns(patterns).matches(host) is expected


def test_patterns_are_falsy_only_without_usable_patterns() -> None:
    assert not HostPatterns([])
    assert not HostPatterns(["", "   "])
    assert HostPatterns(["a.example"])
    assert HostPatterns(["10.0.0.0/8"])


def test_patterns_accept_any_sequence_and_keep_no_reference() -> None:
    source = ["a.example"]
    patterns = HostPatterns(source)
    source.append("b.example")
    assert not patterns.matches("b.example")
    assert HostPatterns(("a.example",)).matches("a.example")


@pytest.mark.parametrize(
    "pattern",
    [
        "*.bank.example",
        "Bank.Example",
        "*",
        "10.0.0.*",
        "10.0.0.0/8",
        "2001:db8::/32",
        "192.0.2.7",
        "::1",
        "_dmarc.example.com",
        "*.build_01.corp",
        "bank.example.",
    ],
)
def test_check_pattern_accepts(pattern: str) -> None:
    check_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty pattern"),
        ("10.0.0.0/33", "not a valid IP network"),
        ("bank.example/8", "not a valid IP network"),
        ("exa mple.com", "not a host pattern"),
        ("a!b.example", "not a host pattern"),
        ("a?.example", "not a host pattern"),
        ("[ab].example", "not a host pattern"),
        ("[::1]", "not a host pattern"),  # brackets are for URLs, not for the configuration
        ("bank.example:443", "not a host pattern"),
    ],
)
def test_check_pattern_refuses(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        check_pattern(pattern)
    assert "\n" not in str(info.value)
