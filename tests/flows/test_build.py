"""End to end: `soundtrack build` on a tiny model against a real Prefect server (what the core
build does is tested without one in tests/core/test_build.py).

Checks what a game team relies on: approved files meet their targets (by ffmpeg's ebur128 and
soundfile, not by our own meters), a rejected track leaves nothing behind, rebuilds reuse what is
published, and a build killed mid-way finishes cleanly when run again.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
import soundfile as sf
from markdown_it import MarkdownIt

from soundtrack.separate import make_tiny_demucs
from tasks.generate import gpu_lock_path
from tests.prefect_server import PrefectServer
from tests.reference import ebur128, sha256_of
from tests.running import (
    SOUNDTRACK,
    build,
    build_runs,
    free_gpu_slot,
    run_artifacts,
    statuses,
    task_run_names,
)
from tests.signals import music_like

pytestmark = pytest.mark.slow

MANIFEST = (Path(__file__).parents[1] / "manifests" / "e2e.yaml").read_text()


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


def test_a_rejected_track_fails_the_run_in_one_line_and_exits_1_without_a_traceback(
    project: Any, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    out = workdir / "out" / "e2e"
    (workdir / "m.yaml").write_text(
        MANIFEST.replace("    duration: 35\n", "").replace("    duration: 6\n", "")
    )
    since = datetime.now(UTC)

    result = build(workdir, env, *args, "--junit", "junit.xml")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, "an ordinary outcome is not a crash"
    assert "Loading weights" not in output and "[transformers]" not in output, "library noise"
    assert "build failed: 1 track(s) rejected, 0 failed" in " ".join(result.stderr.split())
    assert "too-strict: rejected by gates: silence" in " ".join(result.stdout.split())
    (run,) = build_runs(prefect_server.api_url, since)
    assert run.state is not None and run.state.type.value == "FAILED"
    assert run.state.message == "1 track(s) rejected, 0 failed"
    report = json.loads((workdir / "report.json").read_text())
    assert statuses(report) == {
        "battle-loop": "approved",
        "long-theme": "approved",
        "credits": "approved",
        "too-strict": "rejected",
    }
    junit = ET.parse(workdir / "junit.xml").getroot()
    failures = {c.get("name"): c.find("failure") for c in junit.iter("testcase")}
    assert failures["too-strict"] is not None and failures["credits"] is None
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert statuses(lock) == statuses(report)
    assert lock["build_name"] == run.name, "whose verdicts these are (scripts/lock_to_junit.py)"
    for track in (t for t in lock["tracks"] if t["status"] == "approved"):
        for entry in track["files"]:
            path = out / f"{track['id']}.{entry['format']}"
            assert sha256_of(path) == entry["sha256"]
            lufs, true_peak = ebur128(path)
            assert abs(lufs - -24.0) <= 0.5 and true_peak <= -1.0, (path.name, lufs, true_peak)
    assert not list(out.glob("too-strict.*")), "nothing of a rejected track is published"
    # A folder gives no http(s) link to show a picture by: the markdown says where each PNG is.
    artifacts = run_artifacts(prefect_server.api_url, run.id)
    assert not [a for a in artifacts if a.type == "image"]
    (assets,) = [a for a in artifacts if a.key == "e2e-assets"]
    markdown = MarkdownIt("commonmark").enable("table")  # as the UI renders it
    markdown.validateLink = lambda url: True  # markdown-it alone leaves file: links as text
    shown = markdown.render(str(assets.data))
    for track in (t for t in lock["tracks"] if t["status"] == "approved"):
        assert f"<li>{track['id']}: <a href=" in shown and f">{out / track['id']}.png</a>" in shown
    first_qc = qc_report(str(assets.data))
    assert "too-strict" in first_qc.read_text()

    # Again: every approved track is cached and no model is loaded (a new process); the
    # recording, held to a stricter gate now, is rejected and keeps serving its earlier files.
    (workdir / "m.yaml").write_text(
        (workdir / "m.yaml")
        .read_text()
        .replace(
            "source: audio/credits.wav",
            "source: audio/credits.wav\n    gates: {silence_floor_lufs: -20}",
        )
    )
    since = datetime.now(UTC)
    again = build(workdir, env, *args)
    assert again.returncode == 1 and "Traceback" not in again.stdout + again.stderr
    report = json.loads((workdir / "report.json").read_text())
    assert report["model_loads"] == 0
    assert statuses(report) == {
        **dict.fromkeys(("battle-loop", "long-theme"), "cached"),
        "credits": "rejected",
        "too-strict": "rejected",
    }
    # The soundtrack's cards show what its lock serves: the rejected rebuild's earlier files
    # (they showed only this build's verdict, "rejected", and no file).
    (run,) = build_runs(prefect_server.api_url, since)
    (assets,) = [a for a in run_artifacts(prefect_server.api_url, run.id) if a.key == "e2e-assets"]
    (row,) = [line for line in str(assets.data).splitlines() if line.startswith("| credits |")]
    assert "its rebuild rejected, earlier files served" in row
    assert "[ogg](file://" in row and "credits.ogg" in row
    # The table says the same (it said "rejected", with no format).
    (table,) = [a for a in run_artifacts(prefect_server.api_url, run.id) if a.key == "e2e-tracks"]
    rows = table.data if isinstance(table.data, list) else json.loads(str(table.data))
    (credits,) = [r for r in rows if r["track"] == "credits"]
    assert credits["status"] == "approved; its rebuild rejected, earlier files served", credits
    assert credits["formats"] == "ogg, mp3" and "silence" in credits["reason"], credits
    # Each run links its own QC report: the first run's showed this one's, in one folder.
    assert qc_report(str(assets.data)) != first_qc
    assert "too-strict" in first_qc.read_text()


def test_a_manifest_reached_through_a_link_builds_from_the_links_folder(
    tmp_path: Path, prefect_server: PrefectServer
) -> None:
    """`validate` and the build's checks read a linked manifest's relative paths from the
    link's folder, and the flow from the linked file's: it published another recording into
    another folder than the ones checked."""
    for folder, seconds in (("shared", 4.0), ("game", 6.0)):  # told apart by their lengths
        (tmp_path / folder / "audio").mkdir(parents=True)
        sf.write(tmp_path / folder / "audio" / "theme.wav", music_like(seconds, 44100).T, 44100)
    (tmp_path / "shared" / "m.yaml").write_text(
        "schema: 1\nsoundtrack: linked\nstorage: ./out\ndefaults: {formats: [wav]}\n"
        "tracks:\n  - id: theme\n    source: audio/theme.wav\n"
    )
    (tmp_path / "game" / "m.yaml").symlink_to(tmp_path / "shared" / "m.yaml")
    env = {**os.environ, **prefect_server.env, "SOUNDTRACK_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SOUNDTRACK_STORAGE", None)

    result = build(tmp_path / "game", env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "shared" / "out").exists()
    published = tmp_path / "game" / "out" / "linked" / "theme.wav"
    assert sf.info(published).frames == 6 * 44100, "the recording beside the link"


def qc_report(assets: str) -> Path:
    """The QC report (its index.html) the assets card links to."""
    (link,) = re.findall(
        r"QC report \(Great Expectations Data Docs\): \[[^]]*\]\(([^)]*)\)", assets
    )
    return Path(url2pathname(urlsplit(link).path))


def _on_a_terminal(workdir: Path, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """`soundtrack ARGS` on a pseudo-terminal 120 columns wide: its exit code and the lines the
    terminal got, colours and cursor moves taken out (a bar redrawn is a line per drawing)."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [SOUNDTRACK, *args],
        cwd=workdir,
        env={**env, "TERM": "xterm"},
        stdin=sub,
        stdout=sub,
        stderr=sub,
    )
    os.close(sub)
    got = bytearray()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([main], [], [], 1.0)[0]:
            try:
                block = os.read(main, 1 << 16)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not block:
                break
            got += block
        elif process.poll() is not None:
            break
    os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", got.decode(errors="replace"))
    return process.wait(timeout=60), re.split(r"\r\n|\r|\n", text)


def test_on_a_terminal_the_runs_log_lines_print_above_the_progress_bar(project: Any) -> None:
    """Prefect's log handler printed with a console of its own, beneath the bar: on a terminal
    116 of a 60-track build's 143 log lines ran on from the bar's line."""
    workdir, env, args = project
    code, lines = _on_a_terminal(
        workdir, env, "build", "m.yaml", *args, "--only", "too-strict", "--gate", "silence=warn"
    )
    assert code == 0, "\n".join(lines)
    logged = [line for line in lines if "| INFO" in line]
    assert any("Finished in state Completed" in line for line in logged), logged
    assert [line for line in logged if "━" in line] == []
    assert any("━" in line for line in lines)  # the bar was drawn
    # --only: one track built (the silence gate a warning: approved), the others untouched.
    assert "1 approved; model loads: 1" in lines, lines
    rows = [line.split()[1] for line in lines if re.match(r"│ [a-z-]+ +│", line)]
    assert rows == ["too-strict"], lines


def test_killed_build_resumes_without_partial_or_duplicate_files(
    project: Any, prefect_server: PrefectServer, request: pytest.FixtureRequest
) -> None:
    workdir, env, args = project
    # A slot of its own: the dead build's lease, still on the server after the slot is freed
    # below, takes a slot away again when it runs out, from whichever build holds it then.
    env = {**env, "SOUNDTRACK_GPU_SLOT": f"killed-{uuid.uuid4().hex}"}
    slot = f"soundtrack-gpu-{env['SOUNDTRACK_GPU_SLOT']}"
    request.addfinalizer(lambda: gpu_lock_path(slot).unlink(missing_ok=True))
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
    free_gpu_slot(prefect_server.api_url, slot)  # or the rerun waits out the dead one's lease
    out = workdir / "out" / "e2e"
    assert not (out / "soundtrack.lock.json").exists(), "killed before the index was written"
    # A WAV without its sidecar yet (killed in between) is no render: it is made again.
    kept_renders = {
        p.name: p.stat().st_ino for p in renders.glob("*.wav") if p.with_suffix(".json").exists()
    }
    assert kept_renders, "at least one render survived the kill"
    staging = workdir / "cache" / "staging"
    assert list(staging.iterdir()), "the killed build left its staging folder"

    rerun = build(workdir, env, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert list(staging.iterdir()) == [], "the rerun deleted it, and its own"
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert set(statuses(lock).values()) == {"approved"}
    published = {p.name for p in out.iterdir()}
    assert published == {"soundtrack.lock.json", "soundtrack.journal.jsonl", "review.html"} | {
        f"cue-{n}.{ext}" for n in range(4) for ext in ("ogg", "mp3", "json", "png")
    }, "no partial, temporary or duplicate files"
    for track in lock["tracks"]:
        for entry in track["files"]:
            assert sha256_of(out / f"{track['id']}.{entry['format']}") == entry["sha256"]
    # Renders made before the kill were reused, not made again (a render is written to a new
    # file and renamed over its name).
    assert all((renders / name).stat().st_ino == ino for name, ino in kept_renders.items())
    # The render cache pruned between builds (docs/operations.md): the run's stored result
    # names renders that are gone, so the batch renders again instead of failing its tracks.
    shutil.rmtree(renders)
    forced = build(workdir, env, *args, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(list(renders.glob("*.wav"))) == 4


FOUR_FAMILIES = """\
schema: 1
soundtrack: mixed
storage: ./out
defaults:
  loudness: console
  sampling: {{stable-audio: {{steps: 8}}}}
tracks:
  - id: menu
    model: {musicgen}
    prompt: calm piano loop
    duration: 2
    seed: 1
  - id: theme
    model: {acestep}
    prompt: synthwave with warm analog pads
    key: D minor
    bpm: 90
    time_signature: 3/4
    duration: 5
    seed: 2
    gates: {{tempo: warn}}  # a tiny random model's noise has no tempo to measure
  - id: cave
    model: {stableaudio}
    prompt: ambient drone for a cave level
    negative_prompt: drums
    duration: 3
    seed: 3
  - id: line
    model: {bark}
    prompt: calm piano loop
    lyrics: la da night sky
    duration: 2
    seed: 4
    gates:
      duration_tolerance_s: 2.0
  - id: battle
    model: {acestep}
    prompt: the theme at full force, drums
    duration: 3
    seed: 5
    variation_of: theme
    stems: [drums, bass]
    stem_model: demucs
    gates: {{theme: warn}}  # noise carries no melody
"""


def test_one_build_renders_with_all_four_model_families(
    project: Any,
    tiny_model_dir: Path,
    tiny_acestep_dir: Path,
    tiny_stableaudio_dir: Path,
    tiny_bark_dir: Path,
) -> None:
    workdir, env, _ = project
    dirs = {
        "menu": tiny_model_dir,
        "theme": tiny_acestep_dir,
        "cave": tiny_stableaudio_dir,
        "line": tiny_bark_dir,
        "battle": tiny_acestep_dir,
    }
    make_tiny_demucs(workdir / "demucs")
    since = datetime.now(UTC)
    (workdir / "m.yaml").write_text(
        FOUR_FAMILIES.format(
            musicgen=dirs["menu"],
            acestep=dirs["theme"],
            stableaudio=dirs["cave"],
            bark=dirs["line"],
        )
    )

    result = build(workdir, env, "--report", "report.json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((workdir / "report.json").read_text())
    assert set(statuses(report).values()) == {"approved"}
    assert report["model_loads"] == 4, "each model loaded once"
    # Its batches take turns; none of them is another build to wait for.
    assert "another build" not in result.stdout + result.stderr
    out = workdir / "out" / "mixed"
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    # The variation is rendered from its parent's published file, in a task of its own, and its
    # (tiny, random) Demucs stems fail the sum gate: rejected, the mix published.
    tracks = {track["id"]: track for track in lock["tracks"]}
    theme_ogg = next(f for f in tracks["theme"]["files"] if f["format"] == "ogg")
    assert tracks["battle"]["parent_sha256"] == theme_ogg["sha256"]
    assert {s["name"]: s["status"] for s in tracks["battle"]["stems"]} == {
        "drums": "rejected",
        "bass": "rejected",
    }
    (run,) = build_runs(env["PREFECT_API_URL"], since)
    names = task_run_names(env["PREFECT_API_URL"], run.id)
    assert "vary[battle <- theme]" in names, names
    assert "separate[battle]" in names, names
    for track in lock["tracks"]:
        model = track["model"]
        assert model["id"] == str(dirs[track["id"]])
        assert model["revision"].startswith("sha256:"), model
        assert model["license"] == "soundtrack-tiny-random-weights", model
        seconds = {"menu": 2.0, "theme": 5.0, "cave": 3.0, "line": 2.0, "battle": 3.0}[track["id"]]
        for entry in track["files"]:
            path = out / f"{track['id']}.{entry['format']}"
            assert sha256_of(path) == entry["sha256"]
            info = sf.info(str(path))
            assert info.samplerate == 44100, (path.name, info.samplerate)
            # Bark's length is an upper bound; the tiny model runs to it.
            assert abs(info.frames / 44100 - seconds) <= 0.05, (path.name, info.frames)


HOLDER = """
import sys, time
from pathlib import Path
from soundtrack.storage.staging import build_lock
with build_lock(Path(sys.argv[1]), wait_s=0, on_wait=print):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_build_that_finds_the_soundtrack_busy_exits_75_naming_the_holder(project: Any) -> None:
    workdir, env, args = project
    folder = workdir / "out" / "e2e"
    # An earlier build's report and JUnit file, which CI would read as this one's.
    earlier = workdir / "earlier-report.json"
    earlier.write_text('{"tracks": []}')
    junit = workdir / "earlier-junit.xml"
    junit.write_text('<testsuite tests="0"/>')
    since = datetime.now(UTC)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = build(
            workdir,
            env,
            *args,
            "--storage-wait-s",
            "1",
            "--report",
            str(earlier),
            "--junit",
            str(junit),
        )
    finally:
        holder.kill()
        holder.wait()
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 75, output
    assert f"is being built by process {holder.pid} on " in output
    assert "Traceback" not in output
    assert not (folder / "soundtrack.lock.json").exists(), "nothing published"
    assert not earlier.exists() and not junit.exists()
    # The UI's progress says the build stopped, and why; not 0 % in progress for good.
    (run,) = build_runs(env["PREFECT_API_URL"], since)
    (progress,) = [a for a in run_artifacts(env["PREFECT_API_URL"], run.id) if a.type == "progress"]
    assert progress.description is not None
    assert progress.description.startswith("stopped after 0/4 tracks: ")
    assert f"is being built by process {holder.pid}" in progress.description
    # It published nothing, so it changes none of the soundtrack's cards (artifacts by key):
    # the last build that published stays the one they show.
    assert not [a.key for a in run_artifacts(env["PREFECT_API_URL"], run.id) if a.key]
