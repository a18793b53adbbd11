"""One batch at a time on a GPU with a Prefect server: its soundtrack-gpu limit. A build that
waits for the slot says so once, takes it when it is freed, and gives up when it is stopped."""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect.exceptions import ObjectNotFound

from flows.build import ensure_gpu_limit
from soundtrack.renders import RenderCache
from tasks.generate import GPU_LIMIT, GPU_TAKE_S, generate_batch, gpu_slot, open_gpu_lock
from tasks.waits import STOPPING, Stopped
from tests.corebuild import wait_for
from tests.prefect_server import PrefectServer
from tests.specs import make_spec


@contextmanager
def slot_held_elsewhere(limit: str = GPU_LIMIT) -> Iterator[threading.Event]:
    """Another build's batch holding the slot until the event it yields is set."""
    from prefect.concurrency.sync import concurrency

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with concurrency(limit, occupy=1, lease_duration=60, strict=True):
            held.set()
            release.wait(60)

    # The settings pointing at the test's server live in a context variable: carry it over.
    holder = threading.Thread(target=contextvars.copy_context().run, args=(hold,))
    holder.start()
    assert held.wait(30), "the slot was never taken"
    try:
        yield release
    finally:
        release.set()
        holder.join(30)


def build_waiting_for_the_slot() -> Callable[[Callable[[], None]], float]:
    """A flow whose one batch waits for the GPU slot while `meanwhile` runs 3 s in; it returns
    when the batch took the slot."""
    from prefect import flow, task

    @task
    def render() -> float:
        with gpu_slot():
            return time.monotonic()

    @flow
    def build(meanwhile: Callable[[], None]) -> float:
        waiting = render.submit()
        time.sleep(3)
        meanwhile()
        return waiting.result()

    return build


def until_it_says(caplog: pytest.LogCaptureFixture, words: str) -> None:
    """Return once the build has logged `words`: released earlier, a build started late by a
    busy machine never waits at all."""
    wait_for(lambda: any(words in r.getMessage() for r in caplog.records), 60)


def test_a_build_waits_for_the_servers_gpu_slot_then_takes_it_or_stops(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    build = build_waiting_for_the_slot()

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        released_at: list[float] = []

        def let_go() -> None:
            until_it_says(caplog, "another build holds the GPU")
            released_at.append(time.monotonic())
            release.set()

        with caplog.at_level(logging.INFO), slot_held_elsewhere() as release:
            took_at = build(let_go)
        said = [r.getMessage() for r in caplog.records]
        # Timed from the release, not from the task's start; before the 60 s lease could run out.
        assert released_at[0] <= took_at < released_at[0] + 45, (released_at, took_at)
        assert sum("another build holds the GPU" in line for line in said) == 1, said
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], said

        try:
            with slot_held_elsewhere(), pytest.raises(Stopped, match="stopped while it waited"):
                build(STOPPING.set)
        finally:
            STOPPING.clear()
        APILogHandler().flush()  # to this server: after the block there is none to send them to


def test_a_build_on_a_server_waits_for_one_on_the_temporary_server(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A build on a Prefect server took only the server's slot, and one on the temporary server
    (or another PREFECT_HOME) only its own lock file: on one machine both rendered at once."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    build = build_waiting_for_the_slot()

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        released_at: list[float] = []
        with open_gpu_lock() as lock, caplog.at_level(logging.INFO):
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other build, rendering

            def let_go() -> None:
                until_it_says(caplog, "another build on this machine is rendering")
                released_at.append(time.monotonic())
                fcntl.flock(lock, fcntl.LOCK_UN)

            took_at = build(let_go)
        said = [r.getMessage() for r in caplog.records]
        assert released_at[0] <= took_at < released_at[0] + 45, (released_at, took_at)
        assert sum("another build on this machine is rendering" in x for x in said) == 1, said
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        APILogHandler().flush()


def test_a_busy_server_is_not_reported_as_another_build_holding_the_gpu(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose database was locked answered 503 past the take's timeout, and the build
    said another build held the GPU (a CI run under load saw it) while the slot was free."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Writers wait on this lock past the server's busy timeout; readers see the slot free.
    database = sqlite3.connect(
        prefect_server.home / "prefect.db", isolation_level=None, check_same_thread=False
    )
    unlock = threading.Timer(GPU_TAKE_S + 4, database.rollback)

    @flow
    def build() -> float:
        return take_the_slot()

    @task
    def take_the_slot() -> float:
        database.execute("BEGIN IMMEDIATE")  # the run is on the server: lock it now
        unlock.start()
        started = time.monotonic()
        with gpu_slot():
            return time.monotonic() - started

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        try:
            with caplog.at_level(logging.INFO):
                waited_s = build()
        finally:
            unlock.join()
            database.close()
        with get_client(sync_client=True) as client:
            # A take the server granted after the client gave up would hold the slot a minute.
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        said = [r.getMessage() for r in caplog.records]
        assert waited_s > GPU_TAKE_S, "the database lock never held the take back"
        assert not [line for line in said if "another build" in line], said
        assert sum("did not give the GPU slot it showed free" in line for line in said) == 1, said
        APILogHandler().flush()


def test_a_builds_own_batches_take_turns_without_saying_another_build_waits(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two batches of one build rendering on the CPU logged "another build holds the GPU"
    while they waited for each other."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rendering = threading.Event()

    @task
    def render() -> tuple[float, float]:
        with gpu_slot():
            rendering.set()
            started = time.monotonic()
            time.sleep(2)
            return started, time.monotonic()

    @flow
    def build() -> list[tuple[float, float]]:
        first = render.submit()
        assert rendering.wait(30)
        second = render.submit()  # while the first holds the slot
        return [first.result(), second.result()]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        with caplog.at_level(logging.INFO):
            first, second = sorted(build())
        said = [r.getMessage() for r in caplog.records]
        assert second[0] >= first[1], "one batch at a time"
        assert not [line for line in said if "another build" in line], said
        APILogHandler().flush()


def test_each_machine_has_its_own_gpu_slot_and_an_admins_limit_stays(
    prefect_server: PrefectServer,
) -> None:
    """One limit for every machine sharing a server made builds on other machines, with GPUs
    of their own, wait for each other; and every build set it back to 1."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name("soundtrack-gpu-other-machine", 1)
            with contextlib.suppress(ObjectNotFound):
                client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
            ensure_gpu_limit()
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 1
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 2)  # an admin's choice
            ensure_gpu_limit()
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 2
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)
        with slot_held_elsewhere("soundtrack-gpu-other-machine"):
            started = time.monotonic()
            with gpu_slot():
                waited_s = time.monotonic() - started
        # Not the other machine's slot: that one is held for a minute.
        assert waited_s < 30, waited_s
        APILogHandler().flush()


def test_a_machines_slot_is_named_after_it_or_after_soundtrack_gpu_slot() -> None:
    """Each container of one GPU machine has a hostname of its own, so each took a slot of its
    own: SOUNDTRACK_GPU_SLOT names the machine's one slot for all of them."""
    import os
    import socket
    import subprocess
    import sys

    def limit(**env: str) -> str:
        code = "import tasks.generate as g; print(g.GPU_LIMIT)"
        environ = {k: v for k, v in os.environ.items() if k != "SOUNDTRACK_GPU_SLOT"}
        done = subprocess.run(
            [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True
        )
        return done.stdout.strip()

    assert limit() == f"soundtrack-gpu-{socket.gethostname()}"
    assert limit(SOUNDTRACK_GPU_SLOT="gpu box/1") == "soundtrack-gpu-gpu-box-1"


def test_a_batch_the_render_cache_holds_takes_no_turn_but_a_damaged_one_does(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A build that only masters again must not wait for another build's render; one whose
    render is damaged renders again, so it waits for its turn like any other."""
    from prefect import flow
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cache = RenderCache(tmp_path)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 32000)).astype(np.float32)
    stored = cache.put("k1", audio, 32000, model_id="m", revision="r", license="l")
    specs = [make_spec(generation_key="k1")]

    @flow
    def build(meanwhile: Callable[[], None]) -> list[Any]:
        batch = generate_batch.with_options(refresh_cache=True).submit(specs, str(tmp_path), None)
        meanwhile()
        return batch.result()

    def stop() -> None:
        until_it_says(caplog, "another build on this machine is rendering")
        STOPPING.set()

    give_up = threading.Timer(30, STOPPING.set)  # a batch that waits after all: not forever
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        ensure_gpu_limit()
        with open_gpu_lock() as lock, caplog.at_level(logging.INFO):
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other build, rendering
            give_up.start()
            try:
                assert build(lambda: None) == [stored]
                give_up.cancel()
                assert not STOPPING.is_set(), "the batch the cache holds waited for the GPU"
                stored.path.write_bytes(stored.path.read_bytes()[:-100])  # a torn write
                with pytest.raises(Stopped, match="stopped while it waited"):
                    build(stop)
            finally:
                give_up.cancel()
                STOPPING.clear()
        said = [r.getMessage() for r in caplog.records]
        # Once, by the damaged batch (the error that stopped it repeats the words).
        assert sum(x.startswith("another build on this machine") for x in said) == 1, said
        APILogHandler().flush()
