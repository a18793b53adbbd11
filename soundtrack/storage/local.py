"""A local folder as storage: stable file names, all of a build's files replaced together when
its lock is written (soundtrack/storage/staging.py), one build at a time per soundtrack."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from soundtrack.atomic import atomic_path, fsync_path
from soundtrack.errors import InputError, StorageError
from soundtrack.hashing import file_sha256, open_regular, read_regular, regular_stat
from soundtrack.storage.base import (
    INDEX_NAME,
    MAX_PRESIGN_EXPIRY_S,
    RENDERS_FOLDER,
    REVIEW_NAME,
    Garbage,
    PublishedFile,
    check_expiry,
    check_key,
    check_name,
    folded,
    index_entries,
    index_keys,
    is_name,
    refuse_outside,
    soundtrack_folder,
    soundtrack_of,
)
from soundtrack.storage.staging import CONTROL, Publishing, build_lock

_COPY_BLOCK_BYTES = 1 << 20
# Beside the lock: one JSON line {"key", "sha256"} per content this tool put at a key.
JOURNAL_NAME = "soundtrack.journal.jsonl"


class LocalStorage:
    """Assets under `root` as <soundtrack>/<track>.<ext>: the names game engines reference."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root.absolute()

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
        """<soundtrack>/<track>[.<stem>].<ext>: the spec hash and content live in the index."""
        for kind, value in (("soundtrack", soundtrack), ("track id", track_id), ("format", ext)):
            check_name(kind, value)
        if stem is not None:
            check_name("stem", stem)
            return f"{soundtrack}/{track_id}.{stem}.{ext}"
        return f"{soundtrack}/{track_id}.{ext}"

    def render_key(self, generation_key: str, ext: str) -> str:
        check_name("generation key", generation_key)
        return f"{RENDERS_FOLDER}/{generation_key}.{ext}"

    def fetch(self, key: str, dest: Path, *, sha256: str) -> None:
        path = self._path(key)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StorageError(
                f"{path} is a link out of {self.root}: only files inside it are read",
                transient=False,
            )
        try:
            found = file_sha256(path)
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None
        if found != sha256:
            raise StorageError(
                f"{path} has sha256 {found}, but {sha256} was published there: it changed since",
                transient=False,
            )
        _write_atomically(dest, path=path, sha256=sha256)

    def uri(self, key: str) -> str:
        """The file:// URI of `key`'s file."""
        return self._path(key).as_uri()

    def has_asset(self, key: str, sha256: str) -> bool:
        """True when the file exists with exactly this content."""
        path = self._path(key)
        try:
            return path.is_file() and file_sha256(path) == sha256
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None

    def put_asset(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> PublishedFile:
        """Stage a verified copy, which takes the target's place when the lock is written (a key
        outside any soundtrack, a render hand-off, is replaced at once); record it in the
        soundtrack's journal (also when identical content was already there)."""
        # A folder has no per-file headers: content type and metadata live in the index.
        del content_type, metadata
        target = self._path(key)
        soundtrack, _, name = key.partition("/")
        staged = self._publishing(soundtrack).staged(name) if soundtrack_of(key) else target
        if self.has_asset(key, sha256):
            if staged != target:
                staged.unlink(missing_ok=True)  # a copy staged by an earlier try of this build
            published = PublishedFile(key, self.uri(key), sha256, target.stat().st_size, False)
        else:
            size = _write_atomically(staged, path=path, sha256=sha256)
            published = PublishedFile(key, self.uri(key), sha256, size, True)
        self._record(key, sha256)
        return published

    def read_index(self, soundtrack: str) -> bytes | None:
        """The lock file's bytes, or None when the soundtrack was never published here."""
        check_name("soundtrack", soundtrack)
        return self.read(f"{soundtrack}/{INDEX_NAME}")

    def read(self, key: str) -> bytes | None:
        """A file's bytes, or None when it does not exist."""
        path = self._path(key)
        try:
            return read_regular(path)  # a FIFO would wait for a writer for ever
        except (FileNotFoundError, NotADirectoryError):  # the root or a folder is a file
            return None
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None

    def write_index(self, soundtrack: str, data: bytes) -> str:
        """Commit: every staged file the lock names takes its place, then the lock replaces
        <root>/<soundtrack>/soundtrack.lock.json; returns its file URI."""
        check_name("soundtrack", soundtrack)
        target = self.root / soundtrack / INDEX_NAME
        names = {key.partition("/")[2] for key in index_keys(data, str(target))}
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            retired = self._superseded(soundtrack, data)
            self._publishing(soundtrack).commit(data, names, retired)
        except OSError as exc:
            raise _error(f"cannot write {target}", exc) from None
        return target.as_uri()

    def _superseded(self, soundtrack: str, data: bytes) -> dict[str, str]:
        """Stem files (<track>.<stem>.<ext>, and their pictures) the folder's lock lists for a
        track the new lock lists too, which the new lock no longer names (the mix published
        again, its new stems rejected), while they are as published: name -> sha256. At their
        stable names they would pass for the new mix's layers. Other files the lock stops
        naming (a dropped format) are gc's; a file someone changed since is not ours."""
        previous = self.read_index(soundtrack)
        if previous is None:
            return {}
        where = str(self.root / soundtrack / INDEX_NAME)
        try:
            before = index_entries(previous, where)
        except StorageError:  # an unreadable lock proves nothing ours
            return {}
        after = index_entries(data, where)
        kept = {key for entries in after.values() for key in entries}
        superseded = {}
        for track_id, entries in before.items():
            if track_id not in after:
                continue  # a track gone from the manifest: its files are gc's to delete
            for key, sha256 in entries.items():
                folder, _, name = key.partition("/")
                stem_file = name.startswith(f"{track_id}.") and name.count(".") == 2
                if key in kept or sha256 is None or folder != soundtrack or not stem_file:
                    continue
                if self._sha256_now(key) == sha256:
                    superseded[name] = sha256
        return superseded

    def review_key(self, soundtrack: str) -> str:
        """<soundtrack>/review.html, beside the lock."""
        check_name("soundtrack", soundtrack)
        return f"{soundtrack}/{REVIEW_NAME}"

    def write_review(self, soundtrack: str, data: bytes) -> str:
        """Replace <root>/<soundtrack>/review.html by a rename; returns its file URI."""
        target = self._path(self.review_key(soundtrack))
        _write_atomically(target, data=data)
        return target.as_uri()

    def hold(
        self, soundtrack: str, *, wait_s: float, on_wait: Callable[[str], None]
    ) -> AbstractContextManager[None]:
        """The soundtrack's build lock (a locked file naming its holder); refused, before
        anything is written, when the journal builds append to is a symbolic link."""
        check_name("soundtrack", soundtrack)
        self._check_own_files(soundtrack)
        return build_lock(self.root / soundtrack, wait_s=wait_s, on_wait=on_wait)

    def _check_own_files(self, soundtrack: str) -> None:
        """Refuse a journal that is a link or a folder, or a folder where the lock goes: found
        before anything is written, not when the build publishes (or appends through it)."""
        folder = self.root / soundtrack
        for path, what in ((folder / JOURNAL_NAME, "journal"), (folder / INDEX_NAME, "lock")):
            linked = what == "journal" and path.is_symlink()  # the lock is replaced, not written
            if linked or (path.is_dir() and not path.is_symlink()):
                kind = "a symbolic link" if linked else "a folder"
                raise InputError(
                    f"{path} is {kind}, not the {what} this tool writes: remove it to build here"
                )

    def repair(self, soundtrack: str) -> list[str]:
        """Finish or undo a publish a stopped build left half done; what was done, in lines."""
        try:
            return self._publishing(soundtrack).repair()
        except OSError as exc:
            raise _error(f"cannot repair {self.root / soundtrack}", exc) from None

    def discard(self, soundtrack: str) -> None:
        """Drop what a build staged and will not commit."""
        self._publishing(soundtrack).discard()

    def _publishing(self, soundtrack: str) -> Publishing:
        check_name("soundtrack", soundtrack)
        return Publishing(self.root / soundtrack)

    def presign(self, key: str, expires_s: int = MAX_PRESIGN_EXPIRY_S) -> str:
        """A file:// URI: a folder needs no signature, so the expiry is only validated."""
        check_expiry(expires_s)
        return self._path(key).as_uri()

    def soundtracks(self) -> list[str]:
        """Sub-folders of the root that hold an index (other folders, links to folders, and
        folders no soundtrack can be named, are not ours)."""
        try:
            if not self.root.is_dir():
                return []
            return sorted(
                d.name
                for d in self.root.iterdir()
                if is_name(d.name) and not d.is_symlink() and (d / INDEX_NAME).is_file()
            )
        except OSError as exc:
            raise _error(f"cannot list {self.root}", exc) from None

    def has_soundtrack(self, soundtrack: str) -> bool:
        """Whether the soundtrack's folder (or a link in its place) is there."""
        check_name("soundtrack", soundtrack)
        return os.path.lexists(self.root / soundtrack)

    def unreferenced(self, soundtrack: str) -> Garbage:
        """Files under <root>/<soundtrack>/ that the lock does not reference: ours when the
        journal records writing them with the sha256 they still have, else kept."""
        folder = self.root / soundtrack
        if folder.is_symlink():  # what it deletes would lie outside the storage
            raise InputError(
                f"{folder} is a symbolic link to {os.readlink(folder)}: gc deletes in the "
                "storage's own folders only"
            )
        data = self.read_index(soundtrack)
        if data is None:
            raise InputError(
                f"no index at {folder / INDEX_NAME}: nothing tells which files are in use"
            )
        referenced = index_keys(data, str(folder / INDEX_NAME))
        refuse_outside(
            referenced,
            soundtrack_folder(self, soundtrack),
            (folder / INDEX_NAME).as_uri(),
            lambda key: (self.root / key).as_uri(),
        )
        pending = self._publishing(soundtrack).pending_lock()
        if pending is not None:
            # A file a stopped build's commit moved in before it was killed is the new lock's.
            referenced |= index_keys(pending, str(folder / CONTROL / "lock.json"))
        # The lock, the journal and the review page are the soundtrack's own, never garbage.
        own = (INDEX_NAME, JOURNAL_NAME, REVIEW_NAME)
        in_use = referenced | {f"{soundtrack}/{name}" for name in own}
        written = self._read_journal(soundtrack)
        ours: list[str] = []
        kept: list[str] = []
        for key in self._listing(soundtrack):
            if key in in_use:
                continue
            # Re-hash: a file we wrote but someone changed since is theirs now.
            if key in written and self._sha256_now(key) in written[key]:
                ours.append(key)
            else:
                kept.append(key)
        journal = folder / JOURNAL_NAME
        return Garbage(
            soundtrack,
            journal.as_uri(),
            journal.is_file(),
            ours=sorted(ours),
            kept=folded(f"{soundtrack}/", kept, [*in_use, *written]),
        )

    def delete(self, keys: Sequence[str]) -> None:
        """Remove these files; missing ones are fine."""
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _error(f"cannot delete {path}", exc) from None

    def check_access(self, soundtrack: str) -> None:
        """Fail unless the root (or the folder that would hold it) is a writable directory, and
        the soundtrack's folder in it, if there is one, a folder: not a file, nor a link that
        would take what this tool writes and deletes there elsewhere."""
        try:
            self._check_access(soundtrack)
        except OSError as exc:  # a folder on the way this user may not enter
            where = exc.filename or self.root / soundtrack
            raise _error(f"storage folder {self.root}: cannot look into {where}", exc) from None

    def _check_access(self, soundtrack: str) -> None:
        existing = self.root
        while not existing.exists():
            if existing.is_symlink():  # to nothing: a folder cannot be made there
                raise StorageError(
                    f"storage folder {self.root}: {existing} is a symbolic link to "
                    f"{os.readlink(existing)}, which does not exist",
                    transient=False,
                )
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(
                f"storage folder {self.root}: {existing} is not a directory", transient=False
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"storage folder {self.root}: {existing} is not writable", transient=False
            )
        folder = self.root / soundtrack
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            kind = "a symbolic link" if folder.is_symlink() else "a file"
            raise StorageError(
                f"storage folder {self.root}: {folder}, where soundtrack {soundtrack!r} is "
                f"published, is {kind}, not a folder: remove it to build here",
                transient=False,
            )
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):  # a read-only mount
            raise StorageError(
                f"storage folder {self.root}: {folder} is not writable", transient=False
            )
        self._check_own_files(soundtrack)

    def _record(self, key: str, sha256: str) -> None:
        """Append {key, sha256} to the soundtrack's journal and fsync it, unless already there."""
        soundtrack = soundtrack_of(key)
        if soundtrack is None:
            return
        entry = (key, sha256)
        path = self.root / soundtrack / JOURNAL_NAME
        with _JOURNALS_LOCK:
            journaled = _journaled(path)
            if entry in journaled:
                return
            _append(path, json.dumps({"key": key, "sha256": sha256}).encode() + b"\n")
            journaled.add(entry)

    def _read_journal(self, soundtrack: str) -> dict[str, set[str]]:
        """key -> every sha256 the journal records writing there (empty when no journal)."""
        path = self.root / soundtrack / JOURNAL_NAME
        try:
            lines = read_regular(path).splitlines()  # a FIFO would wait for a writer for ever
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None
        written: dict[str, set[str]] = {}
        for key, sha256 in _entries(lines):
            written.setdefault(key, set()).add(sha256)
        return written

    def _listing(self, soundtrack: str) -> list[str]:
        """Keys of the files under the soundtrack's folder; a sub-folder holding another
        soundtrack's lock (storage nested inside this one) is that soundtrack's: listed as
        'sub/', never entered. Links are listed as themselves, never followed."""
        folder = self.root / soundtrack
        keys: list[str] = []
        try:
            for here, dirs, files in os.walk(folder, onerror=_raise):
                base = Path(here)
                for name in list(dirs):
                    sub = base / name
                    if sub == folder / CONTROL:
                        dirs.remove(name)  # the build lock and uncommitted files: the build's
                    elif sub.is_symlink():
                        dirs.remove(name)
                        keys.append(self._key(sub))
                    elif (sub / INDEX_NAME).is_file():
                        dirs.remove(name)
                        keys.append(f"{self._key(sub)}/")
                keys.extend(self._key(base / name) for name in files)
        except OSError as exc:
            raise _error(f"cannot list {folder}", exc) from None
        return keys

    def _sha256_now(self, key: str) -> str | None:
        """The sha256 of the regular file at `key` now; None for a link or anything else."""
        path = self._path(key)
        try:
            return file_sha256(path) if path.is_file() and not path.is_symlink() else None
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key, str(self.root)))


_FILE_MODE = 0o644  # what a plain `cp` gives under the usual umask 022


def _write_atomically(
    target: Path, *, path: Path | None = None, sha256: str | None = None, data: bytes = b""
) -> int:
    """Copy `path`'s content (or write `data`) beside `target`, check it against `sha256` when
    given, and rename it over `target` once on disk (atomic_path); returns the size."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            digest = hashlib.sha256()
            with tmp.open("xb") as out:
                if path is None:
                    out.write(data)
                    digest.update(data)
                else:
                    with path.open("rb") as source:
                        for block in iter(lambda: source.read(_COPY_BLOCK_BYTES), b""):
                            out.write(block)
                            digest.update(block)
                size = out.tell()
            if sha256 is not None and digest.hexdigest() != sha256:
                raise StorageError(
                    f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: "
                    "the file changed after it was hashed; nothing was published",
                    transient=False,
                )
        return size
    except OSError as exc:
        raise _error(f"cannot write {target}", exc) from None


@dataclass
class _Read:
    """A journal as read so far: which file, up to which byte, the bytes that end there (a
    file written over in place has others), and the pairs it holds."""

    file_id: tuple[int, int] | None
    offset: int = 0
    last: bytes = b""
    pairs: set[tuple[str, str]] = field(default_factory=set)


# Each journal's pairs, for every storage of this process: a build opens one per publish, and
# reading a year's journal whole for each file it publishes took seconds per build.
_JOURNALS: dict[Path, _Read] = {}
_JOURNALS_LOCK = threading.Lock()
_LAST_BYTES = 512  # a few lines: what tells an appended journal from one written over


def _journaled(path: Path) -> set[tuple[str, str]]:
    """The (key, sha256) pairs the journal at `path` holds, reading only what was appended
    since the last call (all of it when the file is another, shorter, or ends otherwise than
    it did). An edit further up goes unseen: at worst a record is not written again, and gc
    keeps that file."""
    try:
        with open_regular(path) as handle:  # a FIFO would wait for a writer for ever
            found = os.fstat(handle.fileno())
            read = _JOURNALS.get(path)
            if read is None or not _appended_to(handle, found, read):
                read = _JOURNALS[path] = _Read((found.st_dev, found.st_ino))
            handle.seek(read.offset)
            appended = handle.read()
    except FileNotFoundError:
        read = _JOURNALS[path] = _Read(None)
        return read.pairs
    except OSError as exc:
        raise _error(f"cannot read {path}", exc) from None
    # A line not ended yet (torn by a crash) is read again, with what is appended to it.
    whole = appended.rfind(b"\n") + 1
    read.offset += whole
    read.last = (read.last + appended[:whole])[-_LAST_BYTES:]
    read.pairs.update(_entries(appended[:whole].splitlines()))
    return read.pairs


def _appended_to(handle: BinaryIO, found: os.stat_result, read: _Read) -> bool:
    """Whether the open journal is the one `read` read, only appended to since."""
    if read.file_id != (found.st_dev, found.st_ino) or found.st_size < read.offset:
        return False
    handle.seek(read.offset - len(read.last))
    return handle.read(len(read.last)) == read.last


def _entries(lines: Sequence[bytes]) -> Iterator[tuple[str, str]]:
    """The (key, sha256) of each journal line that holds one."""
    for line in lines:
        # A line torn by a crash proves nothing: skipping it keeps that file, the safe way.
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(entry, dict):
            continue
        key, sha256 = entry.get("key"), entry.get("sha256")
        if isinstance(key, str) and isinstance(sha256, str):
            yield key, sha256


def _append(path: Path, line: bytes) -> None:
    """Append one line to `path` (made if missing) and fsync it before returning."""
    try:
        # Not through a link: appended to, a linked file (a manifest) would take the line.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
        try:
            size = regular_stat(fd, path).st_size  # a FIFO would take the lines, keep none
            # After a crash mid-append, start on a fresh line so this entry stays readable.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if not size:
            fsync_path(path.parent)  # the new file's entry in the folder
    except OSError as exc:
        raise _error(f"cannot write {path}", exc) from None


def _raise(exc: OSError) -> None:
    raise exc


def _error(doing: str, exc: OSError) -> StorageError:
    return StorageError(f"{doing}: {exc.strerror or exc}", transient=False)
