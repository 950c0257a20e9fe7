"""The UI's JSON API as plain functions over a read-only store connection.

Nothing here knows about HTTP: the site (site.py) calls these in a thread and sends what they
return as JSON, so they are tested on their own. Lists are newest first and paged by `seq`
(the store's insertion order, its primary key): the first screen of a store of any size is
one indexed query.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..capture.filters import compile_filter
from ..capture.rows import heads, timings
from ..capture.views import body_view

_SUMMARY = (
    "seq, id, kind, started, ended, client, method, url, host, status, request_size, "
    "response_size, error, is_replay"
)
PAGE = 200  # flows a list request returns at most


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}


def list_flows(
    db: sqlite3.Connection, expression: str = "", before: int | None = None, limit: int = PAGE
) -> dict[str, Any]:
    """The newest `limit` flows matching `expression`, older than `before` (a seq) if given.
    `more`: older ones remain (ask again with `before` = the last one's seq)."""
    compiled = compile_filter(expression)
    db.row_factory = sqlite3.Row
    query = f"SELECT {_SUMMARY} FROM flows WHERE {compiled.where}"
    params: tuple[Any, ...] = compiled.params
    if before is not None:
        query += " AND seq < ?"
        params = (*params, before)
    limit = max(1, min(limit, PAGE))
    rows = db.execute(query + " ORDER BY seq DESC LIMIT ?", (*params, limit + 1)).fetchall()
    return {"flows": [_summary(r) for r in rows[:limit]], "more": len(rows) > limit}


def new_flows(
    db: sqlite3.Connection, after: int, expression: str = "", limit: int = PAGE
) -> list[dict[str, Any]]:
    """Flows stored after `after` (a seq) that match `expression`, oldest first."""
    compiled = compile_filter(expression)
    db.row_factory = sqlite3.Row
    rows = db.execute(
        f"SELECT {_SUMMARY} FROM flows WHERE {compiled.where} AND seq > ? ORDER BY seq LIMIT ?",
        (*compiled.params, after, limit),
    )
    return [_summary(r) for r in rows]


def last_seq(db: sqlite3.Connection) -> int:
    """The newest flow's seq (0 for an empty store)."""
    return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM flows").fetchone()[0])


def flow_detail(db: sqlite3.Connection, flow_id: str) -> dict[str, Any] | None:
    """One flow: heads, bodies as views (see capture.views), timings and TLS; None if unknown."""
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchone()
    if row is None:
        return None
    detail = {
        key: row[key]
        for key in row.keys()
        if key not in ("request_body", "response_body", "request_headers", "response_headers")
        and key not in ("client_tls", "server_tls") and not key.startswith("t_")
    }
    request_heads = heads(row["request_headers"])
    response_heads = heads(row["response_headers"])
    detail["request_headers"] = request_heads
    detail["response_headers"] = response_heads
    detail["request_body"] = body_view(
        row["request_body"], row["request_size"], row["request_cut"], request_heads
    )
    detail["response_body"] = body_view(
        row["response_body"], row["response_size"], row["response_cut"], response_heads
    )
    detail["timings"] = timings(row)
    for key in ("client_tls", "server_tls"):
        detail[key] = json.loads(row[key]) if row[key] else None
    return detail
