"""The review page in a real headless browser (Debian's chromium, driven by Playwright): served
by `soundtrack review` every player loads the file's duration and the loop player wraps at the
seam; opened from the folder (file://) every player is there and the loop player says why not.

Durations and loop points are checked against the lock, and the sample count against the WAV's
own header (soundfile), not against anything the page computes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import soundfile as sf

from soundtrack.build import Options, ThreadExecutor, build
from soundtrack.review_server import ReviewSite, make_server
from soundtrack.storage import LocalStorage
from tests.running import SOUNDTRACK as SOUNDTRACK_CLI

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")

SOUNDTRACK = "review-demo"
CHROMIUM = "/usr/bin/chromium"
MANIFEST = f"""\
schema: 1
soundtrack: {SOUNDTRACK}
storage: ./out
defaults:
  duration: 3
  loudness: console
  formats: [ogg, mp3, wav]
tracks:
  - id: battle-loop
    prompt: driving taiko battle loop
    loop: true
    duration: 4
    bpm: 120
    seed: 11
  - id: sting
    prompt: quiet ambient sting
    seed: 12
"""
DURATION_TOLERANCE_S = 0.05


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny-model build (core, no Prefect), published to <project>/out/review-demo."""
    project = tmp_path_factory.mktemp("review")
    (project / "m.yaml").write_text(MANIFEST)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOUNDTRACK_CACHE_DIR", str(project / "cache"))
        env.delenv("SOUNDTRACK_STORAGE", raising=False)
        # Noise has no tempo: the tempo gate only warns, as in `make demo-offline`.
        options = Options(model=str(tiny_model_dir), gates=("tempo=warn",))
        result = build(project / "m.yaml", options, executor=ThreadExecutor())
    assert result.exit_status == 0, result.failure
    return project / "out" / SOUNDTRACK


@pytest.fixture(scope="module")
def lock(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "soundtrack.lock.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    """`soundtrack review OUT --soundtrack NAME --port 0` running; Ctrl-C must stop it (exit 0)."""
    # Ctrl-C as in a terminal, even where this test runs as a background job, whose children
    # inherit SIGINT ignored (POSIX), and the server would never see it: a handler here is
    # reset to the default in the child, an ignored signal would stay ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server = subprocess.Popen(
            [
                SOUNDTRACK_CLI,
                "review",
                str(folder.parent),
                "--soundtrack",
                SOUNDTRACK,
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps every thread's stack
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith(f"review page of {SOUNDTRACK}: http://127.0.0.1:"), (
            line + server.communicate(timeout=10)[1]
        )
        yield line.split(": ", 1)[1].strip()
        server.send_signal(signal.SIGINT)
        try:
            status = server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # say where it hangs
            server.send_signal(signal.SIGABRT)
            pytest.fail(f"Ctrl-C did not stop the review server:\n{server.communicate()[1]}")
        assert status == 0, server.communicate()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright.sync_playwright() as driver:
        # The system's chromium, so no `playwright install`; autoplay so Web Audio may start.
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required"],
        )
        yield chromium
        chromium.close()


class Page:
    """A browser tab that records every console error and uncaught exception."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def wait_until(self, expression: str, timeout_s: float = 10.0) -> None:
        # Polled from here: the page's policy forbids the string evaluation wait_for_function uses.
        deadline = time.monotonic() + timeout_s
        while not self.page.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def players(self) -> dict[str, float]:
        """Each <audio> element's file (its URL's path) and the duration the browser read."""
        self.wait_until("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)")
        found = self.page.evaluate(
            "[...document.querySelectorAll('audio')].map(a => [a.currentSrc, a.duration])"
        )
        return {unquote(urlsplit(src).path).rpartition("/")[2]: d for src, d in found}


def lock_files(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        entry["key"].rpartition("/")[2]: entry
        for track in lock["tracks"]
        for entry in track["files"]
    }


def test_served_page_plays_every_file_and_loops_around_the_seam(
    url: str, browser: Any, lock: dict[str, Any], folder: Path, tmp_path: Path
) -> None:
    tab = Page(browser)
    tab.page.goto(url)

    # 1. Every file of the lock has a player that reads the file's duration.
    files = lock_files(lock)
    durations = tab.players()
    assert set(durations) == set(files)
    for name, duration_s in durations.items():
        assert abs(duration_s - files[name]["duration_s"]) <= DURATION_TOLERANCE_S, name

    # 2. Two seconds before the seam, played: the loop passes the seam and comes back to
    # LOOPSTART, with the lock's loop points on exact samples of the decoded WAV.
    wav = files["battle-loop.wav"]
    tab.page.click("section[data-track='battle-loop'] .loop-seam")
    tab.wait_until("(window.reviewState['battle-loop'] || {}).wraps >= 1", timeout_s=20)
    state = tab.page.evaluate("window.reviewState['battle-loop']")
    rate = wav["sample_rate"]
    loop_start_s = wav["loop_start"] / rate
    loop_end_s = (wav["loop_start"] + wav["loop_length"]) / rate
    assert state["format"] == "wav" and state["buffer_sample_rate"] == rate
    assert state["buffer_length"] == sf.info(folder / "battle-loop.wav").frames
    assert state["node_loop_start_s"] * rate == pytest.approx(wav["loop_start"], abs=1e-6)
    assert state["node_loop_end_s"] * rate == pytest.approx(
        wav["loop_start"] + wav["loop_length"], abs=1e-6
    )
    # The page samples its position every 20 ms; a browser starved on a busy machine samples
    # later, so the positions either side of the wrap are judged to within half a second.
    assert loop_end_s - 0.5 <= state["last_before_wrap_s"] < loop_end_s, "it reached the seam"
    assert loop_start_s <= state["first_after_wrap_s"] < loop_start_s + 0.5, (
        "and came back to LOOPSTART"
    )

    screenshot = tmp_path / "review-page.png"
    tab.page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert tab.errors == []


def test_the_page_from_the_folder_shows_every_player(
    browser: Any, lock: dict[str, Any], folder: Path
) -> None:
    tab = Page(browser)
    tab.page.goto((folder / "review.html").as_uri())

    durations = tab.players()
    assert set(durations) == set(lock_files(lock))
    note = tab.page.inner_text("section[data-track='battle-loop'] .loop-note")
    assert note == (
        "the sample-exact loop player needs the served page: "
        f"soundtrack review {folder.parent} --soundtrack {SOUNDTRACK}"
    )
    assert tab.page.is_disabled("section[data-track='battle-loop'] .loop-seam")
    assert tab.errors == []


def test_stems_play_in_sync_with_a_mute_each(
    browser: Any, lock: dict[str, Any], folder: Path, tmp_path: Path
) -> None:
    # A soundtrack whose loop track has two stems (copies of its WAV): separation is not what
    # is tested here, the page's stem player is.
    root = tmp_path / "stems"
    (root / "with-stems").mkdir(parents=True)
    track = next(t for t in lock["tracks"] if t["id"] == "battle-loop")
    wav = next(f for f in track["files"] if f["format"] == "wav")
    files = []
    for stem in ("drums", "bass"):
        shutil.copy(folder / "battle-loop.wav", root / "with-stems" / f"battle-loop.{stem}.wav")
        files.append({**wav, "key": f"with-stems/battle-loop.{stem}.wav", "stem": stem})
    stems = [{"name": name, "status": "published"} for name in ("drums", "bass")]
    rest = {k: v for k, v in track.items() if k not in ("picture", "sidecar")}
    stemmed = {**rest, "files": files, "stems": stems}
    storage = LocalStorage(str(root), root)
    storage.write_index(
        "with-stems", json.dumps({**lock, "soundtrack": "with-stems", "tracks": [stemmed]}).encode()
    )
    server = make_server(ReviewSite(storage, "with-stems", tmp_path / "cache"), 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        tab = Page(browser)
        tab.page.goto(f"http://127.0.0.1:{server.server_port}/")
        assert len(tab.players()) == 2
        box = "section[data-track='battle-loop'] .stems"
        tab.page.click(f"{box} .stems-play")
        tab.wait_until("(window.reviewState['battle-loop'].stems || {}).playing")
        tab.page.check(f"{box} input[data-stem='bass']")
        state = tab.page.evaluate("window.reviewState['battle-loop'].stems")
        assert state["ready"] and state["muted"] == {"drums": False, "bass": True}
        tab.page.click(f"{box} .stems-stop")
        assert tab.errors == []
    finally:
        server.shutdown()
        server.server_close()
