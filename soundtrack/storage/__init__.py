"""Publishing assets: one interface over a local folder (the default) and S3; docs/storage.md."""

from __future__ import annotations

import os
from pathlib import Path

from soundtrack.errors import InputError
from soundtrack.paths import MAX_PATH_BYTES, shown, user_path, without_dotdot
from soundtrack.redaction import remember_url, url_has_credentials
from soundtrack.storage.base import (
    INDEX_NAME,
    MAX_PRESIGN_EXPIRY_S,
    PublishedFile,
    Storage,
    index_keys,
    soundtrack_folder,
)
from soundtrack.storage.local import LocalStorage
from soundtrack.storage.url import FOLDER_PATHS_BYTES, check_storage_url

__all__ = [
    "INDEX_NAME",
    "MAX_PRESIGN_EXPIRY_S",
    "STORAGE_ENV",
    "LocalStorage",
    "PublishedFile",
    "Storage",
    "check_access",
    "check_storage_url",
    "index_keys",
    "open_storage",
    "soundtrack_folder",
]

STORAGE_ENV = "SOUNDTRACK_STORAGE"


def open_storage(url: str, *, base_dir: Path) -> Storage:
    """A folder path (relative: against `base_dir`, the manifest's folder) or s3://bucket[/prefix],
    used as given: a build picks --out, $SOUNDTRACK_STORAGE or the manifest's value before calling
    this. Malformed URLs raise InputError before any network call."""
    source = "storage URL"
    if url_has_credentials(url):
        remember_url(url)
        # Any scheme, well-formed or not: every other message here echoes the URL.
        raise InputError(
            f"{source} must not carry credentials (user:password@): give them as "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or in an AWS profile (~/.aws/credentials, "
            "AWS_PROFILE)"
        )
    try:
        check_storage_url(url)
    except ValueError as exc:
        # Not what follows a '?' or '#': a query is where a token would travel.
        cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
        hidden = f" ({url[cut]}... not shown)" if cut < len(url) else ""
        raise InputError(f"{source} {url[:cut]!r}{hidden}: {exc}") from None
    if url.startswith("s3://"):
        # Imported only now: boto3 takes a second to import.
        from soundtrack.storage.s3 import S3Storage

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Storage(url, bucket, prefix)
    # `../assets` beside a game's audio folder, named without the `..`.
    try:
        root = without_dotdot(base_dir / user_path(url))
    except InputError as exc:
        raise InputError(f"storage folder {exc}") from None
    size = len(os.fsencode(root))
    if size > MAX_PATH_BYTES - FOLDER_PATHS_BYTES:
        # Found now, not when the first approved track is published.
        raise InputError(
            f"storage folder {shown(root)} is {size} bytes long: at most "
            f"{MAX_PATH_BYTES - FOLDER_PATHS_BYTES} (a path holds {MAX_PATH_BYTES} bytes, and "
            f"this tool's paths under the folder take up to {FOLDER_PATHS_BYTES})"
        )
    return LocalStorage(url, root)


def check_access(storage: Storage, soundtrack: str) -> None:
    """Fast pre-flight: raise StorageError(transient=False) when publishing `soundtrack` cannot
    work (wrong credentials, missing bucket, unreachable endpoint, unwritable folder)."""
    storage.check_access(soundtrack)
