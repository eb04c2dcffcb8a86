"""The fast recipes' training features: parameter groups, decoupled weight decay, WarmupDecay, channels-last."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_modules import ImageClassifier
from lightning_modules.nets import Tudui
from lightning_modules.optim.schedules import WarmupDecay

SGD = {
    "class_path": "torch.optim.SGD",
    "init_args": {"lr": 0.5, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
}
WARMUP_DECAY = {"class_path": "lightning_modules.optim.WarmupDecay", "init_args": {"warmup_fraction": 0.25}}


class ConvBN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def make_model(optimizer: dict = SGD, **kwargs) -> ImageClassifier:
    return ImageClassifier(ConvBN(), optimizer=optimizer, **kwargs)


def with_trainer(model: ImageClassifier, steps: int, epochs: int) -> ImageClassifier:
    model._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=epochs)
    return model


def test_biases_get_their_own_learning_rate():
    model = make_model(bias_lr_scale=64.0)
    model.net.norm.weight.requires_grad_(False)  # frozen parameters are left out of every group
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["nesterov"]
    weights, biases = optimizer.param_groups
    net = model.net
    assert [id(p) for p in biases["params"]] == [id(net.norm.bias), id(net.head.bias)]
    assert [id(p) for p in weights["params"]] == [id(net.conv.weight), id(net.head.weight)]
    assert (weights["lr"], biases["lr"]) == (0.5, 32.0)
    assert weights["weight_decay"] == biases["weight_decay"] == 0.01  # coupled: plain SGD's meaning
    # Scale 1: one group, as before the option existed (old checkpoints' optimizer states still load).
    assert len(make_model().configure_optimizers().param_groups) == 1


def test_decoupled_weight_decay_shrinks_every_group_alike():
    plain_sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5, "weight_decay": 0.01}}  # no momentum
    model = make_model(plain_sgd, bias_lr_scale=64.0, decoupled_weight_decay=True)
    optimizer = model.configure_optimizers()
    for group in optimizer.param_groups:
        assert math.isclose(group["lr"] * group["weight_decay"], 0.01)
    # With zero gradients, one step shrinks each weight by exactly lr * weight_decay = 1%, in both groups.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with torch.no_grad():
        for p in params:
            p.fill_(2.0)
            p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.allclose(p, torch.full_like(p, 1.98)) for p in params)


def test_warmup_decay_shape():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = WarmupDecay(optimizer, total_steps=11, warmup_fraction=0.2, start_factor=0.25, end_factor=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # 2 warm-up steps from 0.25 to 1, peak at step 2, linear down to 0.1 at the last step (10).
    expected = [0.5, 1.25, 2.0] + [2.0 + (0.2 - 2.0) * k / 8 for k in range(1, 9)]
    assert lrs == pytest.approx(expected)
    state = schedule.state_dict()
    assert "optimizer" not in state and state["total_steps"] == 11
    with pytest.raises(ValueError, match="total_steps"):
        WarmupDecay(optimizer)


@pytest.mark.parametrize(("interval", "expected"), [("step", 120), ("epoch", 6)])
def test_schedule_length_comes_from_the_trainer(interval, expected):
    model = with_trainer(make_model(lr_scheduler=WARMUP_DECAY, lr_scheduler_interval=interval), steps=120, epochs=6)
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert type(scheduler) is WarmupDecay and scheduler.total_steps == expected
    assert config["lr_scheduler"]["interval"] == interval
    # torch's OneCycleLR takes its length the same way.
    one_cycle = {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 1.0}}
    model = with_trainer(make_model(lr_scheduler=one_cycle, lr_scheduler_interval=interval), steps=120, epochs=6)
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].total_steps == expected


def test_channels_last_keeps_the_logits():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    plain = make_model().eval()
    fast = make_model(channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.setup("fit")
    assert fast.net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast(images), plain(images), atol=1e-5)
    assert set(fast.state_dict()) == set(plain.state_dict())  # checkpoints stay interchangeable


@pytest.mark.slow
def test_ema_of_the_weights_through_the_cli(tmp_path):
    from helpers import make_image_folder, run_script

    make_image_folder(tmp_path / "data", {"train": 10})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "8",
        "--trainer.max_epochs", "2", "--test", "false", "--optimizer.momentum", "0.9",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
        "--trainer.callbacks.decay", "0.5", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, current = last["state_dict"], last["current_model_state"]
    assert set(averaged) == set(current)
    # The saved weights are the average, which trails the current ones.
    assert not torch.equal(averaged["net.model.0.weight"], current["net.model.0.weight"])


@pytest.mark.slow
def test_compiled_network_trains_and_saves_plain_keys(tmp_path):
    from helpers import make_image_folder, run_script

    make_image_folder(tmp_path / "data", {"train": 6, "test": 2})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6",
        "--trainer.max_epochs", "1", "--model.compile", "true", "--model.channels_last", "true",
        # Training's graphs only: each evaluation graph is another compilation of ~10 s on 2 cores.
        "--trainer.limit_val_batches", "0", "--test", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(last["state_dict"]) == set(ImageClassifier(Tudui(num_classes=3), class_names="abc").state_dict())
