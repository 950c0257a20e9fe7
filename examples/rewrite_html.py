"""Replace words in HTML pages, whatever their Content-Encoding.

`flow.response.text` is the body decoded twice over: its Content-Encoding undone (gzip,
deflate, br, zstd) and its charset applied (Content-Type, else the page's <meta>, else UTF-8).
Setting it encodes the new text the same way and compresses it again with the same coding, so
the client gets a page as it came, only with other words; the proxy fixes Content-Length.
Only text/html responses are touched: the rest are left as they are.

A `response` hook makes the proxy buffer response bodies (up to `[hooks] body_limit`); a page
past it streams through and `text` is None, so it is left alone.

Load it:

    [hooks]
    scripts = ["examples/rewrite_html.py"]

or `INTERCEPTOR_HOOKS_SCRIPTS=examples/rewrite_html.py twistd -n --pidfile= interceptor`.
"""

from interceptor import http

REPLACEMENTS = {"cherry": "banana", "Cherry": "Banana"}


def response(flow: http.HTTPFlow) -> None:
    """Rewrite an HTML body that was buffered, leave everything else alone."""
    resp = flow.response
    if "text/html" not in resp.headers.get("content-type", "").lower():
        return
    try:
        text = resp.text
    except ValueError:
        return  # an unknown coding, a broken gzip, bytes not in its charset: left as it came
    if text is None:
        return  # past body_limit: it streamed
    new = text
    for old, replacement in REPLACEMENTS.items():
        new = new.replace(old, replacement)
    if new != text:
        resp.text = new
