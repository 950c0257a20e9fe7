"""The `interceptor` command: read the flow stores the proxy writes (`[capture] store`).

    interceptor flows list STORE [STORE...] [--filter EXPR] [--limit N]
    interceptor flows show STORE ID
    interceptor flows har STORE [STORE...] [--filter EXPR] [-o FILE]
    interceptor flows replay STORE ID [--proxy URL] [--cacert FILE] [--timeout SECONDS]

Stores are opened read-only, so the proxy may keep writing meanwhile. Several stores (one per
replica of a fleet) are merged by the time their flows started. Errors are one line on stderr
with exit status 2 (a missing store, an unknown id), as for the proxy's own config; a replay
whose connection fails exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from collections.abc import Sequence
from typing import TextIO

from .capture.filters import FilterError
from .capture.har import write_har, write_har_file
from .capture.replay import ReplayError, replay, request_of
from .capture.rows import FlowNotFound, find_flow, heads, iso_time, open_stores
from .capture.store import StoreError, merge_flows
from .capture.views import body_view


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
        elif args.command == "flows" and args.action == "har":
            _har(args.store, args.filter, args.output, out)
        elif args.command == "flows" and args.action == "replay":
            _replay(args.store, args.id, args.proxy, args.cacert, args.timeout, out)
        else:
            parser.print_help(sys.stderr)
            return 2
    except (StoreError, FlowNotFound, FilterError) as e:
        sys.stderr.write(f"interceptor: {e}\n")
        return 2
    except ReplayError as e:
        sys.stderr.write(f"interceptor: {e}\n")
        return e.status
    except BrokenPipeError:
        return 0  # `interceptor flows list | head`: the reader has what it wanted
    except sqlite3.Error as e:
        sys.stderr.write(f"interceptor: reading the store failed: {e}\n")
        return 2
    except OSError as e:  # writing `-o FILE`
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"interceptor: {where}{e.strerror or e}\n")
        return 2
    return 0


_FILTER_HELP = (
    "e.g. 'host:*.example.com method:POST status:5xx url:/api/ !error' "
    "(all terms must hold; see docs/capture.md)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interceptor", description="Read the flow stores the proxy writes ([capture] store)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flows = commands.add_parser("flows", help="read flow stores ([capture] store)")
    actions = flows.add_subparsers(dest="action", required=True)
    stores = "the stores' paths (one per replica: merged by time)"
    listing = actions.add_parser("list", help="one line a flow, oldest first")
    listing.add_argument("store", nargs="+", help=stores)
    listing.add_argument("--limit", type=int, default=None, help="at most N flows")
    listing.add_argument("--filter", default="", help=_FILTER_HELP)
    show = actions.add_parser("show", help="one flow's heads and bodies")
    show.add_argument("store", help="the store's path")
    show.add_argument(
        "id", help="the flow id (as `list` prints it; a unique start or end of it will do)"
    )
    har = actions.add_parser("har", help="export flows as a HAR 1.2 log, oldest first")
    har.add_argument("store", nargs="+", help=stores)
    har.add_argument("--filter", default="", help=_FILTER_HELP)
    har.add_argument(
        "-o", "--output", default=None, help="write to FILE (mode 0600) instead of stdout"
    )
    again = actions.add_parser("replay", help="send a captured request again")
    again.add_argument("store", help="the store's path")
    again.add_argument("id", help="the flow id (a unique start or end of it will do)")
    again.add_argument("--proxy", default=None, help="through this proxy: http://host:port")
    again.add_argument(
        "--cacert", default=None, help="verify TLS with this CA file (default: the system's)"
    )
    again.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return parser


def _list(paths: Sequence[str], limit: int | None, expression: str, out: TextIO) -> None:
    with open_stores(paths) as dbs, contextlib.closing(merge_flows(dbs, limit, expression)) as rows:
        for row in rows:
            duration = row["ended"] - row["started"]
            url = row["url"] or "-"
            method = row["method"] or "-"
            out.write(
                f"{row['id']} {iso_time(row['started'])} {row['client']} {method} {url} "
                f"{row['status']} {row['response_size']} {duration:.4f}s\n"
            )


def _har(paths: Sequence[str], expression: str, output: str | None, out: TextIO) -> None:
    # A bad filter fails in merge_flows, before any output.
    with open_stores(paths) as dbs, contextlib.closing(merge_flows(dbs, None, expression)) as rows:
        if output is None:
            write_har(rows, out)
        else:
            write_har_file(rows, output)


def _replay(
    path: str, flow_id: str, proxy: str | None, cacert: str | None, timeout: float, out: TextIO
) -> None:
    outcome = replay(request_of(find_flow(path, flow_id)), proxy, cacert, timeout)
    out.write(f"{outcome.status_line}\n")
    out.write(
        f"{outcome.headers} headers, {outcome.body_bytes} body bytes, {outcome.elapsed_ms:.1f} ms\n"
    )


def _show(path: str, flow_id: str, out: TextIO) -> None:
    row = find_flow(path, flow_id)
    out.write(f"flow {row['id']} ({row['kind']}) {iso_time(row['started'])}\n")
    out.write(f"client {row['client']}  server {row['server'] or '-'}\n")
    if row["error"]:
        out.write(f"error: {row['error']}\n")
    out.write(f"\n{row['method'] or '-'} {row['url'] or '-'} {row['http_version'] or ''}\n")
    request_heads = heads(row["request_headers"])
    _heads(request_heads, out)
    _body(row["request_body"], row["request_size"], row["request_cut"], request_heads, out)
    out.write(f"\n{row['status']} {row['reason'] or ''}\n")
    response_heads = heads(row["response_headers"])
    _heads(response_heads, out)
    _body(row["response_body"], row["response_size"], row["response_cut"], response_heads, out)


def _heads(pairs: Sequence[tuple[str, str]], out: TextIO) -> None:
    for name, value in pairs:
        out.write(f"{name}: {value}\n")


def _body(
    body: bytes | None, size: int, cut: int, pairs: Sequence[tuple[str, str]], out: TextIO
) -> None:
    """The stored body as capture.views shows it: decoded per Content-Encoding, JSON
    pretty-printed, text as text, anything else as a hex summary."""
    view = body_view(body, size, bool(cut), pairs)
    note = f"({view['note']})" if view["note"] else ""
    if view["kind"] == "none":
        out.write(f"\n[{size} bytes, not stored]\n" if size else "")
    elif view["kind"] in ("json", "text"):
        out.write(f"\n{view['text']}\n" + (f"{note}\n" if note else ""))
    else:
        first = " ".join(view["hex"].split()[:32])
        kind = "binary" if view["kind"] == "binary" else view["mime"]
        out.write(f"\n[{view['stored']} bytes of {kind}{' ' + note if note else ''}] {first}")
        out.write(" ...\n" if view["stored"] > 32 else "\n")


if __name__ == "__main__":
    sys.exit(main())
