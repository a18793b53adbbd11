"""Generation: one batch per task, under the GPU concurrency limit, cached on generation keys."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext
from prefect.settings import get_current_settings

from soundtrack import steps
from soundtrack.errors import GenerationError, InputError, ModelLoadError
from soundtrack.renders import (
    Render,
    RenderCache,
    RenderFailure,
    fetch_handed_back,
    fetch_parent,
    is_shared,
    render_batch,
    share_render,
    shared_parent_key,
)
from soundtrack.spec import TrackSpec
from soundtrack.storage import open_storage
from tasks.waits import STOPPING, Stopped, run_on_pool, wait_until

# One limit per machine: builds on other machines sharing the server render on their own GPUs.
# Named after the host, or SOUNDTRACK_GPU_SLOT: containers (each its own hostname) that share a
# machine's GPU name it alike.
_SLOT = os.environ.get("SOUNDTRACK_GPU_SLOT") or socket.gethostname()
GPU_LIMIT = "soundtrack-gpu-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", _SLOT) or "host")
# The slot's lease is renewed while a batch renders; a build killed mid-batch frees it when the
# lease runs out, instead of blocking every later build.
GPU_LEASE_S = 60  # the server's minimum
GPU_TAKE_S = 5.0  # to take a slot the server showed free


_TURN = threading.Lock()  # one batch of this process renders at a time, as one per machine


def gpu_lock_path(limit: str = GPU_LIMIT) -> Path:
    """The lock file of the machine's GPU slot, the same for every user, job and PREFECT_HOME:
    in /tmp itself, not $TMPDIR (per user on macOS, per job under Slurm)."""
    return Path("/tmp") / f"{limit}.lock"  # noqa: S108  opened O_NOFOLLOW, made O_EXCL, read-only


def open_gpu_lock() -> IO[str]:
    """The machine's GPU lock file, opened to be taken (flock)."""
    path = gpu_lock_path()
    while True:
        try:
            # Read-only, which a flock needs no more than, and without O_CREAT when it is there:
            # in a sticky folder, Linux (protected_regular) refuses O_CREAT on another's file.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
            except FileExistsError:
                continue  # another build made it meanwhile: open theirs
            except OSError as exc:
                raise _unopened(path, exc) from None
            os.fchmod(fd, 0o444)  # every user's builds open it, whatever this one's umask
        except OSError as exc:
            raise _unopened(path, exc) from None
        return os.fdopen(fd)


def _unopened(path: Path, exc: OSError) -> OSError:
    return OSError(
        f"cannot open {path}, the lock every build on this machine takes to render: {exc.strerror}"
    )


@contextmanager
def gpu_slot() -> Iterator[None]:
    """One batch at a time on this machine's GPU: with a Prefect server, its concurrency limit
    (for the builds of every machine sharing SOUNDTRACK_GPU_SLOT), and always the machine's lock
    file, which the kernel frees when its build dies. A build on the temporary server takes only
    that file: such a server keeps leases in its memory and never revokes them."""
    settings = get_current_settings()
    with ExitStack() as held:
        # This build's own batches take turns quietly first: "another build" is for others.
        wait_until(lambda: _TURN.acquire(blocking=False), "for the batch before it", log=False)
        held.callback(_TURN.release)
        if settings.api.url:
            client = held.enter_context(get_client(sync_client=True))

            waiting = (
                f"another build holds the GPU ({GPU_LIMIT} on the Prefect server): waiting for "
                "it; with no build rendering, see docs/operations.md#the-gpu-slot"
            )
            slow_said = False  # that the server is slow to give the slot: once

            def took() -> bool:
                nonlocal slow_said
                # Read, then take: a wait inside Prefect's acquisition cannot be stopped, and
                # one given a timeout logs an error each time it runs out.
                while not STOPPING.is_set():  # else wait_until raises Stopped
                    limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
                    if limit.active_slots >= limit.limit:
                        return False
                    try:
                        held.enter_context(
                            concurrency(
                                GPU_LIMIT,
                                occupy=1,
                                lease_duration=GPU_LEASE_S,
                                strict=True,
                                timeout_seconds=GPU_TAKE_S,
                            )
                        )
                    except TimeoutError:
                        # Another build took it first, or a busy server answered 503 (SQLite
                        # locked) past the timeout: the next read tells which, so a slow server
                        # is not reported as another build.
                        if not slow_said:
                            slow_said = True
                            get_run_logger().info(
                                "the Prefect server did not give the GPU slot it showed free "
                                "within %g s (a busy server, or a build that took it first): "
                                "asking again",
                                GPU_TAKE_S,
                            )
                        continue
                    return True
                return False

            wait_until(took, waiting)
        # After the server's slot, never before: a build holding the file while it waited for
        # the slot would deadlock with one holding the slot and waiting for the file. A build
        # on another Prefect server, or on none, holds only the file.
        lock = held.enter_context(open_gpu_lock())
        waiting = "another build on this machine is rendering: waiting for it"
        wait_until(lambda: _took(lock), waiting)
        yield  # leaving the stack releases the lock and the slot


def _took(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect's default key covers the task's source, not the model, seed or pipeline version
    it depends on; the tracks' generation keys cover all of those."""
    keys = sorted(spec.generation_key or spec.id for spec in parameters["specs"])
    # The result names files in this cache folder; another folder is another result.
    keys.append(parameters["cache_dir"])
    return "render-" + hashlib.sha256("|".join(keys).encode()).hexdigest()


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    # A model that cannot load, or a render that came out silent, does not heal on retry; a
    # stopped build wants no retry.
    error = state.result(raise_on_failure=False)
    return not isinstance(
        error, ModelLoadError | GenerationError | InputError | ValueError | Stopped
    )


@task(
    name="generate",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
    cache_key_fn=batch_cache_key,
    persist_result=True,
)
def generate_batch(
    specs: list[TrackSpec], cache_dir: str, device: str | None
) -> list[Render | RenderFailure]:
    """Render one batch (one generate call) into the render cache, one batch per GPU."""
    cache = RenderCache(Path(cache_dir))
    if all(cache.holds(spec) for spec in specs):
        return steps.render(specs, cache_dir, device)  # all in the cache: no GPU to wait for
    with gpu_slot():
        return steps.render(specs, cache_dir, device)


@task(
    name="render-and-share",
    retries=1,
    retry_delay_seconds=5,  # a dropped connection to storage: not in the same instant
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def render_and_share(
    specs: list[TrackSpec], cache_dir: str, device: str | None, storage_url: str, base_dir: str
) -> list[str]:
    """On a render-pool machine: render what storage lacks and publish it; returns, per track,
    "ok" or the reason it failed. The pool's own concurrency limit keeps one batch per GPU."""
    storage = open_storage(storage_url, base_dir=Path(base_dir))
    todo = [spec for spec in specs if not is_shared(storage, spec)]
    outcomes = {spec.id: "ok" for spec in specs}
    cache = RenderCache(Path(cache_dir))
    for parent in (spec.parent_audio for spec in todo if spec.parent_audio):
        fetch_parent(storage, cache, parent, shared_parent_key(storage, parent))
    results = render_batch(todo, cache, device=device)
    for spec, result in zip(todo, results, strict=True):
        if isinstance(result, RenderFailure):
            outcomes[spec.id] = result.reason
        else:
            share_render(storage, spec, result)
    return [outcomes[spec.id] for spec in specs]


@task(name="generate-on-pool", cache_policy=NO_CACHE)
def generate_on_pool(
    specs: list[TrackSpec],
    deployment: str,
    device: str | None,
    cache_dir: str,
    storage_url: str,
    base_dir: str,
) -> list[Render | RenderFailure]:
    """Send one batch, its tracks as resolved here, to the render-batch deployment; wait for
    it and fetch its renders."""
    parameters = {"specs": specs, "storage": storage_url, "base_dir": base_dir, "device": device}
    child = run_on_pool(deployment, parameters)
    storage = open_storage(storage_url, base_dir=Path(base_dir))
    cache = RenderCache(Path(cache_dir))
    state = child.state.name if child.state else "unknown"
    missing = f"render-batch run {child.name!r} ended {state} without it"
    return fetch_handed_back(storage, cache, specs, missing)
