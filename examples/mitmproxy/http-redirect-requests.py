# Copied from mitmproxy: examples/addons/http-redirect-requests.py
# at https://github.com/mitmproxy/mitmproxy (commit 8fc25b304593), unchanged except for
# `mitmproxy` -> `interceptor` in its import lines.
# MIT licence (the full text is in LICENSE beside this file):
# Copyright (c) 2013, Aldo Cortesi. All rights reserved.
# Load it: INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/http-redirect-requests.py

"""Redirect HTTP requests to another server."""

from interceptor import http


def request(flow: http.HTTPFlow) -> None:
    # pretty_host takes the "Host" header of the request into account,
    # which is useful in transparent mode where we usually only have the IP
    # otherwise.
    if flow.request.pretty_host == "example.org":
        flow.request.host = "mitmproxy.org"
