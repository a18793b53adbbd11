"""Paths as a user types them (manifest fields, flags, environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

from soundtrack.errors import InputError


def without_dotdot(path: Path) -> Path:
    """Absolute `path` with its `..` read as the system reads them (through the links up to its
    last `..`), so that messages, the lock and the logs name it without one; what follows is
    kept as written, so a link there is still seen as one."""
    path = path.absolute()
    if ".." not in path.parts:
        return path
    last = max(i for i, part in enumerate(path.parts) if part == "..")
    try:
        head = Path(*path.parts[: last + 1]).resolve()
    except RuntimeError:  # a loop of links on the way to the `..`
        raise InputError(f"{path}: a loop of symbolic links") from None
    return head.joinpath(*path.parts[last + 1 :])


def user_path(text: str) -> Path:
    """`text` as a path, with a leading `~` or `~user` expanded as a shell does: left as it is
    when that user has no home (where pathlib's expanduser raises)."""
    return Path(os.path.expanduser(text))


# What a file system takes: a name (ext4, APFS, NTFS) and a whole path (Linux PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def path_problem(text: str) -> str | None:
    """Why no file system can hold the path `text` (a NUL, a name or the path too long), or
    None; asking one about it would raise where a user expects an answer."""
    if "\x00" in text:
        return "contains a NUL byte"
    if len(text.encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(_name_length(part) > MAX_NAME_BYTES for part in Path(text).parts):
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


def _name_length(name: str) -> int:
    """A name's length as its file system counts it: UTF-16 units on Windows, bytes elsewhere."""
    if os.name == "nt":
        return len(name.encode("utf-16-le", errors="surrogatepass")) // 2
    return len(name.encode(errors="surrogateescape"))


def shown(path: Path) -> str:
    """`path` as text every encoder takes: bytes of a name that are not UTF-8 as \\xNN
    (pydantic raised on the surrogates that stand for them)."""
    return os.fsencode(path).decode(errors="backslashreplace")


def printable(text: str) -> str:
    """`text` for a terminal or a log line, its control characters written out (\\x1b, \\n): a
    file name, or a message quoting one, cannot colour, move or split what a user reads. A
    name's bytes that are not UTF-8 (surrogates in `text`) show as \\xNN."""
    return "".join(
        c
        if c.isprintable()
        else f"\\x{ord(c) - 0xDC00:02x}"
        if "\udc80" <= c <= "\udcff"
        else repr(c)[1:-1]
        for c in text
    )
