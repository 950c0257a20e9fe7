"""Add a header to every response, counting them: mitmproxy's http-add-header, done here in
`responseheaders`.

Every response the client gets carries `X-Response-Count: N`, N counting from 1 since the
proxy started (responses answered by other addons included). mitmproxy's version sets it in
`response`; here a `response` hook makes the proxy buffer every response body for it, while
`responseheaders` sees the head alone and lets the body stream.

Load it:

    [hooks]
    scripts = ["examples/add_header.py"]

or `INTERCEPTOR_HOOKS_SCRIPTS=examples/add_header.py twistd -n --pidfile= interceptor`.
"""

from interceptor import http


class AddHeader:
    """Counts responses and tells each client its number."""

    def __init__(self) -> None:
        self.num = 0

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Number this response (hooks run in the reactor thread, one at a time: no lock)."""
        self.num += 1
        flow.response.headers["X-Response-Count"] = str(self.num)


addons = [AddHeader()]
