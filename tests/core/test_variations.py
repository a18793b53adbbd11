"""Variations on the tiny ACE-Step: rendered as covers of their parent's published audio, after
it, in one build; a changed parent re-renders its variations and nothing else; a manifest whose
variations cannot be planned or rendered exits 2 before anything renders."""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundtrack import models
from soundtrack.build import BuildResult, Options, ThreadExecutor, build
from soundtrack.cli import app
from tests.reference import sha256_of
from tests.specs import make_file

runner = CliRunner()


def manifest(model: Path, *, theme_prompt: str = "heroic title theme, horns") -> str:
    return f"""\
schema: 1
soundtrack: vary
storage: ./out
defaults:
  model: {model}
  formats: [ogg]
tracks:
  - id: title-theme
    prompt: {theme_prompt}
    duration: 3
  - id: menu
    prompt: calm menu pads
    duration: 3
  - id: combat-high
    prompt: fast combat version, drums
    duration: 2
    variation_of: title-theme
    gates: {{theme: warn}}  # the tiny model renders noise: no melody to share
  - id: victory
    prompt: victory sting
    duration: 2
    variation_of: combat-high
    gates: {{theme: warn}}
"""


def run(project: Path) -> BuildResult:
    models._loaded.clear()
    return build(project / "m.yaml", Options(), executor=ThreadExecutor())


def records(project: Path) -> dict[str, dict[str, object]]:
    lock = json.loads((project / "out" / "vary" / "soundtrack.lock.json").read_text())
    return {track["id"]: track for track in lock["tracks"]}


def published_sha(project: Path, record: dict[str, object]) -> str:
    (file,) = record["files"]  # type: ignore[misc]
    return sha256_of(project / "out" / file["key"])


def test_variations_render_after_their_parents_and_only_a_changed_parent_renders_again(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))
    first = run(tmp_path)
    assert first.exit_status == 0, first.failure
    tracks = records(tmp_path)
    assert {t: r["status"] for t, r in tracks.items()} == dict.fromkeys(tracks, "approved")
    # Each variation names the exact published file of its parent it was rendered from, which
    # exists only once the parent was approved and published: parents render first.
    assert tracks["combat-high"]["variation_of"] == "title-theme"
    assert tracks["combat-high"]["parent_sha256"] == published_sha(tmp_path, tracks["title-theme"])
    assert tracks["victory"]["parent_sha256"] == published_sha(tmp_path, tracks["combat-high"])
    assert {g["name"] for g in tracks["combat-high"]["gates"]} >= {"theme"}  # type: ignore[union-attr]
    assert "theme" not in {g["name"] for g in tracks["menu"]["gates"]}  # type: ignore[union-attr]

    again = run(tmp_path)
    assert {r.id: r.status for r in again.report.tracks} == dict.fromkeys(tracks, "cached")
    assert again.report.model_loads == 0
    # --only a variation: its published parent is there to render from, the others stay.
    models._loaded.clear()
    only = build(tmp_path / "m.yaml", Options(only=("victory",)), executor=ThreadExecutor())
    assert only.exit_status == 0, only.failure
    assert {r.id: r.status for r in only.report.tracks} == dict.fromkeys(tracks, "cached")
    assert {t: r["files"] for t, r in records(tmp_path).items()} == {
        t: r["files"] for t, r in tracks.items()
    }

    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir, theme_prompt="sad title theme"))
    changed = run(tmp_path)
    assert changed.exit_status == 0, changed.failure
    after = records(tmp_path)
    # A variation renders again when its parent's audio changed, not its files' bytes: the
    # tiny model's cover of the new theme may well be the old audio (random weights).
    heard = [r["files"][0]["audio_sha256"] for r in (tracks["combat-high"], after["combat-high"])]  # type: ignore[index]
    assert {r.id: r.status for r in changed.report.tracks} == {
        "title-theme": "approved",
        "menu": "cached",
        "combat-high": "approved",
        "victory": "cached" if heard[0] == heard[1] else "approved",
    }
    assert after["combat-high"]["parent_sha256"] == published_sha(tmp_path, after["title-theme"])
    assert after["combat-high"]["parent_sha256"] != tracks["combat-high"]["parent_sha256"]
    assert after["menu"]["files"] == tracks["menu"]["files"]
    assert changed.report.warnings == []

    # --only the parent: its variation stays as it was, following the parent's previous take,
    # and the build says so; the variation's own variation follows it, which did not change.
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir, theme_prompt="bright theme"))
    models._loaded.clear()
    parent = build(tmp_path / "m.yaml", Options(only=("title-theme",)), executor=ThreadExecutor())
    assert parent.exit_status == 0, parent.failure
    (warning,) = parent.report.warnings
    assert warning.startswith("combat-high varies title-theme, published anew by this build")
    # --only its variation then: its parent is published but out of date, not missing.
    models._loaded.clear()
    last = build(tmp_path / "m.yaml", Options(only=("victory",)), executor=ThreadExecutor())
    (victory,) = [r for r in last.report.tracks if r.id == "victory"]
    assert victory.status == "failed" and victory.reason is not None
    assert victory.reason == (
        "its parent 'combat-high' is not published as the manifest now has it, and not "
        "selected: build it too (--only combat-high --only victory)"
    )
    assert records(tmp_path)["victory"]["status"] in ("approved", "cached")  # its take stays
    # The same for a parent that varies nothing, changed since it was published.
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir, theme_prompt="dark theme"))
    last = build(tmp_path / "m.yaml", Options(only=("combat-high",)), executor=ThreadExecutor())
    # (Its own variation, waiting on it, crashed the build with a KeyError.)
    assert last.exit_status == 1
    (combat,) = [r for r in last.report.tracks if r.id == "combat-high"]
    assert combat.status == "failed" and combat.reason == (
        "its parent 'title-theme' is not published as the manifest now has it, and not "
        "selected: build it too (--only title-theme --only combat-high)"
    )


def test_a_variation_changed_on_a_machine_without_the_parents_render_takes_it_from_storage(
    tmp_path: Path, tiny_acestep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI runner with an empty cache: the parent published by an earlier build is fetched."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))
    assert run(tmp_path).exit_status == 0
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "another-machine"))
    text = manifest(tiny_acestep_dir).replace("fast combat version", "faster combat version")
    (tmp_path / "m.yaml").write_text(text)

    again = run(tmp_path)

    assert again.exit_status == 0, again.failure
    statuses = {r.id: r.status for r in again.report.tracks}
    assert statuses["title-theme"] == "cached" and statuses["combat-high"] == "approved"
    after = records(tmp_path)
    assert after["combat-high"]["parent_sha256"] == published_sha(tmp_path, after["title-theme"])


def test_a_variation_renders_from_its_parents_own_file_whatever_the_lock_lists_first() -> None:
    """A lock read from storage may list a stem's file before the mix's (edited, or written
    by another version): the variation rendered from the stem."""
    from soundtrack.build import _parent_audio
    from soundtrack.report import FileRecord, TrackRecord

    def ogg(key: str, stem: str | None) -> FileRecord:
        return make_file(
            key, key.encode(), stem=stem, audio_sha256=sha256(key.encode()).hexdigest()
        )

    files = [ogg("vary/title-theme.drums.ogg", "drums"), ogg("vary/title-theme.ogg", None)]
    parent = TrackRecord(id="title-theme", status="approved", spec_hash="s", files=files)
    chosen = _parent_audio(parent)
    assert chosen is not None and chosen.key == "vary/title-theme.ogg"


def test_a_parent_published_anew_with_the_same_audio_leaves_its_variations(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """A parent given another format (or gate, or stems) is mastered and published anew with
    the same audio, but its files' tags hold its spec hash: their sha256, which the variations'
    keys held, changed, and every variation down the chain rendered again on the GPU."""
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))
    first = run(tmp_path)
    assert first.exit_status == 0, first.failure
    before = records(tmp_path)
    text = manifest(tiny_acestep_dir).replace(
        "    duration: 3\n  - id: menu", "    duration: 3\n    formats: [ogg, mp3]\n  - id: menu"
    )
    (tmp_path / "m.yaml").write_text(text)
    again = run(tmp_path)
    assert again.exit_status == 0, again.failure
    assert {r.id: r.status for r in again.report.tracks} == {
        "title-theme": "approved",
        "menu": "cached",
        "combat-high": "cached",
        "victory": "cached",
    }
    assert again.report.model_loads == 0 and again.report.warnings == []
    after = records(tmp_path)
    (theme_ogg,) = [f for f in after["title-theme"]["files"] if f["format"] == "ogg"]  # type: ignore[union-attr]
    assert theme_ogg["sha256"] != before["title-theme"]["files"][0]["sha256"]  # type: ignore[index]
    assert after["combat-high"]["files"] == before["combat-high"]["files"]
    assert after["combat-high"]["parent_audio_sha256"] == theme_ogg["audio_sha256"]


def test_one_resident_model_loads_once_for_parents_and_variations(
    tmp_path: Path, tiny_acestep_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a GPU (one model resident): ACE-Step's parent comes first in the manifest and a
    MusicGen track second, yet each model loads once, ACE-Step's parent and variation together."""
    monkeypatch.setattr(models, "one_resident", lambda device: True)  # what loading asks
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))  # nothing rendered yet
    text = manifest(tiny_acestep_dir).replace(
        "    prompt: calm menu pads\n", f"    prompt: calm menu pads\n    model: {tiny_model_dir}\n"
    )
    (tmp_path / "m.yaml").write_text(text.split("  - id: victory")[0])
    result = run(tmp_path)
    assert result.exit_status == 0, result.failure
    assert {r.id: r.model.id for r in result.report.tracks if r.model} == {
        "title-theme": str(tiny_acestep_dir),
        "menu": str(tiny_model_dir),
        "combat-high": str(tiny_acestep_dir),
    }
    assert result.report.model_loads == 2


def test_a_variation_whose_parent_is_rejected_fails_without_rendering(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    text = manifest(tiny_acestep_dir).replace(
        "    duration: 3\n  - id: menu",
        # No mean is exactly zero: the DC-offset gate, made to fail, rejects the parent.
        "    duration: 3\n    gates: {dc_offset: fail, dc_offset_max: 0}\n  - id: menu",
    )
    (tmp_path / "m.yaml").write_text(text)
    result = run(tmp_path)
    statuses = {r.id: r for r in result.report.tracks}
    assert result.exit_status == 1
    assert statuses["title-theme"].status == "rejected"
    assert statuses["combat-high"].status == "failed"
    assert "title-theme" in (statuses["combat-high"].reason or "")
    assert statuses["victory"].status == "failed"
    assert statuses["menu"].status == "approved"


CYCLE = """\
  - id: a
    prompt: one
    variation_of: c
  - id: b
    prompt: two
    variation_of: a
  - id: c
    prompt: three
    variation_of: b
"""
MISSING = """\
  - id: a
    prompt: one
    variation_of: nowhere
"""


def test_a_repeated_id_does_not_hide_the_manifests_other_problems(tmp_path: Path) -> None:
    """validate listed the repeated ids alone; the bad variation_of showed only once they were
    fixed. A repeated id leaves every track readable: both in one run."""
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: s\nstorage: ./out\ntracks:\n"
        "  - id: a\n    prompt: p\n  - id: a\n    prompt: q\n"
        "  - id: b\n    prompt: r\n    variation_of: nowhere\n"
    )
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "2 problem(s)" in said, said
    assert "tracks[1].id (line 7): duplicate track id 'a' (also tracks[0])" in said, said
    assert "no track 'nowhere' in the manifest (a, b)" in said, said


def test_a_chain_of_variations_ending_in_no_track_is_a_problem_not_a_traceback(
    tmp_path: Path,
) -> None:
    """a is a variation of b, b of a track that does not exist: KeyError out of validate."""
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: s\nstorage: ./out\ntracks:\n"
        "  - id: a\n    prompt: p\n    variation_of: b\n"
        "  - id: b\n    prompt: q\n    variation_of: zzz\n"
    )
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2, result.output
    assert "no track 'zzz' in the manifest (a, b)" in " ".join(result.output.split())


def test_a_variation_of_no_track_in_a_long_manifest_names_the_nearest_not_every_track(
    tmp_path: Path,
) -> None:
    """Each bad `variation_of` listed every id of the manifest: 500 of them made 1.5 MB."""
    tracks = "".join(
        f"  - id: cue-{n:03}\n    prompt: p\n    variation_of: cue-{n:03}x\n" for n in range(200)
    )
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: long\nstorage: ./out\ntracks:\n" + tracks
    )
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "no track 'cue-007x' among the manifest's 200 tracks; did you mean 'cue-007'" in said, (
        said
    )
    assert len(result.output) < 200 * 400


@pytest.mark.parametrize(
    ("tracks", "expected"),
    [
        (CYCLE, "a cycle (a -> c -> b -> a)"),
        (MISSING, "no track 'nowhere' in the manifest"),
    ],
)
def test_variations_that_cannot_be_planned_exit_2_before_anything_renders(
    tmp_path: Path, tiny_acestep_dir: Path, tracks: str, expected: str
) -> None:
    head = f"schema: 1\nsoundtrack: bad\nstorage: ./out\ndefaults:\n  model: {tiny_acestep_dir}\n"
    (tmp_path / "m.yaml").write_text(head + "tracks:\n" + tracks)
    for command in ("validate", "build"):
        result = runner.invoke(app, [command, str(tmp_path / "m.yaml")])
        assert result.exit_code == 2, result.output
        assert expected in result.output
        assert "variation_of" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("short", ["sting", "theme"])
def test_a_variation_too_short_to_compare_exits_2_unless_its_theme_gate_only_warns(
    tmp_path: Path, tiny_acestep_dir: Path, short: str
) -> None:
    seconds = {"theme": 3.0, "sting": 2.0, short: 0.8}
    text = f"""\
schema: 1
soundtrack: short
storage: ./out
defaults:
  model: {tiny_acestep_dir}
tracks:
  - id: theme
    prompt: title theme
    duration: {seconds["theme"]}
  - id: sting
    prompt: victory sting
    duration: {seconds["sting"]}
    variation_of: theme
"""
    (tmp_path / "m.yaml").write_text(text)
    for command in ("validate", "build"):
        result = runner.invoke(app, [command, str(tmp_path / "m.yaml")])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert "track sting:" in said and "lasts 0.8 s, under the 1 s the theme gate" in said
    assert not (tmp_path / "out").exists()
    (tmp_path / "m.yaml").write_text(text + "    gates: {theme: warn}\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output


def test_a_variation_with_a_model_that_takes_no_recording_exits_2(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "m.yaml").write_text(
        f"""\
schema: 1
soundtrack: bad
storage: ./out
defaults:
  model: {tiny_model_dir}
tracks:
  - id: theme
    prompt: title theme
  - id: combat
    prompt: combat version
    variation_of: theme
"""
    )
    for command in ("validate", "build"):
        result = runner.invoke(app, [command, str(tmp_path / "m.yaml")])
        assert result.exit_code == 2, result.output
        assert "combat" in result.output
        assert "musicgen models take no source recording" in result.output
    assert not (tmp_path / "out").exists()


def test_a_render_pool_machine_gets_the_parent_through_the_storage(tmp_path: Path) -> None:
    """The build hands a parent's file to the pool beside the renders; a machine with a cache
    of its own fetches it, verified, to where the variation's render reads it."""
    from soundtrack.errors import StorageError
    from soundtrack.renders import RenderCache, fetch_parent, share_parent, shared_parent_key
    from soundtrack.spec import ParentAudio
    from soundtrack.storage import open_storage

    audio = b"OggS parent audio"
    parent = ParentAudio("title-theme", "vary/title-theme.ogg", sha256(audio).hexdigest(), "ogg")
    build_cache, pool_cache = RenderCache(tmp_path / "build"), RenderCache(tmp_path / "pool")
    build_cache.parent_path(parent).parent.mkdir(parents=True)
    build_cache.parent_path(parent).write_bytes(audio)
    storage = open_storage("./shared", base_dir=tmp_path)
    handed = shared_parent_key(storage, parent)

    share_parent(storage, build_cache, parent)
    fetch_parent(storage, pool_cache, parent, handed)
    assert pool_cache.parent_path(parent).read_bytes() == audio
    # A file that changed on the way is refused, never rendered from.
    pool_cache.parent_path(parent).unlink()
    (shared,) = (tmp_path / "shared").rglob(f"{parent.sha256}.ogg")
    shared.write_bytes(b"something else")
    with pytest.raises(StorageError, match="sha256"):
        fetch_parent(storage, pool_cache, parent, handed)
    assert not pool_cache.parent_path(parent).exists()
