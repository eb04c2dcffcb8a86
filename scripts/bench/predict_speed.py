"""Benchmark scripts/predict.py against the classic tutorial's test.py, side by side in one run.

    python scripts/bench/predict_speed.py [--images_dir DATA_DIR] [--images 10000] [--repeats 5] [--json FILE]

Measures, alternating the commands so that machine noise hits both alike:
1. start-up: process start to answer for ONE image, tutorial test.py vs our predict.py (same
   tutorial network, same weights file);
2. throughput: predict.py on a folder of N 32x32 images (CIFAR-10 images from --images_dir/train,
   default $DATA_DIR; synthetic JPEGs when neither is given), end to end, and predict's own
   classify loop in this process after start-up (the model already loaded).
Prints a table and writes JSON. Everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lightning_modules.reporting.tables import text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    add_images_dir,
    add_json_option,
    checkout_env,
    machine,
    machine_line,
    sample_images,
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


def classify_rate(ckpt: Path, folder: Path) -> float:
    """Images/s of predict's classify loop over the folder, after start-up (the model loaded), in this
    process: what predict.py times, without its interpreter start, imports and checkpoint load."""
    from datamodules.image_reader import expand_inputs
    from lightning_modules.inference.checkpoints import load_classifier
    from lightning_modules.inference.predictor import classify

    device = torch.device("cpu")
    model = load_classifier(ckpt, map_location=device)
    start = time.perf_counter()
    records = list(classify(model, expand_inputs([str(folder)]), 1, 256, device))
    return sum(r["error"] is None for r in records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser, "real images (optional)")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    add_json_option(parser, REPO / "bench" / "predict.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model.py").write_text(TUTORIAL_MODEL)
        (work / "test.py").write_text(TUTORIAL_TEST)
        sys.path.insert(0, str(work))
        from model import Tudui  # the tutorial's class, from the file just written

        torch.save(Tudui().state_dict(), work / "tudui.pth")
        source = make_images(work / "images", args.images, args.images_dir)
        count = len(list((work / "images").iterdir()))
        one = str(next((work / "images").iterdir()))
        predict = [sys.executable, str(REPO / "scripts" / "predict.py"), "--ckpt_path", "tudui.pth"]
        tutorial_cmd = [sys.executable, "test.py", one]
        ours_cmd = [*predict, one, "--trainer.accelerator", "cpu"]
        folder_cmd = [*predict, "images", "--trainer.accelerator", "cpu"]

        timed(tutorial_cmd, work), timed(ours_cmd, work)  # warm-up: file cache, .pyc files
        tutorial, ours, folder, in_process = [], [], [], []
        for _ in range(args.repeats):
            tutorial.append(timed(tutorial_cmd, work))
            ours.append(timed(ours_cmd, work))
            folder.append(timed(folder_cmd, work))
            in_process.append(classify_rate(work / "tudui.pth", work / "images"))

    med = statistics.median
    results = {
        "machine": machine_line(machine()),
        "torch": torch.__version__,
        "images": source,
        "repeats": args.repeats,
        "startup_tutorial_s": med(tutorial),
        "startup_predict_s": med(ours),
        "startup_ratio_predict_over_tutorial": med([o / t for o, t in zip(ours, tutorial, strict=True)]),
        "folder_wall_s": med(folder),
        "folder_images_per_s_end_to_end": count / med(folder),
        "folder_images_per_s_after_startup": med(in_process),
    }
    rows = [
        ("one image, tutorial test.py (s)", f"{results['startup_tutorial_s']:.2f}"),
        ("one image, predict.py (s)", f"{results['startup_predict_s']:.2f}"),
        ("start-up ratio predict/tutorial", f"{results['startup_ratio_predict_over_tutorial']:.2f}"),
        (f"{count} images, predict.py wall (s)", f"{results['folder_wall_s']:.2f}"),
        ("  images/s, end to end", f"{results['folder_images_per_s_end_to_end']:.0f}"),
        ("  images/s, after start-up (predict's classify loop)", f"{results['folder_images_per_s_after_startup']:.0f}"),
    ]
    print(f"{results['machine']}; {source}; medians of {args.repeats}")
    print(text_table(("", "median"), rows, right=(1,)))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
