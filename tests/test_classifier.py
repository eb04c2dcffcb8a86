"""ImageClassifier and the tutorial network: input contract, loss and metrics against hand-computed values."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import ImageClassifier
from lightning_modules.inference.model import tta_logits
from lightning_modules.nets import Tudui
from lightning_modules.reporting.confusion import ConfusionCounter, per_class_metrics


class FirstPixels(nn.Module):
    """Logits = the first pixels of the first channel, so a test controls them through the images."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.unused = nn.Linear(1, 1)  # the optimiser needs a parameter

    def forward(self, x):
        return x[:, 0, 0, : self.num_classes]


# Logit pixels (uint8) per sample; argmax gives preds [0, 1, 2, 0, 1, 2].
PIXELS = [[200, 10, 30], [5, 250, 100], [0, 60, 61], [90, 20, 10], [40, 180, 20], [70, 80, 255]]
TARGETS = [0, 1, 1, 0, 2, 0]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(len(PIXELS), 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, :3] = torch.tensor(PIXELS, dtype=torch.uint8)
    return images, torch.tensor(TARGETS)


def hand_loss(mean: float, std: float) -> float:
    total = 0.0
    for pixels, target in zip(PIXELS, TARGETS, strict=True):
        logits = [(p / 255 - mean) / std for p in pixels]
        total += -logits[target] + math.log(sum(math.exp(z) for z in logits))
    return total / len(PIXELS)


def make_model(**kwargs) -> ImageClassifier:
    return ImageClassifier(FirstPixels(), class_names=["a", "b", "c"], **kwargs)


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.5, 0.25)])
def test_shared_step_loss_normalisation_and_predictions(mean, std):
    model = make_model(mean=(mean,) * 3, std=(std,) * 3)
    loss, preds, targets = model.shared_step(batch())
    assert preds.tolist() == [0, 1, 2, 0, 1, 2]
    assert targets.tolist() == TARGETS
    assert loss.item() == pytest.approx(hand_loss(mean, std), rel=1e-5)


def test_label_smoothing_changes_the_loss():
    plain = make_model().shared_step(batch())[0]
    smoothed = make_model(label_smoothing=0.1).shared_step(batch())[0]
    assert smoothed.item() != pytest.approx(plain.item())


def test_metrics_match_hand_computed_values():
    # preds [0,1,2,0,1,2] vs targets [0,1,1,0,2,0]:
    # class 0: precision 2/2, recall 2/3; class 1: 1/2, 1/2; class 2: 0/2, 0/1.
    model = make_model()
    loss, preds, targets = model.shared_step(batch())
    model.val_metrics.update(preds, targets, loss)
    values = model.val_metrics.compute()
    assert values["acc"].item() == pytest.approx(3 / 6)
    assert values["precision"].item() == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert values["recall"].item() == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert values["f1"].item() == pytest.approx((0.8 + 0.5 + 0) / 3)
    assert values["acc_per_class"].tolist() == pytest.approx([2 / 3, 1 / 2, 0])
    assert values["loss"].item() == pytest.approx(loss.item())
    # What the figures and the report compute for themselves from the step outputs agrees.
    counter = ConfusionCounter()
    counter.update(preds[:4], targets[:4], 3)
    counter.update(preds[4:], targets[4:], 3)
    assert counter.counts.tolist() == [[2, 0, 1], [0, 1, 1], [0, 1, 0]]
    per_class = per_class_metrics(counter.counts)
    assert per_class["precision"] == pytest.approx([1, 1 / 2, 0])
    assert per_class["recall"] == pytest.approx([2 / 3, 1 / 2, 0])
    assert per_class["f1"] == pytest.approx([0.8, 0.5, 0])


def test_validation_logs_namespaced_metrics_and_best(tmp_path):
    model = make_model()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (logged,) = trainer.validate(model, DataLoader(TensorDataset(*batch()), batch_size=4))
    assert logged["val/acc"] == pytest.approx(0.5)
    assert logged["val/precision"] == pytest.approx(0.5)
    assert logged["val/loss"] == pytest.approx(hand_loss(0.0, 1.0), rel=1e-5)
    assert logged["val/acc_per_class/a"] == pytest.approx(2 / 3)
    assert logged["val/acc_best"] == pytest.approx(0.5)
    # The step hands callbacks what they need; the module keeps nothing for them.
    with torch.inference_mode():
        outputs = model.validation_step(batch(), 0)
    assert outputs["preds"].tolist() == [0, 1, 2, 0, 1, 2] and outputs["targets"].tolist() == [0, 1, 1, 0, 2, 0]
    assert not any(hasattr(model, name) for name in ("confusion_matrices", "per_class", "misclassified"))


def test_forward_takes_uint8_only():
    with pytest.raises(TypeError, match="uint8"):
        make_model()(torch.zeros(1, 3, 4, 4))


def test_normalisation_lives_in_the_state_dict():
    model = make_model(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    state = model.state_dict()
    assert state["mean"].flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    fresh = make_model()
    fresh.load_state_dict(state)
    images = batch()[0]
    assert torch.equal(fresh(images), model(images))


def test_network_size_mismatch_is_explained():
    model = ImageClassifier(FirstPixels(num_classes=3), class_names=["a", "b"])
    with pytest.raises(ValueError, match="outputs 3 classes but there are 2 class names"):
        model.shared_step(batch())


def test_hparams_are_plain_data_when_built_in_python(tmp_path):
    model = ImageClassifier(Tudui(num_classes=10))
    expected = {"class_path": "lightning_modules.nets.tudui.Tudui", "init_args": {"num_classes": 10}}
    assert model.hparams["net"] == expected
    path = tmp_path / "model.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"][0] == "airplane"


def test_default_optimizer_is_the_tutorials_sgd():
    optimizer = make_model().configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0


def test_optimizer_and_step_scheduler_from_config():
    model = make_model(
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5}},
        lr_scheduler_interval="step",
    )
    config = model.configure_optimizers()
    assert type(config["optimizer"]) is torch.optim.AdamW and config["optimizer"].defaults["lr"] == 0.003
    assert type(config["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.StepLR
    assert config["lr_scheduler"]["interval"] == "step"


def test_tudui_is_the_tutorial_network():
    net = Tudui()
    assert sum(p.numel() for p in net.parameters()) == 145_578
    assert [type(m).__name__ for m in net.model] == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "Linear",
    ]  # fmt: skip
    assert not any(isinstance(m, (nn.ReLU, nn.GELU, nn.BatchNorm2d)) for m in net.modules())
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert Tudui(num_classes=4)(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="--data.image_size 32"):
        net(torch.zeros(1, 3, 64, 64))


class MirrorSymmetric(nn.Module):
    """Logits from row sums of each channel: unchanged when the image is mirrored left-right."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.sum(dim=(2, 3))[:, : self.num_classes] * self.scale


def test_tta_mirror_equals_plain_logits_for_a_symmetric_model():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = ImageClassifier(MirrorSymmetric(), class_names=["a", "b", "c"]).eval()
    mirrored = ImageClassifier(MirrorSymmetric(), class_names=["a", "b", "c"], tta="mirror").eval()
    assert torch.allclose(tta_logits(mirrored, images, "mirror"), plain(images), atol=1e-5)


def test_tta_averages_the_views_and_only_outside_training():
    model = make_model(tta="mirror").eval()
    images = batch()[0]
    expected = (model(images) + model(images.flip(-1))) / 2
    assert torch.allclose(tta_logits(model, images, "mirror"), expected)
    _, preds, _ = model.shared_step(batch())
    assert torch.equal(preds, expected.argmax(-1))
    model.train()
    _, preds, _ = model.shared_step(batch())
    assert torch.equal(preds, model(images).argmax(-1))  # training sees the plain view
    # mirror_translate's views, by value: test_tta.py.


def test_validation_and_test_score_in_float32_under_mixed_precision():
    """A bf16-mixed fit reports the accuracy that predict, serve and export (float32) deliver."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    model = ImageClassifier(net, class_names=["a", "b", "c"]).eval()
    images = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    targets = torch.randint(0, 3, (64,))
    with torch.no_grad():
        fp32_loss = model.criterion(model(images), targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_loss = model.criterion(model(images), targets)
            out = model.validation_step((images, targets), 0)
    assert bf16_loss.item() != fp32_loss.item()  # else this test could not tell the two apart
    assert model.val_metrics.compute()["loss"].item() == pytest.approx(fp32_loss.item(), rel=1e-6)
    assert torch.equal(out["preds"], model(images).argmax(-1))
