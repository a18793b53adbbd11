"""The `soundtrack` command line: the face that calls the core library or the Prefect flow."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from soundtrack.errors import (
    AudioError,
    InputError,
    ModelLoadError,
    SoundtrackError,
    StorageBusy,
    StorageError,
)
from soundtrack.paths import path_problem, printable, shown, user_path, without_dotdot
from soundtrack.redaction import install_log_redaction, redact

if TYPE_CHECKING:
    from soundtrack.analysis import Analysis
    from soundtrack.build import Options
    from soundtrack.catalog import Family
    from soundtrack.models import GenerationRequest
    from soundtrack.storage import Storage

app = typer.Typer(
    name="soundtrack",
    help=(
        "Turn a game's soundtrack manifest into approved, engine-ready music assets: generate "
        "with open text-to-music models, master to a loudness target, run quality gates, encode "
        "OGG/MP3, publish to a folder or S3."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
models_app = typer.Typer(
    help="Manage generation models.", no_args_is_help=True, rich_markup_mode="markdown"
)
app.add_typer(models_app, name="models")

# No emoji codes: a path or an ffmpeg map such as `-map 0:a:0` holds ":a:", which Rich would
# print as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

# --- validate (issue 2) ---

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: another build holds the storage; try again later
EXIT_INTERRUPTED = 130  # a shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def fail(exc: SoundtrackError) -> NoReturn:
    """Print a readable error (every listed problem) and exit: 2 for bad input, 75 for storage
    busy with another build, else 1."""
    _print_error(exc)
    if isinstance(exc, InputError):
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_BUSY if isinstance(exc, StorageBusy) else EXIT_FAILED)


def _print_error(exc: SoundtrackError) -> None:
    """`error: ...` and every listed problem, on stderr."""
    # Messages quote user input, which may contain Rich markup: print them verbatim. They may
    # also quote a URL or a library's text with a secret in it: redacted.
    message = escape(printable(redact(str(exc))))
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    for problem in getattr(exc, "problems", []):
        err_console.print(
            f"  - {printable(redact(problem))}", highlight=False, markup=False, soft_wrap=True
        )


def _build_failed(message: str) -> NoReturn:
    """Say why a build failed, as `fail` says it, and exit 1."""
    err_console.print(
        f"[bold red]build failed:[/] {escape(printable(redact(message)))}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_FAILED)


def _said(text: str) -> None:
    """Print a line of plain text that quotes paths or reasons: no markup, control characters
    written out (a folder named `take[old]` is printed as such)."""
    console.print(printable(text), markup=False, highlight=False, soft_wrap=True)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"soundtrack-pipeline {version('soundtrack-pipeline')}")
        raise typer.Exit()


@app.callback()
def _redact_logs(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    # Before any command: every log record of this process, botocore's and the Prefect run
    # logs sent to the server included, has its secrets blanked (soundtrack/redaction.py).
    install_log_redaction()


def _fits(value: Any) -> Any:
    """A path no file system can hold (a name over 255 bytes) is bad input, exit 2, before
    anything asks a file system about it and gets an OSError back."""
    for path in value if isinstance(value, list) else [] if value is None else [value]:
        if problem := path_problem(str(path)):
            raise typer.BadParameter(f"the path {problem}")
    return value


ManifestArg = Annotated[
    Path,
    typer.Argument(
        help="The soundtrack manifest (YAML, schema 1).", show_default=False, callback=_fits
    ),
]
StorageArg = Annotated[
    str,
    typer.Argument(
        help="Where the soundtrack is published: a folder, s3://bucket or s3://bucket/prefix.",
        show_default=False,
    ),
]


@app.command()
def validate(manifest: ManifestArg) -> None:
    """Check a manifest without generating anything; list its problems with field and line.

    Exit 0 when valid (a summary is printed), 2 otherwise.
    """
    from soundtrack.inputs import check_access, check_inputs
    from soundtrack.models.source import keep_fingerprints
    from soundtrack.storage import LocalStorage

    try:
        # The manifest's own storage: --out and $SOUNDTRACK_STORAGE are the build's to check.
        checked = check_inputs(manifest, environ={})
        if isinstance(checked.storage, LocalStorage):  # as build checks it (a bucket: network)
            check_access(checked.storage, checked.manifest.soundtrack)
        if checked.manifest.review == "required":
            _check_review_server()
    except SoundtrackError as exc:
        fail(exc)
    keep_fingerprints()
    loaded, specs = checked.manifest, checked.specs
    table = Table(title=f"{loaded.soundtrack}: {len(specs)} tracks", title_justify="left")
    # Folded, not cut with an ellipsis: a CI log's 80 columns must still show every value whole.
    for column in ("track", "seconds", "loop", "model / recording", "licence", "formats", "LUFS"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        # Names, paths and a model card's licence are anyone's text, which may hold [brackets]
        # or terminal controls: never Rich markup, and written out.
        source = spec.source.name if spec.source else spec.model.rsplit("/", 1)[-1]
        licence = "" if spec.source else checked.licences[spec.model, spec.model_revision]
        table.add_row(
            spec.id,
            f"{spec.duration_s:g}",
            "loop" if spec.loop else "",
            escape(printable(source)),
            escape(printable(licence)),
            ",".join(spec.formats),
            f"{spec.mastering.loudness.integrated_lufs:g}",
        )
    console.print(table)
    for spec in specs:
        if spec.variation_of:
            console.print(f"{spec.id}: a variation of {spec.variation_of}, rendered after it")
        if spec.stems and spec.stem_model:
            licence = checked.licences.get(
                (spec.stem_model, None), "unchecked until the folder is there"
            )
            console.print(
                printable(
                    f"{spec.id}: stems {', '.join(spec.stems)} from {spec.stem_model} "
                    f"(licence {licence})"
                ),
                markup=False,
                highlight=False,
            )
    unchecked = {model for (model, _), family in checked.families.items() if family is None}
    for model in sorted(unchecked):
        console.print(
            f"[yellow]note:[/] {escape(printable(model))}: limits unchecked until the weights "
            "are present (`build` checks them once they are)",
            highlight=False,
        )
    minutes = sum(spec.duration_s for spec in specs) / 60
    models = sorted({spec.model for spec in specs if not spec.source})
    # A folder as the build resolves it: relative to the manifest, not to where this runs.
    storage = checked.storage
    where = str(storage.root) if isinstance(storage, LocalStorage) else checked.storage_url
    console.print(
        f"[green]valid[/]: {len(specs)} tracks, {minutes:.1f} min of audio, "
        f"models: {escape(printable(', '.join(models) or 'none'))}; "
        f"storage: {escape(printable(where))}"
        + (f"; usage: {loaded.usage}" if loaded.usage else ""),
        highlight=False,
    )


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Write to this .json file instead of stdout.", callback=_fits
        ),
    ] = None,
    sidecar: Annotated[
        bool,
        typer.Option(
            "--sidecar",
            help="The engine sidecar's schema (<track>.json; docs/sidecar.schema.json) instead.",
        ),
    ] = False,
) -> None:
    """Print the manifest's JSON Schema (for editor completion; committed under manifests/), or
    with --sidecar the engine sidecar's."""
    if sidecar:
        from soundtrack.sidecar import json_schema
    else:
        from soundtrack.schema import json_schema

    if output is not None:
        try:
            if output.is_dir():
                raise InputError(f"--output {output} is a folder: give a .json file in it")
            if output.suffix.lower() != ".json":
                raise InputError(f"--output {output}: give a .json file (a schema is JSON)")
            _writable_folder(output.absolute().parent, "--output's folder")
        except InputError as exc:
            fail(exc)
    from soundtrack.atomic import atomic_path

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    try:
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            # Put in place once written whole: a failed write leaves the file as it was, and
            # a link there is replaced, not written through (to the manifest, say).
            with atomic_path(output) as tmp:
                tmp.write_text(text)
    except OSError as exc:
        where = "stdout" if output is None else str(output)
        fail(SoundtrackError(f"cannot write the schema to {where}: {exc.strerror or exc}"))


# --- generate, models make-tiny (issue 3) ---


def _fail_generation(exc: SoundtrackError) -> NoReturn:
    """Like fail(), but a model that cannot be loaded is bad input too (exit 2)."""
    fail(InputError(str(exc)) if isinstance(exc, ModelLoadError) else exc)


def _quiet_libraries() -> None:
    """Our own progress and errors replace the model libraries' loading bars, config warnings
    and torch's notice about the weight norm diffusers' VAE uses. Set before those libraries
    load (a build imports them only once it renders); a user's own settings win."""
    import os
    import warnings

    for name, value in (
        ("TQDM_DISABLE", "1"),  # transformers' and diffusers' loading bars
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", ".*torch.nn.utils.weight_norm", FutureWarning)


def _audition_path(prompt: str, seed: int) -> Path:
    """A new file named from the prompt and seed: an earlier take of them (another model, other
    settings) is kept, and the new one named as its next take (`.take2.wav`)."""
    words = "".join(c if c.isalnum() else " " for c in prompt.lower()).split()[:5]
    # A file name has a length limit (255 bytes): a long word is cut, not passed on.
    stem = f"{'-'.join(words)[:60].strip('-') or 'audition'}-{seed}"
    path, number = Path(f"{stem}.wav"), 1
    while path.exists() or path.is_symlink():
        number += 1
        path = Path(f"{stem}.take{number}.wav")
    return path


def _writable_folder(folder: Path, what: str) -> None:
    """That `folder` (made later, if missing) can hold files: its nearest existing folder takes
    one, so a path nothing can be written to is bad input before any work, not a traceback
    after it. Writes nothing that stays."""
    import tempfile

    if folder.is_symlink() and not folder.exists():
        raise InputError(f"{what} {folder} is a link to nothing: give a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None


def _holds_model(folder: Path) -> bool:
    """Whether `folder` is a model's (a pipeline's index, or a config beside safetensors)."""
    return (folder / "model_index.json").is_file() or (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    )


def _audition_request(
    prompt: str, duration_s: float, seed: int, fields: dict[str, Any]
) -> GenerationRequest:
    """The request a manifest track with this prompt and these fields (None: absent) makes,
    each field checked as a manifest's is and named by its option."""
    from soundtrack.manifest import track_problems
    from soundtrack.models import GenerationRequest
    from soundtrack.resolve import full_prompt
    from soundtrack.spec import Sampling

    given = {name: value for name, value in fields.items() if value is not None}
    track, problems = track_problems({"id": "audition", "prompt": prompt, **given})
    if track is None:
        raise _option_error(problems)
    return GenerationRequest(
        "audition",
        full_prompt(track) or prompt,
        duration_s,
        seed,
        Sampling(),
        bpm=track.bpm,
        key=track.key,
        time_signature=track.time_signature,
        lyrics=track.lyrics,
        negative_prompt=track.negative_prompt,
        plain_prompt=full_prompt(track, musical_tags=False),
    )


def _typed_model(model: str, *, beside: Path | None = None) -> str:
    """A model folder typed on the command line is one relative to where it was typed: its
    absolute path, as a manifest's is resolved against the manifest's folder. A hub id that a
    folder `beside` the manifest would shadow is refused: which model runs, and under which
    licence, would depend on the manifest's repository, not on what was typed."""
    from soundtrack.catalog import is_local
    from soundtrack.schema import model_problem

    if problem := model_problem(model, "--model"):
        raise InputError(problem)
    if is_local(model, base=Path.cwd()):
        return str(user_path(model).resolve())
    if beside is not None and (beside / model).exists():
        raise InputError(
            f"--model {printable(model)}: not a folder here, but one beside the manifest has that "
            f"name ({printable(str((beside / model).resolve()))}), which the build would load "
            "instead of the hub's: give that folder's path, or rename it"
        )
    return model


def _check_taken(family: Family, given: dict[str, Any]) -> None:
    """Refuse, naming the option, what the model's family does not take."""
    from soundtrack.catalog import untaken

    problems = untaken(family, given)
    if problems:
        raise _option_error(problems)


def _option_error(problems: list[tuple[str, str]]) -> InputError:
    """Problems with fields, each named by its option (lyrics: --lyrics)."""
    lines = [f"--{field.replace('_', '-')}: {problem}" for field, problem in problems]
    if len(lines) == 1:
        return InputError(lines[0])
    return InputError(f"{len(lines)} problems with the options", lines)


def _check_audition(model: str, request: GenerationRequest, target: Path) -> Family | None:
    """What `generate` can tell before loading a model: a seed, length and prompt a manifest
    takes, a WAV outside the model's files, and a length and inputs the model's family takes
    (from the files or the catalogue, as `validate` reads them). The family, when known."""
    from huggingface_hub import constants

    from soundtrack.catalog import FAMILIES, family_name
    from soundtrack.models import check_request
    from soundtrack.schema import MAX_DURATION_S, MIN_DURATION_S, SEED_MAX

    seed, duration_s = request.seed, request.duration_s
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be 0 to {SEED_MAX}, as in a manifest (got {seed})")
    if not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:  # NaN fails too
        raise InputError(
            f"--duration must be {MIN_DURATION_S:g} to {MAX_DURATION_S:g} s, as in a manifest "
            f"(got {duration_s:g})"
        )
    check_request(request)
    if problem := path_problem(str(target)):
        raise InputError(f"--output {problem}")
    if target.is_dir():
        raise InputError(f"--output {target} is a folder: give a .wav file in it")
    if target.exists() and not target.is_file():  # written beside and renamed over it
        raise InputError(f"--output {target} is not a regular file (a device or pipe)")
    if target.suffix.lower() != ".wav":
        raise InputError(f"--output {target}: give a .wav file (generate writes a WAV)")
    local = user_path(model)
    folder = local if local.is_dir() else Path(constants.HF_HUB_CACHE)
    if target.absolute().resolve().is_relative_to(folder.absolute().resolve()):
        raise InputError(
            f"--output {target} is inside {folder}, where the model's files are: give a path "
            "outside it"
        )
    holder = next((f for f in target.absolute().resolve().parents if _holds_model(f)), None)
    if holder is not None:
        raise InputError(
            f"--output {target} is inside the model folder {holder}, whose revision hashes "
            "every file: give a path outside it"
        )
    _writable_folder(target.absolute().parent, "--output's folder")
    family = FAMILIES.get(family_name(model) or "")
    if family is None:
        return None
    if family.max_call_s is not None and duration_s > family.max_call_s:
        raise InputError(
            f"--duration {duration_s:g} s is longer than {family.name} models render "
            f"({family.max_call_s:g} s at most)"
        )
    _check_taken(family, {"lyrics": request.lyrics, "negative_prompt": request.negative_prompt})
    return family


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does: what it was writing is removed on the way out
    (its default ends the process on the spot, leaving a half-written temporary file)."""
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        if before is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGTERM, before)


@contextmanager
def _removed_unless_finished(directory: Path) -> Iterator[None]:
    """What the command writes into a folder that was new or empty is removed when it does
    not finish (stopped, failed): it is no model, and a rerun would find it in its way."""
    made = not directory.exists() and not directory.is_symlink()
    empty = directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir())
    try:
        yield
    except BaseException:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        elif empty:
            for written in directory.iterdir():
                if written.is_dir() and not written.is_symlink():
                    shutil.rmtree(written, ignore_errors=True)
                else:
                    written.unlink(missing_ok=True)
        raise


@app.command()
def generate(
    model: Annotated[
        str, typer.Option(help="Hub id (facebook/musicgen-small) or a local model directory.")
    ],
    prompt: Annotated[str, typer.Option(help="What to play: style, key, tempo, instruments.")],
    duration: Annotated[
        float,
        typer.Option(
            help="Seconds, as a manifest's duration (MusicGen renders over 30 s in overlapping "
            "windows; other families have their own longest render)."
        ),
    ],
    seed: Annotated[
        int | None,
        typer.Option(help="Seed (default: a random one, printed for the manifest)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="A .wav file outside the model's files, its folder made if missing; a file "
            "(or link) already there is replaced once the take is written (default: a new file "
            "named from the prompt and seed, in the current folder).",
            callback=_fits,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda, cuda:N or mps (default: $SOUNDTRACK_DEVICE, else auto)."),
    ] = None,
    bpm: Annotated[
        int | None,
        typer.Option(
            help="Tempo, as a track's bpm: words in MusicGen's prompt, conditioning for ACE-Step."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="Key, as a track's (F# minor, Bb major): words in MusicGen's prompt, "
            "conditioning for ACE-Step."
        ),
    ] = None,
    time_signature: Annotated[
        str | None,
        typer.Option(
            help="E.g. 3/4, as a track's: words in MusicGen's prompt, conditioning for ACE-Step."
        ),
    ] = None,
    lyrics: Annotated[
        str | None,
        typer.Option(
            help="Words to sing (ACE-Step, Bark); ACE-Step without them plays an instrumental."
        ),
    ] = None,
    negative_prompt: Annotated[
        str | None,
        typer.Option(help="What to steer away from (Stable Audio Open)."),
    ] = None,
) -> None:
    """Audition one prompt before writing it into a manifest: renders a 32-bit float WAV.

    The options a track takes (--bpm, --key, --time-signature, --lyrics, --negative-prompt) are
    checked and given to the model as a manifest's are.

    Exit 0 on success, 1 when generation fails (NaN or silent output), 2 for bad input or a
    model that cannot be loaded, 130 when stopped (Ctrl-C or SIGTERM): -o is left as it was.
    """
    import secrets

    _quiet_libraries()  # before anything imports tqdm, which reads its settings once
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from soundtrack.audio import write_wav
    from soundtrack.catalog import FAMILIES, family_name
    from soundtrack.errors import GenerationError
    from soundtrack.models import get_generator

    seed = secrets.randbelow(2**31) if seed is None else seed
    target = output or _audition_path(prompt, seed)
    musical = {"bpm": bpm, "key": key, "time_signature": time_signature}
    takes = {"lyrics": lyrics, "negative_prompt": negative_prompt}
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with _sigterm_as_ctrl_c():
        try:
            request = _audition_request(prompt, duration, seed, {**musical, **takes})
            model = _typed_model(model)
            family = _check_audition(model, request, target)
            with err_console.status(escape(printable(f"loading {model}"))):
                generator = get_generator(model, device=device)
            if family is None:  # a hub id known only once its files are here
                _check_taken(FAMILIES[family_name(model) or ""], takes)
            with Progress(*columns, console=err_console) as bar:
                task = bar.add_task(f"rendering ({generator.device})", total=None)
                try:
                    (result,) = generator.generate(
                        [request],
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                    )
                except Exception as exc:  # as a build fails the track: what the library raised
                    raise GenerationError(request.track_id, f"the render failed: {exc!r}") from exc
            if isinstance(result, GenerationError):
                raise result
            target.parent.mkdir(parents=True, exist_ok=True)
            write_wav(target, result.audio, result.sample_rate)
        except SoundtrackError as exc:
            _fail_generation(exc)
    seconds = result.audio.shape[-1] / result.sample_rate  # Bark may end before the duration
    console.print(
        f"wrote {printable(str(target))}: {seconds:g} s at {result.sample_rate} Hz, seed {seed} "
        f"(put `seed: {seed}` in the manifest to keep this take)\n"
        + printable(
            f"model {generator.model_id}, revision {generator.revision}, "
            f"licence {generator.license}"
        ),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _model_target_problem(directory: Path, family: str, *, tiny: bool) -> str | None:
    """Why a model may not be written to `directory`: it must be a folder files can be written
    to, new, empty, or a model of the same family (a tiny one, when `tiny`) to rewrite, never a
    folder of other files or weights."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} is a file, not a folder; give a new or empty folder"
    try:
        _writable_folder(directory, "DIRECTORY")
    except InputError as exc:
        return str(exc)
    if not directory.exists() or not any(directory.iterdir()):
        return None
    from soundtrack.catalog import family_name
    from soundtrack.licences import card_licence
    from soundtrack.models.tiny import TINY_LICENSE
    from soundtrack.separate import is_separator_folder

    try:
        written = family_name(str(directory.resolve()))
    except ModelLoadError:  # a separator's folder (not a generator), or no model at all
        written = "demucs" if is_separator_folder(directory) else None
    if written == family and (not tiny or card_licence(directory / "README.md") == TINY_LICENSE):
        return None
    what = f"tiny {family}" if tiny else family
    return (
        f"{directory} is not empty and holds no {what} model: a model is written only to a new "
        f"or empty folder, or over a {what} model"
    )


# family: (module, function, what it writes); a model library is imported only when asked for.
_TINY_MAKERS = {
    "musicgen": ("soundtrack.models.tiny", "make_tiny", "MusicGen"),
    "ace-step": ("soundtrack.models.tiny_acestep", "make_tiny_acestep", "ACE-Step 1.5"),
    "stable-audio": (
        "soundtrack.models.tiny_stableaudio",
        "make_tiny_stableaudio",
        "Stable Audio Open",
    ),
    "bark": ("soundtrack.models.tiny_bark", "make_tiny_bark", "Bark"),
    "demucs": ("soundtrack.separate", "make_tiny_demucs", "HTDemucs"),
}


@models_app.command("make-tiny")
def models_make_tiny(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Where to write the model: a new or empty folder, or a tiny model of the same "
            "family to rewrite (created if missing).",
            callback=_fits,
        ),
    ],
    family: Annotated[
        str,
        typer.Option(
            help="musicgen or bark (transformers), ace-step or stable-audio (diffusers "
            "pipelines), demucs (a source separator for stems)."
        ),
    ] = "musicgen",
    stereo: Annotated[
        bool,
        typer.Option("--stereo", help="MusicGen: two channels, like facebook/musicgen-stereo-*."),
    ] = False,
) -> None:
    """Write a tiny random-weight model (a few MB) for smoke tests without downloading weights.

    Its output is noise, not music; it differs per prompt and per seed and loads like any
    local model: `--model DIR` or `model: DIR` in a manifest. MusicGen renders 32 kHz, ACE-Step
    48 kHz stereo, Stable Audio 44.1 kHz stereo, Bark 24 kHz mono. Demucs (`stem_model: DIR`)
    splits 44.1 kHz stereo into drums, bass, other and vocals (noise too).
    """
    if family not in _TINY_MAKERS:
        *others, last = _TINY_MAKERS
        fail(InputError(f"--family must be {', '.join(others)} or {last}, got {family!r}"))
    _quiet_libraries()
    problem = _model_target_problem(directory, family, tiny=True)
    if problem:
        fail(InputError(problem))
    if family == "bark" and stereo:
        fail(InputError("--stereo is for --family musicgen (Bark is mono)"))
    if family != "musicgen" and stereo:
        fail(InputError(f"--stereo is for --family musicgen ({family} is always stereo)"))
    module, function, what = _TINY_MAKERS[family]
    make = getattr(importlib.import_module(module), function)  # imported only when asked for
    with _sigterm_as_ctrl_c(), _removed_unless_finished(directory):
        if family == "musicgen":
            make(directory, stereo=stereo)
        else:
            make(directory)
    kind = ("stereo " if stereo else "mono ") if family == "musicgen" else ""
    _said(f"wrote a tiny random-weight {kind}{what} to {directory}")


@models_app.command("convert-demucs")
def models_convert_demucs(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A published Demucs checkpoint (.th, e.g. htdemucs's 955717e8-8726e21a.th "
            "from torch's hub cache), or a bag's .yaml (htdemucs_ft.yaml) with its .th files "
            "beside it.",
            show_default=False,
            callback=_fits,
        ),
    ],
    directory: Annotated[
        Path,
        typer.Argument(
            help="Where to write the model: a new or empty folder, or a converted Demucs "
            "model to rewrite (created if missing).",
            callback=_fits,
        ),
    ],
    licence: Annotated[
        str, typer.Option(help="The weights' licence, recorded in every lock (Demucs': MIT).")
    ] = "MIT",
) -> None:
    """Convert a Demucs checkpoint, once, into a directory `stem_model:` can name.

    Demucs publishes pickles, which could run code when loaded. This reads the file with
    torch's weights-only reader, which accepts only tensors, plain data, fractions and
    Demucs' own HTDemucs, HDemucs and Demucs classes (a file needing anything else is refused,
    never run), and writes config.json (the class and its arguments as JSON) and
    model.safetensors. The pipeline loads only such directories and never downloads weights.
    diffq-quantized checkpoints (mdx_q, mdx_extra_q) are not supported.

    Exit 0 on success, 2 when the checkpoint cannot be converted.
    """
    from soundtrack.separate import convert_demucs

    problem = _model_target_problem(directory, "demucs", tiny=False)
    if problem:
        fail(InputError(problem))
    with _sigterm_as_ctrl_c(), _removed_unless_finished(directory):
        try:
            convert_demucs(checkpoint, directory, licence=licence)
        except ModelLoadError as exc:
            fail(InputError(str(exc)))
    _said(f"wrote {directory} from {checkpoint.name}")


# --- inspect (issue 4) ---


def _finite(value: float | int | None) -> float | int | None:
    """JSON has no infinity: digital silence's -inf levels become null."""
    return None if isinstance(value, float) and value in (float("inf"), float("-inf")) else value


@app.command("inspect")
def inspect_files(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Audio files (OGG, MP3, WAV, FLAC, ...).", show_default=False, callback=_fits
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")
    ] = False,
    loudness: Annotated[
        str, typer.Option(help="Loudness profile to judge against: console, mobile or web.")
    ] = "console",
    duration: Annotated[
        float | None, typer.Option(help="Expected seconds (default: no duration gate).")
    ] = None,
    analysis: Annotated[
        bool,
        typer.Option(
            "--analysis",
            help="Also listen to the music: tempo, beats, bars, key, loudness range, spectral "
            "centroid, onset rate (and judge --bpm and --key).",
        ),
    ] = False,
    bpm: Annotated[
        float | None,
        typer.Option(help="With --analysis: the tempo target (the tempo gate, and its level)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="With --analysis: the key target (the key gate), e.g. A minor."),
    ] = None,
    time_signature: Annotated[
        str | None,
        typer.Option(
            "--time-signature",
            help="Beats per bar / unit (default 4/4): of a loop's bar grid, which its seam is "
            "judged against as a build judges it, and of the analysis.",
        ),
    ] = None,
) -> None:
    """Measure audio files (loudness, true peak, duration, rate, channels, loop tags) and judge
    them with the default gates; --analysis adds what the music does (tempo, key...).

    Exit 0 when every file passes, 1 when a gate fails, 2 when a file is missing, unreadable
    or cannot be measured (over two channels, NaN samples, under 0.4 s, a loop tag that does
    not fit the audio).
    """
    from rich.markup import escape

    from soundtrack.analysis import analyse_decoded, analysis_row
    from soundtrack.audio import read_audio
    from soundtrack.gates import judge
    from soundtrack.measure import measure, read_loop_tags
    from soundtrack.process import analysis_columns, as_bar_loop
    from soundtrack.spec import LOUDNESS_PROFILES, GateLimits

    if loudness not in LOUDNESS_PROFILES:
        fail(
            InputError(
                f"--loudness must be one of {', '.join(sorted(LOUDNESS_PROFILES))}, "
                f"got {loudness!r}"
            )
        )
    if duration is not None and not 0 < duration < float("inf"):  # NaN fails too
        fail(InputError(f"--duration must be a number of seconds above 0, got {duration:g}"))
    targets = _musical_targets(analysis, bpm, key, time_signature)
    reports: list[dict[str, object]] = []
    for path in files:
        try:
            audio, sample_rate = read_audio(path)  # once, for the analysis and the measures
            listened = partial(
                analyse_decoded,
                path,
                audio,
                sample_rate,
                beats_per_bar=targets.beats_per_bar,
                bpm_hint=targets.bpm,
            )
            heard = listened() if analysis else None
            # A loop of whole bars is judged as the build judges a bar loop, against its exact
            # bar grid: a loop is listened to for its tempo even without --analysis (not when
            # too short). A free loop keeps the tempo and bars heard.
            loop_tags = read_loop_tags(path, audio.shape[-1])
            if loop_tags is not None:
                grid = heard or _unless_too_short(listened)
                if grid is not None and grid.tempo_bpm is not None:
                    heard = as_bar_loop(grid, *loop_tags, targets.beats_per_bar) or heard
            metrics = measure(
                audio,
                sample_rate,
                loop_start=None if loop_tags is None else loop_tags[0],
                loop_length=None if loop_tags is None else loop_tags[1],
                bar_lines=heard.downbeats if heard else (),
            )
            gates = judge(
                metrics,
                limits=GateLimits(),
                loudness=LOUDNESS_PROFILES[loudness],
                duration_s=duration,
                loop=metrics.loop_start is not None,
                sample_rate=metrics.sample_rate,
                channels=metrics.channels,
                track_id=path.stem,
                analysis=None
                if heard is None or not analysis
                else analysis_columns(heard, targets.key, targets.bpm),
                bpm=targets.bpm,
                key=targets.key,
            )
        except SoundtrackError as exc:
            said = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            err_console.print(
                f"error: {printable(said)}",
                style="bold red",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            reports.append({"file": shown(path), "error": printable(str(exc))})
            continue
        passed = all(g.passed for g in gates if g.severity == "fail")
        report: dict[str, object] = {
            "file": shown(path),
            "passed": passed,
            "metrics": {k: _finite(v) for k, v in metrics.as_row().items()},
            "gates": [{**vars(g), "value": _finite(g.value)} for g in gates],
        }
        if heard is not None and analysis:
            report["analysis"] = {
                **analysis_row(heard),
                "beats": list(heard.beats),
                "downbeats": list(heard.downbeats),
            }
        reports.append(report)
        if as_json:
            continue
        loop = "none"
        if metrics.loop_start is not None and metrics.loop_length is not None:
            loop = (
                f"start {metrics.loop_start}, length {metrics.loop_length} samples "
                f"({metrics.loop_length / metrics.sample_rate:.3f} s)"
            )
        console.print(
            f"[bold]{escape(printable(str(path)))}[/]: {metrics.integrated_lufs:.1f} LUFS, "
            f"{metrics.true_peak_dbtp:.1f} dBTP, {metrics.duration_s:.3f} s, "
            f"{metrics.sample_rate} Hz, {metrics.channels} ch, loop: {loop}",
            highlight=False,
        )
        table = Table(title_justify="left")
        for column in ("gate", "value", "limit", "verdict"):
            table.add_column(column)
        for g in gates:
            ok = "[green]pass[/]" if g.passed else None
            bad = "[red]FAIL[/]" if g.severity == "fail" else "[yellow]warn[/]"
            table.add_row(g.name, "-" if g.value is None else f"{g.value:.4g}", g.limit, ok or bad)
        console.print(table)
        if heard is not None and analysis:
            _print_analysis(heard)
        console.print("[green]passed[/]" if passed else "[red]rejected[/]")
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    if any("error" in r for r in reports):
        raise typer.Exit(EXIT_BAD_INPUT)
    if not all(r["passed"] for r in reports):
        raise typer.Exit(EXIT_FAILED)


@dataclass(frozen=True)
class _Targets:
    bpm: float | None
    key: str | None
    beats_per_bar: int


def _musical_targets(
    analysis: bool, bpm: float | None, key: str | None, signature: str | None
) -> _Targets:
    """Check --bpm, --key and --time-signature like the manifest's fields (exit 2 when wrong)."""
    from soundtrack.keys import parse_key
    from soundtrack.schema import TIME_SIGNATURE_PATTERN

    if not analysis and (bpm is not None or key is not None):
        fail(InputError("--bpm and --key are for the analysis: add --analysis"))
    if bpm is not None and not 20 <= bpm <= 300:
        fail(InputError(f"--bpm must be 20-300, got {bpm:g}"))
    signature = signature or "4/4"
    match = re.fullmatch(TIME_SIGNATURE_PATTERN, signature)
    if match is None:
        fail(InputError(f"--time-signature must look like 4/4 or 6/8, got {signature!r}"))
    try:
        normalised = None if key is None else parse_key(key).name
    except ValueError as exc:
        fail(InputError(f"--key: {exc}"))
    return _Targets(bpm, normalised, int(match.group(1)))


def _unless_too_short(listened: Callable[[], Analysis]) -> Analysis | None:
    """The analysis of a loop for its bar grid, or None when it is too short to listen to."""
    try:
        return listened()
    except AudioError:
        return None


def _analysed(path: Path, targets: _Targets) -> Analysis:
    from soundtrack.analysis import analyse_file

    return analyse_file(path, beats_per_bar=targets.beats_per_bar, bpm_hint=targets.bpm)


def _print_analysis(heard: Analysis) -> None:
    from soundtrack.analysis import analysis_row

    table = Table(title="analysis", title_justify="left")
    table.add_column("measure")
    table.add_column("value")
    for name, value in analysis_row(heard).items():
        table.add_row(
            name,
            "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value),
        )
    console.print(table)


@app.command()
def compare(
    a: Annotated[
        Path,
        typer.Argument(
            help="The first recording (the reference).", show_default=False, callback=_fits
        ),
    ],
    b: Annotated[
        Path,
        typer.Argument(
            help="The second recording (the render).", show_default=False, callback=_fits
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
    ] = False,
) -> None:
    """Compare two recordings: tempo, key, loudness range, spectral centroid and timbre, side by
    side, and a one-line verdict (what a track's `reference:` adds to the build report).

    Exit 0, or 2 when a file is missing, unreadable or cannot be analysed (NaN samples, under
    0.4 s). A file of more than two channels is heard mixed down to one.
    """
    from soundtrack.analysis import compare as compared
    from soundtrack.audio import check_file

    try:
        for path in (a, b):  # both there before either is analysed
            check_file(path)
        heard = [_analysed(path, _Targets(None, None, 4)) for path in (a, b)]
    except SoundtrackError as exc:
        if as_json:  # a script reads why from stdout, as from inspect --json
            typer.echo(
                json.dumps({"a": shown(a), "b": shown(b), "error": printable(str(exc))}, indent=2)
            )
        fail(InputError(str(exc)))
    result = compared(*heard)
    if as_json:
        typer.echo(json.dumps({"a": shown(a), "b": shown(b), **result.to_dict()}, indent=2))
        return
    table = Table(
        title=escape(f"a: {printable(str(a))}\nb: {printable(str(b))}"), title_justify="left"
    )
    for column in ("measure", "a", "b", "difference"):
        table.add_column(column)
    for row in result.rows:
        table.add_row(row.name, row.a, row.b, row.difference)
    console.print(table)
    console.print(result.verdict, highlight=False)


# --- build (issue 5) ---


def _check_review_server() -> None:
    """A review is answered in the Prefect UI of a server that outlives the build: the
    temporary one started without PREFECT_API_URL dies with it, so nobody could answer."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise InputError(
            "review: required (or --review) needs a Prefect server a reviewer can reach: set "
            "PREFECT_API_URL (e.g. `prefect server start`, then "
            "PREFECT_API_URL=http://127.0.0.1:4200/api); the temporary server a build starts "
            "without it stops with the build, so nobody could answer"
        )


@app.command()
def build(
    manifest: ManifestArg,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Output folder (relative to the current directory) or s3://bucket/prefix "
            "(default: the manifest's storage, relative to the manifest).",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Build only this track id (repeatable); others stay as is."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Master, judge and publish tracks again even when already published (renders "
            "this machine's render cache holds are not rendered again).",
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the build report (JSON) here.", callback=_fits),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit", help="Write a JUnit XML file: one testcase per track.", callback=_fits
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Render every track with this model (hub id or local directory)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: auto).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=64, help="Tracks per generate call.")
    ] = 4,
    render_pool: Annotated[
        str | None,
        typer.Option(
            "--render-pool",
            help="Render on a GPU work pool: the render-batch deployment to send batches, and "
            "mixes to separate into stems, to (e.g. render-batch/gpu). Renders and stems' "
            "sources come back through the storage.",
        ),
    ] = None,
    storage_wait_s: Annotated[
        float | None,
        typer.Option(
            "--storage-wait-s",
            min=0,
            max=24 * 3600,  # schema.MAX_STORAGE_WAIT_S (not imported: --help stays fast)
            help="Wait this many seconds for another build of the soundtrack to the same storage "
            "to finish, then exit 75 (default: the manifest's storage_wait_s, 900).",
        ),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            help="GATE=SEVERITY (fail, warn or off) for every track, repeatable: e.g. "
            "tempo=warn for a smoke build on a tiny random model, whose noise has no tempo.",
        ),
    ] = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Before publishing, pause for a person to approve or reject each rendered track "
            "in the Prefect UI (as `review: required` in the manifest). Needs PREFECT_API_URL.",
        ),
    ] = False,
) -> None:
    """Build a soundtrack: generate, master, gate, encode and publish every changed track.

    Runs the Prefect flow `build-soundtrack` (on the server at PREFECT_API_URL, or a temporary
    local one). Writes soundtrack.lock.json beside the assets. Exit 0 when every track is
    approved or already published, 1 when a track was rejected or failed, the temporary
    Prefect server did not start or none answers at PREFECT_API_URL, 2 for invalid input,
    outputs overlapping inputs, storage that cannot be used (credentials, bucket, endpoint), or
    --review without PREFECT_API_URL, found before the flow runs, 75 when
    another build of the soundtrack held the storage past --storage-wait-s (try again later),
    130 when stopped (Ctrl-C, SIGTERM, or cancelled in the Prefect UI).
    """
    _quiet_libraries()  # before anything imports tqdm, which reads its settings once
    from soundtrack.build import Options, prepare
    from soundtrack.storage.url import names_a_folder

    if out is not None and not out.strip():
        # An unset CI variable (`--out "$ASSETS"`) would otherwise publish into the cwd.
        fail(InputError("--out is empty: give a folder or an s3:// URL"))
    if out is not None and names_a_folder(out):
        # A folder typed on the command line means one relative to where it was typed; links
        # stay unfollowed, so storage can refuse one to nothing rather than make its target.
        out = str(user_path(out).absolute())
    if model is not None:
        if not model.strip():
            fail(InputError("--model is empty: give a hub id or a model folder"))
        try:
            model = _typed_model(model, beside=without_dotdot(manifest).parent)  # as inputs are
        except InputError as exc:
            fail(exc)
    # 1. Check everything a user gave before starting Prefect: bad input writes nothing. The
    # flow checks again, the same way, where it runs (a worker has no CLI before it).
    options = Options(
        only=only or (),
        force=force,
        out=out,
        model=model,
        device=device,
        batch_size=batch_size,
        local_models=render_pool is None,
        storage_wait_s=storage_wait_s,
        gates=gate or (),
        review=review,
    )
    try:
        # Prefect ends a flow on SIGTERM, then sends it again to end the process (143): as
        # Ctrl-C, it ends here instead, with 130, and the run's last log lines are sent first;
        # so does one while the inputs are checked or the temporary server starts.
        with _sigterm_as_ctrl_c():
            prepared = prepare(manifest, options, reports=[p for p in (report, junit) if p])
            if review or prepared.checked.manifest.review == "required":
                _check_review_server()
            # A report left by an earlier build would read as this one's after an exit 75 or
            # a crash.
            for stale in (report, junit):
                if stale is not None and stale.is_file():
                    stale.unlink()
            # 2. Run the flow with a progress bar fed by the tasks' events.
            state = _run_flow(prepared.plan.total, manifest, options, render_pool)
    except SoundtrackError as exc:
        fail(exc)
    except KeyboardInterrupt:
        # Steps under way ended first; the lock is written last, so the storage holds the last
        # build written in full.
        err_console.print(
            "[bold red]interrupted:[/] the storage holds the last build published in full; "
            "build again to finish this one",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if state.is_cancelled() or state.is_cancelling():
        # Cancelled in the Prefect UI: while it waited for its review (nothing published), or
        # after its work, which leaves the run Cancelling and its report unread.
        err_console.print(
            f"[bold red]cancelled:[/] {escape(printable(redact(state.message or 'in Prefect')))}; "
            "the storage holds the last build published in full",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    from flows.build import BuildRejected

    result = state.result(raise_on_failure=False)
    if isinstance(result, BuildRejected):
        result = result.report  # tracks rejected or failed: the table, then exit 1
    if isinstance(result, SoundtrackError):
        fail(result)  # bad input found by the flow (a missing model): exit 2; storage busy: 75
    from prefect.exceptions import FailedRun

    if isinstance(result, FailedRun):
        # The server failed the run itself: a review nobody answered in time (the flow's log
        # said so); nothing was published.
        _build_failed(state.message or str(result))
    if isinstance(result, BaseException):
        raise result  # a bug: in full
    from soundtrack.report import BuildReport, to_junit

    outcome = BuildReport.model_validate(result)

    # 3. Report: a table, the JSON report, the JUnit file, the exit code.
    _print_report(outcome)
    unwritten = []
    for path, text in ((report, outcome.to_json()), (junit, to_junit(outcome))):
        if path is not None and (problem := _write_report(path, text)):
            unwritten.append(f"{path}: {problem}")
    for line in unwritten:
        err_console.print(
            f"error: cannot write {printable(line)}", style="bold red", markup=False, soft_wrap=True
        )
    if state.is_failed():
        _build_failed(state.message or "see the report")
    if unwritten:
        raise typer.Exit(EXIT_FAILED)


def _write_report(path: Path, text: str) -> str | None:
    """Write a report whole or not at all (a full disk leaves none); why not, if it was not."""
    from soundtrack.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class _PrintedAbove:
    """What Prefect's console log handler prints with while a progress bar shows: the bar's
    console, which prints above the bar, each line as it is (no markup read into it)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def print(self, *objects: object, **_: object) -> None:
        texts = (Text(o) if isinstance(o, str) else o for o in objects)
        self._console.print(*texts, soft_wrap=True, highlight=False)


@contextmanager
def _prefect_logs_above_the_bar(console: Console) -> Iterator[None]:
    """Prefect's console log lines printed above `console`'s progress bar: its handlers print
    with a console of their own, on the terminal beneath the bar, which ran on from the bar's
    line (a Rich console prints above only its own live display)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [
        handler
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]
    own = [handler.console for handler in handlers]
    if console.is_terminal:  # elsewhere the bar is drawn once, at its end: nothing to cross
        for handler in handlers:
            handler.console = cast("Console", _PrintedAbove(console))
    try:
        yield
    finally:
        for handler, before in zip(handlers, own, strict=True):
            handler.console = before


def _run_flow(total: int, manifest: Path, options: Options, render_pool: str | None) -> Any:
    """The build flow's final state, run with a progress bar fed by its tasks' events (on a
    temporary Prefect server when PREFECT_API_URL is unset)."""
    from flows.build import build_soundtrack
    from flows.server import start_temporary_server
    from soundtrack import events

    start_temporary_server()  # no PREFECT_API_URL: one that waits long enough, dies with us
    with _track_progress(total) as on_event:
        unsubscribe = events.subscribe(on_event)
        try:
            return build_soundtrack(
                str(without_dotdot(manifest)),
                only=list(options.only) or None,
                force=options.force,
                out=options.out,
                model=options.model,
                device=options.device,
                batch_size=options.batch_size,
                render_pool=render_pool,
                storage_wait_s=options.storage_wait_s,
                gates=list(options.gates) or None,
                review=options.review,
                return_state=True,
            )
        finally:
            unsubscribe()


@contextmanager
def _track_progress(total: int) -> Iterator[Callable[[str, str], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from soundtrack import events

    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        ) as progress,
        _prefect_logs_above_the_bar(err_console),
    ):
        bar = progress.add_task("tracks", total=total)
        seen: set[str] = set()

        def on_event(track_id: str, stage: str) -> None:
            progress.update(bar, description=f"{track_id}: {stage}")
            if stage in events.FINAL and track_id not in seen:
                seen.add(track_id)
                progress.advance(bar)

        yield on_event


def _print_report(report: Any) -> None:
    table = Table(title=f"{report.soundtrack}", title_justify="left")
    # Folded, not cut: at a CI log's 80 columns a long track id hid every status ("appro…");
    # an id up to 24 characters keeps its line.
    longest = max((len(track.id) for track in report.tracks), default=0)
    table.add_column("track", overflow="fold", min_width=min(longest, 24))
    table.add_column("status", no_wrap=True, min_width=len("approved"))
    for column in ("LUFS", "dBTP", "seconds", "bpm", "key", "files / reason"):
        table.add_column(column, overflow="fold")
    colours = {"approved": "green", "cached": "cyan", "rejected": "red", "failed": "red"}
    reasons: dict[str, list[str]] = {}
    for track in report.tracks:
        gates = {g.name: g.value for g in track.gates}
        seconds = track.files[0].duration_s if track.files else None
        analysis = track.analysis or {}
        if track.reason:
            reasons.setdefault(track.reason, []).append(track.id)
        table.add_row(
            track.id,
            f"[{colours[track.status]}]{track.status}[/]",
            _number(gates.get("loudness")),
            _number(gates.get("true_peak")),
            _number(seconds),
            _number(analysis.get("tempo_bpm")),
            str(analysis.get("key") or ""),
            ", ".join(f.format for f in track.files if f.stem is None)
            or escape(_headline(printable(track.reason or ""))),
        )
    console.print(table)
    for track in report.tracks:
        if track.takes and track.status != "cached":  # a cached track's takes are history
            _said(f"{track.id}: {track.takes_summary()}")
        if track.variation_of:
            theme = {g.name: g for g in track.gates}.get("theme")
            heard = f" (theme {_number(theme.value)}, {theme.limit})" if theme else ""
            _said(f"{track.id}: a variation of {track.variation_of}{heard}")
        if track.stems:
            _said(f"{track.id}: stems {track.stems_summary()}")
        if track.reference:
            _said(f"{track.id}: {track.reference.get('verdict', '')}")
    # A long reason (say, how to provide a model) is printed once, not in every row.
    for reason, track_ids in reasons.items():
        _said(f"{', '.join(track_ids)}: {reason}")
    for warning in report.warnings:
        err_console.print(
            f"[yellow]warning:[/] {escape(printable(warning))}", highlight=False, soft_wrap=True
        )
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    console.print(f"{counts}; model loads: {report.model_loads}", highlight=False)


def _headline(reason: str, limit: int = 40) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1].rstrip() + "…"


def _number(value: float | str | None) -> str:
    return "" if value is None or isinstance(value, str) else f"{value:.1f}"


# --- gc (issue 6) ---


@app.command()
def gc(
    storage_url: StorageArg,
    soundtrack: Annotated[
        str | None,
        typer.Option(help="Only this soundtrack (default: every soundtrack with an index there)."),
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete what is listed (default: only list it).")
    ] = False,
) -> None:
    """List files no lock references that this tool's write journal proves it wrote (older
    builds); --delete removes them. Everything else is kept.

    Prints the keys that are ours one per line on stdout, and each kept one ("not ours, kept")
    on stderr. Exit 0 on success, 1 when storage fails, 2 for bad input, 75 when a build of
    the soundtrack is publishing (--delete waits for none).
    """
    from soundtrack.storage import INDEX_NAME, open_storage
    from soundtrack.storage.base import Garbage

    try:
        storage = open_storage(storage_url, base_dir=Path.cwd())
        names = [soundtrack] if soundtrack is not None else storage.soundtracks()
        if not names:
            # A mistyped path, or a soundtrack's own folder, would otherwise pass as clean.
            raise InputError(
                f"{storage_url}: no soundtrack is published here (no <soundtrack>/{INDEX_NAME}); "
                "give the storage a build publishes to (its --out or the manifest's storage), "
                "not a soundtrack's own folder"
            )
        if soundtrack is not None and not storage.has_soundtrack(soundtrack):
            # Found before the lock is taken: taking it makes the soundtrack's folder.
            raise InputError(
                f"{storage_url}: no index for soundtrack {soundtrack!r} (no {soundtrack}/"
                f"{INDEX_NAME}): nothing tells which files are in use"
            )
        with ExitStack() as held:
            if delete:
                # A build publishing meanwhile may reuse a file its lock does not list yet.
                for name in names:
                    held.enter_context(storage.hold(name, wait_s=0, on_wait=lambda _: None))
                    # A stopped build's publish is finished first: its lock names files that
                    # the old lock does not.
                    for line in storage.repair(name):
                        err_console.print(printable(line), markup=False, soft_wrap=True)
            found: list[Garbage] = []
            skipped: list[SoundtrackError] = []
            for name in names:
                try:
                    _check_lock(storage, name)
                    found.append(storage.unreferenced(name))
                except (InputError, StorageError) as exc:
                    if soundtrack is not None or (isinstance(exc, StorageError) and exc.transient):
                        raise
                    # A lock that cannot tell what is in use keeps its soundtrack's files;
                    # the other soundtracks' gc goes on.
                    skipped.append(exc)
            ours = [key for garbage in found for key in garbage.ours]
            # Keys are anyone's to name: a control character in one must not colour, retitle
            # or split what the user reads (nor the one-key-per-line list a script reads).
            for key in ours:
                typer.echo(printable(key))
            for garbage in found:
                for key in garbage.kept:
                    err_console.print(
                        f"not ours, kept: {printable(key)}", markup=False, soft_wrap=True
                    )
                if not garbage.journaled:
                    err_console.print(
                        f"{garbage.soundtrack}: no journal at {printable(garbage.journal)} "
                        "(built before gc could tell its files from others'): nothing provably "
                        "ours, nothing deleted",
                        markup=False,
                        soft_wrap=True,
                    )
            if delete:
                storage.delete(ours)
    except SoundtrackError as exc:
        fail(exc)
    action = "deleted" if delete else "listed (use --delete to remove)"
    kept = sum(len(garbage.kept) for garbage in found)
    err_console.print(
        f"{len(ours)} unreferenced file(s) of ours in {len(found)} soundtrack(s) {action}; "
        f"{kept} not ours, kept" + (f"; {len(skipped)} soundtrack(s) skipped" if skipped else ""),
        highlight=False,
    )
    if skipped:
        for problem in skipped:
            _print_error(problem)
        bad_input = all(isinstance(problem, InputError) for problem in skipped)
        raise typer.Exit(EXIT_BAD_INPUT if bad_input else EXIT_FAILED)


def _check_lock(storage: Storage, soundtrack: str) -> None:
    """StorageError unless the soundtrack's lock is one a build would read: a lock of another
    schema, or missing fields, named none of the files a build would keep (gc deleted them).
    What it names outside the soundtrack's folder, gc refuses on its own."""
    from soundtrack.report import LockOfNewerVersion, LockUnreadable, parse_lock

    try:
        parse_lock(storage.read_index(soundtrack))
    except LockUnreadable as exc:
        remedy = (
            "run gc with the version that wrote it"
            if isinstance(exc, LockOfNewerVersion)
            else "a build of every track writes the lock again"
        )
        raise StorageError(
            f"{soundtrack}: its lock is unreadable ({exc}): gc cannot tell which files are in "
            f"use, and deletes none; {remedy}",
            transient=False,
        ) from None


# --- review (issue 18) ---


def _open_page(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        err_console.print(f"no web browser opened here: open {url} in one", highlight=False)


@app.command()
def review(
    storage_url: StorageArg,
    soundtrack: Annotated[
        str, typer.Option(help="The soundtrack to review (its name in the manifest).")
    ],
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.", min=0, max=65535)
    ] = 0,
) -> None:
    """Serve a soundtrack's review page on 127.0.0.1 until Ctrl-C: a player for every file,
    the sample-exact loop player, stems in sync, gates, analysis and licences.

    The server reads the lock and the files it names from the storage itself (S3 with its own
    credentials), so the page holds no credentials and no presigned links; nothing outside the
    lock is served. Prints the page's URL. Exit 0 when stopped with Ctrl-C, 1 when the storage
    fails, 2 for bad input (no such soundtrack there, a malformed storage URL, a port in use).
    """
    import tempfile
    import threading

    from soundtrack.review_server import HOST, ReviewSite, make_server
    from soundtrack.storage import open_storage
    from soundtrack.storage.base import check_name

    with tempfile.TemporaryDirectory(prefix="soundtrack-review-") as cache:
        try:
            check_name("soundtrack", soundtrack)
            storage = open_storage(storage_url, base_dir=Path.cwd())
            site = ReviewSite(storage, soundtrack, Path(cache))
            site.load()  # a missing or unreadable lock fails here, not in the browser
            try:
                server = make_server(site, port)
            except OSError as exc:
                raise InputError(f"cannot serve on {HOST}:{port}: {exc.strerror or exc}") from None
        except SoundtrackError as exc:
            fail(exc)
        url = f"http://{HOST}:{server.server_port}/"
        typer.echo(f"review page of {soundtrack}: {url}")
        err_console.print("serving until Ctrl-C", highlight=False)
        if open_browser:
            # A text browser (lynx, w3m) holds the call until it quits: on a thread of its own,
            # while the page is served.
            threading.Thread(target=_open_page, args=(url,), daemon=True).start()
        # SIGTERM stops it as Ctrl-C does, so the fetched copies (private objects) are deleted.
        with _sigterm_as_ctrl_c():
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                err_console.print("stopped", highlight=False)
            finally:
                server.server_close()
