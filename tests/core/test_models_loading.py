"""Loading: local directories, the Hugging Face cache, fast failures, once per process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants, try_to_load_from_cache
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.errors import InputError, ModelLoadError
from soundtrack.licences import licence_of
from soundtrack.models import (
    GeneratedAudio,
    GenerationRequest,
    generate_one,
    get_generator,
    load_count,
)
from soundtrack.models.musicgen import load_musicgen
from soundtrack.models.source import resolve_source
from soundtrack.spec import Sampling


def test_an_unknown_model_id_fails_fast_naming_it_and_how_to_provide_it() -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        get_generator("soundtrack-tests/no-such-model", device="cpu")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "soundtrack-tests/no-such-model" in message
    assert "HF_HOME" in message and "local directory" in message


def test_a_missing_or_foreign_directory_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        get_generator(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match="a hub revision goes in model_revision"):
        get_generator("facebook/musicgen-small@main", device="cpu")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        get_generator(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelLoadError, match="model_type 'whisper' has no backend"):
        get_generator(str(tmp_path), device="cpu")


def test_a_local_directory_pinned_to_another_revision_is_refused(tiny_model_dir: Path) -> None:
    revision = get_generator(str(tiny_model_dir), device="cpu").revision
    assert get_generator(str(tiny_model_dir), revision=revision, device="cpu").revision == revision
    with pytest.raises(ModelLoadError, match="the folder changed since the pin"):
        get_generator(str(tiny_model_dir), revision="sha256:" + "0" * 64, device="cpu")


def test_validate_holds_a_local_folder_to_its_pin_and_model_drops_the_manifests_pin(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`validate` checks a pinned folder as `build` does; `--model` replaces the model and the
    manifest's pin of it."""
    from typer.testing import CliRunner

    from soundtrack.cli import app
    from soundtrack.inputs import check_inputs

    revision = get_generator(str(tiny_model_dir), device="cpu").revision
    manifest = tmp_path / "m.yaml"
    track = f"  - {{id: a, prompt: piano, duration: 2, model: {tiny_model_dir}, model_revision: "
    head = "schema: 1\nsoundtrack: pins\nstorage: ./out\ntracks:\n"
    for pin, code in ((revision, 0), ("sha256:" + "0" * 64, 2)):
        manifest.write_text(head + track + f"'{pin}'}}\n")
        result = CliRunner().invoke(app, ["validate", str(manifest)])
        assert result.exit_code == code, result.output
    assert "the folder changed since the pin" in " ".join(result.output.split())
    manifest.write_text(head + "  - {id: a, prompt: piano, duration: 2, model_revision: abc}\n")
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 0, result.output
    checked = check_inputs(manifest, model=str(tiny_model_dir))
    assert [spec.model_revision for spec in checked.specs] == [None]


def test_a_refused_manifest_leaves_the_cache_as_it_was(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong pin was refused with exit 2, but the folder's fingerprint was already saved in
    the cache: bad input writes nothing. An accepted manifest keeps it for the next run."""
    from soundtrack.models import source

    cache = tmp_path / "cache"
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(cache))
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")  # a folder no run has hashed
    manifest = tmp_path / "m.yaml"
    head = "schema: 1\nsoundtrack: pins\nstorage: ./out\ntracks:\n"
    track = f"  - {{id: a, prompt: piano, duration: 2, model: {folder}, model_revision: "
    manifest.write_text(head + track + "'sha256:" + "0" * 64 + "'}\n")
    refused = CliRunner().invoke(app, ["validate", str(manifest)])
    assert refused.exit_code == 2, refused.output
    assert not cache.exists() or not any(cache.rglob("*.txt"))
    manifest.write_text(head + track + f"'{source.directory_fingerprint(folder)}'}}\n")
    accepted = CliRunner().invoke(app, ["validate", str(manifest)])
    assert accepted.exit_code == 0, accepted.output
    assert len(list((cache / "fingerprints").glob("*.txt"))) == 1


def test_an_unknown_device_is_bad_input(tiny_model_dir: Path) -> None:
    with pytest.raises(InputError, match="device must be auto, cpu, mps, cuda or cuda:N"):
        get_generator(str(tiny_model_dir), device="tpu")


def test_the_model_is_loaded_once_per_process_even_from_many_threads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    before = load_count()
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(get_generator(str(copy), device="cpu")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other_spelling = get_generator(f"{copy}/../copy/", device="cpu")
    assert load_count() == before + 1
    assert all(g is got[0] for g in [*got, other_spelling]) and len(got) == 4
    # The copy has the same files, so the same fingerprint as the original.
    assert got[0].revision == get_generator(str(tiny_model_dir), device="cpu").revision  # type: ignore[attr-defined]


def test_licence_comes_from_the_model_card_or_a_known_default(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# card\n")
    assert licence_of("someone/model", directory=tmp_path) == "CC-BY-NC-4.0"
    (tmp_path / "README.md").write_text("# a card without front matter\n")
    assert licence_of("facebook/musicgen-stereo-small", directory=tmp_path) == "CC-BY-NC-4.0"
    assert licence_of("someone/model", directory=tmp_path) == "unknown"


def test_half_precision_keeps_the_codec_in_float32(tiny_model_dir: Path) -> None:
    generator = load_musicgen(resolve_source(str(tiny_model_dir), None), "cpu", torch.bfloat16)
    result = generate_one(GenerationRequest("half", "calm", 2.0, 1, Sampling()), generator)
    assert result.audio.dtype == np.float32 and result.audio.shape == (1, 64000)


def test_a_hub_id_loads_from_the_cache_offline_with_its_commit_as_revision(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hugging Face cache layout: models--<org>--<name>/{refs/main, snapshots/<commit>/...}.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--soundtrack-tests--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    generator = get_generator("soundtrack-tests/tiny", device="cpu")
    assert (generator.model_id, generator.revision) == ("soundtrack-tests/tiny", commit)
    assert generator.license == "soundtrack-tiny-random-weights"
    with pytest.raises(ModelLoadError, match=r"'soundtrack-tests/tiny' at revision 'v2' is not in"):
        get_generator("soundtrack-tests/tiny", revision="v2", device="cpu")


PINS = """\
schema: 1
soundtrack: pins
storage: ./out
defaults: {{model: soundtrack-tests/{name}, duration: 2, formats: [ogg]}}
tracks:
  - {{id: on-main, prompt: calm piano, model_revision: main}}
  - {{id: on-v2, prompt: calm piano, model_revision: v2}}
"""


def test_a_build_names_only_the_tracks_whose_snapshot_is_missing_or_incomplete(
    tiny_acestep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 before anything renders, naming the tracks of the pin that is not there, and a
    snapshot that lacks a component's weights (an interrupted download) as a model not at hand."""
    from typer.testing import CliRunner

    from soundtrack.cli import app

    commit = "0123456789abcdef0123456789abcdef01234567"
    for name, drop in (("whole", None), ("partial", "transformer")):
        repo = tmp_path / "hub" / f"models--soundtrack-tests--{name}"
        shutil.copytree(tiny_acestep_dir, repo / "snapshots" / commit)
        if drop:
            for weights in (repo / "snapshots" / commit / drop).glob("*.safetensors"):
                weights.unlink()
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    for name, named, why in (
        ("whole", "track on-v2:", "at revision 'v2' is not in"),
        ("partial", "track on-main:", "transformer holds no weights as safetensors"),
    ):
        (tmp_path / "m.yaml").write_text(PINS.format(name=name))
        result = CliRunner().invoke(app, ["build", "m.yaml"])
        said = " ".join(result.output.split())
        assert result.exit_code == 2, said
        assert f"{named} model 'soundtrack-tests/{name}'" in said and why in said, said
        assert name == "partial" or "on-main" not in said, "main is in the cache"
        assert not (tmp_path / "out").exists()


REAL_MODEL = "facebook/musicgen-small"


@pytest.mark.real_weights
@pytest.mark.skipif(
    not isinstance(try_to_load_from_cache(REAL_MODEL, "model.safetensors"), str),
    reason=f"{REAL_MODEL} is not in the Hugging Face cache (hf download {REAL_MODEL})",
)
def test_real_musicgen_small_renders_a_batch_with_provenance() -> None:
    generator = get_generator(REAL_MODEL)
    results = generator.generate(
        [
            GenerationRequest("a", "calm piano loop, C major", 2.0, 1, Sampling()),
            GenerationRequest("b", "orchestral battle theme", 3.0, 2, Sampling()),
        ]
    )
    assert [r.audio.shape for r in results if isinstance(r, GeneratedAudio)] == [
        (1, 64000),
        (1, 96000),
    ]
    assert len(generator.revision) == 40 and generator.license == "CC-BY-NC-4.0"


def test_one_model_stays_resident_where_the_device_holds_one(
    tiny_model_dir: Path, tiny_acestep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soundtrack import models

    # As on a GPU: the CPU is made to hold one model at a time for this test.
    monkeypatch.setattr(models, "one_resident", lambda device: True)
    monkeypatch.setattr(models, "_loaded", {})
    before = load_count()
    musicgen = get_generator(str(tiny_model_dir), device="cpu")
    assert get_generator(str(tiny_model_dir), device="cpu") is musicgen, "loaded once"
    acestep = get_generator(str(tiny_acestep_dir), device="cpu")
    assert list(models._loaded.values()) == [acestep], "the MusicGen model was released"
    assert get_generator(str(tiny_model_dir), device="cpu") is not musicgen
    assert load_count() == before + 3


# Imports an entry point, then counts the page faults of ten 256 MiB torch tensors.
FAULTS = """
import resource, sys
__import__(sys.argv[1])
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(64 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here"
)
@pytest.mark.parametrize("entry", ["soundtrack.cli", "flows.build"])
def test_torch_puts_large_cpu_tensors_on_huge_pages_from_every_entry_point(entry: str) -> None:
    def faults(**env: str) -> int:
        environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
        done = subprocess.run(
            [sys.executable, "-c", FAULTS, entry],
            cwd=Path(__file__).resolve().parents[2],
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.split()[-1])

    # 2.5 GiB in 4 KiB pages is 655 360 faults; in 2 MiB pages, 1280.
    assert faults() < 20_000
    assert faults(THP_MEM_ALLOC_ENABLE="0") > 200_000, "the user can turn it off"


def test_a_musicgen_folder_whose_weights_are_pickled_is_refused_not_unpickled(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A pytorch_model.bin beside any safetensors file passed the check, and transformers then
    unpickled the .bin: MusicGen's loader was the one without use_safetensors."""
    from safetensors.torch import save_file

    folder = shutil.copytree(tiny_model_dir, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    save_file({"x": torch.zeros(1)}, str(folder / "extra.safetensors"))
    said = r"holds no weights as safetensors \(only pytorch_model.bin\): a model's are model"
    with pytest.raises(ModelLoadError, match=said):
        get_generator(str(folder), device="cpu")


def test_a_folder_whose_weight_index_lists_no_shard_there_is_refused_before_it_loads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An index with its shards missing passed `validate`, and the load then failed with an
    IndexError from transformers (or a rendered build found it late)."""
    from soundtrack.catalog import family_name

    folder = shutil.copytree(tiny_model_dir, tmp_path / "sharded")
    weights = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    weights.rename(folder / "model-00001-of-00002.safetensors")
    names = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    for weight_map, said in [
        ({}, "lists no shard"),
        (names, "lists model-00002-of-00002.safetensors, not in the folder"),
        ({"a": "../model-00001-of-00002.safetensors"}, "not in the folder"),
    ]:
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        with pytest.raises(ModelLoadError, match=said):
            family_name(str(folder))
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": names["a"]}}))
    assert family_name(str(folder)) == "musicgen"


def test_things_that_are_no_weight_file_are_passed_over_not_read(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A FIFO named *.safetensors hung `validate`; a folder or a dangling link so named crashed
    it with a traceback."""
    from soundtrack.catalog import family_name

    folder = shutil.copytree(tiny_model_dir, tmp_path / "odd")
    os.mkfifo(folder / "extra.safetensors")
    (folder / "sub.safetensors").mkdir()
    (folder / "gone.safetensors").symlink_to(tmp_path / "nowhere")
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(family_name(str(folder))), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert found == ["musicgen"]
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="holds no weights as safetensors"):
        family_name(str(folder))


def test_a_folders_fingerprint_is_hashed_once_until_a_file_changes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned folder is hashed by every validate and build: gigabytes once, and again when a
    file changes, even one rewritten at its size with its mtime put back (rsync -a, tar)."""
    from soundtrack.models import source

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    first = source.directory_fingerprint(folder)
    source.keep_fingerprints()  # as a build does once its inputs are accepted
    hashed: list[Path] = []
    real = source._hashed
    monkeypatch.setattr(source, "_hashed", lambda *a: hashed.append(folder) or real(*a))
    source._fingerprints.clear()  # as a new process
    assert source.directory_fingerprint(folder) == first and hashed == []
    weights = folder / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    source._fingerprints.clear()
    assert source.directory_fingerprint(folder) != first and hashed == [folder]
    # A FIFO at the remembered fingerprint's name was opened to read, and the build waited
    # for a writer for ever: it is no memo, and the folder is hashed again.
    changed = source.directory_fingerprint(folder)
    source.keep_fingerprints()
    memos = sorted((tmp_path / "cache" / "fingerprints").glob("*.txt"))
    for path in memos:
        path.unlink()
        os.mkfifo(path)
    source._fingerprints.clear()
    done: list[str] = []
    hashing = threading.Thread(
        target=lambda: done.append(source.directory_fingerprint(folder)), daemon=True
    )
    hashing.start()
    hashing.join(timeout=30)
    assert done == [changed] and hashed == [folder, folder]


def test_a_link_out_of_a_model_folder_is_refused_not_walked_whole(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A component folder linked to `/` had the whole file system walked and hashed, until a
    file it could not read (/proc) ended generate and build in a PermissionError traceback."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "vendored").symlink_to("/")
    args = ["generate", "--model", str(folder), "--prompt", "p", "--duration", "1"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x.wav")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"model folder {folder} holds more than 10000 files" in said
    assert "a link to a folder outside the checkpoint?" in said
    assert not (tmp_path / "x.wav").exists()


def test_a_checkpoint_whose_config_its_library_chokes_on_cannot_be_loaded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A codec rate of 0 raised ZeroDivisionError in transformers, and a tensor too large to
    allocate a RuntimeError: tracebacks, where a model that cannot load is bad input."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["audio_encoder"]["sampling_rate"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    args = ["generate", "--model", str(folder), "--prompt", "p", "--duration", "1"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x.wav")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"cannot load MusicGen from {folder} (ZeroDivisionError(" in said, said
    assert "Traceback" not in result.output and not (tmp_path / "x.wav").exists()


def test_a_render_its_library_raises_on_fails_in_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint that loads but cannot render (a negative codebook count) ended generate
    in a traceback, where a build fails the track saying why."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["num_codebooks"] = -config["decoder"]["num_codebooks"]
    (folder / "config.json").write_text(json.dumps(config))
    args = ["generate", "--model", str(folder), "--prompt", "p", "--duration", "1"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x.wav")])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert "the render failed: RuntimeError(" in said and "negative dimension" in said, said
    assert "Traceback" not in result.output and not (tmp_path / "x.wav").exists()
