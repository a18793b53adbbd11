"""Text shown in the Prefect UI's Markdown (artifacts, the review form) as it was written."""

from __future__ import annotations

import re
from urllib.parse import quote

from soundtrack.paths import printable

# CommonMark's backslash-escapable punctuation.
_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")


def literal(text: str) -> str:
    """`text` as written, on one line: a path's or a reason's `[x](javascript:...)`, HTML or `|`
    is no markup, and a newline (which would start a block) is written out."""
    return _PUNCTUATION.sub(r"\\\g<0>", printable(text))


def destination(url: str) -> str:
    """`url` as a link's target: what would end the link or a table's cell early (parentheses,
    spaces, `|`, `<`, `>`, quotes) is percent-encoded; its own escapes stay as they are."""
    return quote(url, safe="!#$%&'*+,-./:;=?@[]^_`{}~")
