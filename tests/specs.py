"""A TrackSpec and a published file's record with sensible defaults, for tests that need one
without a manifest or a build."""

from __future__ import annotations

import hashlib
from typing import Any

from soundtrack.report import FileRecord
from soundtrack.resolve import seconds_to_render
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits, Mastering, Sampling, TrackSpec


def make_spec(**overrides: Any) -> TrackSpec:
    """A 10 s console-loudness track (OGG + MP3, 44.1 kHz stereo); keyword arguments replace
    any TrackSpec field; `render_duration_s` and `spec_hash` are computed from the others unless
    given."""
    fields: dict[str, Any] = {
        "soundtrack": "test",
        "id": "track",
        "duration_s": 10.0,
        "loop": False,
        "seed": 0,
        "model": "tiny",
        "model_revision": None,
        "sampling": Sampling(),
        "overlap_s": 12.0,
        "mastering": Mastering(loudness=LOUDNESS_PROFILES["console"]),
        "gates": GateLimits(),
        "formats": ("ogg", "mp3"),
        "wav_bit_depth": 16,
        "spec_hash": "",
    }
    fields.update(overrides)
    if "render_duration_s" not in fields:
        fields["render_duration_s"] = seconds_to_render(
            fields["duration_s"], fields["mastering"], loop=fields["loop"]
        )
    if not fields["spec_hash"]:
        fields["spec_hash"] = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()
    return TrackSpec(**fields)


def make_file(key: str, data: bytes = b"", **overrides: Any) -> FileRecord:
    """The record of `data` published at `key` (a 2 s, 44.1 kHz stereo file of the key's format,
    under file:///out/); keyword arguments replace any FileRecord field."""
    fields: dict[str, Any] = {
        "format": key.rsplit(".", 1)[-1],
        "key": key,
        "uri": f"file:///out/{key}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "duration_s": 2.0,
        "sample_rate": 44100,
        "channels": 2,
    }
    return FileRecord(**{**fields, **overrides})
