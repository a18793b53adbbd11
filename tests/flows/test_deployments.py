"""Deployments as studios run them: the repository's prefect.yaml, work pools and workers.

Against a real Prefect server: `prefect deploy --all` from the repository root; a process worker
runs soundtrack-build and `prefect deployment run ... --watch` exits 0 when every track passes
and 1 when a gate rejects one, and a build with its review on pauses on the worker until it is
answered; with the render pool on, every generation batch runs as a
render-batch flow run on a second pool's worker and the assets equal a local build's byte for
byte; the Kubernetes GPU job template is accepted by Prefect and asks for nvidia.com/gpu.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from tests.prefect_server import PrefectServer
from tests.reference import sha256_of
from tests.running import answer, paused_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
SOUNDTRACK = str(BIN / "soundtrack")
TEMPLATE = REPO / "infra" / "k8s" / "gpu-base-job-template.json"
RUN_TIMEOUT_S = 300
# An idle process worker ignores its first SIGTERM; a second one, a moment later, stops it.
WORKER_STOP_WAITS_S = (1.0, 10.0)

PASSING = """\
schema: 1
soundtrack: nightly
storage: ./out
defaults: {duration: 3}
tracks:
  - id: harbour
    prompt: harbour at dawn, soft strings
    seed: 21
  - id: chase
    prompt: rooftop chase, fast drums
    seed: 22
"""
# On the render pool: a variation rendered there from its parent's published file, and a mix
# separated there into (tiny, random) Demucs stems, which fail the sum gate: the mix publishes.
POOLED = """\
schema: 1
soundtrack: nightly
storage: ./out
defaults: {{duration: 3}}
tracks:
  - id: harbour
    model: {musicgen}
    prompt: harbour at dawn, soft strings
    seed: 21
    stems: [drums, bass]
    stem_model: {demucs}
  - id: chase
    model: {acestep}
    prompt: rooftop chase, fast drums
    seed: 22
    variation_of: harbour
    gates: {{theme: warn}}  # noise carries no melody
"""
# silence_floor_lufs -20 is far above what the tiny model's noise reaches: a certain rejection.
FAILING = (
    PASSING
    + """\
  - id: too-strict
    prompt: quiet ambient sting
    seed: 23
    gates: {silence_floor_lufs: -20}
"""
)


def prefect_env(server: PrefectServer, home: Path, **extra: str) -> dict[str, str]:
    """A client or worker environment: the session's server, its own PREFECT_HOME."""
    env = {**os.environ, **server.env, "PREFECT_HOME": str(home), **extra}
    env.pop("SOUNDTRACK_STORAGE", None)
    return env


def cli(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def run_deployment_cli(
    name: str, params: dict[str, str], env: dict[str, str]
) -> subprocess.Popen[str]:
    """`prefect deployment run NAME --param k=v ... --watch`, started; .communicate() waits."""
    args = [PREFECT, "deployment", "run", name, "--watch"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Exit code, output and the flow run id that `prefect deployment run` printed."""
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    found = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert found, output
    return process.returncode, output, found.group(1)


class Worker:
    """`prefect worker start --pool P --type process` under a known name, in its own session."""

    def __init__(self, pool: str, env: dict[str, str], log: Path) -> None:
        self.pool = pool
        self.name = f"{pool}-{uuid.uuid4().hex[:8]}"
        self.env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        args = [PREFECT, "worker", "start", "--pool", self.pool, "--type", "process"]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [*args, "--name", self.name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        for wait_s in WORKER_STOP_WAITS_S:
            if process.poll() is not None:
                return
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def api(server: PrefectServer) -> Iterator[Any]:
    """A synchronous Prefect client on the session's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        yield client


def render_batch_runs(client: Any, before: Collection[Any] = ()) -> list[Any]:
    """The server's render-batch flow runs, less those whose ids are in `before`."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    render_batch = FlowFilter(name=FlowFilterName(any_=["render-batch"]))
    return [run for run in client.read_flow_runs(flow_filter=render_batch) if run.id not in before]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    """prefect.yaml's deployments by name: entrypoint, pool, parameters, schedules."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in config["deployments"]}


@pytest.fixture(scope="module")
def deployed(
    prefect_server: PrefectServer,
    prefect_yaml: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Both pools created as process pools, then `prefect deploy --all` from the repository
    root, as docs/operations.md says; returns deployment name -> 'flow/deployment'."""
    env = prefect_env(prefect_server, tmp_path_factory.mktemp("deployer"), PWD=str(REPO))
    for deployment in prefect_yaml.values():
        pool = deployment["work_pool"]["name"]
        created = cli([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
        assert created.returncode == 0 or "already exists" in created.stdout, created.stdout
    deploy = cli([PREFECT, "--no-prompt", "deploy", "--all"], env)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    names = re.findall(r"Deployment '([^']+/([^']+))' successfully", deploy.stdout)
    return {short: full for full, short in names}


@pytest.fixture
def tiny(tiny_model_dir: Path) -> str:
    return str(tiny_model_dir)


def project(folder: Path, manifest: str) -> Path:
    folder.mkdir()
    (folder / "m.yaml").write_text(manifest)
    return folder / "m.yaml"


def published(out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(track id -> status, file name -> sha256 recorded) from the lock, after checking every
    recorded file against the bytes on disk."""
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    files = {}
    for track in lock["tracks"]:
        for entry in track["files"]:
            path = out / f"{track['id']}.{entry['format']}"
            assert sha256_of(path) == entry["sha256"], path
            files[path.name] = entry["sha256"]
    return {t["id"]: t["status"] for t in lock["tracks"]}, files


def test_deployed_build_exits_0_when_approved_and_1_when_a_gate_rejects(
    prefect_server: PrefectServer,
    prefect_yaml: dict[str, Any],
    deployed: dict[str, str],
    tiny: str,
    tmp_path: Path,
) -> None:
    # The nightly schedule arrives inactive, in its time zone.
    with api(prefect_server) as client:
        deployment = client.read_deployment_by_name(deployed["soundtrack-build"])
    (nightly,) = deployment.schedules
    assert nightly.active is False
    assert nightly.schedule.cron == "0 2 * * *" and nightly.schedule.timezone == "Europe/Berlin"

    good = project(tmp_path / "good", PASSING)
    bad = project(tmp_path / "bad", FAILING)
    reviewed = project(tmp_path / "reviewed", PASSING)
    pool = prefect_yaml["soundtrack-build"]["work_pool"]["name"]
    worker_env = prefect_env(
        prefect_server, tmp_path / "worker-home", SOUNDTRACK_CACHE_DIR=str(tmp_path / "cache")
    )
    client_env = prefect_env(prefect_server, tmp_path / "client-home")
    since = datetime.now(UTC)
    with Worker(pool, worker_env, tmp_path / "worker.log") as worker:
        # All at once: the worker takes them side by side, as a nightly and a CI build, and a
        # build with its review on, which pauses on the worker until the test answers it.
        runs = [
            run_deployment_cli(
                deployed["soundtrack-build"], {"manifest": str(m), "model": tiny}, client_env
            )
            for m in (good, bad)
        ]
        review = {"manifest": str(reviewed), "model": tiny, "review": "true"}
        review_run = run_deployment_cli(deployed["soundtrack-build"], review, client_env)
        paused = paused_run(prefect_server.api_url, since, review_run.poll)
        assert not (reviewed.parent / "out" / "nightly" / "soundtrack.lock.json").exists()
        approve = {"decision": "approve"}
        answer(prefect_server.api_url, paused, {"harbour": approve, "chase": approve})
        (good_rc, good_log, good_id), (bad_rc, bad_log, bad_id) = map(finished, runs)
        review_rc, review_log, review_id = finished(review_run)

    worker_log = (tmp_path / "worker.log").read_text()
    assert good_rc == 0, good_log + worker_log
    assert bad_rc == 1, bad_log + worker_log
    assert review_rc == 0, review_log + worker_log
    # A rejection is a verdict, not a bug: the run's logs hold no traceback (Prefect's engine
    # raises a failed run's result, which must be an exception, in one line).
    assert "Traceback" not in worker_log, worker_log
    assert review_id == str(paused.id)
    # The worker's log (the run's, in the UI) says where to answer.
    ui = prefect_server.api_url.removesuffix("/api")
    assert f"answer at {ui}/runs/flow-run/{paused.id}" in worker_log, worker_log
    for folder, log in ((reviewed, review_log), (good, good_log), (bad, bad_log)):
        lock = folder.parent / "out" / "nightly" / "soundtrack.lock.json"
        assert lock.exists(), log + worker_log  # the run's own words when it wrote none
    statuses, _ = published(reviewed.parent / "out" / "nightly")
    assert statuses == {"harbour": "approved", "chase": "approved"}
    statuses, _ = published(good.parent / "out" / "nightly")
    assert statuses == {"harbour": "approved", "chase": "approved"}
    statuses, _ = published(bad.parent / "out" / "nightly")
    assert statuses == {"harbour": "approved", "chase": "approved", "too-strict": "rejected"}
    assert not list((bad.parent / "out" / "nightly").glob("too-strict.*"))
    # Both ran as deployed runs on the process pool's worker, not in the triggering process.
    with api(prefect_server) as client:
        for run_id, state in ((good_id, "Completed"), (bad_id, "Failed")):
            run = client.read_flow_run(run_id)
            assert run.state_name == state and run.deployment_id == deployment.id
            assert run.work_pool_name == pool
            assert run.labels["prefect.worker.name"] == worker.name
        # The run's logs in the UI (the engine logs a failed run's result as an error): the
        # verdict, and no traceback.
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[bad_id])))
        errors = [log.message for log in logs if log.level >= 40]
        assert errors and all("Traceback" not in e and "File " not in e for e in errors), errors
        assert errors[-1].endswith("\nBuildRejected: 1 track(s) rejected, 0 failed"), errors
        # Which track, and why, is in the run's logs too: a worker has no terminal for the table.
        warnings = [log.message for log in logs if log.level == 30]
        assert any(w.startswith("too-strict: rejected by gates: ") for w in warnings), warnings


def test_render_pool_renders_varies_and_separates_on_the_gpu_pool_and_matches_a_local_build(
    prefect_server: PrefectServer,
    prefect_yaml: dict[str, Any],
    deployed: dict[str, str],
    tiny: str,
    tiny_acestep_dir: Path,
    tmp_path: Path,
) -> None:
    from soundtrack.separate import make_tiny_demucs

    demucs = make_tiny_demucs(tmp_path / "demucs")
    pooled = POOLED.format(musicgen=tiny, acestep=tiny_acestep_dir, demucs=demucs)
    manifest = project(tmp_path / "game", pooled)
    cpu_pool = prefect_yaml["soundtrack-build"]["work_pool"]["name"]
    gpu_pool = prefect_yaml["gpu"]["work_pool"]["name"]
    # Each machine has its own render cache: renders can only travel through the storage.
    cpu_env = prefect_env(
        prefect_server, tmp_path / "cpu-home", SOUNDTRACK_CACHE_DIR=str(tmp_path / "cpu-cache")
    )
    gpu_env = prefect_env(
        prefect_server, tmp_path / "gpu-home", SOUNDTRACK_CACHE_DIR=str(tmp_path / "gpu-cache")
    )
    params = {"manifest": str(manifest), "batch_size": "1", "render_pool": deployed["gpu"]}
    client_env = prefect_env(prefect_server, tmp_path / "client-home")
    with (
        Worker(cpu_pool, cpu_env, tmp_path / "cpu-worker.log"),
        Worker(gpu_pool, gpu_env, tmp_path / "gpu-worker.log") as gpu_worker,
    ):
        rc, log, build_id = finished(
            run_deployment_cli(deployed["soundtrack-build"], params, client_env)
        )
    logs = "".join((tmp_path / f"{w}-worker.log").read_text() for w in ("cpu", "gpu"))
    assert rc == 0, log + logs

    # 1. One render-batch flow run per batch (batch size 1: one per track, the variation after
    #    its parent) and one per mix to separate, children of this build, each run by the GPU
    #    pool's worker.
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with api(prefect_server) as client:
        pool_runs = [
            run
            for run in render_batch_runs(client)
            if run.parent_task_run_id
            and str(client.read_task_run(run.parent_task_run_id).flow_run_id) == build_id
        ]
        pool_tasks = {
            task.name
            for task in client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[run.id for run in pool_runs])
                )
            )
        }
    # Each receives its work as the build resolved it (the manifest is not re-read).
    work = sorted(
        [spec["id"] for spec in run.parameters["specs"]]
        + [job["track_id"] for job in run.parameters.get("separations") or []]
        for run in pool_runs
    )
    assert work == [["chase"], ["harbour"], ["harbour"]]
    assert all(spec["spec_hash"] for run in pool_runs for spec in run.parameters["specs"])
    assert {"render[harbour]", "render[chase]", "separate[harbour]"} <= pool_tasks, pool_tasks
    for run in pool_runs:
        assert run.state_name == "Completed", run.state
        assert run.work_pool_name == gpu_pool
        assert run.labels["prefect.worker.name"] == gpu_worker.name
    assert len(list((tmp_path / "gpu-cache" / "renders").glob("*.wav"))) == 2
    assert list((tmp_path / "gpu-cache" / "separations").glob("*/sources.json"))
    assert not (tmp_path / "cpu-cache" / "separations").exists()

    # 2. The build itself loaded no model: every render and every stem's source came back
    #    through the storage.
    out = tmp_path / "game" / "out" / "nightly"
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert lock["model_loads"] == 0
    statuses, pool_files = published(out)
    assert statuses == {"harbour": "approved", "chase": "approved"}
    tracks = {track["id"]: track for track in lock["tracks"]}
    harbour_ogg = next(f for f in tracks["harbour"]["files"] if f["format"] == "ogg")
    assert tracks["chase"]["parent_sha256"] == harbour_ogg["sha256"]
    assert {s["name"]: s["status"] for s in tracks["harbour"]["stems"]} == {
        "drums": "rejected",
        "bass": "rejected",
    }
    assert tracks["harbour"]["stem_model"]["id"] == str(demucs)

    # 3. A local build of the same manifest and seeds, with a cache of its own: same bytes,
    #    same stems' verdicts to the hundredth of a dB.
    local_env = prefect_env(
        prefect_server,
        tmp_path / "local-home",
        SOUNDTRACK_CACHE_DIR=str(tmp_path / "local-cache"),
    )
    local = cli(
        [SOUNDTRACK, "build", "m.yaml", "--out", "local", "--batch-size", "1"],
        local_env,
        cwd=manifest.parent,
    )
    assert local.returncode == 0, local.stdout + local.stderr
    local_out = manifest.parent / "local" / "nightly"
    local_statuses, local_files = published(local_out)
    assert local_statuses == statuses
    assert len(pool_files) == 4 and local_files == pool_files
    local_lock = json.loads((local_out / "soundtrack.lock.json").read_text())
    local_harbour = next(t for t in local_lock["tracks"] if t["id"] == "harbour")
    assert local_harbour["stems"] == tracks["harbour"]["stems"]


def test_game_repository_example_deploys_with_a_render_pool_that_exists(
    prefect_server: PrefectServer, deployed: dict[str, str], tmp_path: Path
) -> None:
    # infra/ci/game-prefect.yaml, deployed from a game repository: module entrypoints resolve
    # against the installed pipeline, and its build's render_pool names its own GPU deployment.
    (tmp_path / "prefect.yaml").write_text(
        (REPO / "infra" / "ci" / "game-prefect.yaml").read_text()
    )
    env = prefect_env(prefect_server, tmp_path / "home", PWD=str(tmp_path))
    deploy = cli([PREFECT, "--no-prompt", "deploy", "--all"], env, cwd=tmp_path)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    created = set(re.findall(r"Deployment '([^']+)' successfully", deploy.stdout))
    with api(prefect_server) as client:
        build = client.read_deployment_by_name("build-soundtrack/sky-odyssey")
    assert created == {"build-soundtrack/sky-odyssey", build.parameters["render_pool"]}
    assert build.parameters["render_pool"].startswith("render-batch/")


def test_gpu_job_template_is_accepted_and_asks_for_a_gpu(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    env = prefect_env(prefect_server, tmp_path / "home")

    def create(name: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        args = [PREFECT, "work-pool", "create", name, "--type", "kubernetes"]
        return cli([*args, "--base-job-template", str(path)], env)

    # 1. It keeps everything of the installed prefect-kubernetes default and adds the GPU parts.
    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    stripped = json.loads(TEMPLATE.read_text())
    pod = stripped["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    del pod["nodeSelector"], pod["tolerations"]
    del pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert stripped["job_configuration"] == default["job_configuration"]

    # 2. The server accepts it as a kubernetes pool's base job template and stores it as given.
    name = f"gpu-k8s-{uuid.uuid4().hex[:8]}"
    created = create(name, template)
    assert created.returncode == 0, created.stdout + created.stderr
    with api(prefect_server) as client:
        assert client.read_work_pool(name).base_job_template == template

    # 3. A variable used but not declared, or a default of the wrong type, is refused.
    undeclared = json.loads(TEMPLATE.read_text())
    undeclared["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "priorityClassName"
    ] = "{{ priority_class }}"
    refused = create(f"undeclared-{uuid.uuid4().hex[:8]}", undeclared)
    assert refused.returncode != 0 and "priority_class" in refused.stdout + refused.stderr
    wrong = json.loads(TEMPLATE.read_text())
    wrong["variables"]["properties"]["gpu_count"]["default"] = "one"
    refused = create(f"wrong-default-{uuid.uuid4().hex[:8]}", wrong)
    assert refused.returncode != 0 and "gpu_count" in refused.stdout + refused.stderr

    # 4. Rendered as the worker would, without a cluster: the pod asks for GPUs on GPU nodes.
    def render(values: dict[str, Any]) -> dict[str, Any]:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
            config = asyncio.run(
                KubernetesWorkerJobConfiguration.from_template_and_values(template, values)
            )
        return dict(config.job_manifest["spec"]["template"]["spec"])

    pod = render({})
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    pool_nodes = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    pod = render({"gpu_count": 2, "node_selector": pool_nodes, "memory_limit": "24Gi"})
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "24Gi"}
    assert pod["nodeSelector"] == pool_nodes


def test_helm_values_point_the_worker_at_the_gpu_pool(prefect_yaml: dict[str, Any]) -> None:
    values = yaml.safe_load((REPO / "infra" / "helm" / "prefect-worker-values.yaml").read_text())
    assert values["worker"]["config"]["workPool"] == prefect_yaml["gpu"]["work_pool"]["name"]
    assert values["worker"]["config"]["type"] == "kubernetes"


def test_a_render_pool_that_is_not_deployed_or_has_no_worker(
    prefect_server: PrefectServer, deployed: dict[str, str], tiny: str, tmp_path: Path
) -> None:
    """A render pool the server does not have is bad input (exit 2) before anything renders;
    a build waiting for a pool no worker polls stops on SIGTERM (it waited forever, and its
    scheduled render-batch run was rendered later for a build that was gone)."""
    manifest = project(tmp_path / "game", PASSING)
    env = prefect_env(
        prefect_server, tmp_path / "home", SOUNDTRACK_CACHE_DIR=str(tmp_path / "cache")
    )
    build = [SOUNDTRACK, "build", "m.yaml", "--model", tiny, "--render-pool"]
    for name, said in (
        ("render-batch/typo", "render pool 'render-batch/typo': the Prefect server at"),
        ("nope", "render pool 'nope' is not a deployment name"),
    ):
        refused = cli([*build, name], env, cwd=manifest.parent)
        output = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and said in output, output
        assert "Traceback" not in output
    assert not (manifest.parent / "out").exists()

    with api(prefect_server) as client:  # before the build starts: none of its runs are here
        before = {run.id for run in render_batch_runs(client)}
    with (tmp_path / "build.log").open("wb") as log:
        waiting = subprocess.Popen(
            [*build, deployed["gpu"]],
            cwd=manifest.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with api(prefect_server) as client:
            deadline = datetime.now(UTC).timestamp() + 240
            while not (runs := render_batch_runs(client, before)):
                assert waiting.poll() is None, (tmp_path / "build.log").read_text()
                assert datetime.now(UTC).timestamp() < deadline, "no render-batch run started"
                time.sleep(0.2)
            os.killpg(waiting.pid, signal.SIGTERM)
            waiting.wait(timeout=60)
            (child,) = runs
            assert client.read_flow_run(child.id).state_name == "Cancelled"
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
    log = (tmp_path / "build.log").read_text(errors="replace")
    assert waiting.returncode != 0 and "Traceback" not in log, log


def test_a_render_batch_run_that_crashes_ends_the_builds_wait(
    prefect_server: PrefectServer, deployed: dict[str, str], tmp_path: Path
) -> None:
    """A render-batch run can end Failed or Crashed (its worker's machine lost): the build's
    wait ends with it (its tracks fail, their renders missing) instead of reading its state
    until the build is stopped."""
    import threading

    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    from tasks.waits import STOPPING, run_on_pool

    with api(prefect_server) as client:
        before = {run.id for run in render_batch_runs(client)}

    @flow
    def build() -> str | None:
        parameters = {"specs": [], "storage": str(tmp_path / "out"), "base_dir": str(tmp_path)}
        return run_on_pool(deployed["gpu"], parameters).state_name

    def crash() -> None:
        deadline = time.monotonic() + 60
        with api(prefect_server) as client:
            while not (runs := render_batch_runs(client, before)):
                if time.monotonic() > deadline:  # the build failed before it started one
                    return
                time.sleep(0.2)
            client.set_flow_run_state(runs[0].id, Crashed(message="worker lost"), force=True)

    crasher = threading.Thread(target=crash, daemon=True)
    crasher.start()
    give_up = threading.Timer(60, STOPPING.set)  # a wait that does not end: a failure, not a hang
    give_up.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
            assert build() == "Crashed"
    finally:
        give_up.cancel()
        STOPPING.clear()
    crasher.join(10)
