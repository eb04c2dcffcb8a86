"""The command line of scripts/compare.py: runs side by side, from their report.json files.

python scripts/compare.py RUN_DIR [RUN_DIR ...] [--output compare.png]
"""

from __future__ import annotations

import json
from pathlib import Path

from datamodules.atomic_files import atomic_write
from lightning_modules.cli.frame import OneLineArgumentParser, UsageError, one_line_errors
from lightning_modules.reporting.tables import pct, text_table


def load_run(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir}: no report.json (runs write it when scripts/fit.py finishes)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a readable report ({err})") from None
    config = report.get("config") or {}
    net = (((config.get("model") or {}).get("net")) or {}).get("class_path", "?").rsplit(".", 1)[-1]
    logger = ((config.get("trainer") or {}).get("logger") or {}).get("init_args") or {}
    return {
        "run": str(run_dir),
        "recipe": f"{logger.get('name', '?')} ({net})",
        "epochs": len(report.get("epochs", [])),
        "time_s": report.get("wall_time_s"),
        "best_val_acc": report.get("best_val_acc"),
        "test_acc": (report.get("test") or {}).get("test/acc"),
        "curve": [(row["wall_s"], row["val/acc"]) for row in report.get("epochs", []) if "val/acc" in row],
    }


def table(runs: list[dict]) -> str:
    head = ("run", "recipe", "epochs", "time", "best val/acc", "test acc")
    rows = [
        (r["run"], r["recipe"], str(r["epochs"]), f"{r['time_s']:.0f} s" if r["time_s"] else "-",
         pct(r["best_val_acc"]), pct(r["test_acc"]))
        for r in runs
    ]  # fmt: skip
    return text_table(head, rows)


def curves_figure(runs: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for r in runs:
        if r["curve"]:
            xs, ys = zip(*r["curve"], strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, label=f"{r['recipe']}: {r['run']}")
    ax.set_xlabel("wall time since the start of training (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@one_line_errors
def compare_main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="compare.py", description="Compare training runs side by side.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="e.g. runs/tutorial/version_0")
    parser.add_argument("--output", default="compare.png", help="PNG of validation accuracy against wall time")
    args = parser.parse_args(argv)
    runs = [load_run(Path(d)) for d in args.run_dirs]
    print(table(runs))

    fig = curves_figure(runs)
    atomic_write(Path(args.output), lambda f: fig.savefig(f, format="png", dpi=110))
    print(f"wrote {args.output}")
    return 0
