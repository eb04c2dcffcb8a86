"""Where a training step's time goes: torch.profiler over a few steps of scripts/fit.py's own run.

python scripts/bench/gpu_profile.py --images_dir DATA_DIR                       # configs/fast.yaml, on the GPU
python scripts/bench/gpu_profile.py --images_dir DATA_DIR --recipe configs/fast.yaml,configs/fast_muon.yaml
python scripts/bench/gpu_profile.py --images_dir DATA_DIR --wait 2 --steps 3 \\
    --extra "--trainer.accelerator cpu --trainer.precision 32-true"         # a CPU dry run

Runs fit.py's code path (fit() with the recipe, its callbacks and its progress output) in this
process with one callback more: after --wait training steps and one discarded warm-up step it
records --steps steps (host activity always; CUDA kernels, copies and memsets when the run is on a
GPU), then stops the run, since only the steps' costs are wanted. Prints the top --top host ops and
device kernels by self time (calls, self ms over the recorded steps, share of all self time of that
kind) and the mean step; writes them as JSON (--json) and the steps as a gzipped Chrome trace
(--trace: open it in https://ui.perfetto.dev or chrome://tracing).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning_modules.cli.fit import fit  # noqa: E402
from lightning_modules.reporting.tables import pct, text_table  # noqa: E402
from scripts.bench.common import add_images_dir, add_json_option, need_images_dir, recipe_files, write_json  # noqa: E402


class ProfileSteps(Callback):
    """Records training steps ``wait + 1 .. wait + steps`` (0-based) with torch.profiler, then asks the
    trainer to stop. The step before them is the profiler's own warm-up: its first recorded step
    carries the tracer's start-up cost, so it is discarded."""

    def __init__(self, wait: int, steps: int, trace: Path) -> None:
        self.wait, self.steps, self.trace = wait, steps, trace
        self.profiler: profile | None = None
        self.averages = None
        self.device = "cpu"

    def on_train_start(self, trainer, pl_module) -> None:
        self.device = pl_module.device.type
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=self.wait, warmup=1, active=self.steps, repeat=1),
            on_trace_ready=self._ready,
        )
        self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.profiler.step()
        if self.averages is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.profiler.stop()

    def _ready(self, profiler: profile) -> None:
        profiler.export_chrome_trace(str(self.trace))
        self.averages = profiler.key_averages()


def merged(averages, device: bool) -> dict[str, dict]:
    """Calls and self microseconds per op name on the host, or per kernel on the device. The steps'
    own ranges (ProfilerStep#N, or already merged as ProfilerStep*) make one host row: their time
    outside any op, Python and Lightning's per-step work. Their mirror on the device timeline spans
    whole steps, so it is left out there."""
    rows: dict[str, dict] = {}
    for event in averages:
        on_device = event.device_type == DeviceType.CUDA
        annotation = getattr(event, "is_user_annotation", False)  # not every torch version has the flag
        if on_device != device or (device and annotation) or event.key.startswith("[memory]"):
            continue
        name = re.sub(r"^ProfilerStep(#\d+|\*)$", "ProfilerStep*", event.key)
        row = rows.setdefault(name, {"name": name, "calls": 0, "self_us": 0.0, "total_us": 0.0})
        row["calls"] += event.count
        row["self_us"] += event.self_device_time_total if device else event.self_cpu_time_total
        row["total_us"] += event.device_time_total if device else event.cpu_time_total
    return rows


def top_costs(rows: dict[str, dict], top: int) -> list[dict]:
    total = sum(r["self_us"] for r in rows.values()) or 1.0
    ranked = sorted(rows.values(), key=lambda r: -r["self_us"])[:top]
    return [{"name": r["name"], "calls": r["calls"], "self_ms": r["self_us"] / 1e3, "share": r["self_us"] / total}
            for r in ranked]  # fmt: skip


def summarise(callback: ProfileSteps, top: int) -> dict:
    host, device = merged(callback.averages, device=False), merged(callback.averages, device=True)
    steps = host.get("ProfilerStep*", {"calls": 0, "total_us": 0.0})
    name = torch.cuda.get_device_name(0) if callback.device == "cuda" else "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "steps": steps["calls"],
        "step_ms": steps["total_us"] / 1e3 / max(steps["calls"], 1),
        "device_busy_ms_per_step": sum(r["self_us"] for r in device.values()) / 1e3 / max(steps["calls"], 1),
        "host": top_costs(host, top),
        "device_ops": top_costs(device, top),
    }


def render(report: dict) -> str:
    busy = report["device_busy_ms_per_step"]
    lines = [
        f"profile: {report['device']}, torch {report['torch']}; {report['steps']} training steps, "
        f"{report['step_ms']:.2f} ms per step on the host clock"
        + (f", device busy {busy:.2f} ms of it ({busy / report['step_ms']:.0%})" if report["device_ops"] else "")
    ]
    for kind, rows in (("host (CPU) op", report["host"]), ("device (CUDA) kernel", report["device_ops"])):
        if not rows:
            lines.append(f"{kind}: none recorded (no CUDA run)")
            continue
        cells = [(r["name"][:70], str(r["calls"]), f"{r['self_ms']:.2f}", pct(r["share"])) for r in rows]
        lines.append(text_table((kind, "calls", "self ms", "share"), cells, right=(1, 2, 3)))
    return "\n".join(lines)


def fit_args(args: argparse.Namespace, work: Path) -> list[str]:
    configs = [a for r in recipe_files(args.recipe) for a in ("--config", r)]
    return [
        *configs, "--data.data_dir", str(Path(args.images_dir).resolve()), "--test", "false",
        "--trainer.logger.init_args.save_dir", str(work), *shlex.split(args.extra),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast.yaml"), help="comma-separated configs")
    parser.add_argument("--extra", default="", help="more fit.py options, as one string")
    parser.add_argument("--wait", type=int, default=10, help="training steps before the profiler's warm-up step")
    parser.add_argument("--steps", type=int, default=15, help="training steps recorded")
    parser.add_argument("--top", type=int, default=12, help="rows in each table")
    parser.add_argument("--work_dir", help="where the run's files go (default: a new temporary folder)")
    add_json_option(parser, "profile.json")
    parser.add_argument("--trace", default="profile_trace.json.gz", help="Chrome trace; .gz compresses it")
    args = parser.parse_args(argv)
    need_images_dir(parser, args)
    if args.wait < 0 or args.steps < 1:
        parser.error("--wait must be >= 0 and --steps >= 1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_profile."))
    callback = ProfileSteps(args.wait, args.steps, Path(args.trace).resolve())
    fit(fit_args(args, work), callbacks=[callback])
    if callback.averages is None:
        print(f"error: the run ended before step {args.wait + 1 + args.steps}, the last one to profile; lower --wait "
              "or --steps, or train more steps (--extra '--trainer.max_epochs N')", file=sys.stderr)  # fmt: skip
        return 2
    report = summarise(callback, args.top)
    print(render(report))
    write_json(args.json, {**report, "trace": str(args.trace), "fit_args": fit_args(args, work)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
