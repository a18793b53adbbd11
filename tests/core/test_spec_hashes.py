"""Every track's spec_hash and generation_key, pinned: a refactor of resolving must change none.

A changed hash rebuilds (or regenerates) every published asset of that track, so these literals
change only with a deliberate change to what a track sounds like, never with a rename.
"""

from __future__ import annotations

import struct
import sys
import wave
from pathlib import Path

import pytest

from soundtrack.manifest import load_manifest
from soundtrack.resolve import resolve_tracks

ROOT = Path(__file__).resolve().parents[2]
# tests/manifests/invalid/ holds invalid manifests: none resolves. (tests/manifests/e2e.yaml
# needs its recording, written by the tests that use it.)
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))

# (spec_hash, generation_key) per (manifest, track id), PIPELINE_VERSION held at "1".
EXAMPLE_HASHES = {
    ("demo.yaml", "title-theme"): (
        "81dc163f95ff3a525b9bed91df0874fb3b3a80370960009ebfe530f586bcfb25",
        "863012f58a95accebe25e639b6efd2c1b8780382dfe072b8155672d595c0bf3a",
    ),
    ("demo.yaml", "meadow-loop"): (
        "f8c840033aad45e9ddd5d382480daefbfccc7444d0004cd336d044e8c5af2896",
        "8ae652d18bcffa7439c1d2e29e644e287dce3fb286b4b6512949053c40e43258",
    ),
    ("demo.yaml", "victory-sting"): (
        "1ddf41f983d3de15838b1be408f4d9ab248f341faa45b5bb297d98e1f5f9fa8d",
        "0b43f287a50dd1562862b65de44b15e556d549a7a13bd8e5df01f3ce875ffb97",
    ),
    ("sky-odyssey.yaml", "title-theme"): (
        "9f39ca4a5b92c130fd63fa7474f119e89b0fb0918d386a55fbab8a1d7d389eae",
        "7999a37d8cd1dc9baba23201b310573cbe352d1c4edcde0098456953a796d5cd",
    ),
    ("sky-odyssey.yaml", "explore-cloudsea"): (
        "71b49ea1e34ed4ab8e99ec0ed79db1654cb96993cffdfd5ea62eb72c852e8f35",
        "0d0f88c0444ce8dd3ad63b7350bb1fd34348d173584d3c72f192648e25de794a",
    ),
    ("sky-odyssey.yaml", "explore-ruins"): (
        "6c71587a5663c99d7f667f5640f37617f517b873c9a1e64f9fbc1efa1c9b9f64",
        "672e2a4373c1d56c9f582f26785a64146042585bc5d9c117b4ca6640460fd93a",
    ),
    ("sky-odyssey.yaml", "town-market"): (
        "ef9156aee6845fd9171d3302121f6fd5ffdd153849e802240fd5201e8dd33e2d",
        "03da971e0b8f38fa41948f32853e48e00a04e3a13b4cdb1cac0634f3c8aa14dc",
    ),
    ("sky-odyssey.yaml", "combat-low"): (
        "ec7be09874b634863f2b4f5fdedc2e79e93c54414370932737ad1fa921fa53b3",
        "0211652ef6dd7dd605340cbfc6fd6bc1f277caabd93ec75ca42ecfccea80780f",
    ),
    ("sky-odyssey.yaml", "combat-high"): (
        "9ea6374761b9d0865f15c126f64fa66cccd1055e03532493f3198e98f69d502f",
        "c57a4f2085145b4ae3e260a23ac28915c9b085d314aa0873142b94fe7c775ba7",
    ),
    ("sky-odyssey.yaml", "boss-storm-leviathan"): (
        "50fc43a0fb568b00960cee1851c36bf6d141fdb42e1939dda4b4638220591ddd",
        "7b96ee6444fe888493169f7ce9b5283e2333c459ba510e2e9d0a7faa2b350463",
    ),
    ("sky-odyssey.yaml", "victory-sting"): (
        "718883d364a4e5c65fc5d9631bcaaf608b9de95c0d9cb1a87e48af7a2d33393a",
        "5091dd9ddbe5ffa92f5593ccc6f2ade23ff4662b23bfc6ee28e6da37b93a0a72",
    ),
    ("sky-odyssey.yaml", "game-over-sting"): (
        "517cec8aaced416af81550a05a3533b86b8707615ed8cb1ea310d7467e66aba8",
        "1881d2e55c3804e3eb8d40ebca4dc92de75690b241d7196f23f506686d4a8b19",
    ),
    ("sky-odyssey.yaml", "credits"): (
        "d01fb4065887b67bf2f9e2b1fc5ecc944d742d96ac5d9a854208d29fc64ac679",
        "c3957618deb2a72a66a540522d51d462b948f9cc449e140b74878174b1245c9e",
    ),
}

# Every path through resolving: recordings (looped or not), explicit loudness, merged sampling
# and gates, expectations, model revision, a local model folder, output rate and channels.
EDGES = """\
schema: 1
soundtrack: edges
expectations: qc.json
defaults:
  duration: 12
  sampling: {temperature: 0.8, guidance: 4}
  gates: {dropout_max_s: 3, seam_loudness_max_lu: 2}
  loudness: {integrated: -20, true_peak: -2, tolerance: 1.5}
tracks:
  - id: recording
    source: audio/take.wav
  - id: recording-cut
    source: audio/take.wav
    duration: 2.5
    fade_in_ms: 20
  - id: recording-loop
    source: audio/take.wav
    loop: true
    loop_crossfade_ms: 100
  - id: local-model
    prompt: a theme
    model: models/tiny
    overlap_s: 5
    sample_rate: 48000
    channels: 1
    formats: [wav]
    wav_bit_depth: 24
  - id: pinned-hub
    prompt: a loop
    model: facebook/musicgen-medium
    model_revision: abc123
    loop: true
    loop_crossfade_ms: 400
    sampling: {top_k: 0, top_p: 0.9}
    gates: {dropout_max_s: 1, clip_run_samples: 2}
    loudness: mobile
    mood: tense
    instruments: [cello, taiko]
  - id: sting
    prompt: brass sting
    duration: 1.5
    seed: 0
    loudness: web
"""
EXPECTATIONS = """[{"type": "expect_column_max_to_be_between",
  "kwargs": {"column": "sample_peak_dbfs", "max_value": -3.0}, "meta": {"gate": "house_peak"}}]"""

EDGE_HASHES = {
    "recording": (
        "917afd36e02e744e34dbd339a9b74239cbace51414f2de24611bdb26b88e7dea",
        None,
    ),
    "recording-cut": (
        "f41e8b51b4433b4dbdf12d9cab2660e1a7cb33d20e57a6169cdde042d32d1010",
        None,
    ),
    "recording-loop": (
        "04f244414a1cde4adcb138fb4f03fd03d9550f549a0bef32fe517bd8180a46c1",
        None,
    ),
    "local-model": (
        "6b1bfd4c5a5121e9f32ee826d85f4384f3c813f8dec4a61bc7a466d17de7b01c",
        "c142b74815d8296d6367c96a57f384af276d0e49ba7b84aa06611fd489a3136b",
    ),
    "pinned-hub": (
        "fcd5c987be58df21c74820243ebf897abb0bf6c1c07535b7acd42b655ad2af46",
        "3955c36968c3c094a293bc7f3f5879ee64450515a280e16c2a63bd5a7b42e6a9",
    ),
    "sting": (
        "fd237c0e390b39c9c6f0738dc1549c9b9c95e47762f3a5b1bc488b074bb1a0cc",
        "f585ef49af0efde4836a3cfb8682f8952c3fcf7075d5958507fa0f99f038c179",
    ),
}
# Seconds generated: a loop renders room to search for its end, and its crossfade tail.
RENDER_DURATIONS_S = {
    "recording": 2.0,
    "recording-cut": 2.5,
    "recording-loop": 2.5,
    "local-model": 12.0,
    "pinned-hub": 12.8,
    "sting": 1.5,
}
# --model replaces the model of generated tracks: their generation keys follow it.
OVERRIDDEN_GENERATION_KEYS = {
    "recording": None,
    "recording-cut": None,
    "recording-loop": None,
    "local-model": "5d7775766d204c4c8ec5c23cffe42d6ee0ec9bc7556497d76c67d20aeda02762",
    "pinned-hub": "77fee882842c4e76d5a2a956b0800b3aeefd4f2f031fd123a735617a048e14e6",
    "sting": "72eb7213f8309ab55ee50e6b469eea393071f339b418f48a6e5ec2fb5b5ad80a",
}


def _hold_pipeline_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIPELINE_VERSION is part of every hash; a deliberate bump must not fail this test."""
    monkeypatch.setattr(sys.modules[resolve_tracks.__module__], "PIPELINE_VERSION", "1")


def _write_take(path: Path) -> None:
    """Two seconds of a 16-bit stereo ramp at 32 kHz, byte for byte the same on every run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = b"".join(struct.pack("<hh", (i * 37) % 20000 - 10000, i % 1000) for i in range(64000))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(32000)
        out.writeframes(frames)


def test_example_manifests_keep_their_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    _hold_pipeline_version(monkeypatch)
    hashes = {
        (path.name, spec.id): (spec.spec_hash, spec.generation_key)
        for path in EXAMPLES
        for spec in resolve_tracks(load_manifest(path), path.parent)
    }
    assert hashes == EXAMPLE_HASHES


def test_every_resolving_path_keeps_its_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_pipeline_version(monkeypatch)
    _write_take(tmp_path / "audio" / "take.wav")
    (tmp_path / "qc.json").write_text(EXPECTATIONS)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    path = tmp_path / "edges.yaml"
    path.write_text(EDGES)
    specs = resolve_tracks(load_manifest(path), tmp_path)
    assert {spec.id: (spec.spec_hash, spec.generation_key) for spec in specs} == EDGE_HASHES
    assert {spec.id: spec.render_duration_s for spec in specs} == RENDER_DURATIONS_S
    overridden = resolve_tracks(load_manifest(path), tmp_path, model_override="tiny")
    assert {spec.id: spec.generation_key for spec in overridden} == OVERRIDDEN_GENERATION_KEYS
