"""Test-time augmentation, end to end: every way of scoring an image (fit's test, evaluate.py,
predict.py, serve.py and the exported ONNX file) gives the same label and probabilities, image by
image, with the checkpoint's TTA and with ``--tta none``; and the TTA views themselves, by value.

The fixture is built so that TTA matters: a class is told by which half of the image is bright
(cat left, dog right, ship neither), and the run is trained without random flips. Mirroring
confuses cat with dog, so the checkpoint's ``mirror_translate`` gets far fewer images right than
the plain view does: a path that drops or ignores the TTA gives other labels, not just other
decimals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CLASSES, batcher_answers, free_port
from PIL import Image

import lightning_modules.classifier as classifier_module
from datamodules.image_reader import read_image
from lightning_modules.cli import serve as serve_module
from lightning_modules.cli.evaluate import evaluate_main
from lightning_modules.cli.export import export_main
from lightning_modules.cli.fit import fit_main
from lightning_modules.cli.predict import predict_main
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.inference.export import read_metadata, run_exported
from lightning_modules.inference.model import tta_logits, tta_views

TEST_PER_CLASS = 12
# Two ways of running every path: with the checkpoint's own TTA (no option) and with --tta none.
TTA_OPTIONS = {"checkpoint": [], "none": ["--tta", "none"]}
# Every path on the CPU, as the exported model runs: on a GPU, TF32 convolutions would move the
# probabilities by more than the 1e-5 compared here (tests/test_gpu.py covers the devices).
ON_CPU = ["--trainer.accelerator", "cpu"]


def lopsided_folder(root, per_split: dict[str, int]) -> None:
    """root/{split}/{class}/{i}.png: noise, with the left half (cat), the right half (dog) or
    neither (ship, a little brighter all over) raised."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (32, 32, 3)).astype(np.int16)
                if label == 0:
                    pixels[:, :16] += 100
                elif label == 1:
                    pixels[:, 16:] += 100
                else:
                    pixels += 50
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def recording_tta_logits(store: dict[bytes, torch.Tensor]):
    """ImageClassifier's tta_logits, also recording the probabilities it gives each image in a test
    loop (fit's test, evaluate.py), keyed by the image's pixels."""
    real = classifier_module.tta_logits

    def record(module, images, tta):
        logits = real(module, images, tta)
        if module.trainer.testing:
            probabilities = logits.detach().float().softmax(-1).cpu()
            for image, row in zip(images.cpu(), probabilities, strict=True):
                store[image.contiguous().numpy().tobytes()] = row
        return logits

    return record


def by_file(files, store: dict[bytes, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a test loop recorded, per test file (the loop reads the pixels predict.py reads)."""
    keys = {read_image(f, 32).numpy().tobytes(): str(f) for f in files}
    assert len(keys) == len(files) and set(store) == set(keys), "the test loop scored other images than the files"
    return {keys[k]: v for k, v in store.items()}


@pytest.fixture(scope="module")
def lopsided(tmp_path_factory):
    """One 2-epoch fit with mirror_translate TTA; returns (work, best checkpoint, test files, fit's
    test probabilities per file, the plain view's probabilities per file, report)."""
    work = tmp_path_factory.mktemp("lopsided")
    lopsided_folder(work / "data", {"train": 20, "test": TEST_PER_CLASS})
    fit_store: dict[bytes, torch.Tensor] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classifier_module, "tta_logits", recording_tta_logits(fit_store))
        code = fit_main([
            "--data.data_dir", str(work / "data"), "--data.cache_dir", str(work / "cache"),
            "--data.val_size", "12", "--data.batch_size", "8", "--model.tta", "mirror_translate",
            "--optimizer.lr", "0.05", "--optimizer.momentum", "0.9", "--trainer.max_epochs", "2", *ON_CPU,
            "--trainer.logger.init_args.save_dir", str(work / "runs"),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        ])  # fmt: skip
    assert code == 0
    report = json.loads((work / "runs" / "tutorial" / "version_0" / "report.json").read_text())
    best = report["best_checkpoint"]
    files = sorted((work / "data" / "test").rglob("*.png"))
    fit_test = by_file(files, fit_store)
    # The plain view, straight from the network: no TTA code involved.
    model = load_classifier(best)
    with torch.inference_mode():
        images = torch.stack([read_image(f, 32) for f in files])
        plain = model.logits_one_view(images).float().softmax(-1)
    plain_view = {str(f): row for f, row in zip(files, plain, strict=True)}
    return work, best, files, fit_test, plain_view, report


def expected(lopsided, tta: str) -> dict[str, torch.Tensor]:
    _, _, _, fit_test, plain_view, _ = lopsided
    return fit_test if tta == "checkpoint" else plain_view


def correct(scores: dict[str, torch.Tensor]) -> int:
    return sum(CLASSES[int(p.argmax())] == path.split("/")[-2] for path, p in scores.items())


def assert_same_scores(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], who: str) -> None:
    assert set(got) == set(want), f"{who} scored other files"
    for path in sorted(want):
        labels = CLASSES[int(got[path].argmax())], CLASSES[int(want[path].argmax())]
        assert labels[0] == labels[1], f"{who}: {path} is {labels[0]}, expected {labels[1]}"
        assert torch.allclose(got[path], want[path], atol=1e-5), f"{who}: {path}: {got[path]} != {want[path]}"


def test_tta_changes_how_many_images_the_fixture_gets_right(lopsided):
    _, _, files, fit_test, plain_view, report = lopsided
    with_tta, without = correct(fit_test), correct(plain_view)
    # Else this file could not tell a path that drops the TTA from one that keeps it.
    assert with_tta != without, (with_tta, without)
    assert 0 < with_tta < len(files) and 0 < without
    assert report["test"]["test/acc"] == pytest.approx(with_tta / len(files))
    changed = sum(int(fit_test[f].argmax()) != int(plain_view[f].argmax()) for f in fit_test)
    assert changed >= abs(with_tta - without)


@pytest.mark.parametrize("tta", TTA_OPTIONS)
def test_evaluate_agrees_image_by_image(lopsided, tmp_path, monkeypatch, tta):
    work, best, files, *_ = lopsided
    store: dict[bytes, torch.Tensor] = {}
    monkeypatch.setattr(classifier_module, "tta_logits", recording_tta_logits(store))
    out = tmp_path / "eval"
    data = ["--data.data_dir", str(work / "data"), "--data.cache_dir", str(work / "cache")]
    args = ["--ckpt_path", best, *data, *ON_CPU]
    assert evaluate_main([*args, *TTA_OPTIONS[tta], "--output_dir", str(out)]) == 0
    scores = by_file(files, store)
    assert_same_scores(scores, expected(lopsided, tta), f"evaluate.py ({tta})")
    acc = json.loads((out / "report.json").read_text())["test"]["test/acc"]
    assert acc == pytest.approx(correct(scores) / len(files))


@pytest.mark.parametrize("tta", TTA_OPTIONS)
def test_predict_agrees_image_by_image(lopsided, tmp_path, capsys, tta):
    work, best, files, *_ = lopsided
    out = tmp_path / "preds.json"
    argv = ["--ckpt_path", best, str(work / "data" / "test"), "--top_k", "3", "--output", str(out), *ON_CPU]
    assert predict_main([*argv, *TTA_OPTIONS[tta]]) == 0
    scores = {}
    for record in json.loads(out.read_text()):
        probabilities = {t["label"]: t["probability"] for t in record["top_k"]}
        scores[record["path"]] = torch.tensor([probabilities[c] for c in CLASSES])
    want = expected(lopsided, tta)
    assert_same_scores(scores, want, f"predict.py ({tta})")
    err = capsys.readouterr().err
    assert f"tta {'mirror_translate' if tta == 'checkpoint' else 'none'}" in err
    assert f"({correct(want)}/{len(files)}, true classes from folder names)" in err


@pytest.mark.parametrize("tta", TTA_OPTIONS)
def test_serve_agrees_image_by_image(lopsided, monkeypatch, tta):
    """serve.py's command line builds the app it serves; each file goes through the app's inference
    threads as an upload does (tests/test_serve.py checks the HTTP side)."""
    _, best, files, *_ = lopsided
    apps = []
    monkeypatch.setattr(serve_module, "run", lambda app, listening: (apps.append(app), listening.close()))
    assert serve_module.serve_main(["--ckpt_path", best, *ON_CPU, "--port", str(free_port()), *TTA_OPTIONS[tta]]) == 0
    (app,) = apps
    records = batcher_answers(app.batcher, [f.read_bytes() for f in files])
    scores = {}
    for f, record in zip(files, records, strict=True):
        probabilities = {t["label"]: t["probability"] for t in record["top_k"]}
        scores[str(f)] = torch.tensor([probabilities[c] for c in CLASSES])
    assert_same_scores(scores, expected(lopsided, tta), f"serve.py ({tta})")


@pytest.mark.parametrize("tta", TTA_OPTIONS)
def test_onnx_export_agrees_image_by_image(lopsided, tmp_path, capsys, tta):
    work, best, files, *_ = lopsided
    output = tmp_path / "model.onnx"
    argv = ["--ckpt_path", best, "--format", "onnx", "--output", str(output), "--images", str(work / "data" / "test")]
    assert export_main([*argv, *TTA_OPTIONS[tta]]) == 0, capsys.readouterr().err
    assert read_metadata(output, "onnx")["tta"] == ("mirror_translate" if tta == "checkpoint" else "none")
    images = torch.stack([read_image(f, 32) for f in files])
    probabilities = run_exported(output, "onnx", images).float().softmax(-1)
    scores = {str(f): row for f, row in zip(files, probabilities, strict=True)}
    assert_same_scores(scores, expected(lopsided, tta), f"the exported ONNX model ({tta})")


# --- the views, by value ----------------------------------------------------------------------

IMAGE = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
MIRRORED = [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
# Shifted by one pixel, the edge row and column repeated, and each shift mirrored.
SHIFTED_DOWN_RIGHT = [[1, 1, 2], [1, 1, 2], [4, 4, 5]]
SHIFTED_UP_LEFT = [[5, 6, 6], [8, 9, 9], [8, 9, 9]]
SHIFTED_DOWN_RIGHT_MIRRORED = [[2, 1, 1], [2, 1, 1], [5, 4, 4]]
SHIFTED_UP_LEFT_MIRRORED = [[6, 6, 5], [9, 9, 8], [9, 9, 8]]
VIEWS = {
    "none": [IMAGE],
    "mirror": [IMAGE, MIRRORED],
    "mirror_translate": [
        IMAGE, MIRRORED, SHIFTED_DOWN_RIGHT, SHIFTED_UP_LEFT, SHIFTED_DOWN_RIGHT_MIRRORED, SHIFTED_UP_LEFT_MIRRORED,
    ],
}  # fmt: skip


@pytest.mark.parametrize("tta", VIEWS)
def test_tta_views_are_the_hand_built_ones(tta):
    # Two images, three channels: each channel its own offset of the hand-built image.
    image = torch.tensor(IMAGE, dtype=torch.uint8)
    images = torch.stack([torch.stack([image + 10 * c + 100 * n for c in range(3)]) for n in range(2)])
    want = [
        torch.stack([torch.stack([torch.tensor(v, dtype=torch.uint8) + 10 * c + 100 * n for c in range(3)])
                     for n in range(2)])
        for v in VIEWS[tta]
    ]  # fmt: skip
    views = tta_views(images, tta)
    assert len(views) == len(want)
    assert sorted(v.flatten().tolist() for v in views) == sorted(v.flatten().tolist() for v in want)
    # The TTA logits are the mean over exactly these views (here the "network" is the pixels).
    mean = torch.stack([v.float().flatten(1) for v in want]).mean(0)
    assert torch.allclose(tta_logits(lambda v: v.float().flatten(1), images, tta), mean)
