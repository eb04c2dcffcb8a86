"""True half precision (--trainer.precision bf16-true): half weights and activations, BatchNorm and
normalisation in float32, and validation scored in float32 as predict/serve/export score."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, make_image_folder

from datamodules import CIFAR10DataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.cli.fit import fit_main


def test_bf16_true_keeps_norms_float32_and_scores_in_float32(tmp_path):
    data = make_image_folder(tmp_path / "data", {"train": 30, "test": 8})
    args = [
        "--config", str(REPO / "configs" / "fast_cpu.yaml"), "--data.data_dir", str(data),
        "--data.cache_dir", str(tmp_path / "cache"), "--data.val_size", "12", "--data.batch_size", "16",
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.precision", "bf16-true",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    assert fit_main(args) == 0
    run = tmp_path / "runs" / "fast_cpu" / "version_0"
    best = next((run / "checkpoints").glob("epoch=*.ckpt"))
    state = torch.load(best, weights_only=True)["state_dict"]
    assert state["net.groups.0.conv1.weight"].dtype == torch.bfloat16  # trained in bf16
    assert state["net.groups.0.norm1.running_var"].dtype == torch.float32
    assert state["net.groups.0.norm1.bias"].dtype == torch.float32
    hparams = torch.load(best, weights_only=True)["hyper_parameters"]
    assert torch.equal(state["mean"].flatten(), torch.tensor(hparams["mean"], dtype=torch.float32))  # not rounded

    epoch = int(best.name.split("=")[1].split("-")[0])
    logged = next(row for row in json.loads((run / "report.json").read_text())["epochs"] if row["epoch"] == epoch)
    model = ImageClassifier.load_from_checkpoint(best, weights_only=True).eval()  # float32, as predict loads it
    dm = CIFAR10DataModule(data_dir=str(data), cache_dir=str(tmp_path / "cache"), val_size=12)
    dm.setup("fit")
    with torch.no_grad():
        val_loss, _, _ = model.shared_step((dm.val_split.images, dm.val_split.labels))
        test_loss, _, _ = model.shared_step((dm.test_split.images, dm.test_split.labels))
    assert logged["val/loss"] == pytest.approx(val_loss.item(), rel=1e-5)
    # The test after fit reloads the best checkpoint, which Lightning casts to bf16 after loading:
    # BatchNorm's statistics must come through exact, or the test scores another model.
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["test/loss"] == pytest.approx(test_loss.item(), rel=1e-5)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert last["net.groups.0.conv1.weight"].dtype == torch.bfloat16  # saved after validation, back in bf16
