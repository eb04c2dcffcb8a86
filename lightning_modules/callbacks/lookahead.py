"""Lookahead: airbench's averaging of the weights during training, as a Lightning callback."""

from __future__ import annotations

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor


class Lookahead(L.Callback):
    """Every ``every`` optimiser steps, slow weights move toward the network's and the network is
    reset to them (lookahead, as airbench trains): ``slow += (1 - d) * (net - slow); net = slow``.

    ``d`` grows with training progress *p* (0 -> 1) as ``(decay ** every) * p ** power``, so early
    training runs free and late training, where a decaying learning rate leaves the weights
    jittering around a minimum, is averaged. After the last planned step the network takes the
    slow weights, so validation, test and the saved ``state_dict`` use them.

    Unlike Lightning's ``EMAWeightAveraging`` (a separate average swapped in for evaluation), the
    network itself is pulled back, which is what airbench's recipe measures. It covers every
    floating-point entry of the network's ``state_dict``: parameters and BatchNorm statistics.
    The slow weights are saved in checkpoints, so a resumed run continues the same averaging.

    Args:
        every: optimiser steps between updates (airbench: 5).
        decay: per-step decay at the end of training, before the ``every`` power (airbench: 0.95).
        power: how late the averaging sets in; 3 keeps it near zero for the first half.
    """

    def __init__(self, every: int = 5, decay: float = 0.95, power: float = 3.0) -> None:
        if every < 1:
            raise ValueError(f"Lookahead every={every}: it must be a positive number of optimiser steps (airbench: 5)")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Lookahead decay={decay}: it must be in [0, 1) (airbench: 0.95)")
        if power < 0:
            raise ValueError(f"Lookahead power={power}: it must be >= 0 (airbench: 3)")
        self.every, self.decay, self.power = every, decay, power
        self.slow: dict[str, Tensor] = {}
        self.last_step = -1  # with gradient accumulation several batches end on the same step
        self.total = 0.0  # optimiser steps in the run, read from the Trainer when training starts

    def _floats(self, pl_module) -> dict[str, Tensor]:
        return {k: v for k, v in pl_module.net.state_dict().items() if v.is_floating_point()}

    def on_train_start(self, trainer, pl_module) -> None:
        # Here rather than on_fit_start: data-dependent initialisation (AirbenchNet's whitening)
        # runs in the module's on_fit_start, and a resumed run has loaded its slow weights by now.
        self.total = trainer.estimated_stepping_batches
        if self.total == float("inf"):
            raise MisconfigurationException(
                "Lookahead needs the run's length: set --trainer.max_epochs or --trainer.max_steps"
            )
        current = self._floats(pl_module)
        if self.slow.keys() != current.keys():
            self.slow = {k: v.detach().clone() for k, v in current.items()}
        else:
            self.slow = {k: v.to(current[k].device) for k, v in self.slow.items()}

    def factor(self, step: int, total: int) -> float:
        """The ``d`` of the update after optimiser step ``step`` of ``total``."""
        return self.decay**self.every * min(step / total, 1.0) ** self.power

    @torch.no_grad()
    def update(self, pl_module, d: float) -> None:
        for name, weight in self._floats(pl_module).items():
            slow = self.slow[name]
            slow.lerp_(weight, 1.0 - d)
            weight.copy_(slow)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, self.total
        if step == self.last_step:
            return
        self.last_step = step
        if step >= total:  # the last planned step: the network keeps the slow weights
            self.update(pl_module, 1.0)
        elif step > 0 and step % self.every == 0:
            self.update(pl_module, self.factor(step, total))

    def state_dict(self) -> dict:
        return {"slow": {k: v.cpu() for k, v in self.slow.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.slow = dict(state_dict["slow"])
