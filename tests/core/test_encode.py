"""Encoding: exact decoded lengths and rates, tags read back, all-or-nothing atomic writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.id3 import ID3
from mutagen.oggvorbis import OggVorbis

from soundtrack.audio import decode_with_ffmpeg
from soundtrack.encode import _crc16, encode
from soundtrack.errors import AudioError, InputError
from soundtrack.master import Master
from tests import signals
from tests.reference import sha256_of

TAGS = {"title": "Boss Fight", "soundtrack": "sky-odyssey", "track_id": "boss", "spec_hash": "9f3e"}


def _master(frames: int = 44100 * 3 + 17, sample_rate: int = 44100) -> Master:
    audio = signals.music_like(frames / sample_rate, sample_rate, peak_dbfs=-6.0)[:, :frames]
    return Master(
        audio=audio,
        sample_rate=sample_rate,
        loop_start=None,
        loop_length=None,
        input_lufs=-20.0,
        gain_db=0.0,
        limiter_reduction_db=0.0,
    )


def test_decoded_files_have_the_masters_length_and_rate(tmp_path: Path) -> None:
    m = _master()
    files = encode(m, ["ogg", "mp3", "wav"], tmp_path, "boss", tags=TAGS, wav_bit_depth=24)
    assert [f.format for f in files] == ["ogg", "mp3", "wav"]
    for f in files:
        assert f.path == tmp_path / f"boss.{f.format}"
        assert f.bytes == f.path.stat().st_size
        assert f.sha256 == sha256_of(f.path)
        decoded, rate = decode_with_ffmpeg(f.path)
        assert rate == 44100
        assert decoded.shape == m.audio.shape, f.format  # MP3: the LAME header trims the delay
    assert sf.info(str(tmp_path / "boss.wav")).subtype == "PCM_24"
    assert sf.info(str(tmp_path / "boss.ogg")).frames == m.audio.shape[1]
    wav, _ = sf.read(tmp_path / "boss.wav", always_2d=True)
    np.testing.assert_allclose(wav.T, m.audio, atol=2.0**-22)


def test_lossy_files_are_encoded_at_the_documented_quality(tmp_path: Path) -> None:
    """Vorbis q6 and LAME -V2, about 190 kb/s: the OGG's header names q6's nominal rate; the
    MP3 is read from its size and length on noise (-V1 204 kb/s, -V2 181, -V3 167)."""
    noise = signals.pink_noise(-20.0, 10.0, 44100, channels=2)
    m = Master(noise, 44100, None, None, input_lufs=-20.0, gain_db=0.0, limiter_reduction_db=0.0)
    ogg, mp3 = encode(m, ["ogg", "mp3"], tmp_path, "noise", tags=TAGS)
    assert OggVorbis(ogg.path).info.bitrate == 192_000  # q5 160 000, q7 224 000
    decoded, rate = decode_with_ffmpeg(mp3.path)
    kbps = mp3.path.stat().st_size * 8 / (decoded.shape[1] / rate) / 1000
    assert 172 <= kbps <= 195, kbps


@pytest.mark.parametrize(
    ("seconds", "sample_rate", "channels", "tone"),
    [
        (3.0, 32000, 1, True),
        (0.5, 22050, 1, False),
        (0.01, 44100, 2, False),
        (20.0, 44100, 2, False),
    ],
)
def test_an_ogg_decodes_to_the_masters_length_in_ffmpeg_however_short(
    tmp_path: Path, seconds: float, sample_rate: int, channels: int, tone: bool
) -> None:
    """A track whose audio fit one Ogg page (a sting, a quiet loop) decoded in ffmpeg, and the
    players built on it, up to 256 samples long or short: 3 s of a mono tone lost 128."""
    frames = round(seconds * sample_rate)
    if tone:
        audio = signals.sine(220.0, -10.0, seconds, sample_rate, channels=channels)
    else:
        noise = 0.1 * np.random.default_rng(3).standard_normal((channels, frames))
        audio = noise.astype(np.float32)
    m = dataclasses.replace(_master(), audio=audio, sample_rate=sample_rate)
    (ogg,) = encode(m, ["ogg"], tmp_path, "sting", tags=TAGS, wav_bit_depth=16)
    decoded, _ = decode_with_ffmpeg(ogg.path)
    assert decoded.shape == (channels, frames)
    ours, _ = sf.read(ogg.path, always_2d=True, dtype="float32")  # libvorbis too
    assert ours.shape == (frames, channels)
    np.testing.assert_allclose(decoded, ours.T, atol=1e-4)


@pytest.mark.parametrize(
    ("sample_rate", "channels"),
    [(8000, 1), (22050, 2), (24000, 1), (44100, 1), (44100, 2), (48000, 2)],
)
@pytest.mark.parametrize("last_frame", [0, 5, 46, 47, 600])
def test_an_mp3_decodes_to_the_masters_length_and_audio_whatever_its_layout(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample_rate: int,
    channels: int,
    last_frame: int,
) -> None:
    """ffmpeg's muxer wrote at most 1152 + 529 samples of end padding: a length leaving 1-46
    samples in the last frame decoded up to 46 samples long. The first rewrite of the padding
    put the tag's CRC at MPEG-1 stereo's offset, inside the first audio frame of a mono or
    24 kHz file: peaks of +45 dBTP."""
    m = _master(1152 * 20 + last_frame, sample_rate)
    m = dataclasses.replace(m, audio=m.audio[:channels])
    (mp3,) = encode(m, ["mp3"], tmp_path, "boss", tags=TAGS, wav_bit_depth=16)
    decoded, _ = decode_with_ffmpeg(mp3.path)
    assert decoded.shape == m.audio.shape
    assert sf.info(str(mp3.path)).frames == m.audio.shape[1]  # libsndfile's mpg123 too
    assert np.abs(decoded - m.audio).max() < 0.1, "the audio is the master's"
    # Against what ffmpeg wrote: only the padding and the tag's CRC differ. The CRC covers the
    # frame up to it, as LAME writes it; ffmpeg's own covers 190 bytes whatever the layout,
    # which is that only in MPEG-1 stereo (the tag 36 bytes in).
    monkeypatch.setattr("soundtrack.encode._set_end_padding", lambda path, frames: None)
    (original,) = encode(m, ["mp3"], tmp_path / "ffmpeg", "boss", tags=TAGS, wav_bit_depth=16)
    ours, theirs = mp3.path.read_bytes(), original.path.read_bytes()
    assert len(ours) == len(theirs)
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    info = ours.find(b"Info") if b"Info" in ours[:4096] else ours.find(b"Xing")
    frame = ours.rfind(b"\xff", 0, info)  # the tag's frame, after the ID3 tag mutagen adds
    assert set(differ) <= {*range(info + 141, info + 144), info + 154, info + 155}
    assert _crc16(ours[frame : info + 154]) == int.from_bytes(ours[info + 154 : info + 156])
    if info - frame == 36:
        crc = _crc16(theirs[frame : info + 154])
        assert crc == int.from_bytes(theirs[info + 154 : info + 156])


def test_every_file_is_tagged(tmp_path: Path) -> None:
    files = {
        f.format: f.path for f in encode(_master(), ["ogg", "mp3", "wav"], tmp_path, "b", tags=TAGS)
    }
    ogg = OggVorbis(files["ogg"]).tags
    assert ogg is not None
    assert ogg["TITLE"] == ["Boss Fight"]
    assert ogg["ALBUM"] == ["sky-odyssey"]
    assert ogg["SOUNDTRACK_TRACK_ID"] == ["boss"]
    assert ogg["SOUNDTRACK_SPEC_HASH"] == ["9f3e"]
    assert "LOOPSTART" not in ogg  # not a loop
    id3 = ID3(files["mp3"])
    assert id3["TIT2"].text == ["Boss Fight"]
    assert id3["TALB"].text == ["sky-odyssey"]
    assert id3["TXXX:SOUNDTRACK_TRACK_ID"].text == ["boss"]
    assert id3["TXXX:SOUNDTRACK_SPEC_HASH"].text == ["9f3e"]
    with sf.SoundFile(files["wav"]) as wav:
        assert wav.title == "Boss Fight"
        assert wav.album == "sky-odyssey"
        assert "SOUNDTRACK_SPEC_HASH=9f3e" in wav.comment


def test_encoding_is_reproducible(tmp_path: Path) -> None:
    first = encode(_master(), ["ogg", "mp3"], tmp_path / "a", "b", tags=TAGS)
    second = encode(_master(), ["ogg", "mp3"], tmp_path / "b", "b", tags=TAGS)
    assert [f.sha256 for f in first] == [f.sha256 for f in second]


def test_a_failing_encoder_leaves_no_file(tmp_path: Path) -> None:
    # libvorbis refuses 1 MHz audio after the WAV was written: neither file may appear, and an
    # earlier file of the same name stays as it was.
    (tmp_path / "b.wav").write_bytes(b"previous build")
    with pytest.raises(AudioError, match="libvorbis"):
        encode(_master(sample_rate=1_000_000), ["wav", "ogg"], tmp_path, "b", tags=TAGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.wav"]
    assert (tmp_path / "b.wav").read_bytes() == b"previous build"


@pytest.mark.parametrize(
    ("formats", "tags", "depth", "message"),
    [
        (["flac"], TAGS, 16, "unknown formats"),
        (["ogg", "ogg"], TAGS, 16, "repeat"),
        ([], TAGS, 16, "formats is empty"),
        (["ogg"], {"title": "x"}, 16, "tags must have exactly"),
        (["wav"], TAGS, 8, "wav_bit_depth"),
    ],
)
def test_bad_requests_are_refused(
    tmp_path: Path, formats: list[str], tags: dict[str, str], depth: int, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        encode(_master(), formats, tmp_path, "b", tags=tags, wav_bit_depth=depth)
    assert list(tmp_path.iterdir()) == []


def test_stem_must_be_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="stem"):
        encode(_master(), ["ogg"], tmp_path, "../escape", tags=TAGS)
