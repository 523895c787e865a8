"""Command line for the model library: ``python -m ae_model layers yolov3-tiny --size 416``.

The ``aetrain`` console script mounts this ``app``. Module-level imports stay torch-free so the
CLI starts fast; a command that needs torch imports it inside the command.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ae_model.cfg import CfgError, format_layer_table, resolve_cfg
from ae_model.options import (
    AEConfig,
    AEMode,
    AESchedule,
    AnchorSource,
    LRPolicy,
    TrainConfig,
    TrainOptions,
    option_help,
)

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
    try:
        config = resolve_cfg(cfg)
        for message in config.warnings:
            typer.echo(f"warning: {message}", err=True)
        width, height = parse_size(size) if size else (config.net.width, config.net.height)
        rows = config.layer_table(width, height)
    except CfgError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        # One row per line: valid JSON that still reads like the table.
        typer.echo("[\n" + ",\n".join(json.dumps(row.as_dict()) for row in rows) + "\n]")
    else:
        typer.echo(format_layer_table(rows))


datasets_app = typer.Typer(help="Generated datasets (no download needed).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


# The options of a generated dataset, shared with `aetrain datasets generate` on a server
# (api.client_cli), which takes the same ones.
Kind = Annotated[str, typer.Argument(help="digits (handwritten digits) or shapes.")]
Train = Annotated[int, typer.Option(min=1, help="Training images.")]
Val = Annotated[int, typer.Option(min=1, help="Validation images.")]
Test = Annotated[
    int, typer.Option(min=0, help="Test images (0: no test split; docs/comparisons.md).")
]
Size = Annotated[int, typer.Option(min=32, help="Image side in pixels.")]
Seed = Annotated[int, typer.Option(help="Same seed, same files.")]
MinObjects = Annotated[int, typer.Option(min=0)]
MaxObjects = Annotated[int, typer.Option(min=1)]
MinScale = Annotated[float, typer.Option(help="Smallest object side / image side.")]
MaxScale = Annotated[float, typer.Option(help="Largest object side / image side.")]


@datasets_app.command("generate")
def datasets_generate(
    kind: Kind,
    out: Annotated[Path, typer.Option(help="Folder to write (COCO layout).")],
    train: Train = 500,
    val: Val = 100,
    size: Size = 256,
    seed: Seed = 0,
    min_objects: MinObjects = 1,
    max_objects: MaxObjects = 6,
    min_scale: MinScale = 0.05,
    max_scale: MaxScale = 0.3,
    test: Test = 0,  # last: api.client_cli passes the others by position
) -> None:
    """Write a deterministic detection dataset: images plus COCO annotations."""
    from tqdm import tqdm

    from ae_model.data.synthetic import generate_dataset

    if kind not in ("digits", "shapes"):
        raise typer.BadParameter(f"{kind!r}: choose digits or shapes", param_hint="KIND")
    with tqdm(total=train + val + test, desc=f"generate {kind}", unit="img") as bar:
        try:
            info = generate_dataset(
                kind, out, train=train, val=val, test=test, size=size,  # type: ignore[arg-type]
                seed=seed, min_objects=min_objects, max_objects=max_objects, min_scale=min_scale,
                max_scale=max_scale, progress=bar.update,
            )  # fmt: skip
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    for split, s in info.splits.items():
        typer.echo(
            f"{split}: {s.num_images} images, {s.num_objects} objects -> {s.annotation_file}"
        )


def _ae_config(
    layers: str | None, stride: int | None, schedule: AESchedule, iterations: int | None,
    alpha_max: float, mode: AEMode, detach: bool,
) -> AEConfig | None:  # fmt: skip
    if layers and stride:
        raise typer.BadParameter("give --ae-layers or --ae-stride, not both")
    placement: int | list[int] | dict[str, int]
    if stride:
        placement = {"stride": stride}
    elif layers:
        placement = _numbers(layers, int, "--ae-layers")
    else:
        return None
    return AEConfig(placement, schedule, iterations, alpha_max, mode, detach)


def _numbers(text: str | None, cast: type[Any], option: str) -> Any:
    """``"800,900"`` as ``[800, 900]``; None stays None."""
    if text is None:
        return None
    try:
        return [cast(v) for v in text.split(",")]
    except ValueError as error:
        raise typer.BadParameter(
            f"{text!r}: expected numbers like 800,900", param_hint=option
        ) from error


# Defaults and help texts come from the one definition of the options (ae_model.options);
# tests/ae_model/test_options.py checks that every option has its flag here, with its default.
_TRAIN = TrainOptions()
_AE = AEConfig(layers=0)


def _help(name: str) -> str:
    return option_help(TrainOptions, name)


def _ae_help(name: str) -> str:
    return option_help(AEConfig, name)


@app.command()
def train(
    cfg: Annotated[str, typer.Option(help="A .cfg file or a bundled cfg name.")],
    data: Annotated[Path, typer.Option(help="Dataset folder (COCO or YOLO layout).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/train"),
    max_batches: Annotated[
        int | None, typer.Option(help=_help("max_batches"))
    ] = _TRAIN.max_batches,
    epochs: Annotated[float | None, typer.Option(help=_help("epochs"))] = _TRAIN.epochs,
    batch: Annotated[int | None, typer.Option(help=_help("batch"))] = _TRAIN.batch,
    subdivisions: Annotated[
        int | None, typer.Option(help=_help("subdivisions"))
    ] = _TRAIN.subdivisions,
    learning_rate: Annotated[
        float | None, typer.Option("--lr", help=_help("learning_rate"))
    ] = _TRAIN.learning_rate,
    momentum: Annotated[float | None, typer.Option(help=_help("momentum"))] = _TRAIN.momentum,
    decay: Annotated[float | None, typer.Option(help=_help("decay"))] = _TRAIN.decay,
    burn_in: Annotated[int | None, typer.Option(help=_help("burn_in"))] = _TRAIN.burn_in,
    policy: Annotated[LRPolicy | None, typer.Option(help=_help("policy"))] = _TRAIN.policy,
    steps: Annotated[
        str | None, typer.Option(help=_help("steps") + " Comma-separated, e.g. 800,900.")
    ] = None,
    scales: Annotated[
        str | None, typer.Option(help=_help("scales") + " Comma-separated, e.g. 0.1,0.1.")
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="Input W or WxH (width and height); default the cfg's.")
    ] = None,
    multiscale: Annotated[bool | None, typer.Option(help=_help("multiscale"))] = _TRAIN.multiscale,
    augment: Annotated[bool, typer.Option(help=_help("augment"))] = _TRAIN.augment,
    anchors: Annotated[AnchorSource, typer.Option(help=_help("anchors"))] = _TRAIN.anchors,
    seed: Annotated[int, typer.Option()] = 0,
    ae_layers: Annotated[
        str | None, typer.Option(help="AE layer indices, e.g. 16 or 15,22.")
    ] = None,
    ae_stride: Annotated[
        int | None, typer.Option(help="AE on the layer chosen for stride S.")
    ] = None,
    ae_schedule: Annotated[AESchedule, typer.Option(help=_ae_help("schedule"))] = _AE.schedule,
    ae_iterations: Annotated[
        int | None, typer.Option(help=_ae_help("iterations"))
    ] = _AE.iterations,
    ae_alpha_max: Annotated[float, typer.Option(help=_ae_help("alpha_max"))] = _AE.alpha_max,
    ae_mode: Annotated[AEMode, typer.Option(help=_ae_help("mode"))] = _AE.mode,
    ae_detach: Annotated[bool, typer.Option(help=_ae_help("detach"))] = _AE.detach,
    eval_interval: Annotated[int, typer.Option(help=_help("eval_interval"))] = _TRAIN.eval_interval,
    checkpoint_interval: Annotated[
        int, typer.Option(help=_help("checkpoint_interval"))
    ] = _TRAIN.checkpoint_interval,
    keep: Annotated[int, typer.Option(help=_help("keep"))] = _TRAIN.keep,
    val_limit: Annotated[int | None, typer.Option(help=_help("val_limit"))] = _TRAIN.val_limit,
    nan_rollbacks: Annotated[int, typer.Option(help=_help("nan_rollbacks"))] = _TRAIN.nan_rollbacks,
    nan_lr_factor: Annotated[
        float, typer.Option(help=_help("nan_lr_factor"))
    ] = _TRAIN.nan_lr_factor,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    amp: Annotated[bool, typer.Option(help=_help("amp"))] = _TRAIN.amp,
    compile: Annotated[bool, typer.Option(help=_help("compile"))] = _TRAIN.compile,
    workers: Annotated[int, typer.Option(help=_help("workers"))] = _TRAIN.workers,
    world_size: Annotated[int, typer.Option(help=_help("world_size"))] = _TRAIN.world_size,
    resume: Annotated[Path | None, typer.Option(help="Continue from this checkpoint.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Start from these weights: a darknet .weights file made for --cfg (e.g. "
            "darknet53.conv.74) or a checkpoint (.pt) to fine-tune; layers whose shapes differ "
            "are re-initialised."
        ),
    ] = None,
    weights_cutoff: Annotated[
        int | None, typer.Option(help=option_help(TrainConfig, "weights_cutoff"))
    ] = None,
) -> None:
    """Train a darknet cfg on a dataset; writes last.pt, best.pt, results.csv, results.png."""
    from ae_model.hooks import ProgressBar, ResultsLogger, format_metrics_table
    from ae_model.train import NonFiniteLossError, Trainer

    width, height = parse_size(size) if size else (None, None)
    try:
        config = TrainConfig(
            cfg=cfg, data=str(data), out=str(out), seed=seed, max_batches=max_batches,
            epochs=epochs, batch=batch, subdivisions=subdivisions, learning_rate=learning_rate,
            momentum=momentum, decay=decay, burn_in=burn_in, policy=policy,
            steps=_numbers(steps, int, "--steps"), scales=_numbers(scales, float, "--scales"),
            width=width, height=height, multiscale=multiscale, augment=augment, anchors=anchors,
            device=device, amp=amp, compile=compile, workers=workers, eval_interval=eval_interval,
            checkpoint_interval=checkpoint_interval, keep=keep, val_limit=val_limit,
            nan_rollbacks=nan_rollbacks, nan_lr_factor=nan_lr_factor, world_size=world_size,
            weights=None if weights is None else str(weights), weights_cutoff=weights_cutoff,
            ae=_ae_config(ae_layers, ae_stride, ae_schedule, ae_iterations, ae_alpha_max,
                          ae_mode, ae_detach),
        )  # fmt: skip
        trainer = Trainer(config, hooks=[ProgressBar(), ResultsLogger(out)], resume=resume)
    except (CfgError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    for note in trainer.resolved.notes:
        typer.echo(f"note: {note}", err=True)
    if trainer.start is not None:
        typer.echo(f"note: {trainer.start.describe()}", err=True)
    for warning in trainer.resolved.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if trainer.ae_layers:
        typer.echo(f"Assisted Excitation on layer(s) {trainer.ae_layers}")
    try:
        metrics = trainer.train()
    except NonFiniteLossError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(format_metrics_table(metrics))
    typer.echo(f"checkpoints, results.csv and results.png in {out}")


class ExportFormat(StrEnum):
    onnx = "onnx"
    weights = "weights"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="An aetrain checkpoint (last.pt, best.pt).")],
    format: Annotated[
        ExportFormat, typer.Option(help="onnx (for ONNX Runtime, TensorRT ...) or darknet weights.")
    ] = ExportFormat.onnx,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write; default CHECKPOINT.FORMAT.")
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help="ONNX input W or WxH (multiples of 32); default the training size."),
    ] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset; default 18.")] = None,
) -> None:
    """Write a checkpoint's network (its moving average, if the run kept one) as ONNX (eval
    mode: decoded boxes, no AE, dynamic batch) or as darknet .weights."""
    from ae_model.export import (
        INPUT_NAME,
        ONNX_OPSET,
        OUTPUT_LAYOUT,
        OUTPUT_NAME,
        export_checkpoint_onnx,
        load_trained_network,
    )
    from ae_model.weights import save_darknet_weights

    target = out or checkpoint.with_suffix(f".{format.value}")
    try:
        if format is ExportFormat.onnx:
            dims = parse_size(size) if size else None
            trained = export_checkpoint_onnx(checkpoint, target, dims, opset or ONNX_OPSET)
            width, height = dims or (trained.width, trained.height)
            outputs = 5 + trained.model.heads[0].classes
            typer.echo(
                f"{target}: ONNX opset {opset or ONNX_OPSET}, input {INPUT_NAME} (batch, 3, "
                f"{height}, {width}) RGB in 0..1, output {OUTPUT_NAME} (batch, N, {outputs}): "
                f"{OUTPUT_LAYOUT}"
            )
        else:
            trained = load_trained_network(checkpoint)
            save_darknet_weights(trained.model, target, seen=trained.images_seen)
            typer.echo(f"{target}: darknet weights, {trained.images_seen} images seen")
    except (OSError, ValueError, CfgError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
