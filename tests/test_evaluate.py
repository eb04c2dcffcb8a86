"""scripts/evaluate.py: any checkpoint on any labelled split, scored as fit.py and predict.py score it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import exit_status, make_image_folder, noisy_folder

from datamodules.image_reader import read_image
from datamodules.sources import CIFAR10_CLASSES
from lightning_modules.cli.evaluate import evaluate_main
from lightning_modules.cli.fit import fit_main
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.nets import Tudui


def _evaluate(work, *extra: str) -> int:
    return exit_status(
        evaluate_main, ["--data.data_dir", str(work / "data"), "--data.cache_dir", str(work / "cache"), *extra]
    )


def test_evaluate_scores_what_the_fit_test_scored(tta_run, tmp_path, capsys):
    work, _, report = tta_run
    best = report["best_checkpoint"]
    out = tmp_path / "eval"
    assert _evaluate(work, "--ckpt_path", best, "--output_dir", str(out)) == 0
    evaluated = json.loads((out / "report.json").read_text())
    assert evaluated["test"]["test/acc"] == report["test"]["test/acc"]
    assert evaluated["test"]["per_class"] == report["test"]["per_class"]
    assert evaluated["confusion_matrix"] == report["confusion_matrix"]
    assert evaluated["best_checkpoint"] == best
    assert (out / "report.md").is_file() and (out / "confusion_matrix.png").is_file()
    printed = capsys.readouterr().out
    assert "precision" in printed and "(tta mirror_translate)" in printed
    # Image by image, against predict, serve and the exported model too: test_tta.py.


def test_evaluate_val_split_is_the_one_fit_validated_on(tta_run, tmp_path):
    work, run_dir, report = tta_run
    last = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "val"
    # No --data.val_size: the hold-out comes from the checkpoint (the run used 30 of 120, not 5,000).
    assert _evaluate(work, "--ckpt_path", str(last), "--split", "val", "--output_dir", str(out)) == 0
    evaluated = json.loads((out / "report.json").read_text())
    # Named by the split scored, and equal to what fit.py validated.
    assert evaluated["split"] == "val" and "test/acc" not in evaluated["test"]
    assert evaluated["test"]["val/acc"] == report["epochs"][-1]["val/acc"]
    assert evaluated["test"]["val/loss"] == pytest.approx(report["epochs"][-1]["val/loss"], rel=1e-5)


def test_evaluate_computes_the_loss_as_training_defined_it(tmp_path, monkeypatch):
    # With label smoothing the loss fit.py validated is not plain cross-entropy; evaluate must match it.
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8})
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args = ["--data.data_dir", "data", "--data.val_size", "9", "--model.label_smoothing", "0.3", "--test", "false"]
    assert fit_main([*args, "--trainer.max_epochs", "1", *quiet]) == 0
    run_dir = tmp_path / "runs" / "tutorial" / "version_0"
    fit_loss = json.loads((run_dir / "report.json").read_text())["epochs"][-1]["val/loss"]
    out = tmp_path / "eval"
    assert _evaluate(tmp_path, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--split", "val",
                     "--data.data_dir", "data", "--output_dir", str(out)) == 0  # fmt: skip
    assert json.loads((out / "report.json").read_text())["test"]["val/loss"] == pytest.approx(fit_loss, rel=1e-5)


def test_evaluate_a_tutorial_state_dict_with_a_tta_override(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 2, "test": 5}, classes=CIFAR10_CLASSES)
    torch.manual_seed(0)
    pth = tmp_path / "tudui_0.pth"
    torch.save(Tudui().state_dict(), pth)
    out = tmp_path / "eval"
    # On the CPU, as the hand-built matrix below: on a GPU, TF32 could tip a close call of this untrained net.
    args = ["--ckpt_path", str(pth), "--tta", "mirror", "--trainer.accelerator", "cpu", "--output_dir", str(out)]
    assert _evaluate(tmp_path, *args) == 0
    evaluated = json.loads((out / "report.json").read_text())
    # The confusion matrix of the mirror TTA, built by hand from the plain network and its mirror view.
    model = load_classifier(pth, tta="none")
    files = sorted((tmp_path / "data" / "test").rglob("*.png"))
    images = torch.stack([read_image(f, 32) for f in files])
    with torch.inference_mode():
        predicted = ((model(images) + model(images.flip(-1))) / 2).argmax(-1).tolist()
    matrix = [[0] * len(CIFAR10_CLASSES) for _ in CIFAR10_CLASSES]
    for f, p in zip(files, predicted, strict=True):
        matrix[CIFAR10_CLASSES.index(f.parent.name)][p] += 1
    assert evaluated["confusion_matrix"]["matrix"] == matrix
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    assert evaluated["test"]["test/acc"] == pytest.approx(correct / len(files))


def test_evaluate_refuses_mismatches_in_one_line(tta_run, tmp_path, capsys):
    work, _, report = tta_run
    best = report["best_checkpoint"]
    other = tmp_path / "other"
    noisy_folder(other / "data", {"train": 3})
    (other / "data" / "train" / "cat").rename(other / "data" / "train" / "lion")
    cases = [
        (work, ["--ckpt_path", best, "--split", "holdout"], "(choose from 'train', 'val', 'test')"),
        (other, ["--ckpt_path", best], "has the classes"),
        (work, ["--ckpt_path", str(tmp_path / "none.ckpt")], "no checkpoint at"),
        (work, ["--ckpt_path", best, "--tta", "rotate"], "(choose from 'none', 'mirror', 'mirror_translate')"),
        (work, ["--ckpt_path", best, "--data.val_size", "many"], "data.val_size"),
    ]
    capsys.readouterr()
    for root, args, message in cases:
        status = _evaluate(root, *args)
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    noisy_folder(tmp_path / "no_test" / "data", {"train": 3})
    status = _evaluate(tmp_path / "no_test", "--ckpt_path", best, "--data.val_size", "6")
    err = capsys.readouterr().err
    assert status == 2 and "has no test split (it has train, val)" in err, err


def test_evaluate_test_split_never_reads_train(tmp_path, checkpoint, capsys):
    root = make_image_folder(tmp_path / "data", {"train": 2, "test": 3})
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "eval"
    assert _evaluate(tmp_path, "--ckpt_path", str(checkpoint), "--output_dir", str(out)) == 0
    evaluated = json.loads((out / "report.json").read_text())
    assert sum(map(sum, evaluated["confusion_matrix"]["matrix"])) == 9
    assert not [p for p in (tmp_path / "cache").glob("*.pt") if "-train-" in p.name]
    # val is a hold-out of train, so scoring it has to decode train: the bad file is named in one line.
    capsys.readouterr()
    assert _evaluate(tmp_path, "--ckpt_path", str(checkpoint), "--split", "val", "--data.val_size", "2") == 2
    err = capsys.readouterr().err
    assert "train/dog/broken.png" in err and len(err.splitlines()) == 1, err


class NaNOnSomeImages(torch.nn.Module):
    """NaN scores for the images brighter than the batch's median, finite scores for the others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = x.mean(dim=(1, 2, 3))
        logits = torch.zeros(len(x), 3)
        logits[brightness > brightness.median()] = float("nan")
        return logits


def test_evaluate_refuses_to_report_a_nan_loss(tmp_path, monkeypatch, capsys):
    """A model that passed the load-time probe yet scores some images NaN: its report is not a result."""
    from helpers import save_checkpoint

    from lightning_modules.inference import checkpoints
    from lightning_modules.inference.model import InferenceClassifier

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 2, "test": 4})
    path = save_checkpoint(tmp_path / "m.ckpt")
    nan_model = InferenceClassifier(NaNOnSomeImages(), ["cat", "dog", "ship"], image_size=32)
    monkeypatch.setattr(checkpoints, "load_classifier", lambda *args, **kwargs: nan_model)
    status = exit_status(evaluate_main, ["--ckpt_path", str(path), "--data.data_dir", "data", "--output_dir", "ev"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("error: ") and "scores some test images NaN or infinite" in err[-1]
