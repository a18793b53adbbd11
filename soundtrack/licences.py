"""Which licence a model's weights carry, and whether it allows the use a manifest declares.

Read without weights and without the network: a model card's `license:` front matter (a local
folder, or the card in the Hugging Face cache), else the known checkpoints' table
(soundtrack/models/catalog.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from soundtrack.catalog import cached_file, is_local, known_checkpoint
from soundtrack.manifest import load_yaml
from soundtrack.paths import user_path

UNKNOWN = "unknown"
_CARD_HEAD_BYTES = 64 * 1024
# Licences that allow selling what the model makes, with no condition a tool could not check.
# Anything else (non-commercial, conditional such as Stability AI's revenue threshold, unknown)
# needs the studio to accept it by name in the manifest.
COMMERCIAL = frozenset(
    {"mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0"}
)
# Names model cards give (`license_name`) for a licence the table knows by another id: the
# Stability AI Community Licence is `stable-audio-nc-community` on Stable Audio Open's card.
ALIASES = {"stable-audio-nc-community": "stabilityai-community"}


def card_licence(card: Path) -> str | None:
    """The licence a model card's YAML front matter states; None when there is no card, no front
    matter or no `license:` in it, `unknown` when its licence cannot be read or names none."""
    if not card.is_file():
        return None
    try:
        with card.open("rb") as handle:  # the front matter is at the top; a card may be huge
            head = handle.read(_CARD_HEAD_BYTES + 1)
    except OSError:  # a card there that cannot be read may say anything
        return UNKNOWN
    # Between a first line `---` and the next line `---`: a `---` inside a value
    # (`pretty_name: A --- B`) is text, not the end of the front matter.
    text = head[:_CARD_HEAD_BYTES].decode("utf-8", errors="replace")
    lines = text.removeprefix("\ufeff").splitlines()
    ends = [i for i, line in enumerate(lines) if line.rstrip() == "---"]
    # Blank lines may come first, as huggingface_hub's own reader allows.
    if not ends or any(line.strip() for line in lines[: ends[0]]):
        return None
    if len(ends) < 2:
        # Front matter that runs past what is read may state a licence further down.
        return UNKNOWN if len(head) > _CARD_HEAD_BYTES else None
    try:
        meta = load_yaml("\n".join(lines[ends[0] + 1 : ends[1]]))
    except yaml.YAMLError:  # a card that says something no one can read wins over the table
        return UNKNOWN
    if not isinstance(meta, dict) or "license" not in meta:
        return None
    found = meta["license"]
    named = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    licences = [
        _licence_id(n, meta.get("license_name")) if isinstance(n, str) else UNKNOWN for n in named
    ]
    if not licences or UNKNOWN in licences:
        return UNKNOWN
    # Several licences: the weights are under each of them, so each must allow the use.
    return " AND ".join(dict.fromkeys(licences))


def _licence_id(licence: str, name: object) -> str:
    """One licence id as the table writes it (`other`: its `name`); `unknown`, `other` with no
    name, or words that are no id (`free for non commercial use`) name none."""
    licence = licence.strip()
    if licence.casefold() == "other":
        named = isinstance(name, str) and name.strip().casefold() not in ("", UNKNOWN, "other")
        licence = str(name).strip() if named else UNKNOWN
        if not _LICENCE_ID.fullmatch(licence):
            return UNKNOWN
        return ALIASES.get(licence.casefold(), licence)
    if licence.casefold() == UNKNOWN or not _LICENCE_ID.fullmatch(licence):
        return UNKNOWN
    return licence.upper()


# An id, as the hub's `license:` and SPDX write them: no spaces (`cc-by-nc-4.0`, `openrail++`).
_LICENCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


def licence_of(model: str, revision: str | None = None, *, directory: Path | None = None) -> str:
    """The licence of `model`: its card (in `directory`, a local folder, or the hub cache), else
    the known-checkpoint table, else `unknown`."""
    if directory is not None or is_local(model):
        found = card_licence((directory or user_path(model)) / "README.md")
    else:
        card = cached_file(model, "README.md", revision)
        found = card_licence(card) if card is not None else None
    known = known_checkpoint(model)
    return found or (known.licence if known else UNKNOWN)


def usage_problem(licence: str, usage: str | None, accepted: list[str]) -> str | None:
    """Why a model under `licence` may not make assets for `usage`, or None when it may."""
    if usage != "commercial":
        return None  # every licence allows non-commercial use; no usage declared checks nothing
    if licence.casefold() == UNKNOWN:  # not acceptable by name: nobody knows what it would be
        return (
            "its licence is unknown (no model card at hand states one this tool can read, and "
            "it is not a known checkpoint); download the model so that its card is read, give "
            "a model folder a card whose `license:` names its licence (a stem model folder may "
            "instead hold it as `licence` in its config.json: `soundtrack models convert-demucs "
            "--licence ID` writes it), or use another model"
        )
    # An agreement may name the licence as the card's `license_name` does.
    agreed = {ALIASES.get(a.strip().casefold(), a.strip()).casefold() for a in accepted}
    # A card may name several licences (" AND "): each must allow the use.
    wanting = [n for n in licence.split(" AND ") if n.casefold() not in COMMERCIAL | agreed]
    if not wanting:
        return None
    return (
        f"its licence {licence} does not allow commercial use without an agreement; with one, "
        f"add {', '.join(repr(n) for n in wanting)} to the manifest's accepted_licenses"
    )
