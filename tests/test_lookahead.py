"""Lookahead: the update rule, its schedule, the final copy, and its state in checkpoints."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_image_folder
from torch import nn

from lightning_modules.callbacks import Lookahead


def module() -> SimpleNamespace:
    torch.manual_seed(0)
    return SimpleNamespace(net=nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))


def floats(pl_module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pl_module.net.state_dict().items() if v.is_floating_point()}


def step_end(callback, pl_module, step: int, total: int) -> None:
    assert callback.total == total  # taken from the Trainer when training starts
    callback.on_train_batch_end(SimpleNamespace(global_step=step), pl_module, None, None, 0)


def shift(pl_module, amount: float) -> None:
    with torch.no_grad():
        for value in pl_module.net.state_dict().values():
            if value.is_floating_point():
                value.add_(amount)


def test_update_pulls_the_network_back_to_the_slow_weights():
    pl_module, look = module(), Lookahead(every=5, decay=0.9, power=2.0)
    look.on_train_start(SimpleNamespace(estimated_stepping_batches=20), pl_module)
    start = floats(pl_module)
    tracked = pl_module.net[1].num_batches_tracked.clone()
    shift(pl_module, 1.0)  # the optimiser moved every weight by +1
    step_end(look, pl_module, 4, 20)  # not a multiple of 5: nothing happens
    assert all(torch.equal(v, start[k] + 1) for k, v in floats(pl_module).items())
    step_end(look, pl_module, 10, 20)
    d = 0.9**5 * (10 / 20) ** 2
    assert look.factor(10, 20) == pytest.approx(d)
    for name, value in floats(pl_module).items():  # slow moved by 1 - d toward the network, network = slow
        assert torch.allclose(value, start[name] + (1 - d)), name
        assert torch.equal(value, look.slow[name])
    assert torch.equal(pl_module.net[1].num_batches_tracked, tracked)  # integer counters are left alone
    before = floats(pl_module)
    shift(pl_module, 1.0)
    step_end(look, pl_module, 10, 20)  # the same step again (gradient accumulation): no second update
    assert all(torch.equal(v, before[k] + 1) for k, v in floats(pl_module).items())


def test_early_updates_barely_average_and_the_last_step_takes_the_slow_weights():
    pl_module, look = module(), Lookahead()
    look.on_train_start(SimpleNamespace(estimated_stepping_batches=1000), pl_module)
    shift(pl_module, 1.0)
    step_end(look, pl_module, 5, 1000)  # d ~ 1e-7: the network keeps its new weights
    after_first = floats(pl_module)
    slow = {k: v.clone() for k, v in look.slow.items()}
    shift(pl_module, 1.0)
    step_end(look, pl_module, 1000, 1000)  # last planned step: d = 1, the network is reset to slow
    for name, value in floats(pl_module).items():
        assert torch.equal(value, slow[name])
        assert torch.allclose(value, after_first[name])


def test_slow_weights_survive_a_checkpoint_round_trip():
    pl_module, look = module(), Lookahead(every=1)
    look.on_train_start(SimpleNamespace(estimated_stepping_batches=4), pl_module)
    shift(pl_module, 1.0)
    step_end(look, pl_module, 2, 4)
    buffer = io.BytesIO()
    torch.save(look.state_dict(), buffer)
    buffer.seek(0)
    resumed = Lookahead(every=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    shift(pl_module, 5.0)  # the network as the checkpoint holds it differs from the slow weights
    resumed.on_train_start(SimpleNamespace(estimated_stepping_batches=4), pl_module)
    assert all(torch.equal(resumed.slow[k], v) for k, v in look.slow.items())


@pytest.mark.parametrize(("kwargs", "message"), [({"every": 0}, "every=0"), ({"decay": 1.0}, "decay=1.0")])
def test_bad_arguments_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lookahead(**kwargs)


def test_fit_ends_on_the_slow_weights_and_saves_them(tmp_path, monkeypatch):
    from lightning_modules.cli.fit import ClassifierCLI

    make_image_folder(tmp_path / "data", {"train": 6})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["fit.py"])
    cli = ClassifierCLI(
        args=[
            "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "3", "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--test", "false",
            "--trainer.callbacks+=lightning_modules.callbacks.Lookahead", "--trainer.callbacks.every", "2",
        ]
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    look = next(c for c in cli.trainer.callbacks if isinstance(c, Lookahead))
    assert cli.trainer.global_step == 8
    last = torch.load(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=True)
    saved_slow = next(v for k, v in last["callbacks"].items() if k.startswith("Lookahead"))["slow"]
    for name, value in cli.model.net.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, look.slow[name]), name
            assert torch.equal(last["state_dict"][f"net.{name}"], saved_slow[name]), name
