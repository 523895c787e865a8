"""``aetrain jobs|datasets|models ...``: the API's resources from the command line, through
:class:`api.client.Client`, on ``--server`` or the local server of ``aetrain serve``.

Tables by default, ``--json`` for scripts. An answer of the server that is an error prints its
message (``error: ...``) and exits 1; a server that cannot be reached, or no API key, exits 2.
Torch-free, as the rest of the ``aetrain`` command's imports (tests/test_packages.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ae_model import cli as model_cli

if TYPE_CHECKING:  # imported when a command runs: `aetrain --help` and `serve` start faster
    from api.client import Client

Server = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="AETRAIN_SERVER", show_default=False,
        help="The aetrain server's URL; default the local `aetrain serve` (port 8000).",
    ),
]  # fmt: skip
Key = Annotated[
    str | None,
    typer.Option(
        "--key", "--api-key", envvar="AETRAIN_API_KEY", show_default=False,
        help="API key; default the one `aetrain serve` wrote to AETRAIN_HOME/api_key.",
    ),
]  # fmt: skip
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
JobId = Annotated[int, typer.Argument(metavar="ID", help="The job's id.")]
ModelRef = Annotated[str, typer.Argument(help="A bundled cfg's name or an upload's id.")]

jobs_app = typer.Typer(help="Training jobs on a server: submit, follow, download.")
models_app = typer.Typer(help="Darknet cfgs on a server: bundled and uploaded.")


@contextmanager
def connected(server: str | None, key: str | None) -> Iterator[Client]:
    """A client for ``server`` with ``key`` (see ``Client.from_env``); the server's errors
    become a clean message on stderr and a non-zero exit, never a traceback."""
    import httpx

    from api.client import ApiError, Client, describe_detail

    try:
        client = Client.from_env(server, key)
    except ValueError as error:
        fail(str(error), code=2)
    try:
        yield client
    except ApiError as error:
        fail(f"{describe_detail(error.detail)} (HTTP {error.status_code})")
    except httpx.TransportError as error:
        fail(
            f"cannot reach the aetrain server at {client.base_url} ({error}); start one with "
            "`aetrain serve` or name it with --server (AETRAIN_SERVER)",
            code=2,
        )
    finally:
        client.close()


def fail(message: str, code: int = 1) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, separated by two spaces."""
    cells = [list(headers), *([("" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)  # fmt: skip


def emit(data: Any, as_json: bool, table: Callable[[Any], str]) -> None:
    typer.echo(json.dumps(data, indent=2) if as_json else table(data))


def _when(stamp: str | None) -> str:
    """``2026-12-06T08:30:12.5Z`` as ``2026-12-06 08:30:12``."""
    return stamp[:19].replace("T", " ") if stamp else "-"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# -- jobs ------------------------------------------------------------------------------------
def _jobs_table(page: dict[str, Any]) -> str:
    rows = [
        (j["id"], j["state"], j["spec"].get("model"), j["spec"].get("dataset_id"),
         f"{j['iteration']}/{j['max_batches'] or '?'}", _metric((j["result"] or {}).get("AP")),
         _when(j["created_at"]))
        for j in page["data"]
    ]  # fmt: skip
    table = format_table(["ID", "STATE", "MODEL", "DATASET", "ITERATION", "AP", "CREATED"], rows)
    return f"{table}\n{len(rows)} of {page['count']} jobs"


def _job_text(job: dict[str, Any], checkpoints: list[dict[str, Any]]) -> str:
    spec = job["spec"]
    lines = [
        f"job {job['id']}: {job['state']}" + (" (cancel requested)" * job["cancel_requested"]),
        f"model {spec.get('model')}, dataset {spec.get('dataset_id')}, queue {job['queue']}, "
        f"attempt {job['attempt']}",
        f"iteration {job['iteration']} of {job['max_batches'] or '?'}",
        f"created {_when(job['created_at'])}, started {_when(job['started_at'])}, "
        f"finished {_when(job['finished_at'])}",
    ]
    if job["failure_reason"]:
        lines.append(f"failure: {job['failure_reason']}")
    # The COCO summary; the per-class values are in --json.
    numbers = {
        k: v
        for k, v in (job["result"] or {}).items()
        if isinstance(v, int | float) and "/" not in k and k != "iteration"
    }
    if numbers:
        lines.append("result: " + ", ".join(f"{k} {_metric(v)}" for k, v in numbers.items()))
    for c in checkpoints:
        formats = ", ".join(f"{f} {s['size'] / 2**20:.1f} MiB" for f, s in c["formats"].items())
        lines.append(f"checkpoint {c['name']} (iteration {c['iteration']}): {formats}")
    return "\n".join(lines)


@jobs_app.command("submit")
def jobs_submit(
    spec: Annotated[Path, typer.Argument(help="JSON body of POST /v1/jobs (docs/api.md).")],
    watch: Annotated[bool, typer.Option(help="Then follow it, as `aetrain jobs watch`.")] = False,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Queue a training job; prints its id (``--json``: the job)."""
    try:
        body = json.loads(spec.read_text())
    except (OSError, ValueError) as error:
        fail(f"{spec}: {error}", code=2)
    with connected(server, key) as client:
        job = client.submit_job(body)
        for warning in (job["resolved"] or {}).get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        emit(job, as_json, lambda j: f"job {j['id']} {j['state']} on queue {j['queue']}")
        if watch:
            _watch(client, job["id"])


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """The tenant's jobs, newest first."""
    with connected(server, key) as client:
        emit(client.list_jobs(state, limit), as_json, _jobs_table)


@jobs_app.command("show")
def jobs_show(
    job_id: JobId,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """A job: state, progress, result, checkpoints (``--json``: the job as the API gives it)."""
    with connected(server, key) as client:
        job = client.get_job(job_id)
        if as_json:
            emit(job, True, str)
        else:
            typer.echo(_job_text(job, client.list_checkpoints(job_id)))


@jobs_app.command("watch")
def jobs_watch(
    job_id: JobId,
    server: Server = None,
    key: Key = None,
) -> None:
    """Follow a job with a progress bar until it ends; exit 0 if it succeeded, else 1."""
    with connected(server, key) as client:
        _watch(client, job_id)


def _watch(client: Client, job_id: int, poll_s: float = 1.0) -> None:
    from tqdm import tqdm

    with tqdm(desc=f"job {job_id}", unit="it", dynamic_ncols=True) as bar:

        def show(job: dict[str, Any]) -> None:
            bar.total = job["max_batches"] or bar.total
            bar.set_postfix_str(job["state"], refresh=False)
            bar.update(job["iteration"] - bar.n)

        job = client.wait_for_job(job_id, poll_s, show)
    typer.echo(_job_text(job, []))
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobId,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next step (keeping ``last``)."""
    with connected(server, key) as client:
        job = client.cancel_job(job_id)
        emit(job, as_json, lambda j: f"job {j['id']}: {j['state']}" + (
            ", stops at its next step" if j["state"] == "running" else ""))  # fmt: skip


@jobs_app.command("download")
def jobs_download(
    job_id: JobId,
    name: Annotated[str, typer.Option(help="last or best.")] = "last",
    format: Annotated[
        str, typer.Option(help="pt, weights (darknet) or onnx (written when the job ends).")
    ] = "pt",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Default: job<ID>-<name>.<format>.")
    ] = None,
    server: Server = None,
    key: Key = None,
) -> None:
    """Download a checkpoint with a progress bar; prints the file's path."""
    from tqdm import tqdm

    target = out or Path(f"job{job_id}-{name}.{format}")
    bars: list[tqdm[Any]] = []  # opened once the server answers with the file

    def show(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="B", unit_scale=True, desc=target.name))
        bars[0].update(done - bars[0].n)

    with connected(server, key) as client:
        try:
            client.download_checkpoint(job_id, target, name, format, show)
        finally:
            for bar in bars:
                bar.close()
    typer.echo(target)


# -- datasets ----------------------------------------------------------------------------------
def _datasets_table(page: dict[str, Any]) -> str:
    rows = [
        (d["id"], d["name"], d["status"], len(d["class_names"]), d["num_train"], d["num_val"],
         _when(d["created_at"]))
        for d in page["data"]
    ]  # fmt: skip
    headers = ["ID", "NAME", "STATUS", "CLASSES", "TRAIN", "VAL", "CREATED"]
    return f"{format_table(headers, rows)}\n{len(rows)} of {page['count']} datasets"


def _dataset_text(d: dict[str, Any]) -> str:
    return (
        f"dataset {d['id']} {d['name']!r}: {d['status']}, {d['num_train']} train and "
        f"{d['num_val']} val images, {len(d['class_names'])} classes: "
        + ", ".join(d["class_names"])
    )


def datasets_list(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """The tenant's datasets on the server, newest first."""
    with connected(server, key) as client:
        emit(client.list_datasets(limit), as_json, _datasets_table)


def datasets_show(
    dataset_id: Annotated[int, typer.Argument(metavar="ID")],
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """A dataset on the server: status, image counts, class names (``--json``: its report)."""
    with connected(server, key) as client:
        emit(client.get_dataset(dataset_id), as_json, _dataset_text)


def datasets_upload(
    archive: Annotated[Path, typer.Argument(metavar="ZIP", help="A zip of a COCO/YOLO folder.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Upload a dataset; the server checks every image and box before storing it."""
    if not archive.is_file():
        fail(f"{archive}: no such file", code=2)
    with connected(server, key) as client:
        emit(client.upload_dataset(archive, name), as_json, _dataset_text)


def datasets_generate(
    kind: model_cli.Kind,
    out: Annotated[
        Path | None,
        typer.Option(help="Write it to this folder (COCO layout) here; default: on the server."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="On the server: its name.")] = None,
    train: model_cli.Train = 500,
    val: model_cli.Val = 100,
    size: model_cli.Size = 256,
    seed: model_cli.Seed = 0,
    min_objects: model_cli.MinObjects = 1,
    max_objects: model_cli.MaxObjects = 6,
    min_scale: model_cli.MinScale = 0.05,
    max_scale: model_cli.MaxScale = 0.3,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Generate a deterministic detection dataset (digits or shapes): on the server, ready for
    jobs, or with ``--out`` as files here."""
    if out is not None:
        model_cli.datasets_generate(
            kind, out, train, val, size, seed, min_objects, max_objects, min_scale, max_scale
        )
        return
    with connected(server, key) as client:
        dataset = client.generate_dataset(
            kind=kind, name=name, train=train, val=val, size=size, seed=seed,
            min_objects=min_objects, max_objects=max_objects, min_scale=min_scale,
            max_scale=max_scale,
        )  # fmt: skip
        emit(dataset, as_json, _dataset_text)


def register_dataset_commands(datasets_app: typer.Typer) -> None:
    """Add the server's dataset commands to ``aetrain datasets``, and make its ``generate``
    (files here, from ae_model) generate on the server unless given ``--out``."""
    datasets_app.info.help = "Datasets: generated, uploaded, listed (on a server or here)."
    datasets_app.registered_commands = [
        c for c in datasets_app.registered_commands if c.name != "generate"
    ]
    datasets_app.command("list")(datasets_list)
    datasets_app.command("show")(datasets_show)
    datasets_app.command("upload")(datasets_upload)
    datasets_app.command("generate")(datasets_generate)


# -- models ------------------------------------------------------------------------------------
def _models_table(page: dict[str, Any]) -> str:
    rows = [
        (m["ref"], m["name"], m["source"], m["classes"], f"{m['width']}x{m['height']}",
         m["layers"], f"{m['bflops']:.3f}")
        for m in page["data"]
    ]  # fmt: skip
    headers = ["REF", "NAME", "SOURCE", "CLASSES", "SIZE", "LAYERS", "BFLOPS"]
    return f"{format_table(headers, rows)}\n{len(rows)} of {page['count']} models"


def _model_text(m: dict[str, Any]) -> str:
    lines = [
        f"model {m['ref']} ({m['name']}, {m['source']}): {m['classes']} classes, input "
        f"{m['width']}x{m['height']}x{m['channels']}, {m['layers']} layers, "
        f"{m['bflops']:.3f} BFLOPs"
    ]
    lines += [f"warning: {w}" for w in m["warnings"]]
    return "\n".join(lines)


def _layers_table(table: dict[str, Any]) -> str:
    rows = [
        (r["index"], r["type"], r["filters"] or "", f"{r['size']}/{r['stride']}" if r["size"]
         else "", "x".join(map(str, r["input"])), "x".join(map(str, r["output"])),
         f"{r['bflops']:.3f}", f"{r['out_stride']:g}")
        for r in table["layers"]
    ]  # fmt: skip
    headers = ["LAYER", "TYPE", "FILTERS", "SIZE/STRD", "INPUT", "OUTPUT", "BFLOPS", "STRIDE"]
    total = f"{table['name']} at {table['width']}x{table['height']}: {table['total_bflops']:.3f}"
    return f"{format_table(headers, rows)}\n{total} BFLOPs"


@models_app.command("list")
def models_list(server: Server = None, key: Key = None, as_json: AsJson = False) -> None:
    """Bundled cfgs, then the tenant's uploads."""
    with connected(server, key) as client:
        emit(client.list_models(), as_json, _models_table)


@models_app.command("show")
def models_show(
    ref: ModelRef,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """A cfg: classes, input size, layers, BFLOPs."""
    with connected(server, key) as client:
        emit(client.get_model(ref), as_json, _model_text)


@models_app.command("upload")
def models_upload(
    cfg: Annotated[Path, typer.Argument(help="A darknet .cfg file.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name without .cfg.")] = None,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Upload a cfg; prints its ref, what a job's ``model`` names."""
    try:
        text = cfg.read_text()
    except (OSError, UnicodeDecodeError) as error:
        fail(f"{cfg}: {error}", code=2)
    with connected(server, key) as client:
        emit(client.upload_model(name or cfg.stem, text), as_json, _model_text)


@models_app.command("layers")
def models_layers(
    ref: ModelRef,
    size: Annotated[str | None, typer.Option(help="Input W or WxH; default the cfg's.")] = None,
    server: Server = None,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Darknet's layer table of a cfg on the server, with each layer's output stride."""
    with connected(server, key) as client:
        emit(client.model_layers(ref, size), as_json, _layers_table)
