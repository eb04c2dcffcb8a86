"""The recipes in configs/: each parses, and fast_cpu.yaml runs end to end on tiny data."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from helpers import REPO, make_image_folder, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_modules.cli.fit import fit_main

RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def recipe_configs(recipe: str) -> list[str]:
    """``--config`` arguments for a recipe: an override file (``# extends: base.yaml``) comes after its base."""
    path = REPO / "configs" / recipe
    base = re.search(r"^# extends: (\S+)", path.read_text(), re.MULTILINE)
    files = ([REPO / "configs" / base.group(1)] if base else []) + [path]
    return [arg for f in files for arg in ("--config", str(f))]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_and_takes_two_cpu_steps(recipe, tmp_path):
    make_image_folder(tmp_path / "data", {"train": 6})
    code = fit_main([
        *recipe_configs(recipe), "--data.data_dir", str(tmp_path / "data"), "--data.cache_dir", str(tmp_path / "c"),
        "--data.val_size", "6", "--data.batch_size", "4", "--data.eval_batch_size", "6",
        "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.accelerator", "cpu", "--model.compile", "false", "--test", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    assert code == 0
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["net"]["class_path"].startswith("lightning_modules.nets.")


def test_an_override_recipe_keeps_its_base():
    config = yaml.safe_load((REPO / "configs" / "fast_cpu_long.yaml").read_text())
    assert recipe_configs("fast_cpu_long.yaml")[1].endswith("fast_cpu.yaml")
    # Only values change: the network class, optimiser and data come from fast_cpu.yaml.
    assert "class_path" not in config["model"]["net"] and "optimizer" not in config


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
    recipe = yaml.safe_load((REPO / "configs" / "fast_cpu.yaml").read_text())
    bias_lr_scale = recipe["model"]["bias_lr_scale"]
    optimizer = recipe["optimizer"]["init_args"]
    # A line per epoch; the unvalidated epoch shows no validation figures rather than stale ones.
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" step")[0] for line in lines] == ["epoch 0/1", "epoch 1/1"]  # 0-based, as the bar
    assert "val/acc" not in lines[0] and "val/acc" in lines[1]
    run_dir = tmp_path / "runs" / "fast_cpu" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 32 training images in batches of 8: 4 steps per epoch, 8 in all, and the per-step schedule
    # was sized from the Trainer and stepped every batch.
    assert last["global_step"] == 8
    schedule = last["lr_schedulers"][0]
    assert schedule["total_steps"] == 8 and schedule["last_epoch"] == 8
    assert last["hyper_parameters"]["bias_lr_scale"] == bias_lr_scale
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    # MuonSGD's groups: the head (SGD), the filters (Muon), the biases (SGD, bias_lr_scale times faster).
    lrs = [e.value for e in events.Scalars("lr-MuonSGD/pg1")]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up, then decay
    filters = [e.value for e in events.Scalars("lr-MuonSGD/pg2")]
    # One schedule for both parts: the filters' lr is the head's scaled by muon_lr / lr throughout.
    assert filters == pytest.approx([lr * optimizer["muon_lr"] / optimizer["lr"] for lr in lrs])
    assert max(e.value for e in events.Scalars("lr-MuonSGD/pg3")) == pytest.approx(bias_lr_scale * max(lrs))
    assert len(events.Scalars("val/acc")) == 1
