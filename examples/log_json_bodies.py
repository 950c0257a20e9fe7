"""Log the JSON bodies of requests (method, URL and the parsed body on one line).

Lines go to the proxy's log through Python's `logging`, named after the script:

    [interceptor.addon#info] addon log_json_bodies: POST http://api.example/v1/items {"id": 1}

A `request` hook makes the proxy buffer request bodies (up to `[hooks] body_limit`); a body
past it streams on, `content` is None, and only that is logged.

Load it:

    [hooks]
    scripts = ["examples/log_json_bodies.py"]

or `INTERCEPTOR_HOOKS_SCRIPTS=examples/log_json_bodies.py twistd -n --pidfile= interceptor`.
"""

import json
import logging

from interceptor import http


def request(flow: http.HTTPFlow) -> None:
    """Log the request's body if it says it is JSON."""
    req = flow.request
    if "json" not in req.headers.get("content-type", "").lower():
        return
    if req.raw_content is None:
        logging.info("%s %s: JSON body not buffered (past body_limit)", req.method, req.url)
        return
    try:
        body = req.json()
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        logging.warning("%s %s: body is not JSON: %s", req.method, req.url, e)
        return
    logging.info("%s %s %s", req.method, req.url, json.dumps(body, sort_keys=True))
