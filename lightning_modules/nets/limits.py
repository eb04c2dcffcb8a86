"""How big a network may be asked to be: checked before anything is allocated.

A config value or a checkpoint's description can ask for any size (``num_classes 8000000`` is 600
bytes in a checkpoint and 2.5 GB in memory; AirbenchNet ``widths`` of 1e5 would be 360 GB), so each
network checks its arguments in its constructor, and the checkpoint loader also counts the
parameters a description implies on the meta device, where nothing is allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

MAX_CLASSES = 100_000
# Channels in one layer: ResNet18's widest layer at --model.net.width 512, AirbenchNet 16x its default.
MAX_WIDTH = 4096
# 4 GB of float32 weights: above the largest network the width limit allows (ResNet18 at width 512,
# 0.71 billion); beyond that a file or a typo asks for the machine's memory, not a model.
MAX_PARAMETERS = 1_000_000_000


def check_net_args(num_classes: int, widths: Iterable[int] = ()) -> None:
    """``ValueError`` naming the option, unless 1 <= num_classes <= MAX_CLASSES and 1 <= width <= MAX_WIDTH."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"--model.net.num_classes {num_classes!r}: use a whole number from 1 to {MAX_CLASSES:,}")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"network width {width!r}: use whole numbers from 1 to {MAX_WIDTH:,} channels")


def parameter_count(build: Callable[[], nn.Module]) -> int:
    """The number of parameters ``build()`` would allocate, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())
