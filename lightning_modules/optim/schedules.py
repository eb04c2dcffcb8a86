"""WarmupDecay: the learning-rate shape of the fast recipes (linear warm-up, then linear decay).

torch has LinearLR and SequentialLR, but chaining them needs the step counts of both phases
written into the config, and they change whenever the batch size or epoch count does. This one
takes the total length (``ImageClassifier`` fills it in from the Trainer) and fractions.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupDecay(LRScheduler):
    """Multiplies each group's learning rate by a factor that rises linearly from ``start_factor`` to 1
    over the first ``warmup_fraction`` of ``total_steps``, then falls linearly to ``end_factor`` at the end.

    Args:
        optimizer: the optimiser whose learning rates are scheduled.
        total_steps: length of training in scheduler steps (batches with ``--model.lr_scheduler_interval
            step``, epochs otherwise). None: ImageClassifier sets it from the Trainer.
        warmup_fraction: share of ``total_steps`` spent warming up (0 starts at the peak).
        start_factor: factor at step 0.
        end_factor: factor at the last step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.2,
        start_factor: float = 0.2,
        end_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None or total_steps < 1:
            raise ValueError(
                f"WarmupDecay needs total_steps >= 1, got {total_steps}; ImageClassifier fills it in from "
                "--trainer.max_epochs (set a finite one), elsewhere pass --lr_scheduler.total_steps"
            )
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"--lr_scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if start_factor < 0 or end_factor < 0:
            raise ValueError("--lr_scheduler.start_factor and end_factor must be >= 0")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(round(warmup_fraction * total_steps))
        self.start_factor = start_factor
        self.end_factor = end_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.start_factor + (1.0 - self.start_factor) * frac
        decay_steps = max(self.total_steps - 1 - self.warmup_steps, 1)
        frac = min((step - self.warmup_steps) / decay_steps, 1.0)
        return 1.0 + (self.end_factor - 1.0) * frac

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
