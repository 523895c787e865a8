"""The small-scale AE replication of docs/results.md, run through the service.

yolov3-tiny (darknet's cfg, ``flip=0`` because mirrored digits are other glyphs or none) on a
generated ``digits`` dataset; arms: baseline, AE at stride 16 and AE at stride 8, each with
the cosine alpha schedule over the whole run; ``--seeds`` seeds per arm, paired by seed. Runs
on the embedded default (SQLite, file-system broker, one worker) in a temporary home unless
``--server`` names a running aetrain; writes the comparison's JSON and plot to ``--out`` and
prints the table, the verdicts and the wall time.

    python bench/replicate_digits.py --seeds 5 --out docs/results
"""

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ae_model.cfg import bundled_cfg_path
from api.cli import run_comparison
from api.client import Client, embedded_server
from api.core.settings import Settings

DATA = {"kind": "digits", "train": 600, "val": 150, "size": 128, "seed": 0,
        "min_scale": 0.12, "max_scale": 0.35, "max_objects": 4}  # fmt: skip
TRAIN = {"batch": 8, "subdivisions": 1, "width": 128, "height": 128, "learning_rate": 0.003,
         "burn_in": 100, "policy": "constant", "multiscale": False, "workers": 0}  # fmt: skip


def replicate(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    dataset = client.post("/v1/datasets/generate", {**DATA, "name": "replication digits"})
    cfg = bundled_cfg_path("yolov3-tiny").read_text().replace("[net]", "[net]\nflip=0", 1)
    model = client.post("/v1/models", {"name": "yolov3-tiny flip=0", "cfg": cfg})
    train = {**TRAIN, "max_batches": args.max_batches, "eval_interval": args.max_batches // 4,
             "checkpoint_interval": args.max_batches // 4}  # fmt: skip
    body = {
        "name": f"replication: yolov3-tiny on digits, AE stride 8/16 vs baseline, {args.seeds} "
        "seeds",
        "base": {"model": model["id"], "dataset_id": dataset["id"], "train": train},
        "arms": [
            {"name": "baseline", "ae": None},
            {"name": "ae-stride16", "ae": {"layers": {"stride": 16}, "schedule": "cosine"}},
            {"name": "ae-stride8", "ae": {"layers": {"stride": 8}, "schedule": "cosine"}},
        ],
        "seeds": list(range(args.seeds)),
    }
    return run_comparison(client, body, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-batches", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--server", help="a running aetrain server (default: embedded)")
    parser.add_argument("--api-key", help="with --server")
    args = parser.parse_args()
    start = time.monotonic()
    if args.server:
        state = replicate(Client(args.server, args.api_key or ""), args)
    else:
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(home=Path(home))
            with embedded_server(settings, Path(home) / "server.log") as client:
                state = replicate(client, args)
    wall = time.monotonic() - start
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"wall time: {wall / 60:.1f} min for {state['progress']['total']} jobs")
    (args.out / f"comparison-{state['id']}-wall.json").write_text(
        json.dumps({"wall_s": wall, "argv": sys.argv}, indent=2)
    )


if __name__ == "__main__":
    main()
