"""Licences: read from model cards (on disk or in the hub cache) or the known-checkpoint table,
and held against the manifest's declared usage before anything loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack.catalog import CHECKPOINTS
from soundtrack.cli import app
from soundtrack.licences import licence_of, usage_problem
from soundtrack.separate import TINY_LICENSE, make_tiny_demucs
from tests.hubcache import put_in_cache

MANIFEST = """\
schema: 1
soundtrack: licences
storage: ./out
{usage}
defaults: {{duration: 3, formats: [ogg]}}
tracks:
  - id: theme
    prompt: calm piano
    model: {model}
"""


def run(folder: Path, *args: str) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(cwd)
    return result.exit_code, " ".join(result.output.split())


def test_known_checkpoints_need_no_weights_and_no_network(offline_hub: Path) -> None:
    assert licence_of("facebook/musicgen-small") == "CC-BY-NC-4.0"
    assert licence_of("stabilityai/stable-audio-open-1.0") == "stabilityai-community"
    assert licence_of("ACE-Step/acestep-v15-xl-turbo-diffusers") == "MIT"
    assert licence_of("suno/bark-small") == "MIT"
    assert licence_of("someone/new-model") == "unknown"


def test_the_model_card_wins_over_the_table(offline_hub: Path, tmp_path: Path) -> None:
    put_in_cache(
        offline_hub, "facebook/musicgen-small", "README.md", "---\nlicense: apache-2.0\n---\n"
    )
    put_in_cache(offline_hub, "someone/new-model", "README.md", "---\nlicense: mit\n---\n# card\n")
    assert licence_of("facebook/musicgen-small") == "APACHE-2.0"
    assert licence_of("someone/new-model") == "MIT"
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: studio-internal\n---\n")
    assert licence_of(str(folder)) == "studio-internal"
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert licence_of(str(folder)) == "unknown", "a broken card is no licence"


@pytest.mark.parametrize(
    ("licence", "usage", "accepted", "allowed"),
    [
        ("MIT", "commercial", [], True),
        ("APACHE-2.0", "commercial", [], True),
        ("CC-BY-NC-4.0", "commercial", [], False),
        ("CC-BY-NC-4.0", "commercial", ["cc-by-nc-4.0"], True),
        ("stabilityai-community", "commercial", [], False),
        ("stabilityai-community", "commercial", ["stabilityai-community"], True),
        ("unknown", "commercial", ["unknown"], False),
        ("CC-BY-NC-4.0", "non-commercial", [], True),
        ("unknown", None, [], True),
        ("stabilityai-community", "commercial", [" stabilityai-community "], True),
        ("stabilityai-community", "commercial", ["stable-audio-nc-community"], True),
        ("MIT AND CC-BY-NC-4.0", "commercial", [], False),
        ("MIT AND CC-BY-NC-4.0", "commercial", ["cc-by-nc-4.0"], True),
    ],
)
def test_usage_rules(licence: str, usage: str | None, accepted: list[str], allowed: bool) -> None:
    assert (usage_problem(licence, usage, accepted) is None) == allowed


BOMB = "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9) if p else 'x'}]\n"
    for p, c in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("card", "licence"),
    [
        ("---\nlicense: [cc-by-nc-4.0]\n---\n", "CC-BY-NC-4.0"),
        ("---\nlicense: [mit, cc-by-nc-4.0, mit]\n---\n", "MIT AND CC-BY-NC-4.0"),
        # One of them no id: "MIT AND unknown" would pass once `unknown` is accepted by name.
        ("---\nlicense: [mit, free for non commercial use]\n---\n", "unknown"),
        ("---\nlicense: [mit, 42]\n---\n", "unknown"),
        ("---\nlicense: cc-by-nc-4.0\nlicense: mit\n---\n", "unknown"),
        ("---\nlicense: 'mit '\n---\n", "MIT"),
        ("---\nlicense: unknown\n---\n", "unknown"),
        ("---\nlicense: 42\n---\n", "unknown"),
        ("---\nlicense: []\n---\n", "unknown"),
        ("---\nlicense: [unclosed\n---\n", "unknown"),
        ("---\n" + BOMB + "license: mit\n---\n", "unknown"),
        (
            "---\nlicense: other\nlicense_name: stable-audio-nc-community\n---\n",
            "stabilityai-community",
        ),
        ("---\ntags: [text-to-speech]\n---\n# Bark\n", "MIT"),
        ("# Bark\nNo front matter.\n", "MIT"),
        # A `---` inside a value is no delimiter: the card was read as silent, and the table won.
        ("---\npretty_name: Bark --- small\nlicense: cc-by-nc-4.0\n---\n", "CC-BY-NC-4.0"),
        ("\ufeff---\r\nlicense: cc-by-nc-4.0\r\n---\r\n", "CC-BY-NC-4.0"),
        ("---\nlicense: cc-by-nc-4.0\n", "MIT"),  # never closed: no front matter
        ("\n  \n---\nlicense: cc-by-nc-4.0\n---\n", "CC-BY-NC-4.0"),  # blank lines first
        ("# Bark\n---\nlicense: cc-by-nc-4.0\n---\n", "MIT"),  # not at the top: text
        # Words are no licence id, so nothing a manifest could accept by name.
        ("---\nlicense: free for non commercial use\n---\n", "unknown"),
        ("---\nlicense: other\nlicense_name: ask us first\n---\n", "unknown"),
        ("---\nlicense: openrail++\n---\n", "OPENRAIL++"),
        # A card's other keys need not be names, as a manifest's must.
        ("---\nlicense: cc-by-nc-4.0\nreleases: {2023: first, null: none}\n---\n", "CC-BY-NC-4.0"),
    ],
)
def test_a_card_that_says_anything_of_its_licence_wins_over_the_table(
    offline_hub: Path, card: str, licence: str
) -> None:
    """suno/bark is MIT in the table. A card's licence wins however it is written (a list: each
    applies); one it states but no one can read (duplicate keys, aliases past the manifest's
    bounds) is unknown, never the table's; a card silent on its licence leaves the table's."""
    put_in_cache(offline_hub, "suno/bark", "README.md", card)
    assert licence_of("suno/bark") == licence


def test_known_checkpoints_are_known_in_any_case(offline_hub: Path) -> None:
    assert licence_of("Facebook/MusicGen-Small") == "CC-BY-NC-4.0"
    assert licence_of("ace-step/ACESTEP-v15-xl-base-diffusers") == "MIT"
    assert CHECKPOINTS["ACE-Step/acestep-v15-sft-diffusers"].family == "ace-step"


def test_validate_shows_licences_and_refuses_what_commercial_use_forbids(
    offline_hub: Path, tmp_path: Path
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(usage="", model="facebook/musicgen-small"))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0 and "CC-BY-NC-4.0" in said, said

    path.write_text(MANIFEST.format(usage="usage: commercial", model="facebook/musicgen-small"))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 2, said
    assert "track theme: model facebook/musicgen-small: its licence CC-BY-NC-4.0" in said
    assert "accepted_licenses" in said

    ace_step = "ACE-Step/acestep-v15-xl-turbo-diffusers"
    path.write_text(MANIFEST.format(usage="usage: commercial", model=ace_step))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0 and "MIT" in said, said

    stable = "stabilityai/stable-audio-open-1.0"
    path.write_text(MANIFEST.format(usage="usage: commercial", model=stable))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 2 and "its licence stabilityai-community does not allow" in said, said
    accepting = "usage: commercial\naccepted_licenses: [stabilityai-community]"
    path.write_text(MANIFEST.format(usage=accepting, model=stable))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0 and "does not allow" not in said, said
    assert "…" not in said, said  # 80 columns, as a CI log has: folded, never cut short
    assert CHECKPOINTS[stable].licence == "stabilityai-community"


def test_build_refuses_a_model_given_by_flag_before_it_loads(
    offline_hub: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "m.yaml").write_text(
        MANIFEST.format(usage="usage: commercial", model="suno/bark-small")
    )
    code, said = run(tmp_path, "build", "m.yaml", "--model", str(tiny_model_dir))
    assert code == 2, said
    assert f"model {tiny_model_dir} (--model): its licence soundtrack-tiny-random-weights" in said
    assert "Traceback" not in said and "temporary server" not in said
    assert not (tmp_path / "out").exists()


STEMS_MANIFEST = """\
schema: 1
soundtrack: licences
storage: ./out
usage: commercial
{accepted}
defaults: {{duration: 3, formats: [ogg]}}
tracks:
  - id: theme
    prompt: calm piano
    model: ACE-Step/acestep-v15-turbo-diffusers
  - id: boss
    source: mix.wav
    stems: [drums, bass]
    stem_model: ./demucs
"""


def test_commercial_use_checks_the_stem_model_too(offline_hub: Path, tmp_path: Path) -> None:
    """A track's stem model is a model it uses: its card, else its config.json's licence, is
    held to `usage` as the generator's is, for a recording's stems too."""
    sf.write(tmp_path / "mix.wav", np.full((3 * 44100, 2), 0.1), 44100)
    path = tmp_path / "m.yaml"
    path.write_text(STEMS_MANIFEST.format(accepted=""))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0 and "(licence unchecked until the folder is there)" in said, said
    code, said = run(tmp_path, "build", "m.yaml")
    assert code == 2 and "is not a separation model's directory" in said, said
    assert not (tmp_path / "out").exists()

    demucs = make_tiny_demucs(tmp_path / "demucs")
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 2, said
    assert "1 track(s) use a model" in said
    assert f"track boss: stem_model {demucs}: its licence soundtrack-tiny-random-weights" in said
    assert "track theme" not in said, "ACE-Step's weights are MIT"
    code, said = run(tmp_path, "build", "m.yaml")
    assert code == 2 and "stem_model" in said, said
    assert not (tmp_path / "out").exists()

    path.write_text(STEMS_MANIFEST.format(accepted="accepted_licenses: [" + TINY_LICENSE + "]"))
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0, said
    assert f"from {demucs} (licence {TINY_LICENSE})" in said

    path.write_text(STEMS_MANIFEST.format(accepted=""))
    (demucs / "README.md").unlink()
    config = json.loads((demucs / "config.json").read_text())
    for licence, allowed in [("MIT", True), ("CC-BY-NC-4.0", False), ("", False)]:
        (demucs / "config.json").write_text(json.dumps({**config, "licence": licence}))
        code, said = run(tmp_path, "validate", "m.yaml")
        assert (code == 0) == allowed, (licence, said)
        assert licence in said
    (demucs / "README.md").write_text("---\nlicense: mit\n---\n")
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 0 and "(licence MIT)" in said, "the card wins over config.json"


@pytest.mark.parametrize(
    ("card", "licence"),
    [
        ("---\nlicense: unknown\n---\n", "unknown"),
        ("---\nlicense: UNKNOWN\n---\n", "unknown"),
        ("---\nlicense: other\n---\n", "unknown"),
        ("---\nlicense: other\nlicense_name: other\n---\n", "unknown"),
        ("\ufeff---\nlicense: mit\n---\n", "MIT"),
        ("---\nlicense: mit\n---\n" + "x" * (2 * 1024 * 1024), "MIT"),
    ],
)
def test_a_card_that_names_no_licence_cannot_be_accepted(
    offline_hub: Path, tmp_path: Path, card: str, licence: str
) -> None:
    """`unknown`, or `other` without a name, is no licence: accepting it by that word would
    accept anything. A byte-order mark or a long card still reads."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "README.md").write_text(card, encoding="utf-8")
    assert licence_of(str(folder)) == licence
    accepting = ["unknown", "UNKNOWN", "other"]
    assert (usage_problem(licence_of(str(folder)), "commercial", accepting) is None) == (
        licence == "MIT"
    )


def test_commercial_use_lists_every_problem_of_the_tracks_models(
    offline_hub: Path, tmp_path: Path
) -> None:
    """A licence refusal hides no other problem: the 47 s limit, a field the family cannot take
    and a mistyped folder are listed with it; the missing folder is not called unlicensed."""
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: all\nstorage: ./out\nusage: commercial\ntracks:\n"
        "  - {id: sfx, prompt: wind, duration: 60, model: stabilityai/stable-audio-open-1.0}\n"
        "  - {id: vo, prompt: hum, duration: 5, model: facebook/musicgen-small, lyrics: la}\n"
        "  - {id: typo, prompt: hum, duration: 5, model: ./models/tiny-acestp}\n"
    )
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 2, said
    assert "5 problem(s) with the tracks' models" in said
    assert "track sfx: model stabilityai/stable-audio-open-1.0: duration 60 s" in said
    assert "(47 s at most)" in said
    assert "track sfx: model stabilityai/stable-audio-open-1.0: its licence stabil" in said
    assert "track vo: model facebook/musicgen-small: musicgen models take no lyrics" in said
    assert "track vo: model facebook/musicgen-small: its licence CC-BY-NC-4.0" in said
    assert "no such directory" in said and "track typo: model" in said
    assert said.count("its licence") == 2, said
    assert not (tmp_path / "out").exists()


def test_a_hub_id_names_the_hub_wherever_the_command_runs(
    offline_hub: Path, tmp_path: Path
) -> None:
    """A folder `facebook/musicgen-small` under the cwd, with an MIT card, made a commercial
    manifest elsewhere pass as MIT: the manifest's hub id was looked up again in the cwd."""
    decoy = tmp_path / "facebook" / "musicgen-small"
    decoy.mkdir(parents=True)
    (decoy / "README.md").write_text("---\nlicense: mit\n---\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.yaml").write_text(
        MANIFEST.format(usage="usage: commercial", model="facebook/musicgen-small")
    )
    code, said = run(tmp_path, "validate", "sub/m.yaml")
    assert code == 2 and "its licence CC-BY-NC-4.0" in said, said


def test_each_pinned_revision_of_a_model_is_held_to_its_own_card(
    offline_hub: Path, tmp_path: Path
) -> None:
    """Two tracks pinning two snapshots of one repository: the first one's MIT card was taken
    for both, and the second's CC-BY-NC-4.0 passed a commercial build."""
    repo = offline_hub / "models--studio--sa"
    for commit, licence in [("1" * 40, "mit"), ("2" * 40, "cc-by-nc-4.0")]:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "README.md").write_text(f"---\nlicense: {licence}\n---\n")
    path = tmp_path / "m.yaml"
    path.write_text(
        MANIFEST.format(usage="usage: commercial", model="studio/sa")
        + f"    model_revision: '{'1' * 40}'\n"
        + f"  - {{id: other, prompt: calm, model: studio/sa, model_revision: '{'2' * 40}'}}\n"
    )
    code, said = run(tmp_path, "validate", "m.yaml")
    assert code == 2, said
    assert "track other: model studio/sa: its licence CC-BY-NC-4.0" in said, said
    assert "track theme" not in said


def test_a_card_that_cannot_be_read_to_its_licence_is_unknown(
    offline_hub: Path, tmp_path: Path
) -> None:
    """Front matter running past what is read (1,200 tags first), or a card that cannot be read
    at all, may state any licence: unknown, never the table's MIT (nor a traceback)."""
    tags = "".join(f"tag{n}: {'x' * 50}\n" for n in range(1200))
    put_in_cache(offline_hub, "suno/bark", "README.md", f"---\n{tags}license: cc-by-nc-4.0\n---\n")
    assert licence_of("suno/bark") == "unknown"
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n")  # no end, and short: no front matter
    assert licence_of(str(folder)) == "unknown"
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to("/proc/self/mem")  # reading it fails (EIO)
    assert licence_of(str(folder)) == "unknown"
