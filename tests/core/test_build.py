"""The core build, driven directly (no Prefect server): what it approves, rejects, reuses and
refuses, checked against ffmpeg's ebur128, soundfile and the files' own sha256."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import mutagen
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack import models
from soundtrack.build import MAX_WORKERS, BuildResult, Options, ThreadExecutor, build, prepare
from soundtrack.build import log as build_log
from soundtrack.cli import app
from soundtrack.errors import InputError
from soundtrack.models import load_count
from soundtrack.report import BuildReport, to_junit
from soundtrack.storage import INDEX_NAME
from tests.faultproxy import FaultProxy, Seen
from tests.reference import assert_pictures_published, ebur128, sha256_of
from tests.s3server import SeaweedServer
from tests.signals import music_like

T = TypeVar("T")
MANIFEST = (Path(__file__).parents[1] / "manifests" / "e2e.yaml").read_text()


def statuses(result: BuildResult) -> dict[str, str]:
    return {track.id: track.status for track in result.report.tracks}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "credits.wav", music_like(8.0, 32000).T, 32000)
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    return tmp_path


def run(project: Path, model: Path, **options: object) -> BuildResult:
    """One build, as a new `soundtrack build` process would run it: no model loaded yet."""
    models._loaded.clear()
    return build(
        project / "m.yaml",
        Options(model=str(model), **options),  # type: ignore[arg-type]
        executor=ThreadExecutor(),
    )


def test_build_approves_rejects_and_rebuilds_only_what_changed(
    project: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = project / "out" / "e2e"

    # 1. First build: three approved, one rejected by its (deliberately strict) gate.
    first = run(project, tiny_model_dir)
    assert statuses(first) == {
        "battle-loop": "approved",
        "long-theme": "approved",
        "credits": "approved",
        "too-strict": "rejected",
    }
    assert first.exit_status == 1 and first.failure == "1 track(s) rejected, 0 failed"
    rejected = next(t for t in first.report.tracks if t.id == "too-strict")
    assert rejected.reason is not None and "silence" in rejected.reason and rejected.files == []
    assert not list(out.glob("too-strict.*")), "nothing of a rejected track is published"
    assert first.report.model_loads == 1

    # 2. The lock beside the assets matches the files; the files meet their targets.
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert {t["id"]: t["status"] for t in lock["tracks"]} == statuses(first)
    expected_seconds = {"battle-loop": 6.0, "long-theme": 35.0, "credits": 8.0}
    for track in (t for t in lock["tracks"] if t["status"] == "approved"):
        assert {f["format"] for f in track["files"]} == {"ogg", "mp3"}
        for entry in track["files"]:
            path = out / f"{track['id']}.{entry['format']}"
            assert sha256_of(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
            lufs, true_peak = ebur128(path)
            assert abs(lufs - -24.0) <= 0.5, (path.name, lufs)
            assert true_peak <= -1.0, (path.name, true_peak)
            if entry["format"] == "ogg":
                info = sf.info(str(path))
                assert info.samplerate == 44100 and info.channels == 2
                assert abs(info.frames / 44100 - expected_seconds[track["id"]]) <= 0.5
        assert_pictures_published(out.parent, track)
    loop_ogg = mutagen.File(out / "battle-loop.ogg")
    loop_files = next(t for t in lock["tracks"] if t["id"] == "battle-loop")["files"]
    loop_entry = next(f for f in loop_files if f["format"] == "ogg")
    assert int(loop_ogg["LOOPLENGTH"][0]) == loop_entry["loop_length"] > 0
    # The MP3 carries no loop points (docs/formats.md), and its lock entry claims none.
    mp3_entry = next(f for f in loop_files if f["format"] == "mp3")
    assert mp3_entry.get("loop_start") is None and mp3_entry.get("loop_length") is None
    assert not list(out.glob(".*")), "no temporary files left behind"

    # 3. Same manifest again: every approved track is cached and no model is loaded.
    # The lock and the review page are rewritten by every build; assets must not be.
    published = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".json"}
    published.pop("review.html")
    again = run(project, tiny_model_dir)
    assert statuses(again) == {
        "battle-loop": "cached",
        "long-theme": "cached",
        "credits": "cached",
        "too-strict": "rejected",
    }
    assert again.report.model_loads == 0
    assets_after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".json"}
    assets_after.pop("review.html")
    assert {n: t for n, t in assets_after.items() if not n.endswith(".jsonl")} == {
        n: t for n, t in published.items() if not n.endswith(".jsonl")
    }, "cached tracks' files are left untouched"

    # 4. A changed prompt regenerates that track only.
    (project / "m.yaml").write_text(
        MANIFEST.replace("driving taiko battle loop", "driving taiko battle loop, war horns")
    )
    before = sha256_of(out / "battle-loop.ogg")
    changed = run(project, tiny_model_dir, only=("battle-loop", "long-theme", "credits"))
    assert changed.exit_status == 0, changed.failure
    assert statuses(changed) == {
        "battle-loop": "approved",
        "long-theme": "cached",
        "credits": "cached",
    }
    assert changed.report.model_loads == 1
    assert sha256_of(out / "battle-loop.ogg") != before

    # 4b. A build of one track keeps serving every other approved one: the lock stays whole
    # (it was cut to the one track, and gc would then have deleted the others' files).
    one = run(project, tiny_model_dir, only=("credits",))
    assert one.exit_status == 0, one.failure
    assert statuses(one) == {"battle-loop": "cached", "long-theme": "cached", "credits": "cached"}
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    # A track left out keeps its record as it was, a rejected one too (it is still rejected).
    assert {t["id"]: t["status"] for t in lock["tracks"]} == {
        "battle-loop": "cached",
        "long-theme": "cached",
        "credits": "cached",
        "too-strict": "rejected",
    }
    assert CliRunner().invoke(app, ["gc", str(project / "out")]).stdout.split() == []

    # 5. A damaged lock is said to be unreadable and replaced, never silently. With --only it
    # was replaced by a lock of that track alone: the others' files, still published, were in
    # no lock, and gc deleted them.
    lock_path = out / "soundtrack.lock.json"
    lock_path.write_bytes(lock_path.read_bytes()[:200])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match=r"unreadable .*: --only would write a lock of the"):
        run(project, tiny_model_dir, only=("credits",))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    repaired = run(project, tiny_model_dir)
    assert repaired.failure == "1 track(s) rejected, 0 failed"
    (warning,) = [w for w in repaired.report.warnings if "unreadable" in w]
    assert warning.startswith("lock of e2e at ./out unreadable") and "rebuilding it" in warning
    lock = json.loads(lock_path.read_text())
    assert {t["id"]: t["status"] for t in lock["tracks"]} == {
        "battle-loop": "approved",
        "long-theme": "approved",
        "credits": "approved",
        "too-strict": "rejected",
    }
    for track in (t for t in lock["tracks"] if t["status"] == "approved"):
        assert sha256_of(out / f"{track['id']}.ogg") == track["files"][0]["sha256"]

    # 6. With the folder gone, the plan says which renders it will only master again.
    shutil.rmtree(out)
    with caplog.at_level(logging.INFO, logger=build_log.name):
        prepare(project / "m.yaml", Options(model=str(tiny_model_dir)), build_log)
    assert "3 to render in 1 batch(es) (3 of them rendered before, in this machine's" in caplog.text


BROKEN_INPUTS = {
    "expectations file": ("expectations: checks.json\n", "checks.json"),
    "code in expectations": ("expectations: checks.json\n", "'pandas' is not allowed"),
    "missing model": ("", "no such directory"),
    "unreadable source": ("", "credits.wav"),
}


@pytest.mark.parametrize("case", BROKEN_INPUTS)
def test_bad_input_is_refused_before_any_model_loads_and_nothing_is_written(
    case: str, project: Path, tiny_model_dir: Path
) -> None:
    manifest, model = project / "m.yaml", tiny_model_dir
    extra, said = BROKEN_INPUTS[case]
    canary = project / "CANARY"
    if case == "expectations file":
        (project / "checks.json").write_text('[{"type": "expect_column_values_to_be_between",')
    elif case == "code in expectations":
        # Pandas would run this query text as code (tests/core/test_expectations_input.py).
        touch = json.dumps(f"touch {shlex.quote(str(canary))}")
        kwargs = {"column": "sample_peak_dbfs", "max_value": -2.0, "condition_parser": "pandas"}
        code = {**kwargs, "row_condition": f"@pd.io.common.os.system({touch})"}
        check = {"type": "expect_column_max_to_be_between", "kwargs": code, "meta": {"gate": "x"}}
        (project / "checks.json").write_text(json.dumps([check]))
    elif case == "missing model":
        model = project / "no-such-model"
    else:
        (project / "audio" / "credits.wav").write_bytes(b"RIFF\x00\x00not a wav")
    manifest.write_text(MANIFEST.replace("storage: ./out\n", f"storage: ./out\n{extra}"))
    loads = load_count()

    with pytest.raises(InputError) as caught:
        run(project, model)
    assert said in str(caught.value) + " ".join(caught.value.problems)
    assert load_count() == loads, "no model was loaded"
    assert not (project / "out").exists() and not (project / "cache" / "renders").exists()

    # The CLI refuses the same way, before it starts Prefect: exit 2, one error, no traceback.
    cwd = os.getcwd()
    os.chdir(project)
    try:
        results = [
            CliRunner().invoke(app, ["build", "m.yaml", "--model", str(model)]),
            CliRunner().invoke(app, ["validate", "m.yaml"]),
        ]
    finally:
        os.chdir(cwd)
    for result in results if case != "missing model" else results[:1]:
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and said in " ".join(result.output.split())
        assert "Traceback" not in result.output and "temporary server" not in result.output
    if case == "missing model":
        # The flag's model, named as the flag, once: it was every track's problem, each at
        # a manifest line (defaults.model) that never named it.
        lines = [line for line in results[0].output.splitlines() if "no such directory" in line]
        assert len(lines) == 1 and lines[0].startswith("  - --model: model "), lines
    assert not (project / "out").exists() and not canary.exists()


def test_a_track_whose_render_fails_names_the_model_that_failed_it(
    project: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A NaN render's lock entry had `model: null`, though the model had loaded and rendered:
    which model and licence failed the track was lost."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(tiny_model_dir, tmp_path / "nan-model")
    weights = load_file(str(broken / "model.safetensors"))
    decoder = {k: v.fill_(float("nan")) if "audio_encoder" in k else v for k, v in weights.items()}
    save_file(decoder, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = run(project, broken, only=["too-strict"])
    failed = [t for t in result.report.tracks if t.status == "failed"]
    assert [t.id for t in failed] == ["too-strict"], statuses(result)
    for track in failed:
        assert "NaN" in (track.reason or "") and track.model is not None, track
        assert track.model.id == str(broken)
        assert track.model.license == "soundtrack-tiny-random-weights"
        assert track.model.revision.startswith("sha256:")


class Watcher:
    """What the Prefect UI's artifacts are told at the end of a build."""

    def __init__(self) -> None:
        self.unpublished: list[str | None] = []
        self.reports: list[BuildReport] = []

    def track_done(self, record: object) -> None:
        pass

    def finished(
        self, report: BuildReport, outcomes: object, index: object, unpublished: str | None
    ) -> None:
        self.unpublished.append(unpublished)
        self.reports.append(report)


def test_a_lock_the_storage_refuses_fails_the_build_in_one_line_and_shows_nothing_published(
    project: Path,
    tiny_model_dir: Path,
    s3_server: SeaweedServer,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock's write failing raised out of the build (a traceback, no --report), after the
    UI had been told, with links, that every file was published."""
    (project / "m.yaml").write_text(
        "schema: 1\nsoundtrack: lockless\ndefaults: {duration: 2, formats: [ogg]}\n"
        "tracks:\n  - {id: a, prompt: calm pads}\n"
    )
    lock_key = f"/{s3_bucket}/games/lockless/{INDEX_NAME}"

    def refuse_the_lock(seen: Seen) -> None:
        if seen.method == "PUT" and seen.path == lock_key:
            raise ConnectionAbortedError("the lock's write is dropped")  # no reply: it fails

    watcher = Watcher()
    with FaultProxy(s3_server.ports["s3.port"], before_forward=refuse_the_lock) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        models._loaded.clear()
        result = build(
            project / "m.yaml",
            Options(model=str(tiny_model_dir), out=f"s3://{s3_bucket}/games"),
            executor=ThreadExecutor(),
            observer=watcher,
        )
    assert result.exit_status == 1 and result.failure is not None
    assert result.failure.startswith("writing the index failed"), result.failure
    assert watcher.unpublished == [result.failure]
    # What it approved is served nowhere: a failure, with no files, in the report and JUnit.
    (track,) = result.report.tracks
    assert track.status == "failed" and track.files == [] and track.picture is None
    assert track.reason == f"approved, not published: {result.failure}"
    assert 'errors="1"' in to_junit(result.report)
    assert watcher.reports == [result.report], "the UI's table says so too"
    assert (
        s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=lock_key[1:])["KeyCount"] == 0
    )


def test_a_report_is_written_whole_or_its_failure_is_returned_not_raised(
    tmp_path: Path,
) -> None:
    """A report write failing (a full disk) raised out of `build` after the lock was published:
    a traceback, and the JUnit file after it never written."""
    from soundtrack.cli import _write_report

    gone = tmp_path / "gone" / "report.json"
    assert _write_report(gone, "{}") == "No such file or directory"
    assert not gone.parent.exists()
    junit = tmp_path / "junit.xml"
    assert _write_report(junit, "<testsuites/>") is None
    assert junit.read_text() == "<testsuites/>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]


class LabelledExecutor(ThreadExecutor):
    """Threads, as ThreadExecutor runs steps, keeping each step's label in submission order."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[str] = []

    def submit(self, step: Callable[..., T], *args: Any, label: str) -> Future[T]:
        self.labels.append(label)
        return super().submit(step, *args, label=label)


def recordings(folder: Path, lengths_s: list[float]) -> Path:
    """A manifest of recordings r0, r1... of these lengths (OGG only), in `folder`."""
    tracks = ""
    for i, seconds in enumerate(lengths_s):
        sf.write(folder / f"r{i}.wav", music_like(seconds, 44100, seed=i).T, 44100)
        tracks += f"  - {{id: r{i}, source: r{i}.wav}}\n"
    manifest = folder / "m.yaml"
    manifest.write_text(
        f"schema: 1\nsoundtrack: many\nstorage: ./out\ndefaults: {{formats: [ogg]}}\n"
        f"tracks:\n{tracks}"
    )
    return manifest


def test_a_recordings_targets_and_a_changed_reference_are_judged_again_not_served_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recording's bpm, key and time signature were in no hash (a recording has no prompt to
    carry them): added, the track stayed cached, its sidecar without them and no tempo gate
    run. A reference changed in place left the lock comparing with the recording gone."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = recordings(tmp_path, [4.0, 4.0])
    sf.write(tmp_path / "ref.wav", music_like(4.0, 44100, seed=7).T, 44100)
    text = manifest.read_text().replace("source: r1.wav}", "source: r1.wav, reference: ref.wav}")
    manifest.write_text(text)
    first = build(manifest, Options(), executor=ThreadExecutor())
    assert statuses(first) == {"r0": "approved", "r1": "approved"}, first.failure
    compared = first.report.tracks[1].reference
    assert compared is not None and compared["reference_sha256"] == sha256_of(tmp_path / "ref.wav")
    # A lock written before comparisons recorded their reference: taken as this one's, not
    # judged (or, with no render cache, rendered) again.
    lock_path = tmp_path / "out" / "many" / "soundtrack.lock.json"
    lock = json.loads(lock_path.read_text())
    del lock["tracks"][1]["reference"]["reference_sha256"]
    lock_path.write_text(json.dumps(lock))
    legacy = build(manifest, Options(), executor=ThreadExecutor())
    assert statuses(legacy) == {"r0": "cached", "r1": "cached"}, legacy.failure

    manifest.write_text(text.replace("source: r0.wav}", "source: r0.wav, key: A minor}"))
    sf.write(tmp_path / "ref.wav", music_like(4.0, 44100, seed=8).T, 44100)
    second = build(
        manifest,
        Options(),
        executor=ThreadExecutor(),
    )
    assert statuses(second) == {"r0": "approved", "r1": "approved"}, second.failure
    r0, r1 = second.report.tracks
    assert {g.name for g in r0.gates} >= {"key"}
    sidecar = json.loads((tmp_path / "out" / "many" / "r0.json").read_text())
    assert sidecar["key"]["nominal"] == "A minor"
    assert r1.spec_hash == first.report.tracks[1].spec_hash  # its files keep their keys
    assert r1.reference is not None
    assert r1.reference["reference_sha256"] == sha256_of(tmp_path / "ref.wav")
    third = build(manifest, Options(), executor=ThreadExecutor())
    assert statuses(third) == {"r0": "cached", "r1": "cached"}


def test_a_published_folder_restored_elsewhere_is_named_where_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI cache restored the storage folder at another path: the rebuild found every track
    cached and wrote a lock naming each file where it had been (file:// URIs of the old path)."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = recordings(tmp_path, [4.0, 2.0])
    first = build(manifest, Options(), executor=ThreadExecutor())
    assert statuses(first) == {"r0": "approved", "r1": "approved"}, first.failure
    moved = tmp_path / "restored"
    shutil.copytree(tmp_path / "out", moved)

    again = build(manifest, Options(out=str(moved)), executor=ThreadExecutor())

    assert statuses(again) == {"r0": "cached", "r1": "cached"}, again.failure
    lock = json.loads((moved / "many" / INDEX_NAME).read_text())
    entries = [
        entry
        for track in lock["tracks"]
        for entry in (*track["files"], track["sidecar"], track["picture"])
        if entry is not None
    ]
    assert len(entries) == 6  # each track: its OGG, sidecar and picture
    for entry in entries:
        assert entry["uri"] == (moved / entry["key"]).as_uri(), entry
    report_uris = [f.uri for t in again.report.tracks for f in t.stored_files()]
    assert report_uris == [entry["uri"] for entry in entries]


def test_a_recording_is_published_as_its_master_ends_not_after_every_master(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every master went into the pool's queue at once, each publish behind them all: a build
    of 500 recordings showed 0/500 for four minutes, then jumped."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    count = MAX_WORKERS + 6
    manifest = recordings(tmp_path, [2.0] * count)
    executor = LabelledExecutor()
    result = build(manifest, Options(), executor=executor)
    assert result.failure is None, result.failure
    masters = [i for i, label in enumerate(executor.labels) if label.startswith("master[")]
    publishes = [i for i, label in enumerate(executor.labels) if label.startswith("publish[")]
    assert len(masters) == len(publishes) == count
    assert publishes[0] < masters[MAX_WORKERS], executor.labels
    # Never more masters waiting on the pool than it has threads.
    for n, submitted in enumerate(masters):
        assert sum(p < submitted for p in publishes) >= n - MAX_WORKERS, executor.labels


class CountingExecutor(LabelledExecutor):
    """Counts the steps of one kind (masters, by default) running at once."""

    def __init__(self, kind: str = "master[") -> None:
        super().__init__()
        self.kind = kind
        self.running = self.most = 0
        self.spans: dict[str, tuple[float, float]] = {}  # label: when it started, and ended
        self._lock = threading.Lock()

    def submit(self, step: Callable[..., T], *args: Any, label: str) -> Future[T]:
        if not label.startswith(self.kind):
            return super().submit(step, *args, label=label)

        def counted(*given: Any) -> T:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            started = time.monotonic()
            try:
                return step(*given)
            finally:
                with self._lock:
                    self.running -= 1
                    self.spans[label] = (started, time.monotonic())

        return super().submit(counted, *args, label=label)


def test_masters_at_once_hold_no_more_audio_than_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four masters of 600 s ran at once (8.5 GB): a budget of audio seconds holds them back,
    in turn, and a track longer than it still masters, alone."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    monkeypatch.setattr("soundtrack.build.MASTERING_BUDGET_S", 4.5)  # two of 2 s, not three
    manifest = recordings(tmp_path, [2.0, 2.0, 2.0, 6.0, 2.0])
    executor = CountingExecutor()
    result = build(manifest, Options(), executor=executor)
    assert result.failure is None, result.failure
    assert statuses(result) == dict.fromkeys([f"r{i}" for i in range(5)], "approved")
    assert executor.most == 2  # MAX_WORKERS (4) without the budget


def test_renders_take_turns_and_masters_run_between_them(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU every batch was handed to the pool at once: in a Prefect flow they waited there
    for the GPU slot, one rendering, and every master queued behind them (a 200-track build
    mastered nothing until the last render)."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    tracks = "".join(f"  - {{id: t{n}, prompt: cue {n}, seed: {n}}}\n" for n in range(4))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "schema: 1\nsoundtrack: turns\nstorage: ./out\n"
        f"defaults: {{duration: 1.5, formats: [ogg]}}\ntracks:\n{tracks}"
    )
    models._loaded.clear()
    executor = CountingExecutor("generate[")
    options = Options(model=str(tiny_model_dir), device="cpu", batch_size=1)
    result = build(manifest, options, executor=executor)
    assert statuses(result) == dict.fromkeys(["t0", "t1", "t2", "t3"], "approved"), result.failure
    assert executor.most == 1, executor.labels
    generates = [n for n, label in enumerate(executor.labels) if label.startswith("generate[")]
    masters = [n for n, label in enumerate(executor.labels) if label.startswith("master[")]
    assert len(generates) == 4 and masters[0] < generates[-1], executor.labels

    # What the render cache holds takes no turn: read at once, not after the render before it
    # (the new, shortest track's, first in the plan).
    text = manifest.read_text() + "  - {id: t4, prompt: cue 4, seed: 4, duration: 1.0}\n"
    manifest.write_text(text)
    executor = CountingExecutor("generate[")
    again = build(manifest, replace(options, force=True), executor=executor)
    assert again.failure is None, again.failure
    assert executor.labels[0] == "generate[t4]", executor.labels
    fresh_ended = executor.spans["generate[t4]"][1]
    assert all(executor.spans[f"generate[t{n}]"][0] < fresh_ended for n in range(4))


def test_a_failure_is_said_to_be_a_full_disks_only_when_it_may_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_system: Callable[[str], Path]
) -> None:
    """Any failure, a CUDA assert too, read "a full disk?" (and rendered no other take) when a
    folder had under 256 MiB free, as a container's /tmp often has."""
    from soundtrack.build import _disk_checked

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(file_system("64m")))
    other = RuntimeError("CUDA error: device-side assert triggered")
    assert _disk_checked(other, tmp_path) == (str(other), False)
    full = OSError(errno.ENOSPC, "No space left on device")
    said, is_full = _disk_checked(full, tmp_path)
    assert is_full and said.startswith(f"{tempfile.gettempdir()} has 64.0 MiB free, a full disk?")
    # A folder all but full is named with any error: one may not say it (libsndfile's).
    monkeypatch.setattr(tempfile, "tempdir", str(file_system("1m")))
    said, is_full = _disk_checked(RuntimeError("System error."), tmp_path)
    assert is_full and said.endswith("MiB free, a full disk? (System error.)"), said
