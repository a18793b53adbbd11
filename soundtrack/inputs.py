"""Everything a user gives, checked once before anything loads, renders or writes.

`validate` and `build` call the same function, so a manifest `validate` accepts is one `build`
accepts, and bad input of any kind (manifest, expectations, storage, overlapping folders) exits 2
with nothing generated, written or uploaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundtrack.catalog import family_name, limit_problems
from soundtrack.errors import InputError, ModelLoadError, StorageError
from soundtrack.licences import licence_of, usage_problem
from soundtrack.manifest import load_manifest_with_lines, where
from soundtrack.paths import without_dotdot
from soundtrack.plan import select
from soundtrack.renders import CACHE_ENV, cache_root
from soundtrack.resolve import gate_severities, resolve_tracks
from soundtrack.schema import Manifest, model_problem
from soundtrack.separate import stem_model_licence, stem_model_problem, stem_model_sources
from soundtrack.spec import TrackSpec
from soundtrack.storage import INDEX_NAME, STORAGE_ENV, LocalStorage, Storage, open_storage
from soundtrack.storage.base import RENDERS_FOLDER

ModelKey = tuple[str, str | None]  # a model and its pinned revision (None: its latest)
_Where = Callable[[TrackSpec, str], str]  # a track's field as `tracks[i].field (line N)`


@dataclass(frozen=True)
class CheckedInputs:
    """A manifest that passed every check, its resolved tracks and the storage to publish to."""

    manifest: Manifest
    manifest_path: Path  # absolute
    specs: list[TrackSpec]  # every track of the manifest (a build selects by --only itself)
    storage_url: str
    storage: Storage
    expectations: list[dict[str, Any]]
    licences: dict[ModelKey, str]  # model or stem model -> its licence (manifest.md#licences)
    families: dict[ModelKey, str | None]  # model -> family; None: unchecked until files are here


def storage_url(manifest_storage: str, out: str | None, environ: Mapping[str, str]) -> str:
    """--out wins, then $SOUNDTRACK_STORAGE, then the manifest's `storage`."""
    return out or environ.get(STORAGE_ENV) or manifest_storage


def check_inputs(
    manifest_path: Path,
    *,
    out: str | None = None,
    model: str | None = None,
    only: Sequence[str] = (),
    reports: Sequence[Path] = (),
    gates: Sequence[str] = (),
    discarded: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> CheckedInputs:
    """Read and check the manifest, its files and where the build would write; raise InputError.

    `reports` are further files the build writes (--report, --junit); `gates` are --gate
    GATE=SEVERITY settings; `discarded` a folder deleted when the build ends (a worker's
    temporary checkout), where nothing may be published. The storage's access is not checked
    here (that needs the network): `build` does it next.
    """
    # Relative paths in it are read from the folder it was given in, a link's too.
    path = without_dotdot(Path(manifest_path))
    if model is not None and (problem := model_problem(model, "--model")):
        raise InputError(problem)  # the flow's parameter: no CLI check before it
    severities = gate_severities(gates)
    loaded, lines = load_manifest_with_lines(path)
    specs = resolve_tracks(loaded, path.parent, model_override=model, severities=severities)
    short = _too_short_to_compare(specs)
    if short:
        raise InputError("variations too short for the theme gate to compare", short)
    # Only the tracks --only selects are built, so only their models must be at hand; every
    # track stays in `specs`: the lock keeps serving the others' files.
    selected = select(specs, only)
    expectations: list[dict[str, Any]] = []
    if loaded.expectations:
        from soundtrack.expectations import load_expectations, theme_columns_read

        expectations = load_expectations(path.parent / loaded.expectations)
        theme = theme_columns_read(expectations)
        plain = [spec.id for spec in selected if spec.variation_of is None]
        if theme and plain:
            # Their rows have no such column: GX would fail each of them mid-build.
            raise InputError(
                f"expectations {loaded.expectations} read {', '.join(theme)}, which only a "
                f"variation's rows have, and track(s) {', '.join(plain)} are no variation: "
                "their rows have no such column (the theme gate judges variations already)"
            )
    families, licences = check_models(loaded, selected, model_override=model, lines=lines)
    url = storage_url(loaded.storage, out, environ)
    storage = open_storage(url, base_dir=path.parent)
    for report in reports:
        _check_writable(report)
    check_apart(
        outputs=_outputs(storage, loaded.soundtrack, reports),
        inputs=_inputs(path, loaded, specs),
    )
    _refuse_overlaps(
        [
            (report, other)
            for report in _reports(reports)
            if (other := _other(storage, loaded, report[1]))
        ],
        "a report would overwrite another soundtrack's published files (or lock, which gc "
        "trusts): write reports outside the soundtracks' folders",
    )
    if discarded is not None:
        _refuse_overlaps(
            [(out, ("the folder", discarded)) for out in _outputs(storage, loaded.soundtrack, ())],
            "the build would publish into the temporary folder its worker deletes when the run "
            "ends: give the deployment s3:// storage, or an `out` folder outside it",
        )
    return CheckedInputs(loaded, path, specs, url, storage, expectations, licences, families)


def check_cache() -> None:
    """The render cache can be made and written: a file in its place, or a folder no file can
    be made in, is a setting to fix (InputError), found before the build starts."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise InputError(
            f"the render cache {root} (${CACHE_ENV}, or the user's cache folder) cannot be "
            f"written: {exc.strerror or exc}"
        ) from None


def check_access(storage: Storage, soundtrack: str) -> None:
    """The storage takes what a build publishes: wrong credentials, a missing bucket or a file
    where its folder goes are settings to fix (InputError), not a failed build; a transient
    failure stays a StorageError."""
    try:
        storage.check_access(soundtrack)
    except StorageError as exc:
        if exc.transient:
            raise
        raise InputError(str(exc)) from None


def check_models(
    manifest: Manifest,
    specs: Sequence[TrackSpec],
    *,
    model_override: str | None = None,
    lines: dict[str, int] | None = None,
) -> tuple[dict[ModelKey, str | None], dict[ModelKey, str]]:
    """Each generating model's family and every model's licence (generator, stem model), with
    every track held to what its family renders and to the manifest's `usage`; raise InputError
    listing every problem, each at its field and line (`lines`: where the manifest writes each
    field). Read from model cards, config files and tables: no weights, no network.
    """
    index = {track.id: i for i, track in enumerate(manifest.tracks)}
    in_defaults = manifest.defaults.model_fields_set

    def at(spec: TrackSpec, field: str) -> str:
        """Where the track's `field` is written: on the track, else in the defaults."""
        i = index[spec.id]
        own = field in manifest.tracks[i].model_fields_set or field not in in_defaults
        return where(f"tracks[{i}].{field}" if own else f"defaults.{field}", lines or {})

    families, problems, unloadable = _families(specs, model_override, at)
    problems += _stem_model_problems(specs, at)
    licences, refusals = _licences(manifest, specs, model_override, unloadable, at)
    if refusals and not problems:
        raise InputError(
            f"usage: {manifest.usage}: {len({track for track, _ in refusals})} track(s) use a "
            "model whose licence does not allow it",
            [problem for _, problem in refusals],
        )
    problems += [problem for _, problem in refusals]
    if problems:
        raise InputError(f"{len(problems)} problem(s) with the tracks' models", problems)
    return families, licences


def _families(
    specs: Sequence[TrackSpec], model_override: str | None, at: _Where
) -> tuple[dict[ModelKey, str | None], list[str], set[ModelKey]]:
    """Each generating model's family (None: unchecked until its files are here), the problems of
    the tracks it cannot render, and the models whose files name no family this version loads."""
    families: dict[ModelKey, str | None] = {}
    unloadable: dict[ModelKey, str] = {}  # model -> why its files name no family this loads
    problems = []
    given = " (--model)" if model_override else ""
    for spec in specs:
        if spec.source is not None:
            continue
        # Each revision of a model has its own files, so its own family and card.
        key = (spec.model, spec.model_revision)
        if key not in families and key not in unloadable:
            try:
                families[key] = family_name(spec.model, spec.model_revision)
            except ModelLoadError as error:
                unloadable[key] = str(error)
        if key in unloadable:
            if model_override is None:
                problems.append(f"{at(spec, 'model')}: track {spec.id}: {unloadable[key]}")
            elif f"--model: {unloadable[key]}" not in problems:  # every track's: said once
                problems.append(f"--model: {unloadable[key]}")
            continue
        family = families[key]
        if family is not None:
            problems += [
                f"{at(spec, field)}: track {spec.id}: model {spec.model}{given}: {problem}"
                for field, problem in limit_problems(spec, family)
            ]
    return families, problems, set(unloadable)


def _too_short_to_compare(specs: Sequence[TrackSpec]) -> list[str]:
    """A variation or parent too short for the theme gate to measure would fail it only after
    rendering, whatever it sounds like: unless the variation's theme gate only warns."""
    from soundtrack.theme import MIN_DURATION_S

    seconds = {spec.id: spec.duration_s for spec in specs}
    problems = []
    for spec in specs:
        if spec.variation_of is None or spec.gates.severity("theme") in ("warn", "off"):
            continue
        for track_id in (spec.id, spec.variation_of):
            if seconds.get(track_id, MIN_DURATION_S) < MIN_DURATION_S:
                problems.append(
                    f"track {spec.id}: {'it' if track_id == spec.id else 'its parent ' + track_id}"
                    f" lasts {seconds[track_id]:g} s, under the {MIN_DURATION_S:g} s the theme "
                    "gate needs to compare a melody: make it longer, or give the variation "
                    "`gates: {theme: warn}` (or off)"
                )
    return problems


def _stem_model_problems(specs: Sequence[TrackSpec], at: _Where) -> list[str]:
    """A stem model folder that is there but holds no separator (`/etc`, a MusicGen folder). One
    not there yet is the build's to refuse: it may be converted after validation."""
    problems = []
    for spec in specs:
        if spec.stems and spec.stem_model and Path(spec.stem_model).exists():
            problem = stem_model_problem(spec.stem_model)
            if problem is not None:
                problems.append(f"{at(spec, 'stem_model')}: track {spec.id}: {problem}")
                continue
            sources = stem_model_sources(Path(spec.stem_model))
            missing = [stem for stem in spec.stems if sources and stem not in sources]
            if missing:
                problems.append(
                    f"{at(spec, 'stems')}: track {spec.id}: {', '.join(missing)} not among the "
                    f"sources stem_model {spec.stem_model!r} separates ({', '.join(sources)})"
                )
    return problems


def _licences(
    manifest: Manifest,
    specs: Sequence[TrackSpec],
    model_override: str | None,
    unloadable: set[ModelKey],
    at: _Where,
) -> tuple[dict[ModelKey, str], list[tuple[str, str]]]:
    """The licence of every model a track uses, and (track id, problem) for each one that does
    not allow the manifest's `usage`."""
    licences: dict[ModelKey, str] = {}
    refusals = []
    given = " (--model)" if model_override else ""
    for spec in specs:
        used = []
        key = (spec.model, spec.model_revision)
        # A model whose files cannot load has its problem listed already: its card says nothing.
        if spec.source is None and key not in unloadable:  # a recording is the studio's
            if key not in licences:
                licences[key] = licence_of(spec.model, spec.model_revision)
            used.append(("model", f"model {spec.model}{given}", licences[key]))
        # A stem model not yet in place is checked by the build that needs it (build refuses
        # to separate with a folder that is not there).
        if spec.stems and spec.stem_model and stem_model_problem(spec.stem_model) is None:
            stem_key = (spec.stem_model, None)
            if stem_key not in licences:
                licences[stem_key] = stem_model_licence(spec.stem_model)
            used.append(("stem_model", f"stem_model {spec.stem_model}", licences[stem_key]))
        for field, model, licence in used:
            problem = usage_problem(licence, manifest.usage, manifest.accepted_licenses)
            if problem is not None:
                refusals.append(
                    (spec.id, f"{at(spec, field)}: track {spec.id}: {model}: {problem}")
                )
    return licences, refusals


def check_apart(*, outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse when any output path equals an input or another output, or one lies inside the
    other's folder.

    Paths are compared after resolving symlinks and without regard to case, since a
    case-insensitive file system (macOS, Windows) makes `Audio/x.wav` and `audio/x.wav` one file.
    """
    # Two outputs may not overlap either: a report inside the soundtrack's folder would be
    # written over a published file (or the lock), or deleted by `gc`.
    _refuse_overlaps(
        [(out, other) for i, out in enumerate(outputs) for other in outputs[i + 1 :]],
        "outputs overlap: one would overwrite another; write reports outside the soundtrack's "
        "folder, each to its own file",
    )
    _refuse_overlaps(
        [(out, read) for out in outputs for read in inputs],
        "outputs overlap inputs: a build would overwrite or delete what it reads; choose "
        "another storage folder (or soundtrack name), --out or $SOUNDTRACK_CACHE_DIR",
    )


def _refuse_overlaps(
    pairs: Sequence[tuple[tuple[str, Path], tuple[str, Path]]], message: str
) -> None:
    problems = [p for (name, path), other in pairs if (p := _overlap(name, path, *other))]
    if problems:
        raise InputError(message, problems)


def _overlap(name: str, path: Path, other_name: str, other_path: Path) -> str | None:
    """How `path` overlaps `other_path` (the same, or one inside the other), or None."""
    a, b = _comparable(path), _comparable(other_path)
    if a == b:
        return f"{name} {path} is {other_name} {other_path}"
    if _inside(b, a):
        return f"{name} {path} contains {other_name} {other_path}"
    if _inside(a, b):
        return f"{name} {path} is inside {other_name} {other_path}"
    return None


def _reports(reports: Sequence[Path]) -> list[tuple[str, Path]]:
    return [(f"the report file {p.name}", p.absolute()) for p in reports]


def _other(storage: Storage, manifest: Manifest, report: Path) -> tuple[str, Path] | None:
    """The folder of another soundtrack published in the same folder storage that `report`
    lies in, if any (a folder that holds a lock; one that cannot be read holds none)."""
    if not isinstance(storage, LocalStorage):
        return None
    root, path = Path(os.path.realpath(storage.root)), Path(os.path.realpath(report))
    if not path.is_relative_to(root) or path == root:
        return None
    name = path.relative_to(root).parts[0]
    folder = storage.root / name
    try:
        holds_lock = name != manifest.soundtrack and (folder / INDEX_NAME).is_file()
    except OSError:
        holds_lock = False
    return (
        (f"soundtrack {name}'s folder (holding its {INDEX_NAME})", folder) if holds_lock else None
    )


def _outputs(storage: Storage, soundtrack: str, reports: Sequence[Path]) -> list[tuple[str, Path]]:
    outputs = _reports(reports)
    if isinstance(storage, LocalStorage):
        # The soundtrack's folder is what a build writes and what `gc` sweeps; `.renders/` holds
        # render handoffs. An S3 store shares no path with local inputs.
        outputs += [
            (f"the soundtrack's output folder (holding {INDEX_NAME})", storage.root / soundtrack),
            ("the render handoff folder", storage.root / RENDERS_FOLDER),
        ]
    return outputs


def _inputs(path: Path, manifest: Manifest, specs: Sequence[TrackSpec]) -> list[tuple[str, Path]]:
    inputs = [("the manifest", path), ("the render cache", cache_root().absolute())]
    if manifest.expectations:
        inputs.append(("the expectations file", path.parent / manifest.expectations))
    for spec in specs:
        if spec.source is not None:
            inputs.append((f"track {spec.id}'s source", spec.source))
        elif Path(spec.model).is_absolute():
            inputs.append((f"track {spec.id}'s model folder", Path(spec.model)))
        if spec.reference is not None:
            inputs.append((f"track {spec.id}'s reference", spec.reference))
        if spec.stem_model is not None and Path(spec.stem_model).is_absolute():
            inputs.append((f"track {spec.id}'s stem model folder", Path(spec.stem_model)))
    return inputs


def _comparable(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path)).casefold()


def _inside(child: str, folder: str) -> bool:
    return child.startswith(folder.rstrip(os.sep) + os.sep)


def _check_writable(path: Path) -> None:
    """A report path must be a file in an existing, writable folder: found now, not after
    publishing."""
    if path.is_dir():
        raise InputError(f"report file {path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # written beside and renamed over: no device
        raise InputError(f"report file {path} is not a regular file (a device or pipe)")
    folder = path.absolute().parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise InputError(f"report file {path}: the folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"report file {path} cannot be written (permission denied)")
