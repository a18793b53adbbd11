"""End to end: `soundtrack build` on a tiny model against a real Prefect server.

Checks what a game team relies on: approved files meet their targets (by ffmpeg's ebur128 and
soundfile, not by our own meters), a rejected track leaves nothing behind, rebuilds reuse what is
published, and a build killed mid-way finishes cleanly when run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import mutagen
import pytest
import soundfile as sf

from tests.flows.running import SOUNDTRACK, build, statuses
from tests.prefect_server import PrefectServer
from tests.reference import ebur128
from tests.signals import music_like

pytestmark = pytest.mark.slow

MANIFEST = """\
schema: 1
soundtrack: e2e
storage: ./out
defaults:
  duration: 4
  loudness: console
tracks:
  - id: battle-loop
    prompt: driving taiko battle loop
    loop: true
    duration: 6
    seed: 11
  - id: long-theme
    prompt: slow orchestral theme
    duration: 35
    seed: 12
  - id: credits
    source: audio/credits.wav
  - id: too-strict
    prompt: quiet ambient sting
    seed: 14
    gates: {silence_floor_lufs: -20}
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path, prefect_server: PrefectServer) -> Any:
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "credits.wav", music_like(8.0, 32000).T, 32000)
    (tmp_path / "m.yaml").write_text(MANIFEST)
    env = {
        **os.environ,
        **prefect_server.env,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "SOUNDTRACK_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("SOUNDTRACK_STORAGE", None)
    return tmp_path, env, ["--model", str(tiny_model_dir), "--report", "report.json"]


def test_build_approves_rejects_and_rebuilds_only_what_changed(project: Any) -> None:
    workdir, env, args = project
    out = workdir / "out" / "e2e"

    # 1. First build: three approved, one rejected by its (deliberately strict) gate.
    first = build(workdir, env, *args, "--junit", "junit.xml")
    assert first.returncode == 1, first.stdout + first.stderr
    report = json.loads((workdir / "report.json").read_text())
    assert statuses(report) == {
        "battle-loop": "approved",
        "long-theme": "approved",
        "credits": "approved",
        "too-strict": "rejected",
    }
    rejected = next(t for t in report["tracks"] if t["id"] == "too-strict")
    assert "silence" in rejected["reason"] and rejected["files"] == []
    assert not list(out.glob("too-strict.*")), "nothing of a rejected track is published"
    junit = ET.parse(workdir / "junit.xml").getroot()
    failures = {c.get("name"): c.find("failure") for c in junit.iter("testcase")}
    assert failures["too-strict"] is not None and "silence" in failures["too-strict"].get(
        "message", ""
    )
    assert failures["battle-loop"] is None and junit.get("tests") == "4"

    # 2. The lock beside the assets matches the files; the files meet their targets.
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert statuses(lock) == statuses(report)
    expected_seconds = {"battle-loop": 6.0, "long-theme": 35.0, "credits": 8.0}
    for track in (t for t in lock["tracks"] if t["status"] == "approved"):
        assert {f["format"] for f in track["files"]} == {"ogg", "mp3"}
        for entry in track["files"]:
            path = out / f"{track['id']}.{entry['format']}"
            assert sha256(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
            lufs, true_peak = ebur128(path)
            assert abs(lufs - -24.0) <= 0.5, (path.name, lufs)
            assert true_peak <= -1.0, (path.name, true_peak)
            if entry["format"] == "ogg":
                info = sf.info(str(path))
                assert info.samplerate == 44100 and info.channels == 2
                assert abs(info.frames / 44100 - expected_seconds[track["id"]]) <= 0.5
    loop_ogg = mutagen.File(out / "battle-loop.ogg")
    loop_entry = next(t for t in lock["tracks"] if t["id"] == "battle-loop")["files"][0]
    assert int(loop_ogg["LOOPLENGTH"][0]) == loop_entry["loop_length"] > 0
    assert not list(out.glob(".*")), "no temporary files left behind"

    # 3. Same manifest again: every approved track is cached and no model is loaded.
    published = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = build(workdir, env, *args)
    assert again.returncode == 1
    report = json.loads((workdir / "report.json").read_text())
    assert statuses(report) == {
        "battle-loop": "cached",
        "long-theme": "cached",
        "credits": "cached",
        "too-strict": "rejected",
    }
    assert report["model_loads"] == 0
    assets_before = {name: t for name, t in published.items() if not name.endswith(".json")}
    assets_after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".json"}
    assert assets_after == assets_before, "cached tracks' files are left untouched"

    # 4. A changed prompt regenerates that track only.
    manifest = workdir / "m.yaml"
    manifest.write_text(
        MANIFEST.replace("driving taiko battle loop", "driving taiko battle loop, war horns")
    )
    before = sha256(out / "battle-loop.ogg")
    changed = build(
        workdir, env, *args, "--only", "battle-loop", "--only", "long-theme", "--only", "credits"
    )
    assert changed.returncode == 0, changed.stdout + changed.stderr
    report = json.loads((workdir / "report.json").read_text())
    assert statuses(report) == {
        "battle-loop": "approved",
        "long-theme": "cached",
        "credits": "cached",
    }
    assert report["model_loads"] == 1
    assert sha256(out / "battle-loop.ogg") != before

    # 5. A damaged lock is said to be unreadable and replaced, never silently.
    lock_path = out / "soundtrack.lock.json"
    lock_path.write_bytes(lock_path.read_bytes()[:200])
    repaired = build(workdir, env, *args, "--only", "credits")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    said = " ".join(repaired.stderr.split())
    assert "warning: lock of e2e at ./out unreadable" in said and "rebuilding it" in said
    lock = json.loads(lock_path.read_text())
    assert statuses(lock) == {"credits": "approved"} and "rebuilding it" in lock["warnings"][0]
    assert sha256(out / "credits.ogg") == lock["tracks"][0]["files"][0]["sha256"]


def test_killed_build_resumes_without_partial_or_duplicate_files(project: Any) -> None:
    workdir, env, args = project
    manifest = workdir / "m.yaml"
    tracks = "".join(
        f"  - id: cue-{n}\n    prompt: cue number {n}, strings\n    seed: {n}\n" for n in range(4)
    )
    manifest.write_text(
        "schema: 1\nsoundtrack: e2e\nstorage: ./out\ndefaults: {duration: 4}\ntracks:\n" + tracks
    )
    renders = workdir / "cache" / "renders"
    process = subprocess.Popen(
        [SOUNDTRACK, "build", "m.yaml", *args, "--batch-size", "1"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(renders.glob("*.json")):
        assert process.poll() is None, "the build ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    out = workdir / "out" / "e2e"
    assert not (out / "soundtrack.lock.json").exists(), "killed before the index was written"
    kept_renders = {p.name: p.stat().st_mtime_ns for p in renders.glob("*.wav")}
    assert kept_renders, "at least one render survived the kill"

    rerun = build(workdir, env, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert set(statuses(lock).values()) == {"approved"}
    published = {p.name for p in out.iterdir()}
    assert published == {"soundtrack.lock.json", "soundtrack.journal.jsonl"} | {
        f"cue-{n}.{ext}" for n in range(4) for ext in ("ogg", "mp3")
    }, "no partial, temporary or duplicate files"
    for track in lock["tracks"]:
        for entry in track["files"]:
            assert sha256(out / f"{track['id']}.{entry['format']}") == entry["sha256"]
    # Renders made before the kill were reused, not made again.
    assert all((renders / name).stat().st_mtime_ns == t for name, t in kept_renders.items())
