"""S3 (and S3-compatible stores) as storage: content-addressed, conditional, verified uploads."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    InvalidConfigError,
    NoCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.utils import ChunksizeAdjuster

from soundtrack.atomic import atomic_path
from soundtrack.errors import InputError, StorageError
from soundtrack.hashing import file_sha256
from soundtrack.redaction import redact, remember, remember_url
from soundtrack.storage.base import (
    BUILD_TURNS,
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
    index_keys,
    is_name,
    refuse_outside,
    soundtrack_of,
)
from soundtrack.storage.lease import LEASE_NAME, Lease, held_lease, lease_seconds

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

# Total attempts per request (first try included) unless AWS_MAX_ATTEMPTS / max_attempts is
# configured. botocore backs off 50 ms * 2^n (max 20 s) for connection errors, so a stopped
# server fails within seconds; throttling (SlowDown) backs off from 1 s, up to ~1 min in all.
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
MULTIPART_THRESHOLD_BYTES = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE_BYTES = 8 * 1024 * 1024
# Content-addressed objects never change, so CDNs may keep them forever; the index must not be.
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
INDEX_CACHE_CONTROL = "no-cache"
SHA256_METADATA = "sha256"
# Objects cannot be appended to, so the write journal is one small object per content we put at
# a key: <prefix>/<soundtrack>/.journal/<key below the soundtrack>/<sha256 hex>, its name alone
# telling gc what it records.
JOURNAL_FOLDER = ".journal"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "ConditionalRequestConflict",
    "OperationAborted",
    # The server's checksum of what arrived differs from ours: bytes corrupted in transit.
    "BadDigest",
    "InvalidDigest",
    "XAmzContentSHA256Mismatch",
}
# Codes a conditional write answers when the object is already there: our own earlier attempt
# whose reply was lost, or a concurrent upload; either way the content decides.
_ALREADY_WRITTEN_CODES = {"PreconditionFailed", "NoSuchUpload"}
# Printable ASCII minus '%': S3 metadata travels in HTTP headers, so only the rest is escaped.
_METADATA_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


# Hex digits of a file's sha256 in its key: 64 bits tell apart the takes of one spec.
CONTENT_DIGITS = 16


@dataclass(frozen=True)
class _LocalChecksums:
    sha256: str  # hex of the whole file
    size: int
    expected: str  # what S3 reports as ChecksumSHA256 after our upload (composite if multipart)


class S3Storage:
    """Objects under s3://bucket/prefix, named by content (<soundtrack>/<track>/<hash>.<ext>)."""

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        *,
        multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
        multipart_chunksize_bytes: int = MULTIPART_CHUNKSIZE_BYTES,
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._client, self._conditional_client = _make_clients()
        self.endpoint = _public_endpoint(self._client.meta.endpoint_url)
        self._lease_s = lease_seconds()
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunksize_bytes,
            preferred_transfer_client="classic",
        )

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
        """<prefix>/<soundtrack>/<track>/<spec_hash>.<sha256[:16]>[.<stem>].<ext>: immutable,
        named by content, so another take of the same spec (a render on another GPU after a
        crash, `--force`) has a key of its own and never meets the first at one."""
        for kind, value in (
            ("soundtrack", soundtrack),
            ("track id", track_id),
            ("spec hash", spec_hash),
            ("sha256", sha256),
            ("format", ext),
            *((("stem", stem),) if stem is not None else ()),
        ):
            check_name(kind, value)
        name = f"{spec_hash}.{sha256[:CONTENT_DIGITS]}"
        name = name if stem is None else f"{name}.{stem}"
        return f"{self.prefix}{soundtrack}/{track_id}/{name}.{ext}"

    def render_key(self, generation_key: str, ext: str) -> str:
        check_name("generation key", generation_key)
        return f"{self.prefix}{RENDERS_FOLDER}/{generation_key}.{ext}"

    def fetch(self, key: str, dest: Path, *, sha256: str) -> None:
        self._check_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            try:
                self._client.download_file(self.bucket, key, str(tmp))
            except (ClientError, BotoCoreError) as exc:
                raise self._error(f"downloading {self.uri(key)}", exc) from None
            if file_sha256(tmp) != sha256:
                raise StorageError(
                    f"{self.uri(key)} downloaded with a different sha256 than recorded",
                    transient=True,
                )

    def uri(self, key: str) -> str:
        """s3://bucket/key."""
        return f"s3://{self.bucket}/{key}"

    def has_asset(self, key: str, sha256: str) -> bool:
        """True when the object exists and the server's checksum is that content's, or, for a
        multipart object, the composite this tool recorded when it verified the upload."""
        self._check_key(key)
        head = self._head(key)
        return head is not None and self._proves(self._record_key(key, sha256), head, sha256)

    def put_asset(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> PublishedFile:
        """Upload with the transfer manager, SHA-256 checksums and If-None-Match, verify, then
        record it in the soundtrack's journal (also when identical content was already there)."""
        self._check_key(key)
        local = self._checksums(path)
        if local.sha256 != sha256:
            raise StorageError(
                f"{path} has sha256 {local.sha256}, expected {sha256}: the file changed after "
                "it was hashed; nothing was uploaded",
                transient=False,
            )
        extra_args: dict[str, Any] = {
            "ChecksumAlgorithm": "SHA256",
            "ContentType": content_type,
            "CacheControl": ASSET_CACHE_CONTROL,
            "Metadata": {**_ascii_metadata(metadata), SHA256_METADATA: sha256},
        }
        existing = self._head(key)
        if existing is not None:
            return self._take_existing(path, key, existing, local, extra_args)
        try:
            with create_transfer_manager(self._conditional_client, self._transfer_config) as tm:
                tm.upload(str(path), self.bucket, key, extra_args=extra_args).result()
        except ClientError as exc:
            if _code(exc) not in _ALREADY_WRITTEN_CODES:
                raise self._error(f"uploading {path.name} to {self.uri(key)}", exc) from None
            existing = self._head(key)
            if existing is None:
                raise self._error(f"uploading {path.name} to {self.uri(key)}", exc) from None
            published = self._take_existing(path, key, existing, local, extra_args)
            return PublishedFile(key, published.uri, sha256, local.size, True)
        except (BotoCoreError, OSError) as exc:
            raise self._error(f"uploading {path.name} to {self.uri(key)}", exc) from None
        self._verify(key, local)
        self._record(key, sha256, local.expected)
        return PublishedFile(key, self.uri(key), sha256, local.size, True)

    def read_index(self, soundtrack: str) -> bytes | None:
        """The lock file (its checksum validated by botocore on the way), or None."""
        return self.read(self._index_key(soundtrack))

    def read(self, key: str) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""
        self._check_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            data: bytes = response["Body"].read()
            return data
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._error(f"reading {self.uri(key)}", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"reading {self.uri(key)}", exc) from None

    def write_index(self, soundtrack: str, data: bytes) -> str:
        """Replace the lock file in one PUT (S3 PUTs are atomic) and verify its checksum; when
        this process holds the soundtrack's build lease, renew it first, refusing if it was lost."""
        key = self._index_key(soundtrack)
        # A stopped build's lock write on a task's thread would land after its lease is let go.
        with BUILD_TURNS.committing((self.endpoint, self.bucket, key), self.uri(key)):
            lease = held_lease(self.endpoint, self.bucket, self._lease_key(soundtrack))
            if lease is not None:
                lease.confirm(
                    "this build", "it does not write the lock: the other build's publish stands"
                )
            return self._replace(key, data, content_type="application/json")

    def review_key(self, soundtrack: str) -> str:
        """<prefix>/<soundtrack>/review.html, beside the lock."""
        check_name("soundtrack", soundtrack)
        return f"{self.prefix}{soundtrack}/{REVIEW_NAME}"

    def write_review(self, soundtrack: str, data: bytes) -> str:
        """Replace the review page in one PUT (it changes with every lock), verified."""
        return self._replace(
            self.review_key(soundtrack), data, content_type="text/html; charset=utf-8"
        )

    def _replace(self, key: str, data: bytes, *, content_type: str) -> str:
        """One PUT of a small mutable object (the lock, the review page), never cached by a
        CDN, verified by the server's checksum; returns its URI."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ContentType=content_type,
                CacheControl=INDEX_CACHE_CONTROL,
                Metadata={SHA256_METADATA: digest},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"writing {self.uri(key)}", exc) from None
        self._verify(key, _LocalChecksums(digest, len(data), _b64(bytes.fromhex(digest))))
        return self.uri(key)

    def presign(self, key: str, expires_s: int = MAX_PRESIGN_EXPIRY_S) -> str:
        """A SigV4 presigned GET URL, valid for `expires_s` seconds (at most 7 days)."""
        self._check_key(key)
        check_expiry(expires_s)
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
            return url
        except BotoCoreError as exc:
            raise self._error(f"presigning {self.uri(key)}", exc) from None

    def soundtracks(self) -> list[str]:
        """Names of the "folders" directly under the prefix that hold an index."""
        names: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"].removeprefix(self.prefix).rstrip("/"))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"listing s3://{self.bucket}/{self.prefix}", exc) from None
        return sorted(
            name
            for name in names
            if is_name(name) and self._head(f"{self.prefix}{name}/{INDEX_NAME}")
        )

    def unreferenced(self, soundtrack: str) -> Garbage:
        """Keys under <prefix>/<soundtrack>/ that the lock does not reference: ours when a
        journal record proves we put them there and the server's checksum still matches, else
        kept. The records of what is ours (or no longer there) are ours too, listed last."""
        index_key, lease_key = self._index_key(soundtrack), self._lease_key(soundtrack)
        # The lock, the lease and the review page are the soundtrack's own, never garbage.
        own = (index_key, lease_key, self.review_key(soundtrack))
        data = self.read_index(soundtrack)
        if data is None:
            raise InputError(
                f"no index at {self.uri(index_key)}: nothing tells which objects are in use"
            )
        referenced = index_keys(data, self.uri(index_key))
        folder = f"{self.prefix}{soundtrack}/"
        # A lock names whole keys: one copied from another prefix or soundtrack names the
        # originals, so every copy would read as unreferenced, and the copied journal proves
        # them ours.
        refuse_outside(referenced, folder, self.uri(index_key), self.uri)
        found = self._list(folder)
        # A "folder" holding another soundtrack's lock is that soundtrack (storage nested here).
        nested = sorted(
            key.removesuffix(INDEX_NAME)
            for key in found
            if key.endswith(f"/{INDEX_NAME}") and key != index_key
        )
        records: dict[str, dict[str, str]] = {}  # key -> sha256 -> the record's key
        candidates: list[str] = []
        kept: list[str] = list(nested)
        for key in found:
            if key in own or key in referenced or key.startswith(tuple(nested)):
                continue
            recorded = self._recorded(folder, key)
            if recorded is not None:
                records.setdefault(recorded[0], {})[recorded[1]] = key
            elif key.startswith(f"{folder}{JOURNAL_FOLDER}/"):
                kept.append(key)
            else:
                candidates.append(key)
        ours: list[str] = []
        for key in candidates:
            head = self._head(key) if key in records else None
            if head is not None and any(
                self._proves(record, head, sha) for sha, record in records[key].items()
            ):
                ours.append(key)
            else:
                kept.append(key)
        present, deletable = set(found), set(ours)
        spent = [
            record
            for key, shas in records.items()
            if key in deletable or key not in present
            for record in shas.values()
        ]
        journal = f"{folder}{JOURNAL_FOLDER}/"
        return Garbage(
            soundtrack,
            self.uri(journal),
            bool(records),
            # Records last: a record gone before its object only leaves that object kept.
            ours=sorted(ours) + sorted(spent),
            kept=folded(folder, kept, [*referenced, *own, journal, *records]),
        )

    def delete(self, keys: Sequence[str]) -> None:
        """Delete in batches of 1000 (the DeleteObjects limit); any per-key error fails."""
        for key in keys:
            self._check_key(key)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            # gc holds each soundtrack's lease while it deletes: lost (a stall past the lease
            # time), a build that took it over may be reusing the files found unreferenced.
            for soundtrack in sorted(
                {key.removeprefix(self.prefix).split("/")[0] for key in batch}
            ):
                lease = held_lease(self.endpoint, self.bucket, self._lease_key(soundtrack))
                if lease is not None:
                    lease.confirm("this gc", "it deletes nothing more: that build may use them")
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error(f"deleting from s3://{self.bucket}", exc) from None
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"deleting from s3://{self.bucket}: {len(errors)} key(s) failed, first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}",
                    transient=False,
                )

    def hold(
        self, soundtrack: str, *, wait_s: float, on_wait: Callable[[str], None]
    ) -> AbstractContextManager[None]:
        """The soundtrack's build lease (storage/lease.py), renewed until the block ends."""
        lease = Lease(
            self._client,
            endpoint=self.endpoint,
            bucket=self.bucket,
            key=self._lease_key(soundtrack),
            where=self.uri(f"{self.prefix}{soundtrack}/"),
            lease_s=self._lease_s,
            error=self._error,
        )
        return lease.held(wait_s=wait_s, on_wait=on_wait)

    def has_soundtrack(self, soundtrack: str) -> bool:
        """Whether its lock is here: nothing else of it is left to finish (see `repair`)."""
        # Read, not a HEAD: a HEAD's 404 has no body, so a missing bucket read as no lock.
        return self.read_index(soundtrack) is not None

    def repair(self, soundtrack: str) -> list[str]:
        """Nothing to repair: assets are content-addressed and only the lock makes them current."""
        BUILD_TURNS.begin((self.endpoint, self.bucket, self._index_key(soundtrack)))
        return []

    def discard(self, soundtrack: str) -> None:
        """Nothing to drop (unreferenced assets are gc's to delete, proven ours by the journal);
        the build's turn ends: a lock write under way finishes first, and none starts after."""
        BUILD_TURNS.end((self.endpoint, self.bucket, self._index_key(soundtrack)))

    def check_access(self, soundtrack: str) -> None:
        """HEAD the bucket, then begin and abort a multipart upload in the soundtrack's folder:
        wrong credentials, read-only ones, a missing bucket or an unreachable endpoint fail
        here, before any GPU time is spent; no object is written (a version neither)."""
        doing = f"checking access to s3://{self.bucket}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
            # Read access passes the HEAD: a build then failed at its lease, in the flow.
            key = f"{self.prefix}{soundtrack}/.access-check"
            doing = f"checking that {self.uri(key)} can be written"
            upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _code(exc) == "404":
                # HEAD responses carry no error body, so a missing bucket is a bare 404.
                raise StorageError(
                    f"{doing}: bucket {self.bucket!r} does not exist at {self.endpoint}",
                    transient=False,
                ) from None
            error = self._error(doing, exc)
            if isinstance(exc, BotoConnectionError | HTTPClientError):
                # Before a build, an endpoint that does not answer is a setting to fix.
                raise StorageError(
                    f"{error} (is the endpoint URL right and the server running?)",
                    transient=False,
                ) from None
            raise error from None
        # Begun, it proved the key may write: one the abort leaves (a policy without
        # s3:AbortMultipartUpload, a lost reply) holds no part, and a bucket's rule for
        # incomplete uploads ends it.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
            )

    def _proves(self, record: str | None, head: HeadObjectOutputTypeDef, sha256: str) -> bool:
        """Whether journal `record` of `sha256` proves the object `head` describes ours: the
        server's checksum is that content's, or, for a multipart object, the composite recorded
        with it (its `sha256` metadata is anyone's to write)."""
        reported = head.get("ChecksumSHA256")
        if reported is None:
            return False
        if reported == _b64(bytes.fromhex(sha256)):
            return True
        if record is None:
            return False
        try:
            recorded = json.loads(self.read(record) or b"{}").get("checksum")
        except (ValueError, AttributeError, RecursionError):  # not a record this tool wrote
            return False
        return "-" in reported and recorded == reported

    def _record(self, key: str, sha256: str, checksum: str | None) -> None:
        """Put the journal record of `sha256` at `key`, with the server's checksum of it (a
        multipart object's composite), unless it is there; only after the object is verified,
        so a crash in between leaves it unprovable (kept by gc)."""
        record = self._record_key(key, sha256)
        if record is None or self._head(record) is not None:
            return
        body = json.dumps({"key": key, "sha256": sha256, "checksum": checksum}).encode()
        try:
            self._conditional_client.put_object(
                Bucket=self.bucket,
                Key=record,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ContentType="application/json",
            )
        except ClientError as exc:
            # The same record put by a concurrent build (or our own lost reply): the same bytes.
            if _code(exc) not in _ALREADY_WRITTEN_CODES:
                raise self._error(f"recording {self.uri(key)} in the journal", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"recording {self.uri(key)} in the journal", exc) from None

    def _record_key(self, key: str, sha256: str) -> str | None:
        """Where the journal records `sha256` at `key`; None for a key in no soundtrack."""
        relative = key.removeprefix(self.prefix) if key.startswith(self.prefix) else ""
        soundtrack = soundtrack_of(relative)
        if soundtrack is None:
            return None
        folder = f"{self.prefix}{soundtrack}/"
        return f"{folder}{JOURNAL_FOLDER}/{key.removeprefix(folder)}/{sha256}"

    def _recorded(self, folder: str, key: str) -> tuple[str, str] | None:
        """(object key, sha256) when `key` is a journal record of the soundtrack in `folder`."""
        journal = f"{folder}{JOURNAL_FOLDER}/"
        if not key.startswith(journal):
            return None
        relative, _, sha256 = key.removeprefix(journal).rpartition("/")
        if not relative or not _SHA256_HEX.fullmatch(sha256):
            return None
        return f"{folder}{relative}", sha256

    def _list(self, prefix: str) -> list[str]:
        found: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                found.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"listing {self.uri(prefix)}", exc) from None
        return found

    def _check_key(self, key: str) -> None:
        """InputError unless `key` is a plain key under the prefix: keys are whole object
        keys here, so one outside the prefix is outside this storage."""
        check_key(key, self.uri(self.prefix))
        if not key.startswith(self.prefix):
            raise InputError(
                f"storage key {key!r} must be a relative path inside {self.uri(self.prefix)}"
            )

    def _index_key(self, soundtrack: str) -> str:
        check_name("soundtrack", soundtrack)
        return f"{self.prefix}{soundtrack}/{INDEX_NAME}"

    def _lease_key(self, soundtrack: str) -> str:
        check_name("soundtrack", soundtrack)
        return f"{self.prefix}{soundtrack}/{LEASE_NAME}"

    def _head(self, key: str) -> HeadObjectOutputTypeDef | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey"):
                return None
            raise self._error(f"checking {self.uri(key)}", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"checking {self.uri(key)}", exc) from None

    def _take_existing(
        self,
        path: Path,
        key: str,
        head: HeadObjectOutputTypeDef,
        local: _LocalChecksums,
        extra_args: dict[str, Any],
    ) -> PublishedFile:
        """The object at `key` as the upload of `path`, when it holds the same bytes; journaled.
        One put back without a checksum (restored or copied by hand) proves nothing to the HEAD
        a later build makes, which then rendered its track again every time: the same bytes are
        put again, in one PUT with their checksum (one put back in other parts too)."""
        published = self._already_there(key, head, local)
        checksum = head.get("ChecksumSHA256")
        record = self._record_key(key, local.sha256)
        # Put back in other parts (a bucket restored or synced with another part size), its
        # composite is not the one recorded: no HEAD proved it again, and its track was
        # mastered again at every build. The same bytes are put again, in one PUT, as well.
        resplit = (
            checksum is not None
            and "-" in checksum
            and record is not None
            and self._head(record) is not None
            and not self._proves(record, head, local.sha256)
        )
        if checksum is None or resplit:
            whole = replace(local, expected=_b64(bytes.fromhex(local.sha256)))
            try:
                with path.open("rb") as body:
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra_args)
            except (ClientError, BotoCoreError, OSError) as exc:
                raise self._error(f"uploading {path.name} to {self.uri(key)}", exc) from None
            self._verify(key, whole)
            checksum = whole.expected
        self._record(key, local.sha256, checksum)
        return published

    def _already_there(
        self, key: str, head: HeadObjectOutputTypeDef, local: _LocalChecksums
    ) -> PublishedFile:
        """The object at `key`, when it holds the local file's bytes: by the server's checksum,
        or, where that cannot tell (a multipart object split otherwise, or none), by reading
        it (its `sha256` metadata is anyone's to write)."""
        reported = head.get("ChecksumSHA256")
        if head.get("ContentLength") == local.size and (
            reported in (_b64(bytes.fromhex(local.sha256)), local.expected)
            or ((reported is None or "-" in reported) and self._sha256_of(key) == local.sha256)
        ):
            return PublishedFile(key, self.uri(key), local.sha256, local.size, False)
        raise StorageError(
            f"{self.uri(key)} already exists with different content (server checksum "
            f"{head.get('ChecksumSHA256')!r}, {head.get('ContentLength')} bytes; expected "
            f"{local.expected!r}, {local.size} bytes): content-addressed objects are never "
            "overwritten; delete it or change the spec",
            transient=False,
        )

    def _sha256_of(self, key: str) -> str:
        digest = hashlib.sha256()
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(1024 * 1024):
                digest.update(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"reading {self.uri(key)}", exc) from None
        return digest.hexdigest()

    def _verify(self, key: str, local: _LocalChecksums) -> None:
        head = self._head(key)
        if head is None:
            raise StorageError(f"{self.uri(key)} is missing right after upload", transient=True)
        reported = head.get("ChecksumSHA256")
        if reported is None:
            raise StorageError(
                f"{self.endpoint} reported no SHA-256 checksum for {self.uri(key)}: the store "
                "must support S3 additional checksums (x-amz-checksum-sha256)",
                transient=False,
            )
        if reported != local.expected or head.get("ContentLength") != local.size:
            raise StorageError(
                f"{self.uri(key)} failed verification: server reports {reported!r}, "
                f"{head.get('ContentLength')} bytes; expected {local.expected!r}, "
                f"{local.size} bytes",
                transient=False,
            )

    def _checksums(self, path: Path) -> _LocalChecksums:
        """sha256 of the file and the checksum S3 will report: the plain one for a single PUT,
        else the composite sha256-of-part-sha256s + "-<parts>" for the part size s3transfer uses."""
        try:
            size = path.stat().st_size
            multipart = size >= self._transfer_config.multipart_threshold
            part_bytes = (
                ChunksizeAdjuster().adjust_chunksize(
                    self._transfer_config.multipart_chunksize, size
                )
                if multipart
                else max(size, 1)
            )
            whole = hashlib.sha256()
            part_digests: list[bytes] = []
            with path.open("rb") as handle:
                for part in iter(lambda: handle.read(part_bytes), b""):
                    whole.update(part)
                    part_digests.append(hashlib.sha256(part).digest())
        except OSError as exc:
            raise StorageError(
                f"cannot read {path}: {exc.strerror or exc}", transient=False
            ) from None
        if multipart:
            composite = hashlib.sha256(b"".join(part_digests)).digest()
            expected = f"{_b64(composite)}-{len(part_digests)}"
        else:
            expected = _b64(whole.digest())
        return _LocalChecksums(whole.hexdigest(), size, expected)

    def _error(self, doing: str, exc: Exception) -> StorageError:
        return storage_error(doing, exc, endpoint=self.endpoint, bucket=self.bucket)


def storage_error(doing: str, exc: Exception, *, endpoint: str, bucket: str) -> StorageError:
    """A StorageError that says what failed and whether a retry may help; never credentials."""
    error = _describe_error(doing, exc, endpoint=endpoint, bucket=bucket)
    # boto's own text (URLs, server messages) is quoted: redact whatever secret it might carry.
    return StorageError(redact(str(error)), transient=error.transient)


def _describe_error(doing: str, exc: Exception, *, endpoint: str, bucket: str) -> StorageError:
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _DENIED_CODES:
            return StorageError(
                f"{doing}: access denied by {endpoint} ({code}): check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket's "
                "permissions",
                transient=False,
            )
        if code in _NO_BUCKET_CODES:
            return StorageError(
                f"{doing}: bucket {bucket!r} does not exist at {endpoint}", transient=False
            )
        transient = code in _TRANSIENT_CODES or status >= 500
        detail = f"{code}: {message}" if message else code
        return StorageError(f"{doing}: {detail} (HTTP {status})", transient=transient)
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{doing}: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE with a profile in ~/.aws/credentials",
            transient=False,
        )
    if isinstance(exc, BotoConnectionError):
        return StorageError(f"{doing}: cannot reach {endpoint}: {exc}", transient=True)
    if isinstance(exc, HTTPClientError):
        # Closed mid-request or timed out reading (ConnectionClosedError, ReadTimeoutError): the
        # server may be restarting or behind a balancer; a later attempt may get through.
        return StorageError(f"{doing}: connection to {endpoint} lost: {exc}", transient=True)
    if isinstance(exc, FlexibleChecksumError):
        return StorageError(f"{doing}: corrupted in transit: {exc}", transient=True)
    if isinstance(exc, OSError):
        return StorageError(f"{doing}: {exc.strerror or exc}", transient=False)
    return StorageError(f"{doing}: {exc}", transient=False)


def _make_clients() -> tuple[S3Client, S3Client]:
    """Two S3 clients from the standard AWS environment and config files (endpoint included):
    a plain one, and one whose every PutObject / CompleteMultipartUpload carries
    If-None-Match: *, because s3transfer's upload does not accept IfNoneMatch (boto/boto3#4366)."""
    core = botocore.session.Session()
    try:
        core.get_scoped_config()
    except ProfileNotFound as exc:  # AWS_PROFILE naming no profile: a traceback from botocore
        raise InputError(
            f"AWS profile {exc.kwargs.get('profile')!r} (AWS_PROFILE or AWS_DEFAULT_PROFILE) is "
            "in no AWS config file (~/.aws/config, ~/.aws/credentials): name one that is"
        ) from None
    retries: dict[str, Any] = {}
    if core.get_config_variable("max_attempts") is None:
        retries["total_max_attempts"] = DEFAULT_MAX_ATTEMPTS
    config = Config(
        retries=retries,  # type: ignore[arg-type]
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        signature_version="s3v4",
    )
    session = boto3.Session(botocore_session=core)
    try:
        plain, conditional = (session.client("s3", config=config) for _ in range(2))
    except (ProfileNotFound, InvalidConfigError) as exc:  # a source_profile that is nowhere
        raise InputError(f"AWS config: {redact(str(exc))}") from None
    except ValueError as exc:
        if "@" in str(exc):
            # user:password@host without a scheme: redact() cannot tell the secret apart.
            raise _credentials_refused(None) from None
        # botocore's text quotes the endpoint, user info and all.
        raise InputError(
            f"S3 endpoint: {redact(str(exc))} (check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 or "
            "endpoint_url in the AWS config file)"
        ) from None
    _check_endpoint(plain.meta.endpoint_url)
    _check_credentials()
    credentials = core.get_credentials()  # the session's, resolved by client creation
    if credentials is not None:

        def remember_secrets(**_: Any) -> None:
            # At each signing, not once: role and SSO credentials are renewed during a long build.
            frozen = credentials.get_frozen_credentials()
            remember(frozen.secret_key, frozen.token)

        for client in (plain, conditional):
            client.meta.events.register("before-sign.s3", remember_secrets)
    for operation in ("PutObject", "CompleteMultipartUpload"):
        conditional.meta.events.register(f"before-parameter-build.s3.{operation}", _never_overwrite)
    return plain, conditional


def _check_credentials() -> None:
    """A key in the environment with a line break, a control character or a letter outside
    ASCII (a CI secret saved with its line end) fails every request, as "connection lost" or
    with botocore's traceback, and quoted: said here, without it. (A profile's file is read
    with its values trimmed.)"""
    named = (
        ("AWS_ACCESS_KEY_ID", "access key id"),
        ("AWS_SECRET_ACCESS_KEY", "secret access key"),
        ("AWS_SESSION_TOKEN", "session token"),
    )
    for variable, what in named:
        value = os.environ.get(variable)
        if not value or (value == value.strip() and value.isascii() and value.isprintable()):
            continue
        if variable != "AWS_ACCESS_KEY_ID":  # not a secret: presigned links carry it
            remember(value)
        raise InputError(
            f"the AWS {what} in {variable} holds a line break, a space at an end, or a "
            "character no request can carry: set it again without them (a secret saved with "
            "its line end?)"
        )


def _check_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        remember_url(url)
        raise _credentials_refused(_public_endpoint(url))
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InputError(
            f"invalid S3 endpoint URL {_public_endpoint(url)!r}: expected http(s)://host[:port] "
            "(check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 or endpoint_url in the AWS config file)"
        )
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        # Not shown: a query is where a token would travel.
        raise InputError(
            f"invalid S3 endpoint URL {_public_endpoint(url)!r} with a query or fragment (not "
            "shown): expected http(s)://host[:port] (check AWS_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL_S3 or endpoint_url in the AWS config file)"
        )
    if parts.path not in ("", "/"):
        # boto3 would take the path's first part for the bucket and put every key in it.
        raise InputError(
            f"invalid S3 endpoint URL {_public_endpoint(url)!r} with a path: expected "
            "http(s)://host[:port], the bucket named in the storage URL (check AWS_ENDPOINT_URL "
            "/ AWS_ENDPOINT_URL_S3 or endpoint_url in the AWS config file)"
        )


def _credentials_refused(public_endpoint: str | None) -> InputError:
    endpoint = f"S3 endpoint {public_endpoint!r}" if public_endpoint else "the S3 endpoint"
    return InputError(
        f"{endpoint} must not carry credentials (user:password@ in AWS_ENDPOINT_URL / "
        "AWS_ENDPOINT_URL_S3 or endpoint_url in the AWS config file): give them as "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or in an AWS profile (~/.aws/credentials, "
        "AWS_PROFILE)"
    )


def _public_endpoint(url: str) -> str:
    """The endpoint without any user:password@ part, query or fragment: safe to print."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host, query="", fragment="").geturl()


def _never_overwrite(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("IfNoneMatch", "*")


def _ascii_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {key: quote(value, safe=_METADATA_SAFE) for key, value in metadata.items()}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
