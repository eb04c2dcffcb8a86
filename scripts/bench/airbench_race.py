"""Race airbench on the same GPU, the same 45,000 training images and the same 5,000 to score.

python scripts/bench/airbench_race.py --data_dir IMAGES --airbench_dir AIRBENCH --runs 5
python scripts/bench/airbench_race.py --data_dir IMAGES --sides ours --runs 1 --accelerator cpu \\
    --extra "--trainer.max_epochs 1"                                # a CPU dry run of our side

1. Writes the project's training split and validation split of IMAGES (an image folder or the
   official files; the same seeded split fit.py makes) as airbench's ``cifar10/train.pt`` and
   ``cifar10/test.pt``, so both sides train on the same images and score the same ones.
2. Runs each airbench script (unmodified but for its run count, rewritten on the fly in a copy)
   from that folder; reads each run's final TTA accuracy and its GPU seconds of training and
   evaluation (airbench's own clock, compilation excluded).
3. Runs ``scripts/fit.py`` with --recipe once per seed, as a user does, and reads from each run's
   report the final validation accuracy with the recipe's TTA, the training seconds (steps only,
   synchronised) and the wall time from launch.
4. Prints one table: side, runs, mean ± sd accuracy, mean training seconds, mean wall seconds,
   and the ratio of training seconds to airbench94's. Writes the figures as JSON (--json).

The airbench scripts need CUDA; --sides picks what runs (ours, airbench94, airbench94_muon).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from train_speed import seed_runs  # noqa: E402

from datamodules import CIFAR10DataModule  # noqa: E402
from lightning_modules.cli.sweep import mean_sd  # noqa: E402

# Each script's loop over runs, and what to put instead to run fewer.
RUN_LOOPS = {"airbench94": "range(25)", "airbench94_muon": "range(200)"}
SIDES = ("ours", *RUN_LOOPS)


def export_split(data_dir: str, dest: Path, val_size: int, split_seed: int) -> dict[str, int]:
    """fit.py's training and validation split in airbench's format: NHWC uint8 images, int64 labels."""
    data = CIFAR10DataModule(data_dir=data_dir, download=False, val_size=val_size, split_seed=split_seed)
    data.prepare_data()
    data.setup("fit")
    (dest / "cifar10").mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, split in (("train", data.train_split), ("test", data.val_split)):
        images = split.images.permute(0, 2, 3, 1).contiguous()
        if images.shape[1:] != (32, 32, 3):
            raise SystemExit(f"error: airbench reads 32x32 images; {data_dir} gives {tuple(images.shape[1:3])}")
        record = {"images": images, "labels": split.labels.to(torch.int64), "classes": list(data.classes)}
        torch.save(record, dest / "cifar10" / f"{name}.pt")
        sizes[name] = len(images)
    return sizes


def airbench_rows(output: str) -> list[dict[str, float]]:
    """The final row of each run in an airbench log: the rows whose tta_val_acc column is filled."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"\d\.\d+", cells[5] or "") and re.fullmatch(r"[\d.]+", cells[6]):
            rows.append({"acc": float(cells[5]), "seconds": float(cells[6])})
    return rows


def run_airbench(script: Path, runs: int, work: Path) -> dict:
    loop = RUN_LOOPS[script.stem]
    code = script.read_text()
    if loop not in code:
        raise SystemExit(f"error: {script} has no {loop}: not the airbench version this benchmark reads")
    copy = work / f"{script.stem}_{runs}runs.py"
    copy.write_text(code.replace(loop, f"range({runs})"))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(copy)], cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / f"{script.stem}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"error: {script.name} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    rows = airbench_rows(done.stdout)
    if not rows:
        raise SystemExit(f"error: no final rows in {script.name}'s output ({work / (script.stem + '.log')})")
    return {"accs": [r["acc"] for r in rows], "train_s": [r["seconds"] for r in rows], "wall_s": wall / len(rows)}


def run_ours(recipes: list[str], data_dir: str, runs: int, extra: list[str], work: Path) -> dict:
    """fit.py once per seed, as train_speed.py's seeds part launches it; airbench reports its last epoch's
    accuracy, so ours is the last validation's too."""
    done = seed_runs(data_dir, recipes, runs, ["--test", "false", *extra], work / "ours", predict_dir=None)
    return {
        "accs": [r["last_val_acc"] for r in done],
        "train_s": [r["train_s"] for r in done],
        "wall_s": statistics.mean(r["wall_s"] for r in done),
    }


def table(results: dict[str, dict]) -> str:
    base = results.get("airbench94")
    head = ("side", "runs", "accuracy (%)", "train s", "wall s per run", "train s / airbench94")
    rows = [head]
    for side, r in results.items():
        ratio = f"{statistics.mean(r['train_s']) / statistics.mean(base['train_s']):.2f}x" if base else "-"
        rows.append((side, str(len(r["accs"])), mean_sd(r["accs"], 100), f"{statistics.mean(r['train_s']):.2f}",
                     f"{r['wall_s']:.1f}", ratio))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="CIFAR-10 images (image folder or official files)")
    parser.add_argument("--airbench_dir", help="folder holding airbench94.py and airbench94_muon.py")
    parser.add_argument("--runs", type=int, default=5, help="runs per side (seeds 0..N-1 for ours)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast.yaml"), help="ours: comma-separated configs")
    parser.add_argument("--extra", default="", help="ours: more fit.py options, as one string")
    parser.add_argument("--accelerator", default="gpu", help="ours: gpu (the race) or cpu (a dry run)")
    parser.add_argument("--val_size", type=int, default=5000)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--work_dir", default="airbench_race", help="where the data, copies and logs go")
    parser.add_argument("--json", default="airbench_race.json")
    args = parser.parse_args(argv)
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown or args.runs < 1:
        parser.error(f"--sides {sorted(unknown)}: choose from {', '.join(SIDES)}; --runs must be >= 1")
    if any(s != "ours" for s in sides) and not args.airbench_dir:
        parser.error("the airbench sides need --airbench_dir (the folder with airbench94.py)")
    work = Path(args.work_dir).resolve()
    data_dir = str(Path(args.data_dir).resolve())
    sizes = export_split(data_dir, work, args.val_size, args.split_seed)
    print(f"airbench data: {sizes['train']:,} training and {sizes['test']:,} scored images in {work / 'cifar10'}")
    results: dict[str, dict] = {}
    for side in sides:
        print(f"{side}: {args.runs} runs", flush=True)
        if side == "ours":
            recipes = [str(Path(r).resolve()) for r in args.recipe.split(",") if r]
            # The split just exported, so both sides see the same images.
            split = ["--data.val_size", str(args.val_size), "--data.split_seed", str(args.split_seed)]
            extra = [*split, "--trainer.accelerator", args.accelerator, *shlex.split(args.extra)]
            results[side] = run_ours(recipes, data_dir, args.runs, extra, work)
        else:
            results[side] = run_airbench(Path(args.airbench_dir) / f"{side}.py", args.runs, work)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"\n{device}, torch {torch.__version__}; same {sizes['train']:,} training / {sizes['test']:,} scored images")
    print(table(results))
    Path(args.json).write_text(json.dumps({"device": device, "sizes": sizes, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
