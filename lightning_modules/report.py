"""RunReport: what a run did, written into its run directory as report.json and report.md.

Collects per-epoch metrics with wall time while training, the test results (with per-class
precision/recall/F1) after testing, and writes them, with the resolved config, the best
checkpoint, images/s, versions and device, once ``scripts/fit.py`` is done. report.md holds
the same as tables plus the confusion-matrix PNG beside it.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_modules.atomic_files import atomic_write

TRAIN_METRICS = ("train/acc", "train/precision", "train/recall", "train/f1")


def _floats(metrics: dict, prefixes: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefixes) and "acc_per_class/" not in k}


class RunReport(L.Callback):
    """Collects the run's history; ``write`` puts it on disk. Set ``enabled: false`` to skip."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.epochs: dict[int, dict[str, Any]] = {}
        self.test: dict[str, Any] | None = None
        self.confusion: dict[str, Any] | None = None
        self.class_names: list[str] = []
        self.device = "cpu"

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()
        self.class_names = list(pl_module.class_names)
        self.device = str(trainer.strategy.root_device)
        if trainer.strategy.root_device.type == "cuda":
            self.device += f" ({torch.cuda.get_device_name(trainer.strategy.root_device)})"

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = self.epochs.setdefault(trainer.current_epoch, {"epoch": trainer.current_epoch})
        row.update(step=trainer.global_step, wall_s=round(time.perf_counter() - self.start, 3))
        row.update(_floats(trainer.callback_metrics, ("val/", "train/images_per_s")))
        if "val" in pl_module.confusion_matrices:
            self.confusion = {"stage": "val", "matrix": pl_module.confusion_matrices["val"].tolist()}

    # The module logs train/* in its own on_train_epoch_end, which runs after the callbacks', so a
    # finished epoch's train metrics are read at the next epoch's start, or at the end of fitting.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._add_train_metrics(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._add_train_metrics(trainer, max(self.epochs, default=-1))

    def _add_train_metrics(self, trainer, epoch: int) -> None:
        if epoch in self.epochs:
            self.epochs[epoch].update(_floats(trainer.callback_metrics, TRAIN_METRICS))

    def on_test_end(self, trainer, pl_module) -> None:
        names = list(pl_module.class_names)
        per_class = pl_module.per_class.get("test", {})
        self.test = _floats(trainer.callback_metrics, ("test/",))
        self.test["per_class"] = {
            name: {metric: round(values[i], 6) for metric, values in per_class.items()} for i, name in enumerate(names)
        }
        self.confusion = {"stage": "test", "matrix": pl_module.confusion_matrices["test"].tolist()}
        self.class_names = names

    def summary(self, config: dict, best_checkpoint: str, best_score: float | None) -> dict[str, Any]:
        rates = [row["train/images_per_s"] for row in self.epochs.values() if "train/images_per_s" in row]
        import lightning

        return {
            "config": config,
            "best_checkpoint": best_checkpoint or None,
            "best_val_acc": best_score,
            "epochs": [self.epochs[e] for e in sorted(self.epochs)],
            "test": self.test,
            "class_names": self.class_names,
            "confusion_matrix": self.confusion,
            "wall_time_s": round(time.perf_counter() - self.start, 3),
            "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
            },
            "device": self.device,
        }

    def write(self, run_dir: str | Path, config: dict, best_checkpoint: str, best_score: float | None) -> dict:
        run_dir = Path(run_dir)
        report = self.summary(config, best_checkpoint, best_score)
        atomic_write(run_dir / "report.json", lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))
        figure_name = None
        if self.confusion is not None:
            from lightning_modules.figures import confusion_matrix_figure, save_figure

            figure_name = "confusion_matrix.png"
            title = f"Confusion matrix ({self.confusion['stage']})"
            fig = confusion_matrix_figure(torch.tensor(self.confusion["matrix"]), self.class_names, title)
            save_figure(fig, run_dir / figure_name)
        markdown = to_markdown(report, figure_name)
        atomic_write(run_dir / "report.md", lambda f: f.write(markdown.encode()))
        return report


def to_markdown(report: dict, figure_name: str | None) -> str:
    lines = ["# Run report", ""]
    lines += [
        "| | |",
        "| --- | --- |",
        f"| best checkpoint | `{report['best_checkpoint']}` |",
        f"| best val/acc | {_pct(report['best_val_acc'])} |",
        f"| test/acc | {_pct((report['test'] or {}).get('test/acc'))} |",
        f"| wall time | {report['wall_time_s']:.1f} s |",
        f"| training images/s | {report['train_images_per_s']} |",
        f"| device | {report['device']} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in report['versions'].items())} |",
        "",
        "## Epochs",
        "",
        "| epoch | step | wall s | train/acc | val/loss | val/acc | val/f1 | images/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["epochs"]:
        lines.append(
            f"| {row['epoch']} | {row.get('step', '')} | {row.get('wall_s', 0):.1f} | {_pct(row.get('train/acc'))} | "
            f"{row.get('val/loss', float('nan')):.4f} | {_pct(row.get('val/acc'))} | {_pct(row.get('val/f1'))} | "
            f"{row.get('train/images_per_s', float('nan')):.0f} |"
        )
    if report["test"]:
        lines += ["", "## Test, per class", "", per_class_table(report["test"]["per_class"], markdown=True)]
    if figure_name:
        lines += ["", f"![confusion matrix]({figure_name})"]
    return "\n".join(lines) + "\n"


def per_class_table(per_class: dict[str, dict[str, float]], markdown: bool = False) -> str:
    """Precision / recall / F1 per class, as plain text (console) or a Markdown table."""
    if markdown:
        rows = ["| class | precision | recall | f1 |", "| --- | --- | --- | --- |"]
        rows += [f"| {n} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |" for n, v in per_class.items()]
        return "\n".join(rows)
    width = max([len(n) for n in per_class] + [5])
    rows = [f"{'class':<{width}}  precision  recall     f1"]
    rows += [f"{n:<{width}}  {v['precision']:9.3f}  {v['recall']:6.3f}  {v['f1']:5.3f}" for n, v in per_class.items()]
    return "\n".join(rows)


def _pct(value) -> str:
    return "" if value is None else f"{100 * float(value):.2f}%"
