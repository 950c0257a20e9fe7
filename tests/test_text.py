"""Tests for interceptor.text.one_line, shared by config errors and TLS failure descriptions."""

from __future__ import annotations

import pytest

from interceptor.text import one_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("first line\n  second line\r\nthird", "first line second line third"),
        ("  padded \n", "padded"),
        ("a\n\n\nb", "a b"),
        # Every line boundary str.splitlines() knows, not only \r and \n.
        ("a\vb\fc\x1cd\x1de\x1ef\x85g\u2028h\u2029i", "a b c d e f g h i"),
        # Whitespace inside a line is kept: messages quote user values.
        ("got 'a  b'\tthere", "got 'a  b'\tthere"),
        ("", ""),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    result = one_line(text)
    assert result == expected
    assert len(result.splitlines()) <= 1


def test_one_line_limit() -> None:
    assert one_line("abcdef", limit=6) == "abcdef"
    assert one_line("abcdefg", limit=6) == "abc..."
    assert one_line("x\n" * 500, limit=300) == ("x " * 150)[:297] + "..."
