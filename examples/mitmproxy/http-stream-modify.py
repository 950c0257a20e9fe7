# Copied from mitmproxy: examples/addons/http-stream-modify.py
# at https://github.com/mitmproxy/mitmproxy (commit 8fc25b304593), unchanged except for
# `mitmproxy` -> `interceptor` in its import lines.
# MIT licence (the full text is in LICENSE beside this file):
# Copyright (c) 2013, Aldo Cortesi. All rights reserved.
# Load it: INTERCEPTOR_HOOKS_SCRIPTS=examples/mitmproxy/http-stream-modify.py

"""
Modify a streamed response.

Generally speaking, we recommend *not* to stream messages you need to modify.
Modifying streamed responses is tricky and brittle:
    - If the transfer encoding isn't chunked, you cannot simply change the content length.
    - If you want to replace all occurrences of "foobar", make sure to catch the cases
      where one chunk ends with [...]foo" and the next starts with "bar[...].
"""

from collections.abc import Iterable


def modify(data: bytes) -> bytes | Iterable[bytes]:
    """
    This function will be called for each chunk of request/response body data that arrives at the proxy,
    and once at the end of the message with an empty bytes argument (b"").

    It may either return bytes or an iterable of bytes (which would result in multiple HTTP/2 data frames).
    """
    return data.replace(b"foo", b"bar")


def responseheaders(flow):
    flow.response.stream = modify
