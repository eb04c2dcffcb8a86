"""A CSVLogger that keeps the rows of the run it resumes.

Lightning's CSVLogger (2.6) deletes ``metrics.csv`` when it finds its version folder in use, so
``fit.py --ckpt_path last`` with ``--trainer.logger CSVLogger`` would lose every epoch before the
resume. This one reads those rows first and hands them back to the writer, which writes them out
again, with the new rows, under one header. The CLI swaps it in for Lightning's CSVLogger.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) whose ``metrics.csv`` survives a resume into the same version."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._earlier_rows_restored = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._earlier_rows_restored:
            return super().experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        earlier = []
        if path.is_file():
            with path.open(newline="") as file:
                # Empty cells were absent values; leaving them out keeps them absent.
                earlier = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(file)]
        writer = super().experiment  # deletes metrics.csv when the folder is in use
        writer.metrics[:0] = earlier
        self._earlier_rows_restored = True
        return writer
