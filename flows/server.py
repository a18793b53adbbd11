"""The temporary Prefect server of a build run without PREFECT_API_URL: started in time, and
never left behind.

Prefect starts this server itself on first use (`SubprocessASGIServer`, one per process) and
waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (default 20 s) for it to answer. Its first
start migrates a new database, which on a busy two-core machine took longer than that: the build
died with a traceback. And Prefect stops the server from an `atexit` hook, which a build killed
with SIGKILL never runs: the server was left running.

`start_temporary_server()` starts Prefect's own server, before the flow asks for it:
1. with a startup timeout that suits a busy machine (180 s), unless the user set Prefect's;
2. on Linux, with PR_SET_PDEATHSIG: the kernel sends the server SIGKILL when the build process
   dies, whatever killed it. SIGKILL, not SIGTERM: a server sent SIGTERM while migrating
   finishes the migrations first (15 s here), and SQLite's journal makes a killed writer safe;
3. a server that does not answer in time becomes a `ServerStartError` naming the settings that
   fix it; the CLI prints it as one line and exits 1.

Everything else stays Prefect's: its command line, port choice, health check and the `atexit`
stop of a normal exit. Prefect's clients then find the server running and reuse it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.context import get_settings_context
from prefect.settings import get_current_settings

from soundtrack.errors import SoundtrackError
from soundtrack.redaction import redact

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import Settings

# A first start (migrating a new database) took 14-27 s on two cores, 39 s with both cores busy.
STARTUP_TIMEOUT_S = 180
TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Room the temporary server's database needs in PREFECT_HOME to start and record a build.
HOME_ROOM_BYTES = 64 * 2**20
ENABLED_SETTING = "PREFECT_SERVER_EPHEMERAL_ENABLED"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

logger = logging.getLogger(__name__)


class ServerStartError(SoundtrackError):
    """The temporary Prefect server did not start, so the build did not run (exit code 1)."""


def startup_timeout_s(settings: Settings | None = None) -> int:
    """Prefect's startup timeout when the user set it (environment, profile, .env or
    prefect.toml), else STARTUP_TIMEOUT_S."""
    ephemeral = (settings or get_current_settings()).server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return ephemeral.startup_timeout_seconds
    return STARTUP_TIMEOUT_S


def start_temporary_server() -> str | None:
    """Start Prefect's temporary server when the build will use one; return its API URL.

    Returns None, starting nothing, when PREFECT_API_URL is set (ServerStartError when nothing
    answers there as a Prefect server). Call it on the main thread: the
    kernel ties the death signal to the thread that starts the server. Raises ServerStartError
    when Prefect's temporary server is turned off or does not answer within the startup timeout.
    """
    settings = get_current_settings()
    if settings.api.url:
        _check_answers(settings.api.url)
        return None
    if not settings.server.ephemeral.enabled:
        # A profile made with `prefect profile create` lacks the default profile's `true`.
        profile = get_settings_context().profile.name
        raise ServerStartError(
            f"PREFECT_API_URL is not set and {ENABLED_SETTING} is off (Prefect profile "
            f"{profile!r}): set PREFECT_API_URL to a running Prefect server, or "
            f"{ENABLED_SETTING}=true for a temporary one"
        )
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start_temporary_server() must run on the main thread")
    try:
        # Prefect makes only the last folder of PREFECT_HOME: under a new parent, its server
        # could not open its database and the build waited out the whole startup timeout.
        settings.home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServerStartError(
            f"PREFECT_HOME {settings.home}: cannot make the folder the temporary Prefect "
            f"server keeps its database in ({exc.strerror or exc})"
        ) from None
    database = _database_folder(settings)
    _check_room(database)
    timeout_s = startup_timeout_s(settings)
    # A server that lives for one build has nothing to report home; offline, trying prints an
    # ERROR line on every build. The user's own setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = _server_dying_with_this_process()
    try:
        server.start(timeout=timeout_s)
    except Exception as exc:  # RuntimeError on a timeout, an httpx error on a bad health reply
        process = server.server_process
        exit_code = process.poll() if process is not None else None
        if process is not None and exit_code is None:
            process.kill()  # quietly: a server stopped mid-start prints its shutdown errors
            process.wait()
        server.stop()
        _check_room(database)  # filled while it migrated: the likelier cause
        raise ServerStartError(_start_failure(exc, exit_code, timeout_s)) from exc
    return server.api_url


def _database_folder(settings: Settings) -> Path | None:
    """The folder of the temporary server's SQLite database (PREFECT_HOME by default); None
    for another database."""
    url = settings.server.database.connection_url
    scheme, _, path = (url.get_secret_value() if url else "").partition(":///")
    if not scheme.startswith("sqlite") or not path or path.startswith(":memory:"):
        return None
    return Path(path).parent


def _check_room(folder: Path | None) -> None:
    """ServerStartError when the server's SQLite database is out of room: made or migrated
    on a full disk, it waited out the startup timeout with tracebacks and was left half
    migrated, and the timeout's advice named a busy machine."""
    try:
        free = shutil.disk_usage(folder).free if folder is not None else HOME_ROOM_BYTES
    except OSError:
        return
    if free < HOME_ROOM_BYTES:
        raise ServerStartError(
            f"{folder} has {free / 2**20:.1f} MiB free: the temporary Prefect server keeps its "
            "database there (PREFECT_HOME; a first start writes about 6 MiB, and it grows with "
            "every build); make room, or set PREFECT_HOME elsewhere (a database a full disk "
            "stopped mid-migration must be deleted: prefect.db), or PREFECT_API_URL to a "
            "running Prefect server"
        )


def _check_answers(url: str) -> None:
    """ServerStartError, in one line naming the setting, unless a Prefect server answers at
    `url`: the flow would otherwise die in Prefect's client with tracebacks."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        # httpx's status errors end in a link to MDN's page on the status.
        said = str(error).strip().split(" - For more information")[0]
        reason = said.splitlines()[0] if said else type(error).__name__
        raise ServerStartError(
            f"no Prefect server answers at PREFECT_API_URL={redact(url)} ({reason}): start it, "
            "or unset PREFECT_API_URL for a temporary one"
        )


def _start_failure(exc: Exception, exit_code: int | None, timeout_s: int) -> str:
    """One line: what went wrong, and the settings that fix it."""
    server = "the temporary Prefect server"
    elsewhere = "set PREFECT_API_URL to a running Prefect server"
    if exit_code is not None:  # Prefect waits out the timeout even for a server that crashed
        return f"{server} exited with code {exit_code} while starting (see its output): {elsewhere}"
    if isinstance(exc, RuntimeError):
        return (
            f"{server} did not start within {timeout_s} s ({TIMEOUT_SETTING}): raise that "
            f"setting on a busy machine, or {elsewhere}"
        )
    return f"{server} did not answer ({type(exc).__name__}: {exc}): try again, or {elsewhere}"


def _server_dying_with_this_process() -> SubprocessASGIServer:
    """Prefect's per-process temporary server, as a subclass whose process dies with ours.

    Prefect code asking for `SubprocessASGIServer()` gets this instance (one per port, and the
    default port's is this one). Defined here, not at import: the server module takes seconds to
    import, and a build with PREFECT_API_URL never needs it.
    """
    from prefect.server.api import server as prefect_server

    class ServerDyingWithBuild(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            die_with_parent = _death_signal_preexec()
            if die_with_parent is None:
                return super()._run_uvicorn_command()
            # Prefect's own command line and environment, started with our preexec_fn: only
            # its module's `subprocess` is swapped, and only for this call (on the main thread).
            started: list[subprocess.Popen[Any]] = []

            def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                kwargs["preexec_fn"] = die_with_parent
                # Out of the build's process group: Ctrl-C in a terminal (or a CI job's
                # cancel) signals the whole group, and a server stopped under a build that is
                # still stopping left it retrying a dead API for minutes. The build stops it.
                kwargs["start_new_session"] = True
                started.append(subprocess.Popen(*args, **kwargs))
                return started[-1]

            swapped = types.ModuleType("subprocess")
            swapped.__dict__.update(vars(subprocess), Popen=popen)
            vars(prefect_server)["subprocess"] = swapped
            try:
                process = super()._run_uvicorn_command()
            finally:
                vars(prefect_server)["subprocess"] = subprocess
            if process not in started:
                logger.warning(
                    "Prefect started its temporary server another way: it may outlive a build "
                    "killed with SIGKILL"
                )
            return process

    return ServerDyingWithBuild()


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel for SIGKILL when this process dies; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()
    kill = int(signal.SIGKILL)

    def die_with_parent() -> None:
        # In the child, between fork and exec, where only this thread exists.
        if prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before the signal was asked for
            os.kill(os.getpid(), kill)

    return die_with_parent
