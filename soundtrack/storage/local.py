"""A local folder as storage: stable file names, each replaced atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from soundtrack.errors import InputError, StorageError
from soundtrack.manifest import file_sha256
from soundtrack.storage.base import (
    INDEX_NAME,
    MAX_PRESIGN_EXPIRY_S,
    RENDERS_FOLDER,
    PublishedFile,
    check_expiry,
    check_name,
    index_keys,
)

_COPY_BLOCK_BYTES = 1 << 20


class LocalStorage:
    """Assets under `root` as <soundtrack>/<track>.<ext>: the names game engines reference."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root.absolute()

    def asset_key(self, soundtrack: str, track_id: str, spec_hash: str, ext: str) -> str:
        """<soundtrack>/<track>.<ext>; the spec hash lives in the index, not the name."""
        for kind, value in (("soundtrack", soundtrack), ("track id", track_id), ("format", ext)):
            check_name(kind, value)
        return f"{soundtrack}/{track_id}.{ext}"

    def render_key(self, generation_key: str, ext: str) -> str:
        check_name("generation key", generation_key)
        return f"{RENDERS_FOLDER}/{generation_key}.{ext}"

    def fetch(self, key: str, dest: Path, *, sha256: str) -> None:
        _write_atomically(dest, path=self._path(key), sha256=sha256)

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
        """Copy to a temporary name beside the target, fsync, verify, then rename over it."""
        # A folder has no per-file headers: content type and metadata live in the index.
        del content_type, metadata
        target = self._path(key)
        if self.has_asset(key, sha256):
            return PublishedFile(key, target.as_uri(), sha256, target.stat().st_size, False)
        size = _write_atomically(target, path=path, sha256=sha256)
        return PublishedFile(key, target.as_uri(), sha256, size, True)

    def read_index(self, soundtrack: str) -> bytes | None:
        """The lock file's bytes, or None when the soundtrack was never published here."""
        check_name("soundtrack", soundtrack)
        return self.read(f"{soundtrack}/{INDEX_NAME}")

    def read(self, key: str) -> bytes | None:
        """A file's bytes, or None when it does not exist."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from None

    def write_index(self, soundtrack: str, data: bytes) -> str:
        """Replace <root>/<soundtrack>/soundtrack.lock.json atomically; returns its file URI."""
        check_name("soundtrack", soundtrack)
        target = self.root / soundtrack / INDEX_NAME
        _write_atomically(target, data=data)
        return target.as_uri()

    def presign(self, key: str, expires_s: int = MAX_PRESIGN_EXPIRY_S) -> str:
        """A file:// URI: a folder needs no signature, so the expiry is only validated."""
        check_expiry(expires_s)
        return self._path(key).as_uri()

    def soundtracks(self) -> list[str]:
        """Sub-folders of the root that hold an index (other folders are not ours)."""
        try:
            if not self.root.is_dir():
                return []
            return sorted(d.name for d in self.root.iterdir() if (d / INDEX_NAME).is_file())
        except OSError as exc:
            raise _error(f"cannot list {self.root}", exc) from None

    def unreferenced(self, soundtrack: str) -> list[str]:
        """Files under <root>/<soundtrack>/ that are neither the lock file nor referenced by it."""
        data = self.read_index(soundtrack)
        index_path = self.root / soundtrack / INDEX_NAME
        if data is None:
            raise InputError(f"no index at {index_path}: nothing tells which files are in use")
        referenced = index_keys(data, str(index_path))
        folder = self.root / soundtrack
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k not in referenced and k != f"{soundtrack}/{INDEX_NAME}")

    def delete(self, keys: Sequence[str]) -> None:
        """Remove these files; missing ones are fine."""
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _error(f"cannot delete {path}", exc) from None

    def check_access(self) -> None:
        """Fail unless the root (or the folder that would hold it) is a writable directory."""
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(
                f"storage folder {self.root}: {existing} is not a directory", transient=False
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"storage folder {self.root}: {existing} is not writable", transient=False
            )

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise InputError(f"storage key {key!r} must be a relative path inside {self.root}")
        return self.root.joinpath(*parts)


_FILE_MODE = 0o644  # what a plain `cp` gives under the usual umask 022


def _write_atomically(
    target: Path, *, path: Path | None = None, sha256: str | None = None, data: bytes = b""
) -> int:
    """Write `path`'s content (or `data`) to a temp file beside `target`, fsync, rename over it."""
    tmp_name: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        # mkstemp makes the file 0600; published assets are read by engines and build users.
        os.fchmod(fd, _FILE_MODE)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            if path is None:
                out.write(data)
                digest.update(data)
            else:
                with path.open("rb") as source:
                    for block in iter(lambda: source.read(_COPY_BLOCK_BYTES), b""):
                        out.write(block)
                        digest.update(block)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        if sha256 is not None and digest.hexdigest() != sha256:
            raise StorageError(
                f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: "
                "the file changed after it was hashed; nothing was published",
                transient=False,
            )
        os.replace(tmp_name, target)
        tmp_name = None
        _fsync_dir(target.parent)
        return size
    except OSError as exc:
        raise _error(f"cannot write {target}", exc) from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(doing: str, exc: OSError) -> StorageError:
    return StorageError(f"{doing}: {exc.strerror or exc}", transient=False)
