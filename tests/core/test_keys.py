"""Key names: every usual spelling parses to one normalised name, errors say what is accepted,
relative keys keep their sharps or flats, and estimated keys get the conventional spelling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from soundtrack.keys import (
    Key,
    Mode,
    conventional_key,
    key_match,
    parse_key,
    relative,
    semitones_apart,
)


@pytest.mark.parametrize(
    ("text", "tonic", "mode", "name"),
    [
        ("C major", 0, "major", "C major"),
        ("c MAJOR", 0, "major", "C major"),
        ("F# minor", 6, "minor", "F# minor"),
        ("F♯ minor", 6, "minor", "F# minor"),
        ("F sharp minor", 6, "minor", "F# minor"),
        ("F-sharp minor", 6, "minor", "F# minor"),
        ("Fsharp min", 6, "minor", "F# minor"),
        ("C sharp minor", 1, "minor", "C# minor"),
        ("Db major", 1, "major", "Db major"),
        ("D♭ maj", 1, "major", "Db major"),
        ("Bb major", 10, "major", "Bb major"),
        ("bb minor", 10, "minor", "Bb minor"),
        ("B-flat minor", 10, "minor", "Bb minor"),
        ("B flat Minor", 10, "minor", "Bb minor"),
        ("b minor", 11, "minor", "B minor"),
        ("Ebminor", 3, "minor", "Eb minor"),
        ("  a   minor  ", 9, "minor", "A minor"),
        ("Cb major", 11, "major", "Cb major"),
        ("E# minor", 5, "minor", "E# minor"),
        ("F#\u00a0minor", 6, "minor", "F# minor"),  # pasted from a web page
        ("F#\u3000minor", 6, "minor", "F# minor"),  # typed with an ideographic space
        ("B\u202fflat\u2009minor", 10, "minor", "Bb minor"),
        ("\tB-flat\tmajor", 10, "major", "Bb major"),
    ],
)
def test_spellings_parse_to_one_normalised_name(
    text: str, tonic: int, mode: str, name: str
) -> None:
    key = parse_key(text)
    assert (key.tonic, key.mode, key.name) == (tonic, mode, name)
    assert parse_key(key.name) == key  # the normalised name parses back to itself


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("H minor", "'H' is not a note A-G"),
        ("F#", "major or minor is missing"),
        ("Bb", "major or minor is missing"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("C dorian", "'dorian' after the note 'C' is not major or minor"),
        ("C major 7", "'major 7' after the note 'C' is not major or minor"),
        ("BB minor", "'B minor' after the note 'B' is not major or minor"),
        ("F## major", "'# major' after the note 'F#' is not major or minor"),
        ("minor", "'minor' is not a note A-G"),
        # Python's `\s` takes these as spaces and an editor's JavaScript does not, or the
        # other way round (a BOM): named, so the schema's pattern reads alike in both.
        ("C\x85major", "'\\x85major' after the note 'C' is not major or minor"),
        ("C major\x1f", "'major\\x1f' after the note 'C' is not major or minor"),
        ("\ufeffC major", "'\\ufeffC' is not a note A-G"),
        ("\x1c", "'\\x1c' is not a note A-G"),
    ],
)
def test_a_bad_key_names_the_problem_and_what_is_accepted(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_key(text)
    assert str(caught.value) == (
        f"{text!r} is not a key: {problem}; write a note A-G, an optional sharp or flat "
        "(F#, F sharp, Bb, B-flat) and major or minor"
    )


def test_enharmonic_spellings_are_the_same_key() -> None:
    assert parse_key("Db major") == parse_key("C# major")
    assert parse_key("Db major").name != parse_key("C# major").name
    assert parse_key("A minor") != parse_key("A major")
    assert len({parse_key("Gb major"), parse_key("F# major")}) == 1


@pytest.mark.parametrize(
    ("key", "its_relative"),
    [
        ("A minor", "C major"),
        ("C major", "A minor"),
        ("F# minor", "A major"),
        ("Bb minor", "Db major"),
        ("Db major", "Bb minor"),
        ("C# minor", "E major"),
        ("Eb major", "C minor"),
        ("F# major", "D# minor"),
        ("Gb major", "Eb minor"),
        ("G# minor", "B major"),
    ],
)
def test_relative_keys_share_the_signature_and_its_spelling(key: str, its_relative: str) -> None:
    assert relative(parse_key(key)).name == its_relative
    assert relative(relative(parse_key(key))).name == key


def test_relative_is_its_own_inverse_for_all_24_keys() -> None:
    modes: tuple[Mode, Mode] = ("major", "minor")
    for tonic in range(12):
        for mode in modes:
            key = conventional_key(tonic, mode)
            assert relative(relative(key)) == key
            assert relative(key).mode != key.mode
            assert semitones_apart(key, relative(key)) == (3 if mode == "minor" else -3)


def test_conventional_spellings_for_estimated_keys() -> None:
    major = [conventional_key(t, "major").name.split()[0] for t in range(12)]
    minor = [conventional_key(t, "minor").name.split()[0] for t in range(12)]
    assert major == ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
    assert minor == ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"]
    assert conventional_key(13, "major") == Key(1, "major", "Db major")


def test_key_match_same_relative_or_different() -> None:
    target = parse_key("A minor")
    assert key_match(parse_key("A minor"), target) == "same"
    assert key_match(parse_key("C major"), target) == "relative"
    assert key_match(parse_key("A major"), target) == "different"
    assert key_match(parse_key("E minor"), target) == "different"
    assert key_match(parse_key("C# major"), parse_key("Db major")) == "same"


def test_semitones_apart_is_signed_and_short() -> None:
    a_minor = parse_key("A minor")
    assert semitones_apart(a_minor, parse_key("B minor")) == 2
    assert semitones_apart(a_minor, parse_key("G minor")) == -2
    assert semitones_apart(a_minor, parse_key("D# minor")) == 6
    assert semitones_apart(a_minor, parse_key("E minor")) == -5
    assert semitones_apart(parse_key("C major"), parse_key("C minor")) == 0


def test_importing_keys_and_analysis_stays_cheap() -> None:
    # The manifest validator imports keys; the analysis must load librosa only when it runs.
    code = (
        "import sys, soundtrack.keys, soundtrack.analysis; "
        "print(sorted(m for m in ('librosa', 'numba', 'soxr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
