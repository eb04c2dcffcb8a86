"""TensorBoardFigures: confusion matrix, per-class accuracy and misclassified images in TensorBoard,
plus the network's graph and the final metrics in the HPARAMS tab."""

from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_modules.reporting import figures
from lightning_modules.reporting.confusion import ConfusionCounter, per_class_metrics


class TensorBoardFigures(L.Callback):
    """After each validation (every ``every_n_epochs``) and after testing, adds to TensorBoard's
    IMAGES tab ``{stage}/confusion_matrix``, ``{stage}/acc_per_class`` and ``{stage}/misclassified``,
    built from the evaluation steps' outputs (``images``, ``preds``, ``targets``).

    The figures are drawn in one background thread from CPU copies of the results, so training
    does not wait for matplotlib; all drawing is finished before fit or test returns. When the run
    ends, the HPARAMS tab gets ``hp/best_val_acc`` (and ``hp/test_acc`` after a test), and the
    GRAPHS tab the network (when the logger has ``log_graph: true``).

    Args:
        every_n_epochs: draw the validation figures every this many epochs.
        max_misclassified: images in the misclassified grid (at most an equal share per true class).
    """

    def __init__(self, every_n_epochs: int = 1, max_misclassified: int = 32) -> None:
        if every_n_epochs < 1 or max_misclassified < 0:
            raise ValueError("TensorBoardFigures: every_n_epochs must be >= 1 and max_misclassified >= 0")
        self.every_n_epochs = every_n_epochs
        self.max_misclassified = max_misclassified
        self.graph_drawn = False
        self.counter = ConfusionCounter()
        self.wrong: tuple[Tensor, list[int], list[int]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    @staticmethod
    def _logger(trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _start(self) -> None:
        self.counter.reset()
        self.wrong = None

    def _collect(self, pl_module, outputs) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            return
        preds, targets = outputs["preds"], outputs["targets"]
        num_classes = len(pl_module.hparams["class_names"])
        self.counter.update(preds, targets, num_classes)
        self._keep_misclassified(outputs["images"], preds, targets, num_classes)

    def _keep_misclassified(self, images: Tensor, preds: Tensor, targets: Tensor, num_classes: int) -> None:
        kept, true, predicted = self.wrong or (images[:0].cpu(), [], [])
        room = self.max_misclassified - len(true)
        if room <= 0:
            return
        # At most an equal share per true class, so the grid is not all from the first classes seen.
        quota = -(-self.max_misclassified // num_classes)
        counts = [true.count(c) for c in range(num_classes)]
        picked = []
        for i in (preds != targets).nonzero().flatten().tolist():
            if len(picked) < room and counts[int(targets[i])] < quota:
                counts[int(targets[i])] += 1
                picked.append(i)
        if picked:
            index = torch.tensor(picked, dtype=torch.long, device=images.device)
            kept = torch.cat([kept, images[index].cpu()])
            true, predicted = true + targets[index].tolist(), predicted + preds[index].tolist()
        self.wrong = (kept, true, predicted)

    def _submit(self, trainer, pl_module, stage: str) -> None:
        names = list(pl_module.hparams["class_names"])
        matrix = self.counter.compute(pl_module, len(names))  # collective under DDP: every rank
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        writer, step, wrong = logger.experiment, trainer.global_step, self.wrong
        per_class = per_class_metrics(matrix)["acc"]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tb-figures")

        def draw() -> None:
            writer.add_figure(f"{stage}/confusion_matrix", figures.confusion_matrix_figure(matrix, names), step)
            writer.add_figure(f"{stage}/acc_per_class", figures.per_class_bar_figure(per_class, names), step)
            if wrong is not None and len(wrong[1]):
                writer.add_figure(f"{stage}/misclassified", figures.misclassified_figure(*wrong, names), step)

        self._pending = [f for f in self._pending if not f.done()] + [self._pool.submit(draw)]

    def _finish(self) -> None:
        for future in self._pending:
            future.result()  # surfaces a drawing error instead of losing it
        self._pending = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._collect(pl_module, outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._submit(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(pl_module, outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._submit(trainer, pl_module, "test")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._finish()
        self._log_final(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._finish()
        self._log_final(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._finish()

    def _log_final(self, trainer, pl_module) -> None:
        """Final metrics into the HPARAMS tab, and the graph once (Lightning draws it only with its
        hyper-parameter autolog, which the CLI turns off to log the final metrics instead)."""
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        score = checkpoint.best_model_score if checkpoint is not None else None
        final = {"hp/best_val_acc": float(score) if score is not None else 0.0}
        if "test/acc" in trainer.callback_metrics:
            final["hp/test_acc"] = float(trainer.callback_metrics["test/acc"])
        logger.log_hyperparams(pl_module.hparams, final)
        # The logger writes hparams.yaml once, before anything is logged ({}), and never again: write
        # what it holds now, so the file says how the run was configured.
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        if logger.log_dir and Path(logger.log_dir).is_dir():
            save_hparams_to_yaml(Path(logger.log_dir) / "hparams.yaml", dict(logger.hparams))
        if not self.graph_drawn:
            self.graph_drawn = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing warnings about shape checks in the net
                try:
                    logger.log_graph(pl_module)  # a no-op unless the logger has log_graph: true
                except RuntimeError as err:  # e.g. torch.jit cannot trace a compiled network
                    print(f"TensorBoard graph not drawn: {str(err).splitlines()[0][:160]}")
        # Lightning closes the writer after fit and test; late events go to a new one, which must be
        # flushed now or they can be lost when the process exits.
        logger.experiment.flush()
