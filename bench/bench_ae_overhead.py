"""Training-step cost of Assisted Excitation: forward + backward with AE on vs off.

One network, one batch, one set of boxes. Steps alternate AE on / AE off (the excitation module
removed from the network), so drift in machine load hits both alike; the medians and their ratio
come from the same run. Target: ratio <= 1.03 on CPU. Then inference: the network with AE
attached, in eval(), against its weights loaded into a network built without AE, forward times
alternating and outputs compared bit for bit (AE must leave a deployed detector unchanged).

    python bench/bench_ae_overhead.py --size 256 --batch 8 --iterations 20
"""

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from ae_model.darknet import Darknet
from ae_model.excitation import ExcitationContext, attach_excitation

DEFAULT_CFG = "yolov3-tiny"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=DEFAULT_CFG, help="a .cfg file or a bundled cfg's name")
    parser.add_argument("--size", type=int, default=256, help="input width and height (px)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--boxes", type=int, default=6, help="ground-truth boxes per image")
    parser.add_argument("--iterations", type=int, default=20, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first")
    parser.add_argument("--stride", type=int, default=16, help="AE placement {'stride': S}")
    parser.add_argument("--mode", default="excite", help="AE mode")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def random_targets(batch: int, boxes: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch*boxes, 6)`` targets ``batch_index, class_id, x1, y1, x2, y2``."""
    centre = torch.rand(batch * boxes, 2, generator=gen) * 0.8 + 0.1
    half = torch.rand(batch * boxes, 2, generator=gen) * 0.15 + 0.02
    index = torch.arange(batch).repeat_interleave(boxes).float()
    cls = torch.zeros(batch * boxes)
    xyxy = torch.cat([centre - half, centre + half], dim=1).clamp(0, 1)
    return torch.cat([index[:, None], cls[:, None], xyxy], dim=1)


def step(model: Darknet, images: torch.Tensor, device: torch.device) -> float:
    """One forward + backward with a simple loss; seconds."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    outputs = model(images)
    torch.stack([out.float().square().mean() for out in outputs]).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def main(args: argparse.Namespace) -> None:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    model = Darknet(args.cfg).to(device).train()
    context = ExcitationContext()
    layers = attach_excitation(
        model,
        {"stride": args.stride},
        context,
        schedule="constant",  # alpha stays 1, so every "on" step really excites
        T=1,
        mode=args.mode,
        width=args.size,
        height=args.size,
        from_cfg=False,
    )
    excitations = dict(model.excitations.items())
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    targets = random_targets(args.batch, args.boxes, gen).to(device)
    context.set(targets, args.batch, 0)

    def run(ae_on: bool) -> float:
        if ae_on:
            model.excitations.update(excitations)
        else:
            model.excitations.clear()  # off: the plain network, not an idle AE module
        return step(model, images, device)

    # The module alone on its layer's output: a bound on the overhead that load noise cannot blur.
    alone: list[float] = []
    for index in layers:
        w, h, c = model.layer_table(args.size, args.size)[index].output
        a = torch.rand(args.batch, c, h, w, device=device, requires_grad=True)
        module = excitations[str(index)]
        for i in range(args.warmup + args.iterations):
            start = time.perf_counter()
            module(a).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                alone.append(time.perf_counter() - start)

    for _ in range(args.warmup):
        run(True)
        run(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.iterations):
        # Alternate which arm goes first, so neither always follows the other.
        for ae_on in (True, False) if i % 2 == 0 else (False, True):
            times[ae_on].append(run(ae_on))

    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"network: {Path(args.cfg).name} at {args.size}x{args.size}, batch {args.batch}, "
        f"{args.boxes} boxes/image, AE mode {args.mode} on layer(s) {layers} "
        f"(stride {args.stride})"
    )
    print(f"steps: {args.warmup} warm-up + {args.iterations} timed per arm, alternating")
    for label, arm in (("off", False), ("on ", True)):
        print(
            f"AE {label}: median {statistics.median(times[arm]) * 1000:.2f} ms, "
            f"min {min(times[arm]) * 1000:.2f} ms"
        )
    module_ms = statistics.median(alone) * 1000 * len(layers)
    print(
        f"AE module alone (mask, excite, backward; an upper bound): {module_ms:.3f} ms "
        f"= {module_ms / (off * 1000):.2%} of the AE-off step"
    )
    # Each pair ran back to back, so its ratio is immune to slow drifts in machine load.
    paired = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
    print(f"ratio on/off: {on / off:.4f} of medians, {paired:.4f} median of per-pair ratios")

    model.excitations.update(excitations)
    inference(model, images, device, args)


def inference(
    with_ae: Darknet, images: torch.Tensor, device: torch.device, args: argparse.Namespace
) -> None:
    """The network with AE attached against its weights in a network built without AE, both
    in eval() as a deployed detector runs: outputs and forward time."""
    plain = Darknet(args.cfg).to(device)
    plain.load_state_dict(with_ae.state_dict())  # AE adds no state: the same keys
    nets = {"with AE": with_ae.eval(), "without AE": plain.eval()}

    def forward(net: Darknet) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = net(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out

    times: dict[str, list[float]] = {name: [] for name in nets}
    outputs: dict[str, torch.Tensor] = {}
    for i in range(args.warmup + args.iterations):
        for name in list(nets) if i % 2 == 0 else list(nets)[::-1]:
            seconds, outputs[name] = forward(nets[name])
            if i >= args.warmup:
                times[name].append(seconds)
    same = torch.equal(outputs["with AE"], outputs["without AE"])
    on, off = (statistics.median(times[name]) for name in nets)
    paired = statistics.median(
        a / b for a, b in zip(times["with AE"], times["without AE"], strict=True)
    )
    print(
        f"inference (eval, same weights): with AE {on * 1000:.2f} ms, without AE "
        f"{off * 1000:.2f} ms; ratio {on / off:.4f} of medians, {paired:.4f} of pairs; "
        f"outputs {'identical' if same else 'DIFFERENT'} (torch.equal)"
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
