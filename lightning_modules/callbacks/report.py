"""RunReport: what a run did, written into its run directory as report.json and report.md.

Collects per-epoch metrics with wall time while training and the test results (with per-class
precision/recall/F1 from its own confusion matrix of the test step outputs), and writes them,
with the run's config.yaml, the best checkpoint, images/s, versions and device, when fitting
ends, when testing ends, and when the run is interrupted (with what finished). report.md holds
the same as tables, plus the confusion-matrix PNG beside it.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from datamodules.atomic_files import atomic_write
from lightning_modules.reporting.confusion import ConfusionCounter, per_class_metrics
from lightning_modules.reporting.tables import markdown_table, pct, text_table

TRAIN_METRICS = ("train/acc", "train/precision", "train/recall", "train/f1")


def _floats(metrics: dict, prefixes: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefixes) and "acc_per_class/" not in k}


def run_folder(trainer) -> str | None:
    """The run's folder (config.yaml, checkpoints/, the report), whatever the loggers: the TensorBoard
    or CSV logger's version folder when one is first, else the Trainer's ``default_root_dir``. MLflow
    and W&B keep no folder of their own (``trainer.log_dir`` is then their tracking store, or None),
    so fit.py sets ``default_root_dir`` to ``runs/<name>/version_N`` for them. Every process must
    call it under DDP (it broadcasts rank 0's answer)."""
    log_dir = trainer.log_dir  # collective
    if not trainer.loggers or isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)):
        return log_dir
    return trainer.strategy.broadcast(str(trainer.default_root_dir))


class RunReport(L.Callback):
    """Writes report.json and report.md into the run directory. Set ``enabled: false`` to skip.

    Args:
        enabled: write the report.
        print_per_class: print the test's per-class precision/recall/F1 table after testing.
        checkpoint: the checkpoint a run that does not train scores (scripts/evaluate.py); a training
            run reports its best checkpoint instead.
        split: the split the test stage scores, and the prefix of its metrics (evaluate.py --split
            val logs and reports ``val/acc``; fit.py's test is ``test``).

    The epochs collected so far are saved in checkpoints, so a resumed run reports the whole run.
    """

    def __init__(
        self, enabled: bool = True, print_per_class: bool = True, checkpoint: str | None = None, split: str = "test"
    ) -> None:
        self.enabled = enabled
        self.split = split
        self.checkpoint = checkpoint
        self.print_per_class = print_per_class
        self.start = time.perf_counter()
        self.elapsed_before = 0.0  # wall seconds of the run before a resume
        self.train_s = 0.0  # seconds spent in training steps (no start-up, no validation), GPU-synchronised
        self._train_mark: float | None = None
        self.epochs: dict[int, dict[str, Any]] = {}
        self.test: dict[str, Any] | None = None
        self.confusion: dict[str, Any] | None = None
        self.class_names: list[str] = []
        self.device = "cpu"
        self.counter = ConfusionCounter()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs.values()),
            "wall_s": self.elapsed_before + self._since_start(),
            "train_s": self.train_s,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.epochs:
            # Testing the best checkpoint of this very run restores callbacks too; what this run has
            # seen since that checkpoint is newer, so it stays.
            return
        self.epochs = {int(row["epoch"]): dict(row) for row in state_dict.get("epochs", [])}
        self.elapsed_before = float(state_dict.get("wall_s", 0.0))
        self.train_s = float(state_dict.get("train_s", 0.0))

    def _since_start(self) -> float:
        return time.perf_counter() - self.start

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.class_names = list(pl_module.hparams.get("class_names", []))
        self.device = str(trainer.strategy.root_device)
        if trainer.strategy.root_device.type == "cuda":
            self.device += f" ({torch.cuda.get_device_name(trainer.strategy.root_device)})"

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    @staticmethod
    def _synced_now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # once per epoch: queued GPU work counts where it ran
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._train_mark = self._synced_now(pl_module)
        self._add_train_metrics(trainer, trainer.current_epoch - 1)

    def _stop_training_clock(self, pl_module) -> None:
        if self._train_mark is not None:
            self.train_s += self._synced_now(pl_module) - self._train_mark
            self._train_mark = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_training_clock(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_training_clock(pl_module)  # epochs without validation

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        row = self.epochs.setdefault(trainer.current_epoch, {"epoch": trainer.current_epoch})
        row.update(step=trainer.global_step, wall_s=round(self.elapsed_before + self._since_start(), 3))
        row.update(_floats(trainer.callback_metrics, ("val/", "train/images_per_s")))

    # The module logs train/* in its own on_train_epoch_end, which runs after the callbacks', so a
    # finished epoch's train metrics are read at the next epoch's start, or at the end of fitting.
    def _add_train_metrics(self, trainer, epoch: int) -> None:
        if epoch in self.epochs:
            self.epochs[epoch].update(_floats(trainer.callback_metrics, TRAIN_METRICS))

    def _count(self, outputs) -> None:
        if isinstance(outputs, dict) and "preds" in outputs:
            self.counter.update(outputs["preds"], outputs["targets"], len(self.class_names))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.counter.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self.test is None:
            matrix = self.counter.compute(pl_module, len(self.class_names))  # collective: every rank
            self.confusion = {"stage": "val", "matrix": matrix.tolist()}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.counter.reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        matrix = self.counter.compute(pl_module, len(self.class_names))  # collective: every rank
        per_class = per_class_metrics(matrix)
        self.test = {
            "per_class": {
                name: {metric: round(values[i], 6) for metric, values in per_class.items()}
                for i, name in enumerate(self.class_names)
            }
        }
        self.confusion = {"stage": self.split, "matrix": matrix.tolist()}

    def on_fit_end(self, trainer, pl_module) -> None:
        self._add_train_metrics(trainer, max(self.epochs, default=-1))
        self.write(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        # Read here: the module logs test/* in its own on_test_epoch_end, after the callbacks' one.
        self.test = {**_floats(trainer.callback_metrics, (f"{self.split}/",)), **(self.test or {})}
        self.write(trainer)
        if self.print_per_class and self.test and trainer.is_global_zero:
            print(per_class_table(self.test["per_class"]))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # What finished before the interruption; a start that failed before any step reports nothing
        # (and leaves no run folder behind).
        if self.epochs or self.test or trainer.global_step > 0:
            self.write(trainer)

    def summary(self, trainer, run_dir: Path) -> dict[str, Any]:
        rates = [row["train/images_per_s"] for row in self.epochs.values() if "train/images_per_s" in row]
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        score = checkpoint.best_model_score if checkpoint is not None and best else None
        config_file = run_dir / "config.yaml"  # written by LightningCLI when the run started
        import lightning

        return {
            "config": yaml.safe_load(config_file.read_text()) if config_file.is_file() else None,
            "best_checkpoint": best or self.checkpoint,
            "best_val_acc": float(score) if score is not None else None,
            "epochs": [self.epochs[e] for e in sorted(self.epochs)],
            "test": self.test,
            "split": self.split,
            "class_names": self.class_names,
            "confusion_matrix": self.confusion,
            "wall_time_s": round(self.elapsed_before + self._since_start(), 3),
            "train_seconds": round(self.train_s, 3),
            "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
            },
            "device": self.device,
        }

    def write(self, trainer) -> dict | None:
        """Write report.json, report.md and the confusion-matrix PNG into the run directory."""
        if not self.enabled:
            return None
        run_dir = run_folder(trainer)  # a collective call under DDP: every process makes it
        if run_dir is None or not trainer.is_global_zero:
            return None
        run_dir = Path(run_dir)
        report = self.summary(trainer, run_dir)
        atomic_write(run_dir / "report.json", lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))
        figure_name = None
        if self.confusion is not None:
            from lightning_modules.reporting.figures import confusion_matrix_figure, save_figure

            figure_name = "confusion_matrix.png"
            title = f"Confusion matrix ({self.confusion['stage']})"
            fig = confusion_matrix_figure(torch.tensor(self.confusion["matrix"]), self.class_names, title)
            save_figure(fig, run_dir / figure_name)
        markdown = to_markdown(report, figure_name)
        atomic_write(run_dir / "report.md", lambda f: f.write(markdown.encode()))
        rank_zero_info(f"Report: {run_dir / 'report.md'}")
        return report


def to_markdown(report: dict, figure_name: str | None) -> str:
    split = report.get("split", "test")
    summary = [
        ("best checkpoint", f"`{report['best_checkpoint']}`"),
        ("best val/acc", pct(report["best_val_acc"])),
        (f"{split}/acc", pct((report["test"] or {}).get(f"{split}/acc"))),
        ("wall time", f"{report['wall_time_s']:.1f} s"),
        ("training steps", f"{report['train_seconds']:.1f} s (without start-up and validation)"),
        ("training images/s", report["train_images_per_s"]),
        ("device", report["device"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in report["versions"].items())),
    ]
    epochs = [
        (
            row["epoch"], row.get("step", ""), f"{row.get('wall_s', 0):.1f}", pct(row.get("train/acc")),
            f"{row.get('val/loss', float('nan')):.4f}", pct(row.get("val/acc")), pct(row.get("val/f1")),
            f"{row.get('train/images_per_s', float('nan')):.0f}",
        )
        for row in report["epochs"]
    ]  # fmt: skip
    head = ("epoch", "step", "wall s", "train/acc", "val/loss", "val/acc", "val/f1", "images/s")
    lines = ["# Run report", "", markdown_table(("", ""), summary), "", "## Epochs", "", markdown_table(head, epochs)]
    if report["test"]:
        lines += [
            "",
            f"## {split.capitalize()}, per class",
            "",
            per_class_table(report["test"]["per_class"], markdown=True),
        ]
    if figure_name:
        lines += ["", f"![confusion matrix]({figure_name})"]
    return "\n".join(lines) + "\n"


def per_class_table(per_class: dict[str, dict[str, float]], markdown: bool = False) -> str:
    """Precision / recall / F1 per class, as plain text (console) or a Markdown table."""
    rows = [(n, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}") for n, v in per_class.items()]
    head = ("class", "precision", "recall", "f1")
    return markdown_table(head, rows) if markdown else text_table(head, rows, right=(1, 2, 3))
