"""scripts/export.py: ONNX and TorchScript files that match the checkpoint."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch
from helpers import class_image
from PIL import Image

from lightning_modules.cli.export import export_main
from lightning_modules.inference import export as export_module
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.inference.export import read_metadata, run_exported


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(class_image(rng, i)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_matches_the_checkpoint(checkpoint, images, tmp_path, capsys, fmt, suffix):
    output = tmp_path / f"model{suffix}"
    assert export_main(["--ckpt_path", str(checkpoint), "--format", fmt, "--output", str(output), "--images",
                        str(images)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "parity passed on 6 images" in out and f"wrote {output}" in out
    assert stat.S_IMODE(output.stat().st_mode) & 0o044  # readable like any file, not mkstemp's 0600
    meta = read_metadata(output, fmt)
    assert json.loads(meta["class_names"]) == ["cat", "dog", "ship"] and meta["image_size"] == "32"
    model = load_classifier(checkpoint)
    for n in (1, 5, 17):  # dynamic batch size
        batch = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        got = run_exported(output, fmt, batch)
        with torch.inference_mode():
            expected = model(batch)
        assert got.shape == (n, 3)
        assert (got - expected).abs().max().item() <= 1e-4
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert not list(tmp_path.glob(".*"))  # no temporary file or external-data file left beside the output


def test_failed_parity_writes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    real = export_module.run_exported
    monkeypatch.setattr(export_module, "run_exported", lambda *args: real(*args) + 0.01)
    output = tmp_path / "model.onnx"
    assert export_main(["--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(output)]) == 1
    captured = capsys.readouterr()
    assert "parity FAILED" in captured.out and "not written" in captured.err
    assert not output.exists() and not list(tmp_path.glob(".*.tmp"))


def test_bad_checkpoint_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"junk")
    assert export_main(["--ckpt_path", str(tmp_path / "x.ckpt"), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")
