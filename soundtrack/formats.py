"""The output formats, in one registry: each file extension, the codec inside and the
Content-Type it is served with (docs/formats.md).

The manifest's `formats` names them, `encode` writes them, storage serves them with their
content type, and raw renders handed between machines travel as `wav`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from soundtrack.errors import InputError

AudioFormat = Literal["ogg", "mp3", "wav"]


@dataclass(frozen=True)
class OutputFormat:
    """One delivery format."""

    ext: str  # file extension without the dot; also the name a manifest's `formats` uses
    # The audio codec as ffmpeg names the stream (for WAV the PCM family: pcm_s16le, pcm_s24le
    # and, for raw renders, pcm_f32le).
    codec: str
    content_type: str  # HTTP Content-Type, sent to S3 with every upload
    loop_points: bool  # carries a loop's points (OGG comments, the WAV smpl chunk); MP3 none


# Keyed by every AudioFormat, no other (tests/core/test_formats.py holds them together).
FORMATS: dict[str, OutputFormat] = {
    "ogg": OutputFormat("ogg", "vorbis", "audio/ogg", loop_points=True),
    "mp3": OutputFormat("mp3", "mp3", "audio/mpeg", loop_points=False),
    "wav": OutputFormat("wav", "pcm", "audio/wav", loop_points=True),
}


def output_format(ext: str) -> OutputFormat:
    """The registry's entry for `ext`; InputError naming the known formats for any other."""
    try:
        return FORMATS[ext]
    except KeyError:
        raise InputError(
            f"unknown format {ext!r}: known are {', '.join(sorted(FORMATS))}"
        ) from None


def content_type_for(ext: str) -> str:
    """The Content-Type an encoded file of this format is served with."""
    return output_format(ext).content_type


# A variation renders from its parent's best file: lossless when there is one.
PARENT_FORMATS = ("wav", "flac", "ogg", "mp3")


def parent_format(formats: Sequence[str]) -> str | None:
    """Of a track's formats, the one its variations render from; None when none will do."""
    return next((fmt for fmt in PARENT_FORMATS if fmt in formats), None)
