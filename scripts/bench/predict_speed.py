"""Benchmark prediction: start-up against the classic tutorial's test.py, and throughput against the
model's own forward rate, side by side in one run.

    python scripts/bench/predict_speed.py [--images_dir DATA_DIR] [--images 10000] [--photos 200]
                                          [--repeats 5] [--only startup,throughput,entries] [--json FILE]

1. startup: process start to answer for ONE image, tutorial test.py vs our predict.py (same
   tutorial network, same weights file), alternated so that machine noise hits both alike.
2. throughput: predict's classify loop (after start-up: the model loaded, in this process) on a
   folder of N 32x32 JPEGs (CIFAR-10 images from --images_dir/train, default $DATA_DIR; synthetic
   when neither is given) and on a folder of phone-size JPEGs (4032x3024, generated), with the
   checkpoint's TTA off and on, each against the model's own forward on a uint8 batch of 256 in
   memory (the rate predict could reach if reading cost nothing): the share is predict / model.
   ONNX Runtime's forward and predict on the exported .onnx file are measured beside torch's.
3. entries: ``ImageClassifier.load_from_checkpoint(ckpt)(images)`` (the Lightning way) against the
   inference model predict uses, same checkpoint, same batch.
Prints tables and writes JSON. Everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As predict.py sets it before torch loads (lightning_modules/cli/predict.py), so that the in-process
# measurements below run the way the command does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lightning_modules.reporting.tables import text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    add_images_dir,
    add_json_option,
    alternate,
    checkout_env,
    chosen_parts,
    forward_rate,
    machine,
    machine_line,
    medians,
    sample_images,
    untrained_checkpoint,
    write_json,
)

# The tutorial's model.py and test.py, as a beginner has them (the weights are loaded as a
# state_dict with weights_only=True, which costs the same imports as the tutorial's whole-model load).
TUTORIAL_MODEL = """
import torch
from torch import nn

class Tudui(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))

    def forward(self, x):
        return self.model(x)
"""
TUTORIAL_TEST = """
import sys
import torch
import torchvision
from PIL import Image
from model import Tudui

image = Image.open(sys.argv[1]).convert("RGB")
transform = torchvision.transforms.Compose([torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()])
image = torch.reshape(transform(image), (1, 3, 32, 32))
model = Tudui()
model.load_state_dict(torch.load("tudui.pth", map_location=torch.device("cpu"), weights_only=True))
model.eval()
with torch.no_grad():
    output = model(image)
print(output.argmax(1).item())
"""


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=checkout_env())
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    return elapsed


def make_images(folder: Path, n: int, images_dir: str | None) -> str:
    folder.mkdir(parents=True)
    if images_dir:
        files = sample_images(images_dir, n)
        for i, f in enumerate(files):
            shutil.copyfile(f, folder / f"{i:05d}{f.suffix.lower()}")
        return f"{len(files)} CIFAR-10 images from {images_dir}"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    return f"{n} synthetic 32x32 JPEGs"


def make_photos(folder: Path, n: int) -> str:
    """Phone-size JPEGs (4032x3024, quality 90): smooth gradients plus noise, so they compress like photos."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = 3024, 4032
    base = (
        np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + np.linspace(0, 55, h, dtype=np.float32)[:, None, None]
    )
    for i in range(n):
        tint = rng.integers(0, 60, 3).astype(np.float32)
        noise = rng.integers(0, 24, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.float32)
        pixels = np.clip(base + tint + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return f"{n} generated 4032x3024 JPEGs"


def classify_rate(model, folder: Path) -> float:
    """Images/s of predict's classify loop over the folder, after start-up (the model loaded), in this
    process: what predict.py times, without its interpreter start, imports and checkpoint load."""
    from datamodules.image_reader import expand_inputs
    from lightning_modules.inference.predictor import classify

    start = time.perf_counter()
    records = list(classify(model, expand_inputs([str(folder)]), 1, 256, torch.device("cpu")))
    return sum(r["error"] is None for r in records) / (time.perf_counter() - start)


def onnx_model(model, work: Path, tta: str):
    """The model exported to ONNX and loaded as predict loads an .onnx file (ONNX Runtime, CPU)."""
    from lightning_modules.inference.export import export_onnx
    from lightning_modules.inference.onnx_model import OnnxClassifier

    path = work / f"model_{tta}.onnx"
    export_onnx(model, torch.zeros(2, 3, model.image_size, model.image_size, dtype=torch.uint8), path)
    return OnnxClassifier(path)


def throughput(ckpt: Path, folders: dict[str, Path], work: Path, repeats: int) -> list[dict]:
    """Per folder and TTA mode: the model's forward rate (torch, ONNX Runtime) and predict's loop, alternated."""
    from lightning_modules.inference.checkpoints import load_classifier

    rows = []
    batch = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for tta in ("none", "mirror"):
        model = load_classifier(ckpt, map_location="cpu", tta=tta)
        ort = onnx_model(model, work, tta)
        for kind, folder in folders.items():
            runs = alternate(
                {
                    "model": lambda m=model: forward_rate(m, batch),
                    "onnxruntime": lambda o=ort: forward_rate(o, batch),
                    "predict": lambda m=model, f=folder: classify_rate(m, f),
                    "predict_onnx": lambda o=ort, f=folder: classify_rate(o, f),
                },
                repeats,
            )
            row = {"images": kind, "tta": tta, **{f"{k}_images_per_s": v for k, v in medians(runs).items()}}
            for name in ("predict", "predict_onnx"):
                shares = [p / m for p, m in zip(runs[name], runs["model"], strict=True)]
                row[f"{name}_share_of_model"] = statistics.median(shares)
            rows.append(row)
    return rows


def entries(ckpt: Path, repeats: int) -> dict:
    """The Lightning way to load and call a model against the inference model, same checkpoint and batch."""
    from lightning_modules import ImageClassifier
    from lightning_modules.inference.checkpoints import load_classifier

    lightning = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    inference = load_classifier(ckpt, map_location="cpu", tta="none")
    batch = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    runs = alternate(
        {"lightning": lambda: forward_rate(lightning, batch), "inference": lambda: forward_rate(inference, batch)},
        repeats,
    )
    rates = medians(runs)
    ratio = statistics.median([a / b for a, b in zip(runs["lightning"], runs["inference"], strict=True)])
    return {"load_from_checkpoint_images_per_s": rates["lightning"], "inference_model_images_per_s": rates["inference"],
            "ratio_lightning_over_inference": ratio}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser, "real images (optional)")
    parser.add_argument("--images", type=int, default=10000, help="small images in the throughput folder")
    parser.add_argument("--photos", type=int, default=200, help="phone-size JPEGs in the second folder (0: none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="startup,throughput,entries", help="comma-separated parts to run")
    add_json_option(parser, REPO / "bench" / "predict.json")
    args = parser.parse_args()
    parts = chosen_parts(parser, args.only, ("startup", "throughput", "entries"))
    results = {"machine": machine_line(machine()), "torch": torch.__version__, "repeats": args.repeats}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model.py").write_text(TUTORIAL_MODEL)
        (work / "test.py").write_text(TUTORIAL_TEST)
        sys.path.insert(0, str(work))
        from model import Tudui  # the tutorial's class, from the file just written

        torch.save(Tudui().state_dict(), work / "tudui.pth")
        source = make_images(work / "images", args.images, args.images_dir)
        results["images"] = source
        print(f"{results['machine']}; {source}; medians of {args.repeats}")
        if "startup" in parts:
            results.update(startup(work, args.repeats))
        if "throughput" in parts:
            folders = {"32x32 JPEGs": work / "images"}
            if args.photos:
                results["photos"] = make_photos(work / "photos", args.photos)
                folders["4032x3024 JPEGs"] = work / "photos"
            results["throughput"] = throughput(work / "tudui.pth", folders, work, args.repeats)
            rows = [(r["images"], r["tta"], f"{r['model_images_per_s']:.0f}", f"{r['onnxruntime_images_per_s']:.0f}",
                     f"{r['predict_images_per_s']:.0f}", f"{r['predict_share_of_model']:.2f}",
                     f"{r['predict_onnx_images_per_s']:.0f}", f"{r['predict_onnx_share_of_model']:.2f}")
                    for r in results["throughput"]]  # fmt: skip
            print("\nthroughput after start-up, images/s; share: of the model's own rate (torch forward, batch 256)")
            headers = ("folder", "tta", "model", "onnxruntime", "predict", "share", "predict .onnx", "share")
            print(text_table(headers, rows, right=(2, 3, 4, 5, 6, 7)))
        if "entries" in parts:
            ckpt = untrained_checkpoint(work / "tudui.ckpt", [f"c{i}" for i in range(10)])
            results["entries"] = entries(ckpt, args.repeats)
            e = results["entries"]
            print("\nthe same checkpoint, a uint8 batch of 256, images/s")
            print(text_table(("entry", "images/s"), [
                ("ImageClassifier.load_from_checkpoint(...)(images)", f"{e['load_from_checkpoint_images_per_s']:.0f}"),
                ("load_classifier(...)(images), as predict", f"{e['inference_model_images_per_s']:.0f}"),
                ("ratio", f"{e['ratio_lightning_over_inference']:.2f}"),
            ], right=(1,)))  # fmt: skip
    write_json(args.json, results)


def startup(work: Path, repeats: int) -> dict:
    """Process start to answer for one image: the tutorial's test.py against predict.py, alternated."""
    images = work / "images"
    count = len(list(images.iterdir()))
    one = str(next(images.iterdir()))
    predict = [sys.executable, str(REPO / "scripts" / "predict.py"), "--ckpt_path", "tudui.pth"]
    commands = {
        "tutorial": [sys.executable, "test.py", one],
        "predict": [*predict, one, "--trainer.accelerator", "cpu"],
        "folder": [*predict, "images", "--trainer.accelerator", "cpu"],
    }
    for command in commands.values():
        timed(command, work)  # warm-up: file cache, .pyc files
    runs = alternate({name: (lambda c=c: timed(c, work)) for name, c in commands.items()}, repeats)
    figures = {
        "startup_tutorial_s": statistics.median(runs["tutorial"]),
        "startup_predict_s": statistics.median(runs["predict"]),
        "startup_ratio_predict_over_tutorial": statistics.median(
            [o / t for o, t in zip(runs["predict"], runs["tutorial"], strict=True)]
        ),
        "folder_wall_s": statistics.median(runs["folder"]),
        "folder_images_per_s_end_to_end": count / statistics.median(runs["folder"]),
    }
    print(text_table(("start-up", "median"), [
        ("one image, tutorial test.py (s)", f"{figures['startup_tutorial_s']:.2f}"),
        ("one image, predict.py (s)", f"{figures['startup_predict_s']:.2f}"),
        ("ratio predict/tutorial", f"{figures['startup_ratio_predict_over_tutorial']:.2f}"),
        (f"{count} images, predict.py wall (s)", f"{figures['folder_wall_s']:.2f}"),
        ("  images/s, end to end", f"{figures['folder_images_per_s_end_to_end']:.0f}"),
    ], right=(1,)))  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
