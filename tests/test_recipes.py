"""The recipes in configs/: each parses, and fast_cpu.yaml runs end to end on tiny data."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import REPO, make_image_folder, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses(recipe, tmp_path):
    make_image_folder(tmp_path / "data", {"train": 2})
    result = run_script(
        "fit.py", "--config", str(REPO / "configs" / recipe), "--data.data_dir", "data", "--print_config", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["net"]["class_path"].startswith("lightning_modules.nets.")
    assert config["trainer"]["max_epochs"] >= 1


@pytest.mark.slow
def test_fast_cpu_recipe_runs_on_tiny_data(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 14})
    result = run_script(
        "fit.py", "--config", str(REPO / "configs" / "fast_cpu.yaml"), "--data.data_dir", "data",
        "--data.val_size", "10", "--data.batch_size", "8", "--trainer.max_epochs", "2",
        # The recipe validates once, after its last epoch; with 2 epochs that is every 2nd.
        "--trainer.check_val_every_n_epoch", "2", "--trainer.log_every_n_steps", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # A line per epoch; the unvalidated epoch shows no validation figures rather than stale ones.
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" step")[0] for line in lines] == ["epoch 0/2", "epoch 1/2"]
    assert "val/acc" not in lines[0] and "val/acc" in lines[1]
    run_dir = tmp_path / "runs" / "fast_cpu" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 32 training images in batches of 8: 4 steps per epoch, 8 in all, and the per-step schedule
    # was sized from the Trainer and stepped every batch.
    assert last["global_step"] == 8
    schedule = last["lr_schedulers"][0]
    assert schedule["total_steps"] == 8 and schedule["last_epoch"] == 8
    assert last["hyper_parameters"]["bias_lr_scale"] == 64.0
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    lrs = [e.value for e in events.Scalars("lr-SGD/pg1")]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up, then decay
    assert max(e.value for e in events.Scalars("lr-SGD/pg2")) == pytest.approx(64 * max(lrs))
    assert len(events.Scalars("val/acc")) == 1
