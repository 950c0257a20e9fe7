"""Filter expressions over captured flows, compiled to SQL (one language for the command, the
HAR export and the web UI).

An expression is terms separated by spaces, all of which must hold; `!` before a term negates
it. Terms:

    host:PATTERN     the request's host; `*` matches any run of characters (`*.example.com`)
    method:NAME      GET, POST, ... (any case)
    status:SPEC      200, 5xx, 400-499, or `none` (the client got no response)
    url:TEXT         the URL contains TEXT
    kind:KIND        http, intercepted, connect, passthrough, websocket
    client:TEXT      the client's address contains TEXT
    error            the flow has an error;  `!error` it has none

Anything else is a FilterError naming the term: a typo must not silently match nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERMS = "host:, method:, status:, url:, kind:, client:, error"
_KINDS = frozenset({"http", "intercepted", "connect", "passthrough", "websocket"})
_STATUS_CLASS = re.compile(r"([1-5])xx", re.IGNORECASE)
_STATUS_RANGE = re.compile(r"(\d{3})-(\d{3})")


class FilterError(ValueError):
    """An expression that cannot be compiled; the message names the term."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """A WHERE clause (without the keyword; "1" for the empty expression) and its parameters."""

    where: str
    params: tuple[object, ...]


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching itself literally (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _term(key: str, value: str, term: str) -> tuple[str, tuple[object, ...]]:
    if key == "host":
        if not value:
            raise FilterError(f"filter term {term!r}: host: needs a pattern")
        pattern = "%".join(_like(part) for part in value.lower().split("*"))
        return "lower(host) LIKE ? ESCAPE '\\'", (pattern,)
    if key == "method":
        if not value.isalpha():
            raise FilterError(f"filter term {term!r}: not a method")
        return "method = ?", (value.upper(),)
    if key == "status":
        return _status(value, term)
    if key == "url":
        return "url LIKE ? ESCAPE '\\'", (f"%{_like(value)}%",)
    if key == "client":
        return "client LIKE ? ESCAPE '\\'", (f"%{_like(value)}%",)
    if key == "kind":
        if value not in _KINDS:
            raise FilterError(f"filter term {term!r}: kind is one of {', '.join(sorted(_KINDS))}")
        return "kind = ?", (value,)
    raise FilterError(f"unknown filter term {term!r} ({_TERMS})")


def _status(value: str, term: str) -> tuple[str, tuple[object, ...]]:
    if value.lower() == "none":
        return "status = 0", ()
    if value.isdigit() and len(value) == 3:
        return "status = ?", (int(value),)
    found = _STATUS_CLASS.fullmatch(value)
    if found:
        low = int(found[1]) * 100
        return "status BETWEEN ? AND ?", (low, low + 99)
    found = _STATUS_RANGE.fullmatch(value)
    if found and int(found[1]) <= int(found[2]):
        return "status BETWEEN ? AND ?", (int(found[1]), int(found[2]))
    raise FilterError(f"filter term {term!r}: status is like 200, 5xx, 400-499 or none")


def compile_filter(expression: str) -> Compiled:
    """Compile `expression` (see the module docstring) to SQL over the flows table."""
    clauses: list[str] = []
    params: list[object] = []
    for term in expression.split():
        negated = term.startswith("!")
        body = term[1:] if negated else term
        if body == "error":
            clause: str = "error IS NOT NULL"
            values: tuple[object, ...] = ()
        else:
            key, sep, value = body.partition(":")
            if not sep:
                raise FilterError(f"unknown filter term {term!r} ({_TERMS})")
            clause, values = _term(key.lower(), value, term)
        clauses.append(f"NOT ({clause})" if negated else f"({clause})")
        params.extend(values)
    return Compiled(" AND ".join(clauses) or "1", tuple(params))
