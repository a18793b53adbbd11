"""The S3 build lease: one build at a time per soundtrack, and a killed build's lease expires.

`<prefix>/<soundtrack>/.build-lease.json` names its holder (pid, host, start, a random build id,
the lease time, a count of its writes). A build takes it with PutObject If-None-Match: * and
renews it every third of the lease time with PutObject If-Match: <the ETag of its last write>;
the count makes every write's body, so its ETag, new. A lease not renewed for its lease time has
expired, judged on the server's clock alone (the object's Last-Modified against the Date of the
reply that carries it): a waiting build takes it over with If-Match: <its ETag>, and of several
racing one wins, the others get 412 and look again. A holder whose renewal gets 412 has lost the
lease, and this process then writes no lock for that soundtrack (S3Storage.write_index asks the
registry here, and renews once more right before writing). Release deletes the lease with
DeleteObject If-Match: <our ETag>, so one that another build took over stays.

AWS S3 has all three conditions (PutObject If-None-Match since 2024-08, If-Match since 2024-11,
DeleteObject If-Match since 2025-09); SeaweedFS, the tests' server, honours them atomically. A
store that answers 501 to a conditional delete gets GET, compare, then DELETE instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from soundtrack.errors import InputError, StorageBusy, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LEASE_NAME = ".build-lease.json"
LEASE_ENV = "SOUNDTRACK_S3_LEASE_S"
DEFAULT_LEASE_S = 60.0
# S3 times are whole seconds, so a lease's age is known to within about 1 s: a lease renewed
# every third of a shorter time could look expired to another build while its holder lives.
MIN_LEASE_S = 3.0
# A killed build blocks the next for its lease time: a day's is already no lease but a stop.
MAX_LEASE_S = 3600.0
POLL_S = 1.0
# Creates refused while no lease can be read: past a few, the key is one no lease can be
# written at (a "folder" there, on stores such as SeaweedFS), not a lease released meanwhile.
_UNWRITABLE_TRIES = 5
# HTTP statuses, which every S3-compatible store agrees on where error codes vary. A write's
# condition failed: 412, or 404 (AWS's answer to If-Match when the key is gone), or 409 (AWS:
# another conditional write to the key is in progress).
_LOST_RACE = {404, 409, 412}
_MISSING = 404
_NOT_IMPLEMENTED = 501

log = logging.getLogger(__name__)

# The leases this process holds, by (endpoint, bucket, key): the lock is written through another
# S3Storage (a task's), which must still see that its build's lease was lost.
_held: dict[tuple[str, str, str], Lease] = {}
_held_guard = threading.Lock()


def lease_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The lease time: $SOUNDTRACK_S3_LEASE_S, else DEFAULT_LEASE_S; InputError when invalid."""
    raw = environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and MIN_LEASE_S <= value <= MAX_LEASE_S):
        raise InputError(
            f"{LEASE_ENV} must be a number of seconds from {MIN_LEASE_S:g} to {MAX_LEASE_S:g} "
            f"(how long a killed build's S3 lease blocks the next build), got {raw!r}"
        )
    return value


def held_lease(endpoint: str, bucket: str, key: str) -> Lease | None:
    """The lease at `key` this process holds, if any."""
    with _held_guard:
        return _held.get((endpoint, bucket, key))


@dataclass(frozen=True)
class _Seen:
    """The lease object as one GET found it."""

    etag: str
    body: dict[str, Any]
    age_s: float  # since its last write, by the server's clock


class Lease:
    """One build's lease at `key`: `held()` takes it, renews it in the background, releases it."""

    def __init__(
        self,
        client: S3Client,
        *,
        endpoint: str,
        bucket: str,
        key: str,
        where: str,
        lease_s: float,
        error: Callable[[str, Exception], StorageError],
    ) -> None:
        self._client = client
        self._id = (endpoint, bucket, key)
        self.bucket, self.key, self.where, self.lease_s = bucket, key, where, lease_s
        self._error = error
        self._me: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "build": secrets.token_hex(16),
            "lease_s": lease_s,
        }
        self._writes = 0
        self._etag = ""
        self.lost = False
        self._guard = threading.Lock()  # one write of the lease at a time: renewer or confirm
        self._stop = threading.Event()

    @contextmanager
    def held(self, *, wait_s: float, on_wait: Callable[[str], None]) -> Iterator[None]:
        """Hold the lease (waiting up to `wait_s`), renewed until the block ends; then release."""
        self._acquire(wait_s, on_wait)
        with _held_guard:
            _held[self._id] = self
        renewer = threading.Thread(
            target=self._renew_until_stopped, name=f"lease {self.key}", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(self._id, None)
            self._stop.set()
            renewer.join()  # a renewal in flight would change the ETag the delete names
            try:
                self._release()
            except StorageError as exc:
                log.warning(
                    "%s: the build lease was not released (%s); it expires %g s after its "
                    "last renewal",
                    self.where,
                    exc,
                    self.lease_s,
                )

    def confirm(self, holder: str, refused: str) -> None:
        """Renew now, so the lease is ours for another lease time; StorageError if it was lost,
        saying `holder` (this build) lost it and so `refused` (it does not write the lock)."""
        self._renew()
        if self.lost:
            raise StorageError(
                f"{self.where}: {holder} lost its build lease (not renewed for {self.lease_s:g} "
                f"s, another build took it over), so {refused}",
                transient=False,
            )

    def _acquire(self, wait_s: float, on_wait: Callable[[str], None]) -> None:
        deadline: float | None = None
        unreadable = 0
        while True:
            if self._write(IfNoneMatch="*"):
                return
            seen = self._read()
            if seen is None:
                unreadable += 1
                if unreadable >= _UNWRITABLE_TRIES:
                    raise StorageError(
                        f"{self.where}: the build lease {self.key} can be neither created nor "
                        "read: is there a folder of that name? Remove what lies under it",
                        transient=False,
                    )
                # Released since our write, most likely: try again (at once, the first time).
                time.sleep(0 if unreadable == 1 else POLL_S)
                continue
            unreadable = 0  # only refusals in a row say the key is no lease's
            if self._adopt(seen):
                return  # our own create, whose reply was lost and which a retry then repeated
            holder = _holder(seen.body)
            held_for_s = _lease_of(seen.body, self.lease_s)
            if seen.age_s > held_for_s:
                if self._write(IfMatch=seen.etag):
                    log.warning(
                        "%s: took over the build lease of %s, not renewed for %.0f s (its "
                        "lease: %g s)",
                        self.where,
                        holder,
                        seen.age_s,
                        held_for_s,
                    )
                    return
                continue  # another build took it over first, or its holder renewed it
            if deadline is None:
                # The wait counts from the first sight of the holder: a slow first look (a
                # client's start, a busy server) is not time the user was told it would wait.
                deadline = time.monotonic() + wait_s
                if wait_s > 0:
                    on_wait(f"{self.where} is being built by {holder}: waiting up to {wait_s:g} s")
            if time.monotonic() >= deadline:
                raise StorageBusy(f"{self.where} is being built by {holder}; waited {wait_s:g} s")
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._renew()
            except StorageError as exc:
                # The next renewal may get through; the lease stays ours until another takes it.
                log.warning("%s: renewing the build lease failed: %s", self.where, exc)
            if self.lost:
                log.error(
                    "%s: another build took over this build's lease; this build will not "
                    "write the lock",
                    self.where,
                )
                return

    def _renew(self) -> None:
        with self._guard:
            if self.lost or self._write(IfMatch=self._etag):
                return
            seen = self._read()
            self.lost = seen is None or not self._adopt(seen)

    def _release(self) -> None:
        with self._guard:
            if self.lost:
                return
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except ClientError as exc:
                status = _status(exc)
                if status in (412, _MISSING):
                    return  # gone, or another build's now
                if status != _NOT_IMPLEMENTED:
                    raise self._error(f"releasing the build lease {self.where}", exc) from None
                seen = self._read()
                if seen is not None and seen.etag == self._etag:
                    self._delete_unconditionally()
            except BotoCoreError as exc:
                raise self._error(f"releasing the build lease {self.where}", exc) from None

    def _delete_unconditionally(self) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"releasing the build lease {self.where}", exc) from None

    def _write(self, **condition: str) -> bool:
        """Put our next body under `condition`: False when the condition failed."""
        self._writes += 1
        body = json.dumps({**self._me, "writes": self._writes}, sort_keys=True).encode()
        try:
            reply = self._client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=body,
                ContentType="application/json",
                **condition,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if _status(exc) in _LOST_RACE:
                return False
            raise self._error(f"writing the build lease {self.where}", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"writing the build lease {self.where}", exc) from None
        self._etag = reply["ETag"]
        return True

    def _adopt(self, seen: _Seen) -> bool:
        """True, taking its ETag, when the lease there was written by this build: a write whose
        reply was lost is retried by botocore, and the retry's condition then fails."""
        if seen.body.get("build") != self._me["build"]:
            return False
        self._etag = seen.etag
        return True

    def _read(self) -> _Seen | None:
        """The lease object and its age by the server's clock, or None when there is none."""
        doing = f"reading the build lease {self.where}"
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self.key)
            data = reply["Body"].read()
        except ClientError as exc:
            if _status(exc) == _MISSING:
                return None
            raise self._error(doing, exc) from None
        except BotoCoreError as exc:
            raise self._error(doing, exc) from None
        date = reply["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        if not date:
            raise StorageError(
                f"{doing}: the server sent no Date header, so the lease's age cannot be judged "
                "by its clock",
                transient=False,
            )
        age_s = (parsedate_to_datetime(date) - reply["LastModified"]).total_seconds()
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            body = None
        return _Seen(reply["ETag"], body if isinstance(body, dict) else {}, age_s)


def _holder(body: Mapping[str, Any]) -> str:
    if not all(isinstance(body.get(name), str | int) for name in ("pid", "host", "started")):
        return "another build"
    return f"process {body['pid']} on {body['host']} since {body['started']}"


def _lease_of(body: Mapping[str, Any], default_s: float) -> float:
    """The holder's own lease time: a build with a longer one is not cut short by ours; one
    past any build's (a lease left by hand) ends when the longest would."""
    value = body.get("lease_s")
    if isinstance(value, int | float) and value > 0:  # NaN is not
        return min(float(value), MAX_LEASE_S)
    return default_s


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
