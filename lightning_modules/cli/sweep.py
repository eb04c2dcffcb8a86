"""The command line of scripts/sweep.py: hyper-parameter search and seed repeats with Optuna.

    python scripts/sweep.py --space configs/sweeps/fast_cpu_lr.yaml --config configs/fast_cpu.yaml --n_trials 20
    python scripts/sweep.py --config configs/fast_cpu.yaml --seeds 3          # one recipe, 3 seeds: mean +- sd

Every trial is an ordinary fit.py run (in this process), in ``<out>/trials/trial_NNN/`` with its
report, checkpoints and logs; any option this command does not know goes to fit.py as given. The
study lives in an Optuna storage (SQLite in ``<out>/study.db`` by default), so the same command
after Ctrl-C, a crash or on another day goes on where it stopped, and several processes or
machines can share one database server; each session's sampler is seeded with ``--seed`` plus
the trials already in the study, so going on draws new values. Trials report ``val/acc`` after
each validation, and a trial the pruner finds behind the others at the same epoch stops there.

Before any trial, fit.py builds its configuration with the first value of every range, then with
each other choice and each range's high end: a value it refuses anywhere in the space is one
line, exit status 2. A trial that fails anyway (a diverged run, memory) is recorded as FAIL in one
line and the study goes on; the exit status is then 1 (done in part). Ctrl-C: 130, trials kept.

The search space is YAML, one entry per fit.py option, each an Optuna distribution::

    optimizer.init_args.lr: {type: float, low: 0.05, high: 1.0, log: true}
    data.batch_size: {type: categorical, choices: [128, 256, 512]}
    trainer.max_epochs: {type: int, low: 4, high: 8}
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.atomic_files import atomic_write
from lightning_modules.cli.frame import (
    OneLineArgumentParser,
    UsageError,
    check_config_files,
    expected_errors,
    one_line,
    one_line_errors,
    positive_float,
    positive_int,
    seed_count,
    seed_number,
)
from lightning_modules.reporting.tables import mean_sd, pct, text_table

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
MONITOR = "val/acc"
EXAMPLE = "optimizer.init_args.lr: {type: float, low: 0.05, high: 1.0, log: true}"


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="sweep.py",
        description="Search fit.py options with Optuna, or repeat one recipe over seeds. Unknown options go to fit.py.",
    )
    parser.add_argument("--space", help="search-space YAML (option: {type, low, high, log, step, choices})")
    parser.add_argument("--seeds", type=seed_count, help="instead of a search: run the recipe with seeds 0..N-1")
    parser.add_argument("--config", action="append", default=[], help="fit.py config file(s), in order")
    parser.add_argument("--n_trials", type=positive_int, help="finished trials to reach (counting earlier sessions)")
    parser.add_argument("--timeout", type=positive_float, help="stop starting trials after this many seconds")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default: tpe (grid: choices only)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="stop trials behind the others")
    parser.add_argument("--name", help="study name (default: the space file's or the config's name)")
    parser.add_argument("--output_dir", help="default: runs/sweeps/<name>")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<output_dir>/study.db)")
    parser.add_argument("--seed", type=seed_number, default=0, help="the sampler's seed")
    return parser


class TrialFailed(RuntimeError):
    """One trial failed (its values, or what they ran into): recorded as FAIL; the study goes on."""


@dataclass
class Outcome:
    """What a session of the study did: the finished trials (number, state, value, params, test_acc,
    wall_s, run_dir), whether Ctrl-C stopped it, and one line per trial of this session that failed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    failed: list[str] = field(default_factory=list)


@one_line_errors(interrupted="the finished trials are kept in the study; run the same command to go on")
def sweep_main(argv: list[str] | None = None) -> int:
    outcome = run_study(argv)
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0  # 1: done in part


def sweep(argv: list[str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Run (or go on with) a study; returns its finished trials and whether Ctrl-C stopped it. Raises
    ``RuntimeError`` naming the first failed trial, once the others have run. The benchmarks' seed
    runner."""
    outcome = run_study(argv)
    if outcome.failed and not outcome.interrupted:
        raise RuntimeError(outcome.failed[0])
    return outcome.results, outcome.interrupted


def run_study(argv: list[str] | None = None) -> Outcome:
    """Run (or go on with) a study: the trials of this session, then the report."""
    import optuna

    args, fit_args = build_parser().parse_known_args(argv)
    plan = make_plan(args, fit_args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = plan["output_dir"]
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        study = optuna.create_study(
            study_name=plan["name"], storage=storage, load_if_exists=True, direction="maximize",
            pruner=plan["pruner"],
        )  # fmt: skip
    except Exception as err:  # a bad URL, an unreachable server, a damaged file
        raise UsageError(f"--storage {storage}: cannot open the study ({str(err).splitlines()[0][:200]})") from None
    # Seeded anew for each session: with --seed alone, going on after Ctrl-C would draw the first
    # session's values again (the interrupted trial's among them).
    study.sampler = plan["sampler"](args.seed + len(study.trials))
    done = len(finished(study))
    todo = plan["n_trials"] - done
    print(f"Study {plan['name']} in {storage}: {done} finished trials, {max(todo, 0)} to go",
          file=sys.stderr)  # fmt: skip
    outcome = Outcome()
    if todo > 0:
        # A failed trial is our own one line (run_trial); Optuna would add its warning and traceback,
        # also for the trial Ctrl-C stopped.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study.optimize(
                lambda trial: run_trial(trial, plan, outcome.failed), n_trials=todo, timeout=args.timeout,
                catch=(TrialFailed,),
            )  # fmt: skip
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
    report(study, plan)
    if outcome.interrupted:
        print(f"Interrupted: the {len(finished(study))} finished trials are kept in {storage}; "
              "run the same command to go on", file=sys.stderr)  # fmt: skip
    elif outcome.failed:
        more = (
            f"; the same command runs more until {plan['n_trials']} have finished" if plan["n_trials"] < 10**9 else ""
        )
        print(f"{len(outcome.failed)} trials of this session failed (see the table){more}", file=sys.stderr)
    outcome.results = [
        {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params, **t.user_attrs}
        for t in finished(study)
    ]
    return outcome


def make_plan(args: argparse.Namespace, fit_args: list[str]) -> dict[str, Any]:
    """Check everything that can be checked before the first trial; one-line errors otherwise."""
    import optuna

    if (args.space is None) == (args.seeds is None):
        raise UsageError("pass --space FILE (a search) or --seeds N (repeats of one recipe), not both or neither")
    # A FIFO, a device, a YAML "billion laughs": refused before anything reads them.
    named = [x for file in args.config for x in ("--config", file)] + (["--space", args.space] if args.space else [])
    check_config_files(named)
    for file in args.config:
        if not Path(file).is_file():
            raise UsageError(f"--config {file}: no such file")
    if args.seeds is not None:
        space = {"seed_everything": optuna.distributions.CategoricalDistribution(list(range(args.seeds)))}
        name = args.name or f"{Path(args.config[-1]).stem if args.config else 'tutorial'}_seeds"
        n_trials, sampler, pruner = args.n_trials or args.seeds, "grid", "none"
    else:
        space = read_space(Path(args.space))
        name = args.name or Path(args.space).stem
        n_trials, sampler, pruner = args.n_trials, args.sampler, args.pruner
    if sampler == "grid":
        ranges = [k for k, d in space.items() if not isinstance(d, optuna.distributions.CategoricalDistribution)]
        if ranges:
            raise UsageError(f"--sampler grid needs choices for every option; {ranges} are ranges")
        n_trials = n_trials or math.prod(len(d.choices) for d in space.values())
    if n_trials is None and args.timeout is None:
        raise UsageError("say how long to search: --n_trials N, --timeout SECONDS, or both")
    base = [a for file in args.config for a in ("--config", file)] + fit_args
    check_options(space, base, f"--space {args.space}" if args.space else "--seeds")
    logger_args = tracker_args(base, name)
    samplers = {  # each takes its seed
        "grid": lambda seed: optuna.samplers.GridSampler({k: d.choices for k, d in space.items()}, seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    }
    pruners = {  # median: two full trials before judging others, and never on the first validation
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    return {
        "name": name, "space": space, "base": base, "n_trials": n_trials or 10**9, "seeds": args.seeds is not None,
        "output_dir": Path(args.output_dir or Path("runs", "sweeps", name)), "sampler": samplers[sampler],
        "pruner": pruners[pruner](), "prune": pruner != "none", "logger_args": logger_args,
    }  # fmt: skip


def tracker_args(base: list[str], name: str) -> list[str]:
    """With MLflow as the one logger, the study's trials are the runs of one MLflow experiment named
    after the study (unless the configuration names one), so its UI compares them side by side."""
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_modules.cli.fit import ClassifierCLI
    from lightning_modules.cli.tracking import kind

    class ConfigOnly(ClassifierCLI):  # parses fit.py's options, builds nothing
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    with quiet_lightning():
        logger = ConfigOnly(args=base).config.trainer.logger
    default = inspect.signature(MLFlowLogger).parameters["experiment_name"].default
    if kind(logger) == "mlflow" and logger.init_args.experiment_name == default:
        return ["--trainer.logger.init_args.experiment_name", name]
    return []


def read_space(path: Path) -> dict[str, Any]:
    """The search space as Optuna distributions, which check their own ranges."""
    import optuna

    kinds = {
        "float": optuna.distributions.FloatDistribution,
        "int": optuna.distributions.IntDistribution,
        "categorical": optuna.distributions.CategoricalDistribution,
    }
    if not path.is_file():
        raise UsageError(f"--space {path}: no such file")
    try:
        space = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"--space {path}: not readable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"--space {path}: expected a mapping of fit.py options to ranges, e.g. {EXAMPLE}")
    distributions = {}
    for key, spec in space.items():
        where = f"--space {path}, {key}"
        if not isinstance(spec, dict) or spec.get("type") not in kinds:
            raise UsageError(f"{where}: give a type, one of {', '.join(kinds)}, e.g. {EXAMPLE}")
        options = {k: v for k, v in spec.items() if k != "type"}
        check_settings(where, spec["type"], options)
        try:
            with warnings.catch_warnings():  # a step that does not divide the range: Optuna lowers high
                warnings.simplefilter("ignore", UserWarning)
                distributions[key] = kinds[spec["type"]](**options)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{where}: {str(err).replace('__init__() ', '')}") from None
    return distributions


SETTINGS = {"float": ("low", "high", "step", "log"), "int": ("low", "high", "step", "log"), "categorical": ("choices",)}


def check_settings(where: str, kind: str, options: dict[str, Any]) -> None:
    """A range's settings as Optuna needs them, each refused in one line that names it (Optuna would
    take a string ``log`` as true, cut an int step of 1.5 to 1, split a string of choices into letters)."""
    unknown = [k for k in options if k not in SETTINGS[kind]]
    if unknown:
        raise UsageError(f"{where}: {unknown[0]} is not a setting of a {kind} (use {', '.join(SETTINGS[kind])})")
    if kind == "categorical":
        choices = options.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: choices must be a list of one or more values, e.g. [128, 256]")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise UsageError(f"{where}: each of the choices must be a number, true/false, null or text")
        return

    def check_number(name: str) -> None:
        value = options.get(name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            hint = ""
            with contextlib.suppress(TypeError, ValueError):
                float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
                hint = " (quoted, or YAML read it as text: write 1.0e-3, not 1e-3)"
            raise UsageError(f"{where}: a {kind} needs a finite number {name}, not {value!r}{hint}")
        if kind == "int" and not float(value).is_integer():
            raise UsageError(f"{where}: an int needs a whole number {name}, not {value}")

    check_number("low")
    check_number("high")
    log, step = options.get("log", False), options.get("step")
    if not isinstance(log, bool):
        raise UsageError(f"{where}: log must be true or false, not {log!r}")
    if step is not None:
        check_number("step")
        if step <= 0:
            raise UsageError(f"{where}: step must be more than 0, not {step}")
        if log and not (kind == "int" and step == 1):
            raise UsageError(f"{where}: step and log: true do not go together (log spaces have no step); drop one")


# What building fit.py's configuration raises for a value it refuses (as fit() reads them).
REFUSALS = (ValueError, TypeError, OverflowError, ZeroDivisionError)


def check_options(space: dict[str, Any], base: list[str], source: str) -> None:
    """Build fit.py's configuration as a trial would, first with the first value of each range, then
    with each other choice and each range's high end in turn (~0.15 s a build), so that an unknown
    option or a value fit.py refuses anywhere in the space stops the sweep before any trial."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning_modules.cli.fit import check_config_bases

    check_config_bases(base)  # an override recipe without its base: one line naming the base
    first = {key: first_value(d) for key, d in space.items()}
    try:
        build_config(base, first)
    except UsageError as err:
        unknown = [key for key in space if "unrecognized" in str(err).lower() and f"--{key}" in str(err)]
        if unknown:
            raise UsageError(
                f"{source}: {unknown[0]} is not an option of fit.py; options are dotted paths such as "
                "model.label_smoothing, optimizer.init_args.lr, data.batch_size, trainer.max_epochs "
                "(see scripts/fit.py --print_config)"
            ) from None
        raise UsageError(f"{source}: fit.py refused the first value of a range, or its options: {err}") from None
    except REFUSALS as err:
        raise UsageError(f"{source}: fit.py refused the first value of a range: {one_line(err)[:300]}") from None
    for key, distribution in space.items():
        for value in other_values(distribution):
            try:
                build_config(base, {**first, key: value})
            except (*expected_errors(), *REFUSALS, MisconfigurationException) as err:
                what = "choice" if hasattr(distribution, "choices") else "high end"
                raise UsageError(
                    f"{source}, {key}: fit.py refuses the {what} {value!r} ({one_line(err)[:300]}); change or remove it"
                ) from None


def build_config(base: list[str], values: dict[str, Any]) -> None:
    """fit.py's configuration with these values, built as a trial builds it (without a logger), quietly."""
    from lightning_modules.cli.fit import ClassifierCLI

    sample = [a for key, value in values.items() for a in (f"--{key}", str(value))]
    with quiet_lightning():
        ClassifierCLI(args=[*base, *sample, "--trainer.logger", "false"])


@contextlib.contextmanager
def quiet_lightning():
    """Without Lightning's notes (seed set, GPU available, ...), printed again for every build, and
    without its warning that the sweep's own command line is not the one fit.py is given."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def first_value(distribution) -> Any:
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def other_values(distribution) -> list[Any]:
    """The values check_options tries after the first: the other choices, or a range's high end."""
    if hasattr(distribution, "choices"):
        return list(distribution.choices[1:])
    return [distribution.high] if distribution.high != distribution.low else []


def suggest(trial, key: str, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    d = distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def run_trial(trial, plan: dict[str, Any], failed: list[str] | None = None) -> float:
    """One fit.py run with the trial's values; its best val/acc is the objective. A failure is one line
    (appended to ``failed``) and ``TrialFailed``; Ctrl-C is KeyboardInterrupt."""
    import optuna
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from optuna_integration import PyTorchLightningPruningCallback

    from lightning_modules.callbacks import NonFiniteLossError
    from lightning_modules.cli.fit import fit

    values = {key: suggest(trial, key, d) for key, d in plan["space"].items()}
    version = f"trial_{trial.number:03d}"
    trial.set_user_attr("run_dir", str(plan["output_dir"] / "trials" / version))
    args = [
        *plan["base"],
        *[a for key, value in values.items() for a in (f"--{key}", str(value))],
        "--run_dir", str(plan["output_dir"] / "trials" / version),  # whatever the logger
        *plan["logger_args"],
    ]  # fmt: skip
    print(f"Trial {trial.number}: {values}", file=sys.stderr)
    callbacks = [PyTorchLightningPruningCallback(trial, monitor=MONITOR)] if plan["prune"] else []
    start = time.perf_counter()

    def trial_failed(reason: str) -> TrialFailed:
        line = f"trial {trial.number} failed: {reason}"
        print(line[0].upper() + line[1:], file=sys.stderr)
        trial.set_user_attr("error", reason)
        if failed is not None:
            failed.append(line)
        return TrialFailed(line)

    try:
        with warnings.catch_warnings():  # fit.py is given its own options, not the sweep's command line
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            result = fit(args, callbacks=callbacks, resume_hint=False)
    except SystemExit as exit_:
        if exit_.code == 130:  # Ctrl-C or SIGTERM: fit has said what it saved
            raise KeyboardInterrupt from None
        raise trial_failed(f"exit status {exit_.code}; see the lines above") from None
    except optuna.TrialPruned:
        trial.set_user_attr("wall_s", round(time.perf_counter() - start, 1))
        raise
    except Exception as err:  # a diverged run, memory, a value fit.py refused once started: this trial only
        if os.environ.get("TRACEBACK"):
            traceback.print_exc()
        known = isinstance(err, (*expected_errors(), NonFiniteLossError, MisconfigurationException))
        raise trial_failed(one_line(err)[:300] if known else f"{type(err).__name__}: {one_line(err)[:300]}") from None
    trial.set_user_attr("wall_s", round(time.perf_counter() - start, 1))
    if result["best_val_acc"] is None:
        raise trial_failed(f"it never validated: {MONITOR} is what the sweep maximises")
    test = (result.get("test") or {}).get("test/acc")
    if test is not None:
        trial.set_user_attr("test_acc", test)
    return float(result["best_val_acc"])


def finished(study) -> list:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def report(study, plan: dict[str, Any]) -> None:
    """The trials as a table and a chart; the best configuration as a ready --config file; mean +- sd."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.RUNNING]
    if not trials:
        return
    rows = [
        (t.number, t.state.name.lower(), pct(t.value if t.value is not None else last_reported(t)),
         pct(t.user_attrs.get("test_acc")), t.user_attrs.get("wall_s", "-"),
         ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()))
        for t in trials
    ]  # fmt: skip
    print(text_table(("trial", "state", "val/acc", "test/acc", "wall s", "values"), rows, right=(0, 2, 3, 4)))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    out = plan["output_dir"]
    with warnings.catch_warnings():  # optuna's matplotlib plots are marked experimental
        warnings.simplefilter("ignore")
        axes = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=f"{MONITOR} (0-1)")
    axes.figure.savefig(out / "trials.png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(axes.figure)
    tests = [t.user_attrs["test_acc"] for t in complete if "test_acc" in t.user_attrs]
    walls = [t.user_attrs["wall_s"] for t in complete if "wall_s" in t.user_attrs]
    print(
        f"{len(complete)} complete trials: val/acc {mean_sd([t.value for t in complete], 100)}%"
        + (f", test/acc {mean_sd(tests, 100)}%" if tests else "")
        + (f", {mean_sd(walls, digits=0)} s per trial" if walls else "")
    )
    if plan["seeds"]:
        return  # repeats of one recipe: there is no best configuration to keep
    best = study.best_trial
    written = write_best_config(best, plan, out / "best.yaml")
    print(f"Best: trial {best.number}, val/acc {pct(best.value)} ({best.params}); config: {written}; "
          f"plot: {out / 'trials.png'}")  # fmt: skip


def last_reported(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def write_best_config(best, plan: dict[str, Any], path: Path) -> Path:
    """The best trial's full config.yaml, with its own run directory replaced by runs/<name>_best (and
    its MLflow or W&B run by a new one)."""
    from lightning_modules.cli.tracking import logger_kind

    config = yaml.safe_load((Path(best.user_attrs["run_dir"]) / "config.yaml").read_text())
    trainer = config.get("trainer") or {}
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = logger.get("init_args") if isinstance(logger, dict) else None
        if not isinstance(init, dict):
            continue
        kind = logger_kind(logger.get("class_path"))
        if kind == "mlflow":
            init.update(run_name=None, run_id=None)
        elif kind == "wandb":
            init.update(save_dir="runs", name=None, id=None)
        elif kind == "file":
            init.update(save_dir="runs", name=f"{plan['name']}_best", version=None)
    if trainer.get("default_root_dir") == best.user_attrs["run_dir"]:
        trainer["default_root_dir"] = None
    config["ckpt_path"] = None
    config["run_dir"] = None
    header = (
        f"# Best of sweep {plan['name']}: trial {best.number}, val/acc {pct(best.value)}, values {best.params}.\n"
        f"#   python scripts/fit.py --config {path}\n"
    )
    text = header + yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
