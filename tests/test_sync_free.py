"""Training steps never make the host wait for the device: no read-back between the first step and
the epoch's end, for every recipe in configs/ (CPU here; on a GPU each such call is a stall)."""

from __future__ import annotations

import traceback

import lightning as L
import pytest
import torch
from helpers import REPO, make_image_folder
from torch.overrides import TorchFunctionMode

from lightning_modules.cli.fit import fit

# Tensor methods and functions that copy a value to the host or size an output by the data.
READ_BACKS = {
    "item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__", "__repr__",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "is_nonzero", "equal",
    "allclose", "repeat_interleave",
}  # fmt: skip


def _is_read_back(func, args, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    if name in READ_BACKS:
        return True
    if name == "to":
        # On this CPU-only run the training device is the host too, so a move to the module's device
        # looks like a copy to the host; only code that names the host ("cpu") is one on a GPU.
        return any(isinstance(a, str) and a.startswith("cpu") for a in (*args[1:], *kwargs.values()))
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing sizes its output by the data
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


class ReadBackCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_read_back(func, args, kwargs):
            where = "".join(traceback.format_stack(limit=4)[:-1]).strip().replace("\n", " | ")
            self.calls.append(f"{getattr(func, '__name__', func)} at {where}")
        return func(*args, **kwargs)


class CountInsideEpochs(L.Callback):
    """Counts read-backs from the end of each epoch's first training step to the end of its last,
    hooks of the steps in between included. Validation, after the last step, reads results back
    once per epoch, which is the point of it."""

    def __init__(self) -> None:
        self.counter = ReadBackCounter()
        self.steps_watched = 0
        self.active = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.counter.__enter__()
            self.active = True
        elif self.active:
            self.steps_watched += 1
        if self.active and batch_idx == trainer.num_training_batches - 1:
            self.counter.__exit__(None, None, None)
            self.active = False


RECIPES = {
    "tutorial": ["configs/tutorial.yaml"],
    "fast_cpu": ["configs/fast_cpu.yaml"],
    "fast_cpu_long": ["configs/fast_cpu.yaml", "configs/fast_cpu_long.yaml"],
    "fast": ["configs/fast.yaml"],
    "fast_muon": ["configs/fast.yaml", "configs/fast_muon.yaml"],
    "resnet18": ["configs/resnet18.yaml"],
}


def test_every_recipe_is_listed():
    listed = {files[-1] for files in RECIPES.values()}
    assert listed == {f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("sync") / "data", {"train": 30})


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_training_steps_never_wait_for_the_device(recipe, images, tmp_path):
    watch = CountInsideEpochs()
    configs = [arg for path in RECIPES[recipe] for arg in ("--config", str(REPO / path))]
    args = [
        *configs, "--data.data_dir", str(images), "--data.cache_dir", str(tmp_path / "cache"),
        "--data.val_size", "10", "--data.batch_size", "16", "--data.eval_batch_size", "10",
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
        "--trainer.log_every_n_steps", "1",  # a value logged per step would be read back at every step
        "--trainer.precision", "32-true", "--test", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    fit(args, callbacks=[watch])
    assert watch.steps_watched >= 4  # 80 training images in steps of 16, two epochs: 4 steps after each first
    assert watch.counter.calls == [], "\n".join(watch.counter.calls[:6])
