"""Inputs checked once: outputs never overlap what a build reads, reports are writable up front."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from soundtrack.build import Options, prepare
from soundtrack.cli import app
from soundtrack.errors import InputError
from soundtrack.inputs import check_inputs
from soundtrack.separate import make_tiny_demucs


def recording(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(44100 * 2) / 44100
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), 44100)
    return path


def manifest(folder: Path, *, soundtrack: str = "game", storage: str = "./assets") -> Path:
    recording(folder / "audio" / "credits.wav")
    path = folder / "m.yaml"
    path.write_text(
        f"schema: 1\nsoundtrack: {soundtrack}\nstorage: {storage}\n"
        "tracks:\n  - id: credits\n    source: audio/credits.wav\n"
    )
    return path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def refusal(path: Path, **kwargs: object) -> str:
    with pytest.raises(InputError) as caught:
        check_inputs(path, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith("outputs overlap inputs")
    return "\n".join(caught.value.problems)


def test_a_delivery_that_would_overwrite_its_source_is_refused(tmp_path: Path) -> None:
    path = manifest(tmp_path, soundtrack="audio", storage=".")
    problems = refusal(path)
    assert f"contains track credits's source {tmp_path / 'audio' / 'credits.wav'}" in problems


def test_the_manifest_folder_as_the_soundtrack_folder_is_refused(tmp_path: Path) -> None:
    game = tmp_path / "music"
    path = manifest(game, soundtrack="music", storage="..")
    problems = refusal(path)
    assert f"contains the manifest {path}" in problems


def test_storage_inside_the_render_cache_and_the_cache_inside_storage(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = manifest(tmp_path)
    assert "is inside the render cache" in refusal(path, out=str(cache_dir))
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "assets" / "game" / "cache"))
    assert "contains the render cache" in refusal(path)


def test_a_symlinked_or_differently_cased_folder_is_the_same_folder(tmp_path: Path) -> None:
    path = manifest(tmp_path, soundtrack="audio")
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    assert "contains track credits's source" in refusal(path, out=str(tmp_path / "link"))
    upper = manifest(tmp_path / "case", soundtrack="audio", storage=".")
    (upper.parent / "audio").rename(upper.parent / "Audio")
    upper.write_text(upper.read_text().replace("audio/credits.wav", "Audio/credits.wav"))
    assert "contains track credits's source" in refusal(upper)


def test_expectations_and_model_folders_count_as_inputs(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    (tmp_path / "assets" / "game").mkdir(parents=True)
    (tmp_path / "assets" / "game" / "checks.json").write_text("[]")
    text = path.read_text().replace("tracks:", "expectations: assets/game/checks.json\ntracks:")
    path.write_text(text)
    assert "contains the expectations file" in refusal(path)
    generated = tmp_path / "gen"
    (generated / "models" / "tiny").mkdir(parents=True)
    (generated / "models" / "tiny" / "config.json").write_text('{"model_type": "musicgen"}')
    empty_safetensors = (2).to_bytes(8, "little") + b"{}"  # a header and no tensors
    (generated / "models" / "tiny" / "model.safetensors").write_bytes(empty_safetensors)
    (generated / "m.yaml").write_text(
        "schema: 1\nsoundtrack: models\nstorage: .\n"
        "tracks:\n  - id: a\n    prompt: drums\n    duration: 2\n"
    )
    model = str(generated / "models" / "tiny")
    assert "contains track a's model folder" in refusal(generated / "m.yaml", model=model)


def test_reference_recordings_and_stem_models_count_as_inputs(tmp_path: Path) -> None:
    path = manifest(tmp_path, soundtrack="music", storage=".")
    recording(tmp_path / "music" / "temp-score.wav")
    make_tiny_demucs(tmp_path / "music" / "demucs")
    text = path.read_text() + "    reference: music/temp-score.wav\n"
    path.write_text(text)
    assert "contains track credits's reference" in refusal(path)
    path.write_text(
        text.replace(
            "reference: music/temp-score.wav", "stems: [drums]\n    stem_model: music/demucs"
        )
    )
    assert "contains track credits's stem model folder" in refusal(path)


def test_outputs_beside_inputs_are_fine(tmp_path: Path) -> None:
    checked = check_inputs(manifest(tmp_path, storage="."))
    assert [spec.id for spec in checked.specs] == ["credits"]
    # A path that begins with an input's whole path is beside it, not in it.
    beside = check_inputs(manifest(tmp_path), reports=[tmp_path / "audio" / "credits.wav.json"])
    assert beside.specs == checked.specs


def test_report_paths_are_checked_before_anything_runs(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    with pytest.raises(InputError, match=r"the folder .*missing does not exist"):
        check_inputs(path, reports=[tmp_path / "missing" / "r.json"])
    with pytest.raises(InputError, match=r"the folder .*m\.yaml is a file, not a folder"):
        check_inputs(path, reports=[path / "r.json"])  # it exists, as a file
    with pytest.raises(InputError, match="is a directory; give a file name"):
        check_inputs(path, reports=[tmp_path])
    problems = refusal(path, reports=[tmp_path / "audio" / "credits.wav"])
    assert "the report file credits.wav" in problems
    # A report is written beside its path and renamed over it: a device would be replaced.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for special in (Path("/dev/full"), fifo):
        with pytest.raises(InputError, match="is not a regular file"):
            check_inputs(path, reports=[special])
    assert Path("/dev/full").is_char_device() and fifo.is_fifo()


def test_cli_validate_and_build_refuse_with_exit_2_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = manifest(tmp_path, soundtrack="audio", storage=".")
    source = tmp_path / "audio" / "credits.wav"
    before = source.read_bytes()
    for args in (["validate", str(path)], ["build", str(path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "outputs overlap inputs" in result.stderr
        assert "Traceback" not in result.output
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "m.yaml"]
    # validate checks the manifest's own storage; build also checks $SOUNDTRACK_STORAGE.
    fine = manifest(tmp_path / "ok")
    monkeypatch.setenv("SOUNDTRACK_STORAGE", str(tmp_path / "ok"))
    assert CliRunner().invoke(app, ["validate", str(fine)]).exit_code == 0
    fine.write_text(fine.read_text().replace("soundtrack: game", "soundtrack: audio"))
    result = CliRunner().invoke(app, ["build", str(fine)])
    assert result.exit_code == 2 and "contains track credits's source" in result.stderr
    assert not (tmp_path / "ok" / "audio" / "soundtrack.lock.json").exists()


def test_a_home_folder_of_no_user_is_a_path_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`~nosuchuser/...` stays as typed, as a shell leaves it (pathlib's expanduser raised)."""
    path = manifest(tmp_path, storage="~no-such-user-here/out")
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", "~no-such-user-here/cache")
    checked = check_inputs(path)
    assert checked.storage_url == "~no-such-user-here/out"
    path.write_text(
        path.read_text()
        + "  - {id: theme, prompt: a theme, duration: 3, model: ~no-such-user-here/model}\n"
    )
    with pytest.raises(InputError) as caught:
        check_inputs(path)
    assert f"{tmp_path}/~no-such-user-here/model': no such directory" in "".join(
        caught.value.problems
    )


def test_a_report_may_not_overwrite_what_the_build_publishes_or_the_other_report(
    tmp_path: Path,
) -> None:
    """`--report assets/game/credits.ogg` wrote JSON over the published file after publishing
    it, and `--junit .../soundtrack.lock.json` replaced the lock; `--report X --junit X` kept
    only one of the two."""
    path = manifest(tmp_path)
    published = tmp_path / "assets" / "game" / "credits.ogg"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"OggS published")
    lock = published.parent / "soundtrack.lock.json"
    lock.write_text("{}")
    for args in (
        ["--report", str(published)],
        ["--junit", str(lock)],
        ["--report", str(tmp_path / "r.xml"), "--junit", str(tmp_path / "r.xml")],
    ):
        result = CliRunner().invoke(app, ["build", str(path), *args])
        assert result.exit_code == 2, result.output
        assert "outputs overlap: one would overwrite another" in result.stderr
        assert "Traceback" not in result.output
    assert published.read_bytes() == b"OggS published" and lock.read_text() == "{}"
    assert not (tmp_path / "r.xml").exists()
    # Nor over another soundtrack's, in the same storage: gc then read its files as garbage.
    other = tmp_path / "assets" / "menus"
    other.mkdir()
    (other / "soundtrack.lock.json").write_text("{}")
    (other / "theme.ogg").write_bytes(b"OggS menus")
    for args in (["--report", str(other / "soundtrack.lock.json")], ["--junit", str(other / "x")]):
        result = CliRunner().invoke(app, ["build", str(path), *args])
        assert result.exit_code == 2, result.output
        assert "a report would overwrite another soundtrack's published files" in result.stderr
        assert (
            f"is inside soundtrack menus's folder (holding its soundtrack.lock.json) {other}"
            in (" ".join(result.stderr.split()))
        )
    assert (other / "soundtrack.lock.json").read_text() == "{}" and not (other / "x").exists()
    # Reports beside the soundtracks' folders, even inside the storage, are fine.
    (tmp_path / "assets" / "notes").mkdir()  # a folder with no lock is no soundtrack's
    reports = [tmp_path / "assets" / "report.json", tmp_path / "assets" / "notes" / "junit.xml"]
    check_inputs(path, reports=reports)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", ""], "--out is empty"),
        (["--out", " "], "--out is empty"),
        (["--device", "tpu"], "device must be auto, cpu, mps, cuda or cuda:N"),
        (["--device", ""], "device is empty"),
        (["--device", "cuda:x"], "device must be auto, cpu, mps, cuda or cuda:N"),
        pytest.param(
            ["--device", "cuda"],
            "torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here"),
        ),
    ],
)
def test_build_refuses_an_empty_out_or_a_device_it_cannot_use_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """An unset CI variable (`--out "$ASSETS"`) published into the current folder, and a bad
    --device started a Prefect server and a flow run, left an empty folder, then exited 2."""
    path = manifest(tmp_path / "game")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "game"}
    assert sorted(p.name for p in (tmp_path / "game").iterdir()) == ["audio", "m.yaml"]


def test_an_out_folder_with_a_colon_in_its_name_is_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out rel:out` was taken for a URL, left relative, and published beside the manifest."""
    path = manifest(tmp_path / "game")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for folder in (tmp_path / "cwd", tmp_path / "game"):  # files, not folders: refused
        (folder / "rel:out").write_text("not a folder")
    result = CliRunner().invoke(app, ["build", str(path), "--out", "rel:out"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"{tmp_path / 'cwd' / 'rel:out'} is not a directory" in said, said


def test_a_manifest_path_through_dotdot_is_named_without_it(tmp_path: Path) -> None:
    """Messages named the manifest as /work/cwd/../game/m.yaml."""
    path = manifest(tmp_path / "game")
    (tmp_path / "cwd").mkdir()
    checked = check_inputs(tmp_path / "cwd" / ".." / "game" / "m.yaml")
    assert checked.manifest_path == path
    assert checked.specs[0].source == path.parent / "audio" / "credits.wav"


def test_a_typed_hub_id_that_a_folder_beside_the_manifest_would_shadow_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model facebook/musicgen-small` loaded a folder of that name beside the manifest, with
    whatever licence its card claimed: what ran depended on the game's repository."""
    path = manifest(tmp_path / "game")
    shadow = tmp_path / "game" / "facebook" / "musicgen-small"
    shadow.mkdir(parents=True)
    (shadow / "README.md").write_text("---\nlicense: mit\n---\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build", str(path), "--model", "facebook/musicgen-small"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert "--model facebook/musicgen-small: not a folder here, but one beside the manifest" in said
    assert "give that folder's path, or rename it" in said
    assert sorted(p.name for p in (tmp_path / "game").iterdir()) == ["audio", "facebook", "m.yaml"]


def test_a_typed_model_folder_is_the_one_relative_to_where_it_was_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "game").mkdir()
    (tmp_path / "game" / "m.yaml").write_text(
        "schema: 1\nsoundtrack: g\nstorage: ./out\ntracks:\n  - id: a\n    prompt: calm piano\n"
    )
    for folder in (tmp_path / "models" / "m", tmp_path / "game" / "models" / "m"):
        folder.mkdir(parents=True)  # no model in either: the error names the one it read
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build", "game/m.yaml", "--model", "models/m"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"model '{tmp_path / 'models' / 'm'}': not a model directory" in said, said
    assert "game/models" not in said
    # An unset CI variable (`--model "$MODEL"`): not the current folder taken for a model.
    result = CliRunner().invoke(app, ["build", "game/m.yaml", "--model", ""])
    assert result.exit_code == 2 and "--model is empty" in result.stderr, result.output
    assert not (tmp_path / "game" / "out").exists()


@pytest.mark.parametrize("wait_s", [math.nan, -1.0, 86401.0])
def test_a_storage_wait_that_is_no_time_is_refused_where_the_flow_runs_too(
    tmp_path: Path, wait_s: float
) -> None:
    """A deployment's parameters do not pass through the CLI's range: a NaN wait for another
    build's S3 lease never ended, sending a request after each."""
    with pytest.raises(InputError, match="--storage-wait-s must be 0 to 86400 seconds, got "):
        prepare(manifest(tmp_path / "game"), Options(storage_wait_s=wait_s))


def test_nothing_is_published_into_a_folder_deleted_when_the_build_ends(tmp_path: Path) -> None:
    """A worker's temporary checkout of the game repository: a folder storage beside the
    manifest would be deleted with it, after a run that said it published."""
    checkout = tmp_path / "tmpab12prefect"
    path = manifest(checkout / "game-main" / "audio", storage="../build/assets")
    with pytest.raises(InputError) as caught:
        check_inputs(path, discarded=checkout)
    assert "temporary folder its worker deletes" in str(caught.value)
    (problem, _) = caught.value.problems  # the soundtrack's folder, the render handoff folder
    assert problem.startswith("the soundtrack's output folder")
    assert problem.endswith(f"/build/assets/game is inside the folder {checkout}")
    assert check_inputs(path, out=str(tmp_path / "kept"), discarded=checkout)
    assert not (checkout / "game-main" / "build").exists()


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("x" * 300, "--model has a name longer than 255 bytes"),
        ("my model", "--model has a space"),
        # a folder named in another encoding: safetensors raised on it
        (os.fsdecode(b"models/m-\xfe"), "--model is not printable UTF-8 text"),
    ],
)
def test_a_model_given_to_the_flow_is_checked_as_the_cli_checks_it(
    tmp_path: Path, model: str, said: str
) -> None:
    """The flow's `model` parameter (a deployment run from the UI) met no CLI check: a name
    over 255 bytes ended the run in an OSError traceback."""
    path = tmp_path / "m.yaml"
    path.write_text("schema: 1\nsoundtrack: t\nstorage: ./out\ntracks:\n  - {id: a, prompt: x}\n")
    with pytest.raises(InputError, match=r"^--model") as caught:
        check_inputs(path, model=model)
    assert said in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", ["manifest", "--out", "--out relative"])
def test_an_output_folder_linked_to_nothing_is_bad_input(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dangling link where the output folder goes passed as missing (its parent writable),
    and the build's first mkdir raised FileExistsError: a traceback, exit 1. Given as --out,
    the link was followed before storage saw it, and the build made its target and wrote there."""
    path = manifest(tmp_path)
    (tmp_path / "assets").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    out = {"manifest": [], "--out": ["--out", str(tmp_path / "assets")]}.get(
        given, ["--out", "assets"]
    )
    result = CliRunner().invoke(app, ["build", str(path), *out])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "is a symbolic link to" in said and "which does not exist" in said, said
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_a_render_cache_that_cannot_be_written_is_bad_input_before_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The build started, then failed in a NotADirectoryError traceback (exit 1)."""
    path = manifest(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    cache = {
        "a file": tmp_path / "afile",
        "under a file": tmp_path / "afile" / "cache",
        "under /proc": Path("/proc/soundtrack-cache"),
    }[where]
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(cache))
    result = CliRunner().invoke(app, ["build", str(path)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"error: the render cache {cache} ($SOUNDTRACK_CACHE_DIR, or the user's cache" in said
    assert "Traceback" not in result.output
    assert not (tmp_path / "assets").exists(), "nothing published"
