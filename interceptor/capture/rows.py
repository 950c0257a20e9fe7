"""Reading stored flows back: the stores a command names, one flow by id, heads and bodies.

What `interceptor flows show`, the HAR export and replay share: a row's heads are JSON text, its
bodies are as sent on the wire (still Content-Encoded), its times are epoch seconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from .. import encoding
from .store import TIMINGS, connect


class FlowNotFound(Exception):
    """An id that names no flow in the store, or more than one; the message is one line."""


@contextlib.contextmanager
def open_stores(paths: Sequence[str]) -> Iterator[list[sqlite3.Connection]]:
    """Every store in `paths`, read-only, closed on exit. All are opened before the caller
    reads any, so a bad path fails with StoreError before any output."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(contextlib.closing(connect(p, readonly=True))) for p in paths]


def find_flow(path: str, flow_id: str) -> sqlite3.Row:
    """The one flow in the store at `path` whose id starts or ends with `flow_id` (ids begin
    with their time, so flows of one moment differ at the end); FlowNotFound if no flow or
    several do."""
    literal = flow_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    with open_stores([path]) as (db,):
        db.row_factory = sqlite3.Row
        found = db.execute(
            "SELECT * FROM flows WHERE id = ? OR id LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\' "
            "ORDER BY id != ?, seq LIMIT 2",
            (flow_id, literal + "%", "%" + literal, flow_id),
        ).fetchall()
    if not found:
        raise FlowNotFound(f"{path}: no flow {flow_id!r}")
    row: sqlite3.Row = found[0]
    if len(found) > 1 and row["id"] != flow_id:  # (the whole id wins over a part of another)
        raise FlowNotFound(f"{path}: {flow_id!r} names more than one flow: give more of the id")
    return row


def timings(row: sqlite3.Row) -> dict[str, float]:
    """A flow's timing stamps (store.TIMINGS), those it has, as epoch seconds."""
    return {key: row[f"t_{key}"] for key in TIMINGS if row[f"t_{key}"] is not None}


def iso_time(t: float) -> str:
    """Epoch seconds as ISO 8601 in UTC with milliseconds: 2023-11-14T22:13:20.000Z."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def heads(stored: str | None) -> list[tuple[str, str]]:
    """A stored head (the "Name: value" lines store.py writes) as (name, value) pairs."""
    if not stored:
        return []
    pairs = []
    for line in stored.split("\r\n"):
        name, _, value = line.partition(": ")
        pairs.append((name, value))
    return pairs


def header(pairs: Sequence[tuple[str, str]], name: str) -> str:
    """The first value of header `name` (lower case) in `pairs`, or ""."""
    for key, value in pairs:
        if key.lower() == name:
            return value
    return ""


def decode_body(body: bytes, pairs: Sequence[tuple[str, str]]) -> tuple[bytes, str | None]:
    """`body` with its Content-Encoding undone, and None; or `body` as it is and why it could
    not be decoded. Only for a whole body: a cut one cannot be decoded."""
    coding = header(pairs, "content-encoding")
    if not coding:
        return body, None
    try:
        return encoding.decode(body, coding), None
    except ValueError as e:
        return body, str(e)


def as_text(body: bytes) -> str | None:
    """`body` as text if it is printable UTF-8 (line breaks and tabs allowed), else None. A
    character split at the end (where a stored body was cut) is left out."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(body) - 3 or e.reason != "unexpected end of data":
            return None
        text = body[: e.start].decode("utf-8")
    return text if all(ch.isprintable() or ch in "\r\n\t" for ch in text) else None
