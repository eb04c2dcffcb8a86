"""TrackerFiles: a run's report, figures and best checkpoint, sent to MLflow and W&B as the run's files.

A TensorBoard or CSV run keeps these in its run folder only; with an experiment tracker the team
looks there, so they become the tracked run's files: ``report.json``, ``report.md``,
``config.yaml``, ``confusion_matrix.png`` (written by RunReport and the CLI into the run folder),
``acc_per_class.png`` (drawn here, beside them, from report.json's confusion matrix) and
``checkpoints/best.ckpt``.
They are sent when fitting ends, when testing ends, and when a run is interrupted; a checkpoint
only when it changed since it was last sent. (Lightning's own ``log_model`` sends the files of
whichever ModelCheckpoint saved last, which in fit.py is last.ckpt, not the best.)

The run folder keeps every file whatever happens here: a tracker that cannot take a file is one
warning line, not a failed run.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_modules.callbacks.report import run_folder

FILES = ("report.json", "report.md", "config.yaml", "confusion_matrix.png")
BEST = Path("checkpoints", "best.ckpt")
PER_CLASS = "acc_per_class.png"


class TrackerFiles(L.Callback):
    """Sends the run folder's report files, figures and best checkpoint to MLflow and W&B loggers.

    Args:
        checkpoint: also send ``checkpoints/best.ckpt`` (false: reports and figures only).
    """

    def __init__(self, checkpoint: bool = True) -> None:
        self.checkpoint = checkpoint
        self._sent: dict[tuple[int, str], tuple[int, int]] = {}  # (logger, file) -> (mtime_ns, size) sent

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._send(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._send(trainer)

    def _send(self, trainer) -> None:
        trackers = [lg for lg in trainer.loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]
        if not trackers:
            return
        folder = run_folder(trainer)  # collective under DDP
        if not folder or not trainer.is_global_zero:
            return
        folder = Path(folder)
        per_class_figure(folder / "report.json", folder / PER_CLASS)
        names = [*FILES, PER_CLASS, *([BEST] if self.checkpoint else [])]
        files = [folder / name for name in names if (folder / name).is_file()]
        for logger in trackers:
            for path in files:
                # W&B keeps its own config.yaml (the parameters) in the same place: not replaced.
                if not (isinstance(logger, WandbLogger) and path.name == "config.yaml"):
                    self._send_file(logger, path, folder)

    def _send_file(self, logger, path: Path, base: Path) -> None:
        stat = path.stat()
        key, mark = (id(logger), str(path)), (stat.st_mtime_ns, stat.st_size)
        if self._sent.get(key) == mark and path.suffix == ".ckpt":
            return
        relative = path.relative_to(base)
        try:
            if isinstance(logger, MLFlowLogger):
                parent = str(relative.parent) if relative.parent != Path(".") else None
                logger.experiment.log_artifact(logger.run_id, str(path), parent)
            else:
                # W&B links the file into its run's files/ folder (offline too), keeping the layout.
                logger.experiment.save(str(path), base_path=str(base), policy="now")
        except Exception as err:  # the tracker's own errors (network, storage) are many types
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            rank_zero_warn(f"{relative} was not sent to {type(logger).__name__} ({reason}); the run folder has it")
            return
        self._sent[key] = mark


def per_class_figure(report: Path, target: Path) -> Path | None:
    """Accuracy per class from report.json's confusion matrix, as a PNG at ``target`` (None: no matrix)."""
    try:
        data = json.loads(report.read_text())
        matrix, names = data["confusion_matrix"], data["class_names"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(matrix, dict) or not names:
        return None
    import torch

    from lightning_modules.reporting.confusion import per_class_metrics
    from lightning_modules.reporting.figures import per_class_bar_figure, save_figure

    counts = torch.tensor(matrix["matrix"])
    title = f"Accuracy per class ({matrix.get('stage', 'test')})"
    save_figure(per_class_bar_figure(per_class_metrics(counts)["acc"], names, title), target)
    return target
