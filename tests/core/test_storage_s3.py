"""S3 storage against a real SeaweedFS server; each property is checked with its own answers."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.errors import InputError, StorageError
from soundtrack.renders import Render, RenderCache, fetch_shared, is_shared, share_render
from soundtrack.storage import check_access, open_storage
from soundtrack.storage.s3 import S3Storage
from tests.faultproxy import FaultProxy, Seen
from tests.publishing import Asset, make_asset, publish, publish_assets, sample_assets
from tests.reference import sha256_of
from tests.s3server import SeaweedServer, free_ports
from tests.specs import make_spec

pytestmark = pytest.mark.slow

SOUNDTRACK = "sky-odyssey"
MIB = 1024 * 1024


@pytest.fixture
def assets(tmp_path: Path) -> list[Asset]:
    return sample_assets(tmp_path / "encoded", scale=3)


def server_sha256(client: Any, bucket: str, key: str) -> str:
    """The hex sha256 the server reports for a single-part object."""
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return base64.b64decode(head["ChecksumSHA256"]).hex()


def server_body_sha256(client: Any, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def composite_sha256(path: Path, part_bytes: int) -> str:
    """S3's composite checksum of a multipart object: sha256 of the parts' sha256s, "-<parts>"."""
    data = path.read_bytes()
    parts = [data[i : i + part_bytes] for i in range(0, len(data), part_bytes)]
    digest = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    return f"{base64.b64encode(digest).decode()}-{len(parts)}"


def record_key(key: str, sha256: str, prefix: str = "") -> str:
    """Where S3Storage journals writing `sha256` at `key` (`prefix` ends in '/' when given)."""
    soundtrack, _, rest = key.removeprefix(prefix).partition("/")
    return f"{prefix}{soundtrack}/.journal/{rest}/{sha256}"


def test_published_objects_carry_headers_journal_records_and_the_servers_checksums(
    s3_server: SeaweedServer, s3_bucket: str, assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    check_access(storage, "st")
    published, _ = publish(storage, SOUNDTRACK, assets)

    client = s3_server.client()
    index_key = f"games/{SOUNDTRACK}/soundtrack.lock.json"
    listed = [obj["Key"] for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    records = [record_key(p.key, p.sha256, "games/") for p in published]
    assert sorted(listed) == sorted([p.key for p in published] + records + [index_key])
    for asset, file in zip(assets, published, strict=True):
        head = client.head_object(Bucket=s3_bucket, Key=file.key)
        assert head["ContentType"] == {"ogg": "audio/ogg", "mp3": "audio/mpeg"}[asset.ext]
        assert head["Metadata"]["track-id"] == asset.track_id
        assert head["Metadata"]["spec-hash"] == asset.spec_hash
        assert head["Metadata"]["seed"] == "1234"
        assert "immutable" in head["CacheControl"]

    lock = json.loads(client.get_object(Bucket=s3_bucket, Key=index_key)["Body"].read())
    files = [f for track in lock["tracks"] for f in track["files"]]
    assert len(files) == len(assets)
    for entry in files:
        assert entry["sha256"] == server_sha256(client, s3_bucket, entry["key"])
    assert client.head_object(Bucket=s3_bucket, Key=index_key)["CacheControl"] == "no-cache"


def test_second_publish_sends_only_the_index(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish(open_storage(f"s3://{s3_bucket}", base_dir=tmp_path), SOUNDTRACK, assets)
    with FaultProxy(s3_server.ports["s3.port"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        publish(open_storage(f"s3://{s3_bucket}", base_dir=tmp_path), SOUNDTRACK, assets)

    writes = [(r.method, r.path) for r in proxy.requests if r.method in ("PUT", "POST")]
    assert writes == [("PUT", f"/{s3_bucket}/{SOUNDTRACK}/soundtrack.lock.json")]
    assert proxy.stats["requests"] >= len(assets) + 1


def test_asset_uploads_are_conditional_so_nothing_is_ever_overwritten(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FaultProxy(s3_server.ports["s3.port"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        publish(open_storage(f"s3://{s3_bucket}", base_dir=tmp_path), SOUNDTRACK, assets)
    puts = [r for r in proxy.requests if r.method == "PUT"]
    asset_puts = [r for r in puts if not r.path.endswith("soundtrack.lock.json")]
    assert len(asset_puts) == 2 * len(assets)  # each asset, then its journal record
    assert len([r for r in asset_puts if "/.journal/" in r.path]) == len(assets)
    assert all(r.headers.get("if-none-match") == "*" for r in asset_puts)
    assert all(r.headers.get("x-amz-checksum-sha256") for r in puts)


def test_bytes_corrupted_in_transit_are_rejected_by_the_server_and_a_retry_heals(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asset = assets[0]
    with FaultProxy(
        s3_server.ports["s3.port"], corrupt_share=1.0, max_faults_per_request=1
    ) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
        key = storage.asset_key(
            SOUNDTRACK, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
        )
        with pytest.raises(StorageError, match="BadDigest") as caught:
            publish_assets(storage, SOUNDTRACK, [asset])
        assert caught.value.transient
        assert not storage.has_asset(key, asset.sha256)
        # The retries a Prefect task makes; the journal record's first PUT is corrupted too.
        with pytest.raises(StorageError, match="BadDigest"):
            publish_assets(storage, SOUNDTRACK, [asset])
        assert storage.has_asset(key, asset.sha256)
        (file,) = publish_assets(storage, SOUNDTRACK, [asset])

    corrupted = [r.path for r in proxy.requests if r.method == "PUT" and r.fate == "corrupt"]
    assert corrupted == [f"/{s3_bucket}/{key}", f"/{s3_bucket}/{record_key(key, asset.sha256)}"]
    assert not file.uploaded
    assert server_body_sha256(s3_server.client(), s3_bucket, key) == asset.sha256


def test_existing_object_with_other_content_is_refused_not_overwritten(
    s3_server: SeaweedServer, s3_bucket: str, assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
    asset = assets[0]
    key = storage.asset_key(
        SOUNDTRACK, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
    )
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"someone else's bytes")

    assert not storage.has_asset(key, asset.sha256)
    with pytest.raises(StorageError, match="already exists with different content") as caught:
        publish_assets(storage, SOUNDTRACK, [asset])
    assert not caught.value.transient
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"someone else's bytes"


@pytest.mark.parametrize("size", [30_000, 11 * MIB])
def test_an_object_put_back_without_a_checksum_gets_one_at_the_next_publish(
    size: int, s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """An asset restored by hand without its SHA-256 checksum proved nothing to a HEAD: its
    track was rendered again at every build. Publishing meets the same bytes, puts them again
    with the checksum, and from then on a HEAD proves them (a large one as well: one PUT)."""
    storage = S3Storage(f"s3://{s3_bucket}/r", s3_bucket, "r", multipart_threshold_bytes=5 * MIB)
    asset = make_asset(tmp_path / "encoded", "boss", "ogg", size=size, seed=4)
    (first,) = publish_assets(storage, SOUNDTRACK, [asset])
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key=first.key, Body=asset.path.read_bytes())
    head = client.head_object(Bucket=s3_bucket, Key=first.key, ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head
    assert not storage.has_asset(first.key, asset.sha256)

    (again,) = publish_assets(storage, SOUNDTRACK, [asset])
    assert again.key == first.key and not again.uploaded
    assert server_sha256(client, s3_bucket, first.key) == asset.sha256
    assert server_body_sha256(client, s3_bucket, first.key) == asset.sha256
    assert storage.has_asset(first.key, asset.sha256)
    assert not storage.has_asset(first.key, "0" * 64)


def test_another_take_of_the_same_spec_gets_a_key_of_its_own(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A build killed after uploading, rendered again on another GPU (other bytes, the same
    spec), met its own object at the spec's key and stopped with a permanent error until
    someone deleted it; so did `--force` on a GPU. Each take now has its own key."""
    storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
    first = make_asset(tmp_path / "a", "boss", "ogg", size=40_000, seed=1, spec_hash="5" * 16)
    second = make_asset(tmp_path / "b", "boss", "ogg", size=40_000, seed=2, spec_hash="5" * 16)
    (one,) = publish_assets(storage, SOUNDTRACK, [first])
    (other,) = publish_assets(storage, SOUNDTRACK, [second])
    assert one.key != other.key and other.uploaded
    assert one.key.startswith(f"{SOUNDTRACK}/boss/{'5' * 16}.{first.sha256[:16]}")
    client = s3_server.client()
    for file, asset in ((one, first), (other, second)):
        assert server_body_sha256(client, s3_bucket, file.key) == asset.sha256
        assert storage.has_asset(file.key, asset.sha256)


def gpu_take(cache: Path, rng: np.random.Generator) -> Render:
    """A render of generation key abc123 on one GPU machine: one second of noise."""
    audio = rng.uniform(-0.5, 0.5, (1, 32000)).astype(np.float32)
    return RenderCache(cache).put("abc123", audio, 32000, model_id="m", revision="r", license="l")


def test_a_render_shared_again_with_other_bytes_after_a_kill_is_handed_over(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A pool machine killed after uploading a render's WAV and before its sidecar, the batch
    rendered again on another GPU (other bytes): the second met the first WAV at the
    generation key and the track failed for good. WAVs are now keyed by their sha256."""
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    spec = make_spec(id="cue", generation_key="abc123")
    rng = np.random.default_rng(0)
    first = gpu_take(tmp_path / "gpu-a", rng)
    share_render(storage, spec, first)
    s3_server.client().delete_object(Bucket=s3_bucket, Key="games/.renders/abc123.json")
    assert not is_shared(storage, spec)  # as if the machine died before the sidecar
    second = gpu_take(tmp_path / "gpu-b", rng)
    assert second.sha256 != first.sha256
    share_render(storage, spec, second)
    fetched = fetch_shared(storage, RenderCache(tmp_path / "build"), spec)
    assert fetched is not None and fetched.sha256 == second.sha256


def test_a_second_run_of_a_batch_leaves_the_first_take_handed_over(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """Two pool runs of one batch: the second's sidecar met the first's and its run failed."""
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    spec = make_spec(id="cue", generation_key="abc123")
    rng = np.random.default_rng(1)
    takes = [gpu_take(tmp_path / f"gpu-{n}", rng) for n in range(2)]
    for take in takes:
        share_render(storage, spec, take)
    fetched = fetch_shared(storage, RenderCache(tmp_path / "build"), spec)
    assert fetched is not None and fetched.sha256 == takes[0].sha256


def test_a_render_over_the_multipart_threshold_is_handed_over(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A multipart object's sha256 cannot be proved by the server's composite checksum without
    a journal record, which renders have none of: every render over 8 MiB (65 s of mono
    32 kHz float) failed its track with a 404 on the old key."""
    parts = {"multipart_threshold_bytes": 5 * MIB, "multipart_chunksize_bytes": 5 * MIB}
    storage = S3Storage(f"s3://{s3_bucket}/games", s3_bucket, "games", **parts)
    spec = make_spec(id="cue", generation_key="abc123")
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, (1, 32000 * 45)).astype(np.float32)
    take = RenderCache(tmp_path / "gpu").put(
        "abc123", audio, 32000, model_id="m", revision="r", license="l"
    )
    assert take.path.stat().st_size > 5 * MIB
    share_render(storage, spec, take)
    key = f"games/.renders/{take.sha256}.wav"
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2"), "uploaded in parts"

    fetched = fetch_shared(storage, RenderCache(tmp_path / "build"), spec)

    assert fetched is not None and fetched.sha256 == take.sha256
    assert sha256_of(fetched.path) == take.sha256


def test_object_appearing_between_check_and_upload_is_not_overwritten(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asset = assets[0]
    client = s3_server.client()

    def racing_writer(seen: Seen) -> None:
        if seen.method == "PUT":  # another build wins the race, with other bytes
            key = seen.path.removeprefix(f"/{s3_bucket}/")
            client.put_object(Bucket=s3_bucket, Key=key, Body=b"the other build's bytes")

    with FaultProxy(s3_server.ports["s3.port"], before_forward=racing_writer) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
        with pytest.raises(StorageError, match="already exists with different content"):
            publish_assets(storage, SOUNDTRACK, [asset])

    key = storage.asset_key(
        SOUNDTRACK, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
    )
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"the other build's bytes"


def test_an_upload_replaced_before_its_check_fails_verification_and_records_nothing(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's checksum after the upload is what proves it: bytes of the same length
    written over ours in between (another tool, a bad replica) fail it, as no length would."""
    asset = assets[0]
    client = s3_server.client()
    put: list[str] = []
    size = asset.path.stat().st_size

    def overwriter(seen: Seen) -> None:
        key = seen.path.removeprefix(f"/{s3_bucket}/")
        if seen.method == "PUT" and key.endswith(".ogg"):
            put.append(key)
        elif seen.method == "HEAD" and put == [key]:  # the check after the upload
            put.append(key)
            client.put_object(
                Bucket=s3_bucket, Key=key, Body=b"\0" * size, ChecksumAlgorithm="SHA256"
            )

    with FaultProxy(s3_server.ports["s3.port"], before_forward=overwriter) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
        with pytest.raises(StorageError, match="failed verification") as caught:
            storage.put_asset(
                asset.path,
                storage.asset_key(
                    SOUNDTRACK, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
                ),
                sha256=asset.sha256,
                content_type="audio/ogg",
                metadata={},
            )
    assert not caught.value.transient
    assert len(put) == 2, "uploaded, then replaced before its check"
    listed = client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [put[0]], "no journal record for what failed"


@pytest.mark.parametrize("key", ["elsewhere/x.ogg", "gamesx/x.ogg", f"{SOUNDTRACK}/x.ogg"])
def test_keys_outside_the_prefix_are_refused(
    key: str, s3_server: SeaweedServer, s3_bucket: str, assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    asset = assets[0]
    with pytest.raises(InputError, match=f"inside s3://{s3_bucket}/games/"):
        storage.put_asset(
            asset.path, key, sha256=asset.sha256, content_type="audio/ogg", metadata={}
        )
    with pytest.raises(InputError, match="inside"):
        storage.delete([key])
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_multipart_upload_verifies_against_the_servers_composite_checksum(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/mp"
    storage = S3Storage(
        url, s3_bucket, "mp", multipart_threshold_bytes=5 * MIB, multipart_chunksize_bytes=5 * MIB
    )
    big = make_asset(tmp_path, "boss-battle", "wav", size=11 * MIB + 7, seed=9)
    (file,) = publish_assets(storage, SOUNDTRACK, [big])

    client = s3_server.client()
    head = client.head_object(Bucket=s3_bucket, Key=file.key, ChecksumMode="ENABLED")
    assert file.uploaded
    assert head["ChecksumSHA256"] == composite_sha256(big.path, 5 * MIB)
    assert head["ChecksumSHA256"].endswith("-3")
    assert head["ETag"].strip('"').endswith("-3")
    assert server_body_sha256(client, s3_bucket, file.key) == big.sha256
    assert storage.has_asset(file.key, big.sha256)
    assert not storage.has_asset(file.key, "0" * 64)
    assert not publish_assets(storage, SOUNDTRACK, [big])[0].uploaded
    # A client with other part sizes cannot recompute the composite: it trusts the sha256
    # recorded at upload, and still uploads nothing.
    default_parts = open_storage(url, base_dir=tmp_path)
    assert default_parts.has_asset(file.key, big.sha256)
    assert not publish_assets(default_parts, SOUNDTRACK, [big])[0].uploaded

    # The same bytes put back in other parts (a bucket synced with another part size): its
    # composite is not the recorded one, so no HEAD proved it, and its track was mastered
    # again at every build. Met by a publish, it is put again in one PUT, proved from then on.
    client.upload_file(
        str(big.path),
        s3_bucket,
        file.key,
        ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": head["Metadata"]},
        Config=TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB),
    )
    resplit = client.head_object(Bucket=s3_bucket, Key=file.key, ChecksumMode="ENABLED")
    assert resplit["ChecksumSHA256"] == composite_sha256(big.path, 8 * MIB)
    assert not storage.has_asset(file.key, big.sha256)
    assert not publish_assets(storage, SOUNDTRACK, [big])[0].uploaded
    assert server_sha256(client, s3_bucket, file.key) == big.sha256
    assert storage.has_asset(file.key, big.sha256)


def test_through_a_faulty_network_every_object_still_verifies(
    s3_env: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fates are drawn per (seed, request path): a fixed bucket name makes the run reproducible.
    s3_bucket = s3_env.create_bucket("faulty-network")
    folder = tmp_path / "encoded"
    assets = [
        make_asset(folder, f"track-{i}", ext, size=40_000 + 1000 * i, seed=i)
        for i, ext in enumerate(["ogg", "mp3", "ogg", "mp3", "ogg", "mp3"])
    ]
    assets.append(make_asset(folder, "boss-battle", "wav", size=11 * MIB, seed=99))
    with FaultProxy(
        s3_env.ports["s3.port"],
        seed=3,
        slowdown_share=0.15,
        drop_share=0.15,
        lost_response_share=0.15,
    ) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        storage = S3Storage(
            f"s3://{s3_bucket}/flaky",
            s3_bucket,
            "flaky",
            multipart_threshold_bytes=5 * MIB,
            multipart_chunksize_bytes=5 * MIB,
        )
        published, index = publish(storage, SOUNDTRACK, assets)

    assert proxy.stats["slowdown"] >= 2, proxy.stats
    assert proxy.stats["drop"] >= 2, proxy.stats
    assert proxy.stats["lost_response"] >= 2, proxy.stats
    client = s3_env.client()
    for asset, file in zip(assets, published, strict=True):
        assert server_body_sha256(client, s3_bucket, file.key) == asset.sha256
    index_key = f"flaky/{SOUNDTRACK}/soundtrack.lock.json"
    assert client.get_object(Bucket=s3_bucket, Key=index_key)["Body"].read() == index


def test_server_stopped_mid_publish_fails_clearly_keeps_old_index_and_rerun_fills_gaps(
    tmp_path: Path, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "encoded"
    v1 = [make_asset(folder, name, "ogg", size=60_000, seed=i) for i, name in enumerate("ab")]
    new = [make_asset(folder, name, "ogg", size=60_000, seed=9 + i) for i, name in enumerate("cde")]
    with SeaweedServer(tmp_path / "server") as server:
        for name, value in server.aws_env().items():
            monkeypatch.setenv(name, value)
        bucket = server.create_bucket()
        url = f"s3://{bucket}/game"
        _, index_v1 = publish(open_storage(url, base_dir=tmp_path), SOUNDTRACK, v1)

        storage = open_storage(url, base_dir=tmp_path)
        publish_assets(storage, SOUNDTRACK, [*v1, new[0]])
        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            publish_assets(storage, SOUNDTRACK, new[1:])
        elapsed_s = time.monotonic() - started

        assert caught.value.transient
        assert f"cannot reach {server.endpoint}" in str(caught.value)
        assert elapsed_s < 30
        server.start()
        assert open_storage(url, base_dir=tmp_path).read_index(SOUNDTRACK) == index_v1

        rerun, index_v2 = publish(open_storage(url, base_dir=tmp_path), SOUNDTRACK, [*v1, *new])
        assert [p.uploaded for p in rerun] == [False, False, False, True, True]
        assert open_storage(url, base_dir=tmp_path).read_index(SOUNDTRACK) == index_v2


def test_connection_closed_on_every_attempt_is_transient_mid_build_and_a_setting_before(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that closes connections without answering (restarting, or behind a balancer
    # whose backend died) outlasts boto's own attempts; the task's retries may still heal it.
    with FaultProxy(
        s3_server.ports["s3.port"], drop_share=1.0, max_faults_per_request=100
    ) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
        with pytest.raises(StorageError, match=f"connection to {proxy.endpoint} lost") as upload:
            publish_assets(storage, SOUNDTRACK, assets[:1])
        with pytest.raises(StorageError, match="is the endpoint URL right") as preflight:
            check_access(storage, "st")
    assert proxy.stats["drop"] >= 4 and proxy.stats["forward"] == 0
    assert upload.value.transient
    assert not preflight.value.transient


@pytest.mark.parametrize("wrong", ["secret", "access key"])
def test_wrong_credentials_fail_fast_and_never_show_the_secret(
    wrong: str,
    s3_bucket: str,
    assets: list[Asset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "wrong-secret-c0ffee-0123456789abcdef"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    if wrong == "access key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY0000")
    caplog.set_level(logging.DEBUG)
    storage = open_storage(f"s3://{s3_bucket}/p", base_dir=tmp_path)

    started = time.monotonic()
    with pytest.raises(StorageError, match="access denied") as preflight:
        check_access(storage, "st")
    with pytest.raises(StorageError, match="access denied") as upload:
        publish_assets(storage, SOUNDTRACK, assets[:1])
    with pytest.raises(StorageError, match="access denied") as reading:
        storage.read_index(SOUNDTRACK)
    elapsed_s = time.monotonic() - started

    assert elapsed_s < 15  # permanent: no retry, no backoff (a loaded machine: seconds)
    for error in (preflight.value, upload.value, reading.value):
        assert not error.transient
        assert "AWS_ACCESS_KEY_ID" in str(error)
    presigned = storage.presign(f"p/{SOUNDTRACK}/x.ogg", 60)
    result = CliRunner().invoke(app, ["gc", f"s3://{s3_bucket}/p", "--soundtrack", SOUNDTRACK])
    assert result.exit_code == 1
    assert "access denied" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    captured = capsys.readouterr()
    outputs = [
        str(preflight.value),
        str(upload.value),
        str(reading.value),
        presigned,
        result.output,
        caplog.text,
        captured.out,
        captured.err,
    ]
    assert caplog.records, "DEBUG logging captured nothing: the search below would prove nothing"
    assert not [text for text in outputs if secret in text]


def test_missing_bucket_is_a_clear_permanent_error(
    s3_env: SeaweedServer, assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage("s3://no-such-bucket-here/p", base_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist") as pre:
        check_access(storage, "st")
    with pytest.raises(StorageError, match="does not exist") as upload:
        publish_assets(storage, SOUNDTRACK, assets[:1])
    assert time.monotonic() - started < 15  # permanent: no retry, no backoff
    assert not pre.value.transient
    assert not upload.value.transient
    result = CliRunner().invoke(app, ["gc", "s3://no-such-bucket-here", "--soundtrack", "x"])
    assert result.exit_code == 1
    assert "does not exist" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "names no bucket"),
        ("s3:/bucket/prefix", "malformed"),
        ("s3:bucket", "malformed"),
        ("s3://Bad_Bucket/x", "invalid S3 bucket name"),
        ("s3://ab/x", "invalid S3 bucket name"),
        ("s3://bucket/a/../b", "invalid S3 prefix"),
        ("s3://bucket//music", "empty, '.' or '..' segments"),
        ("s3://bucket/music//", "empty, '.' or '..' segments"),
        ("s3://bucket//", "empty, '.' or '..' segments"),
        ("s3://bucket/games/sky/.journal", "a segment starting with '.'"),
        ("s3://bucket/.renders/x", "a segment starting with '.'"),
        (
            "s3://bucket/x?endpoint=evil",
            r"'s3://bucket/x' \(\?\.\.\. not shown\): a storage URL may have no query",
        ),
        ("s3://bucket/x?endpoint=http://evil", "may have no query or fragment"),
        ("s3://bucket/%2e%2e/b", r"may not contain \['%'\]"),
        ("s3://bucket/a%2Fb", r"may not contain \['%'\]"),
        ("s3://192.168.1.1/x", "invalid S3 bucket name '192.168.1.1'"),
        ("s3://xn--game/x", "invalid S3 bucket name"),
        ("s3://game-s3alias/x", "invalid S3 bucket name"),
        ("s3://game..assets/x", "invalid S3 bucket name"),
        ("s3://game--x-s3/x", "invalid S3 bucket name"),  # a directory bucket's suffix
        ("s3://bucket/a#b", r"'s3://bucket/a' \(#\.\.\. not shown\): a storage URL may have no"),
        ("s3://bucket#evil", r"'s3://bucket' \(#\.\.\. not shown\): a storage URL may have no"),
        ("s3://bucket?X-Amz-Security-Token=evil", "may have no query or fragment"),
        ("s3://bucket/a\\b", "may not contain"),
        ("s3://bucket/a\tb", "may not contain"),
        ("ftp://host/folder", "not a ftp:// URL"),
        ("https://host/x?sig=evil", r"'https://host/x' \(\?\.\.\. not shown\): storage must be"),
        ("", "empty"),
    ],
)
def test_malformed_storage_urls_are_input_errors_before_any_network_call(
    url: str, message: str, aws_isolated: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=message):
        open_storage(url, base_dir=tmp_path)
    result = CliRunner().invoke(app, ["gc", url or " ", "--soundtrack", SOUNDTRACK])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    # A query is where a token would travel (a signed URL's, pasted whole): never shown.
    assert "evil" not in result.output and "a#b" not in result.output


def test_credentials_in_the_url_are_refused_without_echoing_them(
    aws_isolated: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="must not carry credentials") as caught:
        open_storage("s3://AKIAEXAMPLE:hunter2-secret@bucket/prefix", base_dir=tmp_path)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "endpoint",
    ["not a url", "ftp://example.com", "http://host:99999", "http://127.0.0.1:8333/other-bucket"],
)
def test_invalid_endpoint_url_is_an_input_error(
    endpoint: str, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    with pytest.raises(InputError, match="endpoint"):
        open_storage("s3://some-bucket", base_dir=tmp_path)
    result = CliRunner().invoke(app, ["gc", "s3://some-bucket", "--soundtrack", SOUNDTRACK])
    assert result.exit_code == 2


@pytest.mark.parametrize("tail", ["/gw?token=tok3n-value", "?x=tok3n-value", "#tok3n-value"])
def test_an_endpoint_with_a_query_is_refused_without_showing_it(
    tail: str, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"{s3_env.endpoint}{tail}")
    with pytest.raises(InputError, match="with a query or fragment") as caught:
        open_storage("s3://some-bucket", base_dir=tmp_path)
    assert "tok3n" not in str(caught.value)
    result = CliRunner().invoke(app, ["gc", "s3://some-bucket", "--soundtrack", SOUNDTRACK])
    assert result.exit_code == 2 and "tok3n" not in result.output


def test_unreachable_endpoint_fails_the_preflight_fast(
    s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (closed_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port}")
    storage = open_storage("s3://some-bucket", base_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach http://127.0.0.1:{closed_port}") as c:
        check_access(storage, "st")
    assert time.monotonic() - started < 10
    assert not c.value.transient


def test_no_credentials_is_a_clear_permanent_error(
    s3_server: SeaweedServer, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    storage = open_storage("s3://some-bucket", base_dir=tmp_path)
    with pytest.raises(StorageError, match="no AWS credentials found") as caught:
        check_access(storage, "st")
    assert not caught.value.transient


def test_credentials_and_endpoint_come_from_aws_config_files(
    s3_server: SeaweedServer,
    aws_isolated: Path,
    assets: list[Asset],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    bucket = s3_server.create_bucket()
    (aws_isolated / "config").write_text(
        f"[profile game-ci]\nregion = us-east-1\nendpoint_url = {s3_server.endpoint}\n"
    )
    (aws_isolated / "credentials").write_text(
        f"[game-ci]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "game-ci")
    storage = open_storage(f"s3://{bucket}", base_dir=tmp_path)
    check_access(storage, "st")
    published, index = publish(storage, SOUNDTRACK, assets)
    assert all(p.uploaded for p in published)
    client = s3_server.client()
    index_key = f"{SOUNDTRACK}/soundtrack.lock.json"
    assert client.get_object(Bucket=bucket, Key=index_key)["Body"].read() == index


def test_an_explicit_url_is_used_whatever_soundtrack_storage_says(
    s3_server: SeaweedServer,
    s3_bucket: str,
    assets: list[Asset],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # `gc URL --delete` must act on URL; the variable only replaces a manifest's `storage`.
    monkeypatch.setenv("SOUNDTRACK_STORAGE", str(tmp_path / "from-env"))
    storage = open_storage(f"s3://{s3_bucket}/given", base_dir=tmp_path)
    assert storage.url == f"s3://{s3_bucket}/given"
    publish(storage, SOUNDTRACK, assets[:1])
    client = s3_server.client()
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys and all(key.startswith(f"given/{SOUNDTRACK}/") for key in keys)
    result = CliRunner().invoke(app, ["gc", f"s3://{s3_bucket}/given"])
    assert result.exit_code == 0, result.output
    assert "1 soundtrack(s)" in " ".join(result.output.split())
    assert not (tmp_path / "from-env").exists()


def test_presigned_links_carry_their_expiry_and_expire(
    s3_bucket: str, assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
    (file,) = publish_assets(storage, SOUNDTRACK, assets[:1])
    link = storage.presign(file.key, expires_s=600)
    assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["600"]

    short = storage.presign(file.key, expires_s=1)
    time.sleep(2.2)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(short, timeout=10)
    assert expired.value.code == 403


def test_gc_deletes_our_superseded_objects_and_keeps_everything_not_provably_ours(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    folder = tmp_path / "encoded"
    url = f"s3://{s3_bucket}/games"
    storage = open_storage(url, base_dir=tmp_path)
    old = make_asset(folder, "title-theme", "ogg", size=30_000, seed=1, spec_hash="aaaa1111")
    kept = make_asset(folder, "credits", "ogg", size=30_000, seed=2, spec_hash="bbbb2222")
    new = make_asset(folder, "title-theme", "ogg", size=30_000, seed=3, spec_hash="cccc3333")
    dropped = make_asset(folder, "credits", "mp3", size=30_000, seed=4, spec_hash="bbbb2222")
    publish(storage, SOUNDTRACK, [old, kept, dropped])
    publish(storage, SOUNDTRACK, [new, kept])
    publish(storage, "other-game", [make_asset(folder, "intro", "ogg", size=9_000, seed=5)])
    # Another soundtrack whose storage prefix is inside this one's "folder".
    publish(open_storage(f"{url}/{SOUNDTRACK}", base_dir=tmp_path), "ui-sounds", [new])
    client = s3_server.client()
    base = f"games/{SOUNDTRACK}"
    stale = f"{base}/title-theme/aaaa1111.{old.sha256[:16]}.ogg"
    changed = f"{base}/credits/bbbb2222.{dropped.sha256[:16]}.mp3"
    # Someone else's objects under the prefix, and one of ours overwritten with other bytes.
    for key, body in {
        f"{base}/README.txt": b"hand-made notes",
        f"{stale}.meta": b"guid: 1234",
        f"{base}/stems/drums.wav": b"RIFF",
        changed: b"re-encoded by hand",
    }.items():
        client.put_object(Bucket=s3_bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])

    assert storage.soundtracks() == ["other-game", SOUNDTRACK]
    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.journaled
    assert garbage.journal == f"s3://{s3_bucket}/{base}/.journal/"
    assert garbage.ours == [stale, record_key(stale, old.sha256, "games/")]
    assert garbage.kept == [
        f"{base}/README.txt",
        changed,
        f"{base}/stems/",
        f"{stale}.meta",
        f"{base}/ui-sounds/",
    ]
    assert storage.unreferenced("other-game").ours == []
    listed = CliRunner().invoke(app, ["gc", url])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.split() == garbage.ours
    assert f"not ours, kept: {changed}" in listed.stderr

    deleted = CliRunner().invoke(app, ["gc", url, "--soundtrack", SOUNDTRACK, "--delete"])
    assert deleted.exit_code == 0, deleted.output
    remaining = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert remaining == sorted(set(before) - set(garbage.ours))
    assert storage.unreferenced(SOUNDTRACK).ours == []

    missing = CliRunner().invoke(app, ["gc", url, "--soundtrack", "never-published"])
    assert missing.exit_code == 2
    assert "no index" in " ".join(missing.output.split())


@pytest.mark.parametrize("copy", ["games-copy/" + SOUNDTRACK, "games/copied-game"])
def test_gc_of_a_copied_soundtrack_deletes_nothing(
    copy: str, s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A lock names whole keys, so a copy of a prefix (or of a soundtrack's folder) has a lock
    naming the originals: gc read every copy as unreferenced, proven ours by the copied
    journal, and deleted them all."""
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    folder = tmp_path / "encoded"
    old = make_asset(folder, "title-theme", "ogg", size=9_000, seed=1, spec_hash="aaaa1111")
    publish(storage, SOUNDTRACK, [old])
    publish(storage, SOUNDTRACK, [make_asset(folder, "title-theme", "ogg", size=9_000, seed=2)])
    client = s3_server.client()
    for listed in client.list_objects_v2(Bucket=s3_bucket, Prefix=f"games/{SOUNDTRACK}/")[
        "Contents"
    ]:
        key = copy + listed["Key"].removeprefix(f"games/{SOUNDTRACK}")
        client.copy_object(
            Bucket=s3_bucket,
            Key=key,
            CopySource={"Bucket": s3_bucket, "Key": listed["Key"]},
            ChecksumAlgorithm="SHA256",
        )
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    prefix, soundtrack = copy.rsplit("/", 1)
    result = CliRunner().invoke(
        app, ["gc", f"s3://{s3_bucket}/{prefix}", "--soundtrack", soundtrack, "--delete"]
    )
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"names s3://{s3_bucket}/games/{SOUNDTRACK}/" in said and "copied prefix" in said
    after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert after == before
    # The original's own gc is as before: its superseded take is ours.
    assert any(old.sha256[:16] in key for key in storage.unreferenced(SOUNDTRACK).ours)


def _multipart_put(client: Any, bucket: str, key: str, bodies: list[bytes], sha256: str) -> None:
    """Upload `bodies` as the parts of one object at `key`, carrying `sha256` as its metadata."""
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata={"sha256": sha256}
    )
    done = []
    for number, body in enumerate(bodies, start=1):
        part = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="SHA256",
        )
        done.append(
            {"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]}
        )
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )


def test_gc_proves_a_multipart_object_by_its_recorded_composite_not_its_metadata(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A multipart object's sha256 metadata is anyone's to write: someone else's multipart
    upload over our key, carrying our metadata, is kept; our own superseded one is deleted."""
    folder = tmp_path / "encoded"
    url = f"s3://{s3_bucket}/big"
    parts = {"multipart_threshold_bytes": 5 * MIB, "multipart_chunksize_bytes": 5 * MIB}
    storage = S3Storage(url, s3_bucket, "big", **parts)
    ours, theirs, current = (
        make_asset(folder, name, "wav", size=6 * MIB, seed=seed, spec_hash=name[:4] * 2)
        for seed, name in enumerate(("ours-old", "taken-old", "current"))
    )
    old = publish(storage, SOUNDTRACK, [ours, theirs])[0]
    publish(storage, SOUNDTRACK, [current])
    client = s3_server.client()
    taken = old[1].key
    _multipart_put(client, s3_bucket, taken, [b"U" * 5 * MIB, b"tail"], theirs.sha256)
    assert client.head_object(Bucket=s3_bucket, Key=taken)["Metadata"]["sha256"] == theirs.sha256

    garbage = storage.unreferenced(SOUNDTRACK)
    assert old[0].key in garbage.ours and taken not in garbage.ours
    assert taken in garbage.kept
    # Another client (the CLI's default part sizes) proves it by the record, as this one does.
    assert open_storage(url, base_dir=tmp_path).unreferenced(SOUNDTRACK).ours == garbage.ours
    storage.delete(garbage.ours)
    assert client.head_object(Bucket=s3_bucket, Key=taken)["ContentLength"] == 5 * MIB + 4


@pytest.mark.parametrize("same_bytes", [False, True], ids=["forged", "same-bytes"])
def test_an_object_already_at_our_key_is_judged_by_its_bytes_not_its_sha256_metadata(
    same_bytes: bool, s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A multipart object split otherwise, carrying our sha256 as metadata (anyone may write
    it): publishing takes it only when its bytes are the file's, and journals nothing else."""
    asset = make_asset(tmp_path / "encoded", "boss", "wav", size=6 * MIB, seed=3)
    storage = open_storage(f"s3://{s3_bucket}", base_dir=tmp_path)
    key = storage.asset_key(
        SOUNDTRACK, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
    )
    data = asset.path.read_bytes() if same_bytes else b"X" * (6 * MIB)
    client = s3_server.client()
    _multipart_put(client, s3_bucket, key, [data[: 5 * MIB], data[5 * MIB :]], asset.sha256)
    assert not storage.has_asset(key, asset.sha256)  # nothing proves it ours yet

    if same_bytes:
        (published,) = publish_assets(storage, SOUNDTRACK, [asset])
        assert not published.uploaded
        assert storage.has_asset(key, asset.sha256)
    else:
        with pytest.raises(StorageError, match="already exists with different content"):
            publish_assets(storage, SOUNDTRACK, [asset])
        assert not storage.has_asset(key, asset.sha256)
        assert "Contents" not in client.list_objects_v2(
            Bucket=s3_bucket, Prefix=record_key(key, asset.sha256)
        )
    assert server_body_sha256(client, s3_bucket, key) == hashlib.sha256(data).hexdigest()


def test_gc_under_a_prefix_built_before_the_journal_deletes_nothing_and_says_so(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    folder = tmp_path / "encoded"
    url = f"s3://{s3_bucket}/games"
    storage = open_storage(url, base_dir=tmp_path)
    old = make_asset(folder, "title-theme", "ogg", size=30_000, seed=1, spec_hash="aaaa1111")
    new = make_asset(folder, "title-theme", "ogg", size=30_000, seed=3, spec_hash="cccc3333")
    publish(storage, SOUNDTRACK, [old])
    publish(storage, SOUNDTRACK, [new])
    client = s3_server.client()
    journal = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"games/{SOUNDTRACK}/.journal/")
    client.delete_objects(
        Bucket=s3_bucket, Delete={"Objects": [{"Key": o["Key"]} for o in journal["Contents"]]}
    )
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])

    result = CliRunner().invoke(app, ["gc", url, "--delete"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    journal_uri = f"s3://{s3_bucket}/games/{SOUNDTRACK}/.journal/"
    assert f"{SOUNDTRACK}: no journal at {journal_uri}" in message
    assert "nothing provably ours, nothing deleted" in message
    stale = f"games/{SOUNDTRACK}/title-theme/aaaa1111.{old.sha256[:16]}.ogg"
    assert f"not ours, kept: {stale}" in message
    after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert after == before


def test_the_longest_prefix_allowed_holds_the_longest_key_this_tool_writes(
    s3_server: SeaweedServer, s3_bucket: str, tmp_path: Path
) -> None:
    """A prefix of 1100 bytes passed every check, then failed the build at its first write."""
    segment = "p" * 99
    prefix = "/".join([segment] * 7) + "q"
    assert len(prefix.encode()) == 700
    with pytest.raises(InputError, match="S3 prefix of 701 bytes: at most 700"):
        open_storage(f"s3://{s3_bucket}/{prefix}x", base_dir=tmp_path)
    result = CliRunner().invoke(app, ["gc", f"s3://{s3_bucket}/{'y' * 1100}", "--soundtrack", "x"])
    assert result.exit_code == 2
    assert "at most 700" in " ".join(result.output.split())

    storage = open_storage(f"s3://{s3_bucket}/{prefix}", base_dir=tmp_path)
    name = "s" * 64
    asset = make_asset(tmp_path, "t" * 64, "wav", size=1_000, seed=1, spec_hash="h" * 64)
    key = storage.asset_key(
        name, asset.track_id, asset.spec_hash, "wav", sha256=asset.sha256, stem="vocals"
    )
    storage.put_asset(asset.path, key, sha256=asset.sha256, content_type="audio/wav", metadata={})
    client = s3_server.client()
    record = record_key(key, asset.sha256, f"{prefix}/")
    assert len(record.encode()) > 990, "the journal record is the longest key"
    assert server_sha256(client, s3_bucket, key) == asset.sha256
    assert client.head_object(Bucket=s3_bucket, Key=record)["ContentLength"] >= 0
