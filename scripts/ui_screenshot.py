"""Screenshots of a build in the Prefect UI: the demo manifest on a tiny model, a local server,
headless Chromium; then a build of one track with --review, paused, and its input form (opened
with the run page's Resume button, through Playwright). Usage: python scripts/ui_screenshot.py
[OUTPUT.png [FORM.png]] (make ui-screenshot).

Needs Chromium from the system's packages (Debian/Ubuntu: `sudo apt-get install chromium`);
installs nothing. Everything else (server home, model, assets) lives in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_OUTPUT = REPO / "docs" / "img" / "ui-flow-run.png"
DEFAULT_FORM_OUTPUT = REPO / "docs" / "img" / "ui-review-form.png"
REVIEWED_TRACK = "victory-sting"  # the shortest of the demo's tracks
PAUSE_TIMEOUT_S = 300.0
MANIFEST = REPO / "manifests" / "demo.yaml"
FLOW_NAME = "build-soundtrack"
SERVER_START_TIMEOUT_S = 120.0
# Without a virtual-time budget headless Chromium captures the single-page UI before it renders.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
]


def find_chromium() -> str:
    """The Chromium binary, or exit 2 saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit(
        "ui-screenshot needs Chromium, which was not found on PATH.\n"
        "Install it from your system's packages, e.g. on Debian/Ubuntu:\n"
        "    sudo apt-get update && sudo apt-get install chromium\n"
        "(about 480 MB); this script installs nothing itself."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> None:
    """Run a command; exit with its output when its exit code is not in `ok`."""
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode not in ok:
        sys.exit(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")


def wait_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"prefect server exited {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"prefect server did not answer within {SERVER_START_TIMEOUT_S:.0f} s")


def build_runs(api_url: str, **state: object) -> list[dict[str, object]]:
    """The server's build-soundtrack flow runs, newest first (only those in `state`, if given)."""
    body: dict[str, object] = {
        "flows": {"name": {"any_": [FLOW_NAME]}},
        "sort": "START_TIME_DESC",
    }
    if state:
        body["flow_runs"] = {"state": state}
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        runs: list[dict[str, object]] = json.loads(reply.read())
    return runs


def latest_build_run(api_url: str) -> str:
    """The id of the newest build-soundtrack flow run on the server."""
    runs = build_runs(api_url)
    if not runs:
        sys.exit(f"no {FLOW_NAME} flow run found on the server")
    return str(runs[0]["id"])


def paused_build_run(api_url: str, build: subprocess.Popen[bytes]) -> str:
    """The id of the build-soundtrack flow run that paused for its review."""
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while time.monotonic() < deadline:
        if build.poll() is not None:
            sys.exit(f"the review build exited {build.returncode} before it paused")
        runs = build_runs(api_url, type={"any_": ["PAUSED"]})
        if runs:
            return str(runs[0]["id"])
        time.sleep(1)
    sys.exit(f"the review build did not pause within {PAUSE_TIMEOUT_S:.0f} s")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def screenshot(chromium: str, url: str, output: Path, profile: Path, env: dict[str, str]) -> None:
    """Capture the page, then check from its rendered DOM that the artifacts were on it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    # Write beside the output and rename, so a failed capture leaves no half-written PNG.
    partial = output.with_name(f".{output.name}.partial.png")
    run([chromium, *flags, f"--screenshot={partial}", url], env)
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if not partial.is_file() or "demo-tracks" not in dom:
        partial.unlink(missing_ok=True)
        sys.exit(f"the page {url} did not show the build's artifacts (no 'demo-tracks' card)")
    os.replace(partial, output)


def screenshot_form(chromium: str, url: str, output: Path) -> None:
    """Open the paused run's page, press Resume, and capture the input form it opens."""
    from playwright.sync_api import sync_playwright

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial.png")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="networkidle")
            page.get_by_role("button", name="Resume").first.click(timeout=30_000)
            dialog = page.get_by_role("dialog")
            dialog.get_by_text(REVIEWED_TRACK).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # the dialog fades in; capture it opaque
            page.screenshot(path=str(partial))
        finally:
            browser.close()
    os.replace(partial, output)


def main() -> None:
    output = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_OUTPUT
    form_output = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else DEFAULT_FORM_OUTPUT
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="ui-screenshot-") as folder:
        tmp = Path(folder)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp / "prefect"),
            "PREFECT_API_URL": api_url,
            # The UI calls the API at these; without them it calls port 4200.
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "SOUNDTRACK_CACHE_DIR": str(tmp / "cache"),
        }
        env.pop("SOUNDTRACK_STORAGE", None)
        log = tmp / "server.log"
        start = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        with log.open("wb") as sink:
            server = subprocess.Popen(
                [*start, "--port", str(port)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            print(f"prefect server on port {port} ...", flush=True)
            wait_healthy(api_url, server, log)
            print("building manifests/demo.yaml on a tiny model ...", flush=True)
            run([str(BIN / "soundtrack"), "models", "make-tiny", str(tmp / "tiny")], env)
            build = [str(BIN / "soundtrack"), "build", str(MANIFEST), "--model", str(tmp / "tiny")]
            # Exit 1 (a track rejected) still makes a flow run worth showing.
            run([*build, "--out", str(tmp / "assets")], env, ok=(0, 1))
            run_id = latest_build_run(api_url)
            # The /v2 page shows the artifact cards; the older /runs page leaves the tab empty.
            url = f"http://127.0.0.1:{port}/v2/runs/flow-run/{run_id}?tab=Artifacts"
            print(f"screenshot of {url} ...", flush=True)
            screenshot(chromium, url, output, tmp / "chromium", env)
            print(f"a build of {REVIEWED_TRACK} with --review, until it pauses ...", flush=True)
            review = [*build, "--out", str(tmp / "assets"), "--force", "--review"]
            with (tmp / "review.log").open("wb") as sink:
                reviewed = subprocess.Popen(
                    [*review, "--only", REVIEWED_TRACK], env=env, stdout=sink, stderr=sink
                )
            try:
                run_id = paused_build_run(api_url, reviewed)
                url = f"http://127.0.0.1:{port}/runs/flow-run/{run_id}"
                print(f"screenshot of the review form at {url} ...", flush=True)
                screenshot_form(chromium, url, form_output)
            finally:
                reviewed.kill()
                reviewed.wait()
        finally:
            stop(server)
    print(f"wrote {output} and {form_output}")


if __name__ == "__main__":
    main()
