"""Race airbench on the same GPU, the same 45,000 training images and the same 5,000 to score.

python scripts/bench/airbench_race.py --images_dir DATA_DIR --airbench_dir AIRBENCH --runs 5
python scripts/bench/airbench_race.py --images_dir DATA_DIR --airbench_dir AIRBENCH --runs 5 \\
    --variant "fast_muon=--config configs/fast_muon.yaml" --variant "compile:1=--model.compile true"
python scripts/bench/airbench_race.py --images_dir DATA_DIR --sides ours --runs 1 --accelerator cpu \\
    --extra "--trainer.max_epochs 1"                                # a CPU dry run of our side

1. Writes the project's training split and validation split of --images_dir (default $DATA_DIR; an
   image folder or the official files; the same seeded split fit.py makes) as airbench's ``cifar10/train.pt`` and
   ``cifar10/test.pt``, so both sides train on the same images and score the same ones.
2. Runs each airbench script (unmodified but for its run count, rewritten on the fly in a copy)
   from that folder; reads each run's final TTA accuracy and its GPU seconds of training and
   evaluation (airbench's own clock, compilation excluded).
3. Runs --recipe once per seed with sweep.py's seed runner (``sweep.py --seeds N``: each run an
   ordinary fit in this process, as airbench runs its runs in one process) and reads from each
   run's report the final validation accuracy with the recipe's TTA, the training seconds (steps
   only, synchronised) and the fit's wall time.
4. Runs each --variant LABEL[:RUNS]=OPTIONS the same way, as the side ours+LABEL: the recipe plus
   those fit.py options (a ``--config`` among them adds a config file), RUNS runs (default --runs).
   A side that fails or would end after --deadline_s is reported in one line; the others go on.
5. Prints one table: side, runs, mean ± sd accuracy, mean training seconds, mean wall seconds,
   and the ratio of training seconds to each airbench side's. Writes the figures as JSON (--json)
   after every side, so an interrupted race keeps what finished.

The airbench scripts need CUDA; --sides picks what runs (ours, airbench94, airbench94_muon) and in
which order; the variants follow.
"""

from __future__ import annotations

import argparse
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

from datamodules import CIFAR10DataModule  # noqa: E402
from lightning_modules.reporting.tables import mean_sd, text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    add_images_dir,
    add_json_option,
    need_images_dir,
    recipe_files,
    seed_runs,
    write_json,
)

# Each script's loop over runs, and what to put instead to run fewer.
RUN_LOOPS = {"airbench94": "range(25)", "airbench94_muon": "range(200)"}
SIDES = ("ours", *RUN_LOOPS)
SIDE = re.compile(rf"({'|'.join(SIDES)})(?::([1-9]\d*))?")
VARIANT = re.compile(r"([\w.+-]+)(?::(\d+))?=(.*)", re.DOTALL)


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
    """The recipe once per seed, by sweep.py's seed runner (each fit in this process, as airbench runs
    its runs in one process); airbench reports its last epoch's accuracy, so ours is the last
    validation's too."""
    done = seed_runs(data_dir, recipes, runs, ["--test", "false", *extra], work)
    return {
        "accs": [r["last_val_acc"] for r in done],
        "train_s": [r["train_s"] for r in done],
        "wall_s": statistics.mean(r["wall_s"] for r in done),
    }


def parse_variant(spec: str, recipes: list[str], runs: int) -> dict:
    """``LABEL[:RUNS]=OPTIONS`` as a side of ours: its label, runs, config files and other fit.py options."""
    match = VARIANT.fullmatch(spec.strip())
    if not match:
        raise SystemExit(
            f"error: --variant {spec!r}: write LABEL[:RUNS]=OPTIONS, e.g. 'bf16:1=--trainer.precision bf16-true'"
        )
    label, count, options = match.groups()
    words, configs, rest = iter(shlex.split(options)), [], []
    for word in words:
        if word == "--config" or word.startswith("--config="):
            configs.append(str(Path(word.partition("=")[2] or next(words, "")).resolve()))
        else:
            rest.append(word)
    return {"side": f"ours+{label}", "runs": int(count or runs), "recipes": [*recipes, *configs], "options": rest}


def one_line(error: BaseException) -> str:
    """A failed side in one line: which process exited how, and the last line it wrote (its error)."""
    lines = [line.strip() for line in str(getattr(error, "code", None) or error).splitlines() if line.strip()]
    head = re.match(r"(?:error: )?(.*? exited with -?\d+):?\s*(.*)", lines[0]) if lines else None
    if not head:
        return lines[-1].removeprefix("error: ") if lines else type(error).__name__
    last = (lines[-1] if len(lines) > 1 else head[2]).removeprefix("error: ")
    return f"{head[1]}: {last}" if last else head[1]


def out_of_time(step: dict, results: dict[str, dict], started: float, deadline_s: float | None) -> str | None:
    """Why a side is skipped, if it would end after the deadline at the last finished side of ours's pace."""
    if deadline_s is None:
        return None
    pace = [r["wall_s"] for s, r in results.items() if s.startswith("ours") and "wall_s" in r]
    expected = step["runs"] * pace[-1] if pace and step["side"].startswith("ours") else 0.0
    elapsed = time.perf_counter() - started
    if elapsed + expected <= deadline_s:
        return None
    return f"skipped: {elapsed:.0f} s gone, ~{expected:.0f} s more would pass --deadline_s {deadline_s:.0f}"


def table(results: dict[str, dict]) -> str:
    done = {side: r for side, r in results.items() if "accs" in r}
    bases = [side for side in RUN_LOOPS if side in done]
    head = ("side", "runs", "accuracy (%)", "train s", "wall s per run", *(f"train s / {b}" for b in bases))
    rows = []
    for side, r in done.items():
        train_s = statistics.mean(r["train_s"])
        ratios = [f"{train_s / statistics.mean(done[b]['train_s']):.2f}x" for b in bases]
        rows.append(
            (side, str(len(r["accs"])), mean_sd(r["accs"], 100), f"{train_s:.2f}", f"{r['wall_s']:.1f}", *ratios)
        )
    failed = [f"{side}: {r.get('error') or r['skipped']}" for side, r in results.items() if side not in done]
    return "\n".join([text_table(head, rows), *failed])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser)
    parser.add_argument("--airbench_dir", help="folder holding airbench94.py and airbench94_muon.py")
    parser.add_argument("--runs", type=int, default=5, help="runs per side (seeds 0..N-1 for ours)")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}; SIDE:N runs N of it"
    )
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast.yaml"), help="ours: comma-separated configs")
    parser.add_argument("--extra", default="", help="ours and its variants: more fit.py options, as one string")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="LABEL[:RUNS]=OPTIONS",
        help="another side of ours, ours+LABEL: the recipe plus these fit.py options; repeatable",
    )  # fmt: skip
    parser.add_argument("--deadline_s", type=float, help="skip the sides that would end later than this (s from start)")
    parser.add_argument("--accelerator", default="gpu", help="ours: gpu (the race) or cpu (a dry run)")
    parser.add_argument("--val_size", type=int, default=5000)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--work_dir", default="airbench_race", help="where the data, copies and logs go")
    add_json_option(parser, "airbench_race.json")
    args = parser.parse_args(argv)
    need_images_dir(parser, args)
    matches = [SIDE.fullmatch(side) for side in args.sides.split(",") if side]
    if not all(matches) or args.runs < 1:
        parser.error(f"--sides {args.sides}: choose from {', '.join(SIDES)} (SIDE:N runs N of it); --runs must be >= 1")
    args.sides = [(m[1], int(m[2] or args.runs)) for m in matches]
    if any(side != "ours" for side, _ in args.sides) and not args.airbench_dir:
        parser.error("the airbench sides need --airbench_dir (the folder with airbench94.py)")
    return args


def plan(args: argparse.Namespace) -> list[dict]:
    """The sides in the order they run: --sides, then the variants of ours."""
    recipes = recipe_files(args.recipe)
    steps = [{"side": side, "runs": runs, "recipes": recipes, "options": []} for side, runs in args.sides]
    return steps + [parse_variant(spec, recipes, args.runs) for spec in args.variant]


def run_side(step: dict, args: argparse.Namespace, data_dir: str, work: Path) -> dict:
    if step["side"] in RUN_LOOPS:
        return run_airbench(Path(args.airbench_dir) / f"{step['side']}.py", step["runs"], work)
    # The split just exported, so both sides see the same images.
    split = ["--data.val_size", str(args.val_size), "--data.split_seed", str(args.split_seed)]
    extra = [*split, "--trainer.accelerator", args.accelerator, *shlex.split(args.extra), *step["options"]]
    return run_ours(step["recipes"], data_dir, step["runs"], extra, work / step["side"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps, started = plan(args), time.perf_counter()
    work = Path(args.work_dir).resolve()
    data_dir = str(Path(args.images_dir).resolve())
    sizes = export_split(data_dir, work, args.val_size, args.split_seed)
    print(f"airbench data: {sizes['train']:,} training and {sizes['test']:,} scored images in {work / 'cifar10'}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict[str, dict] = {}
    for step in steps:
        side, skipped = step["side"], out_of_time(step, results, started, args.deadline_s)
        print(f"{side}: {skipped or str(step['runs']) + ' runs'}", flush=True)
        try:
            results[side] = {"skipped": skipped} if skipped else run_side(step, args, data_dir, work)
        except (SystemExit, Exception) as err:  # one side's failure (a new option, say) must not end the race
            if isinstance(err, SystemExit) and err.code == 130:
                raise  # Ctrl-C (the seed runner's interrupted sweep): the race stops, as the user asked
            results[side] = {"error": one_line(err)}
            print(f"error: {side}: {results[side]['error']}", flush=True)
        write_json(args.json, {"device": device, "sizes": sizes, "results": results}, say=False)
    print(f"\n{device}, torch {torch.__version__}; same {sizes['train']:,} training / {sizes['test']:,} scored images")
    print(table(results))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
