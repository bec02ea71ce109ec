"""printable(): program-supplied text made safe to record and print."""

from __future__ import annotations

import pytest

from stockade._text import printable


@pytest.mark.parametrize(
    "text, shown",
    [
        ("pypi.org", "pypi.org"),
        ("a b\\c 'q'", "a b\\c 'q'"),  # printable ASCII stays as it is
        ("nul\x00", "nul\\x00"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("line\r\nforged", "line\\x0d\\x0aforged"),
        ("del\x7f", "del\\x7f"),
        ("bücher", "b\\xfccher"),
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
        ("emoji\U0001f600", "emoji\\U0001f600"),
        (b"raw\xff\xfe".decode("utf-8", "surrogateescape"), "raw\\xff\\xfe"),
    ],
)
def test_non_printables_are_escaped(text, shown):
    assert printable(text) == shown
    assert printable(text).isascii() and printable(text).isprintable()


def test_long_text_is_cut_and_counted():
    assert printable("x" * 300, limit=256) == "x" * 256 + "...(44 more)"
    assert printable("\x00" * 3, limit=2) == "\\x00\\x00...(1 more)"


def test_quoted_values_are_bounded_while_they_are_made():
    from stockade._text import quoted

    assert quoted("mode") == "'mode'"
    assert len(quoted("x" * 10**7)) <= 220
    assert len(quoted([[list(range(10**5))] * 10**3] * 10**3)) <= 220
