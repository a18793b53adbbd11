"""Musical keys: parse a user's spelling ("F# minor", "B-flat major"), name an estimated key,
and relate two keys (same, relative, transposed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["major", "minor"]

_LETTERS = "CDEFGAB"
_NATURAL_PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTAL_STEP = {"": 0, "#": 1, "b": -1}
# The spellings with the fewest accidentals in the key signature (Db major over C# major, C#
# minor over Db minor); F#/Gb major and Eb/D# minor tie, and the commoner one is taken.
_MAJOR_SPELLING = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_SPELLING = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


# Spelt without flags so JSON Schema's regexes (the manifest's `key` pattern) read it too. A
# lower-case "b" alone is a flat ("Bb", "bb"); an upper-case one is not ("BB minor"). Spaces
# are named: Python's `\s` also takes C0 separators and NEL, and an editor's (JavaScript) a BOM;
# both take a tab and Unicode's spaces (no-break, thin, ideographic...), and so does a key.
_SPACES = " \t\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
_SPACE = rf"[{_SPACES}]"
_ACCIDENTAL = (
    rf"{_SPACE}*[#♯♭]|b|[-{_SPACES}]*{_any_case('sharp')}|[-{_SPACES}]*{_any_case('flat')}"
)
_MODE = "|".join(_any_case(mode) for mode in ("major", "minor", "maj", "min"))
KEY_PATTERN = rf"^{_SPACE}*[A-Ga-g](?:{_ACCIDENTAL})?{_SPACE}*(?:{_MODE}){_SPACE}*$"
_KEY = re.compile(rf"(?P<letter>[A-Ga-g])(?P<accidental>{_ACCIDENTAL})?{_SPACE}*(?P<mode>{_MODE})")
_NOTE = re.compile(rf"[A-Ga-g](?:{_ACCIDENTAL})?")
_ACCEPTED = (
    "write a note A-G, an optional sharp or flat (F#, F sharp, Bb, B-flat) and major or minor"
)


@dataclass(frozen=True)
class Key:
    """A key: its tonic's pitch class (C=0 .. B=11), its mode, and its spelling, which is
    left out of comparisons (Db major == C# major)."""

    tonic: int
    mode: Mode
    name: str = field(compare=False)


def parse_key(text: str) -> Key:
    """The key `text` names, keeping its choice of sharp or flat ("C sharp minor" is "C# minor");
    raises ValueError naming what is wrong and what is accepted."""
    match = _KEY.fullmatch(text.strip(_SPACES))
    if match is None:
        raise ValueError(f"{text!r} is not a key: {_what_is_wrong(text)}; {_ACCEPTED}")
    letter = match["letter"].upper()
    accidental = _accidental(match["accidental"] or "")
    mode: Mode = "major" if match["mode"].lower().startswith("maj") else "minor"
    tonic = (_NATURAL_PITCH[letter] + _ACCIDENTAL_STEP[accidental]) % 12
    return Key(tonic, mode, f"{letter}{accidental} {mode}")


def conventional_key(tonic: int, mode: Mode) -> Key:
    """The key on pitch class `tonic`, spelt the usual way (Bb major, G# minor): for estimates."""
    pitch = tonic % 12
    spelling = _MAJOR_SPELLING if mode == "major" else _MINOR_SPELLING
    return Key(pitch, mode, f"{spelling[pitch]} {mode}")


def relative(key: Key) -> Key:
    """The relative key, sharing the key signature (A minor <-> C major, F# minor <-> A major)."""
    if key.mode == "minor":
        return _spelt(key, (key.tonic + 3) % 12, "major", letter_steps=2)
    return _spelt(key, (key.tonic - 3) % 12, "minor", letter_steps=-2)


def key_match(measured: Key, target: Key) -> Literal["same", "relative", "different"]:
    """Whether `measured` is `target`, its relative, or another key."""
    if measured == target:
        return "same"
    return "relative" if measured == relative(target) else "different"


def semitones_apart(a: Key, b: Key) -> int:
    """How far b's tonic lies from a's, in -5..+6 semitones (the mode is not compared)."""
    return (b.tonic - a.tonic + 5) % 12 - 5


def _accidental(spelling: str) -> str:
    lowered = spelling.lower().strip()
    if lowered.endswith("sharp") or lowered in ("#", "♯"):
        return "#"
    return "b" if spelling else ""


def _what_is_wrong(text: str) -> str:
    """The first thing in `text` that keeps it from being a key."""
    stripped = text.strip(_SPACES)
    if not stripped:
        return "it is empty"
    note = _NOTE.match(stripped)
    if note is None:
        return f"{re.split(_SPACE, stripped, maxsplit=1)[0]!r} is not a note A-G"
    rest = stripped[note.end() :].strip(_SPACES)
    if not rest:
        return "major or minor is missing"
    return f"{rest!r} after the note {note.group(0)!r} is not major or minor"


def _spelt(key: Key, tonic: int, mode: Mode, *, letter_steps: int) -> Key:
    """The key on `tonic` spelt with the letter `letter_steps` from `key`'s, so it keeps its
    sharps or flats (Bb minor -> Db major); the conventional spelling if that needs a double."""
    letter = _LETTERS[(_LETTERS.index(key.name[0]) + letter_steps) % 7]
    step = (tonic - _NATURAL_PITCH[letter] + 1) % 12 - 1
    accidental = {0: "", 1: "#", -1: "b"}.get(step)
    if accidental is None:
        return conventional_key(tonic, mode)
    return Key(tonic, mode, f"{letter}{accidental} {mode}")
