"""A small HTTP client for the aetrain API, and an embedded server to point it at.

Used by ``aetrain compare`` and ``aetrain quickstart``: both talk HTTP, to a server given by
the user or to one they start here (``aetrain serve`` in a child process, embedded mode).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from api.core.settings import Settings


class ApiError(RuntimeError):
    """The server answered with an error; the message is its ``detail``."""


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body).json()

    def download(self, path: str, target: Path) -> Path:
        target.write_bytes(self.request("GET", path).content)
        return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_serving(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Return once ``base/v1/health`` answers 200; RuntimeError naming ``log`` when ``proc``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited; see {log}")
        try:
            if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start in {timeout:.0f} s; see {log}")
        time.sleep(0.3)


@contextmanager
def embedded_server(settings: Settings, log: Path, timeout: float = 120) -> Iterator[Client]:
    """Run ``aetrain serve`` (API + worker, SQLite + file broker under ``settings.home``) in a
    child process for the duration of the block; yields a client with the local API key."""
    port = free_port()
    env = {**os.environ, "AETRAIN_HOME": str(settings.home)}
    for name in ("DATABASE_URL", "AETRAIN_DATABASE_URL", "CELERY_BROKER_URL", "AETRAIN_BROKER_URL"):
        env.pop(name, None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, log, timeout)
        key = (settings.home / "api_key").read_text().strip()
        yield Client(base, key)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
