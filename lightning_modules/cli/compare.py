"""The command line of scripts/compare.py: runs side by side, from their report.json files.

python scripts/compare.py RUN_DIR [RUN_DIR ...] [--output FILE.png]

It prints the table; the figure (validation accuracy against wall time) is drawn only into the
``--output`` named, never into a default file. The output may not be inside a run directory it
compares, nor an existing file other than a PNG compare.py drew before (``outputs.check_output``).
Epochs are the run's real count, the last reported epoch + 1: report.json has a row per
validation, so a run that validated only at its end has one row (``epochs_run``).
"""

from __future__ import annotations

import json
from pathlib import Path

from datamodules.atomic_files import atomic_write
from lightning_modules.cli.frame import OneLineArgumentParser, UsageError, file_name, one_line_errors
from lightning_modules.cli.outputs import check_output, png_metadata, png_written_by
from lightning_modules.reporting.tables import pct, text_table


def load_run(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir}: no report.json (runs write it when scripts/fit.py finishes)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a readable report ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("epochs"), list):
        # Any JSON object would otherwise be a row of question marks and dashes, as if it were a run.
        raise UsageError(f"{path}: not a report of scripts/fit.py (it has no list of epochs)")
    try:  # a string where a number goes: one line
        config = report.get("config") or {}
        net = (((config.get("model") or {}).get("net")) or {}).get("class_path", "?").rsplit(".", 1)[-1]
        loggers = (config.get("trainer") or {}).get("logger") or {}
        first = loggers[0] if isinstance(loggers, list) and loggers else loggers  # several: the first names the run
        logger = first.get("init_args") or {}
        name = logger.get("name") or logger.get("experiment_name") or "?"  # MLflow's is its experiment
        return {
            "run": str(run_dir),
            "recipe": f"{name} ({net})",
            "epochs": epochs_run(report),
            "time_s": number(report.get("wall_time_s")),
            "best_val_acc": number(report.get("best_val_acc")),
            "test_acc": number((report.get("test") or {}).get("test/acc")),
            "curve": [
                (number(row["wall_s"]), number(row["val/acc"]))
                for row in report.get("epochs") or []
                if "val/acc" in row
            ],
        }
    except (AttributeError, TypeError, KeyError, ValueError) as err:
        raise UsageError(f"{path}: not a report of scripts/fit.py ({type(err).__name__}: {err})") from None


def number(value):
    """A report's number, or None; anything else is not fit.py's report."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{value!r} where a number belongs")


def epochs_run(report: dict) -> int:
    """How many epochs the run trained: its last reported epoch + 1. report.json has a row per
    validated epoch, so a run validating every n epochs has fewer rows than epochs; fit.py refuses
    a ``check_val_every_n_epoch`` that does not divide ``max_epochs``, so a finished run's last
    epoch always has its row (an interrupted run counts up to its last validation)."""
    epochs = [row.get("epoch") for row in report.get("epochs") or [] if isinstance(row, dict)]
    return max((e for e in epochs if isinstance(e, int) and not isinstance(e, bool)), default=-1) + 1


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


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="compare.py", description="Compare training runs side by side.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="e.g. runs/tutorial/version_0")
    parser.add_argument(
        "--output",
        type=file_name,
        help="also draw validation accuracy against wall time into this PNG (default: the table only)",
    )
    return parser


@one_line_errors
def compare_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dirs = [Path(d) for d in args.run_dirs]
    if args.output:
        output = Path(args.output)
        check_output(
            output,
            option="--output",
            named=True,
            inputs=[d / "report.json" for d in run_dirs],
            read_dirs=[d for d in run_dirs if d.is_dir()],
            ours=lambda p: png_written_by(p, "compare.py"),
            what="PNG compare.py drew",
        )
        if output.suffix.lower() != ".png":
            raise UsageError(f"--output {output}: the figure is a PNG; give a file name ending in .png")
    runs = [load_run(d) for d in run_dirs]
    print(table(runs))
    if args.output:
        fig = curves_figure(runs)
        metadata = png_metadata("compare.py")
        atomic_write(output, lambda f: fig.savefig(f, format="png", dpi=110, metadata=metadata))
        print(f"wrote {output}")
    return 0
