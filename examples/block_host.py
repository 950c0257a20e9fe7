"""Refuse requests to some hosts: a 403 with a one-line body, answered by the addon itself.

The request never reaches the origin. It is decided in `requestheaders`, on the head alone, so a
request body (an upload to a blocked host) is never buffered, however large. The hosts are the
Host header's (`pretty_host`), compared in lower case; edit BLOCKED to taste. HTTPS requests are
seen once intercepted (the CONNECT itself goes to `http_connect`, see the README).

Load it:

    [hooks]
    scripts = ["examples/block_host.py"]

or `INTERCEPTOR_HOOKS_SCRIPTS=examples/block_host.py twistd -n --pidfile= interceptor`.
"""

from interceptor import http

BLOCKED = {"ads.example", "tracker.example"}


def requestheaders(flow: http.HTTPFlow) -> None:
    """Answer 403 for a blocked host; the proxy then sends no request upstream."""
    host = flow.request.pretty_host.lower()
    if host in BLOCKED:
        flow.response = http.Response.make(
            403,
            f"blocked by block_host: {host}\n",
            {"Content-Type": "text/plain; charset=utf-8"},
        )
