# Copied from mitmproxy: examples/addons/http-add-header.py
# at https://github.com/mitmproxy/mitmproxy (commit 8fc25b304593), unchanged except for
# `mitmproxy` -> `interceptor` in its import lines.
# MIT licence (the full text is in LICENSE beside this file):
# Copyright (c) 2013, Aldo Cortesi. All rights reserved.
# Load it: INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/http-add-header.py

"""Add an HTTP header to each response."""


class AddHeader:
    def __init__(self):
        self.num = 0

    def response(self, flow):
        self.num = self.num + 1
        flow.response.headers["count"] = str(self.num)


addons = [AddHeader()]
