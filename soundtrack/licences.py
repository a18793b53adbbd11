"""Which licence a model's weights carry, and whether it allows the use a manifest declares.

Read without weights and without the network: a model card's `license:` front matter (a local
folder, or the card in the Hugging Face cache), else the known checkpoints' table
(soundtrack/models/catalog.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from soundtrack.catalog import CHECKPOINTS, cached_file
from soundtrack.paths import user_path

UNKNOWN = "unknown"
_CARD_HEAD_BYTES = 64 * 1024
# Licences that allow selling what the model makes, with no condition a tool could not check.
# Anything else (non-commercial, conditional such as Stability AI's revenue threshold, unknown)
# needs the studio to accept it by name in the manifest.
COMMERCIAL = frozenset(
    {"mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0"}
)


def card_licence(card: Path) -> str | None:
    """The `license:` of a model card's YAML front matter (`license_name` for `other`); None
    when the card names none (`unknown`, or `other` without a name: nothing to accept)."""
    if not card.is_file():
        return None
    with card.open("rb") as handle:  # the front matter is at the top; a card may be huge
        head = handle.read(_CARD_HEAD_BYTES).decode("utf-8", errors="replace")
    parts = head.removeprefix("\ufeff").split("---", 2)
    if len(parts) != 3 or parts[0].strip():
        return None
    try:
        meta = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("license"), str):
        return None
    licence = str(meta["license"])
    if licence.casefold() == "other":
        name = meta.get("license_name")
        named = isinstance(name, str) and name.strip().casefold() not in ("", UNKNOWN, "other")
        return str(name) if named else None
    return None if licence.casefold() == UNKNOWN else licence.upper()


def licence_of(model: str, revision: str | None = None, *, directory: Path | None = None) -> str:
    """The licence of `model`: its card (in `directory`, a local folder, or the hub cache), else
    the known-checkpoint table, else `unknown`."""
    local = directory or user_path(model)
    if local.is_dir():
        found = card_licence(local / "README.md")
    else:
        card = cached_file(model, "README.md", revision)
        found = card_licence(card) if card is not None else None
    known = CHECKPOINTS.get(model)
    return found or (known.licence if known else UNKNOWN)


def usage_problem(licence: str, usage: str | None, accepted: list[str]) -> str | None:
    """Why a model under `licence` may not make assets for `usage`, or None when it may."""
    if usage != "commercial":
        return None  # every licence allows non-commercial use; no usage declared checks nothing
    if licence.casefold() == UNKNOWN:  # not acceptable by name: nobody knows what it would be
        return (
            "its licence is unknown (no `license:` in its model card, not a known checkpoint); "
            "give the model a card with its licence, or use another model"
        )
    wanted = licence.casefold()
    if wanted in COMMERCIAL or wanted in {a.casefold() for a in accepted}:
        return None
    return (
        f"its licence {licence} does not allow commercial use without an agreement; with one, "
        f"add {licence!r} to the manifest's accepted_licenses"
    )
