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

MAX_CHARS = 256  # of program-supplied text kept in one field


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
