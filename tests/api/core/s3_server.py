"""moto's standalone S3 server on loopback, for tests of the S3 artifact store: a real S3
protocol server (HTTP, SigV4, presigned URLs) in a process of its own."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

BUCKET = "aetrain-test"


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and the environment that points boto3 at it."""

    endpoint: str
    env: dict[str, str]

    def client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        """Every key of the test bucket under ``prefix``."""
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def moto_s3_server() -> Iterator[S3Server]:
    """moto's server on a free loopback port with the bucket ``BUCKET``; stopped on exit."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    running = S3Server(endpoint, {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    })  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert server.poll() is None, "moto's server exited at start"
                assert time.monotonic() < deadline, "moto's server did not start in 30 s"
                time.sleep(0.1)
        running.client().create_bucket(Bucket=BUCKET)
        yield running
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """An S3 server for the tests of one module (each test keeps to keys of its own), with
    this process's (and its children's) boto3 pointed at it."""
    with moto_s3_server() as running, pytest.MonkeyPatch.context() as patch:
        for name, value in running.env.items():
            patch.setenv(name, value)
        yield running
