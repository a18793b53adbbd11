"""The manifest contract: every invalid input exits 2 naming its field/line; specs hash stably."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import unicodedata
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from soundtrack.audio import decode_with_ffmpeg
from soundtrack.cli import app
from soundtrack.errors import InputError
from soundtrack.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_YAML_NODES,
    _line_map,
    _ManifestLoader,
    load_manifest,
    load_yaml,
)
from soundtrack.resolve import derived_seed, resolve_tracks, take
from soundtrack.schema import _VISIBLE, MAX_DURATION_S, json_schema
from soundtrack.spec import GateLimits, TrackSpec
from tests import signals

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "manifests" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))
runner = CliRunner()


def validate(path: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", str(path)])
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result.exit_code, " ".join(result.output.split())  # undo Rich's line wrapping


def expected_text(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.+)", first)
    assert match, f"{path.name} must start with '# expect: <message text>'"
    return match.group(1)


def test_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_exits_2_naming_the_problem(path: Path) -> None:
    code, output = validate(path)
    assert code == 2, output
    assert "Traceback" not in output
    assert expected_text(path) in output, output


def test_a_long_value_is_quoted_by_its_start() -> None:
    code, output = validate(ROOT / "tests/manifests/invalid/lyrics-too-long.yaml")
    assert code == 2 and "... (4500 characters))" in output and len(output) < 400, output


def test_every_problem_is_listed_not_only_the_first() -> None:
    code, output = validate(ROOT / "tests/manifests/invalid/many-problems.yaml")
    assert code == 2
    fields = ("tracks[1].prompt", "tracks[1].duration", "tracks[2].formats[0]", "tracks[2].seed")
    for field in fields:
        assert field in output, output


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_manifests_are_valid(path: Path) -> None:
    code, output = validate(path)
    assert code == 0, output
    assert "valid" in output


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_file(tmp_path: Path) -> None:
    code, output = validate(tmp_path / "nope.yaml")
    assert code == 2 and "manifest not found" in output


def test_directory_instead_of_file(tmp_path: Path) -> None:
    code, output = validate(tmp_path)
    assert code == 2 and "not a file" in output


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    code, output = validate(path)
    assert code == 2 and "binary file" in output


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"schema: 1\nsoundtrack: caf\xe9\n")
    code, output = validate(path)
    assert code == 2 and "not UTF-8" in output


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("schema: 1\n" + "# padding\n" * (MAX_MANIFEST_BYTES // 10 + 1))
    code, output = validate(path)
    assert code == 2 and "refusing anything above" in output


def test_a_file_larger_than_its_size_says_is_read_no_further_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose size reads 0 (under /proc, or one growing) was read whole, unbounded."""
    path = tmp_path / "m.yaml"
    path.write_text("schema: 1\n" + "# padding\n" * (MAX_MANIFEST_BYTES // 10 + 1))
    real_stat = Path.stat

    def stat_of_proc(self: Path, **kwargs: bool) -> os.stat_result:
        found = real_stat(self, **kwargs)
        if self.name != "m.yaml":
            return found
        return os.stat_result((found.st_mode, *found[1:6], 0, *found[7:]))

    monkeypatch.setattr(Path, "stat", stat_of_proc)
    code, output = validate(path)
    assert code == 2 and f"is {MAX_MANIFEST_BYTES + 1} bytes or more" in output, output


def test_truly_empty_file(tmp_path: Path) -> None:
    code, output = validate(write(tmp_path, ""))
    assert code == 2 and "is empty" in output


BASE = """\
schema: 1
soundtrack: game
defaults:
  duration: 20
  sampling: {temperature: 0.9}
tracks:
  - id: theme
    prompt: orchestral theme
    key: D minor
    bpm: 90
    sampling: {top_k: 100}
  - id: battle
    prompt: drums
    loop: true
    seed: 5
"""


def specs_of(tmp_path: Path, text: str) -> dict[str, TrackSpec]:
    path = write(tmp_path, text)
    return {spec.id: spec for spec in resolve_tracks(load_manifest(path), path.parent)}


def test_defaults_merge_into_tracks(tmp_path: Path) -> None:
    specs = specs_of(tmp_path, BASE)
    theme = specs["theme"]
    assert theme.duration_s == 20.0
    assert theme.sampling.temperature == 0.9 and theme.sampling.top_k == 100
    assert theme.prompt == "orchestral theme, D minor, 90 BPM"
    assert theme.seed == derived_seed("game", "theme")
    assert specs["battle"].seed == 5
    assert theme.mastering.loudness.integrated_lufs == -24.0
    assert theme.formats == ("ogg", "mp3")


def test_a_track_turns_off_the_defaults_stems_with_null_or_an_empty_list(tmp_path: Path) -> None:
    """`stems: null` was dropped as if unset, so the track was separated all the same, and
    `stems: []` was refused: a track could not opt out of the defaults' stems. Null turns off
    stems and reference; elsewhere an empty key keeps the defaults' value, as it did."""
    sf.write(tmp_path / "ref.wav", np.zeros((44100, 2), dtype=np.float32) + 0.1, 44100)
    text = (
        "schema: 1\nsoundtrack: game\n"
        "defaults: {duration: 5, stems: [drums], stem_model: sep, reference: ref.wav}\n"
        "tracks:\n  - id: kept\n    prompt: x\n"
        "  - id: off\n    prompt: x\n    stems: null\n    reference: null\n    duration: null\n"
        "  - id: empty\n    prompt: x\n    stems: []\n"
    )
    specs = specs_of(tmp_path, text)
    assert specs["kept"].stems == ("drums",) and specs["kept"].stem_model is not None
    assert specs["kept"].reference is not None and specs["empty"].reference is not None
    assert specs["off"].stems == specs["empty"].stems == ()
    assert specs["off"].stem_model is None and specs["off"].reference is None
    plain = specs_of(
        tmp_path,
        "schema: 1\nsoundtrack: game\ndefaults: {duration: 5}\n"
        "tracks:\n  - id: off\n    prompt: x\n",
    )
    assert specs["off"].duration_s == 5.0, "an empty key keeps the defaults' value"
    assert specs["off"].spec_hash == plain["off"].spec_hash != specs["kept"].spec_hash


def test_spec_hash_is_stable_and_tracks_changes(tmp_path: Path) -> None:
    first = specs_of(tmp_path, BASE)
    reordered = BASE.replace("    loop: true\n    seed: 5", "    seed: 5\n    loop: true")
    again = specs_of(tmp_path, reordered)
    assert {k: v.spec_hash for k, v in first.items()} == {k: v.spec_hash for k, v in again.items()}

    changed = specs_of(tmp_path, BASE.replace("prompt: drums", "prompt: taiko drums"))
    assert changed["theme"].spec_hash == first["theme"].spec_hash
    assert changed["battle"].spec_hash != first["battle"].spec_hash

    web = BASE.replace("  duration: 20\n", "  duration: 20\n  loudness: web\n")
    louder = specs_of(tmp_path, web)
    assert louder["theme"].spec_hash != first["theme"].spec_hash
    # Re-mastering must not invalidate the raw render.
    assert louder["theme"].generation_key == first["theme"].generation_key


def test_source_track_takes_its_recording_length_and_content_hash(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    wav = tmp_path / "audio" / "credits.wav"
    sf.write(wav, np.zeros((32000 * 3, 2), dtype=np.float32) + 0.1, 32000)
    text = "schema: 1\nsoundtrack: game\ntracks:\n  - id: credits\n    source: audio/credits.wav\n"
    spec = specs_of(tmp_path, text)["credits"]
    assert spec.duration_s == pytest.approx(3.0)
    assert spec.source == wav.resolve() and spec.generation_key is None
    sf.write(wav, np.zeros((32000 * 3, 2), dtype=np.float32) + 0.2, 32000)
    changed = specs_of(tmp_path, text)["credits"].spec_hash
    assert changed != spec.spec_hash
    # Its musical targets are judged and written to its sidecar: each is part of the hash.
    hashes = {
        specs_of(tmp_path, text + f"    {field}\n")["credits"].spec_hash
        for field in ("bpm: 120", "key: A minor", "time_signature: 3/4")
    }
    assert len(hashes) == 3 and changed not in hashes


def test_an_mp3_source_takes_its_decoded_length_not_its_header_s_guess(tmp_path: Path) -> None:
    signals.headerless_mp3(tmp_path / "credits.mp3", 20.0, 44100)
    text = "schema: 1\nsoundtrack: game\ntracks:\n  - id: credits\n    source: credits.mp3\n"
    decoded, rate = decode_with_ffmpeg(tmp_path / "credits.mp3")
    assert specs_of(tmp_path, text)["credits"].duration_s == decoded.shape[1] / rate
    # No duration of its own: held to what mastering keeps of it; a duration asked is held to.
    assert specs_of(tmp_path, text)["credits"].own_length
    assert not specs_of(tmp_path, text + "    duration: 12\n")["credits"].own_length
    # No MP3 this large is 600 s or less: refused before decoding it only to say so.
    with (tmp_path / "credits.mp3").open("r+b") as grown:
        grown.truncate(65 * 2**20)
    with pytest.raises(InputError) as caught:
        specs_of(tmp_path, text)
    assert "credits.mp3 is 65 MiB; an MP3 of at most 600 s" in " ".join(caught.value.problems)


def test_a_source_that_is_no_whole_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A folder or a pipe read as "file not found"; a WAV cut short passed validate and was
    published as the track; a project folder named in another encoding crashed validate."""
    project = tmp_path / os.fsdecode(b"proj\xe9")  # Latin-1, as an old archive may hold
    (project / "audio.wav").mkdir(parents=True)
    os.mkfifo(project / "pipe.wav")
    whole = project / "whole.wav"
    sf.write(os.fsencode(whole), signals.pink_noise(-20.0, 6.0, 48000).T, 48000)
    (project / "cut.wav").write_bytes(whole.read_bytes()[:100_000])

    def manifest(*names: str) -> Path:
        tracks = "".join(f"  - id: {name}\n    source: {name}.wav\n" for name in names)
        return write(project, f"schema: 1\nsoundtrack: g\ntracks:\n{tracks}")

    path = manifest("audio", "pipe", "whole", "cut")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert "source is a folder, not a file: 'audio.wav'" in said
    assert "source is not a regular file (a device or pipe): 'pipe.wav'" in said
    with pytest.raises(InputError) as caught:
        load_manifest(manifest("whole", "cut"))
    problems = " ".join(caught.value.problems)
    assert "cut.wav is cut short: its header promises 1152000 bytes of audio" in problems
    assert "tracks[0]" not in problems, "the whole recording passes"


@pytest.mark.parametrize(("field", "items"), [("stems", "drums, bass"), ("formats", "ogg, wav")])
def test_a_repeated_item_is_named_once_not_the_whole_list(
    tmp_path: Path, field: str, items: str
) -> None:
    """A list of 20000 repeats was quoted whole in the message: 180 KB of one line."""
    text = (
        "schema: 1\nsoundtrack: g\ndefaults: {stem_model: sep}\ntracks:\n"
        f"  - id: a\n    prompt: x\n    {field}: [{', '.join([items] * 10_000)}]\n"
    )
    with pytest.raises(InputError) as caught:
        load_manifest(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert f"{field} must not repeat {items}" in problem and len(problem) < 300, problem


def test_symlinked_source_cannot_escape(tmp_path: Path) -> None:
    inner = tmp_path / "project"
    inner.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    (inner / "link.wav").symlink_to(tmp_path / "secret.wav")
    path = write(inner, "schema: 1\nsoundtrack: g\ntracks:\n  - id: a\n    source: link.wav\n")
    with pytest.raises(InputError) as info:
        load_manifest(path)
    assert "escapes the manifest's folder" in " ".join(info.value.problems)


def test_committed_json_schema_is_up_to_date() -> None:
    # As text, as `make schema` writes it: 86400 and 86400.0 are one JSON value, and a diff.
    committed = (ROOT / "manifests" / "soundtrack.schema.json").read_text()
    expected = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    assert committed == expected, "run `make schema`, commit manifests/soundtrack.schema.json"


@pytest.mark.parametrize(
    "setting",
    [
        "sampling: {}",
        "sampling: {ace-step: {}}",
        "sampling: {ace-step: {steps: 8, shift: 3}}",
        "sampling: {ace-step: {steps: 0}}",
        "sampling: {acestep: {steps: 8}}",
        "lyrics: '   '",
        "lyrics: 'la la'",
        "mood: ' '",
        "negative_prompt: ' '",
        "time_signature: 7/8",
        "time_signature: 7/0",
        "bpm: '120'",
        "bpm: 120",
        "seed: '7'",
        "seed: 7.0",
        "seed: 7.5",
        "loop: 'yes'",
        "loop: yes",
        "attempts: 2.0",
        "loudness: {integrated: '-16'}",
        "gates: {silence: 'off'}",
        "gates: {silence: off}",
        "gates: {clipped_runs_max: '3'}",
        "instruments: piano",
        "formats: ogg",
        "formats: [ogg, ogg]",
        "stems: [drums, drums]\n    stem_model: models/htdemucs",
        "bars: 4",
        "bpm: 100\n    bars: 4",
        "source: a.wav",
        "model_revision: 2024-01-01",
        "lyrics: no",
        "bars: null",
        "bpm: null\n    bars: 4",
        "variation_of: null",
        "gates: {tempo: false}",
        "gates: {tempo: Off}",
        "key: F# minor",
        "key: B-flat MAJOR",
        "key: bb min",
        "key: BB minor",
        "key: H minor",
        "key: Gb",
        "key: Fm",
        "instruments: [' ']",
        "instruments: [piano, '\t']",
        "bpm: 090",
        "seed: 0o17",
        "seed: 1_000",
        "seed: 0b101",
        # Text a model reads: what validate refuses, the schema refuses as an editor reads it.
        'lyrics: "\\u200b"',
        'mood: "a\\x9bb"',
        'lyrics: "a\\u202eb"',
        'mood: "a\\u2028b"',
        'lyrics: "la\\tla\\nla"',
        'instruments: ["a\\tb"]',
        'instruments: ["\\u200b"]',
        'instruments: ["a\\x9bb"]',
        'instruments: ["piano\\u200d"]',
        'instruments: ["guitar\\n"]',  # Python's `$` matched before a last newline
        'time_signature: "4/4\\n"',
        'key: "C major\\n"',
        'key: "C\\x85major"',
        'key: "\\ufeffC major"',
        'key: "F#\\u00a0minor"',
        "gates: {seam_jump_max_ratio: 2000}",
    ],
    ids=lambda s: s[:40],
)
def test_the_json_schema_agrees_with_validate(tmp_path: Path, setting: str) -> None:
    """An editor checking with the committed schema accepts what `validate` accepts."""
    text = (
        "schema: 1\nsoundtrack: game\ntracks:\n  - id: theme\n    prompt: calm piano\n"
        f"    model: ACE-Step/acestep-v15-turbo-diffusers\n    duration: 12\n    {setting}\n"
    )
    assert_the_schema_agrees(tmp_path, text)


def assert_the_schema_agrees(tmp_path: Path, text: str) -> tuple[int, str]:
    """The committed schema refuses `text` where `validate` does; its exit code and output."""
    committed = json.loads((ROOT / "manifests" / "soundtrack.schema.json").read_text())
    # Read as an editor reads it (YAML 1.2: `loop: yes` is the word), as the manifest is.
    errors = list(jsonschema.Draft202012Validator(committed).iter_errors(load_yaml(text)))
    code, output = validate(write(tmp_path, text))
    assert code in (0, 2), output
    assert (code == 0) == (not errors), (output, [e.message for e in errors])
    return code, output


@pytest.mark.parametrize(
    "top",
    [
        "storage: ' '",
        "storage: http://example.com/x",
        "storage: S3://bucket/x",
        "storage: s3:/bucket/x",
        "storage: s3://",
        "storage: s3:///x",
        "storage: s3://bucket/x",
        "storage: rel:out",
        "storage: ../assets",
        'defaults: {model: "facebook/musicgen-small\u200b"}',
        'defaults: {model: "facebook/musicgen-small\u00ad"}',
        "defaults: {model: facebook/musicgen-small}",
        "defaults: {stem_model: ' ./htdemucs'}",
        "defaults: {stem_model: './htdemucs '}",
        "defaults: {stem_model: ./htdemucs}",
    ],
)
def test_the_json_schema_agrees_with_validate_on_models_and_storage(
    tmp_path: Path, top: str
) -> None:
    """An editor passed a zero-width space in a model, a space around a stem model, and any
    storage but a blank one, which validate refuses."""
    text = f"schema: 1\nsoundtrack: game\n{top}\ntracks:\n  - id: theme\n    prompt: calm\n"
    assert_the_schema_agrees(tmp_path, text)


@pytest.mark.parametrize(
    ("prompt", "valid"),
    [
        ('"..."', False),
        ('". . ."', False),
        ('"\u200b...\t"', False),
        ('"a..."', True),
        ('"!!!"', True),
        ('"...calm"', True),
    ],
)
def test_a_prompt_of_nothing_but_dots_is_refused_by_validate_and_the_schema(
    tmp_path: Path, prompt: str, valid: bool
) -> None:
    """Its closing dots cut before its tags join it, `...` was no prompt at all: validate
    passed it, and the build failed every track rendered in a batch with it."""
    text = f"schema: 1\nsoundtrack: game\ntracks:\n  - id: theme\n    prompt: {prompt}\n"
    code, output = assert_the_schema_agrees(tmp_path, text)
    assert code == (0 if valid else 2), output
    if not valid:
        assert "prompt has nothing but dots: say what the music is" in output, output


@pytest.mark.parametrize(("length", "valid"), [(1000, True), (1001, False)])
def test_a_prompt_holds_1000_characters(tmp_path: Path, length: int, valid: bool) -> None:
    prompt = ("calm strings " * 100)[: length - 1] + "."
    text = f"schema: 1\nsoundtrack: game\ntracks:\n  - id: theme\n    prompt: {prompt}\n"
    code, output = assert_the_schema_agrees(tmp_path, text)
    assert code == (0 if valid else 2), output
    if not valid:
        assert "prompt is 1001 characters; the limit is 1000" in output, output


def test_the_json_schema_gives_no_null_defaults() -> None:
    """A setting left out is the defaults' or a built-in value: editors showed `null`."""
    assert '"default": null' not in (ROOT / "manifests" / "soundtrack.schema.json").read_text()


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        # An instrument joins the prompt: it took what a prompt refuses.
        ('instruments: ["\\u200b"]', "an instrument is a name in plain words"),
        ('instruments: ["a\\x9bb"]', "an instrument is a name in plain words"),
        ('instruments: ["a\\u202eb"]', "an instrument is a name in plain words"),
        ("source: ''", "source is empty: give a path relative to the manifest"),
        ("gates: {seam_jump_max_ratio: .inf}", "seam_jump_max_ratio"),
    ],
)
def test_what_a_track_cannot_hold_is_named(tmp_path: Path, setting: str, said: str) -> None:
    text = f"schema: 1\nsoundtrack: game\ntracks:\n  - id: theme\n    {setting}\n"
    if not setting.startswith("source"):
        text += "    prompt: calm piano\n"
    code, output = validate(write(tmp_path, text))
    assert code == 2 and said in output, output
    assert "a folder, not a file" not in output


def test_the_schemas_visible_text_leaves_out_every_format_character() -> None:
    """Zero-width and other format characters are blank to validate: to the schema too."""
    visible = re.compile(_VISIBLE)
    formats = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Cf"]
    assert formats and not [f"U+{ord(c):04X}" for c in formats if visible.search(c)]


def test_schema_command_prints_the_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["properties"]["schema"]["const"] == 1


def test_schema_command_writes_only_a_json_file(tmp_path: Path) -> None:
    manifest = tmp_path / "game.yaml"
    manifest.write_text(BASE)
    result = runner.invoke(app, ["schema", "-o", str(manifest)])
    assert result.exit_code == 2 and "give a .json file" in result.output
    assert manifest.read_text() == BASE
    result = runner.invoke(app, ["schema", "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text()) == json_schema()
    # A new folder is made, as `generate -o` makes one; a folder or a file in the way is named.
    result = runner.invoke(app, ["schema", "-o", str(tmp_path / "docs" / "s.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "docs" / "s.json").read_text()) == json_schema()
    result = runner.invoke(app, ["schema", "-o", str(tmp_path / "docs")])
    assert result.exit_code == 2 and "is a folder: give a .json file in it" in result.output
    result = runner.invoke(app, ["schema", "-o", str(manifest / "s.json")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert "Traceback" not in result.output


def test_schema_output_through_a_link_replaces_the_link_not_what_it_names(tmp_path: Path) -> None:
    """A .json link to the manifest got the schema written through it: the manifest was lost."""
    manifest = tmp_path / "game.yaml"
    manifest.write_text(BASE)
    (tmp_path / "link.json").symlink_to(manifest)
    result = runner.invoke(app, ["schema", "-o", str(tmp_path / "link.json")])
    assert result.exit_code == 0, result.output
    assert manifest.read_text() == BASE
    assert not (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "link.json").read_text()) == json_schema()


def test_a_schema_that_cannot_be_written_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A write cut short (a full disk, a file size limit) left a truncated schema behind and a
    traceback."""
    target = tmp_path / "s.json"
    target.write_text('{"old": true}\n')
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "from soundtrack.cli import app; app(sys.argv[1:], prog_name='soundtrack')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "schema", "-o", str(target)], capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    assert f"error: cannot write the schema to {target}: File too large" in result.stderr
    assert "Traceback" not in result.stderr
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


HOUSE_RULE = """[{"type": "expect_column_max_to_be_between",
  "kwargs": {"column": "sample_peak_dbfs", "max_value": -3.0}, "meta": {"gate": "house_peak"}}]"""


def test_team_expectations_are_checked_and_hashed(tmp_path: Path) -> None:
    (tmp_path / "qc.json").write_text(HOUSE_RULE)
    text = BASE.replace("tracks:\n", "expectations: qc.json\ntracks:\n", 1)
    code, output = validate(write(tmp_path, text))
    assert code == 0, output
    first = specs_of(tmp_path, text)["theme"]
    assert first.expectations == (tmp_path / "qc.json").resolve()
    (tmp_path / "qc.json").write_text(HOUSE_RULE.replace("-3.0", "-6.0"))
    assert specs_of(tmp_path, text)["theme"].spec_hash != first.spec_hash

    (tmp_path / "qc.json").write_text('[{"type": "expect_column_to_be_glorious", "kwargs": {}}]')
    code, output = validate(write(tmp_path, text))
    assert code == 2 and "extra expectation [0] 'expect_column_to_be_glorious'" in output


# Spec hashes computed before length-dependent defaults existed (issue 12): a track whose
# resolved settings did not change must keep its hash, or every cached asset is rebuilt (the
# example manifests' own hashes are pinned in tests/core/test_spec_hashes.py).
# PIPELINE_VERSION is part of every hash; it is held at the value they were computed with.

# Short tracks whose settings stay the same: a loop (no fade-out) and an explicit fade-out.
PINNED_SHORT = """\
schema: 1
soundtrack: game
defaults:
  duration: 20
  sampling: {temperature: 0.9}
tracks:
  - id: theme
    prompt: orchestral theme
    key: D minor
    bpm: 90
    sampling: {top_k: 100}
  - id: battle
    prompt: drums
    loop: true
    seed: 5
  - id: short-loop
    prompt: drums
    loop: true
    duration: 3
  - id: short-faded
    prompt: sting
    duration: 3
    fade_out_s: 0.5
  - id: exactly-eight
    prompt: sting
    duration: 8
"""
PINNED_SHORT_HASHES = {
    "theme": "24c9eb971f532066f7cf1739846c77d3eb1330049767cd6c4796970124f88c5e",
    "battle": "149be894c1d8ab9603dadd44276418f0a67947a001d9b970f0517504957a93af",
    "short-loop": "25b50d407200b0f2c25e9d71da70824cb1d94d015a5e7ca7a721401672ad5b70",
    "short-faded": "b5a7ecef2645100cd8e466d69b970534f6a063451818f4b7675affa595e9cd94",
    "exactly-eight": "df011cac0712ee2b4da602d2d512d9149db3d47e192027258f6f3e0cc86b2aed",
}


def test_unchanged_tracks_keep_their_spec_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("soundtrack.resolve.PIPELINE_VERSION", "1")
    short = {spec_id: spec.spec_hash for spec_id, spec in specs_of(tmp_path, PINNED_SHORT).items()}
    assert short == PINNED_SHORT_HASHES


# --- YAML structure: aliases, merges, nesting, values Python cannot hold (issue 12) -----------


@pytest.mark.timeout(60)  # a guard against a hang, not a benchmark (bench/yaml_limits.py times it)
def test_alias_bomb_is_refused_before_any_value_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def built(*args: object) -> None:
        raise AssertionError("the data was constructed before the alias limits were checked")

    monkeypatch.setattr(_ManifestLoader, "construct_document", built)
    with pytest.raises(InputError) as refused:
        load_manifest(ROOT / "tests/manifests/invalid/yaml-alias-bomb.yaml")
    assert (
        "YAML error at line 10, column 5: aliases (*name) expand this value to more than "
        f"{MAX_YAML_NODES:,} values; a manifest may expand to at most {MAX_YAML_NODES:,}"
    ) in str(refused.value)


def test_too_many_aliases_are_refused(tmp_path: Path) -> None:
    """docs/manifest.md: 1,000 aliases at the most."""

    def with_aliases(count: int) -> Path:
        aliases = ", ".join(["*horn"] * count)
        track = f"  - id: a\n    prompt: &horn horn\n    instruments: [{aliases}]\n"
        return write(tmp_path, f"schema: 1\nsoundtrack: g\ntracks:\n{track}")

    with pytest.raises(InputError) as refused:
        load_manifest(with_aliases(1001))
    assert "more than 1000 aliases (*name)" in str(refused.value)
    (track,) = load_manifest(with_aliases(1000)).tracks
    assert track.instruments == ["horn"] * 1000


def test_aliases_that_nest_deeper_than_written_are_refused(tmp_path: Path) -> None:
    """Each line two levels deep as written, 35 once its aliases expand: past the 32 allowed,
    which bound the recursion of whatever reads the values."""
    chain = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 34)]
    with pytest.raises(InputError) as refused:
        load_manifest(write(tmp_path, "\n".join(chain) + "\n"))
    assert "aliases (*name) nest this value more than 32 levels deep" in str(refused.value)


def test_line_map_walks_a_shared_node_once() -> None:
    # Six levels of nine aliases: 9**6 paths if every alias were walked again.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 7)]
    node = yaml.compose("\n".join(lines), Loader=yaml.SafeLoader)
    mapped = _line_map(node)
    assert len(mapped) < 100
    assert mapped["a6"] == 7 and "a6[8]" in mapped  # an alias is mapped, not walked again
    assert "a0[8]" in mapped and "a1[0][0]" not in mapped and "a6[8][0]" not in mapped


MERGES = """\
schema: 1
soundtrack: game
defaults: &defaults
  duration: 20
tracks:
  - &sting
    id: win
    prompt: brass sting
    duration: 3
    fade_out_s: 1
  - <<: *sting
    id: lose
    prompt: sad sting
  - <<: [*sting, *defaults]
    id: long-lose
    duration: 4
"""


def test_merge_keys_merge_and_override(tmp_path: Path) -> None:
    specs = specs_of(tmp_path, MERGES)
    assert specs["lose"].duration_s == 3.0 and specs["lose"].mastering.fade_out_s == 1.0
    assert specs["lose"].prompt == "sad sting"
    assert specs["long-lose"].duration_s == 4.0
    # Of several merged mappings the earlier wins, as YAML's merge says (PyYAML took the later).
    first = specs_of(tmp_path, MERGES.replace("    duration: 4\n", ""))
    assert first["long-lose"].duration_s == 3.0
    # A problem in a merged track is named by its path, at the track's line.
    code, output = validate(write(tmp_path, MERGES.replace("    duration: 4", "    duration: -4")))
    assert code == 2 and "tracks[2].duration (line 16): Input should be greater" in output


def test_leading_zeros_do_not_make_an_integer_too_long(tmp_path: Path) -> None:
    manifest = "schema: 1\nsoundtrack: t\ntracks:\n  - {id: a, prompt: p, seed: %s}\n"
    for seed in ("0" * 60 + "42", "+" + "0" * 60 + "42", "0x" + "0" * 60 + "2a"):
        code, output = validate(write(tmp_path, manifest % seed))
        assert code == 0, output


@pytest.mark.parametrize("digits", ["1" + "0" * 5000, "0x" + "f" * 5000, "0o" + "7" * 6000])
def test_a_value_python_cannot_hold_is_a_yaml_error(tmp_path: Path, digits: str) -> None:
    """A hexadecimal or octal integer that long was built, then raised a traceback when its
    error was written (Python writes no int of over 4300 digits as text)."""
    manifest = f"schema: 1\nsoundtrack: t\ntracks:\n  - {{id: a, prompt: p, seed: {digits}}}\n"
    significant = len(digits.removeprefix("0x").removeprefix("0o"))
    code, output = validate(write(tmp_path, manifest))
    assert code == 2, output
    assert (
        f"YAML error at line 4, column 30: cannot read this value (an integer of {significant} "
        "digits, larger than any setting takes (quote it if it is text))"
    ) in output


# --- length-dependent defaults and what renders (issue 12) --------------------------------------

SHORT = """\
schema: 1
soundtrack: game
tracks:
  - {id: two, prompt: sting, duration: 2}
  - {id: short, prompt: sting, duration: 1.5}
  - {id: eight, prompt: sting, duration: 8}
  - {id: long, prompt: theme}
  - {id: loop, prompt: pulse, duration: 3, loop: true}
  - {id: set, prompt: sting, duration: 2, fade_out_s: 1.25}
"""


def test_the_default_fade_out_is_a_quarter_of_the_track_at_most_2_s(tmp_path: Path) -> None:
    fades = {key: spec.mastering.fade_out_s for key, spec in specs_of(tmp_path, SHORT).items()}
    # A loop has no fade-out: it keeps the old default, and with it its spec hash.
    assert fades == {
        "two": 0.5,
        "short": 0.375,
        "eight": 2.0,
        "long": 2.0,
        "loop": 2.0,
        "set": 1.25,
    }


def _recording(tmp_path: Path, seconds: float, rate: int = 8000, channels: int = 2) -> str:
    (tmp_path / "audio").mkdir(exist_ok=True)
    frames = round(seconds * rate)
    music = np.sin(np.arange(frames) / rate * 2 * np.pi * 220.0)[:, None].repeat(channels, 1)
    sf.write(tmp_path / "audio" / "take.wav", (0.1 * music).astype(np.float32), rate)
    return "schema: 1\nsoundtrack: game\ntracks:\n  - id: take\n    source: audio/take.wav\n"


def _problems(path: Path) -> str:
    with pytest.raises(InputError) as refused:
        load_manifest(path)
    return " ".join(refused.value.problems)


def test_source_recordings_mastering_cannot_take_are_refused_at_validate(tmp_path: Path) -> None:
    path = write(tmp_path, _recording(tmp_path, 1.0, channels=6))
    assert (
        "tracks[0].source (line 5): source recording take.wav has 6 channels; mastering takes "
        "mono (1) or stereo (2) recordings: downmix it first"
    ) in _problems(path)
    _recording(tmp_path, MAX_DURATION_S + 1, rate=100, channels=1)
    assert "take.wav is 601.0 s long; the longest track is 600 s" in _problems(path)
    _recording(tmp_path, 0.25)
    assert "take.wav is 0.250 s long; the shortest track is 0.4 s" in _problems(path)
    (tmp_path / "audio" / "take.wav").write_bytes(b"RIFF....WAVEjunk")
    problems = _problems(path)
    assert "tracks[0].source (line 5): cannot read the source recording take.wav: Error in WAV" in (
        problems
    )
    assert str(tmp_path) not in problems, "libsndfile's words, without its repeat of the path"


def test_a_looping_source_with_its_own_loop_points_is_refused_at_validate(
    tmp_path: Path,
) -> None:
    """An intro-and-loop asset (RPG Maker's LOOPSTART, a DAW's smpl loop) was built into a
    loop of the build's own cutting, its loop points dropped without a word."""
    from mutagen.oggvorbis import OggVorbis

    text = _recording(tmp_path, 8.0).replace("take.wav", "take.ogg") + "    loop: true\n"
    path = write(tmp_path, text)
    audio, rate = sf.read(tmp_path / "audio" / "take.wav")
    sf.write(tmp_path / "audio" / "take.ogg", audio, rate, format="OGG", subtype="VORBIS")
    tags = OggVorbis(tmp_path / "audio" / "take.ogg")
    tags["LOOPSTART"], tags["LOOPLENGTH"] = ["8000"], ["48000"]
    tags.save()
    assert (
        "tracks[0].source (line 5): audio/take.ogg carries its own loop (from frame 8000, 48000 "
        "frames long), which a build does not keep"
    ) in _problems(path)
    # As a one-shot, or looped whole (what a build keeps of it anyway), it is taken.
    write(tmp_path, text.replace("loop: true", "loop: false"))
    assert load_manifest(path).tracks[0].id == "take"
    for length in (len(audio), len(audio) + 4410):  # longer: a trimmed or resampled copy's
        tags["LOOPSTART"], tags["LOOPLENGTH"] = ["0"], [str(length)]
        tags.save()
        write(tmp_path, text)
        assert load_manifest(path).tracks[0].id == "take"
    del tags["LOOPLENGTH"]
    tags["LOOPSTART"], tags["LOOPEND"] = ["5000"], ["100"]
    tags.save()
    assert "audio/take.ogg has a loop that ends before it starts (from frame 5000)" in (
        _problems(path)
    )
    tags["LOOPSTART"], tags["LOOPEND"] = ["5000"], ["70000"]
    tags.save()
    assert "audio/take.ogg has loop points outside its 64000 frames" in _problems(path)


def test_a_one_shot_source_is_not_held_to_loop_points_it_does_not_use(tmp_path: Path) -> None:
    """A sample library's ping-pong smpl loop, or LOOPSTART written as 1.5e3, refused a
    recording that no loop was asked of."""
    from mutagen.oggvorbis import OggVorbis

    path = write(tmp_path, _recording(tmp_path, 4.0))
    take = tmp_path / "audio" / "take.wav"
    body = struct.pack("<9I", 0, 0, 0, 60, 0, 0, 0, 1, 0) + struct.pack("<6I", 0, 1, 10, 20, 0, 0)
    with take.open("ab") as f:
        f.write(b"smpl" + struct.pack("<I", len(body)) + body)  # type 1: ping-pong
    assert load_manifest(path).tracks[0].id == "take"
    write(tmp_path, _recording(tmp_path, 4.0) + "    loop: true\n")
    with take.open("ab") as f:
        f.write(b"smpl" + struct.pack("<I", len(body)) + body)
    assert "take.wav has loop points that cannot be read: its smpl loop is ping-pong" in (
        _problems(path)
    )
    ogg = tmp_path / "audio" / "take.ogg"
    audio, rate = sf.read(take)
    sf.write(ogg, audio, rate, format="OGG", subtype="VORBIS")
    tags = OggVorbis(ogg)
    tags["LOOPSTART"] = ["1.5e3"]
    tags.save()
    write(tmp_path, _recording(tmp_path, 4.0).replace("take.wav", "take.ogg"))
    assert load_manifest(path).tracks[0].id == "take"


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_source_recording_of_nan_or_infinite_samples_is_refused_at_validate(
    tmp_path: Path, subtype: str, bad: float
) -> None:
    """Such a take passed validate; the build then published the other tracks and failed it."""
    path = write(tmp_path, _recording(tmp_path, 10.0))
    take = tmp_path / "audio" / "take.wav"
    audio, rate = sf.read(take)
    audio[70_000, 1] = bad  # past the first block of 65536 frames a reader might stop at
    sf.write(take, audio, rate, subtype=subtype)
    assert (
        "tracks[0].source (line 5): source recording take.wav contains NaN or infinite samples"
    ) in _problems(path)
    audio[70_000, 1] = 0.0
    sf.write(take, audio, rate, subtype=subtype)
    assert load_manifest(path).tracks[0].id == "take"


def test_a_source_loop_needs_audio_after_its_end(tmp_path: Path) -> None:
    text = _recording(tmp_path, 10.0) + "    loop: true\n"
    assert specs_of(tmp_path, text)["take"].duration_s == pytest.approx(10.0)
    # Its own length: the end is searched up to 0.4 s early, so a crossfade up to 0.4 s fits.
    path = write(tmp_path, text + "    loop_crossfade_ms: 500\n")
    assert (
        "tracks[0].loop_crossfade_ms (line 7): the recording is 10.00 s long; a 10 s loop with "
        "a 500 ms crossfade needs at least 10.10 s of audio"
    ) in _problems(path)
    path = write(tmp_path, text + "    duration: 12\n")
    assert "tracks[0].duration (line 7): the recording is 10.00 s long; a 12 s loop" in _problems(
        path
    )
    # A short loop's end is searched from 0.8 s (its seam's two loudness blocks), not 0.55 s.
    path = write(tmp_path, _recording(tmp_path, 0.85) + "    loop: true\n    duration: 0.95\n")
    assert (
        "the recording is 0.85 s long; a 0.95 s loop with a 250 ms crossfade needs at least "
        "1.05 s of audio (its end is searched from 0.80 s"
    ) in _problems(path)


def test_what_a_build_would_always_fail_on_is_refused_at_validate(tmp_path: Path) -> None:
    """Each of these passed validate and failed every build: a recording asked to last longer
    than it does (the duration gate), a loop too short to measure its seam, and a recording
    too short for the loop its bars make named loop_crossfade_ms, which it did not set."""
    text = _recording(tmp_path, 3.0)
    path = write(tmp_path, text + "    duration: 10\n")
    assert (
        "tracks[0].duration (line 6): the recording is 3.00 s long and mastering never lengthens "
        "one: 10 s asked would fail the duration gate (± 0.5 s)"
    ) in _problems(path)
    assert specs_of(tmp_path, text + "    duration: 3.4\n")["take"].duration_s == 3.4
    loose = text + "    duration: 10\n    gates: {duration_tolerance_s: 8}\n"
    assert specs_of(tmp_path, loose)["take"].duration_s == 10.0
    for severity in ("warn", "off"):  # a shorter take is then the team's to accept
        lenient = text + f"    duration: 10\n    gates: {{duration: {severity}}}\n"
        assert specs_of(tmp_path, lenient)["take"].duration_s == 10.0
    short_loop = "  - {id: blip, prompt: x, duration: 0.6, loop: true, loop_crossfade_ms: 50}\n"
    path = write(tmp_path, text + short_loop)
    assert (
        "tracks[1].duration (line 6): a 0.6 s loop is too short to judge its seam: a loop is at "
        "least 0.8 s"
    ) in _problems(path)
    bars = text + "    loop: true\n    bars: 2\n    bpm: 60\n"
    assert "tracks[0].bars (line 7): the recording is 3.00 s long; a 8 s loop" in _problems(
        write(tmp_path, bars)
    )


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("D minor", "D minor"),
        ("f# Minor", "F# minor"),
        ("F sharp major", "F# major"),
        ("F♯ minor", "F# minor"),
        ("B-flat minor", "Bb minor"),
        ("Bb major", "Bb major"),
        ("E flat major", "Eb major"),
        ("Db maj", "Db major"),
        ("c min", "C minor"),
    ],
)
def test_keys_are_normalised_in_any_usual_spelling(
    tmp_path: Path, written: str, normalised: str
) -> None:
    specs = specs_of(tmp_path, BASE.replace("key: D minor", f"key: {written}"))
    assert specs["theme"].key == normalised
    assert specs["theme"].prompt == f"orchestral theme, {normalised}, 90 BPM"


def test_bars_give_the_length_at_the_tempo_and_time_signature(tmp_path: Path) -> None:
    text = BASE + (
        "  - id: waltz\n    prompt: market waltz\n    bpm: 180\n    time_signature: 3/4\n"
        "    bars: 16\n    loop: true\n"
        "  - id: march\n    prompt: march\n    bpm: 120\n    bars: 8\n"
    )
    specs = specs_of(tmp_path, text)
    assert specs["waltz"].duration_s == 16.0  # 16 bars x 3 beats x 60 / 180
    assert specs["waltz"].beats_per_bar == 3 and specs["waltz"].bar_loop
    assert specs["march"].duration_s == 16.0 and not specs["march"].bar_loop
    # A bar loop renders room for a tempo 4 % slow, its first downbeat, the search and crossfade.
    assert specs["waltz"].render_duration_s == pytest.approx(16.0 * 1.04 + 1.0 + 0.4 + 0.25)
    assert specs["march"].render_duration_s == 16.0


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ("bpm: 20\n    bars: 1024", "1024 bars at 20 BPM: 12288 s; a track is 0.4 to 600 s"),
        ("bpm: 300\n    time_signature: 1/16\n    bars: 1", "1 bar at 300 BPM: 0.2 s"),
    ],
)
def test_a_length_in_bars_is_held_to_the_track_limits(
    fields: str, said: str, tmp_path: Path
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(BASE + f"  - id: long\n    prompt: drone\n    {fields}\n")
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    assert any(p.startswith("tracks[2].bars (line") and said in p for p in caught.value.problems)


def test_numbers_read_as_yaml_1_2_reads_them_and_unordered_tags_are_refused(
    tmp_path: Path,
) -> None:
    """YAML 1.1 made `bpm: 0120` 80 BPM and `duration: 1:30` 90 s, where an editor (YAML 1.2)
    and a person read 120 and a typo; a !!set of formats gave a spec hash that changed from one
    run to the next (a set has no order)."""
    zeros = BASE.replace("bpm: 90", "bpm: 0120").replace("seed: 5", "seed: 010")
    specs = specs_of(tmp_path, zeros)
    assert (specs["theme"].bpm, specs["battle"].seed) == (120, 10)
    # An exponent without a point or a sign is a number in YAML 1.2, text in 1.1.
    exponents = BASE.replace("duration: 20", "duration: 2e1").replace("seed: 5", "seed: 5e0")
    specs = specs_of(tmp_path, exponents)
    assert specs["theme"].duration_s == 20.0 and specs["battle"].seed == 5
    # A leading zero before an 8 or a 9 made YAML 1.1 text; 0o and 0x are YAML 1.2's octal
    # and hex, text to YAML 1.1.
    others = BASE.replace("bpm: 90", "bpm: 090").replace("seed: 5", "seed: 0o17")
    specs = specs_of(tmp_path, others)
    assert (specs["theme"].bpm, specs["battle"].seed) == (90, 15)
    assert specs_of(tmp_path, BASE.replace("seed: 5", "seed: 0x1F"))["battle"].seed == 31
    for text, field, said in (
        (BASE.replace("duration: 20", "duration: 1:30"), "defaults.duration", "'1:30'"),
        # YAML 1.1's underscores and binary: text to an editor, so an error here too.
        (BASE.replace("seed: 5", "seed: 1_000"), "tracks[1].seed", "'1_000'"),
        (BASE.replace("bpm: 90", "bpm: 0b1011010"), "tracks[0].bpm", "'0b1011010'"),
        (BASE.replace("seed: 5", "seed: 5\n    formats: !!set {ogg, mp3}"), "", "!!set tag"),
        (BASE.replace("prompt: drums", "prompt: !!binary ZHJ1bXM="), "", "!!binary tag"),
    ):
        path = tmp_path / "m.yaml"
        path.write_text(text)
        with pytest.raises(InputError) as caught:
            load_manifest(path)
        shown = " ".join([str(caught.value), *caught.value.problems])
        assert field in shown and said in shown and "line " in shown, shown


@pytest.mark.parametrize(
    ("field", "tagged"),
    [
        ("prompt: drums", "prompt: !!python/name:os.system"),
        ("seed: 5", "seed: !!python/tuple [5]"),
        ("seed: 5", "seed: !!python/object/new:int [5]"),
    ],
)
def test_python_tags_are_refused_as_yaml_before_anything_is_built(
    tmp_path: Path, field: str, tagged: str
) -> None:
    """Configuration is data: a Python tag names no constructor (a loader that knew one would
    hand the manifest a function of os, or a tuple), at its line."""
    text = BASE.replace(field, tagged)
    with pytest.raises(InputError) as caught:
        load_manifest(write(tmp_path, text))
    tag = tagged.split("!!", 1)[1].split(" ", 1)[0]
    said = str(caught.value)
    assert f"could not determine a constructor for the tag 'tag:yaml.org,2002:{tag}'" in said
    assert f"line {text.splitlines().index('    ' + tagged) + 1}" in said


def test_flags_and_dates_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """YAML 1.1 made `lyrics: no` the flag false (an error about a boolean where an editor
    shows the word), `model_revision: 2024-01-01` a date, and `loop: yes` a flag an editor
    refuses."""
    words = BASE.replace("prompt: drums", "prompt: drums\n    lyrics: no").replace(
        "bpm: 90", "bpm: 90\n    model_revision: 2024-01-01\n    loop: True"
    )
    specs = specs_of(tmp_path, words.replace("model: ", ""))
    assert specs["battle"].lyrics == "no" and specs["theme"].model_revision == "2024-01-01"
    # YAML 1.1's value (=) and merge (<<) tags, where no merge can be, are text too.
    signs = BASE.replace("prompt: drums", "prompt: drums\n    mood: =").replace(
        "key: D minor", "key: D minor\n    mood: <<"
    )
    signs = signs.replace("bpm: 90", "bpm: 90\n    model_revision: !!timestamp 2024-01-01")
    texts = specs_of(tmp_path, signs)
    assert texts["theme"].model_revision == "2024-01-01"
    assert texts["battle"].prompt == "drums, =" and texts["theme"].prompt.endswith(", <<")
    assert specs["theme"].loop is True and specs["battle"].loop is True
    path = write(tmp_path, BASE.replace("loop: true", "loop: yes"))
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    assert caught.value.problems == [
        "tracks[1].loop (line 14): Input should be a valid boolean (got 'yes'): write true or "
        "false, without quotes (yes, no, on and off are words in YAML 1.2, as editors read it)"
    ]


def test_a_file_of_too_many_values_is_refused_while_it_is_read(tmp_path: Path) -> None:
    """Within the size limit, a flow list of 150,000 values, no alias among them: refused for
    what it is, at the value that goes over, not after composing it all (12 s for 1 MiB)."""
    path = tmp_path / "m.yaml"
    path.write_text(BASE + "x: [" + ",".join("x" * 150_000) + "]\n")
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    problem = str(caught.value)
    assert "more than 100,000 values; a manifest may hold at most 100,000" in problem
    assert "alias" not in problem


def test_a_reference_that_is_no_audio_is_refused_before_anything_renders(tmp_path: Path) -> None:
    """A reference is read after the render: text named ref.wav failed the track after the GPU
    had rendered it, and wrote a lock."""
    (tmp_path / "ref.wav").write_text("not audio")
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace("defaults:\n", "defaults:\n  reference: ref.wav\n"))
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    problems = caught.value.problems
    assert len(problems) == 2 and all("cannot read the reference recording" in p for p in problems)
    assert (
        problems[0].startswith("tracks[0].reference (line") and "(set in defaults)" in problems[0]
    )


def test_a_reference_too_short_to_analyse_is_refused_before_anything_renders(
    tmp_path: Path,
) -> None:
    sf.write(tmp_path / "ref.wav", np.zeros(4410, dtype=np.float32), 44100)  # 0.1 s
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace("defaults:\n", "defaults:\n  reference: ref.wav\n"))
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    assert (
        "the reference recording lasts 0.10 s; the comparison needs 0.4 s at least"
        in (caught.value.problems[0])
    )


def test_validate_prints_brackets_in_paths_as_they_are(tmp_path: Path) -> None:
    """Rich reads [/] as markup: a storage folder named so crashed `validate` with a traceback."""
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace("soundtrack: game\n", "soundtrack: game\nstorage: './out[/]x'\n"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    # The folder as the build resolves it, beside the manifest, wherever validate runs.
    assert f"storage: {tmp_path / 'out[' / ']x'}" in " ".join(result.stdout.split())


def test_validate_writes_out_control_characters_in_names_and_paths(tmp_path: Path) -> None:
    """A recording's name is anyone's to choose: printed raw, it coloured or retitled the
    terminal `validate` ran in."""
    name = "t\x1b[31mRED\x1b[0m[x].wav"
    sf.write(tmp_path / name, signals.music_like(3.0, 44100).T, 44100)
    path = tmp_path / "m.yaml"
    path.write_text(
        'schema: 1\nsoundtrack: game\nstorage: "./out\\e]0;pwned\\a"\ntracks:\n'
        '  - id: credits\n    source: "t\\e[31mRED\\e[0m[x].wav"\n'
    )
    result = runner.invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output, repr(result.output)
    assert "t\\x1b[31mRED\\x1b[0m[x]" in result.output
    assert "out\\x1b]0;pwned\\x07" in result.output.replace("\n", ""), "folded anywhere"


def test_validate_refuses_a_storage_folder_a_build_could_not_write(tmp_path: Path) -> None:
    """A file where the storage folder should be passed `validate`; `build` then exited 2."""
    (tmp_path / "assets").write_text("a file")
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace("soundtrack: game\n", "soundtrack: game\nstorage: ./assets\n"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "is not a directory" in " ".join(result.output.split())


def test_validate_checks_the_manifests_storage_not_the_environments(tmp_path: Path) -> None:
    """$SOUNDTRACK_STORAGE is the build's (as --out is): a CI job's setting for its builds must
    not fail, or change, the manifest a developer validates."""
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace("soundtrack: game\n", "soundtrack: game\nstorage: ./assets\n"))
    env = {"SOUNDTRACK_STORAGE": str(tmp_path / "a-file" / "below-it")}
    (tmp_path / "a-file").write_text("no folder")
    result = runner.invoke(app, ["validate", str(path)], env=env)
    assert result.exit_code == 0, result.output
    # The path as printed, wherever the console's width folded the line.
    assert f"storage: {tmp_path / 'assets'}" in result.output.replace("\n", "")


NOT_OURS = {
    "file": ("game", "is a file, not a folder"),
    "link to nothing": ("game", "is a symbolic link, not a folder"),
    "link to a folder": ("game", "is a symbolic link, not a folder"),
    "journal folder": ("game/soundtrack.journal.jsonl", "is a folder, not the journal"),
    "journal link": ("game/soundtrack.journal.jsonl", "is a symbolic link, not the journal"),
    "lock folder": ("game/soundtrack.lock.json", "is a folder, not the lock"),
}


@pytest.mark.parametrize("kind", NOT_OURS)
@pytest.mark.parametrize("command", ["validate", "build"])
def test_a_soundtrack_folder_or_file_not_of_ours_is_refused_before_the_build(
    tmp_path: Path, command: str, kind: str
) -> None:
    """A file or a dangling link at <storage>/<soundtrack> crashed the build with a traceback
    (exit 1, a flow run begun); a link to a folder published, and gc deleted, through it. A
    folder where the journal or the lock goes failed the build only when it published."""
    where, said = NOT_OURS[kind]
    (tmp_path / "assets" / "game").mkdir(parents=True)
    path = tmp_path / "assets" / where
    elsewhere = tmp_path / "elsewhere"
    if path.exists():
        path.rmdir()
    if kind == "file":
        path.write_text("a file")
    elif "link" in kind:
        path.symlink_to(elsewhere)
        if kind == "link to a folder":
            elsewhere.mkdir()
    else:
        path.mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(BASE.replace("soundtrack: game\n", "soundtrack: game\nstorage: ./assets\n"))
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, [command, str(manifest)])
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert f"{path}{', where soundtrack' if where == 'game' else ''}" in shown, shown
    assert said in shown and "Traceback" not in result.output
    assert sorted(tmp_path.rglob("*")) == before, "nothing written"


def test_attempts_and_reference_are_build_policy_outside_the_spec_hash(tmp_path: Path) -> None:
    sf.write(tmp_path / "ref.wav", np.zeros((44100, 2), dtype=np.float32) + 0.1, 44100)
    first = specs_of(tmp_path, BASE)
    policy = BASE.replace("defaults:\n", "defaults:\n  attempts: 3\n  reference: ref.wav\n")
    second = specs_of(tmp_path, policy)
    assert second["theme"].attempts == 3 and second["theme"].reference == tmp_path / "ref.wav"
    assert {k: v.spec_hash for k, v in first.items()} == {k: v.spec_hash for k, v in second.items()}
    assert first["theme"].generation_key == second["theme"].generation_key


def test_gate_severities_merge_and_enter_the_hash_only_when_set(tmp_path: Path) -> None:
    plain = specs_of(tmp_path, BASE)
    text = BASE.replace("defaults:\n", "defaults:\n  gates: {key: fail, tempo_tolerance_pct: 3}\n")
    text = text.replace("    bpm: 90\n", "    bpm: 90\n    gates: {tempo: off}\n")
    set_ = specs_of(tmp_path, text)
    theme = set_["theme"].gates
    assert theme.severity("key") == "fail" and theme.severity("tempo") == "off"
    assert theme.tempo_tolerance_pct == 3.0
    assert set_["battle"].gates.severity("tempo") is None
    assert set_["theme"].spec_hash != plain["theme"].spec_hash
    assert plain["theme"].gates == GateLimits()


def test_a_take_keeps_the_spec_and_renders_the_next_seed(tmp_path: Path) -> None:
    spec = specs_of(tmp_path, BASE)["battle"]
    third = take(spec, 2)
    assert third.seed == 7 and third.take == 2 and third.spec_hash == spec.spec_hash
    assert third.generation_key not in (spec.generation_key, take(spec, 1).generation_key)
    assert take(spec, 0) == spec
    assert take(replace(spec, seed=2**32 - 1), 1).seed == 0


def test_every_gate_has_a_severity_setting_and_bare_off_means_off(tmp_path: Path) -> None:
    from soundtrack.gates import GATE_NAMES
    from soundtrack.schema import GatesSpec

    assert set(GatesSpec.model_fields) >= GATE_NAMES
    specs = specs_of(
        tmp_path, BASE.replace("    bpm: 90\n", "    bpm: 90\n    gates: {key: off}\n")
    )
    assert specs["theme"].gates.severity("key") == "off"  # the word, as YAML 1.2 reads it


def test_gate_flag_sets_every_tracks_severity_and_refuses_nonsense(tmp_path: Path) -> None:
    from soundtrack.resolve import gate_severities

    path = write(tmp_path, BASE)
    severities = gate_severities(["tempo=warn", "key=off"])
    specs = resolve_tracks(load_manifest(path), tmp_path, severities=severities)
    assert all(s.gates.severity("tempo") == "warn" for s in specs)
    assert all(s.gates.severity("key") == "off" for s in specs)
    for bad in ("tempo", "tempo=maybe", "tmepo=warn"):
        with pytest.raises(InputError, match="--gate"):
            gate_severities([bad])
    # Twice alike is once; twice apart was the last one's, silently (a CI job's default and a
    # developer's override on one line).
    assert gate_severities(["tempo=warn", "tempo=warn"]) == {"tempo": "warn"}
    with pytest.raises(InputError) as refused:
        gate_severities(["tempo=warn", "key=off", "tempo=fail"])
    assert str(refused.value) == (
        "--gate sets tempo twice: tempo=warn and tempo=fail; give it once"
    )
    # Every problem at once, as a manifest's (a deployment's user sees only the run's state).
    with pytest.raises(InputError) as refused:
        gate_severities(["tempo", "tmepo=warn", "key=off", "key=maybe", "key=warn"])
    assert refused.value.problems == [
        "--gate 'tempo': write GATE=SEVERITY (SEVERITY is one of fail, warn, off)",
        "--gate 'tmepo=warn': no gate is named 'tmepo'",
        "--gate 'key=maybe': SEVERITY is one of fail, warn, off",
        "--gate sets key twice: key=off and key=warn; give it once",
    ]
    assert "GATE is one of channels, clipping" in str(refused.value)


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_a_utf16_or_utf32_manifest_is_named_as_such(tmp_path: Path, encoding: str) -> None:
    """Windows editors save "Unicode" as UTF-16, which read as "a binary file"; UTF-32 (whose
    little-endian mark begins with UTF-16's) read as UTF-16."""
    path = tmp_path / "m.yaml"
    path.write_text(BASE, encoding=encoding)
    code, output = validate(path)
    named = encoding[:6].upper()
    assert code == 2 and f"is {named} text; save it as UTF-8" in output, output
