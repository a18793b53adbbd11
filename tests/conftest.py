"""Shared fixtures: everything a test needs is made on the spot (no network, no hub)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The GPU slot is the machine's (a lock file in the temp folder, a server limit named for the
# slot): each test process is a machine of its own, so another's builds never wait on it. Set,
# not defaulted: xdist's workers inherit the environment of the process that started them.
os.environ["SOUNDTRACK_GPU_SLOT"] = f"tests-{os.getpid()}"

if TYPE_CHECKING:
    from tests.prefect_server import PrefectServer
    from tests.s3server import SeaweedServer


@pytest.fixture(scope="session", autouse=True)
def _gpu_lock_removed() -> Iterator[None]:
    """This test process's GPU lock file (in the temp folder) goes with it."""
    yield
    from tasks.generate import gpu_lock_path

    gpu_lock_path().unlink(missing_ok=True)


# --- S3 server (issue 6) ---

# Variables that could point boto3 at a developer's real AWS account or change its behaviour.
_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "SOUNDTRACK_STORAGE",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS S3 server for the session: .endpoint, .access_key, .secret_key,
    .create_bucket(), .client(), .aws_env()."""
    from tests.s3server import SeaweedServer

    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def aws_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS setting from the developer's environment or ~/.aws; returns the folder for
    test-made AWS config and credentials files."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    aws_dir = tmp_path / "aws"
    aws_dir.mkdir()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_dir / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_dir / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return aws_dir


@pytest.fixture
def no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """$SOUNDTRACK_STORAGE unset: a developer's own must not redirect what a test publishes."""
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)


@pytest.fixture
def s3_env(
    s3_server: SeaweedServer, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> SeaweedServer:
    """The standard AWS variables point boto3 (and so `soundtrack`) at the session's server."""
    for name, value in s3_server.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: SeaweedServer) -> str:
    """A fresh, empty bucket on the session's server, with the environment pointing at it."""
    return s3_env.create_bucket()


# --- tiny MusicGen (issue 3) ---


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight MusicGen (about 2 MB, noise not music), written once per session."""
    from soundtrack.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-musicgen"))


@pytest.fixture(scope="session")
def tiny_acestep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight ACE-Step 1.5 pipeline (about 1 MB, noise not music), written once
    per session in the real layout (model_index.json and component folders)."""
    from soundtrack.models.tiny_acestep import make_tiny_acestep

    return make_tiny_acestep(tmp_path_factory.mktemp("tiny-acestep"))


@pytest.fixture(scope="session")
def tiny_bark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Bark (about 6 MB, noise not speech), written once per session."""
    from soundtrack.models.tiny_bark import make_tiny_bark

    return make_tiny_bark(tmp_path_factory.mktemp("tiny-bark"))


@pytest.fixture(scope="session")
def tiny_stableaudio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Audio Open pipeline (under 1 MB, noise not music), written
    once per session in the real layout (model_index.json and component folders)."""
    from soundtrack.models.tiny_stableaudio import make_tiny_stableaudio

    return make_tiny_stableaudio(tmp_path_factory.mktemp("tiny-stableaudio"))


# --- Prefect server (issue 5) ---


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the session's flow tests (start-up costs 10-25 s)."""
    from tests.prefect_server import PrefectServer

    with PrefectServer(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


# --- an offline Hugging Face cache (issue 14) ---


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own, and no network to fall back on."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def file_system(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes file systems of their own of a given size ("256k", "64m"): tmpfs, which root may
    mount; all unmounted after."""
    mounts: list[Path] = []

    def mounted(size: str) -> Path:
        mount = tmp_path / f"fs-{len(mounts)}-{size}"
        mount.mkdir()
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
            capture_output=True,
            check=False,
        )
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace')}")
        mounts.append(mount)
        return mount

    try:
        yield mounted
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(file_system: Callable[[str], Path]) -> Path:
    """A 256 KiB file system of its own."""
    return file_system("256k")
