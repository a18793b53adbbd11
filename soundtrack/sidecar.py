"""The engine sidecar: `<track>.json` beside each approved track, with its loop, tempo, beats,
bars and key in samples, for FMOD/Wwise marker scripts and Unity/Godot code (docs/formats.md).

Every position is a sample index at the delivered files' rate: OGG, MP3 and WAV all decode to
the same sample count. Its JSON Schema is `docs/sidecar.schema.json` (`soundtrack schema
--sidecar`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soundtrack.encode import EncodedFile

if TYPE_CHECKING:
    from soundtrack.analysis import Analysis
    from soundtrack.process import MasterInfo
    from soundtrack.spec import TrackSpec

SIDECAR_SCHEMA = 1
SIDECAR_EXT = "json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoopRegion(_Model):
    """The loop: play from 0, and at end_sample jump back to start_sample."""

    start_sample: int = Field(ge=0, description="LOOPSTART: the loop's first sample.")
    length_samples: int = Field(ge=1, description="LOOPLENGTH.")
    end_sample: int = Field(ge=1, description="start_sample + length_samples (exclusive).")
    bars: int | None = Field(default=None, ge=1, description="Whole bars, when cut on bars.")


class Tempo(_Model):
    """The tempo asked for and the tempo measured (for a loop cut on bars: over the loop)."""

    nominal_bpm: float | None = Field(description="The manifest's bpm, if any.")
    measured_bpm: float | None = Field(description="None when no beat was found.")


class KeyInfo(_Model):
    """The key asked for and the key measured, with the estimate's confidence (0-1)."""

    nominal: str | None = Field(description="The manifest's key, normalised (Bb minor).")
    measured: str | None
    confidence: float | None = Field(ge=0, le=1)


class Sidecar(_Model):
    """What an engine needs to place a track on its beat grid."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="soundtrack-pipeline track sidecar",
        json_schema_extra={"$id": "https://soundtrack-pipeline.dev/schema/sidecar-v1.json"},
    )

    # No default: a reader's JSON Schema then requires it, as every file has it.
    sidecar_schema: Literal[1] = Field(alias="schema")
    soundtrack: str
    track: str
    spec_hash: str
    sample_rate: int = Field(gt=0, description="Hz; every position below is in these samples.")
    channels: int = Field(ge=1)
    length_samples: int = Field(ge=1)
    duration_s: float
    loop: LoopRegion | None
    tempo: Tempo
    time_signature: str = Field(
        description="Beats per bar / beat unit; 4/4 unless the manifest set one."
    )
    beats_per_bar: int = Field(ge=1)
    beats: list[int] = Field(description="Beat positions, samples, ascending.")
    bars: list[int] = Field(description="Bar starts (downbeats), samples, ascending.")
    key: KeyInfo


def sidecar(spec: TrackSpec, info: MasterInfo, analysis: Analysis) -> Sidecar:
    """The sidecar of an approved track from its master and its analysis."""
    loop = None
    if info.loop_start is not None and info.loop_length is not None:
        bars = None
        if spec.bar_loop and analysis.tempo_bpm:
            bar = spec.bar_s(analysis.tempo_bpm) * info.sample_rate
            bars = max(1, round(info.loop_length / bar))
        loop = LoopRegion(
            start_sample=info.loop_start,
            length_samples=info.loop_length,
            end_sample=info.loop_start + info.loop_length,
            bars=bars,
        )
    return Sidecar(
        schema=1,
        soundtrack=spec.soundtrack,
        track=spec.id,
        spec_hash=spec.spec_hash,
        sample_rate=info.sample_rate,
        channels=info.channels,
        length_samples=info.frames,
        duration_s=info.duration_s,
        loop=loop,
        tempo=Tempo(
            nominal_bpm=spec.bpm,
            measured_bpm=None if analysis.tempo_bpm is None else round(analysis.tempo_bpm, 4),
        ),
        time_signature=spec.time_signature or "4/4",
        beats_per_bar=spec.beats_per_bar,
        beats=list(analysis.beats),
        bars=list(analysis.downbeats),
        key=KeyInfo(
            nominal=spec.key,
            measured=analysis.key,
            confidence=round(analysis.key_confidence, 3) if analysis.key else None,
        ),
    )


def write_sidecar(data: Sidecar, out_dir: Path, track_id: str) -> EncodedFile:
    """Write `<track>.json` into a staging folder: canonical JSON, so equal data is equal bytes."""
    text = json.dumps(data.model_dump(by_alias=True, mode="json"), indent=2) + "\n"
    body = text.encode()
    path = out_dir / f"{track_id}.{SIDECAR_EXT}"
    path.write_bytes(body)
    return EncodedFile(SIDECAR_EXT, path, hashlib.sha256(body).hexdigest(), len(body))


def json_schema() -> dict[str, Any]:
    """The sidecar's JSON Schema (committed as docs/sidecar.schema.json)."""
    schema = Sidecar.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
