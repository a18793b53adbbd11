"""All-or-nothing publishing into a local folder, and one build at a time per soundtrack.

While a build runs, the files it publishes wait under `<soundtrack>/.publishing/staged/`; the
folder's files and lock stay the previous build's. Writing the lock commits: a commit record
lists every staged file, then each one replaces its target by rename (the old version
hard-linked aside first), then the new lock replaces the old one. A build killed before the
record leaves only staged files, which the next build drops; one killed after it is finished by
the next build (every staged file is still there or already in place). A rename that fails
undoes the renames before it, so the folder stays the previous build's. Stable names are
replaced in place, never by swapping the folder, so an engine's files beside them (Unity's
`.meta`) survive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from soundtrack.atomic import atomic_path, fsync_path
from soundtrack.errors import InputError, StorageBusy, StorageError
from soundtrack.hashing import file_sha256, read_regular
from soundtrack.storage.base import BUILD_TURNS, INDEX_NAME

CONTROL = ".publishing"  # beside the lock: the build lock and what a build has not committed yet
LOCK_NAME = "build.lock"
# atomic_path's temporary names: `.<name>.<16 hex digits>.part`
_PART = re.compile(r"\..+\.[0-9a-f]{16}\.part")
_POLL_S = 0.5


@dataclass(frozen=True)
class Publishing:
    """The publishing state of one soundtrack folder."""

    folder: Path  # <root>/<soundtrack>

    @property
    def control(self) -> Path:
        return self.folder / CONTROL

    def staged(self, name: str) -> Path:
        return self.control / "staged" / name

    def commit(self, lock: bytes, names: set[str], retired: Mapping[str, str]) -> int:
        """Put every staged file named in `names` in place, remove the `retired` ones (name ->
        sha256: stems of the previous lock this one no longer names), then `lock` as the
        folder's lock; returns how many files changed. On a failed rename the folder is left
        as it was."""
        with BUILD_TURNS.committing(self.folder, str(self.folder)):
            return self._commit(lock, names, retired)

    def _commit(self, lock: bytes, names: set[str], retired: Mapping[str, str]) -> int:
        files: list[dict[str, object]] = []
        for name in sorted(names):
            staged = self.staged(name)
            if staged.is_file():
                target = self.folder / name
                files.append(
                    {"name": name, "sha256": file_sha256(staged), "new": not target.exists()}
                )
        files += [
            {"name": name, "sha256": sha256, "new": False, "retired": True}
            for name, sha256 in sorted(retired.items())
        ]
        self.control.mkdir(exist_ok=True)
        _write(self.control / "lock.json", lock)
        record = {"direction": "forward", "files": files}
        _write(self._record, json.dumps(record).encode())
        try:
            self._forward(files)
        except OSError as exc:
            failed = (
                f"cannot replace files in {self.folder} ({exc.strerror or exc}"
                f"{f': {exc.filename}' if exc.filename else ''})"
            )
            # On a full disk the record may not turn: the forward one stays, and the next
            # build finishes the publish from it, should the undo not end either.
            with contextlib.suppress(OSError):
                _write(self._record, json.dumps({**record, "direction": "back"}).encode())
            try:
                self._back(files)
            except OSError as undo:
                raise StorageError(
                    f"{failed}, and undoing it failed too ({undo.strerror or undo}): the next "
                    f"build finishes or undoes it from {self._record}, and the files kept "
                    "beside it",
                    transient=False,
                ) from None
            self._clean()
            raise StorageError(
                f"{failed}: undone, the folder still matches its previous lock", transient=False
            ) from None
        self._clean()
        return len(files)

    def repair(self) -> list[str]:
        """Finish or undo what a killed build left half done, drop staged files and stray
        temporary files; says what it did, one line each."""
        BUILD_TURNS.begin(self.folder)
        said: list[str] = []
        record = self._read_record()
        if record is not None and record[0] == "forward" and self._can_finish(record[1]):
            self._forward(record[1])
            said.append(
                f"{self.folder}: finished the publish a stopped build had begun "
                f"({len(record[1])} files and the lock)"
            )
        elif record is not None:
            self._back(record[1])
            said.append(f"{self.folder}: undid the failed publish of a stopped build")
        else:
            staged = [p for p in (self.control / "staged").glob("*") if p.is_file()]
            if staged:
                said.append(
                    f"{self.folder}: dropped {len(staged)} file(s) staged by a build that stopped "
                    "before its lock; the folder matches its lock"
                )
        strays = [p for p in _listdir(self.folder) if _PART.fullmatch(p.name) and p.is_file()]
        for path in strays:
            path.unlink(missing_ok=True)
        if strays:
            said.append(
                f"{self.folder}: removed {len(strays)} temporary file(s) of a stopped write"
            )
        self._clean()
        return said

    def pending_lock(self) -> bytes | None:
        """The lock of a publish a stopped build began and the next build (or gc) will finish;
        None when there is none."""
        record = self._read_record()
        if record is None or record[0] != "forward":
            return None
        try:
            return read_regular(self.control / "lock.json")
        except FileNotFoundError:
            return None  # already in place: the folder's lock is the new one
        except OSError as exc:
            raise StorageError(
                f"cannot read {self.control / 'lock.json'}: {exc.strerror or exc}", transient=False
            ) from None

    def discard(self) -> None:
        """Drop what this build staged and end its turn: a commit under way (on a task's
        thread, while a stopped build's main thread cleans up) finishes first, and none starts
        after. A commit neither done nor undone (a full disk) is left whole to the next build."""
        BUILD_TURNS.end(self.folder, self._clean_unless_committing)

    def _clean_unless_committing(self) -> None:
        if not os.path.lexists(self._record):
            self._clean()

    @property
    def _record(self) -> Path:
        return self.control / "commit.json"

    def _read_record(self) -> tuple[str, list[dict[str, object]]] | None:
        """(direction, files) of a commit under way, or None."""
        try:
            record = json.loads(read_regular(self._record))  # a FIFO would wait for a writer
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(
                f"cannot read {self._record}: {exc.strerror or exc}", transient=False
            ) from None
        except (ValueError, RecursionError):
            # A record is written whole (atomic rename) or not at all; this is not ours.
            raise StorageError(
                f"{self._record} is not a commit record this tool wrote: look at it, then "
                "delete it to build again",
                transient=False,
            ) from None
        return str(record["direction"]), list(record["files"])

    def _can_finish(self, files: list[dict[str, object]]) -> bool:
        """Whether every file of a commit is still staged or in place: an undo a full disk
        stopped half way (its record still saying forward) put some previous versions back,
        over the new ones, which only undoing it all again can square with a lock."""
        for entry in files:
            if entry.get("retired") or self.staged(str(entry["name"])).exists():
                continue
            target = self.folder / str(entry["name"])
            if not target.is_file() or file_sha256(target) != entry["sha256"]:
                return False
        return True

    def _forward(self, files: list[dict[str, object]]) -> None:
        """Each staged file replaces its target (the target kept aside first), then the lock."""
        previous = self.control / "previous"
        previous.mkdir(exist_ok=True)
        for entry in files:
            name = str(entry["name"])
            staged, target, kept = self.staged(name), self.folder / name, previous / name
            try:
                if entry.get("retired"):
                    if target.exists() and not kept.exists():
                        # kept aside to undo, as a replaced file is (a link, not its target)
                        os.link(target, kept, follow_symlinks=False)
                    target.unlink(missing_ok=True)
                    continue
                if not staged.exists():
                    continue  # already in place
                if target.exists() and not kept.exists():
                    os.link(target, kept, follow_symlinks=False)
                os.replace(staged, target)
            except OSError as exc:  # named by the file in the way, not the staged copy
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
        fsync_path(self.folder)
        lock = self.control / "lock.json"
        if lock.exists():
            os.replace(lock, self.folder / INDEX_NAME)
            fsync_path(self.folder)

    def _back(self, files: list[dict[str, object]]) -> None:
        """Every target a commit replaced gets its previous version back; new files go."""
        for entry in files:
            name = str(entry["name"])
            target, kept = self.folder / name, self.control / "previous" / name
            if kept.exists():
                os.replace(kept, target)
            elif entry["new"] and target.is_file() and file_sha256(target) == entry["sha256"]:
                target.unlink()  # ours, by its checksum: the previous build had no such file
        fsync_path(self.folder)

    def _clean(self) -> None:
        """Remove from the control folder what builds write there but the build lock (a killed
        write's temporary files included), and the folder when nothing is left in it: anything
        else in it is not ours, and stays."""
        own_folder(self.control)
        for path in _listdir(self.control):
            if path.name in ("staged", "previous") and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name in ("staged", "previous", "lock.json", "commit.json"):
                path.unlink()  # a link at one of our names goes itself, never what it names
            elif _PART.fullmatch(path.name):
                path.unlink()
        with contextlib.suppress(OSError):
            self.control.rmdir()


@contextlib.contextmanager
def build_lock(folder: Path, *, wait_s: float, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the soundtrack folder's build lock: a file locked with flock, so the lock of a
    killed process is released by the kernel at once; it names its holder (pid, host, start)."""
    path = folder / CONTROL / LOCK_NAME
    # The soundtrack's folder too: `gc --soundtrack` through a link repaired, and deleted,
    # what a build had left in the folder it points to.
    own_folder(folder)
    own_folder(path.parent)
    deadline: float | None = None
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if deadline is None:  # as for the S3 lease: the wait counts from seeing the holder
                deadline = time.monotonic() + wait_s
                if wait_s > 0:
                    on_wait(f"{folder} is being built by {holder}: waiting up to {wait_s:g} s")
            if time.monotonic() >= deadline:
                raise StorageBusy(
                    f"{folder} is being built by {holder}; waited {wait_s:g} s"
                ) from None
            time.sleep(_POLL_S)
            continue
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder before us removed it on release: lock the new one
    try:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Who holds it is for a waiter to read: a full disk must not stop the build from
        # saying so itself, nor gc --delete from freeing space.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        # Removed while still locked: a waiter that opened this file finds it gone and retries.
        path.unlink(missing_ok=True)
        os.close(fd)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def own_folder(path: Path) -> None:
    """Refuse a folder this tool writes and deletes in that is a symbolic link, or a file:
    what it writes and deletes there would land where the link points."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = f"a symbolic link to {os.readlink(path)}" if path.is_symlink() else "a file"
        raise InputError(
            f"{path} is {kind}, not the folder this tool writes and deletes in: remove it first"
        )


def _open_lock(path: Path) -> int:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Not through a link: the lock is truncated and written (a linked file with it).
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed between the two calls by a build ending
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(
                    f"{path} is a symbolic link, not the lock file this tool makes: remove it "
                    "to build here"
                ) from None
            # A full disk (a new folder or file needs room) or a folder it may not write in.
            raise StorageError(
                f"cannot make the build lock {path}: {exc.strerror or exc}", transient=False
            ) from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"process {holder['pid']} on {holder['host']} since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "another build"


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
