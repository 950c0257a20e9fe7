"""The `interceptor` command: read the flow store the proxy writes (`[capture] store`).

    interceptor flows list STORE [--filter EXPR] [--limit N]
    interceptor flows show STORE ID

The store is opened read-only, so the proxy may keep writing meanwhile. Errors are one line on
stderr with exit status 2 (a missing store, an unknown id), as for the proxy's own config.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from . import encoding
from .capture.filters import FilterError
from .capture.store import StoreError, connect, read_flows


class CommandError(Exception):
    """A one-line failure for the user."""


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; returns the exit status."""
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "flows" and args.action == "list":
            _list(args.store, args.limit, args.filter, out)
        elif args.command == "flows" and args.action == "show":
            _show(args.store, args.id, out)
        else:
            parser.print_help(sys.stderr)
            return 2
    except (StoreError, CommandError, FilterError) as e:
        sys.stderr.write(f"interceptor: {e}\n")
        return 2
    except BrokenPipeError:
        return 0  # `interceptor flows list | head`: the reader has what it wanted
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interceptor", description="Read the flow store the proxy writes ([capture] store)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flows = commands.add_parser("flows", help="read a flow store ([capture] store)")
    actions = flows.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line a flow, oldest first")
    listing.add_argument("store", help="the store's path")
    listing.add_argument("--limit", type=int, default=None, help="at most N flows")
    listing.add_argument(
        "--filter",
        default="",
        help="e.g. 'host:*.example.com method:POST status:5xx url:/api/ !error' "
        "(all terms must hold; see the README's Capture section)",
    )
    show = actions.add_parser("show", help="one flow's heads and bodies")
    show.add_argument("store", help="the store's path")
    show.add_argument("id", help="the flow id (as `list` prints it; a unique prefix will do)")
    return parser


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _list(path: str, limit: int | None, expression: str, out: TextIO) -> None:
    db = connect(path, readonly=True)
    try:
        for row in read_flows(db, limit, expression):
            duration = row["ended"] - row["started"]
            url = row["url"] or "-"
            method = row["method"] or "-"
            out.write(
                f"{row['id']} {_when(row['started'])} {row['client']} {method} {url} "
                f"{row['status']} {row['response_size']} {duration:.4f}s\n"
            )
    finally:
        db.close()


def _show(path: str, flow_id: str, out: TextIO) -> None:
    db = connect(path, readonly=True)
    try:
        db.row_factory = sqlite3.Row
        found = db.execute(
            "SELECT * FROM flows WHERE id LIKE ? ESCAPE '\\' ORDER BY seq LIMIT 2",
            (flow_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
        ).fetchall()
    finally:
        db.close()
    if not found:
        raise CommandError(f"{path}: no flow {flow_id!r}")
    if len(found) > 1:
        raise CommandError(f"{path}: {flow_id!r} names more than one flow: give more of the id")
    row = found[0]
    out.write(f"flow {row['id']} ({row['kind']}) {_when(row['started'])}\n")
    out.write(f"client {row['client']}  server {row['server'] or '-'}\n")
    if row["error"]:
        out.write(f"error: {row['error']}\n")
    out.write(f"\n{row['method'] or '-'} {row['url'] or '-'} {row['http_version'] or ''}\n")
    _heads(row["request_headers"], out)
    _body(row["request_body"], row["request_size"], row["request_cut"], row["request_headers"], out)
    out.write(f"\n{row['status']} {row['reason'] or ''}\n")
    _heads(row["response_headers"], out)
    _body(
        row["response_body"],
        row["response_size"],
        row["response_cut"],
        row["response_headers"],
        out,
    )


def _heads(stored: str | None, out: TextIO) -> None:
    for name, value in json.loads(stored) if stored else []:
        out.write(f"{name}: {value}\n")


def _header(stored: str | None, name: str) -> str:
    for key, value in json.loads(stored) if stored else []:
        if key.lower() == name:
            return str(value)
    return ""


def _body(body: bytes | None, size: int, cut: int, heads: str | None, out: TextIO) -> None:
    """The stored body: decoded per Content-Encoding, JSON pretty-printed, text as text,
    anything else as a hex summary."""
    if body is None:
        out.write(f"\n[{size} bytes, not stored]\n" if size else "")
        return
    note = f" (stored cut at {len(body)} of {size} bytes)" if cut else ""
    coding = _header(heads, "content-encoding")
    if coding and not cut:
        try:
            body = encoding.decode(body, coding)
        except ValueError as e:
            note += f" (not decoded: {e})"
    kind = _header(heads, "content-type").lower()
    if "json" in kind:
        try:
            text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
            out.write(f"\n{text}\n{note.strip()}\n" if note else f"\n{text}\n")
            return
        except ValueError:
            pass
    try:
        text = body.decode("utf-8")
        printable = all(ch.isprintable() or ch in "\r\n\t" for ch in text)
    except UnicodeDecodeError:
        printable = False
    if printable:
        out.write(f"\n{text}\n" + (f"{note.strip()}\n" if note else ""))
    else:
        out.write(f"\n[{len(body)} bytes of binary{note}] {body[:32].hex(' ')}")
        out.write(" ...\n" if len(body) > 32 else "\n")


if __name__ == "__main__":
    sys.exit(main())
