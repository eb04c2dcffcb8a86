"""Optimisation: the MuonSGD optimiser and the WarmupDecay learning-rate schedule, by class path
``lightning_modules.optim.MuonSGD`` and ``lightning_modules.optim.WarmupDecay`` in configs."""

from lightning_modules.optim.muon_sgd import MuonSGD
from lightning_modules.optim.schedules import WarmupDecay

__all__ = ["MuonSGD", "WarmupDecay"]
