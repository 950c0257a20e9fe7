"""The addon API: HTTPFlow, Request, Response and Headers, with mitmproxy's names and meanings.

A mitmproxy HTTP addon runs here with `mitmproxy` changed to `interceptor` in its imports. What
differs is what mitmproxy lacks: a body is only here (`content`, `text`) when a loaded addon
implements `request` or `response`, within `[hooks] body_limit` and `buffer_budget`; otherwise
it streams, and `raw_content` is None, as in mitmproxy when streaming.

Bytes underneath, `str` on top: header names and values are stored as bytes and read as `str`
(UTF-8, surrogate-escaped, so no byte is lost); the proxy checks every head after each hook and
encodes what a hook left as `str`.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import Deferred

from . import encoding
from .hosts import format_authority

__all__ = ["Client", "Error", "HTTPFlow", "Headers", "Request", "Response", "Server"]

HeaderFields = list[tuple[bytes, bytes]]


def _bytes(x: str | bytes) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8", "surrogateescape")
    raise TypeError(f"header names and values are str or bytes, not {type(x).__name__}")


def _str(x: bytes) -> str:
    return x.decode("utf-8", "surrogateescape")


class Headers(MutableMapping[str, str]):
    """Case-insensitive multidict of header fields: `str` keys and values over bytes `fields`.

    `h["Accept"]` folds repeated fields into one value ("a, b"); `get_all` does not (use it for
    Set-Cookie). Setting a name replaces all its fields, in the place of the first.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: Iterable[tuple[bytes, bytes]] = (), **headers: str | bytes):
        self.fields: HeaderFields = []
        for name, value in fields:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise TypeError("Header fields must be bytes.")
            self.fields.append((name, value))
        for key, text in headers.items():  # content_type= -> content-type
            self[key.replace("_", "-")] = text

    @staticmethod
    def wrap(fields: HeaderFields) -> Headers:
        """Headers over an existing list, not copied (the proxy's own, already checked)."""
        h: Headers = _new(Headers)
        h.fields = fields
        return h

    def __getitem__(self, key: str | bytes) -> str:
        values = self.get_all(key)
        if not values:
            raise KeyError(key)
        return ", ".join(values)

    def __setitem__(self, key: str | bytes, value: str | bytes) -> None:
        self.set_all(key, [value])

    def __delitem__(self, key: str | bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self.set_all(key, [])

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        k = _bytes(key).lower()
        return any(name.lower() == k for name, _ in self.fields)

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for name, _ in self.fields:
            k = name.lower()
            if k not in seen:
                seen.add(k)
                yield _str(name)

    def __len__(self) -> int:
        return len({name.lower() for name, _ in self.fields})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self.fields == other.fields
        return False

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers[{', '.join(f'({_str(n)!r}, {_str(v)!r})' for n, v in self.fields)}]"

    def __bytes__(self) -> bytes:
        return b"".join(name + b": " + value + b"\r\n" for name, value in self.fields)

    def get_all(self, name: str | bytes) -> list[str]:
        """Every value of `name`, unfolded, in order."""
        k = _bytes(name).lower()
        return [_str(v) for n, v in self.fields if n.lower() == k]

    def set_all(self, name: str | bytes, values: Iterable[str | bytes]) -> None:
        """Replace the fields of `name` with one per value (removes them for no values)."""
        raw = _bytes(name)
        k = raw.lower()
        new = [(raw, _bytes(v)) for v in values]
        out: HeaderFields = []
        for field in self.fields:
            if field[0].lower() == k:
                out.extend(new)  # the first one takes the new values' place
                new = []
            else:
                out.append(field)
        out.extend(new)
        self.fields[:] = out

    def add(self, key: str | bytes, value: str | bytes) -> None:
        """Append a field, keeping any with the same name."""
        self.fields.append((_bytes(key), _bytes(value)))

    def insert(self, index: int, key: str | bytes, value: str | bytes) -> None:
        """Insert a field at position `index` of `fields`."""
        self.fields.insert(index, (_bytes(key), _bytes(value)))

    def items(self, multi: bool = False) -> Any:
        """(name, value) pairs: folded per name, or every field when `multi`."""
        if multi:
            return [(_str(n), _str(v)) for n, v in self.fields]
        return [(key, self[key]) for key in self]

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers.wrap(list(self.fields))


_new = object.__new__  # Headers.wrap, once per message: no __init__ to run


def _make_headers(headers: Headers | Mapping[Any, Any] | Iterable[tuple[bytes, bytes]]) -> Headers:
    if isinstance(headers, Headers):
        return headers
    if isinstance(headers, Mapping):
        return Headers.wrap([(_bytes(k), _bytes(v)) for k, v in headers.items()])
    return Headers(headers)


class MultiDictView(MutableMapping[str, str]):
    """A dict-like view of (name, value) pairs kept elsewhere (a query, a form, cookies):
    every change is written back at once."""

    __slots__ = ("_get", "_set")

    def __init__(
        self,
        getter: Callable[[], list[tuple[str, str]]],
        setter: Callable[[list[tuple[str, str]]], None],
    ) -> None:
        self._get = getter
        self._set = setter

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """The pairs, in order."""
        return tuple(self._get())

    def __getitem__(self, key: str) -> str:
        for k, v in self._get():
            if k == key:
                return v
        raise KeyError(key)

    def get_all(self, key: str) -> list[str]:
        """Every value of `key`."""
        return [v for k, v in self._get() if k == key]

    def set_all(self, key: str, values: Iterable[str]) -> None:
        """Replace the values of `key`."""
        new = [(key, v) for v in values]
        out: list[tuple[str, str]] = []
        for pair in self._get():
            if pair[0] == key:
                out.extend(new)
                new = []
            else:
                out.append(pair)
        self._set(out + new)

    def add(self, key: str, value: str) -> None:
        """Append a pair."""
        self._set([*self._get(), (key, value)])

    def __setitem__(self, key: str, value: str) -> None:
        self.set_all(key, [value])

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.set_all(key, [])

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._get())

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._get()))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._get()))

    def items(self, multi: bool = False) -> Any:
        """Pairs: the first value per key, or every pair when `multi`."""
        return list(self._get()) if multi else [(k, self[k]) for k in self]

    def __repr__(self) -> str:
        return f"MultiDictView{self._get()!r}"


def _pairs(value: Iterable[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """What a query, cookies or form setter was given, as (name, value) pairs."""
    return list(value.items()) if isinstance(value, Mapping) else list(value)


_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_CHARSET = re.compile(rb"""<meta[^>]+charset=['"]?([^'">]+)""", re.IGNORECASE)


def _charset(content_type: str, content: bytes) -> str:
    """The text encoding of a body, as mitmproxy infers it (header, then kind, then latin-1)."""
    if content.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    params = content_type.split(";")[1:]
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    ctype = content_type.lower()
    if "json" in ctype:
        return "utf-8"
    if "html" in ctype:
        found = _CHARSET.search(content)
        return found.group(1).decode("ascii", "ignore") if found else "utf-8"
    if "xml" in ctype or "javascript" in ctype or "css" in ctype:
        return "utf-8"
    return "latin-1"


def _utf8_content_type(content_type: str | None) -> str:
    """`content_type` with its charset parameter set to utf-8 (text/plain if there is none)."""
    kind, *params = (content_type or "").split(";")
    if "/" not in kind:
        kind, params = "text/plain", []
    kept = [p.strip() for p in params if p.partition("=")[0].strip().lower() not in ("", "charset")]
    return "; ".join([kind.strip(), *kept, "charset=utf-8"])


class Message:
    """What requests and responses share: version, headers, body, stream, timestamps."""

    # As for HTTPFlow: what every message sets is in slots, the rest are class-level defaults.
    __slots__ = ("headers", "timestamp_start", "_version", "__dict__")

    headers: Headers
    # The body as on the wire (still Content-Encoded); None while it streams.
    _content: bytes | None = None
    # False: buffered for hooks (if any want it); True: streamed; a callable: streamed, each
    # chunk replaced by what it returns (called with b"" once at the end).
    stream: bool | Callable[[bytes], bytes | Iterable[bytes]] = False
    timestamp_start: float
    timestamp_end: float | None = None
    _version: str
    # While capture is on, the first bytes of a body that streamed (proxy.bodytap.BodyTap).
    tap: Any = None
    # The head as the proxy sent it on (request line or status line, fields, blank line), once
    # it was: what capture stores, sliced, instead of joining the fields again.
    wire_head: bytes | None = None

    @property
    def http_version(self) -> str:
        """The version received: "HTTP/1.1" or "HTTP/1.0" (requests go upstream as 1.1)."""
        return _VERSIONS.get(self._version) or f"HTTP/{self._version}"

    @http_version.setter
    def http_version(self, value: str) -> None:
        self._version = value.removeprefix("HTTP/")

    @property
    def is_http10(self) -> bool:
        """Received as HTTP/1.0."""
        return self._version == "1.0"

    @property
    def is_http11(self) -> bool:
        """Received as HTTP/1.1."""
        return self._version == "1.1"

    @property
    def is_http2(self) -> bool:
        """Never: this proxy speaks HTTP/1.x."""
        return False

    @property
    def raw_content(self) -> bytes | None:
        """The body as on the wire (still compressed); None if it was not buffered."""
        return self._content

    @raw_content.setter
    def raw_content(self, value: bytes | None) -> None:
        self._content = value

    def get_content(self, strict: bool = True) -> bytes | None:
        """The body with its Content-Encoding undone (the raw body if that fails, unless
        `strict`, which raises ValueError)."""
        raw = self._content
        if raw is None:
            return None
        coding = self.headers.get("content-encoding")
        if not coding:
            return raw
        try:
            return encoding.decode(raw, coding)
        except ValueError:
            if strict:
                raise
            return raw

    def set_content(self, value: bytes | None) -> None:
        """Set the body, encoding it with the message's Content-Encoding."""
        if value is None:
            self._content = None
            return
        if not isinstance(value, bytes):
            raise TypeError(
                f"Message content must be bytes, not {type(value).__name__}. "
                "Please use .text if you want to assign a str."
            )
        coding = self.headers.get("content-encoding")
        if coding:
            try:
                value = encoding.encode(value, coding)
            except ValueError:
                del self.headers["content-encoding"]  # a coding we cannot make: send it plain
        self._content = value
        if "content-length" in self.headers:
            self.headers["content-length"] = str(len(value))

    @property
    def content(self) -> bytes | None:
        """The body, decoded per Content-Encoding (gzip, deflate, br, zstd); None if not
        buffered. Setting it re-encodes it; the proxy fixes the framing."""
        return self.get_content()

    @content.setter
    def content(self, value: bytes | None) -> None:
        self.set_content(value)

    def get_text(self, strict: bool = True) -> str | None:
        """The body as text, in the charset of Content-Type (mitmproxy's inference)."""
        content = self.get_content(strict)
        if content is None:
            return None
        charset = _charset(self.headers.get("content-type", ""), content)
        try:
            return content.decode(charset)
        except (LookupError, ValueError):
            if strict:
                raise ValueError(f"body is not valid {charset}") from None
            return content.decode("utf-8", "surrogateescape")

    def set_text(self, text: str | None) -> None:
        """Set the body from text, in the message's charset (UTF-8 if that cannot hold it)."""
        if text is None:
            self.set_content(None)
            return
        charset = _charset(self.headers.get("content-type", ""), b"")
        try:
            data = text.encode(charset)
        except (LookupError, ValueError):
            data = text.encode("utf-8", "surrogateescape")
            # As mitmproxy does: say so in Content-Type. Left naming (or implying) the charset
            # that could not hold the text, the client, and `.text` here, would misread it.
            self.headers["content-type"] = _utf8_content_type(self.headers.get("content-type"))
        self.set_content(data)

    @property
    def text(self) -> str | None:
        """The decoded body as str (see get_text); None if not buffered."""
        return self.get_text()

    @text.setter
    def text(self, value: str | None) -> None:
        self.set_text(value)

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON."""
        content = self.get_content()
        if content is None:
            raise TypeError("the body was not buffered (it streamed)")
        return json.loads(content, **kwargs)

    def decode(self, strict: bool = True) -> None:
        """Undo the Content-Encoding and drop the header."""
        if not self._content:
            return
        decoded = self.get_content(strict)
        self.headers.pop("content-encoding", None)
        self.set_content(decoded)

    def encode(self, coding: str) -> None:
        """Encode the body with `coding` (gzip, deflate, br, zstd, identity)."""
        self.headers["content-encoding"] = coding
        self.set_content(self._content)


class Request(Message):
    """An HTTP request as it goes upstream. Setting `url`, `host`, `port` or `scheme`
    re-targets it and rewrites its Host header."""

    __slots__ = ("method", "_scheme", "_host", "_port", "_path")

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int,
        path: bytes,
        headers: Headers,
        http_version: str = "1.1",
        timestamp_start: float = 0.0,
        content: bytes | None = None,
    ) -> None:
        self.method = method
        self._scheme = scheme
        self._host = host
        self._port = port
        self._path = path
        self.headers = headers
        self._version = http_version
        if content is not None:
            self._content = content
        self.timestamp_start = timestamp_start

    @classmethod
    def make(
        cls,
        method: str,
        url: str,
        content: bytes | str = b"",
        headers: Headers | Mapping[Any, Any] | Iterable[tuple[bytes, bytes]] = (),
    ) -> Request:
        """A new request (for replays and tests)."""
        req = cls(method, "http", "", 80, b"/", _make_headers(headers), "1.1", time.time())
        req.url = url
        if isinstance(content, str):
            req.text = content
        else:
            req.content = content
        return req

    def __repr__(self) -> str:
        return f"Request({self.method} {self.url})"

    def _update_host(self) -> None:
        if "host" in self.headers:
            self.headers["Host"] = format_authority(self._host, self._port, self.default_port)

    @property
    def default_port(self) -> int:
        """443 for https, else 80."""
        return 443 if self._scheme == "https" else 80

    @property
    def scheme(self) -> str:
        """The scheme: "http" or "https"."""
        return self._scheme

    @scheme.setter
    def scheme(self, value: str) -> None:
        self._scheme = value
        self._update_host()

    @property
    def host(self) -> str:
        """The host the request goes to."""
        return self._host

    @host.setter
    def host(self, value: str) -> None:
        self._host = value
        self._update_host()

    @property
    def port(self) -> int:
        """The port the request goes to."""
        return self._port

    @port.setter
    def port(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"Port must be an integer, not {value!r}.")
        self._port = value
        self._update_host()

    @property
    def path(self) -> str:
        """Path and query, e.g. "/index.html?a=b"."""
        return _str(self._path)

    @path.setter
    def path(self, value: str | bytes) -> None:
        self._path = _bytes(value)

    @property
    def authority(self) -> str:
        """host:port for CONNECT, else "" (HTTP/1.1 requests carry the Host header)."""
        return format_authority(self._host, self._port) if self.method == "CONNECT" else ""

    @property
    def url(self) -> str:
        """The absolute URL; setting it re-targets the request (scheme, host, port, path)."""
        if self.method == "CONNECT":
            return format_authority(self._host, self._port)
        scheme = self._scheme
        netloc = format_authority(self._host, self._port, 443 if scheme == "https" else 80)
        path = self._path
        return f"{scheme}://{netloc}{_str(path) if path != b'*' else ''}"

    @url.setter
    def url(self, value: str) -> None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {value!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or self.default_port
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.path = path
        self._update_host()

    @property
    def host_header(self) -> str | None:
        """The Host header's value (None without one)."""
        return self.headers.get("host")

    @host_header.setter
    def host_header(self, value: str | None) -> None:
        if value is None:
            self.headers.pop("host", None)
        else:
            self.headers["Host"] = value

    @property
    def pretty_host(self) -> str:
        """The Host header's host if there is one, else `host`."""
        header = self.host_header
        if not header:
            return self._host
        if header.startswith("["):
            return header[1:].partition("]")[0]
        return header.rpartition(":")[0] if header.count(":") == 1 else header

    @property
    def pretty_url(self) -> str:
        """Like `url`, with the Host header's authority."""
        header = self.host_header
        if self.method == "CONNECT" or not header:
            return self.url
        path = self.path if self.path != "*" else ""
        return f"{self._scheme}://{header}{path}"

    def _get_query(self) -> list[tuple[str, str]]:
        query = urllib.parse.urlsplit(self.path).query
        return urllib.parse.parse_qsl(query, keep_blank_values=True)

    def _set_query(self, pairs: list[tuple[str, str]]) -> None:
        path, _, _ = self.path.partition("?")
        query = urllib.parse.urlencode(pairs)
        self.path = f"{path}?{query}" if query else path

    @property
    def query(self) -> MultiDictView:
        """The query string's parameters, as a mutable view on `path`."""
        return MultiDictView(self._get_query, self._set_query)

    @query.setter
    def query(self, value: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        self._set_query(_pairs(value))

    def _get_cookies(self) -> list[tuple[str, str]]:
        pairs = []
        for header in self.headers.get_all("cookie"):
            for part in header.split(";"):
                name, eq, value = part.strip().partition("=")
                if name and eq:
                    pairs.append((name, value))
        return pairs

    def _set_cookies(self, pairs: list[tuple[str, str]]) -> None:
        if pairs:
            self.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in pairs)
        else:
            self.headers.pop("cookie", None)

    @property
    def cookies(self) -> MultiDictView:
        """The Cookie header's pairs, as a mutable view."""
        return MultiDictView(self._get_cookies, self._set_cookies)

    @cookies.setter
    def cookies(self, value: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        self._set_cookies(_pairs(value))

    def _get_form(self) -> list[tuple[str, str]]:
        if "application/x-www-form-urlencoded" not in self.headers.get("content-type", "").lower():
            return []
        content = self.get_content(strict=False)
        if not content:
            return []
        return urllib.parse.parse_qsl(content.decode("utf-8", "surrogateescape"), True)

    def _set_form(self, pairs: list[tuple[str, str]]) -> None:
        self.headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.set_content(urllib.parse.urlencode(pairs).encode("ascii"))

    @property
    def urlencoded_form(self) -> MultiDictView:
        """The body's urlencoded form fields, as a mutable view (setting one sets the body and
        its Content-Type)."""
        return MultiDictView(self._get_form, self._set_form)

    @urlencoded_form.setter
    def urlencoded_form(self, value: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        self._set_form(_pairs(value))


def reason_for(status: int) -> str:
    """The standard reason phrase for `status` ("" for codes the registry lacks)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class Response(Message):
    """An HTTP response. Changing `status_code` changes `reason`, unless a hook set one."""

    __slots__ = ("_status", "_reason")
    _reason_set = False  # a hook set `reason`: a new status_code keeps it

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        headers: Headers,
        http_version: str = "1.1",
        timestamp_start: float = 0.0,
        content: bytes | None = None,
    ) -> None:
        self._status = status_code
        self._reason = reason
        self.headers = headers
        self._version = http_version
        if content is not None:
            self._content = content
        self.timestamp_start = timestamp_start

    @classmethod
    def make(
        cls,
        status_code: int = 200,
        content: bytes | str = b"",
        headers: Headers | Mapping[Any, Any] | Iterable[tuple[bytes, bytes]] = (),
    ) -> Response:
        """A response made by an addon: set it as `flow.response` to answer without the origin."""
        now = time.time()
        reason = reason_for(status_code).encode("latin-1")
        resp = cls(status_code, reason, _make_headers(headers), "1.1", now)
        if isinstance(content, str):
            resp.text = content
        elif isinstance(content, bytes):
            resp.content = content
        else:
            raise TypeError(f"content must be str or bytes, not {type(content).__name__}")
        if "content-length" not in resp.headers:
            resp.headers["Content-Length"] = str(len(resp._content or b""))
        resp.timestamp_end = now
        return resp

    def __repr__(self) -> str:
        kind = self.headers.get("content-type", "unknown content type")
        return f"Response({self._status}, {kind})"

    @property
    def status_code(self) -> int:
        """The status, e.g. 200."""
        return self._status

    @status_code.setter
    def status_code(self, value: int) -> None:
        self._status = value
        if not self._reason_set and isinstance(value, int):
            self._reason = reason_for(value).encode("latin-1")

    @property
    def reason(self) -> str:
        """The reason phrase, e.g. "Not Found"."""
        return self._reason.decode("latin-1")

    @reason.setter
    def reason(self, value: str | bytes) -> None:
        self._reason = value if isinstance(value, bytes) else value.encode("latin-1")
        self._reason_set = True


class Error:
    """Why a flow failed (`msg`: one line), and when."""

    __slots__ = ("msg", "timestamp")

    KILLED_MESSAGE = "Connection killed."

    def __init__(self, msg: str, timestamp: float | None = None) -> None:
        self.msg = msg
        self.timestamp = time.time() if timestamp is None else timestamp

    def __str__(self) -> str:
        return self.msg

    def __repr__(self) -> str:
        return f"Error({self.msg!r})"


_tls_connection: Callable[[Any], Any] | None = None

# The variant nibble of a UUID is 10xx: 8, 9, a or b, whatever the random digit was.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid7() -> str:
    """A time-ordered (version 7, RFC 9562) UUID as text: the milliseconds since the epoch,
    then random bits. Flow ids are the capture store's key: ids that grow with time are
    appended to its index, where random ones cost an insert anywhere in it (40% more per flow
    stored); and it costs a third of str(uuid.uuid4())."""
    global _last_ms
    ms = time.time_ns() // 1_000_000
    last = _last_ms
    if last[0] != ms:
        # The time's half, formatted once a millisecond: a busy proxy makes several ids in
        # one, and formatting it was a third of the cost. (One tuple, swapped whole: a
        # thread reading it sees a millisecond and its own text.)
        t = f"{ms:012x}"
        last = _last_ms = (ms, f"{t[:8]}-{t[8:]}-7")
    h = _random_hex()
    return f"{last[1]}{h[:3]}-{_VARIANT[h[3]]}{h[4:7]}-{h[7:19]}"


_last_ms = (-1, "")
_entropy: list[str] = []


def _random_hex() -> str:
    """20 random hex digits, from the OS's CSPRNG (RFC 9562 asks ids to be unguessable),
    read 64 ids' worth at a time: a getrandom() call per flow was a system call per request.
    (list.pop is atomic: threads never share a value.)"""
    try:
        return _entropy.pop()
    except IndexError:
        block = os.urandom(640).hex()
        _entropy.extend(block[i : i + 20] for i in range(20, 1280, 20))
        return block[:20]


class _Connection:
    """What the client and server connections share: a transport whose TLS details are read
    when asked for (nothing is copied per flow)."""

    __slots__ = ()

    _leg: Any  # the proxy's Leg (a Twisted protocol), or None before there is one

    def _tls(self) -> Any:
        global _tls_connection
        if _tls_connection is None:
            # Imported when first asked for: the addon API itself does not need OpenSSL.
            from .tls.info import tls_connection

            _tls_connection = tls_connection
        leg = self._leg
        return _tls_connection(leg.transport) if leg is not None else None

    @property
    def tls_established(self) -> bool:
        """A TLS handshake completed on this connection."""
        conn = self._tls()
        return conn is not None and conn.get_protocol_version_name() not in ("", "Unknown")

    @property
    def tls(self) -> bool:
        """The connection is TLS (as tls_established here: we never downgrade)."""
        return self.tls_established

    @property
    def tls_version(self) -> str | None:
        """e.g. "TLSv1.3"; None for plain connections."""
        conn = self._tls()
        return conn.get_protocol_version_name() if conn is not None else None

    @property
    def sni(self) -> str | None:
        """The server name of the TLS handshake."""
        conn = self._tls()
        name = conn.get_servername() if conn is not None else None
        return name.decode("idna") if name else None

    @property
    def alpn(self) -> bytes | None:
        """The protocol ALPN chose (b"http/1.1"), if any."""
        conn = self._tls()
        chosen = conn.get_alpn_proto_negotiated() if conn is not None else b""
        return chosen or None

    @property
    def cipher(self) -> str | None:
        """The cipher suite's name."""
        conn = self._tls()
        return conn.get_cipher_name() if conn is not None else None

    def _address(self, which: str) -> tuple[str, int] | None:
        leg = self._leg
        transport = getattr(leg, "transport", None) if leg is not None else None
        if transport is None:
            return None
        addr = getattr(transport, which)()
        host, port = getattr(addr, "host", None), getattr(addr, "port", None)
        return (host, port) if host is not None and port is not None else None


class Client(_Connection):
    """The client's connection to the proxy (one per connection, shared by its flows)."""

    __slots__ = ("_leg", "timestamp_start", "_id", "_tls_done")

    def __init__(self, leg: Any, timestamp_start: float, tls_known: bool = False) -> None:
        self._leg = leg
        self.timestamp_start = timestamp_start
        self._id: str | None = None
        # Whether the TLS handshake completed, as the proxy's own client leg reports it
        # (`tls_known`: it calls handshake_completed), or None: ask the transport. The access
        # log and capture ask for every request, and the transport took 3,500 instructions
        # to say a plain connection is plain.
        self._tls_done: bool | None = False if tls_known else None

    def handshake_completed(self) -> None:
        """The client's TLS handshake with the proxy completed (the proxy's leg says so)."""
        self._tls_done = True

    @property
    def tls_established(self) -> bool:
        """A TLS handshake completed on this connection."""
        done = self._tls_done
        return done if done is not None else super().tls_established

    @property
    def id(self) -> str:
        """A UUID string (time-ordered: see uuid7)."""
        if self._id is None:
            self._id = uuid7()
        return self._id

    @property
    def peername(self) -> tuple[str, int] | None:
        """The client's address, (host, port)."""
        return self._address("getPeer")

    @property
    def address_text(self) -> str:
        """The client's address as logs show it, "host:port"."""
        return str(getattr(self._leg, "peer", "-"))

    @property
    def sockname(self) -> tuple[str, int] | None:
        """The proxy's address the client connected to."""
        return self._address("getHost")

    def __repr__(self) -> str:
        return f"Client({self.peername})"


class Server(_Connection):
    """The proxy's connection to the origin for one flow (made when an addon asks for it:
    most flows never do)."""

    __slots__ = ("_flow", "via")

    def __init__(self, flow: HTTPFlow) -> None:
        self._flow = flow
        # The upstream proxy this flow leaves through (mitmproxy's name): None (direct), a
        # proxy URL, ("http"|"socks5"|"socks5h", (host, port)) or a via.Route. It starts as
        # the configured choice ([upstream] proxy, no_proxy); docs/upstream-proxies.md.
        self.via: Any = None

    @property
    def _leg(self) -> Any:
        return self._flow._server_leg

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the request goes: (host, port)."""
        req = self._flow.request
        return (req.host, req.port) if req is not None else None

    @property
    def peername(self) -> tuple[str, int] | None:
        """The address actually connected to."""
        return self._address("getPeer")

    @property
    def sockname(self) -> tuple[str, int] | None:
        """Our end of it."""
        return self._address("getHost")

    def __repr__(self) -> str:
        return f"Server({self.address})"


class HTTPFlow:
    """One HTTP exchange (or one CONNECT): what addons see and change.

    Beside mitmproxy's attributes it keeps the record the access log (and capture) reads:
    `status`, the status the client really got (0: none, the exchange was cut), and the body
    bytes each way.
    """

    # What every flow sets is in slots; the rest are class-level defaults, shadowed per flow
    # only when set (most flows never are): a proxied request pays for nothing it does not use.
    __slots__ = (
        "request",
        "response",
        "error",
        "client_conn",
        "timestamp_created",
        "killed",
        "status",
        "bytes_in",
        "bytes_out",
        "raw",
        "parent_id",
        "_server_leg",
        "__dict__",
    )

    type = "http"
    websocket = None  # WebSocket messages are relayed, not parsed
    is_replay: str | None = None
    intercepted = False
    live = True
    _id: str | None = None
    _metadata: dict[str, Any] | None = None
    _resume: Deferred[None] | None = None
    _server: Server | None = None
    # A tunnel the flow opened, once over: how it ended ("upstream clean after client FIN").
    tunnel_ending: str | None = None

    def __init__(self, client_conn: Client, timestamp_created: float) -> None:
        self.client_conn = client_conn
        self.timestamp_created = timestamp_created
        self.request: Request | None = None  # None only before a request head could be read
        self.response: Response | None = None
        self.error: Error | None = None
        self.killed = False
        self.status = 0
        self.bytes_in = 0  # request body bytes from the client
        self.bytes_out = 0  # response body bytes to the client
        # (method, target) as the client sent them, for logs when `request` could not be made.
        self.raw: tuple[bytes, bytes] | None = None
        # Inside an intercepted CONNECT: that CONNECT's flow id, which joins its log lines.
        self.parent_id: str | None = None
        self._server_leg: Any = None  # the upstream connection, once there is one

    def __repr__(self) -> str:
        return f"<HTTPFlow {self.request!r} {self.response!r}>"

    @property
    def id(self) -> str:
        """A UUID string, unique per flow (time-ordered: see uuid7)."""
        if self._id is None:
            self._id = uuid7()
        return self._id

    @property
    def server_conn(self) -> Server:
        """The connection to the origin."""
        if self._server is None:
            self._server = Server(self)
        return self._server

    @property
    def metadata(self) -> dict[str, Any]:
        """Free for addons: whatever they want to keep with the flow."""
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @property
    def killable(self) -> bool:
        """The flow can still be killed."""
        return self.live and not self.killed

    def kill(self) -> None:
        """Kill the flow: the client's connection is cut, nothing more is sent."""
        if not self.killable:
            return
        self.killed = True
        self.error = Error(Error.KILLED_MESSAGE)
        self.resume()

    def intercept(self) -> None:
        """Pause the flow after the current hook, until `resume()` (or `kill()`)."""
        if self.live and not self.intercepted:
            self.intercepted = True

    def resume(self) -> None:
        """Let an intercepted flow go on."""
        self.intercepted = False
        waiter, self._resume = self._resume, None
        if waiter is not None:
            waiter.callback(None)

    def wait_for_resume(self) -> Deferred[None]:
        """A Deferred that fires when the flow is resumed (the hook runner waits on it)."""
        if not self.intercepted:
            from twisted.internet.defer import succeed

            return succeed(None)
        if self._resume is None:
            self._resume = Deferred()
        return self._resume
