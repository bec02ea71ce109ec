"""Program-supplied text made safe to record and print.

A sandboxed program chooses some of the strings that end up in a result,
the execution log and the CLI's summary line (the host names it asks the
network proxy for, for one). Raw, they could carry a NUL, a newline that
forges a log line, or a terminal escape sequence that rewrites what the
caller sees. ``printable`` is the one function that turns such text into
printable ASCII; the places that record program-supplied strings call it
before anything else sees them.
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_CHARS = 256  # of program-supplied text kept in one field
QUOTE_CHARS = 200  # of a value quoted in an error message


def printable(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` with every character outside printable ASCII escaped.

    Control characters, DEL and non-ASCII characters become ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``; a byte that was not valid UTF-8, decoded
    with ``surrogateescape``, becomes ``\\xNN`` of that byte. Printable ASCII
    (backslash included) is kept as it is, so text that is already safe,
    such as a ``repr()``, reads the same.

    Args:
        text: the program-supplied string.
        limit: characters of ``text`` kept; the rest is cut and counted.

    Returns:
        The escaped text, at most ``limit`` input characters of it.
    """
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if text.isascii() and text.isprintable():
        out = text
    else:
        out = "".join(_escape(ch) for ch in text)
    if cut > 0:
        out += f"...({cut} more)"
    return out


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0x20 <= code < 0x7F:
        return ch
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _repr_maker(limit: int) -> reprlib.Repr:
    maker = reprlib.Repr()
    maker.maxstring = maker.maxother = maker.maxlong = limit
    maker.maxlevel = 3
    maker.maxlist = maker.maxtuple = maker.maxdict = maker.maxset = 8
    return maker


def quoted(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, never much longer than ``limit``.

    A value from a policy file can be anything (a string of megabytes, a
    deeply nested list): strings, numbers and containers are shortened as
    they are turned into text (``reprlib``), not after, and the result is
    cut at ``limit`` characters, counting what was left out.
    """
    text = _repr_maker(limit).repr(value)
    if len(text) > limit:
        text = text[:limit] + f"...({len(text) - limit} more)"
    return text


def capped(message: str, limit: int) -> str:
    """``message`` cut at ``limit`` characters, counting what was left out."""
    if len(message) <= limit:
        return message
    return message[:limit] + f"...({len(message) - limit} more characters)"
