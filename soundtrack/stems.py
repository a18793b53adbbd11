"""Stems for vertical layering: an approved mix separated into the layers an engine fades in and
out, each with the mix's exact length, gain and loop points, judged and encoded like the mix.

The stems are accepted together or not at all: every source the separator produced (published
or not) must sum back to the mix within SUM_RESIDUAL_MIN_DB (provisional, docs/gates.md). A stem
asked for that is near-silent (no vocals in an instrumental) is reported and not published.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from soundtrack.atomic import atomic_path, clear_folder
from soundtrack.audio import read_audio, resample, to_channels, write_wav
from soundtrack.encode import EncodedFile, encode
from soundtrack.errors import AudioError, SoundtrackError
from soundtrack.gates import (
    GateResult,
    GateTable,
    evaluate,
    gate_expectations,
    metrics_row,
    rejection,
)
from soundtrack.hashing import file_sha256, read_regular
from soundtrack.loudness import integrated_lufs
from soundtrack.master import Master
from soundtrack.measure import measure_file
from soundtrack.paths import printable
from soundtrack.pictures import PICTURE_EXT, Picture, draw_picture
from soundtrack.separate import SUM_RESIDUAL_MIN_DB, Separator, is_source_name, residual_db
from soundtrack.separations import Separation
from soundtrack.spec import TrackSpec

# A stem this far below the mix (integrated loudness) holds nothing worth a layer: bleed, not
# an instrument. Provisional, like the sum gate's limit.
NEAR_SILENT_LU = 30.0
# residual_db is +inf when the stems sum to the mix exactly; the lock (JSON) holds a number.
EXACT_SUM_DB = 300.0


@dataclass(frozen=True)
class StemOutcome:
    """One stem asked for: published with its files, or why not."""

    name: str
    status: Literal["published", "silent", "rejected"]
    reason: str | None
    gates: list[GateResult]
    files: list[EncodedFile]
    picture: Picture | None = None  # <track>.<stem>.png of a published stem


@dataclass(frozen=True)
class StemsOutcome:
    """A track's stems, the sum gate over all the separator's sources, and the separator."""

    stems: list[StemOutcome]
    sum_gate: GateResult
    model_id: str
    revision: str
    license: str


INDEX = "sources.json"  # a separation's sources and their sha256s, written last


class SeparationCache:
    """Separated sources by separation key (the mix's samples and the separator's id and
    revision): `<root>/separations/<key>/<source>.wav`, their sha256s written last, so asking
    for other stems of an unchanged mix does not run the separator again."""

    def __init__(self, root: Path) -> None:
        self.root = root / "separations"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The cached sources, or None when absent, incomplete or changed."""
        folder = self.root / key
        try:
            shas: dict[str, str] = json.loads(read_regular(folder / INDEX, follow_links=False))
            if not shas or not all(map(is_source_name, shas)):
                return None
            wavs = {name: folder / f"{name}.wav" for name in shas}
            if not all(
                file_sha256(wavs[name], follow_links=False) == sha for name, sha in shas.items()
            ):
                return None
        # AttributeError: an index of no mapping; RecursionError: one nested too deep.
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        return {name: read_audio(path)[0] for name, path in wavs.items()}

    def put(self, key: str, sources: dict[str, np.ndarray], sample_rate: int) -> None:
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, audio in sources.items():
            clear_folder(folder / f"{name}.wav")
            write_wav(folder / f"{name}.wav", audio, sample_rate)
        shas = {name: file_sha256(folder / f"{name}.wav") for name in sources}
        clear_folder(folder / INDEX)
        with atomic_path(folder / INDEX) as tmp:
            tmp.write_text(json.dumps(shas))


def separation_key(audio: np.ndarray, sample_rate: int, separator: Separator) -> str:
    """What decides a separation's sources: the mix's samples, its rate, and the separator."""
    digest = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    digest.update(f"|{sample_rate}|{separator.model_id}|{separator.revision}".encode())
    return digest.hexdigest()


def separate(
    audio: np.ndarray, sample_rate: int, separator: Separator, cache: SeparationCache | None
) -> Separation:
    """The mix's sources, from `cache` when this separator already split these samples."""
    key = separation_key(audio, sample_rate, separator)
    sources = cache.get(key) if cache else None
    if sources is None:
        sources = _separated(audio, sample_rate, separator)
        if cache is not None:
            cache.put(key, sources, sample_rate)
    return Separation(sources, separator.model_id, separator.revision, separator.license)


def judge_stems(
    spec: TrackSpec, mix: Master, separation: Separation, out_dir: Path
) -> StemsOutcome:
    """Judge the sum of every source and each stem asked for; encode the stems that pass into
    `out_dir` as <track>.<stem>.<ext>."""
    sources = separation.sources
    missing = [name for name in spec.stems if name not in sources]
    if missing:
        raise ValueError(
            f"track {spec.id!r}: the separator makes {', '.join(sources)}, not {', '.join(missing)}"
        )
    residual = min(residual_db(mix.audio, list(sources.values())), EXACT_SUM_DB)
    sum_gate = GateResult(
        name="stems_sum",
        value=round(residual, 2),
        limit=f">= {SUM_RESIDUAL_MIN_DB:g} dB below the mix (provisional)",
        passed=residual >= SUM_RESIDUAL_MIN_DB,
        severity="fail",
    )
    mix_lufs = integrated_lufs(mix.audio, mix.sample_rate)
    stems = [
        _stem(spec, name, sources[name], mix, mix_lufs, sum_gate, out_dir) for name in spec.stems
    ]
    return StemsOutcome(
        stems, sum_gate, separation.model_id, separation.revision, separation.license
    )


def unseparated(spec: TrackSpec, reason: str) -> StemsOutcome:
    """The stems of a track whose separation failed: each rejected, saying why."""
    gate = GateResult(
        "stems_sum", None, f">= {SUM_RESIDUAL_MIN_DB:g} dB below the mix", False, "fail"
    )
    stems = [StemOutcome(name, "rejected", reason, [], []) for name in spec.stems]
    return StemsOutcome(stems, gate, spec.stem_model or "", "", "")


def _separated(audio: np.ndarray, rate: int, separator: Separator) -> dict[str, np.ndarray]:
    """Every source, at the mix's rate, channels and exact length."""
    channels, frames = audio.shape
    at_model_rate = to_channels(resample(audio, rate, separator.sample_rate), separator.channels)
    out = {}
    try:
        sources = separator.separate(np.ascontiguousarray(at_model_rate, dtype=np.float32))
    except SoundtrackError:
        raise  # says what is wrong already (a mix the separator cannot take)
    except Exception as exc:
        # The separator's library (out of GPU memory, say): the build rejects the stems and
        # publishes the mix, so this is a reason to give in one line, not a bug's traceback.
        raise AudioError(
            f"the separator {separator.model_id} failed: {type(exc).__name__}: {exc}"
        ) from exc
    unnamed = [printable(repr(name)) for name in sources if not is_source_name(name)]
    if unnamed:
        raise AudioError(
            f"the separator {separator.model_id} returned {', '.join(unnamed)}, which is not a "
            f"source's name (lower-case letters, digits and _, as drums: it names files)"
        )
    if sorted(sources) != sorted(separator.sources):
        raise AudioError(
            printable(
                f"the separator {separator.model_id} returned sources {', '.join(sources)}, "
                f"not its own {', '.join(separator.sources)}"
            )
        )
    for name, source in sources.items():
        source = to_channels(resample(source, separator.sample_rate, rate), channels)[:, :frames]
        if source.shape[1] < frames:
            source = np.pad(source, ((0, 0), (0, frames - source.shape[1])))
        out[name] = np.ascontiguousarray(source, dtype=np.float32)
    return out


def _stem(
    spec: TrackSpec,
    name: str,
    audio: np.ndarray,
    mix: Master,
    mix_lufs: float,
    sum_gate: GateResult,
    out_dir: Path,
) -> StemOutcome:
    if not sum_gate.passed:  # then no stem can be trusted, silent or not
        reason = f"the stems do not sum to the mix (residual {sum_gate.value} dB below it)"
        return StemOutcome(name, "rejected", reason, [], [])
    lufs = integrated_lufs(audio, mix.sample_rate)
    floor = max(spec.gates.silence_floor_lufs, mix_lufs - NEAR_SILENT_LU)
    if not math.isfinite(lufs) or lufs < floor:
        reason = f"near-silent: {lufs:.1f} LUFS, the mix {mix_lufs:.1f} (floor {floor:.1f})"
        return StemOutcome(name, "silent", reason, [], [])
    stem = Master(
        audio=audio,
        sample_rate=mix.sample_rate,
        loop_start=mix.loop_start,
        loop_length=mix.loop_length,
        input_lufs=lufs,
        gain_db=0.0,  # the mix's gain, applied before separation: layers add up to the mix
        limiter_reduction_db=0.0,
    )
    tags = {
        "title": f"{spec.id} ({name})",
        "soundtrack": spec.soundtrack,
        "track_id": spec.id,
        "spec_hash": spec.spec_hash,
    }
    files = encode(
        stem,
        spec.formats,
        out_dir,
        f"{spec.id}.{name}",
        tags=tags,
        wav_bit_depth=spec.wav_bit_depth,
    )
    rows = [
        metrics_row(f"{spec.id}.{name}", file.format, measure_file(file.path)) for file in files
    ]
    gates = gate_expectations(
        [file.format for file in files],
        limits=spec.gates,
        loudness=spec.mastering.loudness,
        duration_s=mix.audio.shape[1] / mix.sample_rate,
        loop=spec.loop,
        sample_rate=mix.sample_rate,
        channels=mix.audio.shape[0],
    )
    results = evaluate(GateTable(f"{spec.id}.{name}", tuple(rows), tuple(gates)))
    if any(not g.passed and g.severity == "fail" for g in results):
        for file in files:
            file.path.unlink(missing_ok=True)
        return StemOutcome(name, "rejected", rejection(results), results, [])
    picture = draw_picture(
        audio,
        mix.sample_rate,
        out_dir / f"{spec.id}.{name}.{PICTURE_EXT}",
        title=f"{spec.id} ({name})",
        target_lufs=spec.mastering.loudness.integrated_lufs,
        loop_start=mix.loop_start,
        loop_length=mix.loop_length,
    )
    return StemOutcome(name, "published", None, results, files, picture)
