"""The command line of scripts/sweep.py: hyper-parameter search and seed repeats with Optuna.

    python scripts/sweep.py --space configs/sweeps/fast_cpu_lr.yaml --config configs/fast_cpu.yaml --n_trials 20
    python scripts/sweep.py --config configs/fast_cpu.yaml --seeds 3          # one recipe, 3 seeds: mean +- sd

Every trial is an ordinary fit.py run (in this process), in ``<out>/trials/trial_NNN/`` with its
report, checkpoints and logs; any option this command does not know goes to fit.py as given. The
study lives in an Optuna storage (SQLite in ``<out>/study.db`` by default), so the same command
after Ctrl-C, a crash or on another day goes on where it stopped, and several processes or
machines can share one database server. Trials report ``val/acc`` after each validation, and a
trial the pruner finds behind the others at the same epoch stops there.

The search space is YAML, one entry per fit.py option::

    optimizer.init_args.lr: {type: float, low: 0.05, high: 1.0, log: true}
    data.batch_size: {type: categorical, choices: [128, 256, 512]}
    trainer.max_epochs: {type: int, low: 4, high: 8}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from datamodules.atomic_files import atomic_write
from lightning_modules.cli.frame import UsageError, one_line_errors

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TYPES = ("float", "int", "categorical")
MONITOR = "val/acc"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description="Search fit.py options with Optuna, or repeat one recipe over seeds. Unknown options go to fit.py.",
    )
    parser.add_argument("--space", help="search-space YAML (option: {type, low, high, log, step, choices})")
    parser.add_argument("--seeds", type=int, help="instead of a search: run the recipe with seeds 0..N-1")
    parser.add_argument("--config", action="append", default=[], help="fit.py config file(s), in order")
    parser.add_argument("--n_trials", type=int, help="finished trials to reach (counting earlier sessions)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default: tpe (grid: choices only)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="stop trials behind the others")
    parser.add_argument("--name", help="study name (default: the space file's or the config's name)")
    parser.add_argument("--output_dir", help="default: runs/sweeps/<name>")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<output_dir>/study.db)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    return parser


@one_line_errors
def sweep_main(argv: list[str] | None = None) -> int:
    args, fit_args = build_parser().parse_known_args(argv)
    plan = make_plan(args, fit_args)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = plan["output_dir"]
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        study = optuna.create_study(
            study_name=plan["name"], storage=storage, load_if_exists=True, direction="maximize",
            sampler=plan["sampler"], pruner=make_pruner(plan["pruner"]),
        )  # fmt: skip
    except Exception as err:  # a bad URL, an unreachable server, a damaged file
        raise UsageError(f"--storage {storage}: cannot open the study ({str(err).splitlines()[0][:200]})") from None
    done = finished(study)
    todo = plan["n_trials"] - len(done)
    print(f"Study {plan['name']} in {storage}: {len(done)} finished trials, {max(todo, 0)} to go", file=sys.stderr)
    interrupted = False
    if todo > 0:
        try:
            study.optimize(lambda trial: run_trial(trial, plan), n_trials=todo, timeout=args.timeout, catch=())
        except KeyboardInterrupt:
            interrupted = True
    report(study, plan)
    if interrupted:
        print(
            f"Interrupted: the {len(finished(study))} finished trials are kept in {storage}; "
            "run the same command to go on",
            file=sys.stderr,
        )
        return 130
    return 0


def make_plan(args: argparse.Namespace, fit_args: list[str]) -> dict[str, Any]:
    """Check everything that can be checked before the first trial; one-line errors otherwise."""
    if (args.space is None) == (args.seeds is None):
        raise UsageError("pass --space FILE (a search) or --seeds N (repeats of one recipe), not both or neither")
    for flag in ("n_trials", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be a positive integer; got {value}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds; got {args.timeout}")
    for file in args.config:
        if not Path(file).is_file():
            raise UsageError(f"--config {file}: no such file")
    if args.seeds is not None:
        space = {"seed_everything": {"type": "categorical", "choices": list(range(args.seeds))}}
        name = args.name or f"{Path(args.config[-1]).stem if args.config else 'tutorial'}_seeds"
        n_trials, pruner = args.n_trials or args.seeds, "none"
        built_sampler = make_sampler("grid", space, args.seed)
    else:
        space = read_space(Path(args.space))
        name = args.name or Path(args.space).stem
        n_trials, sampler, pruner = args.n_trials, args.sampler, args.pruner
        built_sampler = make_sampler(sampler, space, args.seed)  # refuses a grid over ranges
        if sampler == "grid":
            n_trials = n_trials or math.prod(len(spec["choices"]) for spec in space.values())
        if n_trials is None and args.timeout is None:
            raise UsageError("say how long to search: --n_trials N, --timeout SECONDS, or both")
        n_trials = n_trials or 10**9
    base = [a for file in args.config for a in ("--config", file)] + fit_args
    check_options(space, base, args.space or "--seeds")
    output_dir = Path(args.output_dir or Path("runs", "sweeps", name))
    return {
        "name": name, "space": space, "base": base, "n_trials": n_trials, "pruner": pruner,
        "output_dir": output_dir, "seeds": args.seeds is not None, "sampler": built_sampler,
    }  # fmt: skip


def read_space(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise UsageError(f"--space {path}: no such file")
    try:
        space = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"--space {path}: not readable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"--space {path}: expected a mapping of fit.py options to ranges, e.g. {EXAMPLE}")
    for key, spec in space.items():
        where = f"--space {path}, {key}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise UsageError(f"{where}: give a type, one of {', '.join(TYPES)}, e.g. {EXAMPLE}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise UsageError(f"{where}: a categorical needs a non-empty list of choices")
            continue
        number = float if spec["type"] == "float" else int
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise UsageError(f"{where}: a {spec['type']} needs finite numbers low and high")
        if number is int and not (float(low).is_integer() and float(high).is_integer()):
            raise UsageError(f"{where}: an int needs whole numbers low and high")
        if not low <= high or (spec.get("log") and low <= 0):
            raise UsageError(f"{where}: needs low <= high (and low > 0 with log: true); got {low} and {high}")
        unknown = set(spec) - {"type", "low", "high", "log", "step"}
        if unknown:
            raise UsageError(f"{where}: unknown keys {sorted(unknown)}; use low, high, log, step")
    return space


EXAMPLE = "optimizer.init_args.lr: {type: float, low: 0.05, high: 1.0, log: true}"


def check_options(space: dict[str, dict], base: list[str], source: str) -> None:
    """Build fit.py's configuration once, as a trial would, with the first value of each range, so that
    an unknown option or a value it refuses stops the sweep before any trial."""
    from lightning_modules.cli.fit import ClassifierCLI

    sample = [a for key, spec in space.items() for a in (f"--{key}", str(first_value(spec)))]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # the parser's own line goes into ours: one line in all
            ClassifierCLI(args=[*base, *sample, "--trainer.logger", "false"])
    except SystemExit:
        reason = said.getvalue().strip().splitlines()[-1].removeprefix("error: ") if said.getvalue().strip() else ""
        unknown = [key for key in space if "unrecognized" in reason.lower() and f"--{key}" in reason]
        if unknown:
            raise UsageError(
                f"{source}: {unknown[0]} is not an option of fit.py; options are dotted paths such as "
                "model.label_smoothing, optimizer.init_args.lr, data.batch_size, trainer.max_epochs "
                "(see scripts/fit.py --print_config)"
            ) from None
        raise UsageError(f"{source}: fit.py refused the first value of a range, or its options: {reason}") from None


def first_value(spec: dict[str, Any]) -> Any:
    return spec["choices"][0] if spec["type"] == "categorical" else spec["low"]


def make_sampler(name: str, space: dict[str, dict], seed: int):
    import optuna

    if name == "grid":
        not_listed = [k for k, spec in space.items() if spec["type"] != "categorical"]
        if not_listed:
            raise UsageError(f"--sampler grid needs choices for every option; {not_listed} are ranges")
        return optuna.samplers.GridSampler({k: spec["choices"] for k, spec in space.items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str):
    import optuna

    if name == "median":
        # Two full trials before judging others, and never on the first validation.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def suggest(trial, key: str, spec: dict[str, Any]) -> Any:
    if spec["type"] == "categorical":
        return trial.suggest_categorical(key, spec["choices"])
    if spec["type"] == "int":
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                 log=bool(spec.get("log")))  # fmt: skip
    return trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"), log=bool(spec.get("log")))


def run_trial(trial, plan: dict[str, Any]) -> float:
    """One fit.py run with the trial's values; its best val/acc is the objective."""
    import json

    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from lightning_modules.cli.fit import fit_main

    values = {key: suggest(trial, key, spec) for key, spec in plan["space"].items()}
    version = f"trial_{trial.number:03d}"
    run_dir = plan["output_dir"] / "trials" / version
    trial.set_user_attr("run_dir", str(run_dir))
    args = [
        *plan["base"],
        *[a for key, value in values.items() for a in (f"--{key}", str(value))],
        "--trainer.logger.init_args.save_dir", str(plan["output_dir"]),
        "--trainer.logger.init_args.name", "trials",
        "--trainer.logger.init_args.version", version,
    ]  # fmt: skip
    print(f"Trial {trial.number}: {values}", file=sys.stderr)
    callbacks = [PyTorchLightningPruningCallback(trial, monitor=MONITOR)] if plan["pruner"] != "none" else []
    start = time.perf_counter()
    try:
        status = fit_main(args, callbacks=callbacks, resume_hint=False)
    except SystemExit as exit_:
        if exit_.code == 130:  # Ctrl-C or SIGTERM: fit_main has said what it saved
            raise KeyboardInterrupt from None
        status = exit_.code if isinstance(exit_.code, int) else 1
    except optuna.TrialPruned:
        trial.set_user_attr("wall_s", round(time.perf_counter() - start, 1))
        raise
    trial.set_user_attr("wall_s", round(time.perf_counter() - start, 1))
    report_file = run_dir / "report.json"
    if status != 0 or not report_file.is_file():
        raise RuntimeError(f"trial {trial.number} failed (exit status {status}); see the lines above")
    report = json.loads(report_file.read_text())
    if report.get("best_val_acc") is None:
        raise RuntimeError(f"trial {trial.number} never validated: {MONITOR} is what the sweep maximises")
    test = (report.get("test") or {}).get("test/acc")
    if test is not None:
        trial.set_user_attr("test_acc", test)
    return float(report["best_val_acc"])


def finished(study) -> list:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def mean_sd(values: list[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd`` (sample standard deviation) of the values times ``scale``, missing ones left out."""
    values = [scale * v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(study, plan: dict[str, Any]) -> None:
    """The trials as a table and a PNG; the best configuration as a ready --config file; seeds as mean +- sd."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.RUNNING]
    if not trials:
        return
    rows = [("trial", "state", "val/acc", "test/acc", "wall s", "values")]
    for t in trials:
        rows.append((
            str(t.number), t.state.name.lower(), pct(t.value if t.value is not None else last_reported(t)),
            pct(t.user_attrs.get("test_acc")), str(t.user_attrs.get("wall_s", "-")),
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    out = plan["output_dir"]
    plot_trials(trials, out / "trials.png")
    vals = [t.value for t in complete]
    tests = [t.user_attrs["test_acc"] for t in complete if "test_acc" in t.user_attrs]
    walls = [t.user_attrs["wall_s"] for t in complete if "wall_s" in t.user_attrs]
    print(
        f"{len(complete)} complete trials: val/acc {mean_sd(vals, 100)}%"
        + (f", test/acc {mean_sd(tests, 100)}%" if tests else "")
        + (f", {mean_sd(walls, digits=0)} s per trial" if walls else "")
    )
    if plan["seeds"]:
        return  # repeats of one recipe: there is no best configuration to keep
    best = study.best_trial
    written = write_best_config(best, plan, out / "best.yaml")
    print(f"Best: trial {best.number}, val/acc {pct(best.value)} ({best.params}); config: {written}; plot: "
          f"{out / 'trials.png'}")  # fmt: skip


def last_reported(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def plot_trials(trials: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x"), ("FAIL", "^")):
        points = [(t.number, t.value if t.value is not None else last_reported(t)) for t in trials
                  if t.state.name == state]  # fmt: skip
        points = [(n, 100 * v) for n, v in points if v is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=state.lower())
    best_so_far, best = [], -math.inf
    for t in trials:
        if t.state.name == "COMPLETE":
            best = max(best, 100 * t.value)
        best_so_far.append((t.number, best))
    ax.step(*zip(*[(n, b) for n, b in best_so_far if b > -math.inf], strict=True), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{MONITOR} (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_best_config(best, plan: dict[str, Any], path: Path) -> Path:
    """The best trial's full config.yaml, with its own run directory replaced by runs/<name>_best."""
    source = Path(best.user_attrs["run_dir"]) / "config.yaml"
    config = yaml.safe_load(source.read_text())
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
        logger["init_args"].update(save_dir="runs", name=f"{plan['name']}_best", version=None)
    config["ckpt_path"] = None
    header = (
        f"# Best of sweep {plan['name']}: trial {best.number}, val/acc {pct(best.value)}, values {best.params}.\n"
        f"#   python scripts/fit.py --config {path}\n"
    )
    text = header + yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
