# Copied from mitmproxy: examples/addons/http-reply-from-proxy.py
# at https://github.com/mitmproxy/mitmproxy (commit 8fc25b304593), unchanged except for
# `mitmproxy` -> `interceptor` in its import lines.
# MIT licence (the full text is in LICENSE beside this file):
# Copyright (c) 2013, Aldo Cortesi. All rights reserved.
# Load it: INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/http-reply-from-proxy.py

"""Send a reply from the proxy without sending the request to the remote server."""

from interceptor import http


def request(flow: http.HTTPFlow) -> None:
    if flow.request.pretty_url == "http://example.com/path":
        flow.response = http.Response.make(
            200,  # (optional) status code
            b"Hello World",  # (optional) content
            {"Content-Type": "text/html"},  # (optional) headers
        )
