"""Replay a captured request: send it again, directly or through a proxy, with http.client.

What goes out is the stored request as the client sent it: method, URL, headers and the body
as stored (still Content-Encoded), less what belonged to the one connection it came on: the
hop-by-hop headers (and those its Connection header named), the framing (Content-Length is
set anew for the body), and headers stored `<redacted>`, whose value is gone. It carries
`X-Interceptor-Replay: <flow id>`, by which the proxy knows a replay when it captures one.

Through a proxy (`http://[user:password@]host:port`), an http:// URL is sent to it in absolute
form and an https:// one through a CONNECT tunnel; the origin's (or the intercepting proxy's)
certificate is verified against `cacert`, or the system's store without one.
"""

from __future__ import annotations

import base64
import http.client
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .addon import REDACTED
from .addon import REPLAY_HEADER as HEADER
from .rows import header, heads

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",  # framing: set again for the body sent
        HEADER.lower(),  # a replay of a replay names the flow replayed now
        # The proxy added its own Via on the way out: sent back through it, that would be a
        # loop (508). A replay is a new request, not the old one still travelling.
        "via",
    }
)
_TUNNELS = {
    "connect": "a CONNECT the proxy refused",
    "passthrough": "a passthrough tunnel",
    "websocket": "a WebSocket relay",
}


class ReplayError(Exception):
    """A replay that could not be made: a one-line message and the command's exit status
    (2: the flow or the arguments do not allow it; 1: the connection failed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """What is sent: the method, the stored URL, the headers in order and the body."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came back."""

    status_line: str
    headers: int
    body_bytes: int
    elapsed_ms: float


def request_of(row: sqlite3.Row) -> Request:
    """The request to replay for a stored flow; ReplayError (status 2) if it cannot be."""
    flow = row["id"]
    what = _TUNNELS.get(row["kind"])
    if what is not None or row["method"] == "CONNECT":
        raise ReplayError(f"flow {flow} is {what or 'a CONNECT'}: there is no request to replay", 2)
    if urlsplit(row["url"] or "").scheme not in ("http", "https"):
        raise ReplayError(f"flow {flow} has no http(s) URL to replay ({row['url']!r})", 2)
    body, size = row["request_body"], row["request_size"]
    if row["request_cut"] or (body is None and size):
        stored = f"{len(body)} of its {size}" if body is not None else f"none of its {size}"
        raise ReplayError(
            f"flow {flow}: the store kept {stored} request body bytes ([capture] body_limit); "
            "replaying the rest is not possible",
            2,
        )
    pairs = heads(row["request_headers"])
    named = {t.strip().lower() for t in header(pairs, "connection").split(",")}
    kept = [
        (name, value)
        for name, value in pairs
        if name.lower() not in _HOP_BY_HOP and name.lower() not in named and value != REDACTED
    ]
    framed = any(name.lower() in ("content-length", "transfer-encoding") for name, _ in pairs)
    body = body or b""
    if body or framed:
        kept.append(("Content-Length", str(len(body))))
    kept.append((HEADER, flow))
    return Request(row["method"], row["url"], kept, body)


def replay(
    request: Request, proxy: str | None = None, cacert: str | None = None, timeout: float = 30.0
) -> Outcome:
    """Send `request` (through the HTTP proxy URL `proxy`, if given) and read the response
    through; ReplayError with status 1 for a failed connection or exchange, 2 for bad
    arguments."""
    if not timeout > 0:  # 0 would make the socket non-blocking, NaN never time out
        raise ReplayError(f"--timeout {timeout:g}: give a number of seconds above 0", 2)
    target = urlsplit(request.url)
    secure = target.scheme == "https"
    context = _context(cacert) if secure or cacert else None
    try:
        host, port = target.hostname or "", target.port or (443 if secure else 80)
    except ValueError as e:  # a port that is not a number
        raise ReplayError(f"{request.url}: {e}", 2) from None
    origin_form = (target.path or "/") + (f"?{target.query}" if target.query else "")
    tunnel_auth: dict[str, str] = {}
    headers = request.headers
    if proxy is None:
        where, path = (host, port), origin_form
    else:
        where, auth = _proxy(proxy)
        if secure:  # the proxy sees the CONNECT only: its credentials go there
            path, tunnel_auth = origin_form, auth
        else:
            path, headers = request.url, [*headers, *auth.items()]
    conn: http.client.HTTPConnection
    if secure:
        conn = http.client.HTTPSConnection(*where, timeout=timeout, context=context)
        if proxy is not None:
            conn.set_tunnel(host, port, headers=tunnel_auth)
    else:
        conn = http.client.HTTPConnection(*where, timeout=timeout)
    began = time.monotonic()
    try:
        # The stored head is sent as it was: http.client adds neither Host nor Accept-Encoding.
        has_host = any(name.lower() == "host" for name, _ in headers)
        conn.putrequest(request.method, path, skip_host=has_host, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(request.body or None)
        response = conn.getresponse()
        received = 0
        while piece := response.read(65536):
            received += len(piece)
    except (OSError, http.client.HTTPException) as e:
        raise ReplayError(f"replay to {where[0]}:{where[1]}: {_reason(e, timeout)}", 1) from None
    finally:
        conn.close()
    version = "HTTP/1.0" if response.version == 10 else "HTTP/1.1"
    return Outcome(
        f"{version} {response.status} {response.reason}",
        len(response.getheaders()),
        received,
        (time.monotonic() - began) * 1000,
    )


def _context(cacert: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as e:
        raise ReplayError(f"--cacert {cacert}: {getattr(e, 'strerror', None) or e}", 2) from None


def _proxy(url: str) -> tuple[tuple[str, int], dict[str, str]]:
    """The proxy's (host, port), and the Proxy-Authorization its URL's credentials make."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ReplayError(f"--proxy {url!r}: give it as http://host:port", 2)
    auth = {}
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    return (parts.hostname, port), auth


def _reason(error: Exception, timeout: float) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {error.verify_message}"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host: {error.strerror}"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without a response"
    text = " ".join(str(error).split())  # one line, whatever the library put in it
    return text or type(error).__name__
