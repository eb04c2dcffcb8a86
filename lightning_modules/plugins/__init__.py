"""Trainer plug-ins that fit.py swaps in for Lightning's own: a checkpoint writer that never leaves a
half-written file, and a CSV logger that keeps its rows when a run resumes."""

from lightning_modules.plugins.atomic_checkpoint_io import AtomicCheckpointIO
from lightning_modules.plugins.resumable_csv_logger import ResumableCSVLogger

__all__ = ["AtomicCheckpointIO", "ResumableCSVLogger"]
