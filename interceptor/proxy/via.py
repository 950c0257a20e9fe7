"""Upstream proxies: leaving through an HTTP proxy or a SOCKS5 one, chosen per flow.

A route is where a flow's upstream connection goes first: None (direct), or an upstream proxy
(`Route`). The configured choice (`Routes`, from `[upstream] proxy` and `no_proxy`, or the
conventional environment variables) is each flow's default, and an addon may change it through
`flow.server_conn.via`, as in mitmproxy.

Through an HTTP proxy a plain-HTTP request goes in absolute form with the proxy's
Proxy-Authorization, on a connection to the proxy; everything else (HTTPS, intercepted or
passed through, and WebSocket upgrades inside it) goes through a tunnel that `ViaEndpoint`
opens first: a CONNECT to an HTTP proxy, or a SOCKS5 CONNECT (RFC 1928, with RFC 1929
username/password). Only once the tunnel is up does the connection's own protocol see it, so
TLS to the origin, its verification, pooling and the lifecycle table work as they do direct.

Every failure of the upstream proxy is an `UpstreamProxyError`: a 502 or 504 with one line
naming the proxy and what it answered, and a reason that /metrics counts.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from twisted.internet import endpoints, error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from ..hosts import HostPatterns, format_authority, parse_ip
from .events import ProtocolError, ResponseHead
from .http1 import ResponseReader, request_head
from .leg import abandon

SCHEMES = ("http", "socks5", "socks5h")
_DEFAULT_PORT = 1080  # curl's, for a proxy URL without a port
_MAX_SOCKS_FIELD = 255  # RFC 1928/1929: names, users and passwords are at most 255 bytes


@dataclass(frozen=True)
class Route:
    """An upstream proxy: `scheme` http, socks5 (names resolved here) or socks5h (by the
    proxy), its address and credentials. Its text never shows the password."""

    scheme: str
    host: str
    port: int
    user: str = ""
    password: str = ""

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{format_authority(self.host, self.port)}"

    __repr__ = __str__

    @property
    def http(self) -> bool:
        """An HTTP proxy (plain requests go to it in absolute form)."""
        return self.scheme == "http"

    @property
    def proxy_authorization(self) -> bytes | None:
        """The Proxy-Authorization value for an HTTP proxy with credentials."""
        if not self.user and not self.password:
            return None
        token = base64.b64encode(f"{self.user}:{self.password}".encode())
        return b"Basic " + token


def parse_route(url: str, credentials: str = "") -> Route:
    """`http://[user:pass@]host[:port]`, `socks5://…` or `socks5h://…` as a Route.
    `credentials` ("user:password") stand in for those the URL lacks.

    :raises ValueError: one line saying what is wrong (never quoting a password).
    """
    text = url.strip()
    if "://" not in text:
        raise ValueError("an upstream proxy is a URL such as http://host:3128 or socks5h://host:1080")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a proxy URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        hint = " (TLS to the proxy itself is not supported)" if scheme == "https" else ""
        raise ValueError(f"proxy scheme {scheme!r} is not one of {', '.join(SCHEMES)}{hint}")
    host = parts.hostname
    if not host:
        raise ValueError("the proxy URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL is scheme://[user:password@]host[:port], nothing after")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if not user and not password and credentials:
        user, _, password = credentials.partition(":")
    if scheme != "http" and (len(user.encode()) > _MAX_SOCKS_FIELD or len(password.encode()) > 255):
        raise ValueError("SOCKS5 user names and passwords are at most 255 bytes")
    return Route(scheme, host, port or _DEFAULT_PORT, user, password)


def as_route(value: object) -> Route | None:
    """What an addon may set as `flow.server_conn.via`: None (direct), a Route, a proxy URL,
    or mitmproxy's form `(scheme, (host, port))`.

    :raises ValueError: one line saying why it is not a route.
    """
    if value is None or isinstance(value, Route):
        return value
    if isinstance(value, str):
        return parse_route(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], tuple):
        scheme, (host, port) = value
        if not isinstance(scheme, str) or not isinstance(host, str) or type(port) is not int:
            raise ValueError(f"not an upstream proxy: {value!r}")
        return parse_route(f"{scheme}://{format_authority(host, port)}")
    raise ValueError(f"not an upstream proxy (a URL, (scheme, (host, port)) or None): {value!r}")


class Routes:
    """The configured choice of route per origin: a proxy (per scheme: the environment's
    variables differ for http and https) unless the host is in `no_proxy`."""

    def __init__(
        self, http: Route | None, https: Route | None, no_proxy: HostPatterns, everything: bool
    ) -> None:
        self._http = http
        self._https = https
        self._no_proxy = no_proxy
        self._none = everything  # NO_PROXY=*: every host goes direct
        # No flow goes through a proxy unless an addon says so (read per request: a plain
        # attribute).
        self.direct = everything or (http is None and https is None)

    def choose(self, scheme: str, host: str) -> Route | None:
        """The route for a request to `scheme://host` (a CONNECT is "https")."""
        if self._none:
            return None
        route = self._https if scheme == "https" else self._http
        if route is None or (self._no_proxy and self._no_proxy.matches(host)):
            return None
        return route

    def __str__(self) -> str:
        if self.direct:
            return "direct"
        both = {str(self._http), str(self._https)}
        routes = " and ".join(sorted(both - {"None"}))
        return f"through {routes}" + (" (no_proxy for some hosts)" if self._no_proxy else "")


def configured_routes(
    proxy: str, no_proxy: Sequence[str], credentials: str, environ: Mapping[str, str]
) -> Routes:
    """The Routes `[upstream] proxy`/`no_proxy` ask for. `proxy = "env"` takes curl's
    variables: https_proxy/HTTPS_PROXY for https, http_proxy (lowercase only, as curl: the
    uppercase one can be set by a CGI request's Proxy header) for http, all_proxy/ALL_PROXY
    for either when unset, no_proxy/NO_PROXY (comma-separated names, each also covering its
    subdomains, IPs and CIDRs; * for all) beside `no_proxy`.

    :raises ValueError: one line naming the variable or value that is wrong.
    """
    patterns = list(no_proxy)
    everything = False
    if proxy == "env":

        def variable(*names: str) -> tuple[str, str]:
            for name in names:
                value = environ.get(name, "").strip()
                if value:
                    return name, value
            return "", ""

        routes: list[Route | None] = []
        fallback = variable("all_proxy", "ALL_PROXY")
        for names in (("http_proxy",), ("https_proxy", "HTTPS_PROXY")):
            name, value = variable(*names)
            if not value:
                name, value = fallback
            try:
                routes.append(parse_route(value, credentials) if value else None)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        http, https = routes
        for entry in variable("no_proxy", "NO_PROXY")[1].split(","):
            entry = entry.strip().lstrip(".")
            if entry == "*":
                everything = True
            elif entry:
                patterns += _curl_no_proxy(entry)
    elif proxy:
        http = https = parse_route(proxy, credentials)
    else:
        http = https = None
    return Routes(http, https, HostPatterns(patterns), everything)


def _curl_no_proxy(entry: str) -> list[str]:
    # curl: a name covers itself and its subdomains; an IP or CIDR its addresses; a port
    # after the name is not looked at.
    if parse_ip(entry) is not None or "/" in entry:
        return [entry]
    name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
    return [name, f"*.{name}"]


def read_credentials(path: str) -> str:
    """The "user:password" in a credentials file (its first line).

    :raises ValueError: one line naming the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if ":" not in line:
        raise ValueError(f"{path}: the first line is not user:password")
    return line


# -- failures --------------------------------------------------------------------------------


class UpstreamProxyError(error.ConnectError):
    """The upstream proxy did not give us a tunnel (or a connection): `status` for the client
    (502, or 504 for a timeout), `reason` for /metrics, and the one-line text."""

    def __init__(self, route: Route, text: str, reason: str, status: int = 502) -> None:
        super().__init__(string=f"upstream proxy {route} {text}")
        self.route = route
        self.text = f"upstream proxy {route} {text}"
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return self.text


def connect_failure_text(route: Route, reason: Failure) -> UpstreamProxyError:
    """The upstream proxy itself could not be reached: why, naming it."""
    if reason.check(error.ConnectionRefusedError):
        return UpstreamProxyError(route, "refused the connection", "unreachable")
    if reason.check(error.DNSLookupError):
        return UpstreamProxyError(route, "not found (its name does not resolve)", "unreachable")
    if reason.check(error.TimeoutError):
        return UpstreamProxyError(route, "did not accept the connection in time", "timeout", 504)
    return UpstreamProxyError(
        route, f"could not be reached: {reason.getErrorMessage()}", "unreachable"
    )


# -- connecting: direct, to the proxy, or through its tunnel ---------------------------------


def client_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A TCP endpoint for `host`: IP literals directly, names through the resolver."""
    ip = parse_ip(host)
    version = ip.version if ip is not None else 0
    if version == 4:
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if version == 6:
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)


def route_endpoint(
    reactor: Any,
    route: Route | None,
    host: str,
    port: int,
    timeout: float,
    hosts: Mapping[str, str],
    tunnel: bool = True,
) -> IStreamClientEndpoint:
    """Where a connection to `host:port` goes: there (`hosts` may map the name to an
    address), or through `route`'s tunnel, or (`tunnel` False: plain HTTP through an HTTP
    proxy, in absolute form) to the proxy itself."""
    mapped = hosts.get(host.lower(), host)
    if route is None:
        return client_endpoint(reactor, mapped, port, timeout)
    proxy = client_endpoint(reactor, route.host, route.port, timeout)
    if not tunnel and route.http:
        return _NamingFailures(proxy, route)
    # socks5:// resolves here, so `hosts` applies; otherwise the proxy resolves the name.
    target = mapped if route.scheme == "socks5" else host
    return ViaEndpoint(reactor, route, target, port, timeout, proxy)


@implementer(IStreamClientEndpoint)
class _NamingFailures:
    """A connection to the proxy itself, whose failures name it."""

    def __init__(self, endpoint: IStreamClientEndpoint, route: Route) -> None:
        self._endpoint = endpoint
        self._route = route

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect; a failure becomes the UpstreamProxyError that says why."""

        def named(reason: Failure) -> Failure:
            if reason.check(CancelledError):
                return reason
            return Failure(connect_failure_text(self._route, reason))

        return self._endpoint.connect(factory).addErrback(named)


# -- the tunnel through it -------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class ViaEndpoint:
    """Connects to `host:port` through `route`'s tunnel: the factory's protocol sees a
    connection that is already the tunnel (it never sees the proxy's handshake)."""

    def __init__(
        self,
        reactor: Any,
        route: Route,
        host: str,
        port: int,
        timeout: float,
        proxy_endpoint: IStreamClientEndpoint,
    ) -> None:
        self.reactor = reactor
        self.route = route
        self.host = host
        self.port = port
        self.timeout = timeout
        self._proxy_endpoint = proxy_endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect to the proxy, open the tunnel, then hand it to `factory`'s protocol. Through
        socks5:// (not socks5h://) the origin's name is resolved here first."""
        route = self.route
        handshake: list[_Handshake] = []
        steps: list[Deferred[Any]] = []

        def cancel(d: Deferred[IProtocol]) -> None:
            for step in steps:  # resolving, or connecting to the proxy
                step.cancel()
            if handshake:
                handshake[0].cancel()

        done: Deferred[IProtocol] = Deferred(cancel)
        if route.scheme == "socks5" and parse_ip(self.host) is None:
            resolving: Deferred[str] = self.reactor.resolve(self.host)
            steps.append(resolving)

            def resolved(address: str) -> None:
                self.host = address
                steps.append(self._open(factory, done, handshake))

            def unresolved(reason: Failure) -> None:
                if not done.called:
                    done.errback(reason)  # the origin's name: "upstream host not found"

            resolving.addCallbacks(resolved, unresolved)
        else:
            steps.append(self._open(factory, done, handshake))
        return done

    def _open(
        self, factory: IProtocolFactory, done: Deferred[IProtocol], handshake: list[_Handshake]
    ) -> Deferred[Any]:
        route = self.route

        def build(addr: IAddress | None) -> _Handshake:
            inner = factory.buildProtocol(cast(IAddress, addr))
            assert inner is not None  # ours always build one
            kind = _HTTPConnect if route.http else _Socks5
            proto = kind(self, inner, done)
            handshake.append(proto)
            return proto

        def failed(reason: Failure) -> None:
            if not done.called:
                if reason.check(CancelledError):
                    done.errback(reason)
                else:
                    done.errback(connect_failure_text(route, reason))

        connecting = self._proxy_endpoint.connect(_BuildOnce(build))
        connecting.addErrback(failed)
        return connecting


class _BuildOnce(Factory):
    noisy = False

    def __init__(self, build: Any) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._build(addr)  # type: ignore[no-any-return]


class _Handshake(Protocol):
    """The proxy's side of the connection: the handshake, then every event forwarded to the
    protocol the tunnel was made for (`inner`, whose transport is this connection's; it is
    connected only once the tunnel is up). Half-close and TLS-handshake news are passed on
    exactly when `inner` takes them, so the transport treats the pair as it would `inner`."""

    def __init__(self, endpoint: ViaEndpoint, inner: IProtocol, done: Deferred[Any]):
        self.endpoint = endpoint
        self.route = endpoint.route
        self.done = done
        self._inner = inner
        self.inner: IProtocol | None = None  # once connected
        for interface in (IHalfCloseableProtocol, IHandshakeListener):
            if interface.providedBy(inner):
                alsoProvides(self, interface)
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._failed: UpstreamProxyError | None = None

    # -- the handshake -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        clock: IReactorTime = self.endpoint.reactor
        self._timer = clock.callLater(self.endpoint.timeout, self._timed_out)
        self.start()

    def start(self) -> None:
        """Send the first handshake message."""
        raise NotImplementedError

    def step(self, data: bytes) -> bytes | None:
        """Take handshake bytes: None while more are needed, else what followed the handshake
        (the tunnel's first bytes). Raises UpstreamProxyError when the proxy says no."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self._failed is not None:
            return
        try:
            rest = self.step(data)
        except UpstreamProxyError as e:
            self._fail(e)
            return
        if rest is not None:
            self._established(rest)

    def _established(self, rest: bytes) -> None:
        self._stop_timer()
        transport = self.transport
        assert transport is not None
        self.inner = inner = self._inner
        inner.makeConnection(transport)
        self.done.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, failure: UpstreamProxyError) -> None:
        self._failed = failure
        self._stop_timer()
        if self.transport is not None:
            abandon(self.transport)
        if not self.done.called:
            self.done.errback(failure)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(
            UpstreamProxyError(
                self.route,
                f"did not open the tunnel within {self.endpoint.timeout:g} s",
                "timeout",
                504,
            )
        )

    def cancel(self) -> None:
        """The connect was cancelled mid-handshake (our own abort)."""
        if self.inner is None and self._failed is None:
            self._failed = UpstreamProxyError(self.route, "cancelled", "cancelled")
            self._stop_timer()
            if self.transport is not None:
                abandon(self.transport)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- once the tunnel is up, everything is the inner protocol's --------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
            return
        self._stop_timer()
        if self._failed is None and not self.done.called:
            self._failed = UpstreamProxyError(
                self.route, "closed the connection during its handshake", "handshake"
            )
            self.done.errback(self._failed)

    # (Called only when `inner` provides the interface: see __init__.)

    def readConnectionLost(self) -> None:
        """The proxy relayed the far end's FIN (before the tunnel: it is a close)."""
        if self.inner is not None:
            cast(IHalfCloseableProtocol, self.inner).readConnectionLost()

    def writeConnectionLost(self) -> None:
        """Our write half is shut."""
        if self.inner is not None:
            cast(IHalfCloseableProtocol, self.inner).writeConnectionLost()

    def handshakeCompleted(self) -> None:
        """TLS started on the transport (an eager CONNECT's origin) completed."""
        if self.inner is not None:
            cast(IHandshakeListener, self.inner).handshakeCompleted()


class _HTTPConnect(_Handshake):
    """CONNECT host:port to an HTTP proxy; its 2xx opens the tunnel (RFC 9110 9.3.6)."""

    def start(self) -> None:
        self.reader = ResponseReader()
        self.reader.expect(False)
        authority = format_authority(self.endpoint.host, self.endpoint.port).encode()
        headers = [(b"Host", authority)]
        credentials = self.route.proxy_authorization
        if credentials is not None:
            headers.append((b"Proxy-Authorization", credentials))
        assert self.transport is not None
        self.transport.write(request_head(b"CONNECT", authority, headers))

    def step(self, data: bytes) -> bytes | None:
        reader = self.reader
        reader.feed(data)
        events, reader.events = reader.events, []
        head = next((e for e in events if type(e) is ResponseHead), None)
        problem = next((e for e in events if type(e) is ProtocolError), None)
        if head is None:
            if problem is not None:
                raise UpstreamProxyError(
                    self.route, f"answered CONNECT with {problem.reason}", "handshake"
                )
            return None
        if not 200 <= head.status < 300:
            reason = head.reason.decode("latin-1").strip()
            answered = f"answered {head.status} {reason}".rstrip()
            kind = "auth" if head.status in (401, 407) else "refused"
            raise UpstreamProxyError(self.route, f"{answered} to CONNECT", kind)
        # A 2xx to CONNECT has no body (RFC 9110 9.3.6): what llhttp hands on as one is the
        # tunnel's first bytes.
        return b"".join(e for e in events if type(e) is bytes)


_SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class _Socks5(_Handshake):
    """RFC 1928 CONNECT, with RFC 1929 username/password when the route has credentials."""

    def start(self) -> None:
        # Offer only what we can do: no authentication, or username/password.
        self._stage = "method"
        methods = b"\x02" if self.route.user or self.route.password else b"\x00"
        self._send(b"\x05\x01" + methods)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def step(self, data: bytes) -> bytes | None:
        self._buffer += data
        while True:
            need = self._needed()
            if need is None or len(self._buffer) < need:
                return None
            message, self._buffer = self._buffer[:need], self._buffer[need:]
            if self._take(message):
                rest, self._buffer = self._buffer, b""
                return rest

    def _needed(self) -> int | None:
        buf = self._buffer
        if self._stage in ("method", "auth"):
            return 2
        # reply: VER REP RSV ATYP BND.ADDR BND.PORT, whose length the address type says
        if len(buf) < 5:
            return 5
        atyp = buf[3]
        if atyp == 1:
            return 10
        if atyp == 4:
            return 22
        if atyp == 3:
            return 7 + buf[4]
        raise UpstreamProxyError(self.route, f"sent a reply with address type {atyp}", "handshake")

    def _take(self, message: bytes) -> bool:
        stage = self._stage
        if message[0] != (1 if stage == "auth" else 5):
            raise UpstreamProxyError(self.route, "does not speak SOCKS5", "handshake")
        if stage == "method":
            method = message[1]
            if method == 0x02 and (self.route.user or self.route.password):
                self._stage = "auth"
                user = self.route.user.encode()
                password = self.route.password.encode()
                self._send(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
            elif method == 0x00:
                self._request()
            elif method == 0xFF and not (self.route.user or self.route.password):
                raise UpstreamProxyError(self.route, "requires a user name and password", "auth")
            else:
                raise UpstreamProxyError(
                    self.route, f"offered no acceptable authentication (method {method})", "auth"
                )
            return False
        if stage == "auth":
            if message[1] != 0:
                raise UpstreamProxyError(
                    self.route, "refused the user name and password", "auth"
                )
            self._request()
            return False
        reply = message[1]
        if reply != 0:
            what = _SOCKS_REPLIES.get(reply, f"reply {reply}")
            raise UpstreamProxyError(
                self.route,
                f"could not connect to {format_authority(self.endpoint.host, self.endpoint.port)}: "
                f"{what}",
                "refused",
            )
        return True

    def _request(self) -> None:
        self._stage = "reply"
        host, port = self.endpoint.host, self.endpoint.port
        ip = parse_ip(host)
        if ip is not None:
            address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        else:
            name = host.encode("idna")
            if len(name) > _MAX_SOCKS_FIELD:
                raise UpstreamProxyError(self.route, "cannot take a name that long", "handshake")
            address = b"\x03" + bytes([len(name)]) + name
        self._send(b"\x05\x01\x00" + address + struct.pack("!H", port))


__all__ = [
    "Route",
    "client_endpoint",
    "route_endpoint",
    "Routes",
    "UpstreamProxyError",
    "ViaEndpoint",
    "as_route",
    "configured_routes",
    "parse_route",
    "read_credentials",
]
