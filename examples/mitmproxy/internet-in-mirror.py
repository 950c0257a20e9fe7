# Copied from mitmproxy: examples/addons/internet-in-mirror.py
# at https://github.com/mitmproxy/mitmproxy (commit 8fc25b304593), unchanged except for
# `mitmproxy` -> `interceptor` in its import lines.
# MIT licence (the full text is in LICENSE beside this file):
# Copyright (c) 2013, Aldo Cortesi. All rights reserved.
# Load it: INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/internet-in-mirror.py

"""
Mirror all web pages.

Useful if you are living down under.
"""

from interceptor import http


def response(flow: http.HTTPFlow) -> None:
    if flow.response and flow.response.content:
        flow.response.content = flow.response.content.replace(
            b"</head>", b"<style>body {transform: scaleX(-1);}</style></head>"
        )
