"""The `soundtrack` command line: the face that calls the core library or the Prefect flow."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="soundtrack",
    help=(
        "Turn a game's soundtrack manifest into approved, engine-ready music assets: generate with "
        "open text-to-music models, master to a loudness target, run quality gates, encode OGG/MP3, "
        "publish to a folder or S3."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Manage generation models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True)

# --- validate (issue 2) ---

# --- generate, models make-tiny (issue 3) ---

# --- inspect (issue 4) ---

# --- build (issue 5) ---
