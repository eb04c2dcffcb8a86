"""RandomState: the random-number generators' states in every checkpoint, restored on resume."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch


class RandomState(L.Callback):
    """Saves Python's, torch's and CUDA's generator states in each checkpoint (``rng_states``) and
    restores them when training resumes from it.

    Lightning does not save them. With them, a run resumed from an epoch-boundary checkpoint shuffles
    and augments exactly as the uninterrupted run would have. Testing or predicting from a checkpoint
    leaves the generators alone. fit.py always adds this callback.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states or not trainer.training:
            return
        random.setstate(states["python"])
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
