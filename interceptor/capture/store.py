"""The flow store: SQLite (WAL, a versioned schema, mode 0600), written by one thread.

The reactor never waits on the disk: `Writer.put` hands a finished flow's record to a bounded
queue and returns at once; a dedicated thread takes records off it and writes them in batched
transactions. When the queue is full the record is dropped and counted, never the proxy slowed.
Readers (the `interceptor flows` command, the web UI) open the same file read-only; WAL lets
them read while the proxy writes.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import operator
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .filters import compile_filter

SCHEMA_VERSION = 1

# One row per flow. Heads are text blocks of "Name: value" lines joined by CRLF (latin-1, as on
# the wire: no value holds a CR or LF); TLS details are JSON objects; timings are epoch seconds,
# one column each (`t_*`, NULL where not applicable: JSON would cost a float's repr each, for
# every flow). Bodies are stored as sent, possibly cut (`*_cut`), with the full size beside them.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    client TEXT NOT NULL,
    server TEXT,
    method TEXT,
    url TEXT,
    host TEXT,
    http_version TEXT,
    request_headers TEXT,
    request_body BLOB,
    request_size INTEGER NOT NULL DEFAULT 0,
    request_cut INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    response_headers TEXT,
    response_body BLOB,
    response_size INTEGER NOT NULL DEFAULT 0,
    response_cut INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    client_tls TEXT,
    server_tls TEXT,
    t_start REAL,
    t_tcp_start REAL,
    t_tcp_done REAL,
    t_tls_done REAL,
    t_request_end REAL,
    t_response_start REAL,
    t_end REAL,
    is_replay TEXT,
    stored_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS flows_started ON flows (started);
"""

_COLUMNS = (
    "id", "kind", "started", "ended", "client", "server", "method", "url", "host",
    "http_version", "request_headers", "request_body", "request_size", "request_cut", "status",
    "reason", "response_headers", "response_body", "response_size", "response_cut", "error",
    "client_tls", "server_tls", "t_start", "t_tcp_start", "t_tcp_done", "t_tls_done",
    "t_request_end", "t_response_start", "t_end", "is_replay", "stored_bytes",
)  # fmt: skip
# The stamps of FlowRecord.timings, each in the column named t_<key>.
TIMINGS = ("start", "tcp_start", "tcp_done", "tls_done", "request_end", "response_start", "end")
# What a row holds for None in the columns that are NULL in most flows (a plain GET has no
# request body, no error, no TLS, no replay mark, and a pooled connection no setup stamps); the
# INSERT turns it back into NULL with NULLIF(?, 0). sqlite3 adapts every None it binds (a tuple
# made, an adapter looked up and missed, an AttributeError formatted and cleared: 2,500
# instructions, with the GIL held), where an int is bound as it is: those eight Nones were a
# third of the writer's work per flow. No value of these columns is an int; only a timing stamp
# of exactly 0.0 (the epoch, never a flow's) would read back as NULL too.
NULL = 0
_MOSTLY_NULL = frozenset(
    ("request_body", "error", "client_tls", "server_tls", "t_tcp_start", "t_tcp_done",
     "t_tls_done", "is_replay")
)  # fmt: skip
_VALUES = "(" + ", ".join("NULLIF(?, 0)" if c in _MOSTLY_NULL else "?" for c in _COLUMNS) + ")"
# Rows per INSERT statement: sqlite3 lets go of the GIL around every statement it runs, and
# each time the reactor takes it back; one statement per row made the two threads trade the
# GIL for every flow. (32 columns: 32 rows stay far below sqlite's 32766 parameters.) What a
# batch has past its 32s goes in 16, 8, 4, 2 and 1 rows: six statements in all, each parsed
# once (one of a thousand parameters costs as much to prepare as 10 rows to write), and at
# most five more per batch.
_ROWS_AT_ONCE = 32


@functools.cache
def _insert(rows: int) -> str:
    """The INSERT of `rows` rows."""
    values = ", ".join(itertools.repeat(_VALUES, rows))
    return f"INSERT OR REPLACE INTO flows ({', '.join(_COLUMNS)}) VALUES {values}"


def _chunks(count: int) -> Iterator[int]:
    """The statement sizes `count` rows are written in: 32s, then the binary rest."""
    yield from itertools.repeat(_ROWS_AT_ONCE, count // _ROWS_AT_ONCE)
    size = _ROWS_AT_ONCE // 2
    while size:
        if count & size:
            yield size
        size //= 2


# A bytes value sqlite3 adapts too, as it does None (a body per flow); with an adapter
# registered it finds one at once instead of failing to look one up. (Process-wide, and
# the identity: a blob is bound as it always was.)
sqlite3.register_adapter(bytes, bytes.__bytes__)


class StoreError(Exception):
    """The store cannot be opened or is not ours; the message is one line naming the file."""


@dataclass(slots=True)
class FlowRecord:
    """What is stored of one flow (made in the reactor thread, written in the writer's)."""

    id: str
    kind: str  # "http" (plain), "intercepted" (inside a CONNECT), "passthrough", "connect"
    started: float
    ended: float
    client: str
    server: str | None = None
    method: str | None = None
    url: str | None = None
    host: str | None = None
    http_version: str | None = None
    # A head as its "Name: value" block (what the capture makes), or as pairs.
    request_headers: bytes | Sequence[tuple[str, str]] = ()
    request_body: bytes | None = None
    request_size: int = 0
    request_cut: bool = False
    status: int = 0
    reason: str | None = None
    response_headers: bytes | Sequence[tuple[str, str]] = ()
    response_body: bytes | None = None
    response_size: int = 0
    response_cut: bool = False
    error: str | None = None
    client_tls: Mapping[str, Any] | None = None
    server_tls: Mapping[str, Any] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    is_replay: str | None = None

    @property
    def body_bytes(self) -> int:
        """The bytes of body this record carries."""
        return len(self.request_body or b"") + len(self.response_body or b"")

    def row(self) -> tuple[Any, ...]:
        """The values for the INSERT, in _COLUMNS' order (NULL for None where _MOSTLY_NULL)."""
        stored = self.body_bytes
        t = self.timings.get
        return (
            self.id, self.kind, self.started, self.ended, self.client, self.server, self.method,
            self.url, self.host, self.http_version, _head(self.request_headers),
            _null(self.request_body), self.request_size, int(self.request_cut), self.status,
            self.reason, _head(self.response_headers), self.response_body,
            self.response_size, int(self.response_cut), _null(self.error),
            _null(_json(self.client_tls)), _null(_json(self.server_tls)), t("start"),
            t("tcp_start", NULL), t("tcp_done", NULL), t("tls_done", NULL), t("request_end"),
            t("response_start"), t("end"), _null(self.is_replay), stored,
        )  # fmt: skip


def _null(value: object) -> object:
    return NULL if value is None else value


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _json(value: object) -> str | None:
    return None if value is None else _encode(value)


def _head(value: bytes | Sequence[tuple[str, str]]) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1") if value else None
    return "\r\n".join(f"{name}: {text}" for name, text in value) if value else None


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """Open the store at `path` (created, mode 0600, unless `readonly`), schema checked."""
    if readonly:
        if not os.path.exists(path):
            raise StoreError(f"{path}: no such store")
        uri = "file:" + os.path.abspath(path) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: {e}") from None
    else:
        try:
            # Decrypted traffic: nobody but us may read it, from the first byte on.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
            db = sqlite3.connect(path, check_same_thread=False)
            # Pages of 16 KiB (set before the first table, kept for the file's life): a body is
            # a chain of overflow pages, each its own WAL frame with its own checksum, 25 of
            # them for 100 KiB in 4 KiB pages; in 64 KiB pages every small commit rewrites a
            # 64 KiB last page (3% more instructions per 1 KiB flow). 16 KiB does both well.
            db.execute("PRAGMA page_size=16384")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints every 4 MiB of WAL, as sqlite's default is for 4 KiB pages: counted
            # in larger pages, its 1000 would be a long stall copying 16 MiB back at once.
            db.execute("PRAGMA wal_autocheckpoint=256")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.commit()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error:
        db.close()
        raise StoreError(f"{path}: not an interceptor flow store") from None
    if found is None or found[0] != str(SCHEMA_VERSION):
        db.close()
        version = found[0] if found else "none"
        raise StoreError(
            f"{path}: schema version {version}, this interceptor reads {SCHEMA_VERSION}"
        )
    return db


class Writer:
    """The writer thread and its bounded queue.

    `put` never blocks: a full queue drops the record (`dropped` counts them). Full means
    `queue_size` records, or `queue_bytes` of their bodies: records carry bodies, so a count
    alone would not bound the memory a slow disk can hold. The thread wakes every `interval`
    seconds, or as soon as a quarter of the queue is used, and writes what accumulated in one
    transaction: waking for each record would cost a commit per flow, and the thread would
    take the GIL from the reactor at every one. A commit costs about as much as writing 5
    flows (the WAL frames of every page it touched, each checksummed whole): the default
    half a second makes that a few percent of the writer's work even at 100 flows a second,
    and still shows a flow to readers within a second of its end. A quarter, not half: the
    three quarters left are what a stall (a checkpoint's fsync on a busy disk) may fill
    before flows are dropped. Past `max_bytes` of stored bodies the oldest flows are pruned.
    """

    def __init__(
        self,
        path: str,
        queue_size: int = 1000,
        queue_bytes: int = 64 << 20,
        interval: float = 0.5,
        max_bytes: int = 1 << 30,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.db = connect(path)  # in this thread: a bad path fails start-up with one line
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.interval = interval
        self.max_bytes = max_bytes
        self.on_error = on_error or (lambda text: None)
        # Both threads change these: under _lock. Body bytes count until they are written.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._queued = 0
        self._closing = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._stored = self._stored_bytes()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def put(self, record: FlowRecord) -> bool:
        """Queue a record for writing; False (and counted) if the queue is full."""
        return self.put_row(record.row())

    def put_row(self, row: tuple[Any, ...]) -> bool:
        """Queue a row as `FlowRecord.row` makes it (its last value the body bytes it holds);
        False (and counted) if the queue is full.

        The row is made in the caller's thread: the writer thread then runs as little Python
        as it can, so it seldom holds the GIL the reactor wants."""
        size = row[-1]
        with self._lock:
            pending = len(self._pending)
            queued = self._queued
            if pending >= self.queue_size or queued + size > self.queue_bytes:
                self.dropped += 1
                return False
            self._pending.append(row)
            self._queued = queued + size
        # The writer is woken as a quarter of the queue fills (in rows or in bytes), not at
        # every put past it: an Event.set() is a lock and a notify, and the writer takes all
        # that is queued anyway (and, past a write, looks again: _run).
        rows_due = pending * 4 < self.queue_size <= (pending + 1) * 4
        if rows_due or queued * 4 < self.queue_bytes <= (queued + size) * 4:
            self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then stop the thread and close the file."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _stored_bytes(self) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(stored_bytes), 0) FROM flows").fetchone()
        return int(row[0])

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                with self._lock:  # (a swap: the reactor waits on this lock)
                    pending, self._pending = self._pending, deque()
                    closing = self._closing
                if pending:
                    self._write(list(pending))
                if closing:
                    return
                with self._lock:  # a quarter full again while it wrote: on at once
                    behind = (
                        len(self._pending) * 4 >= self.queue_size
                        or self._queued * 4 >= self.queue_bytes
                    )
                if behind:
                    self._wake.set()
        finally:
            self.db.close()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        size = sum(map(operator.itemgetter(-1), rows))  # (stored_bytes: a row's body bytes)
        try:
            with self.db:
                i = 0
                for n in _chunks(len(rows)):
                    # One flat list of the statement's values, the rows added to it in C
                    # (list += tuple copies references); a chain iterator took 7,000
                    # instructions per flow, with the GIL held.
                    values: list[Any] = functools.reduce(operator.iconcat, rows[i : i + n], [])
                    self.db.execute(_insert(n), values)
                    i += n
            self.written += len(rows)
            self._stored += size
            if self._stored > self.max_bytes:
                self._prune()
        except sqlite3.Error as e:
            # A full disk or a broken file costs the records, never the proxy.
            self.failed += len(rows)
            self.on_error(f"capture: writing {len(rows)} flow(s) to {self.path} failed: {e}")
        finally:
            with self._lock:
                self._queued -= size

    def _prune(self) -> None:
        # Oldest first, until a tenth under the limit: pruning on every write past it would
        # turn each batch into a delete.
        target = self.max_bytes * 9 // 10
        with self.db:
            cursor = self.db.execute("SELECT seq, stored_bytes FROM flows ORDER BY seq")
            cut_to = None
            for seq, size in cursor:
                if self._stored <= target:
                    break
                self._stored -= size
                cut_to = seq
            if cut_to is not None:
                self.db.execute("DELETE FROM flows WHERE seq <= ?", (cut_to,))


def read_flows(
    db: sqlite3.Connection, limit: int | None = None, expression: str = ""
) -> Iterator[sqlite3.Row]:
    """Flows matching the filter `expression` (see filters.py), oldest `started` first (rows by
    column name), read from the store as they are iterated. FilterError at once, before any row,
    for an expression that does not compile: a caller may have begun its output by the first."""
    compiled = compile_filter(expression)
    db.row_factory = sqlite3.Row
    # `seq` breaks ties: flows started in the same instant come in the order they were stored.
    query = f"SELECT * FROM flows WHERE {compiled.where} ORDER BY started, seq"
    params = compiled.params
    if limit is not None:
        query += " LIMIT ?"
        params = (*params, limit)
    return db.execute(query, params)


def merge_flows(
    dbs: Sequence[sqlite3.Connection], limit: int | None = None, expression: str = ""
) -> Generator[sqlite3.Row, None, None]:
    """`read_flows` over several stores (one per proxy replica), merged by `started`.

    One cursor per store and one row from each held at a time, so memory does not grow with
    the number of flows. FilterError at once, as `read_flows`. Close the generator before the
    stores: closing it closes their cursors."""
    cursors = [read_flows(db, limit, expression) for db in dbs]
    return _merged(cursors, limit)


def _merged(
    cursors: list[Iterator[sqlite3.Row]], limit: int | None
) -> Generator[sqlite3.Row, None, None]:
    yield from itertools.islice(heapq.merge(*cursors, key=lambda row: row["started"]), limit)
