"""The tutorial recipe on real CIFAR-10 images: a JPEG copy (``train/<class>/*.jpg``) in the folder
that the environment variable CIFAR10_IMAGES names. ``.ci/run`` sets it to the copy beside the clone
(``../shared/data/cifar10-jpeg``) when there is one; unset, the test skips and says so."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import run_script

PER_CLASS = 1000
VARIABLE = "CIFAR10_IMAGES"
IMAGES = os.environ.get(VARIABLE, "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMAGES, reason=f"{VARIABLE} is not set (the folder of a JPEG copy of CIFAR-10)"),
]


def test_tutorial_net_learns_real_images(tmp_path):
    images = Path(IMAGES)
    # Named but absent is a mistake in the setup, not a reason to skip quietly.
    assert (images / "train").is_dir(), f"{VARIABLE}={IMAGES} has no train/ folder of class folders"
    # A subset, linked rather than copied: 1,000 images per class, 2,000 of them held out.
    subset = tmp_path / "cifar-subset" / "train"
    for class_dir in sorted((images / "train").iterdir()):
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
