"""TensorBoardFigures: confusion matrix, per-class accuracy and misclassified images in TensorBoard."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_modules import figures


class TensorBoardFigures(L.Callback):
    """After each validation (every ``every_n_epochs``) and after testing, adds to TensorBoard's
    IMAGES tab ``{stage}/confusion_matrix``, ``{stage}/acc_per_class`` and ``{stage}/misclassified``.

    The figures are drawn in one background thread from CPU copies of the results, so training
    does not wait for matplotlib; all drawing is finished before fit or test returns.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    @staticmethod
    def _writer(trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _submit(self, trainer, pl_module, stage: str) -> None:
        writer = self._writer(trainer)
        matrix = pl_module.confusion_matrices.get(stage)
        if writer is None or matrix is None or not trainer.is_global_zero:
            return
        names = list(pl_module.class_names)
        per_class = list(pl_module.per_class.get(stage, {}).get("acc", []))
        wrong = pl_module.misclassified.get(stage)
        step = trainer.global_step
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tb-figures")

        def draw() -> None:
            writer.add_figure(f"{stage}/confusion_matrix", figures.confusion_matrix_figure(matrix, names), step)
            if per_class:
                writer.add_figure(f"{stage}/acc_per_class", figures.per_class_bar_figure(per_class, names), step)
            if wrong is not None and len(wrong[1]):
                writer.add_figure(f"{stage}/misclassified", figures.misclassified_figure(*wrong, names), step)

        self._pending = [f for f in self._pending if not f.done()] + [self._pool.submit(draw)]

    def _finish(self) -> None:
        for future in self._pending:
            future.result()  # surfaces a drawing error instead of losing it
        self._pending = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._submit(trainer, pl_module, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._submit(trainer, pl_module, "test")
        self._finish()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._finish()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._finish()
