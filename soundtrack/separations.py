"""Separations handed between a build and a render-pool machine through the build's storage.

The build hands over the approved mix (float WAV, under its sha256); the pool machine separates
it and publishes every source under its own sha256, then an index naming them, last. The index
is keyed by the mix and the stem model as the manifest names it (as a render is keyed by the
model's name and revision, not by its weights), and records the separator that made the sources.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from soundtrack.audio import read_audio, write_wav
from soundtrack.errors import StorageError
from soundtrack.formats import content_type_for
from soundtrack.hashing import file_sha256
from soundtrack.report import Sha256, first_problem
from soundtrack.separate import SOURCE_NAME
from soundtrack.storage import Storage

# A separator's source: a plain name, as Demucs' `drums` or `guitar`.
SourceName = Annotated[str, StringConstraints(pattern=f"^{SOURCE_NAME.pattern}$")]


@dataclass(frozen=True)
class Separation:
    """Every source a separator made of a mix (at the mix's rate and length), and the separator."""

    sources: dict[str, np.ndarray]
    model_id: str
    revision: str
    license: str


class SeparationJob(BaseModel):
    """A mix handed to a render-pool machine to separate (a flow parameter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track_id: str
    mix_sha256: Sha256  # a key's name on the pool machine: a run's parameters are input
    stem_model: str

    @property
    def key(self) -> str:
        """Where the index of this mix's sources by this stem model is handed back."""
        return hashlib.sha256(
            f"separation|{self.mix_sha256}|{self.stem_model}".encode()
        ).hexdigest()


def share_mix(storage: Storage, track_id: str, mix_path: Path, stem_model: str) -> SeparationJob:
    """Hand a mix to render-pool machines, beside the renders, under its sha256."""
    sha256 = file_sha256(mix_path)
    storage.put_asset(
        mix_path,
        storage.render_key(sha256, "wav"),
        sha256=sha256,
        content_type=content_type_for("wav"),
        metadata={"track-id": track_id},
    )
    return SeparationJob(track_id=track_id, mix_sha256=sha256, stem_model=stem_model)


def fetch_mix(storage: Storage, job: SeparationJob, folder: Path) -> Path:
    """The handed-over mix, downloaded into `folder` and verified."""
    path = folder / f"{job.mix_sha256}.wav"
    storage.fetch(storage.render_key(job.mix_sha256, "wav"), path, sha256=job.mix_sha256)
    return path


def is_shared(storage: Storage, job: SeparationJob) -> bool:
    """True when the job's sources are already handed back."""
    return storage.read(storage.render_key(job.key, "json")) is not None


def share_separation(
    storage: Storage, job: SeparationJob, separation: Separation, sample_rate: int
) -> None:
    """Hand the sources back: each as float WAV under its sha256, then the index naming them."""
    shas = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, audio in separation.sources.items():
            path = Path(folder) / f"{name}.wav"
            write_wav(path, audio, sample_rate)
            shas[name] = sha = file_sha256(path)
            storage.put_asset(
                path,
                storage.render_key(sha, "wav"),
                sha256=sha,
                content_type=content_type_for("wav"),
                metadata={"track-id": job.track_id, "source": name},
            )
        index = Path(folder) / "index.json"
        made_by = _Index(
            model_id=separation.model_id,
            revision=separation.revision,
            license=separation.license,
            sources=shas,
        )
        index.write_text(made_by.model_dump_json(indent=2))
        storage.put_asset(
            index,
            storage.render_key(job.key, "json"),
            sha256=file_sha256(index),
            content_type="application/json",
            metadata={"track-id": job.track_id},
        )


def fetch_separation(storage: Storage, job: SeparationJob) -> Separation | None:
    """The sources a render-pool machine handed back for `job`, verified; None when absent."""
    index = storage.read(storage.render_key(job.key, "json"))
    if index is None:
        return None
    try:
        made_by = _Index.model_validate_json(index)
    except ValidationError as exc:
        raise StorageError(
            f"the sources handed back at {storage.render_key(job.key, 'json')} are no "
            f"separation's index: {first_problem(exc)}; remove it to separate the mix again",
            transient=False,
        ) from None
    sources = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, sha in made_by.sources.items():
            path = Path(folder) / f"{name}.wav"
            storage.fetch(storage.render_key(sha, "wav"), path, sha256=sha)
            sources[name] = read_audio(path)[0]
    return Separation(sources, made_by.model_id, made_by.revision, made_by.license)


class _Index(BaseModel):
    """What `share_separation` writes: read from storage, so anyone with write access to it
    may have left something else there (a source name is a file name here)."""

    model_id: str
    revision: str
    license: str
    sources: dict[SourceName, Sha256]
