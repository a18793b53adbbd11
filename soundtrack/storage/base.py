"""What every storage backend shares: the published-file record, the protocol, index parsing."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from soundtrack.errors import InputError, StorageError

INDEX_NAME = "soundtrack.lock.json"
REVIEW_NAME = "review.html"  # the review page, beside the lock (soundtrack/review.py)
RENDERS_FOLDER = ".renders"  # raw renders handed from render-pool machines to the build
# S3 and SigV4 cap presigned URLs at seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class PublishedFile:
    """One file as it now lies in storage, verified against its sha256."""

    key: str  # object key or path relative to the storage root
    uri: str  # s3://bucket/key or file:///abs/path
    sha256: str  # hex
    bytes: int
    uploaded: bool  # False when an identical object was already there


@dataclass(frozen=True)
class Garbage:
    """What gc found under one soundtrack that its lock does not reference."""

    soundtrack: str
    journal: str  # URI of the soundtrack's write journal, whether or not it exists
    journaled: bool  # False: built before the journal existed, so nothing is provably ours
    # Files the journal records writing, unchanged since (same sha256): safe to delete.
    ours: list[str] = field(default_factory=list)
    # Everything else: other tools' files, files changed since we wrote them, other soundtracks.
    # A folder (ending in '/') stands for all of it when nothing inside is ours or referenced.
    kept: list[str] = field(default_factory=list)


class Storage(Protocol):
    """A place assets are published to: a local folder or an S3 bucket/prefix."""

    url: str  # as given, never containing credentials

    def asset_key(
        self,
        soundtrack: str,
        track_id: str,
        spec_hash: str,
        ext: str,
        *,
        sha256: str,
        stem: str | None = None,
    ) -> str:
        """Where one file of a track (or of one of its stems) with content `sha256` goes (see
        docs/storage.md for each layout)."""

    def render_key(self, generation_key: str, ext: str) -> str:
        """Where a raw render handed between machines goes (render pools): outside any
        soundtrack's folder, under a hidden `.renders/`."""

    def uri(self, key: str) -> str:
        """Where `key` is: s3://bucket/key, or the file:// URI of its file."""

    def has_asset(self, key: str, sha256: str) -> bool:
        """True when the object exists and its checksum matches `sha256`."""

    def put_asset(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> PublishedFile:
        """Publish `path` under `key` and verify it; identical existing content is not re-sent."""

    def fetch(self, key: str, dest: Path, *, sha256: str) -> None:
        """Download `key` to `dest` (atomically), verified against `sha256`."""

    def read_index(self, soundtrack: str) -> bytes | None:
        """The soundtrack's lock file, or None when none was published yet."""

    def read(self, key: str) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""

    def write_index(self, soundtrack: str, data: bytes) -> str:
        """Replace the soundtrack's lock file in one step; returns its URI."""

    def review_key(self, soundtrack: str) -> str:
        """Where the soundtrack's review page lies: beside its lock."""

    def write_review(self, soundtrack: str, data: bytes) -> str:
        """Replace the soundtrack's review page in one step, after its lock; returns its URI."""

    def presign(self, key: str, expires_s: int = MAX_PRESIGN_EXPIRY_S) -> str:
        """A link that fetches `key` without credentials (a file:// URI for a folder)."""

    def soundtracks(self) -> list[str]:
        """Names of the soundtracks that have an index here."""

    def has_soundtrack(self, soundtrack: str) -> bool:
        """Whether anything of the soundtrack is here: its lock, or (in a folder) its folder,
        where a first publish a stopped build left may wait to be finished."""

    def unreferenced(self, soundtrack: str) -> Garbage:
        """Keys under the soundtrack that its lock does not reference, split into those the
        write journal proves ours (deletable) and the rest (kept)."""

    def delete(self, keys: Sequence[str]) -> None:
        """Remove these keys; missing ones are fine."""

    def check_access(self, soundtrack: str) -> None:
        """Fail fast, before any generation, when publishing `soundtrack` cannot work."""

    def hold(
        self, soundtrack: str, *, wait_s: float, on_wait: Callable[[str], None]
    ) -> AbstractContextManager[None]:
        """One build at a time per soundtrack here: waits up to `wait_s` (saying so once through
        `on_wait`) for another build to finish, then raises StorageBusy."""

    def repair(self, soundtrack: str) -> list[str]:
        """Finish or undo a publish a stopped build left half done; what was done, in lines."""

    def discard(self, soundtrack: str) -> None:
        """Drop what this build published but will not name in a lock (it ends without one)."""


def is_name(value: str) -> bool:
    """Whether `value` is safe as one path segment of a key (a soundtrack's or track's name)."""
    return _SAFE_NAME.fullmatch(value) is not None


def check_name(kind: str, value: str) -> None:
    """Raise InputError unless `value` is safe as one path segment of a key."""
    if not is_name(value):
        raise InputError(
            f"{kind} {value!r} cannot be part of a storage key: use letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )


class Turns:
    """A build commits its lock on a task's thread; a stopped build ends on its main thread,
    then lets go of the storage (where another build may take over). Per place (a folder, an
    S3 lock), one of them at a time, and a build that ended commits nothing more."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._ended: set[Hashable] = set()

    def _lock(self, place: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(place, threading.Lock())

    @contextmanager
    def committing(self, place: Hashable, where: str) -> Iterator[None]:
        """`place`'s turn to commit; StorageError naming `where` when its build has ended."""
        with self._lock(place):
            if place in self._ended:
                raise StorageError(
                    f"{where}: the build was stopped before its lock was written; nothing of it "
                    "is published",
                    transient=False,
                )
            yield

    def end(self, place: Hashable, cleanup: Callable[[], None] = lambda: None) -> None:
        """End the build at `place`, then `cleanup` in its turn, once a commit under way is
        done; none starts after."""
        with self._lock(place):
            self._ended.add(place)
            cleanup()

    def begin(self, place: Hashable) -> None:
        """A new build holds `place`."""
        with self._lock(place):
            self._ended.discard(place)


BUILD_TURNS = Turns()


def check_key(key: str, root: str) -> list[str]:
    """The segments of `key`; InputError unless it is a relative path inside `root`."""
    if not is_relative_key(key):
        raise InputError(f"storage key {key!r} must be a relative path inside {root}")
    return key.split("/")


def is_relative_key(key: str) -> bool:
    """True for a relative path (no empty, '.' or '..' segment, no leading '/', backslash or
    NUL): no such key reaches outside the folder it is taken in."""
    segments = key.split("/")
    return not ("\\" in key or "\x00" in key or any(s in ("", ".", "..") for s in segments))


def refuse_outside(
    referenced: Iterable[str], folder: str, lock: str, uri: Callable[[str], str]
) -> None:
    """InputError when the lock at `lock` names keys outside `folder`, its soundtrack's: one
    copied from other storage or another soundtrack (or edited so) cannot tell what here is
    in use, and gc would read this soundtrack's files as garbage."""
    elsewhere = sorted(key for key in referenced if not key.startswith(folder))
    if elsewhere:
        raise InputError(
            f"the lock {lock} names {uri(elsewhere[0])}"
            + (f" and {len(elsewhere) - 1} more" if len(elsewhere) > 1 else "")
            + f", outside {uri(folder)}: it was written for other storage or another soundtrack "
            "(a copied prefix or folder?), so it cannot tell what here is in use; gc deletes "
            "nothing"
        )


def soundtrack_folder(storage: Storage, soundtrack: str) -> str:
    """The key prefix of `soundtrack`'s folder, where its lock, page and files lie (ending
    in '/')."""
    return storage.review_key(soundtrack).rpartition("/")[0] + "/"


def soundtrack_of(key: str) -> str | None:
    """The soundtrack whose folder holds `key` (relative to the storage root), or None for a
    key outside any soundtrack folder (render handoffs under `.renders/`)."""
    name, sep, rest = key.partition("/")
    return name if sep and rest and is_name(name) else None


def folded(folder: str, kept: Iterable[str], in_use: Iterable[str]) -> list[str]:
    """`kept` keys under `folder` (which ends in '/'), each sub-folder that holds nothing in
    `in_use` shown once as 'folder/sub/', so a game's `.git` is one line, not thousands."""
    busy: set[tuple[str, ...]] = set()
    for key in in_use:
        segments = tuple(key.removeprefix(folder).split("/"))
        busy.update(segments[:i] for i in range(1, len(segments)))
    shown: set[str] = set()
    for key in kept:
        parts = key.removeprefix(folder).rstrip("/").split("/")
        free = next((i for i in range(1, len(parts)) if tuple(parts[:i]) not in busy), None)
        shown.add(key if free is None else folder + "/".join(parts[:free]) + "/")
    return sorted(shown)


def check_expiry(expires_s: int) -> None:
    """Raise InputError unless a presigned link's lifetime is within S3's limits."""
    if not 1 <= expires_s <= MAX_PRESIGN_EXPIRY_S:
        raise InputError(
            f"presigned link expiry must be 1 to {MAX_PRESIGN_EXPIRY_S} s (got {expires_s})"
        )


def index_keys(data: bytes, where: str) -> set[str]:
    """The keys a lock file references: every tracks[i].files[j].key, and the keys of each
    track's sidecar and picture and of its stems' pictures."""
    return {key for entries in index_entries(data, where).values() for key in entries}


def index_entries(data: bytes, where: str) -> dict[str, dict[str, str | None]]:
    """Per track id, the keys its lock entry references (as index_keys) and each one's sha256
    (None where the lock gives none)."""
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as exc:  # a number past int's digits; deep nesting
        raise StorageError(f"index {where} is not valid JSON: {exc}", transient=False) from None
    tracks = index.get("tracks") if isinstance(index, dict) else None
    if not isinstance(tracks, list):
        raise StorageError(f"index {where} has no 'tracks' list", transient=False)
    found: dict[str, dict[str, str | None]] = {}
    for i, track in enumerate(tracks):
        files = track.get("files", []) if isinstance(track, dict) else None
        if not isinstance(files, list):
            raise StorageError(f"index {where}: tracks[{i}].files is not a list", transient=False)
        entries = found.setdefault(str(track.get("id")), {})
        for j, entry in enumerate(files):
            key = entry.get("key") if isinstance(entry, dict) else None
            if not isinstance(key, str) or not key:
                raise StorageError(
                    f"index {where}: tracks[{i}].files[{j}] has no 'key'", transient=False
                )
            entries[key] = _sha256_of(entry)
        stems = track.get("stems")
        others = [track.get("sidecar"), track.get("picture")]
        if isinstance(stems, list):
            others += [stem.get("picture") for stem in stems if isinstance(stem, dict)]
        for other in others:
            if isinstance(other, dict) and isinstance(other.get("key"), str) and other["key"]:
                entries[other["key"]] = _sha256_of(other)
        for key in entries:
            # A `..` would name another soundtrack's file as in use here, and leave this
            # one's real file unreferenced: such a lock tells nothing (the build rebuilds it).
            if not is_relative_key(key):
                raise StorageError(
                    f"index {where}: tracks[{i}] names {key!r}, not a relative path inside the "
                    "storage",
                    transient=False,
                )
    return found


def _sha256_of(entry: dict[str, Any]) -> str | None:
    sha256 = entry.get("sha256")
    return sha256 if isinstance(sha256, str) else None
