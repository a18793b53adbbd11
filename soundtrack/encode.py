"""Delivery formats: OGG Vorbis, MP3 and WAV with tags and loop points (see docs/formats.md).

Tag names: OGG Vorbis comments TITLE, ALBUM (the soundtrack), SOUNDTRACK_TRACK_ID,
SOUNDTRACK_SPEC_HASH, and for loops LOOPSTART and LOOPLENGTH (samples at the file's rate, as
RPG Maker and SDL_mixer read them). MP3: ID3v2.4 TIT2, TALB and TXXX frames SOUNDTRACK_TRACK_ID
and SOUNDTRACK_SPEC_HASH; no loop points (MP3 cannot loop sample-exactly). WAV: LIST/INFO
INAM, IPRD and ICMT ("SOUNDTRACK_TRACK_ID=...; SOUNDTRACK_SPEC_HASH=..."), and a `smpl` chunk
with one forward loop for loops.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from mutagen.id3 import ID3, TALB, TIT2, TXXX
from mutagen.ogg import OggPage
from mutagen.oggvorbis import OggVorbis

from soundtrack.atomic import atomic_path
from soundtrack.audio import run_ffmpeg
from soundtrack.errors import AudioError, InputError
from soundtrack.formats import FORMATS
from soundtrack.master import Master

OGG_QUALITY = 6  # libvorbis quality (oggenc -q), about 192 kb/s for stereo music
MP3_VBR_QUALITY = 2  # LAME -V2, about 190 kb/s
WAV_BIT_DEPTHS = {16: "PCM_16", 24: "PCM_24"}
# libsndfile puts each write on the stack: one write of a whole track overflows it (2M frames
# crash an 8 MiB stack), so blocks of 32768 frames; bigger than that buys nothing, and each block
# takes the GIL once.
_OGG_BLOCK_FRAMES = 32768
# libvorbis's rate range; libsndfile crashes the process (no error) on rates outside it.
VORBIS_RATES_HZ = (8000, 192000)
REQUIRED_TAGS = ("title", "soundtrack", "track_id", "spec_hash")
_VORBIS_NAMES = {
    "title": "TITLE",
    "soundtrack": "ALBUM",
    "track_id": "SOUNDTRACK_TRACK_ID",
    "spec_hash": "SOUNDTRACK_SPEC_HASH",
}


@dataclass(frozen=True)
class EncodedFile:
    """One written delivery file and its checksum."""

    format: str  # "ogg" | "mp3" | "wav"
    path: Path
    sha256: str
    bytes: int
    # Of the file a track's variations render from: its decoded samples' sha256, which their
    # keys hold (its tags change with the spec, and its bytes with them).
    audio_sha256: str | None = None


def encode(
    m: Master,
    formats: Sequence[str],
    out_dir: Path,
    stem: str,
    *,
    tags: Mapping[str, str],
    wav_bit_depth: int = 16,
) -> list[EncodedFile]:
    """Write <out_dir>/<stem>.<ext> for each format; all files appear together (temporary names,
    then os.replace) or, if any encoder fails, none does and the partial files are removed."""
    _check_request(formats, stem, tags, wav_bit_depth)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[EncodedFile] = []
    with contextlib.ExitStack() as renames:
        for fmt in formats:
            final = out_dir / f"{stem}.{fmt}"
            tmp = renames.enter_context(atomic_path(final))
            _WRITERS[fmt](m, tmp, tags, wav_bit_depth)
            with tmp.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            written.append(EncodedFile(fmt, final, digest, tmp.stat().st_size))
    return written


def _check_request(
    formats: Sequence[str], stem: str, tags: Mapping[str, str], wav_bit_depth: int
) -> None:
    if not formats:
        raise InputError("formats is empty: name at least one of ogg, mp3, wav")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"unknown formats {unknown}: allowed are {sorted(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise InputError(f"formats repeat a format: {list(formats)}")
    if not stem or stem in (".", "..") or Path(stem).name != stem:
        raise InputError(f"stem must be a plain file name, got {stem!r}")
    if sorted(tags) != sorted(REQUIRED_TAGS):
        raise InputError(
            f"tags must have exactly the keys {list(REQUIRED_TAGS)}, got {sorted(tags)}"
        )
    if "wav" in formats and wav_bit_depth not in WAV_BIT_DEPTHS:
        raise InputError(
            f"wav_bit_depth must be one of {sorted(WAV_BIT_DEPTHS)}, got {wav_bit_depth}"
        )


def _ffmpeg_encode(m: Master, path: Path, codec_args: list[str]) -> None:
    """Feed the master to ffmpeg as raw float32, for it to write a seekable file (MP3 needs the
    seek to put its LAME/Xing header, with the gapless delay and padding, in the first frame).
    The samples go through an unlinked temporary file, not a pipe: Python feeds a pipe 4 KiB at
    a time, and each write waits its turn for the GIL while other threads measure."""
    channels, _ = m.audio.shape
    with tempfile.TemporaryFile() as pcm:
        np.ascontiguousarray(m.audio.T, dtype="<f4").tofile(pcm)
        pcm.seek(0)
        run_ffmpeg(
            [
                *("-f", "f32le", "-ar", str(m.sample_rate), "-ac", str(channels), "-i", "pipe:0"),
                *("-map_metadata", "-1", *codec_args),
                # bitexact: no version strings, so a rebuild is byte-identical
                *("-fflags", "+bitexact", "-flags:a", "+bitexact", "-y", str(path)),
            ],
            stdin=pcm,
        )


def _write_ogg(m: Master, path: Path, tags: Mapping[str, str], _: int) -> None:
    # libsndfile's libvorbis, in process: it encodes the same quality in about 0.6x the time of
    # ffmpeg's build (bench/postprocess.py) and lets other threads run meanwhile.
    channels, frames = m.audio.shape
    lowest, highest = VORBIS_RATES_HZ
    if not lowest <= m.sample_rate <= highest:
        raise AudioError(
            f"libvorbis encodes {lowest}-{highest} Hz, not {m.sample_rate} Hz: "
            f"cannot write {path.name}"
        )
    try:
        with sf.SoundFile(
            str(path),
            "w",
            m.sample_rate,
            channels,
            format="OGG",
            subtype="VORBIS",
            compression_level=1.0 - OGG_QUALITY / 10.0,  # libsndfile's level is 1 - quality
        ) as ogg:
            for start in range(0, frames, _OGG_BLOCK_FRAMES):
                ogg.write(m.audio[:, start : start + _OGG_BLOCK_FRAMES].T)
    except sf.SoundFileError as exc:
        raise AudioError(f"libvorbis (libsndfile) could not encode {path.name}: {exc}") from exc
    _fix_ogg_pages(path)
    ogg_file = OggVorbis(path)
    if ogg_file.tags is None:
        raise AudioError(f"libsndfile wrote an OGG without a comment header: {path}")
    ogg_file.tags.clear()
    for key, name in _VORBIS_NAMES.items():
        ogg_file.tags[name] = [tags[key]]
    if m.loop_start is not None and m.loop_length is not None:
        ogg_file.tags["LOOPSTART"] = [str(m.loop_start)]
        ogg_file.tags["LOOPLENGTH"] = [str(m.loop_length)]
    ogg_file.save()


def _fix_ogg_pages(path: Path) -> None:
    """Give every page the stream serial 0: libsndfile picks a random one, which would make
    each rebuild of the same master a different file (and a different sha256). And split a
    lone audio page after its first packet (see _split_lone_audio_page)."""
    pages = []
    with path.open("rb") as f:
        while True:
            try:
                page = OggPage(f)
            except EOFError:
                break
            page.serial = 0
            pages.append(page)
    path.write_bytes(b"".join(page.write() for page in _split_lone_audio_page(pages)))


def _split_lone_audio_page(pages: list[OggPage]) -> list[OggPage]:
    """A short track's audio fits one page, both first and last; ffmpeg (and the browsers and
    players built on it) then trims it as a stream's start, not its end, and decodes it up to
    256 samples long or short. Its first packet alone on a page of granule 0 (Vorbis' first
    audio packet yields no samples) leaves the end to the last page, and every decoder exact."""
    # Packets ended by each page (its last one may go on over the next page); the audio
    # starts on a fresh page after three: identification, comment, setup.
    ended = itertools.accumulate(len(page.packets) - (not page.complete) for page in pages)
    headers = next((i + 1 for i, n in enumerate(ended) if n >= 3), len(pages))
    audio = pages[headers:]
    if len(audio) != 1 or len(audio[0].packets) < 2 or audio[0].continued:
        return pages
    lone = audio[0]
    first, rest = OggPage(), OggPage()
    first.serial = rest.serial = lone.serial
    first.sequence, rest.sequence = lone.sequence, lone.sequence + 1
    first.packets, rest.packets = lone.packets[:1], lone.packets[1:]
    first.position, rest.position = 0, lone.position
    rest.complete, rest.last = lone.complete, lone.last
    return [*pages[:headers], first, rest]


def _write_mp3(m: Master, path: Path, tags: Mapping[str, str], _: int) -> None:
    codec = ["-c:a", "libmp3lame", "-q:a", str(MP3_VBR_QUALITY), "-id3v2_version", "0"]
    _ffmpeg_encode(m, path, [*codec, "-f", "mp3"])
    _set_end_padding(path, m.audio.shape[1])
    id3 = ID3()
    id3.add(TIT2(encoding=3, text=[tags["title"]]))
    id3.add(TALB(encoding=3, text=[tags["soundtrack"]]))
    id3.add(TXXX(encoding=3, desc="SOUNDTRACK_TRACK_ID", text=[tags["track_id"]]))
    id3.add(TXXX(encoding=3, desc="SOUNDTRACK_SPEC_HASH", text=[tags["spec_hash"]]))
    id3.save(path)


def _set_end_padding(path: Path, frames: int) -> None:
    """Write the gapless end padding that makes the MP3 decode to exactly `frames` samples
    into its LAME tag, and the tag's CRC. ffmpeg's muxer takes the padding from its encoder's
    last packet alone, at most 1152 + 529 samples: a track whose length leaves 1-46 samples in
    its last frame needs more, and decoded up to 46 samples long."""
    with path.open("r+b") as f:
        head = bytearray(f.read(256))
        # The tag follows the frame header and side information: 36 bytes in MPEG-1 stereo,
        # fewer in mono and at 24 kHz and below.
        info = max(head.find(b"Info", 0, 64), head.find(b"Xing", 0, 64))
        if head[0] != 0xFF or info < 0 or not head[info + 7] & 1:  # the frame count's flag
            raise AudioError(f"{path.name}: ffmpeg wrote no Info tag; its length is unknown")
        mpeg1 = (head[1] >> 3) & 3 == 3
        samples = int.from_bytes(head[info + 8 : info + 12], "big") * (1152 if mpeg1 else 576)
        delay = int.from_bytes(head[info + 141 : info + 144], "big") >> 12
        padding = samples - delay - frames
        if not 0 <= padding < 4096:
            raise AudioError(f"{path.name}: {padding} samples of end padding do not fit its tag")
        head[info + 141 : info + 144] = (delay << 12 | padding).to_bytes(3, "big")
        # The tag's CRC-16, its last field, covers the frame up to it.
        crc_at = info + 154
        f.seek(info + 141)
        f.write(head[info + 141 : info + 144])
        f.seek(crc_at)
        f.write(_crc16(head[:crc_at]).to_bytes(2, "big"))


def _crc16(data: bytes | bytearray) -> int:
    """CRC-16/ARC (reflected polynomial 0xA001, initial 0), as the LAME tag's CRC is computed."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _write_wav(m: Master, path: Path, tags: Mapping[str, str], wav_bit_depth: int) -> None:
    subtype = WAV_BIT_DEPTHS[wav_bit_depth]
    with sf.SoundFile(
        str(path), "w", m.sample_rate, m.audio.shape[0], subtype=subtype, format="WAV"
    ) as wav:
        wav.title = tags["title"]
        wav.album = tags["soundtrack"]
        wav.comment = (
            f"SOUNDTRACK_TRACK_ID={tags['track_id']}; SOUNDTRACK_SPEC_HASH={tags['spec_hash']}"
        )
        wav.write(m.audio.T)
    if m.loop_start is not None and m.loop_length is not None:
        _append_smpl_chunk(path, m.sample_rate, m.loop_start, m.loop_length)


def _append_smpl_chunk(path: Path, sample_rate: int, loop_start: int, loop_length: int) -> None:
    """Append a `smpl` chunk with one forward loop (end inclusive, as the chunk defines it) and
    fix the RIFF size; Unreal, Wwise and Godot's WAV importer read loops from it."""
    header = struct.pack(
        "<9I",
        0,  # manufacturer
        0,  # product
        round(1e9 / sample_rate),  # sample period in nanoseconds
        60,  # MIDI unity note (middle C: play at the recorded pitch)
        0,  # MIDI pitch fraction
        0,  # SMPTE format
        0,  # SMPTE offset
        1,  # number of sample loops
        0,  # sampler data bytes
    )
    loop = struct.pack("<6I", 0, 0, loop_start, loop_start + loop_length - 1, 0, 0)
    body = header + loop
    with path.open("r+b") as f:
        riff = f.read(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise AudioError(f"not a RIFF/WAVE file, cannot add a smpl chunk: {path}")
        f.seek(0, 2)
        if f.tell() % 2:
            f.write(b"\0")  # RIFF chunks start on even offsets
        f.write(b"smpl" + struct.pack("<I", len(body)) + body)
        riff_size = f.tell() - 8
        f.seek(4)
        f.write(struct.pack("<I", riff_size))


_WRITERS: dict[str, Callable[[Master, Path, Mapping[str, str], int], None]] = {
    "ogg": _write_ogg,
    "mp3": _write_mp3,
    "wav": _write_wav,
}
