"""`soundtrack compare` and `soundtrack inspect --analysis` on synthesized grooves of known tempo
and key: what a user sees for two files, and the tempo and key gates on one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack.cli import app
from tests.music import chord_cycle, drum_and_bass

RATE = 44100
runner = CliRunner()


@pytest.fixture(scope="module")
def grooves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("grooves")
    signals = {
        "base": drum_and_bass(100, "A minor", 20.0, RATE)[0],
        "faster": drum_and_bass(125, "A minor", 20.0, RATE)[0],  # the same pattern, 1.25x
        "up-a-tone": drum_and_bass(100, "B minor", 20.0, RATE)[0],
        "chords": chord_cycle(20.0, RATE),
    }
    paths = {}
    for name, audio in signals.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], audio.T, RATE, subtype="PCM_16")
    return paths


def compare(a: Path, b: Path) -> dict[str, object]:
    result = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_compare_reports_the_tempo_ratio_of_a_faster_variant(grooves: dict[str, Path]) -> None:
    data = compare(grooves["base"], grooves["faster"])
    assert data["tempo_ratio"] == pytest.approx(1.25, rel=0.01)
    assert data["key_relation"] == "same"
    assert "1.25x faster" in str(data["verdict"])


def test_compare_reports_a_transposition(grooves: dict[str, Path]) -> None:
    data = compare(grooves["base"], grooves["up-a-tone"])
    assert data["key_relation"] == "transposed" and data["key_semitones"] == 2
    assert data["tempo_ratio"] == pytest.approx(1.0, abs=0.01)


def test_timbre_distance_is_small_for_one_sound_and_large_for_another(
    grooves: dict[str, Path],
) -> None:
    same = compare(grooves["base"], grooves["up-a-tone"])["timbre_distance"]
    other = compare(grooves["base"], grooves["chords"])["timbre_distance"]
    assert isinstance(same, float) and isinstance(other, float)
    assert same < other / 2, (same, other)


def test_compare_prints_a_table_and_a_verdict(grooves: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["compare", str(grooves["base"]), str(grooves["faster"])], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    for word in ("tempo_bpm", "key", "loudness_range_lu", "timbre", "1.25x faster"):
        assert word in result.output


def test_a_surround_file_is_compared_as_its_mixdown(
    tmp_path: Path, grooves: dict[str, Path]
) -> None:
    stereo, rate = sf.read(grooves["base"], always_2d=True)
    surround = tmp_path / "base-5.1.wav"
    sf.write(surround, np.concatenate([stereo, stereo, stereo], axis=1), rate, subtype="PCM_16")
    data = compare(grooves["base"], surround)
    assert data["tempo_ratio"] == pytest.approx(1.0, abs=0.005)
    assert data["key_relation"] == "same"


def test_silence_has_no_timbre_or_brightness_to_compare(
    tmp_path: Path, grooves: dict[str, Path]
) -> None:
    """Silence read as 'similar timbre' to anything, its brightness ratio as 5e12."""
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((4 * RATE, 2), dtype=np.float32), RATE, subtype="PCM_16")
    data = compare(silent, grooves["base"])
    assert data["timbre_distance"] is None and data["centroid_ratio"] is None
    assert str(data["verdict"]).endswith("a silent")
    assert str(data["verdict"]).startswith("no tempo in a,")  # not "no common tempo"
    both = compare(silent, silent)
    assert str(both["verdict"]).endswith("a and b silent")
    assert str(both["verdict"]).startswith("no tempo in a and b,")


def test_compare_a_missing_file_exits_2(tmp_path: Path, grooves: dict[str, Path]) -> None:
    result = runner.invoke(app, ["compare", str(grooves["base"]), str(tmp_path / "nope.wav")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    # Too short to analyse: the message says which of the two.
    short = tmp_path / "blip.wav"
    sf.write(short, [0.1] * 4410, RATE)
    result = runner.invoke(app, ["compare", str(grooves["base"]), str(short)])
    assert result.exit_code == 2, result.output
    assert f"{short}: audio is 0.10 s long" in " ".join(result.output.split())
    # --json still says why on stdout, where a script reads it.
    result = runner.invoke(app, ["compare", str(grooves["base"]), str(short), "--json"])
    assert result.exit_code == 2
    said = json.loads(result.stdout)
    assert said["b"] == str(short) and "audio is 0.10 s long" in said["error"]


def test_a_file_name_cannot_drive_the_terminal(tmp_path: Path, grooves: dict[str, Path]) -> None:
    """Escape sequences and newlines in a file's name reached the terminal as they were: a
    name could colour, clear or split what a user reads."""
    named = tmp_path / "ansi\x1b[31mred\x1b[0m\nline.wav"
    named.write_bytes(grooves["chords"].read_bytes())
    missing = tmp_path / "gone\x1b[2J.wav"
    for command in (
        ["inspect", str(named), str(missing)],
        ["compare", str(grooves["chords"]), str(named)],
        ["compare", str(missing), str(named)],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output
        assert "\x1b" not in result.output, command  # written out as \\x1b


def test_inspect_analysis_measures_and_judges_tempo_and_key(grooves: dict[str, Path]) -> None:
    path = str(grooves["base"])
    result = runner.invoke(
        app,
        [
            "inspect",
            path,
            "--loudness",
            "mobile",
            "--analysis",
            "--bpm",
            "100",
            "--key",
            "A minor",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output)
    analysis = report["analysis"]
    assert analysis["tempo_bpm"] == pytest.approx(100.0, rel=0.01)
    assert analysis["key"] == "A minor"
    assert len(analysis["downbeats"]) >= 7 and len(analysis["beats"]) >= 28
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["tempo"]["passed"] and gates["key"]["passed"]

    # 140 bpm is neither 100 nor half or double it: the tempo gate fails, exit 1; a wrong key
    # only warns.
    wrong = runner.invoke(
        app,
        [
            "inspect",
            path,
            "--loudness",
            "mobile",
            "--analysis",
            "--bpm",
            "140",
            "--key",
            "E major",
            "--json",
        ],
    )
    assert wrong.exit_code == 1, wrong.output
    gates = {g["name"]: g for g in json.loads(wrong.output)[0]["gates"]}
    # 100 bpm lies 28.6 % from 140 (and 42.9 % from 70).
    assert not gates["tempo"]["passed"] and gates["tempo"]["value"] == pytest.approx(28.6, abs=0.5)
    assert not gates["key"]["passed"] and gates["key"]["severity"] == "warn"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bpm", "100"], "add --analysis"),
        (["--key", "A minor"], "add --analysis"),
        (["--analysis", "--key", "H minor"], "'H minor' is not a key"),
        (["--analysis", "--time-signature", "4"], "--time-signature"),
        (["--time-signature", "4"], "--time-signature"),  # a loop's grid takes it alone
    ],
)
def test_inspect_refuses_bad_targets_with_exit_2(
    grooves: dict[str, Path], args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["inspect", str(grooves["base"]), *args])
    assert result.exit_code == 2 and message in result.output, result.output
