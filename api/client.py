"""The Python client of the aetrain HTTP API (a public API: docs/client.md), and an embedded
server to point it at.

``Client`` wraps every resource the ``aetrain jobs|datasets|models`` commands use, and
``aetrain compare`` and ``aetrain quickstart`` talk to a server through it, given by the user
or started here (``aetrain serve`` in a child process, embedded mode).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from api.core.settings import Settings, get_settings

# Where a client looks for a server and its key when told nothing (``Client.from_env``): what
# ``aetrain serve`` listens on and, in embedded mode, where its first start wrote a key.
DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
# Called with the bytes done so far and the total (None when the server does not say).
ByteProgress = Callable[[int, int | None], None]


class ApiError(RuntimeError):
    """The server answered with an error: ``status_code`` and ``detail`` (the API's message,
    or FastAPI's list of field errors for a malformed request)."""

    def __init__(self, method: str, path: str, status_code: int, detail: Any) -> None:
        super().__init__(f"{method} {path}: HTTP {status_code}: {describe_detail(detail)}")
        self.status_code = status_code
        self.detail = detail


def describe_detail(detail: Any) -> str:
    """An answer's ``detail`` in one line: the message, or each field error as ``loc: msg``."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', e)}"
            if isinstance(e, dict)
            else str(e)
            for e in detail
        )
    return str(detail)


class Client:
    """The aetrain API at ``base_url`` (``http://host:8000``) with an API key.

    Every method returns the API's JSON (dicts, as docs/api.md shows them) and raises
    :class:`ApiError` for a 4xx or 5xx answer, ``httpx.TransportError`` when the server
    cannot be reached.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            # A download from an S3 artifact store is a redirect to a presigned URL; httpx
            # drops the Authorization header when a redirect leaves the server's origin.
            follow_redirects=True,
        )

    @classmethod
    def from_env(
        cls, server: str | None = None, api_key: str | None = None, timeout: float = 60
    ) -> "Client":
        """A client for ``server`` (default: ``AETRAIN_SERVER``, else :data:`DEFAULT_SERVER`)
        with ``api_key`` (default: ``AETRAIN_API_KEY``, else the key the embedded server wrote
        to ``AETRAIN_HOME/api_key``). ValueError when there is no key to use."""
        server = server or os.environ.get("AETRAIN_SERVER") or DEFAULT_SERVER
        key = api_key or os.environ.get("AETRAIN_API_KEY")
        key_file = get_settings().home / "api_key"
        if not key and key_file.is_file():
            key = key_file.read_text().strip()
        if not key:
            raise ValueError(
                f"no API key: pass --key or set AETRAIN_API_KEY (`aetrain keys create TENANT` "
                f"prints one); the embedded server writes its key to {key_file}"
            )
        return cls(server, key, timeout)

    def close(self) -> None:
        self.http.close()

    # -- HTTP ------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        _raise_for_error(method, path, response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body).json()

    def download(
        self,
        path: str,
        target: Path,
        params: dict[str, str] | None = None,
        progress: ByteProgress | None = None,
    ) -> Path:
        """Stream ``GET path`` into ``target``, written atomically (a partial download never
        takes its name); ``progress`` hears of every chunk."""
        partial = target.with_name(target.name + ".part")
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_error("GET", path, response)
            length = response.headers.get("content-length")
            total = int(length) if length is not None else None
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    if progress is not None:
                        progress(response.num_bytes_downloaded, total)
        partial.replace(target)
        return target

    # -- jobs ------------------------------------------------------------------------------
    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a training job (the body of ``POST /v1/jobs``); the job as created."""
        job: dict[str, Any] = self.post("/v1/jobs", spec)
        return job

    def list_jobs(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """A page ``{data, count}`` of the tenant's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = state
        page: dict[str, Any] = self.get("/v1/jobs", params=params)
        return page

    def get_job(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self.get(f"/v1/jobs/{job_id}")
        return job

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued job now, a running one at its next step (it keeps ``last``)."""
        job: dict[str, Any] = self.post(f"/v1/jobs/{job_id}/cancel")
        return job

    def list_checkpoints(self, job_id: int) -> list[dict[str, Any]]:
        """The job's checkpoints (``last``, ``best``), each with its formats' sizes."""
        checkpoints: list[dict[str, Any]] = self.get(f"/v1/jobs/{job_id}/checkpoints")["data"]
        return checkpoints

    def wait_for_job(
        self,
        job_id: int,
        poll_s: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job every ``poll_s`` seconds until it has ended; its final state.
        ``on_update`` sees the job at every poll (its ``iteration`` of ``max_batches``)."""
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["state"] in TERMINAL_STATES:
                return job
            time.sleep(poll_s)

    def download_checkpoint(
        self,
        job_id: int,
        target: Path,
        name: str = "last",
        format: str = "pt",
        progress: ByteProgress | None = None,
    ) -> Path:
        """Write checkpoint ``name`` of the job to ``target`` as ``pt``, ``weights`` or
        ``onnx`` (written when the job's training ends; until then an ApiError, HTTP 409)."""
        path = f"/v1/jobs/{job_id}/checkpoints/{name}"
        return self.download(path, target, {"format": format}, progress)

    # -- datasets --------------------------------------------------------------------------
    def list_datasets(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        page: dict[str, Any] = self.get("/v1/datasets", params={"limit": limit, "offset": offset})
        return page

    def get_dataset(self, dataset_id: int) -> dict[str, Any]:
        dataset: dict[str, Any] = self.get(f"/v1/datasets/{dataset_id}")
        return dataset

    def upload_dataset(self, zip_path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload a zip of a COCO or YOLO dataset folder; the dataset, checked and ready."""
        with zip_path.open("rb") as f:
            response = self.request(
                "POST", "/v1/datasets", files={"file": (zip_path.name, f, "application/zip")},
                data={"name": name} if name else None,
            )  # fmt: skip
        dataset: dict[str, Any] = response.json()
        return dataset

    def generate_dataset(self, **spec: Any) -> dict[str, Any]:
        """Generate ``digits`` or ``shapes`` on the server (the body of
        ``POST /v1/datasets/generate``: ``kind``, ``train``, ``val``, ``size``, ``seed`` ...)."""
        dataset: dict[str, Any] = self.post("/v1/datasets/generate", spec)
        return dataset

    # -- models ----------------------------------------------------------------------------
    def list_models(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of cfgs: bundled ones first, then the tenant's uploads."""
        page: dict[str, Any] = self.get("/v1/models", params={"limit": limit, "offset": offset})
        return page

    def get_model(self, ref: str) -> dict[str, Any]:
        """A cfg by bundled name or upload id."""
        model: dict[str, Any] = self.get(f"/v1/models/{ref}")
        return model

    def upload_model(self, name: str, cfg: str) -> dict[str, Any]:
        """Store a darknet cfg's text under ``name``; its ``ref`` is what jobs name."""
        model: dict[str, Any] = self.post("/v1/models", {"name": name, "cfg": cfg})
        return model

    def model_layers(self, ref: str, size: str | None = None) -> dict[str, Any]:
        """Darknet's layer table of a cfg at ``size`` (``416`` or ``320x192``)."""
        params = {"size": size} if size else None
        table: dict[str, Any] = self.get(f"/v1/models/{ref}/layers", params=params)
        return table


def _raise_for_error(method: str, path: str, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise ApiError(method, path, response.status_code, detail)


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
        with terminate_as_exit():
            wait_until_serving(base, proc, log, timeout)
            key = (settings.home / "api_key").read_text().strip()
            yield Client(base, key)
    finally:
        # `serve` stops its worker on SIGTERM within a minute (warm, then cold shutdown);
        # killed sooner, it would leave the worker training on with no server.
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """For the block, SIGTERM raises SystemExit in the main thread, so the caller's cleanup
    runs (a `kill` of `aetrain quickstart` stops its server and worker too, `aetrain serve`
    its worker); a no-op in other threads, which cannot set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
