"""One image path: training and inference read the same pixels, and inference takes the checkpoint's
test-time augmentation. That every path scores each image as the fit-time test did: test_tta.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from datamodules import sources
from lightning_modules.inference import predictor
from lightning_modules.inference.checkpoints import load_classifier


def awkward_files(folder) -> list[str]:
    """Files the two paths used to read differently; returns their names in sorted order."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.where(np.arange(70) < 35, 0, 255).astype(np.uint8)[None, :].repeat(50, 0)])
    Image.fromarray(rgba, "RGBA").save(folder / "a_rgba.png")  # left half fully transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(rgb).save(folder / "b_exif.jpg", exif=exif.tobytes())
    Image.fromarray((rng.integers(0, 65536, (40, 40))).astype(np.uint16)).save(folder / "c_16bit.png")
    palette = Image.fromarray(rgb[:32, :32]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "d_palette.gif", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(folder / "e_cmyk.jpg")
    Image.fromarray(rgb).save(folder / "f_70x50.png")
    frames = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(folder / "g_animated.gif", save_all=True, append_images=frames[1:])
    return sorted(p.name for p in folder.iterdir())


def test_training_and_predict_read_awkward_files_bit_identically(tmp_path, monkeypatch):
    root = tmp_path / "data"
    names = awkward_files(root / "train" / "cat")
    (root / "train" / "dog").mkdir()
    Image.new("RGB", (32, 32)).save(root / "train" / "dog" / "plain.png")  # a second class
    data = sources.load(root, cache_dir=tmp_path / "cache", log=lambda m: None)
    rows = [(name, root / "train" / "cat" / name, None) for name in names]
    # Each record carries the image predict handed the model for it.
    monkeypatch.setattr(predictor, "rank", lambda model, images, top_k: [{"image": image} for image in images])
    records = list(predictor.classify(SimpleNamespace(image_size=32), rows, 1, 4, torch.device("cpu")))
    assert [r["error"] for r in records] == [None] * len(names) and len(names) == len(data.train) - 1
    predicted = [r["image"] for r in records]
    for name, trained, served in zip(names, data.train.images[: len(names)], predicted, strict=True):
        assert torch.equal(trained, served), f"{name}: training and predict see different pixels"
    # Transparency is composited on white everywhere (the left half of a_rgba.png).
    assert data.train.images[0][:, :, :14].min() == 255


def test_inference_applies_the_checkpoints_tta_unless_overridden(tta_run):
    _, _, report = tta_run
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default = load_classifier(report["best_checkpoint"])
    plain = load_classifier(report["best_checkpoint"], tta="none")
    assert default.tta == "mirror_translate" and plain.tta == "none"
    with torch.inference_mode():
        views = [plain(v) for v in (images, images.flip(-1))]
        assert not torch.allclose(default(images), plain(images))
        assert torch.allclose(load_classifier(report["best_checkpoint"], tta="mirror")(images), sum(views) / 2)
