"""End to end: `soundtrack build` publishing to a real S3 server (SeaweedFS), issue 6.

Each property is judged by the server's own answers (its SHA-256 checksums, the bytes it serves,
its listing) and by the proxy's log of what went over the wire, not by what the build reports.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from soundtrack.storage.base import REVIEW_NAME
from soundtrack.storage.lease import LEASE_NAME
from tests.faultproxy import FaultProxy, Seen
from tests.prefect_server import PrefectServer
from tests.publishing import track_entries
from tests.running import build, statuses
from tests.s3server import SeaweedServer, free_ports

pytestmark = pytest.mark.slow
INDEX = "soundtrack.lock.json"


def manifest(
    soundtrack: str, track_ids: list[str], storage: str = "./out", model: str | None = None
) -> str:
    tracks = "".join(
        f"  - id: {track_id}\n    prompt: {track_id}, strings and taiko\n    seed: {n}\n"
        for n, track_id in enumerate(track_ids)
    )
    model_line = f"model: {model}, " if model else ""
    return (
        f"schema: 1\nsoundtrack: {soundtrack}\nstorage: {storage}\n"
        f"defaults: {{{model_line}duration: 4, formats: [ogg, mp3]}}\ntracks:\n{tracks}"
    )


def lock_entries(lock: dict[str, Any]) -> list[dict[str, Any]]:
    """Every published file the lock lists: each track's audio files, sidecar and picture."""
    return [entry for track in lock["tracks"] for entry in track_entries(track)]


def published(key: str) -> bool:
    """Not one of the build's own records: the write journal's, the build lease, the review
    page written after the lock (docs/storage.md, docs/review.md), or the access check's
    upload, begun and aborted (it writes nothing)."""
    records = (f"/{LEASE_NAME}", f"/{REVIEW_NAME}", "/.access-check")
    return "/.journal/" not in key and not key.endswith(records)


def listed(client: Any, bucket: str) -> set[str]:
    """Object keys in the bucket that a build published."""
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    return {key for key in keys if published(key)}


def written_keys(proxy: FaultProxy, bucket: str) -> list[str]:
    """Keys of every PUT/POST of a published object that reached the server, in order (upload
    parts included)."""
    return [
        r.path.removeprefix(f"/{bucket}/")
        for r in proxy.requests
        if r.method in ("PUT", "POST")
        and r.fate in ("forward", "lost_response")
        and published(r.path)
    ]


def assert_every_object_verifies(client: Any, bucket: str, lock: dict[str, Any]) -> None:
    """Each file the lock lists is on the server with exactly the lock's sha256: by the server's
    stored checksum, by the sha256 metadata written with it, and by hashing what it serves."""
    entries = lock_entries(lock)
    assert entries, "the lock lists no files: nothing below would be checked"
    for entry in entries:
        head = client.head_object(Bucket=bucket, Key=entry["key"], ChecksumMode="ENABLED")
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == entry["sha256"], entry["key"]
        assert head["Metadata"]["sha256"] == entry["sha256"]
        assert head["ContentLength"] == entry["bytes"]
        content_types = {
            "ogg": "audio/ogg",
            "mp3": "audio/mpeg",
            "json": "application/json",
            "png": "image/png",
        }
        assert head["ContentType"] == content_types[entry["format"]]
        body = client.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry["key"]
        assert entry["uri"] == f"s3://{bucket}/{entry['key']}"


def urllib_get(link: str) -> bytes:
    """Fetch a presigned link with no credentials at all."""
    import urllib.request

    with urllib.request.urlopen(link, timeout=30) as reply:
        data: bytes = reply.read()
        return data


def prefect_records(api_url: str, since: datetime) -> tuple[list[str], list[str], list[str]]:
    """JSON of the build flow runs created since `since` (parameters included), of their logs,
    and of their artifacts, as the Prefect server stores them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = [
            run
            for run in client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["build-soundtrack"]))
            )
            if run.created is not None and run.created >= since
        ]
        ids = [run.id for run in runs]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))) if ids else []
        artifacts = (
            client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
            if ids
            else []
        )
    return (
        [run.model_dump_json() for run in runs],
        [log.model_dump_json() for log in logs],
        [artifact.model_dump_json() for artifact in artifacts],
    )


def build_runs_since(api_url: str, since: datetime) -> int:
    return len(prefect_records(api_url, since)[0])


@pytest.fixture
def project(
    tmp_path: Path, tiny_model_dir: Path, prefect_server: PrefectServer, aws_isolated: Path
) -> tuple[Path, dict[str, str], list[str]]:
    """A work folder, the environment of a `soundtrack build` subprocess (Prefect server, own
    caches, no AWS setting from the developer's machine) and the common arguments."""
    env = {
        **os.environ,
        **prefect_server.env,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "SOUNDTRACK_CACHE_DIR": str(tmp_path / "cache"),
        # A build that lost its server cannot release its lease; the rerun waits this long.
        "SOUNDTRACK_S3_LEASE_S": "5",
    }
    return tmp_path, env, ["--model", str(tiny_model_dir), "--report", "report.json"]


def test_build_publishes_verified_files_and_a_rebuild_uploads_nothing(
    project: Any, s3_server: SeaweedServer, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    bucket = s3_server.create_bucket()
    (workdir / "m.yaml").write_text(manifest("s3-e2e", ["title-theme", "credits"]))
    client = s3_server.client()
    since = datetime.now(UTC)
    outputs: list[str] = []

    with FaultProxy(s3_server.ports["s3.port"]) as proxy:
        # --out wins over SOUNDTRACK_STORAGE, which wins over the manifest's `storage`.
        env = {
            **env,
            **s3_server.aws_env(),
            "AWS_ENDPOINT_URL_S3": proxy.endpoint,
            "SOUNDTRACK_STORAGE": str(workdir / "from-env"),
        }
        url = f"s3://{bucket}/games"
        first = build(workdir, env, *args, "--out", url, "--junit", "junit.xml")
        assert first.returncode == 0, first.stdout + first.stderr
        first_writes = written_keys(proxy, bucket)
        first_puts = [r for r in proxy.requests if r.method == "PUT" and published(r.path)]
        report = json.loads((workdir / "report.json").read_text())
        presigned = [entry["url"] for entry in lock_entries(report)]
        served = [urllib_get(link) for link in presigned]
        outputs += [first.stdout, first.stderr, (workdir / "report.json").read_text()]
        outputs.append((workdir / "junit.xml").read_text())

        # 1. Every approved file, then the index, is on the server with the lock's checksums.
        assert statuses(report) == {"title-theme": "approved", "credits": "approved"}
        assert report["storage"] == url and not (workdir / "from-env").exists()
        index_key = f"games/s3-e2e/{INDEX}"
        lock_bytes = client.get_object(Bucket=bucket, Key=index_key)["Body"].read()
        lock = json.loads(lock_bytes)
        outputs.append(lock_bytes.decode())
        assert statuses(lock) == statuses(report)
        entries = lock_entries(lock)
        assert len(entries) == 8  # OGG, MP3, the sidecar and the picture of each track
        assert all(e["url"] is None for e in entries), "the lock keeps no short-lived links"
        for track in lock["tracks"]:
            for entry in [*track["files"], track["sidecar"], track["picture"]]:
                name = f"{track['spec_hash']}.{entry['sha256'][:16]}.{entry['format']}"
                assert entry["key"] == f"games/s3-e2e/{track['id']}/{name}"
        assert listed(client, bucket) == {e["key"] for e in entries} | {index_key}
        assert_every_object_verifies(client, bucket, lock)
        assert [hashlib.sha256(body).hexdigest() for body in served] == [
            e["sha256"] for e in lock_entries(report)
        ], "the report's presigned links serve the published bytes"
        # Each asset went over the wire once, conditionally and with its checksum; index last.
        assert sorted(first_writes[:-1]) == sorted(e["key"] for e in entries)
        assert first_writes[-1] == index_key
        assert all(r.headers.get("x-amz-checksum-sha256") for r in first_puts)
        assert all(r.headers.get("if-none-match") == "*" for r in first_puts[:-1])
        junit = ET.parse(workdir / "junit.xml").getroot()
        assert junit.get("tests") == "2" and junit.get("failures") == "0"

        # 2. The same build again uploads no asset; only the index is rewritten.
        assets_before = {
            key: client.head_object(Bucket=bucket, Key=key)["LastModified"]
            for key in listed(client, bucket) - {index_key}
        }
        proxy.requests.clear()
        second = build(workdir, env, *args, "--out", url)
        assert second.returncode == 0, second.stdout + second.stderr
        outputs += [second.stdout, second.stderr, (workdir / "report.json").read_text()]
        assert written_keys(proxy, bucket) == [index_key]
        # A cached track's files are linked too (its record comes from the lock, which keeps
        # no links: the report had none for them).
        cached = lock_entries(json.loads((workdir / "report.json").read_text()))
        assert [hashlib.sha256(urllib_get(e["url"])).hexdigest() for e in cached] == [
            e["sha256"] for e in cached
        ]
    again = json.loads((workdir / "report.json").read_text())
    assert statuses(again) == {"title-theme": "cached", "credits": "cached"}
    assert again["model_loads"] == 0
    new_lock = json.loads(client.get_object(Bucket=bucket, Key=index_key)["Body"].read())
    assert lock_entries(new_lock) == entries
    assert {
        key: client.head_object(Bucket=bucket, Key=key)["LastModified"] for key in assets_before
    } == assets_before

    # 3. The secret key appears in nothing the builds produced, on disk or on the Prefect server.
    runs, logs, artifacts = prefect_records(prefect_server.api_url, since)
    assert len(runs) == 2 and any("index written" in log for log in logs)
    assert any(s3_server.access_key in a and "X-Amz-Signature" in a for a in artifacts), (
        "the artifacts carry presigned links: the search below looks where a leak would be"
    )
    # Each build's pictures are shown in the UI by their presigned links, one image each: the
    # cached build's with links of its own (those of the first expire).
    shown = [json.loads(a)["data"] for a in artifacts if json.loads(a)["type"] == "image"]
    pictures = {track["picture"]["key"] for track in lock["tracks"]}
    assert len(shown) == 2 * len(pictures) == 4
    assert all(link.startswith("http") and "X-Amz-Signature" in link for link in shown)
    assert {key for key in pictures for link in shown if f"/{key}?" in link} == pictures
    # The links card says until when its links work (they stopped with no word after 7 days).
    cards = [json.loads(a)["data"] for a in artifacts if json.loads(a)["type"] == "markdown"]
    assert len(cards) == 2 and all("The links are presigned for 7 days: " in card for card in cards)
    everything = outputs + runs + logs + artifacts
    assert not [text[:200] for text in everything if s3_server.secret_key in text]


def test_build_through_a_faulty_network_completes_and_every_object_verifies(
    project: Any, s3_server: SeaweedServer, tiny_model_dir: Path
) -> None:
    workdir, env, _ = project
    # Faults are drawn per (seed, request path): a fixed bucket, and the model named by a path
    # relative to the manifest (so the spec hashes in the keys do not depend on the temp
    # folder), make the same requests fail on every run of the same pipeline version.
    bucket = s3_server.create_bucket("faulty-build")
    (workdir / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    (workdir / "m.yaml").write_text(manifest("flaky", ["cue-a", "cue-b", "cue-c"], model="./tiny"))
    with FaultProxy(
        s3_server.ports["s3.port"],
        seed=7,
        slowdown_share=0.25,
        drop_share=0.25,
        lost_response_share=0.1,
    ) as proxy:
        # The storage URL from the environment this time (as a CI job would set it).
        env = {
            **env,
            **s3_server.aws_env(),
            "AWS_ENDPOINT_URL_S3": proxy.endpoint,
            "SOUNDTRACK_STORAGE": f"s3://{bucket}/net",
        }
        result = build(workdir, env)
    assert result.returncode == 0, result.stdout + result.stderr
    # Loose on purpose: another pipeline version means other keys, so other requests fail.
    assert proxy.stats["slowdown"] >= 1 and proxy.stats["drop"] >= 1, proxy.stats
    assert any(r.method == "PUT" and r.fate != "forward" for r in proxy.requests), proxy.stats

    client = s3_server.client()
    lock = json.loads(client.get_object(Bucket=bucket, Key=f"net/flaky/{INDEX}")["Body"].read())
    assert set(statuses(lock).values()) == {"approved"} and len(lock["tracks"]) == 3
    assert_every_object_verifies(client, bucket, lock)
    assert listed(client, bucket) == {e["key"] for e in lock_entries(lock)} | {f"net/flaky/{INDEX}"}


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A server of this test's own, which it may stop and restart."""
    with SeaweedServer(tmp_path / "own-seaweedfs") as server:
        yield server


def test_server_stopped_mid_build_fails_clearly_keeps_the_old_index_and_rerun_fills_gaps(
    project: Any, own_server: SeaweedServer, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    bucket = own_server.create_bucket()
    storage = f"s3://{bucket}/game"
    client = own_server.client()
    index_key = f"game/stops/{INDEX}"
    env = {**env, **own_server.aws_env()}

    # 1. A first build publishes one track and the index (the manifest names the bucket).
    (workdir / "m.yaml").write_text(manifest("stops", ["cue-0"], storage))
    first = build(workdir, env, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    old_index = client.get_object(Bucket=bucket, Key=index_key)
    old_index_bytes = old_index["Body"].read()
    old_keys = listed(client, bucket)

    # 2. Two tracks more (four files); the server stops once the first new file is up.
    (workdir / "m.yaml").write_text(manifest("stops", ["cue-0", "cue-1", "cue-2"], storage))
    stopped = threading.Event()
    stop_lock = threading.Lock()
    new_uploads: list[str] = []
    proxy: FaultProxy

    def stop_on_second_new_upload(seen: Seen) -> None:
        key = seen.path.removeprefix(f"/{bucket}/")
        if seen.method != "PUT" or not published(key) or key in old_keys or key == index_key:
            return
        with stop_lock:
            if stopped.is_set():
                return
            new_uploads.append(key)
            if len(new_uploads) < 2:
                return
            deadline = time.monotonic() + 10
            while not listed(client, bucket) - old_keys and time.monotonic() < deadline:
                time.sleep(0.05)
            own_server.stop()
            proxy.close()  # from now on the endpoint refuses connections, like a dead server
            stopped.set()

    since = datetime.now(UTC)
    with FaultProxy(own_server.ports["s3.port"], before_forward=stop_on_second_new_upload) as proxy:
        # Fewer attempts per request (a documented setting) keep the test short.
        failing_env = {**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint, "AWS_MAX_ATTEMPTS": "3"}
        failed = build(workdir, failing_env, *args, "--batch-size", "1")
    assert stopped.is_set(), "the build finished before the server could be stopped"
    # The last word (after Prefect's own log of each retry) says what failed and what was kept.
    message = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert message.startswith("build failed: publishing failed, the previous index is untouched")
    assert f"cannot reach {proxy.endpoint}" in message, message
    report = json.loads((workdir / "report.json").read_text())
    assert "failed" in statuses(report).values()

    # 3. Restarted, the server still has the old index, byte for byte, and some new files.
    own_server.start()
    index_now = client.get_object(Bucket=bucket, Key=index_key)
    assert index_now["Body"].read() == old_index_bytes
    assert index_now["LastModified"] == old_index["LastModified"]
    survived = listed(client, bucket) - old_keys
    assert survived, "no new file was uploaded before the stop: the rerun would prove little"

    # 4. A rerun uploads exactly the files still missing, then the new index.
    with FaultProxy(own_server.ports["s3.port"]) as proxy:
        rerun = build(workdir, {**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}, *args)
        writes = written_keys(proxy, bucket)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    lock = json.loads(client.get_object(Bucket=bucket, Key=index_key)["Body"].read())
    assert statuses(lock) == {
        "cue-0": "cached",
        "cue-1": "approved",
        "cue-2": "approved",
    }
    missing = {e["key"] for e in lock_entries(lock)} - old_keys - survived
    assert missing, "every file was up before the stop: the build should not have failed"
    assert sorted(writes[:-1]) == sorted(missing) and writes[-1] == index_key
    assert_every_object_verifies(client, bucket, lock)

    runs, logs, artifacts = prefect_records(prefect_server.api_url, since)
    assert any("cannot reach" in log for log in logs), "the failure is in the Prefect logs"
    texts = [failed.stdout, failed.stderr, rerun.stdout, rerun.stderr, *runs, *logs, *artifacts]
    assert not [text[:200] for text in texts if own_server.secret_key in text]


WRONG_SECRET = "wrong-secret-5ca1ab1e-0123456789abcdef"
BAD_SETTINGS = {
    # case: (extra arguments, environment, what the message says)
    "malformed URL": (
        ["--out", "s3:/{bucket}/p"],
        {},
        "is malformed: expected s3://bucket or s3://bucket/prefix",
    ),
    "invalid endpoint": ([], {"AWS_ENDPOINT_URL_S3": "ftp://127.0.0.1:1/x"}, "invalid S3 endpoint"),
    "wrong secret": ([], {"AWS_SECRET_ACCESS_KEY": WRONG_SECRET}, "access denied"),
    "unknown access key": ([], {"AWS_ACCESS_KEY_ID": "NOSUCHKEY00000000"}, "access denied"),
    "missing bucket": (
        ["--out", "s3://no-such-bucket-e2e/p"],
        {},
        "bucket 'no-such-bucket-e2e' does not exist",
    ),
    "endpoint down": (
        [],
        {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:{closed_port}"},
        "is the endpoint URL right and the server running?",
    ),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_storage_settings_exit_2_before_any_run_without_showing_the_secret(
    case: str, project: Any, s3_server: SeaweedServer, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    bucket = s3_server.create_bucket()
    (workdir / "m.yaml").write_text(manifest("bad", ["cue-0"], f"s3://{bucket}/p"))
    extra, overrides, message = BAD_SETTINGS[case]
    (closed_port,) = free_ports(1)
    env = {
        **env,
        **s3_server.aws_env(),
        **{name: value.format(closed_port=closed_port) for name, value in overrides.items()},
    }
    since = datetime.now(UTC)

    extra_args = [arg.format(bucket=bucket) for arg in extra]
    result = build(workdir, env, *args, *extra_args, "--junit", "junit.xml")

    text = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in text, text
    if message == "access denied":
        assert "check the credentials (AWS_ACCESS_KEY_ID" in text, text
    assert "Traceback" not in result.stderr
    assert build_runs_since(prefect_server.api_url, since) == 0, "no flow run was started"
    assert not (workdir / "report.json").exists() and not (workdir / "junit.xml").exists()
    assert listed(s3_server.client(), bucket) == set()
    for secret in (s3_server.secret_key, WRONG_SECRET):
        assert secret not in result.stdout + result.stderr


def test_a_deployed_runs_bad_input_is_told_in_its_state_without_the_secret(
    tmp_path: Path, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment's user reads the run's state, which the server keeps and shows to anyone
    on it: the log redaction does not cover it."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.build import build_soundtrack

    secret = f"secret-{os.getpid()}-x+y"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    missing = tmp_path / f"folder-{secret}" / "m.yaml"
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        state = build_soundtrack(str(missing), return_state=True)
        APILogHandler().flush()  # to this server: after the block there is none
    assert state.is_failed() and state.message is not None
    assert "folder-***" in state.message and secret not in state.message


def test_storage_failing_as_a_deployed_build_starts_fails_the_run_in_one_line(
    tmp_path: Path,
    s3_server: SeaweedServer,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage answering 503 to the flow's access check (a deployment's run, which no CLI
    checked first) ended the run as a crash: "encountered an exception", a traceback."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.build import build_soundtrack

    bucket = s3_server.create_bucket()
    (tmp_path / "m.yaml").write_text(manifest("flaky-start", ["cue-0"]))
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    with FaultProxy(
        s3_server.ports["s3.port"], slowdown_share=1.0, max_faults_per_request=99
    ) as proxy:
        for name, value in {**s3_server.aws_env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
            state = build_soundtrack(
                str(tmp_path / "m.yaml"), out=f"s3://{bucket}/g", return_state=True
            )
            APILogHandler().flush()  # to this server: after the block there is none
    assert state.is_failed()
    assert state.message is not None and state.message.startswith("checking access to s3://")
    assert "exception" not in state.message and listed(s3_server.client(), bucket) == set()
