"""Publishing a set of files plus the index the way the build flow does, for storage tests."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundtrack.formats import content_type_for
from soundtrack.storage import PublishedFile, Storage


@dataclass(frozen=True)
class Asset:
    """One encoded file of an approved track, as the flow hands it to storage."""

    track_id: str
    ext: str
    spec_hash: str
    path: Path
    sha256: str


def make_asset(
    folder: Path, track_id: str, ext: str, *, size: int, seed: int, spec_hash: str | None = None
) -> Asset:
    """A file of `size` seeded random bytes (stands in for an encoded track)."""
    data = random.Random(seed).randbytes(size)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{track_id}-{seed}.{ext}"
    path.write_bytes(data)
    spec_hash = spec_hash or hashlib.sha256(f"{track_id}/{seed}".encode()).hexdigest()[:16]
    return Asset(track_id, ext, spec_hash, path, hashlib.sha256(data).hexdigest())


def sample_assets(folder: Path, *, scale: int = 1) -> list[Asset]:
    """Two files of one track and one of another: title-theme ogg and mp3, credits ogg
    (50, 30 and 40 kB times `scale`)."""
    return [
        make_asset(folder, "title-theme", "ogg", size=50_000 * scale, seed=1),
        make_asset(folder, "title-theme", "mp3", size=30_000 * scale, seed=2),
        make_asset(folder, "credits", "ogg", size=40_000 * scale, seed=3),
    ]


def publish_assets(storage: Storage, soundtrack: str, assets: list[Asset]) -> list[PublishedFile]:
    """Every file, each verified; no index."""
    published = []
    for asset in assets:
        key = storage.asset_key(
            soundtrack, asset.track_id, asset.spec_hash, asset.ext, sha256=asset.sha256
        )
        published.append(
            storage.put_asset(
                asset.path,
                key,
                sha256=asset.sha256,
                content_type=content_type_for(asset.ext),
                metadata={
                    "track-id": asset.track_id,
                    "spec-hash": asset.spec_hash,
                    "model": "tiny-musicgen",
                    "seed": "1234",
                },
            )
        )
    return published


def index_bytes(soundtrack: str, assets: list[Asset], published: list[PublishedFile]) -> bytes:
    """A lock file in the report's shape: tracks[*].files[*] with key, uri, sha256, bytes."""
    tracks: dict[str, dict[str, object]] = {}
    for asset, file in zip(assets, published, strict=True):
        track = tracks.setdefault(
            asset.track_id,
            {"id": asset.track_id, "status": "approved", "spec_hash": asset.spec_hash, "files": []},
        )
        files = track["files"]
        assert isinstance(files, list)
        files.append(
            {
                "format": asset.ext,
                "key": file.key,
                "uri": file.uri,
                "sha256": file.sha256,
                "bytes": file.bytes,
                "duration_s": 1.0,
                "sample_rate": 44100,
                "channels": 2,
            }
        )
    document = {"soundtrack": soundtrack, "storage": "test", "tracks": list(tracks.values())}
    return json.dumps(document, indent=2, sort_keys=True).encode()


def publish(
    storage: Storage, soundtrack: str, assets: list[Asset]
) -> tuple[list[PublishedFile], bytes]:
    """Every file, then (only when all are verified) the index; returns both."""
    published = publish_assets(storage, soundtrack, assets)
    index = index_bytes(soundtrack, assets, published)
    storage.write_index(soundtrack, index)
    return published, index


def track_entries(track: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file a lock's track entry lists: its audio (stems' too), sidecar and pictures."""
    others = [track.get("sidecar"), track.get("picture")]
    others += [stem.get("picture") for stem in track.get("stems", [])]
    return [*track["files"], *(entry for entry in others if entry)]


def folder_problems(folder: Path) -> list[str]:
    """How a published soundtrack folder contradicts its lock: a listed file missing or with
    another sha256, a rejected or failed track's file present, or any file the lock does not
    account for (a staged copy, a temporary file), or a review page that leaves a track out.
    Empty when the folder matches its lock."""
    lock = json.loads((folder / "soundtrack.lock.json").read_bytes())
    problems = []
    expected = {"soundtrack.lock.json", "soundtrack.journal.jsonl"}
    review = folder / "review.html"  # the build's page, written after the lock it shows
    if review.is_file():
        expected.add(review.name)
        page = review.read_text()
        problems += [f"review.html: no {t['id']}" for t in lock["tracks"] if t["id"] not in page]
    for track in lock["tracks"]:
        if track["status"] in ("rejected", "failed"):
            problems += [
                f"{p.name}: file of {track['status']} track"
                for p in folder.glob(f"{track['id']}.*")
            ]
        for entry in track_entries(track):
            name = entry["key"].partition("/")[2]
            expected.add(name)
            path = folder / name
            if not path.is_file():
                problems.append(f"{name}: listed, missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                problems.append(f"{name}: sha256 differs from the lock's")
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name not in expected:
            problems.append(f"{name}: not in the lock")
    return problems
