"""Audio I/O: libsndfile first, ffmpeg for the rest; ffmpeg errors carry its stderr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundtrack.audio import decode_with_ffmpeg, ffmpeg_exe, read_audio, run_ffmpeg, write_wav
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


@pytest.mark.parametrize(("subtype", "ext"), [("PCM_16", "WAV"), ("FLOAT", "WAVEX")])
def test_a_wav_cut_short_is_refused_and_one_of_unknown_length_read_whole(
    tmp_path: Path, subtype: str, ext: str
) -> None:
    """libsndfile read what a cut WAV held without a word: a 3 s take of a 10 s recording was
    measured, approved and published."""
    audio = signals.pink_noise(-20.0, 10.0, 48000)
    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    sf.write(whole, audio.T, 48000, subtype=subtype, format=ext)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(AudioError, match=r"cut\.wav is cut short: its header promises \d+ bytes"):
        read_audio(cut)
    # ffmpeg writing to a pipe cannot go back to write the size: it leaves 0xFFFFFFFF.
    piped = tmp_path / "piped.wav"
    with piped.open("wb") as out:
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", str(whole), "-f", "wav", "-"],
            stdout=out,
            check=True,
        )
    assert read_audio(piped)[0].shape == audio.shape
    # arecord and SoX leave other sizes they could not know: read whole too.
    data = bytearray(piped.read_bytes())
    at = data.index(b"data") + 4
    for placeholder in (0x7FFFFFFF, 0x7FFFF000):
        data[at : at + 4] = placeholder.to_bytes(4, "little")
        piped.write_bytes(bytes(data))
        assert read_audio(piped)[0].shape == audio.shape


@pytest.mark.parametrize("kept", [1 / 3, 1 / 2, 0.9])
def test_a_flac_cut_short_is_refused_and_one_of_unknown_length_read_whole(
    tmp_path: Path, kept: float
) -> None:
    """A FLAC cut off in a copy decoded what was left and was measured as a shorter take; one
    written to a pipe (its header says no length) raised a traceback."""
    audio = signals.pink_noise(-20.0, 5.0, 48000)
    whole, cut, piped = tmp_path / "whole.flac", tmp_path / "cut.flac", tmp_path / "piped.flac"
    sf.write(whole, audio.T, 48000, subtype="PCM_24")
    cut.write_bytes(whole.read_bytes()[: round(whole.stat().st_size * kept)])
    with pytest.raises(AudioError, match=r"cut\.flac is cut short: its header promises 240000 "):
        read_audio(cut)
    with piped.open("wb") as out:
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", str(whole), "-f", "flac", "-"],
            stdout=out,
            check=True,
        )
    assert sf.info(piped).frames > audio.shape[1]  # libsndfile's "unknown"
    decoded, rate = read_audio(piped)
    assert rate == 48000 and decoded.shape == audio.shape
    np.testing.assert_allclose(decoded, audio, atol=1e-6)


@pytest.mark.parametrize(
    ("codec", "ext"),
    [
        (["-c:a", "libvorbis", "-q:a", "4"], "ogg"),
        (["-c:a", "flac"], "oga"),  # FLAC in Ogg
        (["-c:a", "libmp3lame", "-b:a", "128k"], "mp3"),  # an Info header (CBR)
        (["-c:a", "libmp3lame", "-q:a", "2"], "mp3"),  # a Xing header (VBR)
    ],
    ids=["vorbis", "flac in ogg", "cbr mp3", "vbr mp3"],
)
@pytest.mark.parametrize("kept", [0.3, 0.9])
def test_an_ogg_or_mp3_cut_short_is_refused(
    tmp_path: Path, codec: list[str], ext: str, kept: float
) -> None:
    """A half-copied MP3 or OGG decoded what was left without an error and was measured as a
    shorter take (0.99 s of a 2 s MP3, exit 1 from inspect, not 2)."""
    source, whole = tmp_path / "source.wav", tmp_path / f"whole.{ext}"
    write_wav(source, signals.pink_noise(-20.0, 5.0, 44100), 44100)
    run_ffmpeg(["-i", str(source), *codec, str(whole)])
    assert read_audio(whole)[0].shape[1] == pytest.approx(5.0 * 44100, abs=1200)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(whole.read_bytes()[: round(whole.stat().st_size * kept)])
    with pytest.raises(AudioError, match=rf"cut\.{ext} is cut short: .* \(an interrupted copy\?\)"):
        read_audio(cut)


def test_an_ogg_cut_between_pages_is_refused_and_one_with_bytes_after_its_end_read(
    tmp_path: Path,
) -> None:
    """Cut where a page ends, an Ogg file reads cleanly to that page: only its last page's
    end-of-stream flag is missing."""
    source, whole, cut = tmp_path / "source.wav", tmp_path / "whole.ogg", tmp_path / "cut.ogg"
    write_wav(source, signals.pink_noise(-20.0, 5.0, 44100), 44100)
    run_ffmpeg(["-i", str(source), "-c:a", "libvorbis", str(whole)])
    data = whole.read_bytes()
    cut.write_bytes(data[: data.index(b"OggS", len(data) // 2)])
    assert sf.info(cut).duration < 4.0  # libsndfile reads it without a word
    with pytest.raises(AudioError, match=r"cut\.ogg is cut short: it ends before its stream"):
        read_audio(cut)
    # Bytes after the last page (a tag some tools append, with a picture in it) leave a whole
    # file whole.
    tagged = tmp_path / "tagged.ogg"
    for tag in (b"TAG" + bytes(125), b"APETAGEX" + bytes(100_000)):
        tagged.write_bytes(data + tag)
        assert read_audio(tagged)[0].shape == read_audio(whole)[0].shape
    cut.write_bytes(data[: data.index(b"OggS", len(data) // 2) + 100])
    with pytest.raises(AudioError, match=r"cut\.ogg is cut short: it ends inside a page"):
        read_audio(cut)


def test_an_mp3_without_a_lame_header_is_read_to_its_end(tmp_path: Path) -> None:
    """ffmpeg writing to a pipe cannot go back for the LAME header; libsndfile then reads a
    20 s file as a fraction of it, with no error."""
    mp3 = tmp_path / "piped.mp3"
    signals.headerless_mp3(mp3, 20.0, 44100)
    audio, rate = read_audio(mp3)
    # Without the header nothing says how much of the start is the coder's delay: it stays in.
    assert rate == 44100 and 20.0 <= audio.shape[1] / rate <= 20.1
    # Nothing says how long it should be, so a cut one is read as what is left.
    mp3.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    assert 9.0 <= read_audio(mp3)[0].shape[1] / rate <= 12.0
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
    # A video with no sound: ffmpeg's last line ("Error opening output files") says nothing.
    film = ["-f", "lavfi", "-i", "testsrc=size=32x32:duration=1", "-c:v", "mpeg4"]
    run_ffmpeg([*film, str(tmp_path / "silent-film.mp4")])
    with pytest.raises(AudioError, match=r"silent-film\.mp4: no audio stream in it$"):
        read_audio(tmp_path / "silent-film.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.ogg", "silent-film.mp4"]
