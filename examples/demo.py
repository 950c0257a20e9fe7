"""The issue's demo addon, as written: block /block, tag requests, count POST bodies, delay /slow
(a Deferred, then asyncio), rewrite "cherry" to "banana" in HTML."""

import asyncio

from twisted.internet import reactor, task

from interceptor import http


class Demo:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/block"):
            flow.response = http.Response.make(403, b"blocked\n", {"Content-Type": "text/plain"})
            return
        flow.request.headers["X-Seen"] = "yes"
        if flow.request.method == "POST":
            flow.request.headers["X-Body-Len"] = str(len(flow.request.content))

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/slow"):
            await task.deferLater(reactor, 0.5, lambda: None)
            await asyncio.sleep(0.5)
        if "text/html" in flow.response.headers.get("content-type", ""):
            flow.response.text = flow.response.text.replace("cherry", "banana")
            flow.response.headers["X-Rewritten"] = "1"


addons = [Demo()]
