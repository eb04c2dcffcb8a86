"""The project's Lightning callbacks, one per module. Each is self-contained: it reads Lightning's
hooks and the module's step outputs, never the module's private state."""

from lightning_modules.callbacks.best_checkpoint import BestCheckpoint
from lightning_modules.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from lightning_modules.callbacks.last_checkpoint import LastCheckpoint
from lightning_modules.callbacks.lookahead import Lookahead
from lightning_modules.callbacks.progress import LineProgress
from lightning_modules.callbacks.random_state import RandomState
from lightning_modules.callbacks.report import RunReport
from lightning_modules.callbacks.tensorboard_figures import TensorBoardFigures
from lightning_modules.callbacks.throughput import ImagesPerSecond

__all__ = [
    "BestCheckpoint",
    "ImagesPerSecond",
    "LastCheckpoint",
    "LineProgress",
    "NonFiniteLossError",
    "Lookahead",
    "RandomState",
    "RunReport",
    "StopOnNonFiniteLoss",
    "TensorBoardFigures",
]
