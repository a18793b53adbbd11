"""Audio I/O: libsndfile first, ffmpeg for the rest; ffmpeg errors carry its stderr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundtrack.audio import decode_with_ffmpeg, read_audio, run_ffmpeg, write_wav
from soundtrack.errors import AudioError
from tests import signals


def test_float_wav_round_trip(tmp_path: Path) -> None:
    audio = signals.pink_noise(-20.0, 1.0, 32000)
    write_wav(tmp_path / "a.wav", audio, 32000)
    for read in (read_audio, decode_with_ffmpeg):
        decoded, rate = read(tmp_path / "a.wav")
        assert rate == 32000
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, audio)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temporary file left


def test_formats_libsndfile_lacks_are_decoded_by_ffmpeg(tmp_path: Path) -> None:
    wav, m4a = tmp_path / "a.wav", tmp_path / "a.m4a"
    write_wav(wav, signals.sine(440.0, -12.0, 2.0, 48000), 48000)
    run_ffmpeg(["-i", str(wav), "-c:a", "aac", str(m4a)])
    audio, rate = read_audio(m4a)
    assert rate == 48000
    assert audio.shape[0] == 2
    assert audio.shape[1] / rate == pytest.approx(2.0, abs=0.05)
    assert 20 * np.log10(np.abs(audio).max()) == pytest.approx(-12.0, abs=0.5)


def test_an_mp3_without_a_lame_header_is_read_to_its_end(tmp_path: Path) -> None:
    """ffmpeg writing to a pipe cannot go back for the LAME header; libsndfile then reads a
    20 s file as a fraction of it, with no error."""
    mp3 = tmp_path / "piped.mp3"
    signals.headerless_mp3(mp3, 20.0, 44100)
    audio, rate = read_audio(mp3)
    # Without the header nothing says how much of the start is the coder's delay: it stays in.
    assert rate == 44100 and 20.0 <= audio.shape[1] / rate <= 20.1
    assert 20 * np.log10(np.sqrt(np.mean(audio[:, 4 * 44100 : -44100] ** 2))) == pytest.approx(
        -20.0, abs=1.0
    )


def test_a_file_named_like_an_ffmpeg_protocol_is_read_as_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inspect 'concat:a.mp3|a.mp3'` measured a.mp3 played twice: ffmpeg read the relative
    name as its concat protocol, not as the file."""
    wav, mp3 = tmp_path / "a.wav", tmp_path / "a.mp3"
    write_wav(wav, signals.sine(440.0, -12.0, 2.0, 48000), 48000)
    run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", str(mp3)])
    named = tmp_path / "concat:a.mp3|a.mp3"
    named.write_bytes(mp3.read_bytes())
    monkeypatch.chdir(tmp_path)
    audio, rate = read_audio(Path(named.name))
    assert audio.shape[1] / rate == pytest.approx(2.0, abs=0.05)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "missing.ogg")
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    with pytest.raises(AudioError, match=r"a link to nothing \(or a loop of links\)"):
        read_audio(tmp_path / "loop.wav")
    (tmp_path / "loop.wav").unlink()
    (tmp_path / "junk.ogg").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=r"junk\.ogg"):
        read_audio(tmp_path / "junk.ogg")
    with pytest.raises(AudioError, match="shaped"):
        write_wav(tmp_path / "x.wav", np.zeros(10, np.float32), 44100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.ogg"]
