"""The format registry: what the manifest accepts, what encode writes and what storage serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from soundtrack.audio import run_ffmpeg, write_wav
from soundtrack.encode import encode
from soundtrack.errors import InputError
from soundtrack.formats import FORMATS, AudioFormat, content_type_for, output_format
from soundtrack.master import Master
from tests import signals

TAGS = {"title": "Cue", "soundtrack": "sky-odyssey", "track_id": "cue", "spec_hash": "9f3e"}


def stream_codec(path: Path) -> str:
    """The codec of the first audio stream as ffmpeg, the independent decoder, names it."""
    found = re.search(r"Audio: (\w+)", run_ffmpeg(["-i", str(path), "-f", "null", "-"]))
    assert found, f"ffmpeg found no audio stream in {path}"
    return found.group(1)


def test_the_registry_holds_every_manifest_format_and_nothing_else() -> None:
    assert sorted(FORMATS) == sorted(get_args(AudioFormat)) == ["mp3", "ogg", "wav"]
    assert all(fmt.ext == ext for ext, fmt in FORMATS.items())
    assert {ext: content_type_for(ext) for ext in FORMATS} == {
        "ogg": "audio/ogg",
        "mp3": "audio/mpeg",
        "wav": "audio/wav",
    }


@pytest.mark.parametrize("ext", ["flac", "OGG", ".ogg", ""])
def test_an_unknown_format_is_refused_naming_the_known_ones(ext: str) -> None:
    with pytest.raises(InputError, match=f"unknown format {re.escape(repr(ext))}: known are mp3"):
        output_format(ext)


def test_encoded_files_and_renders_carry_the_registrys_codec(tmp_path: Path) -> None:
    audio = signals.music_like(1.0, 44100, peak_dbfs=-6.0)
    m = Master(
        audio=audio,
        sample_rate=44100,
        loop_start=None,
        loop_length=None,
        input_lufs=-20.0,
        gain_db=0.0,
        limiter_reduction_db=0.0,
    )
    for file in encode(m, list(FORMATS), tmp_path, "cue", tags=TAGS, wav_bit_depth=24):
        assert stream_codec(file.path).startswith(FORMATS[file.format].codec), file.format
    # A raw render is a float WAV: the same `wav` entry, its codec pcm_f32le.
    write_wav(tmp_path / "render.wav", np.zeros((1, 1000), np.float32), 32000)
    assert stream_codec(tmp_path / "render.wav") == "pcm_f32le"
    assert stream_codec(tmp_path / "render.wav").startswith(FORMATS["wav"].codec)
