"""Benchmark scripts/predict.py against the classic tutorial's test.py, side by side in one run.

    python scripts/benchmark_predict.py [--images 10000] [--repeats 5] [--json bench/predict.json]

Measures, alternating the commands so that machine noise hits both alike:
1. start-up: process start to answer for ONE image, tutorial test.py vs our predict.py (same
   tutorial network, same weights file);
2. throughput: predict.py on a folder of N 32x32 JPEGs (CIFAR-10 images from
   $DATA_DIR/train when DATA_DIR is set, else synthetic), end to end and as predict.py
   reports it (excluding interpreter start-up and checkpoint loading).
Prints a table and writes JSON. Everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# Real CIFAR-10 JPEGs when the environment names a copy (DATA_DIR/train/<class>/*.jpg), else synthetic images.
TRAIN_IMAGES = Path(os.environ["DATA_DIR"]) / "train" if os.environ.get("DATA_DIR") else None

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


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    return elapsed, result.stderr


def make_images(folder: Path, n: int) -> str:
    folder.mkdir(parents=True)
    if TRAIN_IMAGES is not None and TRAIN_IMAGES.is_dir():
        files = sorted(TRAIN_IMAGES.rglob("*.jpg"))[:: max(1, 50000 // n)][:n]
        for i, f in enumerate(files):
            shutil.copyfile(f, folder / f"{i:05d}.jpg")
        return f"{len(files)} CIFAR-10 JPEGs from {TRAIN_IMAGES}"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    return f"{n} synthetic 32x32 JPEGs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "predict.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model.py").write_text(TUTORIAL_MODEL)
        (work / "test.py").write_text(TUTORIAL_TEST)
        sys.path.insert(0, str(work))
        from model import Tudui  # the tutorial's class, from the file just written

        torch.save(Tudui().state_dict(), work / "tudui.pth")
        source = make_images(work / "images", args.images)
        one = str(next((work / "images").iterdir()))
        predict = [sys.executable, str(REPO / "scripts" / "predict.py"), "--ckpt_path", "tudui.pth"]
        tutorial_cmd = [sys.executable, "test.py", one]
        ours_cmd = [*predict, one, "--trainer.accelerator", "cpu"]
        folder_cmd = [*predict, "images", "--trainer.accelerator", "cpu"]

        timed(tutorial_cmd, work), timed(ours_cmd, work)  # warm-up: file cache, .pyc files
        tutorial, ours, folder, reported = [], [], [], []
        for _ in range(args.repeats):
            tutorial.append(timed(tutorial_cmd, work)[0])
            ours.append(timed(ours_cmd, work)[0])
            seconds, err = timed(folder_cmd, work)
            folder.append(seconds)
            reported.append(float(re.search(r"\((\d+) images/s", err).group(1)))

    med = statistics.median
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}",
        "torch": torch.__version__,
        "images": source,
        "repeats": args.repeats,
        "startup_tutorial_s": med(tutorial),
        "startup_predict_s": med(ours),
        "startup_ratio_predict_over_tutorial": med([o / t for o, t in zip(ours, tutorial, strict=True)]),
        "folder_wall_s": med(folder),
        "folder_images_per_s_end_to_end": args.images / med(folder),
        "folder_images_per_s_reported": med(reported),
    }
    rows = [
        ("one image, tutorial test.py (s)", f"{results['startup_tutorial_s']:.2f}"),
        ("one image, predict.py (s)", f"{results['startup_predict_s']:.2f}"),
        ("start-up ratio predict/tutorial", f"{results['startup_ratio_predict_over_tutorial']:.2f}"),
        (f"{args.images} images, predict.py wall (s)", f"{results['folder_wall_s']:.2f}"),
        ("  images/s, end to end", f"{results['folder_images_per_s_end_to_end']:.0f}"),
        ("  images/s, after start-up (as predict.py reports)", f"{results['folder_images_per_s_reported']:.0f}"),
    ]
    print(f"{results['machine']}; torch {results['torch']}; {source}; medians of {args.repeats}")
    for name, value in rows:
        print(f"{name:<52} {value:>8}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
