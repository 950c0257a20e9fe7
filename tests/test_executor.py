"""One executor: no code but proxy/leg.py closes, aborts, truncates or half-closes a connection.

The lifecycle table decides what every ending does to both legs and `leg.end` carries it out;
a close decided anywhere else would bypass the table. This walks the syntax tree of every module
of the package (not a grep: comments and strings in prose do not count, calls spelled through
getattr do) and fails on each such call outside the executor.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "interceptor"
EXECUTOR = PACKAGE / "proxy" / "leg.py"

# Twisted's transport methods that end a connection or its write half.
TRANSPORT_ENDINGS = {"abortConnection", "loseConnection", "loseWriteConnection"}
# The leg's own mechanics (private to the executor module).
LEG_MECHANICS = {"_abort", "_close", "_truncate", "_half_close"}
# Names that would be a leg's close or abort if one were added back: checked in the data path
# and the service, where every object with such a method is a connection.
DATA_PATH_NAMES = {"close", "abort", "truncate", "half_close"}


def _is_data_path(path: Path) -> bool:
    return path.parent == PACKAGE / "proxy" or path == PACKAGE / "service.py"


def stray_calls(path: Path, source: str | None = None) -> Iterator[str]:
    """Each call in `path` that ends a connection without the executor, as 'file:line: code'."""
    text = path.read_text(encoding="utf-8") if source is None else source
    forbidden = TRANSPORT_ENDINGS | LEG_MECHANICS
    if _is_data_path(path):
        forbidden |= DATA_PATH_NAMES
    for node in ast.walk(ast.parse(text, str(path))):
        name = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # getattr(transport, "abortConnection")() and friends
            name = node.value if node.value in TRANSPORT_ENDINGS | LEG_MECHANICS else None
        if name in forbidden:
            yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}"


def test_no_connection_is_ended_outside_the_executor() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert EXECUTOR in modules and len(modules) > 20  # the walk sees the real package
    found = [hit for path in modules if path != EXECUTOR for hit in stray_calls(path)]
    assert found == [], "closes or aborts outside proxy/leg.py:\n" + "\n".join(found)


def test_the_executor_itself_is_seen_ending_connections() -> None:
    # If the walk missed calls, the test above could never fail: it must see leg.py's own.
    hits = list(stray_calls(EXECUTOR))
    assert any("abortConnection()" in h for h in hits)
    assert any("loseConnection()" in h for h in hits)
    assert any("loseWriteConnection()" in h for h in hits)


def test_a_planted_stray_call_is_caught() -> None:
    session = PACKAGE / "proxy" / "session.py"
    planted = session.read_text(encoding="utf-8").replace(
        "        self.closed = True\n",
        "        self.closed = True\n        self.client.transport.abortConnection()\n",
        1,
    )
    hits = list(stray_calls(session, planted))
    assert len(hits) == 1 and hits[0].endswith("self.client.transport.abortConnection()")
    spelled = "getattr(self.client.transport, 'loseConnection')()\n"
    assert list(stray_calls(session, spelled))  # a call spelled through getattr
    assert list(stray_calls(session, "self.client.close()\n"))  # a leg's close in the data path
    assert list(stray_calls(PACKAGE / "admin.py", "leg._abort('x')\n"))  # mechanics anywhere
