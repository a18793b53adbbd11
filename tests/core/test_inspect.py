"""`soundtrack inspect`: measurements, loop tags and verdicts for any file; exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack.audio import read_audio, write_wav
from soundtrack.cli import app
from soundtrack.encode import encode
from soundtrack.master import master
from soundtrack.spec import LOUDNESS_PROFILES, Mastering
from tests.reference import ebur128
from tests.signals import music_like

WIDE = {"COLUMNS": "200"}  # the tables' and headline's width, whatever the terminal's
TAGS = {"title": "theme", "soundtrack": "test", "track_id": "theme", "spec_hash": "ab12"}


@pytest.fixture(scope="module")
def loop_ogg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A mastered 8 s loop encoded to OGG with its loop tags, and its loop length."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    m = master(music_like(11.0, 32000), 32000, mastering, loop=True, duration_s=8.0)
    out = tmp_path_factory.mktemp("inspect")
    (file,) = encode(m, ("ogg",), out, "theme", tags=TAGS)
    assert m.loop_length is not None
    return file.path, m.loop_length


def test_json_shows_loop_tags_loudness_and_verdicts(loop_ogg: tuple[Path, int]) -> None:
    path, loop_length = loop_ogg
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    metrics = report["metrics"]
    assert (metrics["loop_start"], metrics["loop_length"]) == (0, loop_length)
    assert (metrics["sample_rate"], metrics["channels"]) == (44100, 2)
    lufs, _ = ebur128(path)
    assert metrics["integrated_lufs"] == pytest.approx(lufs, abs=0.5)
    verdicts = {g["name"]: g["passed"] for g in report["gates"]}
    assert verdicts["loop_seam_jump"] and verdicts["loop_seam_loudness"] and verdicts["loudness"]
    assert report["passed"] is True


@pytest.mark.parametrize("signature", ["4/4", "3/4"])
def test_a_bar_loop_struck_on_its_downbeat_passes_inspect_as_it_passed_the_build(
    tmp_path: Path, signature: str
) -> None:
    """The build judges a bar loop's wrap against the attacks on its exact bar grid; inspect
    had no grid, so the published OGG of a loop the build approved failed loop_seam_jump (13)."""
    from soundtrack.process import process_track
    from tests.music import struck_bars
    from tests.specs import make_spec

    beats = int(signature[0])
    audio = struck_bars(4, 44100)
    if beats == 3:  # drop every fourth beat: 4 bars of 3/4 at 120 bpm
        audio = np.concatenate([bar[:, : 3 * 22050] for bar in np.split(audio, 4, axis=1)], axis=1)
    spec = make_spec(
        id="struck",
        duration_s=audio.shape[1] / 44100,
        loop=True,
        bpm=120,
        time_signature=signature,
        own_length=True,
        source=tmp_path / "struck.wav",
    )
    outcome = process_track(spec, audio, 44100, tmp_path / "built")
    assert outcome.status == "approved"
    ogg = next(f.path for f in outcome.files if f.format == "ogg")
    result = CliRunner().invoke(app, ["inspect", str(ogg), "--json", "--time-signature", signature])
    (report,) = json.loads(result.stdout)
    jump = next(g for g in report["gates"] if g["name"] == "loop_seam_jump")
    assert jump["passed"] and jump["value"] < 2.0, jump
    assert "analysis" not in report  # listened to for its grid, not shown unasked


@pytest.mark.parametrize("bars", [4.0, 4.4, 4.5])
def test_a_loop_keeps_the_tempo_heard_unless_it_is_whole_bars(tmp_path: Path, bars: float) -> None:
    """inspect read every tagged loop as whole bars and its tempo off its length: a free loop
    of 4.5 bars of a 120 bpm groove read 106.67 bpm and failed the tempo gate (11 %). (A long
    one, 60.5 bars, is in test_process.)"""
    from soundtrack.encode import _append_smpl_chunk
    from tests.music import drum_and_bass

    audio, _ = drum_and_bass(120.0, "A minor", 12.0, 44100)
    path = tmp_path / "loop.wav"
    sf.write(path, audio.T, 44100, subtype="FLOAT")
    _append_smpl_chunk(path, 44100, 0, round(bars * 2.0 * 44100))
    args = ["inspect", str(path), "--json", "--analysis", "--bpm", "120"]
    result = CliRunner().invoke(app, args)
    (report,) = json.loads(result.stdout)
    assert report["analysis"]["tempo_bpm"] == pytest.approx(120.0, rel=0.002), report["analysis"]
    tempo = next(g for g in report["gates"] if g["name"] == "tempo")
    assert tempo["passed"], tempo


def table_verdicts(stdout: str) -> dict[str, str]:
    """Each gate's verdict in inspect's table: pass, FAIL or warn."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines()]
    # A cell wrapped onto a second line leaves the gate's cell of that line empty.
    return {row[0]: row[3] for row in rows if len(row) == 4 and row[0] not in ("", "gate")}


def test_the_table_names_the_loop_and_each_gate(loop_ogg: tuple[Path, int]) -> None:
    path, loop_length = loop_ogg
    result = CliRunner().invoke(app, ["inspect", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"loop: start 0, length {loop_length} samples" in result.stdout
    # The line wraps where a long path makes it: any space may be a newline.
    headline = re.search(r"(-?[\d.]+)\s+LUFS,\s+(-?[\d.]+)\s+dBTP,\s+([\d.]+)\s+s,", result.stdout)
    assert headline, result.stdout
    lufs, peak = ebur128(path)
    assert float(headline[1]) == pytest.approx(lufs, abs=0.5)
    assert float(headline[2]) == pytest.approx(peak, abs=0.5)
    assert float(headline[3]) == pytest.approx(sf.info(path).duration, abs=0.001)
    verdicts = table_verdicts(result.stdout)
    assert {"loop_seam_jump", "true_peak", "loudness"} <= set(verdicts), result.stdout
    assert set(verdicts.values()) == {"pass"}, verdicts
    assert result.stdout.rstrip().endswith("passed")


def test_a_failing_file_exits_1_and_names_the_gate(tmp_path: Path) -> None:
    loud = tmp_path / "loud.wav"
    sf.write(loud, music_like(5.0, 44100, peak_dbfs=-0.5).T, 44100)  # about -12 LUFS
    result = CliRunner().invoke(app, ["inspect", str(loud), "--json"])
    assert result.exit_code == 1
    (report,) = json.loads(result.stdout)
    assert report["passed"] is False
    assert {g["name"] for g in report["gates"] if not g["passed"]} == {"loudness", "true_peak"}
    table = CliRunner().invoke(app, ["inspect", str(loud)], env=WIDE)
    assert table.exit_code == 1
    verdicts = table_verdicts(table.stdout)
    assert {gate for gate, verdict in verdicts.items() if verdict != "pass"} == {
        "loudness",
        "true_peak",
    }, table.stdout
    assert verdicts["loudness"] == "FAIL"
    assert table.stdout.rstrip().endswith("rejected")
    mobile = CliRunner().invoke(app, ["inspect", str(loud), "--loudness", "web", "--json"])
    assert mobile.exit_code == 1
    assert "loudness" in {g["name"] for g in json.loads(mobile.stdout)[0]["gates"]}


def test_a_file_failing_only_a_warning_passes(tmp_path: Path) -> None:
    """A DC offset is worth a warning, not a rejection (a warn gate's severity)."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    m = master(music_like(6.0, 44100), 44100, mastering, loop=False, duration_s=5.0)
    path = tmp_path / "offset.wav"
    sf.write(path, (m.audio + 0.005).T, 44100, subtype="FLOAT")
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    failed = [(g["name"], g["severity"]) for g in report["gates"] if not g["passed"]]
    assert failed == [("dc_offset", "warn")] and report["passed"] is True
    table = CliRunner().invoke(app, ["inspect", str(path)], env=WIDE)
    assert table.exit_code == 0 and table_verdicts(table.stdout)["dc_offset"] == "warn"
    assert table.stdout.rstrip().endswith("passed")


def test_digital_silence_is_strict_json_with_null_levels(tmp_path: Path) -> None:
    """Its levels are -inf: written as -Infinity, jq and JavaScript refused the whole report."""
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((44100 * 3, 2), dtype=np.float32), 44100)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 1, result.output

    def not_json(constant: str) -> NoReturn:
        raise AssertionError(f"{constant} is not JSON")

    (report,) = json.loads(result.stdout, parse_constant=not_json)
    assert report["metrics"]["integrated_lufs"] is None
    assert report["metrics"]["true_peak_dbtp"] is None
    assert "silence" in {g["name"] for g in report["gates"] if not g["passed"]}


def test_missing_and_unreadable_files_exit_2_without_a_traceback(
    tmp_path: Path, loop_ogg: tuple[Path, int]
) -> None:
    garbage = tmp_path / "garbage.ogg"
    garbage.write_bytes(b"not audio at all" * 100)
    result = CliRunner().invoke(
        app, ["inspect", str(loop_ogg[0]), str(tmp_path / "missing.wav"), str(garbage)]
    )
    assert result.exit_code == 2
    # Rich wraps long paths at the console's width: compare without the line breaks.
    said = "".join(result.stderr.split("\n"))
    assert "missing.wav" in said and "not found" in said
    assert "garbage.ogg: not audio that ffmpeg can decode (" in " ".join(said.split())
    assert "-map" not in said and "failed (exit" not in said, "the reason, not ffmpeg's command"
    assert said.count("garbage.ogg") == 1
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path} is a directory, not an audio file" in " ".join(result.stderr.split())
    assert "not found" not in result.stderr


def test_an_ogg_named_wav_is_read_as_ogg_with_its_loop(
    tmp_path: Path, loop_ogg: tuple[Path, int]
) -> None:
    path, loop_length = loop_ogg
    misnamed = tmp_path / "theme.wav"
    misnamed.write_bytes(path.read_bytes())
    result = CliRunner().invoke(app, ["inspect", str(misnamed), "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert (report["metrics"]["loop_start"], report["metrics"]["loop_length"]) == (0, loop_length)


def test_a_wav_whose_loop_chunk_is_cut_short_exits_2_naming_it(tmp_path: Path) -> None:
    whole = tmp_path / "whole.wav"
    sf.write(whole, music_like(2.0, 44100).T, 44100)
    # A smpl chunk of 9 header words and one loop (60 bytes), the file ending 20 bytes in.
    header = struct.pack("<9I", 0, 0, 22676, 60, 0, 0, 0, 1, 0)
    loop = struct.pack("<6I", 0, 0, 0, 44099, 0, 0)
    data = whole.read_bytes() + b"smpl" + struct.pack("<I", 60) + (header + loop)[:20]
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:4] + struct.pack("<I", len(data) - 8) + data[8:])
    result = CliRunner().invoke(app, ["inspect", str(cut)])
    assert result.exit_code == 2, result.output
    assert "its smpl chunk (loop points) is cut short" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize("seconds", ["nan", "inf", "-5", "0"])
def test_a_duration_that_is_no_length_exits_2(seconds: str, loop_ogg: tuple[Path, int]) -> None:
    result = CliRunner().invoke(app, ["inspect", str(loop_ogg[0]), "--duration", seconds])
    assert result.exit_code == 2 and "--duration must be a number of seconds above 0" in (
        result.stderr
    )


@pytest.mark.parametrize("channels", [3, 4, 6])
def test_a_surround_file_exits_2_asking_for_a_downmix(channels: int, tmp_path: Path) -> None:
    """A channel count does not say which channel is the LFE (left out of BS.1770 loudness) or
    a surround (weighted 1.41): an LFE-only file must not read as programme loudness."""
    audio = np.zeros((channels, 44100 * 2), dtype=np.float32)
    audio[channels - 1] = music_like(2.0, 44100, channels=1)[0]
    path = tmp_path / "surround.wav"
    sf.write(path, audio.T, 44100)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, "one line, however narrow the terminal"
    said = " ".join(result.stderr.split())
    assert f"{channels} channels: the gates measure mono and stereo" in said
    assert "downmix it to stereo first" in said


def test_a_file_name_that_is_not_utf8_is_read_as_any_other(
    loop_ogg: tuple[Path, int], tmp_path: Path
) -> None:
    """Such a name crashed inspect, compare and generate -o with a UnicodeEncodeError."""
    path, loop_length = loop_ogg
    odd = tmp_path / os.fsdecode(b"th\xffeme.ogg")
    shutil.copyfile(path, odd)
    result = CliRunner().invoke(app, ["inspect", str(path), str(odd), "--json"])
    assert result.exit_code == 0, result.output
    plain, renamed = json.loads(result.stdout)
    assert renamed["metrics"] == plain["metrics"]
    # A lone surrogate (\udcff) is no Unicode: strict JSON readers refuse it or make it U+FFFD.
    assert renamed["file"] == f"{tmp_path}/th\\xffeme.ogg" and "\\udc" not in result.stdout
    assert renamed["metrics"]["loop_length"] == loop_length
    gone = str(tmp_path / os.fsdecode(b"gone-\xfe.ogg"))
    missing = CliRunner().invoke(app, ["inspect", gone])
    assert missing.exit_code == 2
    as_json = CliRunner().invoke(app, ["inspect", gone, "--json"])
    assert (
        "\\udc" not in as_json.stdout and "gone-\\xfe.ogg" in json.loads(as_json.stdout)[0]["file"]
    )
    assert "gone-\\xfe.ogg" in missing.stderr, "the name's byte, shown as a terminal can"
    wav = tmp_path / os.fsdecode(b"take-\xfe.wav")
    audio, rate = read_audio(odd)
    write_wav(wav, audio, rate)
    assert sf.info(os.fsencode(wav)).frames == audio.shape[1]


def _ogg_flac(tmp_path: Path, name: str, **tags: str) -> tuple[Path, int]:
    """A 2 s FLAC-in-Ogg file with these comments, and its length in frames."""
    import subprocess

    import imageio_ffmpeg
    from mutagen.oggflac import OggFLAC

    wav, path = tmp_path / f"{name}.wav", tmp_path / f"{name}.ogg"
    sf.write(wav, music_like(2.0, 44100).T, 44100)
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(wav), "-c:a", "flac"]
    subprocess.run([*ffmpeg, "-f", "ogg", str(path)], check=True)
    tagged = OggFLAC(path)
    for key, value in tags.items():
        tagged[key] = value
    tagged.save()
    return path, sf.info(str(wav)).frames


def test_loopstart_alone_loops_to_the_end_of_a_file_libsndfile_cannot_size(
    tmp_path: Path,
) -> None:
    """An Ogg FLAC's length was asked of libsndfile, which cannot read it: a traceback."""
    path, frames = _ogg_flac(tmp_path, "flac", LOOPSTART="1000")
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code in (0, 1), result.output
    (report,) = json.loads(result.stdout)
    assert (report["metrics"]["loop_start"], report["metrics"]["loop_length"]) == (
        1000,
        frames - 1000,
    )


@pytest.mark.parametrize(
    ("tags", "said"),
    [
        ({"LOOPSTART": "\u0663"}, "LOOPSTART='\u0663' is not a whole number of frames"),
        ({"LOOPSTART": "0", "LOOPLENGTH": "1_000"}, "LOOPLENGTH='1_000' is not a whole number"),
        ({"LOOPSTART": "0", "LOOPLENGTH": "9" * 5000}, f"LOOPLENGTH='{'9' * 24}...' is not"),
        ({"LOOPLENGTH": "1000"}, "LOOPLENGTH without LOOPSTART: a loop needs its start"),
    ],
)
def test_loop_tags_that_are_no_frame_count_exit_2_in_one_line(
    tmp_path: Path, tags: dict[str, str], said: str
) -> None:
    path, _ = _ogg_flac(tmp_path, "tagged", **tags)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert said in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
