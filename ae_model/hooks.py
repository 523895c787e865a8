"""Hooks for people watching a run: a progress bar, ``results.csv`` and ``results.png``."""

import csv
from pathlib import Path
from typing import TextIO

from ae_model.progress import Progress
from ae_model.train import Hook, NonFiniteLossError, Trainer

# Columns of results.csv: the iteration, the mean training losses since the last evaluation,
# then the COCO metrics of that evaluation.
LOSS_KEYS = ("loss", "loss_box", "loss_obj", "loss_cls")
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "latency_ms")


class ProgressBar(Hook):
    """A bar over iterations showing loss, AE alpha, learning rate and images/s
    (``ae_model.progress``: fits the terminal, a line per 10% when written to a file)."""

    def __init__(
        self, description: str = "train", disable: bool = False, file: TextIO | None = None
    ) -> None:
        self.description = description
        self.disable = disable
        self.file = file
        self.bar: Progress | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.bar = Progress(
            trainer.resolved.max_batches, self.description, initial=trainer.iteration,
            file=self.file, disable=self.disable,
        )  # fmt: skip

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        numbers = [f"loss={metrics['loss']:.3g}"]  # most important first: the end may be cut
        if trainer.ae_modules():
            numbers.append(f"ae={metrics['ae_alpha']:.2f}")
        numbers += [f"lr={metrics['lr']:.0e}", f"img/s={metrics['images_per_s']:.0f}",
                    f"data={metrics['data_wait']:.0%}"]  # fmt: skip
        self.bar.update(trainer.iteration, numbers=" ".join(numbers))

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.write(
                f"iteration {trainer.iteration}: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}"
            )

    def after_rollback(self, trainer: Trainer, error: NonFiniteLossError) -> None:
        if self.bar is not None:
            self.bar.write(f"{error}; back to iteration {trainer.iteration}, lower learning rate")
            self.bar.update(trainer.iteration, numbers=self.bar.numbers)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class ResultsLogger(Hook):
    """Appends one row per evaluation to ``out/results.csv`` and redraws ``out/results.png``."""

    def __init__(self, out: Path) -> None:
        self.csv_path = out / "results.csv"
        self.png_path = out / "results.png"
        self._losses: list[dict[str, float]] = []
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._losses.append(metrics)
        self.steps.append(metrics)

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        n = max(1, len(self._losses))
        row: dict[str, float] = {"iteration": float(trainer.iteration)}
        row.update({k: sum(m[k] for m in self._losses) / n for k in LOSS_KEYS})
        row.update({k: metrics.get(k, 0.0) for k in METRIC_KEYS})
        self._losses = []
        self.evals.append(row)
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.plot()

    def after_rollback(self, trainer: Trainer, error: NonFiniteLossError) -> None:
        # Rows after the checkpoint belong to the abandoned run; they are trained again.
        kept = trainer.iteration
        self._losses = [m for m in self._losses if m["iteration"] <= kept]
        self.steps = [m for m in self.steps if m["iteration"] <= kept]
        self.evals = [r for r in self.evals if r["iteration"] <= kept]
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields, rows = reader.fieldnames or [], list(reader)
            with self.csv_path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(r for r in rows if float(r["iteration"]) <= kept)

    def plot(self) -> None:
        """Training losses per iteration and validation AP / AP50 per evaluation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
        x = [m["iteration"] for m in self.steps]
        for key in LOSS_KEYS:
            ax_loss.plot(x, [m[key] for m in self.steps], label=key, linewidth=1)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("iteration")
        ax_loss.set_title("training loss (per image)")
        ax_loss.legend()
        xe = [r["iteration"] for r in self.evals]
        for key in ("AP", "AP50"):
            ax_ap.plot(xe, [r[key] for r in self.evals], marker="o", label=key)
        ax_ap.set_xlabel("iteration")
        ax_ap.set_title("validation (COCO)")
        ax_ap.set_ylim(bottom=0)
        ax_ap.legend()
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=100)
        plt.close(fig)


def format_metrics_table(metrics: dict[str, float]) -> str:
    """COCO's 12 numbers, as COCOeval's summary names them, plus the latency."""
    lines = [f"{'metric':<12}{'value':>8}"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        if key in metrics:
            value = metrics[key]
            lines.append(f"{key:<12}{'n/a' if value < 0 else f'{value:.4f}':>8}")
    if "latency_ms" in metrics:
        lines.append(f"{'latency_ms':<12}{metrics['latency_ms']:>8.2f}")
    return "\n".join(lines)
