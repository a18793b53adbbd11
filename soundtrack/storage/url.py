"""The rule for a storage location, checked by the manifest's schema and by open_storage alike."""

from __future__ import annotations

import re

from soundtrack.paths import path_problem
from soundtrack.redaction import url_has_credentials

S3_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3's rules beyond the characters: no IP-address form, no reserved prefixes or suffixes.
_RESERVED_BUCKET = re.compile(
    r"^(\d+\.\d+\.\d+\.\d+|xn--.*|sthree-.*|amzn-s3-demo-.*|.*-s3alias|.*--ol-s3|.*--x-s3)$"
)
_NOT_IN_PREFIX = frozenset("?#\\%")
# S3 keys hold 1024 bytes. Under the prefix, this tool's longest key, a stem's journal record
# (<soundtrack>/.journal/<track>/<spec hash>.<sha256[:16]>.<stem>.<ext>/<sha256>), takes 300.
MAX_S3_PREFIX_BYTES = 700
# Under a storage folder, this tool's longest paths, a commit's temporary files
# (<soundtrack>/.publishing/staged/.<file name>.<16 hex digits>.part), take under 250.
FOLDER_PATHS_BYTES = 300


def names_a_folder(value: str) -> bool:
    """Whether a storage location is a folder path: no scheme:// (a colon in a folder's name
    is the name's), nor a mistyped s3: URL."""
    return "://" not in value and not value.lower().startswith("s3:")


def check_storage_url(value: str) -> None:
    """Raise ValueError unless `value` is a folder path or an s3://bucket[/prefix] URL."""
    if not value.strip():
        raise ValueError("storage is empty: give a folder, s3://bucket or s3://bucket/prefix")
    if value.lower().startswith("s3:") and not value.startswith("s3://"):
        raise ValueError("storage URL is malformed: expected s3://bucket or s3://bucket/prefix")
    if names_a_folder(value):
        if problem := path_problem(value):
            raise ValueError(f"storage path {problem}")
        return
    scheme, _, rest = value.partition("://")
    if scheme != "s3":
        raise ValueError(f"storage must be a folder or s3://bucket/prefix, not a {scheme}:// URL")
    if url_has_credentials(value):
        raise ValueError(
            "storage URL must not carry credentials (user:password@): give them as "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or in an AWS profile (AWS_PROFILE)"
        )
    if "?" in rest or "#" in rest:
        raise ValueError("a storage URL may have no query or fragment ('?' or '#')")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError("storage URL names no bucket: expected s3://bucket or s3://bucket/prefix")
    if not S3_BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket or _RESERVED_BUCKET.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r} in storage URL")
    odd = sorted({c for c in prefix if c in _NOT_IN_PREFIX or not c.isprintable()})
    if odd:
        # '?' and '#' would start a query or fragment in any URL built from the prefix (an
        # endpoint's options do not belong here); '%' escapes decode there (%2e%2e to '..',
        # %2F to '/'); a backslash is a path separator on Windows.
        raise ValueError(f"invalid S3 prefix {prefix!r}: it may not contain {odd}")
    # One trailing slash is a folder's; any other empty segment is a typo or an unset
    # variable (s3://bucket/$TEAM/music), which S3 would take as the key's own text.
    segments = prefix.removesuffix("/").split("/") if prefix else []
    if any(part in ("", ".", "..") for part in segments):
        raise ValueError(f"invalid S3 prefix {prefix!r} (empty, '.' or '..' segments)")
    if any(part.startswith(".") for part in segments):
        # .journal, .renders, .publishing: the folders this tool keeps its records in.
        raise ValueError(
            f"invalid S3 prefix {prefix!r}: a segment starting with '.' names a folder this "
            "tool keeps its own records in"
        )
    if len(prefix.encode()) > MAX_S3_PREFIX_BYTES:
        raise ValueError(
            f"S3 prefix of {len(prefix.encode())} bytes: at most {MAX_S3_PREFIX_BYTES} (S3 keys "
            "hold 1024 bytes, and this tool's keys under the prefix take up to 300)"
        )
