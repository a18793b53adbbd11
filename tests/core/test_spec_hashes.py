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

# (spec_hash, generation_key) per (manifest, track id), PIPELINE_VERSION held at "1". The bar
# loops' generation keys moved on 2026-12-07: a render holds the whole bars nearest the duration.
EXAMPLE_HASHES = {
    ("demo.yaml", "title-theme"): (
        "81dc163f95ff3a525b9bed91df0874fb3b3a80370960009ebfe530f586bcfb25",
        "863012f58a95accebe25e639b6efd2c1b8780382dfe072b8155672d595c0bf3a",
    ),
    ("demo.yaml", "meadow-loop"): (
        "4992fec62a46f872eaba03727567ea568e4a980792944d49d46c70c622356a10",
        "604826f3e908a3fed1448a9daa247ab722d90405780a71dbacac181f11715140",
    ),
    ("demo.yaml", "victory-sting"): (
        "1ddf41f983d3de15838b1be408f4d9ab248f341faa45b5bb297d98e1f5f9fa8d",
        "0b43f287a50dd1562862b65de44b15e556d549a7a13bd8e5df01f3ce875ffb97",
    ),
    ("sky-odyssey.yaml", "title-theme"): (
        "42fdaf5e75370fc466fe65b65ee8fb79df99107bdf9acace14078909e8653a1e",
        "db81bcadb8f9495704babaec3bc457dbf7f84d288dd8bb70e730160a5d42ece4",
    ),
    ("sky-odyssey.yaml", "explore-cloudsea"): (
        "513b3c3f51ffa01c241d672bdb4a1eeb1886ce9f112710ad8b71b5814901c56e",
        "94aab05437861061019eaa07037570b93ba6538c3ce5e48837ee6f5a73b3ead4",
    ),
    ("sky-odyssey.yaml", "explore-ruins"): (
        "7c4a2e06c2b2656514be455c2218095bbf204c9fe94d4b787aba46e343a2c807",
        "a1681e574c85b9cd4e5ea49ef3e352a4ba8c346e3c5ace4d6e484773a1c8c8ef",
    ),
    ("sky-odyssey.yaml", "town-market"): (
        "063eea7a7b62b0b515101477351f24c1d5f94e72cdab930cc497e9fb19c574ae",
        "d05f08e7660a4bb06893e2dc1bdede7626f29dc906d8d6c0deb76e8c08edee04",
    ),
    ("sky-odyssey.yaml", "combat-low"): (
        "b4fcb7a3f32c932cbb70b450aeb64919e074954740e55c5409f4e728f33e9f68",
        "bf22ae135f429b8da3e9e9908fc008add0aedfa813b8dd66d06cc1445e388d98",
    ),
    ("sky-odyssey.yaml", "combat-high"): (
        "ed6418811f797ff9e4764ca402a813e000380697d94afcdd2603ff1baa673278",
        "df7b59b2a19437bb4b31145bfbcb60bc6231ce8ccbd65fde4474d1e103ef66f1",
    ),
    ("sky-odyssey.yaml", "boss-storm-leviathan"): (
        "9814fa53bb94556a0e2943fe8bbe535a7bdf656c1e6c5c146a344dbba13e53a1",
        "1fa43beb2c231c5fb6799b618401097aef40e42e4dceb86aae73ca375fc42a65",
    ),
    ("sky-odyssey.yaml", "victory-sting"): (
        "d8d3d8892f4c75709bfa8537d23e5b3a14165825351784781622c591896bc62d",
        "ef3592e65e149e431fbb0c8b971afd363563f4e518eb7f06fbf380889ed4ee20",
    ),
    ("sky-odyssey.yaml", "game-over-sting"): (
        "49ec2e82c69e6d14175ab8b6233be637b52dc87a7edb81fe7db1bec63cc474d0",
        "97a9906154b35acd3ea32bd26244fb2c9ceabfc56ee7e95cdabf6406d0bc63db",
    ),
    ("sky-odyssey.yaml", "credits"): (
        "7c08972a6f8d68302dbffe6b7f30ef4da3a33ff13bf4793009c37a553625e028",
        "164b1b6fd2b92dad8292b37061330859802487447778a1a18e285d57bead8152",
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
    # Without the manifest's pin, which belongs to the model --model replaces (2026-12-05).
    "pinned-hub": "b461e5a6056d403092f898eaf5d963995af0cb259122a21cb024ff1be967b3dd",
    "sting": "72eb7213f8309ab55ee50e6b469eea393071f339b418f48a6e5ec2fb5b5ad80a",
}


def _hold_pipeline_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """The versions are part of every hash; a deliberate bump must not fail this test."""
    monkeypatch.setattr(sys.modules[resolve_tracks.__module__], "PIPELINE_VERSION", "1")
    monkeypatch.setattr(sys.modules[resolve_tracks.__module__], "RENDER_VERSION", "1")


def test_a_pipeline_version_bump_masters_again_and_a_render_version_bump_renders_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def keys() -> list[tuple[str, str | None]]:
        manifest = ROOT / "manifests" / "demo.yaml"
        return [
            (s.spec_hash, s.generation_key)
            for s in resolve_tracks(load_manifest(manifest), manifest.parent)
        ]

    _hold_pipeline_version(monkeypatch)
    before = keys()
    monkeypatch.setattr(sys.modules[resolve_tracks.__module__], "PIPELINE_VERSION", "9")
    remastered = keys()
    assert all(a[0] != b[0] and a[1] == b[1] for a, b in zip(before, remastered, strict=True))
    monkeypatch.setattr(sys.modules[resolve_tracks.__module__], "RENDER_VERSION", "9")
    assert all(a[1] != b[1] for a, b in zip(remastered, keys(), strict=True))


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
