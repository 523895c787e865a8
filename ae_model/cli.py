"""Command line for the model library: ``python -m ae_model layers yolov3-tiny --size 416``.

The ``aetrain`` console script mounts this ``app``. Module-level imports stay torch-free so the
CLI starts fast; a command that needs torch imports it inside the command.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from ae_model.cfg import CfgError, format_layer_table, resolve_cfg

app = typer.Typer(
    help="aetrain: YOLO detectors from darknet cfgs, with Assisted Excitation.",
    no_args_is_help=True,
)


def parse_size(text: str) -> tuple[int, int]:
    """``"416"`` -> ``(416, 416)``; ``"320x192"`` -> ``(320, 192)`` (width x height)."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(part.strip().isdigit() for part in parts):
        raise typer.BadParameter(f"{text!r}: expected W or WxH, e.g. 416 or 320x192")
    width = int(parts[0])
    height = int(parts[-1])
    if width < 1 or height < 1:
        raise typer.BadParameter(f"{text!r}: width and height must be positive")
    return width, height


@app.command()
def layers(
    cfg: Annotated[str, typer.Argument(help="A .cfg file or a bundled cfg name (yolov3-tiny).")],
    size: Annotated[
        str | None,
        typer.Option(help="Input size, W or WxH; default: the cfg's [net] width and height."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rows as a JSON list instead of a table.")
    ] = False,
) -> None:
    """Print darknet's layer table: each layer's input -> output size and BFLOPs."""
    failure: CfgError | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = resolve_cfg(cfg)
            width, height = parse_size(size) if size else (config.net.width, config.net.height)
            rows = config.layer_table(width, height)
        except CfgError as error:
            failure = error
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    if failure is not None:
        typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(code=2)
    if as_json:
        # One row per line: valid JSON that still reads like the table.
        typer.echo("[\n" + ",\n".join(json.dumps(row.as_dict()) for row in rows) + "\n]")
    else:
        typer.echo(format_layer_table(rows))


datasets_app = typer.Typer(help="Generated datasets (no download needed).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("generate")
def datasets_generate(
    kind: Annotated[str, typer.Argument(help="digits (handwritten digits) or shapes.")],
    out: Annotated[Path, typer.Option(help="Folder to write (COCO layout).")],
    train: Annotated[int, typer.Option(min=1, help="Training images.")] = 500,
    val: Annotated[int, typer.Option(min=1, help="Validation images.")] = 100,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    min_objects: Annotated[int, typer.Option(min=0)] = 1,
    max_objects: Annotated[int, typer.Option(min=1)] = 6,
    min_scale: Annotated[float, typer.Option(help="Smallest object side / image side.")] = 0.05,
    max_scale: Annotated[float, typer.Option(help="Largest object side / image side.")] = 0.3,
) -> None:
    """Write a deterministic detection dataset: images plus COCO annotations."""
    from tqdm import tqdm

    from ae_model.datasets import generate_dataset

    if kind not in ("digits", "shapes"):
        raise typer.BadParameter(f"{kind!r}: choose digits or shapes", param_hint="KIND")
    with tqdm(total=train + val, desc=f"generate {kind}", unit="img") as bar:
        try:
            info = generate_dataset(
                kind, out, train=train, val=val, size=size, seed=seed,  # type: ignore[arg-type]
                min_objects=min_objects, max_objects=max_objects, min_scale=min_scale,
                max_scale=max_scale, progress=bar.update,
            )  # fmt: skip
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    for split, s in info.splits.items():
        typer.echo(
            f"{split}: {s.num_images} images, {s.num_objects} objects -> {s.annotation_file}"
        )


def _ae_config(
    layers: str | None, stride: int | None, schedule: str, iterations: int | None,
    alpha_max: float, mode: str, detach: bool,
) -> Any:  # fmt: skip
    from ae_model.train import AEConfig

    if layers and stride:
        raise typer.BadParameter("give --ae-layers or --ae-stride, not both")
    if stride:
        return AEConfig({"stride": stride}, schedule, iterations, alpha_max, mode, detach)
    if layers:
        try:
            indices = [int(v) for v in layers.split(",")]
        except ValueError as error:
            raise typer.BadParameter(
                f"{layers!r}: expected layer indices like 16 or 15,22"
            ) from error
        return AEConfig(indices, schedule, iterations, alpha_max, mode, detach)
    return None


@app.command()
def train(
    cfg: Annotated[str, typer.Option(help="A .cfg file or a bundled cfg name.")],
    data: Annotated[Path, typer.Option(help="Dataset folder (COCO or YOLO layout).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/train"),
    max_batches: Annotated[int | None, typer.Option(help="Iterations; default the cfg's.")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Instead of --max-batches: passes over the train split.")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="Images per iteration.")] = None,
    subdivisions: Annotated[int | None, typer.Option(help="Micro-batches per iteration.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr")] = None,
    burn_in: Annotated[int | None, typer.Option()] = None,
    size: Annotated[str | None, typer.Option(help="Input W or WxH; default the cfg's.")] = None,
    multiscale: Annotated[bool | None, typer.Option(help="Default: the cfg's random=.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    ae_layers: Annotated[
        str | None, typer.Option(help="AE layer indices, e.g. 16 or 15,22.")
    ] = None,
    ae_stride: Annotated[
        int | None, typer.Option(help="AE on the layer chosen for stride S.")
    ] = None,
    ae_schedule: Annotated[
        str, typer.Option(help="cosine|quarter_cosine|linear|constant|darknet")
    ] = "cosine",
    ae_iterations: Annotated[
        int | None, typer.Option(help="AE length T; default max_batches.")
    ] = None,
    ae_alpha_max: Annotated[float, typer.Option()] = 1.0,
    ae_mode: Annotated[
        str, typer.Option(help="excite|suppress_background|multiplicative")
    ] = "excite",
    ae_detach: Annotated[bool, typer.Option(help="Excitation term as a constant.")] = True,
    eval_interval: Annotated[
        int, typer.Option(help="Evaluate every N iterations (0: at the end).")
    ] = 0,
    checkpoint_interval: Annotated[int, typer.Option()] = 100,
    nan_rollbacks: Annotated[
        int, typer.Option(min=0, help="On a NaN loss, back to the last checkpoint, N times.")
    ] = 0,
    nan_lr_factor: Annotated[
        float, typer.Option(help="Learning rate times this after each rollback.")
    ] = 0.1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    amp: Annotated[
        bool, typer.Option(help="Mixed precision where the device is fast at it (bf16 CPUs too).")
    ] = True,
    compile: Annotated[
        bool, typer.Option(help="Train through torch.compile (the first steps compile).")
    ] = False,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 2,
    world_size: Annotated[
        int, typer.Option(min=1, help="Data-parallel processes (one per GPU on CUDA).")
    ] = 1,
    resume: Annotated[Path | None, typer.Option(help="Continue from this checkpoint.")] = None,
) -> None:
    """Train a darknet cfg on a dataset; writes last.pt, best.pt, results.csv, results.png."""
    from ae_model.hooks import ProgressBar, ResultsLogger, format_metrics_table
    from ae_model.train import NonFiniteLossError, TrainConfig, Trainer

    width, height = parse_size(size) if size else (None, None)
    config = TrainConfig(
        cfg=cfg, data=str(data), out=str(out), seed=seed, max_batches=max_batches, epochs=epochs,
        batch=batch, subdivisions=subdivisions, learning_rate=learning_rate, burn_in=burn_in,
        width=width, height=height, multiscale=multiscale, device=device, amp=amp,
        compile=compile, workers=workers,
        eval_interval=eval_interval, checkpoint_interval=checkpoint_interval,
        nan_rollbacks=nan_rollbacks, nan_lr_factor=nan_lr_factor, world_size=world_size,
        ae=_ae_config(ae_layers, ae_stride, ae_schedule, ae_iterations, ae_alpha_max, ae_mode,
                      ae_detach),
    )  # fmt: skip
    try:
        trainer = Trainer(config, hooks=[ProgressBar(), ResultsLogger(out)], resume=resume)
    except (CfgError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    if trainer.ae_layers:
        typer.echo(f"Assisted Excitation on layer(s) {trainer.ae_layers}")
    try:
        metrics = trainer.train()
    except NonFiniteLossError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(format_metrics_table(metrics))
    typer.echo(f"checkpoints, results.csv and results.png in {out}")
