"""The tutorial recipe on real CIFAR-10 images (../shared/data/cifar10-jpeg); skipped where absent."""

from __future__ import annotations

import re

import pytest
from helpers import SHARED_CIFAR, run_script

PER_CLASS = 1000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_CIFAR / "train").is_dir(), reason=f"{SHARED_CIFAR} is not present"),
]


def test_tutorial_net_learns_real_images(tmp_path):
    # A subset, linked rather than copied: 1,000 images per class, 2,000 of them held out.
    subset = tmp_path / "cifar-subset" / "train"
    for class_dir in sorted((SHARED_CIFAR / "train").iterdir()):
        (subset / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:PER_CLASS]:
            (subset / class_dir.name / image.name).symlink_to(image)
    result = run_script(
        "fit.py", "--data.data_dir", str(subset.parent), "--data.val_size", "2000", "--trainer.max_epochs", "1",
        # Momentum makes one short epoch enough to see learning; the network is the tutorial's.
        "--optimizer.momentum", "0.9", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train 8,000 | val 2,000" in result.stderr
    accuracy = float(re.search(r"Best checkpoint: .* \(val/acc ([0-9.]+)\)", result.stdout).group(1))
    assert accuracy > 0.25, f"validation accuracy {accuracy:.3f} is not well above chance (0.10)"
