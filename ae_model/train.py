"""The training loop: darknet's schedule, AE context each step, hooks, exact resume.

Imitates torchvision's detection references (one checkpoint dict, ``--resume`` continues
exactly) and detectron2's hooks (metrics, checkpoints, cancellation plug in without touching
the loop). Training is iteration-based like darknet: ``max_batches`` optimizer steps, each over
``batch`` images split into ``subdivisions`` micro-batches whose gradients accumulate.
"""

import contextlib
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from ae_model import distributed
from ae_model.cfg import parse_cfg, resolve_cfg
from ae_model.checkpoint import (
    CHECKPOINT_VERSION,
    changed_settings,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ae_model.compare.image_bootstrap import DETECTIONS_LAST
from ae_model.darknet import Darknet
from ae_model.data.augment import unletterbox_boxes
from ae_model.data.datasets import DetectionDataset, open_dataset
from ae_model.data.loader import build_loader
from ae_model.device import autocast_dtype, compile_network, select_device
from ae_model.evaluate import COCOEvaluator, Detections, postprocess, timed
from ae_model.excitation import AssistedExcitation, ExcitationContext, attach_excitation
from ae_model.export import load_trained_network
from ae_model.fingerprint import StreamFingerprint, settings_fingerprint, weights_fingerprint
from ae_model.layers import RegionLayer, YoloLayer
from ae_model.loss import YoloLoss
from ae_model.optim import Adam, LRSchedule, build_ema, build_optimizer, build_scheduler
from ae_model.options import AnchorSource, TrainConfig
from ae_model.region_loss import RegionLoss
from ae_model.resolve import resolve_training
from ae_model.weights import load_start_weights

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message says where and what to try."""

    def __init__(self, iteration: int, last_finite: float | None) -> None:
        self.iteration = iteration
        self.last_finite = last_finite
        last = "none yet" if last_finite is None else f"{last_finite:.4f}"
        super().__init__(
            f"loss became non-finite at iteration {iteration} (last finite loss: {last}); "
            "lower learning_rate, lengthen burn_in, or lower AE alpha_max"
        )


class Hook:
    """Training hook: override any of these; each receives the trainer."""

    def before_train(self, trainer: "Trainer") -> None:
        """Called once, before the first iteration (also when resuming)."""

    def after_step(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """Called after each optimizer step with that step's metrics."""

    def after_eval(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """Called after each evaluation with the COCO metrics."""

    def before_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        """Called before a checkpoint file is written: whatever a resume from it would not
        repeat (the metrics of the steps so far) must be stored by now."""

    def after_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        """Called after a checkpoint file is written (``last.pt`` or ``best.pt``)."""

    def after_rollback(self, trainer: "Trainer", error: NonFiniteLossError) -> None:
        """Called after a non-finite loss made the trainer go back to its last checkpoint
        (``nan_rollbacks``): ``trainer.iteration`` is the checkpoint's; metrics of the steps
        after it were of the abandoned run and are about to be trained again."""

    def after_train(self, trainer: "Trainer") -> None:
        """Called once at the end, also when training stopped early or failed."""


class Trainer:
    """Trains a darknet network on a COCO-layout dataset.

    Args:
        config: the run's settings; ``None`` fields are resolved from the cfg's ``[net]``.
        hooks: called at the points named in :class:`Hook`.
        resume: a checkpoint path to continue from exactly.
        rank, address: with ``config.world_size`` > 1, this process's rank and the rendezvous
            address of the run; rank 0 (the caller's) starts the other ranks itself.
    """

    def __init__(
        self,
        config: TrainConfig,
        hooks: Sequence[Hook] = (),
        resume: str | Path | None = None,
        rank: int = 0,
        address: str | None = None,
    ) -> None:
        self.config = config
        self.hooks = list(hooks)
        self.rank = rank
        self.address = address
        self.resumed_from = Path(resume) if resume is not None else None
        self.ddp: DistributedDataParallel | None = None
        self.network: Callable[[torch.Tensor], Any] | None = None  # torch.compile's, if asked
        self._grids: dict[tuple[int, int], dict[str, tuple[int, int]]] = {}  # AE layers' w, h
        self.device = select_device(config.device, rank, config.world_size)
        self.out = Path(config.out)
        self.stop_requested = False
        self.iteration = 0
        self.best_metric: float | None = None
        self.last_finite_loss: float | None = None
        self.rollbacks = 0
        self.history: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []

        self.train_set = open_dataset(config.data, "train")
        self.val_set = open_dataset(config.data, "val")
        cfg = (
            parse_cfg(config.cfg_text, config.cfg)
            if config.cfg_text is not None
            else resolve_cfg(config.cfg)
        )
        self.resolved = resolve_training(
            cfg, config, train_images=len(self.train_set),
            num_classes=self.train_set.num_classes, ae=config.ae,
            box_sizes=self.train_set.box_sizes() if config.anchors == AnchorSource.FIT else None,
        )  # fmt: skip
        r = self.resolved
        seed_everything(config.seed)  # before building: the seed fixes the initial weights
        self.model = Darknet(r.cfg)
        # The cfg as given is the network a .weights start was made for, before retargeting.
        self.start = (
            load_start_weights(self.model, config.weights, cfg, config.weights_cutoff)
            if config.weights is not None
            else None
        )
        self.context = ExcitationContext()
        ae = config.ae
        self.ae_layers = attach_excitation(
            self.model,
            ae.layers if ae else None,
            self.context,
            schedule=ae.schedule if ae else "cosine",
            T=(ae.iterations or r.max_batches) if ae else None,
            alpha_max=ae.alpha_max if ae else 1.0,
            mode=ae.mode if ae else "excite",
            detach=ae.detach if ae else True,
            burn_in=r.burn_in,
            max_batches=r.max_batches,
            width=r.width,
            height=r.height,
        )
        # Before a resume loads its weights: what this seed (and start file) starts from.
        self.initial_weights = weights_fingerprint(self.model)
        self.stream_fingerprint = StreamFingerprint()
        self.model.to(self.device)
        if config.channels_last:  # faster convolutions on CUDA and on CPU (oneDNN) alike
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(self.model.heads, r.cfg.source)
        self.schedule = LRSchedule(
            learning_rate=r.learning_rate,
            max_batches=r.max_batches,
            policy=r.policy,
            burn_in=r.burn_in,
            power=r.power,
            steps=r.steps,
            scales=r.scales,
            step=r.step,
            scale=r.scale,
            gamma=r.gamma,
            learning_rate_min=r.learning_rate_min,
            sgdr_cycle=r.sgdr_cycle,
            sgdr_mult=r.sgdr_mult,
        )
        adam = Adam(r.adam_b1, r.adam_b2, r.adam_eps) if r.optimizer == "adam" else None
        self.optimizer = build_optimizer(self.model, r.learning_rate, r.momentum, r.decay, adam)
        # Built after the model is on its device (the average is a copy of it); it starts
        # averaging at r.ema_start (_update_ema).
        self.ema = build_ema(self.model, r.ema_alpha) if r.ema_alpha else None
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.amp_dtype = autocast_dtype(self.device) if config.amp else None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        config.resolved = {
            **r.as_dict(),
            "classes": list(self.train_set.class_names),
            "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1],
            "start": None if self.start is None else self.start.as_dict(),
        }
        if resume is not None:
            self.load_checkpoint(resume)

    @property
    def fingerprints(self) -> dict[str, Any]:
        """What the seed fixed, as a job records it (``docs/comparisons.md``): ``weights``
        (:func:`weights_fingerprint` before the first step), ``data_stream`` (the first
        iterations' batches, rank 0's share), ``data_stream_iterations``, ``data_settings``
        (what else shapes the batches) and whether ``start`` weights were loaded."""
        r = self.resolved
        shaping = {
            "micro_batch": r.micro_batch, "subdivisions": r.subdivisions, "width": r.width,
            "height": r.height, "random": r.random, "augment": r.as_dict()["augment"],
            "max_batches": r.max_batches, "train_images": len(self.train_set),
            "world_size": self.config.world_size,
        }  # fmt: skip
        return {
            "weights": self.initial_weights,
            **self.stream_fingerprint.as_dict(r.max_batches),
            "data_settings": settings_fingerprint(shaping),
            "start": self.start is not None,
        }

    @property
    def epoch(self) -> float:
        """Passes over the training images so far: ``iteration * batch / len(train_set)``."""
        return self.iteration * self.resolved.batch / max(1, len(self.train_set))

    # -- the loop --------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches from the current iteration on; the same stream a fresh run would see."""
        r = self.resolved
        loader = build_loader(
            self.train_set,
            batch_size=r.micro_batch,
            img_size=(r.width, r.height),
            train=True,
            seed=self.config.seed,
            workers=self.config.workers,
            multiscale=r.random,
            augment_params=r.augment,
            subdivisions=r.subdivisions,
            start_iteration=self.iteration,
            iterations=r.max_batches,
            rank=self.rank,
            world_size=self.config.world_size,
        )
        return iter(loader)

    def train(self) -> dict[str, float]:
        """Run to ``max_batches`` (or until a hook sets ``stop_requested``); final metrics."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.config.world_size == 1:
            return self._train()
        peers: list[subprocess.Popen[bytes]] = []
        if self.rank == 0:
            self.address, peers = distributed.start_peers(self, self.resumed_from)
        assert self.address is not None, "ranks > 0 get the rendezvous address of rank 0"
        try:
            distributed.init(self, self.address)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            final = self._train()
        except BaseException:
            distributed.finish(self, self.address, peers, check=False)
            raise
        distributed.finish(self, self.address, peers)
        return final

    def _train(self) -> dict[str, float]:
        r = self.resolved
        if self.config.compile and self.network is None:
            self.network = compile_network(self.ddp or self.model)
        for hook in self.hooks:
            hook.before_train(self)
        final: dict[str, float] = {}
        last = self.out / "last.pt"
        try:
            if self.config.nan_rollbacks and not last.exists():
                self.save_checkpoint(last)  # something to roll back to before the first one
            batches = self._batches()
            while self.iteration < r.max_batches and not self._stopping():
                try:
                    metrics = self.train_step(batches)
                except NonFiniteLossError as error:
                    if self.rollbacks >= self.config.nan_rollbacks:
                        raise
                    self.roll_back(last, error)
                    batches = self._batches()
                    continue
                self.history.append(metrics)
                for hook in self.hooks:
                    hook.after_step(self, metrics)
                done = self.iteration == r.max_batches
                every = self.config.eval_interval
                if ((every and self.iteration % every == 0) or done) and self.rank == 0:
                    final = self.evaluate()  # first, so last.pt records the best metric
                interval = self.config.checkpoint_interval
                if (interval and self.iteration % interval == 0) or done:
                    self.save_checkpoint(last)
                    if self._keeps_snapshot():
                        self.save_checkpoint(self.out / f"iter_{self.iteration}.pt")
            if self.stop_requested:
                self.save_checkpoint(last)
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return final

    def _keeps_snapshot(self) -> bool:
        """Whether this iteration's checkpoint is also kept as ``iter_N.pt`` (``keep``: every
        keep-th of the ``checkpoint_interval`` checkpoints; ``last.pt`` is overwritten)."""
        every = self.config.keep * self.config.checkpoint_interval
        return every > 0 and self.iteration % every == 0

    def _stopping(self) -> bool:
        """Whether to stop now; with several processes, all stop when rank 0's hooks ask."""
        if self.ddp is not None:
            self.stop_requested = distributed.any_rank(self.stop_requested, self.device)
        return self.stop_requested

    def roll_back(self, path: Path, error: NonFiniteLossError) -> None:
        """Continue from checkpoint ``path`` with the learning rate times ``nan_lr_factor``."""
        rollbacks = self.rollbacks + 1
        self.load_checkpoint(path)
        self.rollbacks = rollbacks
        self.history = [m for m in self.history if m["iteration"] <= self.iteration]
        self.evaluations = [m for m in self.evaluations if m["iteration"] <= self.iteration]
        factor = self.config.nan_lr_factor
        # LambdaLR sets lr = base_lr * lambda(t); its base_lrs live in the checkpoints written
        # from now on, so a resume keeps the lowered rate.
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        log.warning(
            "%s; rollback %d of %d: back to iteration %d with the learning rate times %g",
            error, rollbacks, self.config.nan_rollbacks, self.iteration, factor,
        )  # fmt: skip
        for hook in self.hooks:
            hook.after_rollback(self, error)

    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``subdivisions`` micro-batches; returns its metrics."""
        r = self.resolved
        self.model.train()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(4, device=self.device)
        images_seen = 0
        world = self.config.world_size
        mine = r.subdivisions // world  # micro-batches of this process
        network = self.network if self.network is not None else (self.ddp or self.model)
        waited = 0.0  # in the loader: the device idles unless the loader keeps ahead
        for j in range(mine):
            fetch = time.perf_counter()
            images, targets = next(batches)
            waited += time.perf_counter() - fetch
            self.stream_fingerprint.update(self.iteration, images, targets)
            images = images.to(self.device, non_blocking=True)
            if self.config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(self.device, non_blocking=True)
            self.context.set(targets, images.shape[0], self.iteration)
            if self.network is not None:
                self._prepare_excitation(images.shape[3], images.shape[2])
            with self._gradient_sync(last=j == mine - 1):
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):  # fmt: skip
                    outputs = network(images)
                # Micro-batch j of this process is the iteration's j*world+rank (the sampler's).
                seen = self.iteration * r.batch + (j * world + self.rank) * images.shape[0]
                out = self.loss_fn(
                    [o.float() for o in outputs], targets, (images.shape[3], images.shape[2]),
                    seen,
                )  # fmt: skip
                # DDP averages over the processes: times world, the mean over all micro-batches.
                self.scaler.scale(out.loss * world / r.subdivisions).backward()
            totals += torch.stack([out.loss.detach(), out.box, out.obj, out.cls])
            images_seen += images.shape[0]
        self.context.clear()
        if self.network is not None:
            for module in self.ae_modules().values():
                module.unprepare()
        if self.ddp is not None:
            torch.distributed.all_reduce(totals)  # every rank sees the step's loss, NaN included
            images_seen *= world
        totals /= r.subdivisions
        loss, box, obj, cls = totals.tolist()  # the one host sync per step
        if not math.isfinite(loss):
            raise NonFiniteLossError(self.iteration, self.last_finite_loss)
        self.last_finite_loss = loss
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        alphas = [m.last_alpha for m in self.ae_modules().values()]
        self.iteration += 1
        self._update_ema()
        elapsed = time.perf_counter() - start
        metrics = {
            "iteration": float(self.iteration),
            "loss": loss,
            "loss_box": box,
            "loss_obj": obj,
            "loss_cls": cls,
            "lr": lr,
            "ae_alpha": max(alphas) if alphas else 0.0,
            "images_per_s": images_seen / elapsed,
            "data_wait": waited / elapsed,
            "input_size": float(images.shape[3]),
        }
        if self.device.type == "cuda":
            metrics["gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return metrics

    def _update_ema(self) -> None:
        """darknet's ema_update after the optimizer step, from iteration ``ema_start`` on (the
        first copies the weights). Darknet stops averaging 1000 iterations before the end and
        copies the average into the network; here it averages to the end (docs/training.md)."""
        if self.ema is not None and self.iteration >= self.resolved.ema_start:
            self.ema.update_parameters(self.model)

    @property
    def eval_model(self) -> Darknet:
        """The network evaluation, ``best.pt`` and exported ``.weights`` use: the weights'
        moving average once it has started (``ema_alpha``), else the trained network."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return cast(Darknet, self.ema.module)  # AveragedModel's copy of self.model
        return self.model

    def _prepare_excitation(self, width: int, height: int) -> None:
        """Each AE layer's alpha and mask for this micro-batch, outside the compiled graph."""
        modules = self.ae_modules()
        if (width, height) not in self._grids:
            rows = self.model.layer_table(width, height)
            self._grids[width, height] = {key: rows[int(key)].output[:2] for key in modules}
        for key, (w, h) in self._grids[width, height].items():
            modules[key].prepare(h, w, self.device)

    def ae_modules(self) -> dict[str, AssistedExcitation]:
        """The network's AE modules by layer key (``model.excitations`` may hold other
        modules)."""
        return {
            key: module
            for key, module in self.model.excitations.items()
            if isinstance(module, AssistedExcitation)
        }

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP averages gradients once per step, in the backward of the last micro-batch."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """COCO metrics on the val split (the first ``val_limit`` images if set)."""
        r = self.resolved
        dataset: Any = self.val_set
        if self.config.val_limit is not None:
            dataset = Subset(self.val_set, range(min(self.config.val_limit, len(self.val_set))))
        model = self.eval_model
        model.eval()
        evaluator = self.coco_evaluation(model, self.val_set, dataset)
        model.train()
        metrics = evaluator.summarize()
        metrics["iteration"] = float(self.iteration)
        if self.iteration == r.max_batches:  # per image, for the bootstrap over val images
            evaluator.write_detections(self.out / DETECTIONS_LAST, self.iteration)
        self.evaluations.append(metrics)
        if self.best_metric is None or metrics["AP"] > self.best_metric:
            self.best_metric = metrics["AP"]
            self.save_checkpoint(self.out / "best.pt")
        for hook in self.hooks:
            hook.after_eval(self, metrics)
        return metrics

    @torch.no_grad()
    def evaluate_checkpoint(
        self, path: Path, split: str, detections: Path | None = None
    ) -> dict[str, float]:
        """COCO metrics on ``split`` (e.g. ``"test"``) of the network checkpoint ``path``
        holds, as :meth:`evaluate` scored it (its weights' moving average when the run kept
        one), with the checkpoint's ``iteration``; ``detections``: where to write the
        per-image matches. A copy is evaluated, built under a forked RNG, and no hook is
        called: the network in training, the RNG states and ``evaluations`` stay as they were.
        """
        with torch.random.fork_rng(devices=[]):  # building a network draws initial weights
            trained = load_trained_network(path)
        model = trained.model.to(self.device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        dataset = open_dataset(self.config.data, split)
        evaluator = self.coco_evaluation(model, dataset, dataset)
        metrics = evaluator.summarize()
        metrics["iteration"] = float(trained.iteration)
        if detections is not None:
            evaluator.write_detections(detections, trained.iteration)
        return metrics

    def coco_evaluation(
        self, model: nn.Module, split: DetectionDataset, images: Any
    ) -> COCOEvaluator:
        """``model``'s (in eval mode) detections on ``images`` (``split`` or a Subset of it),
        matched against ``split``'s ground truth, ready to summarize."""
        r = self.resolved
        loader = build_loader(
            images,
            batch_size=r.micro_batch,
            img_size=(r.width, r.height),
            train=False,
            workers=self.config.workers,
        )
        evaluator = COCOEvaluator(split.coco_ground_truth(), split.category_ids)
        for batch, _targets, metas in loader:
            batch = batch.to(self.device, non_blocking=True)
            with timed(evaluator, batch.shape[0], self.device), torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):  # fmt: skip
                detections = postprocess(model(batch).float())
            for det, meta in zip(detections, metas, strict=True):
                boxes = unletterbox_boxes(det.boxes, meta)
                evaluator.update(meta.image_id, Detections(boxes, det.scores, det.labels))
        return evaluator

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # The moving average (ema_alpha) beside the trained weights, which a resume needs.
            "ema": None if self.ema is None else self.ema.state_dict(),
            "iteration": self.iteration,
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "best_metric": self.best_metric,
            "last_finite_loss": self.last_finite_loss,
            "rollbacks": self.rollbacks,
            "stream_fingerprint": self.stream_fingerprint.state(),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write atomically: a crash mid-write never leaves a truncated ``last.pt``. With
        several processes, rank 0 writes (the model is the same on every rank)."""
        if self.rank:
            return
        for hook in self.hooks:
            hook.before_checkpoint(self, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.checkpoint(), tmp)
        tmp.replace(path)
        for hook in self.hooks:
            hook.after_checkpoint(self, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue exactly from ``path``; refuses a checkpoint trained with other settings."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        changed = changed_settings(state["config"], self.config.to_dict())
        if changed:
            raise ValueError(
                f"{path} was trained with other settings, and resuming continues a run exactly: "
                + "; ".join(changed)
                + ". Resume with the checkpoint's settings, or start a new run (its weights "
                "can be exported and loaded as a starting point)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.iteration = state["iteration"]
        self.best_metric = state["best_metric"]
        self.last_finite_loss = state["last_finite_loss"]
        self.rollbacks = state.get("rollbacks", 0)  # absent from checkpoints before rollbacks
        self.stream_fingerprint.load_state(state.get("stream_fingerprint"), self.iteration)
        set_rng_state(state["rng"])


def build_loss(heads: Sequence[nn.Module], source: str = "<cfg>") -> YoloLoss | RegionLoss:
    """The training loss of a network's heads (``Darknet.heads``): :class:`YoloLoss` for
    ``[yolo]`` heads, :class:`RegionLoss` for one ``[region]`` head (YOLOv2)."""
    yolo = [h for h in heads if isinstance(h, YoloLayer)]
    region = [h for h in heads if isinstance(h, RegionLayer)]
    if yolo and not region:
        return YoloLoss(yolo)
    if len(region) == 1 and not yolo:
        return RegionLoss(region)
    raise ValueError(
        f"{source}: aetrain trains [yolo] heads or a single [region] head; this cfg has "
        f"{len(yolo)} [yolo] and {len(region)} [region]"
    )
