"""The addon API's objects (interceptor.http) and body codings (interceptor.encoding), no proxy.

Each test states mitmproxy's documented meaning (mitmproxy/http.py) and checks ours against it;
where this proxy differs on purpose, the test says so.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from interceptor import encoding
from interceptor.http import Client, Error, Headers, HTTPFlow, Request, Response

# -- Headers -----------------------------------------------------------------------------------


def test_headers_are_case_insensitive_and_fold_repeated_fields_with_a_comma():
    h = Headers([(b"Accept", b"text/html"), (b"X-One", b"1"), (b"accept", b"application/xml")])
    assert h["accept"] == h["ACCEPT"] == "text/html, application/xml"
    assert "aCCept" in h and b"accept" in h and "nope" not in h
    assert h.get_all("accept") == ["text/html", "application/xml"]  # unfolded, in order
    assert list(h) == ["Accept", "X-One"]  # one name per header, as first spelled
    assert len(h) == 2
    assert h.items() == [("Accept", "text/html, application/xml"), ("X-One", "1")]
    assert h.items(multi=True) == [
        ("Accept", "text/html"),
        ("X-One", "1"),
        ("accept", "application/xml"),
    ]
    assert bytes(h) == b"Accept: text/html\r\nX-One: 1\r\naccept: application/xml\r\n"


def test_headers_take_str_and_bytes_keys_and_values_and_store_bytes():
    h = Headers()
    h["X-A"] = "1"
    h[b"X-B"] = b"2"
    h.add("X-C", b"3")
    assert h[b"x-a"] == "1" and h["x-b"] == "2" and h["X-C"] == "3"
    assert h.fields == [(b"X-A", b"1"), (b"X-B", b"2"), (b"X-C", b"3")]
    # Non-UTF-8 bytes survive the str view (surrogate-escaped) and come back unchanged.
    h["X-Raw"] = b"\xff\xfe"
    assert h["x-raw"] == "\udcff\udcfe"
    h["X-Raw"] = h["x-raw"]
    assert h.fields[-1] == (b"X-Raw", b"\xff\xfe")


def test_headers_keyword_arguments_turn_underscores_into_dashes():
    h = Headers([(b"Host", b"a")], content_type="text/plain", x_thing=b"y")
    assert h.fields == [(b"Host", b"a"), (b"content-type", b"text/plain"), (b"x-thing", b"y")]
    # As in mitmproxy, a keyword overwrites a field given in `fields`.
    assert Headers([(b"Host", b"a")], host="b").get_all("host") == ["b"]


def test_headers_fields_must_be_bytes():
    with pytest.raises(TypeError):
        Headers([("Host", "a")])  # type: ignore[list-item]


def test_setting_a_header_replaces_all_its_fields_in_the_place_of_the_first():
    h = Headers([(b"A", b"1"), (b"Set", b"x"), (b"B", b"2"), (b"set", b"y")])
    h["SET"] = "z"
    # (mitmproxy keeps the first field's own spelling of the name; we take the one given.
    # Names are case-insensitive on the wire, so only a byte-exact comparison can tell.)
    assert h.fields == [(b"A", b"1"), (b"SET", b"z"), (b"B", b"2")]
    h["New"] = "n"
    assert h.fields[-1] == (b"New", b"n")  # a new name goes last


def test_set_all_get_all_add_insert_and_delete():
    h = Headers([(b"A", b"1"), (b"Set-Cookie", b"a=1"), (b"B", b"2")])
    h.set_all("set-cookie", ["b=2", "c=3"])
    assert h.fields == [
        (b"A", b"1"),
        (b"set-cookie", b"b=2"),
        (b"set-cookie", b"c=3"),
        (b"B", b"2"),
    ]
    assert h.get_all("SET-COOKIE") == ["b=2", "c=3"]
    assert h["set-cookie"] == "b=2, c=3"
    h.add("A", "again")
    assert h.get_all("a") == ["1", "again"]
    h.insert(0, "First", "0")
    assert h.fields[0] == (b"First", b"0")
    del h["a"]
    assert "A" not in h and h.get_all("a") == []
    h.set_all("B", [])  # no values: removed
    assert "b" not in h
    assert h.fields == [(b"First", b"0"), (b"set-cookie", b"b=2"), (b"set-cookie", b"c=3")]
    assert h.get_all("missing") == []


def test_a_missing_header_is_a_key_error_and_get_and_pop_default():
    h = Headers([(b"A", b"1")])
    with pytest.raises(KeyError):
        h["B"]
    with pytest.raises(KeyError):
        del h["B"]
    assert h.get("B") is None and h.get("B", "d") == "d"
    assert h.pop("B", None) is None
    assert h.pop("a") == "1" and h.fields == []


def test_headers_equality_and_copy():
    h = Headers([(b"A", b"1")])
    c = h.copy()
    assert c == h and c is not h
    c["A"] = "2"
    assert h["A"] == "1"  # independent
    assert h != {"A": "1"}


# -- Request -----------------------------------------------------------------------------------


def request(url: str = "http://example.com:8080/p?a=1&b=2", **kw: object) -> Request:
    headers = kw.pop("headers", {"Host": "example.com:8080"})
    return Request.make("GET", url, headers=headers, **kw)  # type: ignore[arg-type]


def test_request_make_parses_the_url():
    r = request()
    assert (r.method, r.scheme, r.host, r.port, r.path) == (
        "GET",
        "http",
        "example.com",
        8080,
        "/p?a=1&b=2",
    )
    assert r.url == "http://example.com:8080/p?a=1&b=2"
    assert r.http_version == "HTTP/1.1" and r.is_http11 and not r.is_http10 and not r.is_http2
    assert r.content == b"" and r.raw_content == b""
    assert isinstance(r.path, str)
    assert Request.make("GET", "https://h.test").path == "/"
    with pytest.raises(ValueError):
        Request.make("GET", "/relative")


def test_request_make_with_text_and_dict_headers():
    r = Request.make("POST", "http://a.test/", "é", {"Content-Type": "text/plain; charset=utf-8"})
    assert r.raw_content == "é".encode() and r.text == "é"
    # (mitmproxy's set_content adds a Content-Length where there is none; ours only updates
    # one that is there: the proxy frames what it sends by the body it has either way.)
    assert "content-length" not in r.headers


def test_setting_url_retargets_and_rewrites_the_host_header():
    r = request()
    r.url = "https://other.test/x?y=1"
    assert (r.scheme, r.host, r.port, r.path) == ("https", "other.test", 443, "/x?y=1")
    assert r.headers.get_all("host") == ["other.test"]  # default port left out
    r.url = "http://[::1]:81/"
    assert (r.host, r.port) == ("::1", 81) and r.headers["host"] == "[::1]:81"
    assert r.url == "http://[::1]:81/"
    with pytest.raises(ValueError):
        r.url = "ftp://x.test/"


def test_host_port_and_scheme_setters_rewrite_host_only_if_there_is_one():
    r = request()
    r.host = "b.test"
    assert r.headers["Host"] == "b.test:8080"
    r.port = 80
    assert r.headers["Host"] == "b.test"
    r.scheme = "https"  # 80 is no longer the default port
    assert r.headers["Host"] == "b.test:80" and r.url == "https://b.test:80/p?a=1&b=2"
    with pytest.raises(ValueError):
        r.port = "81"  # type: ignore[assignment]
    bare = request(headers={})
    bare.host = "c.test"
    assert "host" not in bare.headers  # as mitmproxy: a Host header is updated, never added


def test_pretty_host_and_pretty_url_come_from_the_host_header():
    r = request(headers={"Host": "virtual.test:8080"})
    r.host = "10.0.0.1"  # (rewrites Host too) ...
    r.headers["Host"] = "virtual.test:8080"  # ... so spoof it back, as a transparent request
    assert r.pretty_host == "virtual.test"
    assert r.pretty_url == "http://virtual.test:8080/p?a=1&b=2"
    assert r.url == "http://10.0.0.1:8080/p?a=1&b=2"
    r.headers["Host"] = "[::1]:9"
    assert r.pretty_host == "::1"
    del r.headers["Host"]
    assert r.pretty_host == "10.0.0.1" and r.pretty_url == r.url
    assert r.host_header is None
    r.host_header = "set.test"
    assert r.headers["host"] == "set.test"


def test_path_is_str_and_takes_bytes():
    r = request()
    r.path = b"/bytes?q"
    assert r.path == "/bytes?q" and r._path == b"/bytes?q"
    r.path = "/caf\udce9"  # surrogate-escaped bytes round-trip
    assert r._path == b"/caf\xe9"


def test_query_view_reads_and_writes_back_to_the_path():
    r = request("http://a.test/s?q=1&q=2&x=y", headers={})
    assert r.query["q"] == "1" and r.query.get_all("q") == ["1", "2"]
    assert r.query.items(multi=True) == [("q", "1"), ("q", "2"), ("x", "y")]
    q = r.query
    q["x"] = "z w"
    assert r.path == "/s?q=1&q=2&x=z+w"
    q.add("n", "&")
    assert r.path == "/s?q=1&q=2&x=z+w&n=%26"
    del q["q"]
    assert r.path == "/s?x=z+w&n=%26"
    r.query = {"only": "1"}
    assert r.path == "/s?only=1"
    r.query = []
    assert r.path == "/s"
    with pytest.raises(KeyError):
        r.query["missing"]


def test_cookies_view_reads_and_writes_the_cookie_header():
    r = request(headers={"Cookie": "a=1; b=2"})
    r.headers.add("Cookie", "c=3")
    assert dict(r.cookies) == {"a": "1", "b": "2", "c": "3"}
    r.cookies["b"] = "changed"
    assert r.headers.get_all("cookie") == ["a=1; b=changed; c=3"]
    del r.cookies["a"]
    assert r.headers["cookie"] == "b=changed; c=3"
    r.cookies = {}
    assert "cookie" not in r.headers


def test_urlencoded_form_view_reads_and_writes_the_body():
    r = Request.make(
        "POST",
        "http://a.test/",
        b"a=1&b=x+y",
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "9"},
    )
    assert r.urlencoded_form["b"] == "x y"
    r.urlencoded_form["c"] = "&"
    assert r.content == b"a=1&b=x+y&c=%26"
    assert r.headers["content-length"] == str(len(r.content))
    other = Request.make("POST", "http://a.test/", b"a=1", {"Content-Type": "text/plain"})
    assert dict(other.urlencoded_form) == {}  # not a form: empty
    other.urlencoded_form = [("k", "v")]  # setting one makes it a form
    assert other.headers["content-type"] == "application/x-www-form-urlencoded"
    assert other.content == b"k=v"


def test_json_and_http_version():
    r = Request.make("POST", "http://a.test/", b'{"a": [1, "\xc3\xa9"]}')
    assert r.json() == {"a": [1, "é"]}
    r.http_version = "HTTP/1.0"
    assert r.http_version == "HTTP/1.0" and r.is_http10
    streamed = request()
    streamed.raw_content = None
    with pytest.raises(TypeError):
        streamed.json()
    bad = Request.make("POST", "http://a.test/", b"{not json")
    with pytest.raises(json.JSONDecodeError):
        bad.json()


# -- Response ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Type", b"text/plain")],
        {"Content-Type": "text/plain"},
        {b"Content-Type": b"text/plain"},
        Headers(content_type="text/plain"),
    ],
    ids=["fields", "str-dict", "bytes-dict", "Headers"],
)
def test_response_make_with_any_kind_of_headers_sets_content_length(headers: object):
    r = Response.make(404, b"gone", headers)  # type: ignore[arg-type]
    assert (r.status_code, r.reason) == (404, "Not Found")
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["content-length"] == "4"
    assert r.content == b"gone" and r.http_version == "HTTP/1.1"
    assert r.timestamp_end is not None


def test_response_make_with_text_and_defaults():
    r = Response.make()
    assert (r.status_code, r.reason, r.content) == (200, "OK", b"")
    assert r.headers.fields == [(b"Content-Length", b"0")]
    t = Response.make(200, "é", {"Content-Type": "text/html; charset=utf-8"})
    assert t.raw_content == b"\xc3\xa9" and t.headers["content-length"] == "2"
    with pytest.raises(TypeError):
        Response.make(200, 5)  # type: ignore[arg-type]
    assert Response.make(599).reason == ""  # no registered phrase


def test_status_code_changes_the_reason_unless_a_reason_was_set():
    r = Response.make(200)
    r.status_code = 404
    assert r.reason == "Not Found"
    r.reason = "Gone Fishing"
    r.status_code = 410
    assert (r.status_code, r.reason) == (410, "Gone Fishing")
    # (mitmproxy never changes the reason with the status: a 404 set on a 200 goes out as
    # "404 OK". Ours follows the status until a hook sets a reason itself.)


def test_reason_is_latin_1():
    r = Response.make(200)
    r.reason = "Ça va"
    assert r._reason == b"\xc7a va" and r.reason == "Ça va"
    r.reason = b"\xe9t\xe9"
    assert r.reason == "été"
    with pytest.raises(UnicodeEncodeError):
        r.reason = "snow ☃"


# -- content and text: codings ------------------------------------------------------------------

PLAIN = b"the quick brown fox " * 20

ENCODED = {
    "gzip": gzip.compress(PLAIN),
    "deflate": zlib.compress(PLAIN),
    "br": brotli.compress(PLAIN),
    "zstd": zstandard.ZstdCompressor().compress(PLAIN),
    "gzip, br": brotli.compress(gzip.compress(PLAIN)),  # applied in order: gzip first
}


@pytest.mark.parametrize("coding", list(ENCODED))
def test_content_decodes_and_setting_it_re_encodes(coding: str):
    r = Response(200, b"OK", Headers(content_encoding=coding, content_length="1"), "1.1", 0.0)
    r.raw_content = ENCODED[coding]
    assert r.content == PLAIN
    assert r.text == PLAIN.decode()  # no Content-Type: latin-1, the same for ASCII
    r.content = b"replaced " * 30
    raw = r.raw_content
    assert raw is not None and raw != b"replaced " * 30
    assert encoding.decode(raw, coding) == b"replaced " * 30
    assert r.content == b"replaced " * 30
    assert r.headers["content-encoding"] == coding  # kept
    assert r.headers["content-length"] == str(len(raw))  # the length on the wire


def test_raw_deflate_is_accepted_too():
    d = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = d.compress(PLAIN) + d.flush()
    assert encoding.decode(raw, "deflate") == PLAIN


def test_encoding_module_round_trips_and_refuses_what_it_does_not_know():
    for coding in ("gzip", "x-gzip", "deflate", "br", "zstd", "identity", "GZIP, Br", ""):
        assert encoding.decode(encoding.encode(PLAIN, coding), coding) == PLAIN
    with pytest.raises(ValueError, match="unknown Content-Encoding 'snappy'"):
        encoding.decode(PLAIN, "snappy")
    with pytest.raises(ValueError, match="unknown"):
        encoding.encode(PLAIN, "gzip, snappy")
    with pytest.raises(ValueError, match="invalid gzip"):
        encoding.decode(b"not gzip", "gzip")
    with pytest.raises(ValueError):
        encoding.decode(b"not brotli", "br")


def test_decode_and_encode_methods_change_the_header():
    r = Response.make(200, b"", {"Content-Encoding": "gzip"})
    r.content = PLAIN
    r.decode()
    assert "content-encoding" not in r.headers and r.raw_content == PLAIN
    assert r.headers["content-length"] == str(len(PLAIN))
    r.encode("br")
    assert r.headers["content-encoding"] == "br"
    assert brotli.decompress(r.raw_content) == PLAIN
    assert r.headers["content-length"] == str(len(r.raw_content or b""))


def test_an_unknown_coding_raises_on_content_and_strict_false_gives_the_raw_body():
    r = Response(200, b"OK", Headers(content_encoding="snappy"), "1.1", 0.0, b"\x01raw")
    with pytest.raises(ValueError):
        _ = r.content
    with pytest.raises(ValueError):
        _ = r.text
    assert r.get_content(strict=False) == b"\x01raw"
    assert r.get_text(strict=False) == "\x01raw"
    corrupt = Response(200, b"OK", Headers(content_encoding="gzip"), "1.1", 0.0, b"junk")
    with pytest.raises(ValueError):
        _ = corrupt.content
    assert corrupt.get_content(strict=False) == b"junk"


def test_setting_content_with_a_coding_we_cannot_make_drops_the_header():
    # mitmproxy's meaning: an invalid Content-Encoding is removed and the body sent plain.
    r = Response(200, b"OK", Headers(content_encoding="snappy"), "1.1", 0.0, b"x")
    r.content = b"plain"
    assert "content-encoding" not in r.headers and r.raw_content == b"plain"


def test_setting_content_updates_content_length_only_if_present():
    r = Response(200, b"OK", Headers(content_length="3"), "1.1", 0.0, b"abc")
    r.content = b"abcdef"
    assert r.headers.get_all("content-length") == ["6"]
    chunked = Response(200, b"OK", Headers(transfer_encoding="chunked"), "1.1", 0.0, b"abc")
    chunked.content = b"abcdef"
    assert "content-length" not in chunked.headers  # the proxy frames it when sending
    with pytest.raises(TypeError, match="use .text"):
        chunked.content = "str"  # type: ignore[assignment]
    chunked.content = None
    assert chunked.raw_content is None and chunked.text is None


# -- text: charset inference --------------------------------------------------------------------


def message(content_type: str | None, raw: bytes) -> Response:
    headers = Headers(content_type=content_type) if content_type is not None else Headers()
    return Response(200, b"OK", headers, "1.1", 0.0, raw)


@pytest.mark.parametrize(
    ("content_type", "raw", "text"),
    [
        ("text/plain; charset=iso-8859-7", b"\xe1", "α"),  # the header's charset
        ('text/plain; charset="utf-8"', b"\xc3\xa9", "é"),  # quoted
        ("text/html", b'<meta charset="windows-1251">\xe4', '<meta charset="windows-1251">д'),
        ("text/html", "é".encode(), "é"),  # html without meta: utf-8
        ("application/json", "é".encode(), "é"),  # json: utf-8
        ("application/problem+json", "é".encode(), "é"),
        ("text/css", "é".encode(), "é"),
        ("application/octet-stream", b"\xe9", "é"),  # nothing to go on: latin-1
        (None, b"\xe9", "é"),
        ("text/plain", b"\xef\xbb\xbf\xc3\xa9", "é"),  # a UTF-8 BOM wins, and is dropped
    ],
)
def test_text_charset_is_inferred_as_mitmproxy_does(content_type, raw, text):
    assert message(content_type, raw).text == text


def test_setting_text_encodes_in_the_inferred_charset():
    r = message("text/plain; charset=iso-8859-7", b"")
    r.text = "αβ"
    assert r.raw_content == b"\xe1\xe2"
    j = message("application/json", b"")
    j.text = "é"
    assert j.raw_content == b"\xc3\xa9"
    latin = message(None, b"")
    latin.text = "é"
    assert latin.raw_content == b"\xe9"
    # What the charset cannot hold goes as UTF-8. (mitmproxy also adds charset=utf-8 to the
    # Content-Type then; we leave the header as it was.)
    latin.text = "☃"
    assert latin.raw_content == "☃".encode()


def test_text_that_is_not_valid_in_its_charset():
    r = message("text/plain; charset=utf-8", b"\xff")
    with pytest.raises(ValueError):
        _ = r.text
    assert r.get_text(strict=False) == "\udcff"
    unknown = message("text/plain; charset=no-such-charset", b"abc")
    with pytest.raises(ValueError):
        _ = unknown.text
    assert unknown.get_text(strict=False) == "abc"


# -- HTTPFlow ----------------------------------------------------------------------------------


def flow() -> HTTPFlow:
    return HTTPFlow(Client(None, 0.0), 0.0)


def test_flow_id_is_a_time_ordered_uuid_stable_per_flow_and_unique():
    f, g = flow(), flow()
    assert isinstance(f.id, str) and uuid.UUID(f.id).version == 7
    assert uuid.UUID(f.id).variant == uuid.RFC_4122
    ids = [flow().id for _ in range(50)]
    assert len(set(ids)) == 50 and ids[0][:13] <= ids[-1][:13]  # milliseconds first
    assert f.id == f.id and f.id != g.id
    assert f.type == "http" and f.live and f.websocket is None
    assert isinstance(f.client_conn.id, str) and f.client_conn.id == f.client_conn.id


def test_flow_metadata_is_a_dict_kept_per_flow():
    f, g = flow(), flow()
    f.metadata["k"] = 1
    assert f.metadata == {"k": 1} and g.metadata == {}


def test_kill_sets_the_killed_error_once():
    f = flow()
    assert f.killable and f.error is None
    f.kill()
    assert f.killed and not f.killable
    assert (
        isinstance(f.error, Error) and f.error.msg == "Connection killed." == Error.KILLED_MESSAGE
    )
    first = f.error
    # (mitmproxy raises ControlException on a flow that is not killable; ours does nothing.)
    f.kill()
    assert f.error is first


def test_intercept_holds_wait_for_resume_until_resume():
    f = flow()
    assert f.wait_for_resume().called  # not intercepted: go on at once
    f.intercept()
    assert f.intercepted
    waiting = f.wait_for_resume()
    assert not waiting.called
    assert f.wait_for_resume() is waiting  # one waiter, however often asked
    f.resume()
    assert waiting.called and not f.intercepted
    f.resume()  # resuming twice is harmless


def test_kill_releases_an_intercepted_flow():
    f = flow()
    f.intercept()
    waiting = f.wait_for_resume()
    f.kill()
    assert waiting.called and f.killed and not f.intercepted


def test_a_flow_that_is_no_longer_live_cannot_be_intercepted_or_killed():
    f = flow()
    f.live = False
    f.intercept()
    assert not f.intercepted
    f.kill()
    assert not f.killed and f.error is None


def test_text_its_charset_cannot_hold_goes_as_utf_8_and_content_type_says_so():
    # mitmproxy's meaning: the body is UTF-8 then, and the charset in Content-Type with it.
    # (Before: the header still said iso-8859-1, and the client, and .text, read mojibake.)
    r = message("text/html; charset=iso-8859-1; x=1", b"")
    r.text = "snow ☃"
    assert r.raw_content == "snow ☃".encode()
    assert r.headers["content-type"] == "text/html; x=1; charset=utf-8"
    assert r.text == "snow ☃"
    bare = message(None, b"")
    bare.text = "☃"
    assert bare.headers["content-type"] == "text/plain; charset=utf-8" and bare.text == "☃"
    made = Response.make(200, "☃")
    assert made.text == "☃" and made.headers["content-length"] == "3"
