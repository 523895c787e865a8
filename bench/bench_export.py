"""ONNX export time of aetrain's networks: torch's TorchScript-based exporter (what
``ae_model.export`` uses) against its dynamo exporter, in one process on the CPU.

The worker exports ``last`` and ``best`` when every job ends, so this time is paid per job.

    python bench/bench_export.py [--size 416] [--repeats 3] [--cfgs yolov3-tiny-small ...]
"""

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ae_model.cfg.bundled import resolve_cfg
from ae_model.darknet import Darknet
from ae_model.export import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, export_onnx, inference_copy


def dynamo_export(model: Darknet, size: int) -> None:
    """The same network through torch's dynamo exporter (its program, not saved)."""
    network = inference_copy(model)
    with torch.no_grad():
        torch.onnx.export(
            network, (torch.zeros(1, 3, size, size),), input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET, dynamo=True, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        )  # fmt: skip


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="ONNX export time, two exporters")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cfgs", nargs="+", default=["yolov3-tiny-small", "yolov3-tiny"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    target = Path(tempfile.mkdtemp()) / "bench.onnx"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"{'cfg':<24} {'torchscript s':>14} {'dynamo s':>10} {'ratio':>7}")
    for name in args.cfgs:
        model = Darknet(resolve_cfg(name))
        script = median_seconds(
            partial(export_onnx, model, target, args.size, args.size), args.repeats
        )
        dynamo = median_seconds(partial(dynamo_export, model, args.size), args.repeats)
        print(f"{name:<24} {script:>14.2f} {dynamo:>10.2f} {dynamo / script:>6.1f}x")


if __name__ == "__main__":
    main()
