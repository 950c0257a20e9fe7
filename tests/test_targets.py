"""Request targets and CONNECT authorities: what is accepted, and what is refused and why."""

from __future__ import annotations

import pytest

from interceptor.proxy.targets import parse_target, split_authority


@pytest.mark.parametrize(
    "target,expected",
    [
        (b"http://a.example/x?y=1", ("http", "a.example", 80, b"/x?y=1")),
        (b"https://A.Example:8443", ("https", "a.example", 8443, b"/")),
        (b"http://[::1]:9000/p", ("http", "::1", 9000, b"/p")),
        (b"http://127.0.0.1:9000/", ("http", "127.0.0.1", 9000, b"/")),
    ],
)
def test_absolute_targets(target, expected):
    assert parse_target(target, None) == expected


def test_origin_form_only_inside_an_intercepted_connect():
    assert parse_target(b"/p", ("https", "a.example", 443)) == ("https", "a.example", 443, b"/p")
    # Plain HTTP spoken inside the CONNECT: the same origin, without TLS.
    assert parse_target(b"/p", ("http", "a.example", 8080)) == ("http", "a.example", 8080, b"/p")
    with pytest.raises(ValueError, match="origin-form"):
        parse_target(b"/p", None)


@pytest.mark.parametrize(
    "target,reason",
    [
        (b"http://a.example:0/", "port out of range"),
        (b"http://user:pw@a.example/", "userinfo"),
        (b"http://user@a.example/", "userinfo"),
        (b"http://[127.0.0.1]:80/", "only an IPv6 address may stand in brackets"),
        (b"ftp://a.example/", "http:// or https://"),
        (b"http://a.example:99999/", "malformed"),
    ],
)
def test_refused_targets(target, reason):
    with pytest.raises(ValueError, match=reason):
        parse_target(target, None)


def test_connect_authorities():
    assert split_authority(b"A.example:8443", 443) == ("a.example", 8443)
    assert split_authority(b"a.example", 443) == ("a.example", 443)
    assert split_authority(b"[::1]:443", 443) == ("::1", 443)
    for bad in (b"a.example:0", b"[127.0.0.1]:443", b"u@a.example:443", b"a.example:443/x"):
        with pytest.raises(ValueError):
            split_authority(bad, 443)
