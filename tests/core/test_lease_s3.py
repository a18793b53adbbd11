"""The S3 build lease against a real SeaweedFS server: one build at a time per soundtrack, a
second waits or gets StorageBusy naming the holder, renewal keeps the lease, a killed holder's
lease expires within about its lease time, and a build that lost its lease writes no lock."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from soundtrack.errors import InputError, StorageBusy, StorageError
from soundtrack.storage.lease import (
    DEFAULT_LEASE_S,
    LEASE_ENV,
    LEASE_NAME,
    MAX_LEASE_S,
    _lease_of,
    lease_seconds,
)
from soundtrack.storage.s3 import S3Storage
from tests.core.test_publishing import recordings
from tests.corebuild import second_waits_for_first
from tests.reference import ebur128
from tests.s3server import SeaweedServer

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "games"
SOUNDTRACK = "sky"
LEASE_S = 6.0  # renewed every 2 s: a holder stalled on a busy machine keeps its lease

# Holds the lease of `sky` in s3://BUCKET/games in a process of its own, says "held", and on a
# line from stdin ("write" or empty) writes a lock the way a build's task does (through another
# S3Storage), then releases the lease.
HOLDER = """
import sys
from soundtrack.errors import StorageError
from soundtrack.storage.s3 import S3Storage
bucket, prefix = sys.argv[1], sys.argv[2]
def storage():
    return S3Storage(f"s3://{bucket}/{prefix}", bucket, prefix)
with storage().hold("sky", wait_s=0, on_wait=print):
    print("held", flush=True)
    command = sys.stdin.readline().strip()
    try:
        if command == "write":
            storage().write_index("sky", b'{"tracks": [], "by": "holder"}')
        elif command == "delete":  # as gc --delete does, holding the lease
            storage().delete([f"{prefix}/sky/theme/old.ogg"])
    except StorageError as exc:
        print(f"refused: {exc}", flush=True)
        sys.exit(3)
    print("done", flush=True)
"""


def storage(bucket: str) -> S3Storage:
    return S3Storage(f"s3://{bucket}/{PREFIX}", bucket, PREFIX)


@pytest.fixture
def lease_env(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, and a short lease for this process and the holders it starts."""
    monkeypatch.setenv(LEASE_ENV, f"{LEASE_S:g}")
    return s3_bucket


@pytest.fixture
def holder(lease_env: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Starts a HOLDER process, returning once it holds the lease; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, lease_env, PREFIX],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "held\n", (line, child.stderr.read() if child.stderr else "")
        return child

    yield start
    for child in started:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.communicate()


def say(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(f"{line}\n")
    child.stdin.flush()


def holder_text(bucket: str, pid: int) -> str:
    """How a waiting build names the holder, up to its start time."""
    where = f"s3://{bucket}/{PREFIX}/{SOUNDTRACK}/"
    return f"{where} is being built by process {pid} on {socket.gethostname()} since "


def lease_age_s(server: SeaweedServer, bucket: str) -> float:
    """Seconds since the lease object was last written, by the server's clock."""
    from email.utils import parsedate_to_datetime

    reply = server.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{SOUNDTRACK}/{LEASE_NAME}")
    date = parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
    return (date - reply["LastModified"]).total_seconds()


@pytest.mark.parametrize("raw", ["0", "2.5", "-5", "nan", "inf", "3601", "a minute", "60s"])
def test_a_lease_time_that_is_not_3_seconds_to_an_hour_is_refused(raw: str) -> None:
    with pytest.raises(InputError) as caught:
        lease_seconds({LEASE_ENV: raw})
    assert str(caught.value) == (
        f"{LEASE_ENV} must be a number of seconds from 3 to 3600 (how long a killed build's S3 "
        f"lease blocks the next build), got {raw!r}"
    )


def test_the_lease_time_defaults_to_a_minute_and_is_read_from_the_environment() -> None:
    assert lease_seconds({}) == DEFAULT_LEASE_S == 60
    assert lease_seconds({LEASE_ENV: " "}) == DEFAULT_LEASE_S
    assert lease_seconds({LEASE_ENV: "4.5"}) == 4.5
    assert lease_seconds({LEASE_ENV: "3600"}) == MAX_LEASE_S


def test_a_lease_left_by_hand_with_no_end_ends_when_the_longest_lease_would() -> None:
    """A lease object whose lease time was 1e300 s stopped every build for good; a holder's
    longer lease than ours is still waited for."""
    assert _lease_of({"lease_s": 1e300}, DEFAULT_LEASE_S) == MAX_LEASE_S
    assert _lease_of({"lease_s": float("inf")}, DEFAULT_LEASE_S) == MAX_LEASE_S
    assert _lease_of({"lease_s": 90}, DEFAULT_LEASE_S) == 90
    assert _lease_of({"lease_s": float("nan")}, DEFAULT_LEASE_S) == DEFAULT_LEASE_S


def test_a_folder_at_the_leases_name_is_an_error_naming_it_not_a_wait_for_ever(
    lease_env: str, s3_server: SeaweedServer
) -> None:
    """SeaweedFS refuses to create the lease over a "folder" of its name, yet finds no lease
    there: the build spun at full speed, past --storage-wait-s, for ever."""
    key = f"{PREFIX}/{SOUNDTRACK}/{LEASE_NAME}"
    s3_server.client().put_object(Bucket=lease_env, Key=f"{key}/left-there", Body=b"x")
    started = time.monotonic()
    with (
        pytest.raises(StorageError, match=f"the build lease {key} can be neither created nor"),
        storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=print),
    ):
        pytest.fail("a lease was taken over a folder")
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_second_build_waits_and_gets_the_lease_when_the_first_releases_it(
    holder: Callable[[], subprocess.Popen[str]], lease_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = holder()
    said: list[str] = []
    # The release is timed from the moment the second build says it waits: timed from before
    # its first attempt, a busy machine could let the holder go before the second ever saw it.
    release = threading.Timer(1.0, say, (first, ""))
    began: list[float] = []

    def waiting(line: str) -> None:
        said.append(line)
        began.append(time.monotonic())
        release.start()

    try:
        with storage(lease_env).hold(SOUNDTRACK, wait_s=30, on_wait=waiting):
            assert said, "the second build took the lease without waiting for its holder"
            waited_s = time.monotonic() - began[0]
            assert first.wait(timeout=10) == 0, first.communicate()
    finally:
        release.cancel()
    assert len(said) == 1, said
    assert said[0].startswith(holder_text(lease_env, first.pid)), said
    assert said[0].endswith(": waiting up to 30 s"), said
    # Released 1 s after the wait began and seen at a poll (each second), not taken over; the
    # bound leaves a busy machine seconds for the holder's release and the next poll.
    assert 1.0 <= waited_s < 12, waited_s
    assert "took over" not in caplog.text


@pytest.mark.slow
def test_a_build_that_cannot_wait_longer_gets_storage_busy_naming_the_holder(
    holder: Callable[[], subprocess.Popen[str]], lease_env: str
) -> None:
    first = holder()
    said: list[str] = []
    told: list[float] = []

    def waiting(line: str) -> None:
        said.append(line)
        told.append(time.monotonic())

    # However long the first look at the lease takes (a busy machine: seconds), the wait it
    # announces is the wait it does.
    with (
        pytest.raises(StorageBusy) as busy,
        storage(lease_env).hold(SOUNDTRACK, wait_s=1.5, on_wait=waiting),
    ):
        pytest.fail("the lease was taken while its holder was alive")
    waited_s = time.monotonic() - told[0]
    assert str(busy.value).startswith(holder_text(lease_env, first.pid))
    assert str(busy.value).endswith("; waited 1.5 s")
    assert len(said) == 1, said
    assert said[0].endswith(": waiting up to 1.5 s"), said
    assert 1.5 <= waited_s < 1.5 + 4, waited_s  # its last poll, and a busy machine's slack
    assert first.poll() is None, "the holder is unaffected"


@pytest.mark.slow
def test_a_killed_holder_blocks_the_next_build_for_at_most_about_the_lease_time(
    holder: Callable[[], subprocess.Popen[str]],
    lease_env: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease_s = 4.0
    monkeypatch.setenv(LEASE_ENV, f"{lease_s:g}")
    first = holder()
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    with storage(lease_env).hold(SOUNDTRACK, wait_s=30, on_wait=lambda _: None):
        waited_s = time.monotonic() - killed
    # Its last renewal was at most lease/3 before the kill, and S3 times are whole seconds (so
    # an age is known to 1 s): taken over no sooner than lease - lease/3 - 1 s after the kill,
    # and no later than lease + 2 s plus one poll (1 s) and a busy machine's requests (3 s):
    # about the lease time, not the minute of the default.
    assert lease_s - lease_s / 3 - 1 <= waited_s <= lease_s + 6, waited_s
    assert f"took over the build lease of process {first.pid} on " in caplog.text


@pytest.mark.slow
def test_renewal_keeps_the_lease_past_its_lease_time_while_the_build_runs(
    s3_env: SeaweedServer, lease_env: str
) -> None:
    with storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None):
        time.sleep(LEASE_S * 1.5)
        assert lease_age_s(s3_env, lease_env) < LEASE_S
        with (
            pytest.raises(StorageBusy, match=f"being built by process {os.getpid()} on "),
            storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None),
        ):
            pytest.fail("a renewed lease was taken")
    # Released: nothing left to wait for.
    keys = s3_env.client().list_objects_v2(Bucket=lease_env).get("KeyCount")
    assert keys == 0
    with storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None):
        pass


def test_a_holder_that_ends_before_it_sees_its_lease_taken_leaves_the_new_holders_lease(
    s3_env: SeaweedServer, lease_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build stalled past its lease time that ends before a renewal tells it the lease was
    taken over: deleting the new holder's lease would let a third build run beside it."""
    monkeypatch.setenv(LEASE_ENV, "60")  # no renewal within the test tells it first
    client = s3_env.client()
    key = f"{PREFIX}/{SOUNDTRACK}/{LEASE_NAME}"
    theirs = json.dumps(
        {"build": "b", "pid": 1, "host": "elsewhere", "started": "x", "lease_s": 60}
    )
    with storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None):
        client.put_object(Bucket=lease_env, Key=key, Body=theirs.encode())  # taken over
    assert client.get_object(Bucket=lease_env, Key=key)["Body"].read() == theirs.encode()
    with (
        pytest.raises(StorageBusy, match="being built by process 1 on elsewhere"),
        storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None),
    ):
        pytest.fail("a third build got the lease")


@pytest.mark.slow
def test_a_build_that_lost_its_lease_writes_no_lock_and_leaves_the_new_holders_lease(
    holder: Callable[[], subprocess.Popen[str]], lease_env: str, s3_env: SeaweedServer
) -> None:
    first = holder()
    os.kill(first.pid, signal.SIGSTOP)  # a stalled build: its renewals stop, its lease expires
    ours = storage(lease_env)
    with ours.hold(SOUNDTRACK, wait_s=30, on_wait=lambda _: None):
        os.kill(first.pid, signal.SIGCONT)
        say(first, "write")
        out, err = first.communicate(timeout=30)
        assert first.returncode == 3, (out, err)
        assert out.startswith(
            f"refused: s3://{lease_env}/{PREFIX}/{SOUNDTRACK}/: this build lost its build lease "
            f"(not renewed for {LEASE_S:g} s, another build took it over), so it does not write "
            "the lock: the other build's publish stands"
        ), out
        assert ours.read_index(SOUNDTRACK) is None
        # Its release left our lease alone: still ours, and our lock goes through.
        with (
            pytest.raises(StorageBusy, match=f"being built by process {os.getpid()} on "),
            storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None),
        ):
            pytest.fail("the lease was taken from its holder")
        storage(lease_env).write_index(SOUNDTRACK, b'{"tracks": [], "by": "us"}')
    assert json.loads(ours.read_index(SOUNDTRACK) or b"")["by"] == "us"


@pytest.mark.slow
def test_a_gc_that_lost_its_lease_deletes_nothing_the_new_holder_may_use(
    holder: Callable[[], subprocess.Popen[str]], lease_env: str, s3_env: SeaweedServer
) -> None:
    """gc --delete holds the lease while it deletes; stalled past the lease time, a build that
    took over may publish a lock reusing a file gc found unreferenced: gc then deleted it."""
    first = holder()
    os.kill(first.pid, signal.SIGSTOP)
    key = f"{PREFIX}/{SOUNDTRACK}/theme/old.ogg"
    client = s3_env.client()
    with storage(lease_env).hold(SOUNDTRACK, wait_s=30, on_wait=lambda _: None):
        client.put_object(Bucket=lease_env, Key=key, Body=b"reused by the new lock")
        os.kill(first.pid, signal.SIGCONT)
        say(first, "delete")
        out, err = first.communicate(timeout=30)
    assert first.returncode == 3, (out, err)
    assert out.startswith(
        f"refused: s3://{lease_env}/{PREFIX}/{SOUNDTRACK}/: this gc lost its build lease"
    ), out
    assert "it deletes nothing more" in out
    assert client.get_object(Bucket=lease_env, Key=key)["Body"].read() == b"reused by the new lock"


@pytest.mark.slow
def test_gc_neither_deletes_nor_lists_the_lease_of_a_build_in_progress(lease_env: str) -> None:
    store = storage(lease_env)
    store.write_index(SOUNDTRACK, b'{"tracks": []}')
    with store.hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None):
        garbage = store.unreferenced(SOUNDTRACK)
    assert garbage.ours == [] and garbage.kept == []


MANIFEST = """\
schema: 1
soundtrack: sky
storage: s3://{bucket}/games
defaults:
  loudness: {{integrated: {lufs}, true_peak: -1, tolerance: 1}}
  formats: [ogg, mp3]
tracks:
{tracks}"""


@pytest.mark.slow
def test_a_second_build_into_s3_waits_for_the_first_and_the_lock_matches_every_object(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough that the first build's lease outlives its SIGSTOP below, however slowly the
    # second build starts; nothing is killed here, so nothing waits for it to expire.
    monkeypatch.setenv(LEASE_ENV, "600")
    client = s3_env.client()
    tracks = recordings(tmp_path, 4)
    for name, lufs in (("a", -24), ("b", -20)):
        manifest = MANIFEST.format(bucket=s3_bucket, lufs=lufs, tracks=tracks)
        (tmp_path / f"{name}.yaml").write_text(manifest)

    def published() -> list[str]:
        listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{PREFIX}/{SOUNDTRACK}/")
        keys = [obj["Key"] for obj in listed.get("Contents", [])]
        return [key for key in keys if key.endswith(".ogg") and "/.journal/" not in key]

    lock_key = f"{PREFIX}/{SOUNDTRACK}/soundtrack.lock.json"
    second_waits_for_first(
        tmp_path / "a.yaml",
        tmp_path / "b.yaml",
        published_some=published,
        lock_written=lambda: (
            client.list_objects_v2(Bucket=s3_bucket, Prefix=lock_key)["KeyCount"] > 0
        ),
    )

    lock = json.loads(client.get_object(Bucket=s3_bucket, Key=lock_key)["Body"].read())
    assert {t["status"] for t in lock["tracks"]} == {"approved"}
    assert len(lock["tracks"]) == 4
    for track in lock["tracks"]:
        assert {f["format"] for f in track["files"]} == {"ogg", "mp3"}
        for entry in track["files"]:
            served = client.get_object(Bucket=s3_bucket, Key=entry["key"])["Body"].read()
            assert hashlib.sha256(served).hexdigest() == entry["sha256"], entry["key"]
            if entry["format"] == "ogg":
                path = tmp_path / "served.ogg"
                path.write_bytes(served)
                lufs, _ = ebur128(path)
                # The second build's loudness: it published after the first, whole.
                assert abs(lufs - -20.0) <= 1.0, (track["id"], lufs)
    remaining = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{PREFIX}/{SOUNDTRACK}/")
    assert f"{PREFIX}/{SOUNDTRACK}/{LEASE_NAME}" not in {
        obj["Key"] for obj in remaining.get("Contents", [])
    }, "both builds released the lease"


def test_a_stopped_build_writes_no_lock_after_it_let_go_of_the_lease(
    lease_env: str, s3_server: SeaweedServer
) -> None:
    """Ctrl-C while the lock was being written: the build let go of its lease while its task's
    thread went on, and put the lock after another build (or gc --delete) had taken over."""
    key = f"{PREFIX}/{SOUNDTRACK}/soundtrack.lock.json"
    with storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=print):
        storage(lease_env).repair(SOUNDTRACK)
        storage(lease_env).discard(SOUNDTRACK)  # the stopped build's main thread
    with pytest.raises(StorageError, match="stopped before its lock was written"):
        storage(lease_env).write_index(SOUNDTRACK, b'{"tracks": []}')  # its task's, late
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=lease_env, Prefix=key)

    with storage(lease_env).hold(SOUNDTRACK, wait_s=0, on_wait=print):
        storage(lease_env).repair(SOUNDTRACK)  # the next build
        storage(lease_env).write_index(SOUNDTRACK, b'{"tracks": []}')
    assert s3_server.client().get_object(Bucket=lease_env, Key=key)["Body"].read() == (
        b'{"tracks": []}'
    )
