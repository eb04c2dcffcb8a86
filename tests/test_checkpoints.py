"""Loading checkpoints safely: ours, the tutorial's files, and files that try to run code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules import ImageClassifier
from lightning_modules.inference.checkpoints import CheckpointError, load_classifier
from lightning_modules.nets import Tudui


def save_lightning_checkpoint(model: ImageClassifier, path) -> None:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


@pytest.fixture
def ours(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(Tudui(num_classes=3), class_names=["cat", "dog", "ship"], mean=(0.5,) * 3, std=(0.2,) * 3)
    path = tmp_path / "ours.ckpt"
    save_lightning_checkpoint(model, path)
    return model.eval(), path


def images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_our_checkpoint_round_trip(ours):
    model, path = ours
    loaded = load_classifier(path)
    assert loaded.class_names == ["cat", "dog", "ship"] and not loaded.training
    assert not loaded.class_names_assumed
    with torch.inference_mode():
        assert torch.allclose(loaded(images()), model(images()), atol=1e-6)


TUTORIAL_MODEL = textwrap.dedent(
    """
    import sys, torch
    from torch import nn

    class Tudui(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(
                nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))

        def forward(self, x):
            return self.model(x)

    torch.manual_seed(7)
    tudui = Tudui()
    torch.save(tudui, sys.argv[1] + "/tudui_0.pth")                 # the tutorial's way
    torch.save(tudui.state_dict(), sys.argv[1] + "/tudui_sd.pth")   # the recommended way
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.save(tudui(x.float() / 255), sys.argv[1] + "/logits.pt")  # ToTensor() scaling, as the tutorial
    """
)


def test_tutorial_files_give_the_original_logits(tmp_path):
    subprocess.run([sys.executable, "-c", TUTORIAL_MODEL, str(tmp_path)], check=True, cwd=tmp_path)
    expected = torch.load(tmp_path / "logits.pt", weights_only=True)
    for name in ("tudui_0.pth", "tudui_sd.pth"):
        model = load_classifier(tmp_path / name)
        assert model.class_names_assumed and model.class_names[3] == "cat"
        with torch.inference_mode():
            assert torch.allclose(model(images()), expected, atol=1e-5), name


class MakesADirectory:
    """Unpickling this would call os.mkdir: the classic code-execution pickle."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": MakesADirectory(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused .*only our checkpoints"):
        load_classifier(tmp_path / "evil.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("_instantiator", "os.system", "unknown instantiator"),
        ("_class_path", "os.system", "is not this project's ImageClassifier"),
        ("net", {"class_path": "os.system", "init_args": {"command": "touch pwned"}}, "is not one of this project's"),
        ("net", {"class_path": "subprocess.Popen", "init_args": {}}, "is not one of this project's"),
    ],
)
def test_foreign_class_paths_in_hyperparameters_are_refused(ours, tmp_path, key, value, message):
    _, path = ours
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    with pytest.raises(CheckpointError, match=message):
        load_classifier(tmp_path / "tampered.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_truncated_empty_and_missing_files(ours, tmp_path):
    _, path = ours
    data = path.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_classifier(tmp_path / "half.ckpt")
    (tmp_path / "zero.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_classifier(tmp_path / "zero.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_classifier(tmp_path / "missing.ckpt")


def test_state_dict_of_another_network_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(10, 5)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not match the tutorial network"):
        load_classifier(tmp_path / "other.pth")


@pytest.mark.parametrize("head", [(), (0, 64), (3, 64), (200_000, 64), (10, 64, 1)])
def test_a_tutorial_file_with_another_head_is_refused_by_its_shape(tmp_path, head):
    state = Tudui(num_classes=10).state_dict()
    state["model.8.weight"] = torch.zeros(head)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"has a last layer of shape {head}")):
        load_classifier(tmp_path / "odd.pth")


# --- checkpoints written before the layout of lightning_modules changed -----------------------

# What fit.py recorded before callbacks moved to lightning_modules/callbacks/: the callback state key
# of ModelCheckpointWithLast, which LastCheckpoint replaced, and no "tta" hyper-parameter.
OLD_CALLBACK_KEY = (
    "ModelCheckpointWithLast{'monitor': 'val/acc', 'mode': 'max', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)


def as_written_before_the_move(source: Path, target: Path) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["net"]["class_path"] == "lightning_modules.nets.Tudui"
    hparams.pop("tta")
    checkpoint["callbacks"] = {
        (OLD_CALLBACK_KEY if key.startswith("ModelCheckpoint{") else key): value
        for key, value in checkpoint["callbacks"].items()
    }
    torch.save(checkpoint, target)
    return target


def test_checkpoints_from_before_the_move_still_predict_export_and_resume(tta_run, tmp_path):
    from helpers import tta_run_args

    from lightning_modules.cli.export import export_main
    from lightning_modules.cli.fit import fit_main
    from lightning_modules.inference.export import read_metadata

    work, run_dir, _ = tta_run
    old = as_written_before_the_move(run_dir / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt")
    model = load_classifier(old)
    assert model.tta == "none" and model.class_names == ["cat", "dog", "ship"]
    assert export_main(["--ckpt_path", str(old), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    assert read_metadata(tmp_path / "m.pt", "torchscript")["tta"] == "none"
    resumed_dir = tmp_path / "resumed"
    args = [*tta_run_args(work), "--trainer.logger.init_args.save_dir", str(resumed_dir), "--test", "false"]
    assert fit_main([*args, "--trainer.max_epochs", "3", "--ckpt_path", str(old)]) == 0
    (last,) = resumed_dir.glob("*/version_0/checkpoints/last.ckpt")
    before, after = torch.load(old, weights_only=True), torch.load(last, weights_only=True)
    assert after["epoch"] == before["epoch"] + 1 and after["global_step"] > before["global_step"]


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c["hyper_parameters"].update(class_names=["cat", "cat", "ship"]), "duplicates (['cat'])"),
        (lambda c: c["hyper_parameters"].update(class_names=["cat", "", "ship"]), "non-empty text"),
        (lambda c: c["hyper_parameters"].update(class_names=["cat", "dog\nship", "x"]), "line breaks"),
        (lambda c: c["hyper_parameters"].update(class_names=["cat", 7, "ship"]), "non-empty text"),
        (lambda c: c.update(hyper_parameters=[1, 2]), "must be mappings"),
        (lambda c: c["hyper_parameters"].update(class_names=torch.zeros(3)), "class_names must be a list"),
        (lambda c: c["hyper_parameters"].update(class_names=["cat", "d" * 256, "ship"]), "longer than 255"),
        (lambda c: c["hyper_parameters"]["net"].update(init_args=[["num_classes", 3]]), "must be a mapping, got list"),
        (lambda c: c["hyper_parameters"]["net"].update(init_args="num_classes=3"), "must be a mapping, got str"),
        # Tudui's own size check (a ValueError) while the file is probed: 64x64 images for a 32x32 network.
        (lambda c: c["hyper_parameters"].update(image_size=64), "does not run on 64x64 images"),
        # Finite weights near float32's limit: a black image scores fine, a white one overflows.
        (lambda c: c["state_dict"]["net.model.0.weight"].fill_(1e38), "scores a plain image as NaN or infinity"),
        (lambda c: c["state_dict"].pop("net.model.8.bias"), 'Missing key(s) in state_dict: "net.model.8.bias"'),
    ],
)
def test_class_names_and_hyper_parameters_of_odd_shape_are_refused(tmp_path, change, says):
    from helpers import save_checkpoint

    from lightning_modules.inference.checkpoints import CheckpointError, load_classifier

    path = save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=re.escape(says)):
        load_classifier(path)
