"""Data-parallel training on one machine: the processes of a :class:`~ae_model.train.Trainer`
with ``world_size`` > 1 (torch.distributed; gloo on CPU, NCCL on CUDA, one GPU per process).

The process that calls ``Trainer.train()`` is rank 0: it runs the hooks, evaluates and writes
the checkpoints. It starts ranks 1..N-1 as new Python processes that build the same
Trainer without hooks; they meet through a rendezvous file in the run's output folder. Each
rank trains its share of every iteration's micro-batches (``IterationBatchSampler``), and
DistributedDataParallel averages the gradients, so N processes compute the step one process
would (see ``docs/training.md``, "Several processes").
"""

import argparse
import json
import logging
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from ae_model.train import Trainer

log = logging.getLogger(__name__)

# How long rank 0 waits for the other ranks to exit after the run before killing them.
JOIN_TIMEOUT_S = 30.0
COLLECTIVE_TIMEOUT = timedelta(hours=12)


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def start_peers(
    trainer: "Trainer", resume: Path | None
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Rank 0: start ranks 1..N-1 and return the rendezvous address they will meet at.

    Each is a new Python process (``python -m ae_model.distributed``), not a fork: nothing of
    rank 0's threads, CUDA state or host (a Celery worker child) comes along.
    """
    run = f"{uuid.uuid4().hex}"
    address = f"file://{(trainer.out / f'.rendezvous-{run}').resolve()}"
    config = trainer.out / f".rendezvous-{run}.json"
    config.write_text(json.dumps(trainer.config.to_dict()))
    peers = []
    for rank in range(1, trainer.config.world_size):
        argv = [sys.executable, "-m", "ae_model.distributed", "--config", str(config),
                "--rank", str(rank), "--address", address]  # fmt: skip
        if resume is not None:
            argv += ["--resume", str(resume)]
        peers.append(subprocess.Popen(argv))
    return address, peers


def _peer_main(argv: list[str] | None = None) -> None:
    from ae_model.options import TrainConfig
    from ae_model.train import Trainer  # here: ae_model.train imports this module

    parser = argparse.ArgumentParser(description="one rank > 0 of a data-parallel run")
    parser.add_argument("--config", required=True, help="the run's TrainConfig as JSON")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--address", required=True, help="rendezvous (init_method) address")
    parser.add_argument("--resume", default=None, help="checkpoint rank 0 resumed from")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"rank {args.rank}: %(levelname)s %(message)s"
    )
    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    trainer = Trainer(config, resume=args.resume, rank=args.rank, address=args.address)
    trainer.train()


def init(trainer: "Trainer", address: str) -> None:
    """Join the process group of the run (every rank)."""
    dist.init_process_group(
        backend(trainer.device),
        init_method=address,
        rank=trainer.rank,
        world_size=trainer.config.world_size,
        # The other ranks wait in a collective while rank 0 evaluates, however long that
        # takes; a rank that dies is noticed by its closed connection, not by this timeout.
        timeout=COLLECTIVE_TIMEOUT,
    )


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (rank 0's hooks ask for a stop)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def finish(
    trainer: "Trainer",
    address: str | None,
    peers: list[subprocess.Popen[bytes]],
    check: bool = True,
) -> None:
    """Leave the process group; rank 0 also waits for the other ranks and removes the
    rendezvous files. A rank that does not exit (its partner failed mid-collective) is killed.
    With ``check``, a rank that failed is an error (without: rank 0 already has one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    for process in peers:
        try:
            process.wait(JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("rank process %s did not exit; killing it", process.pid)
            process.kill()
            process.wait()
    if address is not None and trainer.rank == 0:
        rendezvous = Path(address.removeprefix("file://"))
        rendezvous.unlink(missing_ok=True)
        rendezvous.with_name(rendezvous.name + ".json").unlink(missing_ok=True)
    failed = [(rank, p.returncode) for rank, p in enumerate(peers, 1) if p.returncode]
    if failed and check:
        raise RuntimeError(
            "data-parallel training: "
            + ", ".join(f"rank {rank} exited with code {code}" for rank, code in failed)
        )


if __name__ == "__main__":
    _peer_main()
