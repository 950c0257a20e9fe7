"""Request / Response / Flow: what hooks see of one exchange.

Heads only: bodies stream through and are never held, so a hook can read or rewrite headers,
choose the upstream, or answer locally, but not buffer a body.
"""

from __future__ import annotations

from .hosts import format_authority


class Request:
    """The request as it will be sent upstream (headers already free of hop-by-hop ones)."""

    __slots__ = ("method", "scheme", "host", "port", "path", "headers", "http_version")

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.headers = headers
        self.http_version = http_version

    @property
    def url(self) -> str:
        """The absolute URL, for logs."""
        netloc = format_authority(self.host, self.port, 443 if self.scheme == "https" else 80)
        return f"{self.scheme}://{netloc}{self.path.decode('latin-1')}"


class Response:
    """The response head as received from upstream (or made locally)."""

    __slots__ = ("status", "reason", "headers")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


class Flow:
    """One exchange: the client, its request, the response or the error, sizes and timing."""

    __slots__ = (
        "client",
        "request",
        "response",
        "error",
        "started",
        "bytes_in",
        "bytes_out",
        "status",
        "local",
        "raw",
    )

    def __init__(self, client: str, started: float) -> None:
        self.client = client
        self.request: Request | None = None
        self.response: Response | None = None
        self.error: str | None = None
        self.started = started
        self.bytes_in = 0  # request body bytes from the client
        self.bytes_out = 0  # response body bytes to the client
        self.status = 0  # what the client got (0: nothing, the exchange was cut)
        # A hook may set this to answer locally: (status, content type, body bytes).
        self.local: tuple[int, bytes, bytes] | None = None
        # (method, target) as the client sent them, for logs when `request` could not be made.
        self.raw: tuple[bytes, bytes] | None = None
