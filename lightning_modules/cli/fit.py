"""The command line of scripts/fit.py: LightningCLI with the project's defaults and links.

Everything here is configuration, not a training loop: LightningCLI parses ``--config`` files
and ``--model.* --data.* --trainer.* --optimizer* --lr_scheduler*`` overrides, and Lightning's
Trainer runs the loop. What this adds: the tutorial recipe as the default, values that must
agree linked from the data to the model, resuming with ``--ckpt_path last``, testing the best
checkpoint after fitting, and one-line errors instead of tracebacks for bad data or options.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules import CIFAR10DataModule
from lightning_modules.callbacks import (
    BestCheckpoint,
    LastCheckpoint,
    NonFiniteLossError,
    RandomState,
    RunReport,
    StopOnNonFiniteLoss,
)
from lightning_modules.callbacks.progress import progress_bar_class_path
from lightning_modules.callbacks.report import run_folder
from lightning_modules.callbacks.tracking import TrackerFiles
from lightning_modules.classifier import DEFAULT_OPTIMIZER, ImageClassifier
from lightning_modules.cli.frame import (
    OneLineErrors,
    UsageError,
    check_config_files,
    cpu_has_native_bf16,
    expected_errors,
    interrupt_on_signals,
    one_line,
    one_line_errors,
    quiet_writer_thread_errors,
    reuse_freed_memory,
)
from lightning_modules.cli.outputs import check_checkpoint_filename, check_fresh_run_dir, same_file
from lightning_modules.cli.tracking import (
    SaveRunConfig,
    finish_wandb_runs,
    logger_entries,
    place_run,
    restore_run_ids,
    search_root,
)
from lightning_modules.nets import NETS  # also registers the networks, so --model.net Tudui resolves
from lightning_modules.optim.muon_sgd import MuonSGD  # noqa: F401  (registered, so --optimizer MuonSGD resolves)
from lightning_modules.plugins.atomic_checkpoint_io import AtomicCheckpointIO

RUNS_DIR = "runs"
CSV_LOGGERS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger")
# The tutorial recipe. configs/tutorial.yaml spells out the same values, with reasons.
DEFAULTS = {
    "model.net": {"class_path": "lightning_modules.nets.Tudui"},
    "optimizer": DEFAULT_OPTIMIZER,
    "trainer.max_epochs": 10,
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # The HPARAMS tab gets the final metrics at the end of the run instead of a placeholder.
        "init_args": {"save_dir": RUNS_DIR, "name": "tutorial", "log_graph": True, "default_hp_metric": False},
    },
    "trainer.enable_autolog_hparams": False,
    "trainer.callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        {"class_path": "lightning_modules.callbacks.ImagesPerSecond"},
        {"class_path": "lightning_modules.callbacks.TensorBoardFigures"},
    ],
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    # The metric name holds a "/", so Lightning must not insert it into the file name itself.
    "checkpoint.filename": "epoch={epoch:02d}-val_acc={val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,
    # last.ckpt (every epoch, and on Ctrl-C, SIGTERM or a crash) is LastCheckpoint's job.
    "checkpoint.save_last": False,
    "checkpoint.save_on_exception": False,
}


class CompactErrorParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser with the frame's one-line errors."""

    meant = {
        "--model.lr": "--optimizer.lr", "--lr": "--optimizer.lr", "--model.weight_decay": "--optimizer.weight_decay",
        "--model.momentum": "--optimizer.momentum", "--epochs": "--trainer.max_epochs",
        "--max_epochs": "--trainer.max_epochs", "--batch_size": "--data.batch_size", "--data_dir": "--data.data_dir",
    }  # fmt: skip

    def hint(self, message: str) -> str:
        if "model.net" in message:
            return f" (networks: {', '.join(sorted(NETS))}; or a full class path)"
        return super().hint(message)


class ShortHelp(DefaultHelpFormatter):
    """``--help`` in a few screens: jsonargparse lists every known subclass of a type, which for
    ``--model.net`` is every ``torch.nn.Module`` in torch (671 of 1,514 lines). Lists longer than a
    few entries keep the project's networks (or the first few others), and count the rest.
    (argparse's formatter has no public hook for one action's help text; ``_expand_help`` is it.)"""

    def _expand_help(self, action) -> str:
        text = super()._expand_help(action)
        head, found, tail = text.partition("known subclasses: ")
        if not found:
            return text
        names = [n.strip() for n in tail.split(",")]
        if len(names) <= SHOWN_SUBCLASSES:
            return text
        ours = [n for n in names if n.startswith("lightning_modules.nets.")]
        shown = ours or names[:SHOWN_SUBCLASSES]
        return f"{head}{found}{', '.join(shown)}, or any class path ({len(names) - len(shown)} more known)"


SHOWN_SUBCLASSES = 8


class ClassifierCLI(LightningCLI):
    def __init__(self, args=None) -> None:
        super().__init__(
            ImageClassifier,
            CIFAR10DataModule,
            run=False,
            args=args,
            seed_everything_default=42,
            parser_class=CompactErrorParser,
            # Into the run folder whatever the logger, rewritten on resume, with the trackers' run ids.
            save_config_callback=SaveRunConfig,
            # Shortened option names are refused, not guessed: --trainer.max_epoch is not max_epochs.
            parser_kwargs={
                "description": "Train a CIFAR-10 classifier, then test its best checkpoint.",
                "allow_abbrev": False,
                "formatter_class": ShortHelp,
            },
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # The project's constructors check their arguments with ValueError, and their messages
            # name the option and the fix; jsonargparse wraps those raised by callbacks.
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise UsageError(str(cause)) from None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # Always (not in trainer.callbacks, which a config file replaces as a whole): exact resume,
        # and a diverged run stops instead of reporting NaN as a result.
        trainer.callbacks[:0] = [RandomState(), StopOnNonFiniteLoss()]
        # Last, after the report and checkpoints are written: they go to MLflow or W&B, if any.
        trainer.callbacks.append(TrackerFiles())
        if self.separate_run_dir:
            # Lightning would put checkpoints under the tracker's ids (<experiment id>/<run id>/): into
            # the run folder instead, where --ckpt_path last, evaluate.py and compare.py look.
            for callback in trainer.checkpoint_callbacks:
                if getattr(callback, "dirpath", "set") is None:
                    callback.dirpath = os.path.realpath(self.run_dir / "checkpoints")
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help='Resume from this checkpoint; "last" picks the newest run of this logger that has last.ckpt.',
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="The run's folder (config.yaml, checkpoints/, report); default: the TensorBoard or CSV logger's "
            "save_dir/name/version_N, or for MLflow and W&B alone runs/<experiment or project>/version_N.",
        )
        parser.add_argument("--test", type=bool, default=True, help="Test the best checkpoint after fitting.")
        parser.add_argument(
            "--bf16_fallback",
            type=bool,
            default=True,
            help="On a CPU without bfloat16 instructions, train a bf16 recipe in 32-true (faster there).",
        )
        # Always present (not in trainer.callbacks, which a config file replaces as a whole): testing
        # "the best checkpoint" needs the first, resuming with --ckpt_path last the second.
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(RunReport, "report")
        parser.add_optimizer_args((torch.optim.Optimizer,), link_to="model.optimizer")
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, link_to="model.lr_scheduler")
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.set_defaults(DEFAULTS)

    def before_instantiate_classes(self) -> None:
        if self.config.ckpt_path == "last":
            self.config.ckpt_path = self._resolve_last()
        trainer = self.config.trainer
        trainer.precision = resolve_cpu_precision(trainer, self.config.bf16_fallback)
        check_devices(trainer)
        check_trainer_counts(trainer)
        # Never write over what the user has: another run's directory, a checkpoint outside the run.
        check_checkpoint_filename(self.config.checkpoint.filename)
        for option in ("checkpoint", "last_checkpoint"):
            dirpath = self.config[option].dirpath
            existing = Path(dirpath or ".")
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent  # the folder it would be made in: a file there fails too
            if existing.exists() and not existing.is_dir():
                raise UsageError(
                    f"--{option}.dirpath {dirpath}: {existing} is a file, where a folder is needed; name a folder"
                )
        every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every and epochs and epochs > 0 and epochs % every:
            divisors = [d for d in range(1, epochs + 1) if epochs % d == 0]
            raise UsageError(
                f"--trainer.check_val_every_n_epoch {every} does not divide --trainer.max_epochs {epochs}, so the last "
                f"epoch would not be validated and the best checkpoint and test would miss it; use one of {divisors}"
            )
        # The run folder, and MLflow's or W&B's settings (a missing extra, an unreachable server: one line now).
        self.run_dir, self.separate_run_dir = place_run(self.config, resuming=self.config.ckpt_path is not None)
        if rank_zero_only.rank == 0:  # DDP's other processes start after rank 0 has begun writing
            check_fresh_run_dir(self.run_dir, self.config.ckpt_path)
        for logger in logger_entries(trainer.logger):
            if logger.class_path in CSV_LOGGERS:
                logger.class_path = (
                    "lightning_modules.plugins.resumable_csv_logger.ResumableCSVLogger"  # keeps rows on resume
                )
        callbacks = trainer.callbacks or []
        if trainer.logger in (False, None):
            # LearningRateMonitor refuses to run without a logger; with none there is nothing to record.
            callbacks = [c for c in callbacks if not c.class_path.endswith("LearningRateMonitor")]
            trainer.callbacks = callbacks
        if trainer.enable_progress_bar is not False and not any("Progress" in c.class_path for c in callbacks):
            # A live bar in a terminal, plain lines in logs (decided now, from where output goes).
            trainer.callbacks = [*callbacks, Namespace(class_path=progress_bar_class_path(), init_args=Namespace())]

    def _resolve_last(self) -> str | None:
        """Newest ``last.ckpt`` among this logger's runs (or in ``--run_dir``); its run folder is reused
        so logs continue there, and so are the MLflow or W&B runs it recorded."""
        logger, run_dir = self.config.trainer.logger, self.config.run_dir
        run_root = search_root(logger, run_dir)
        if run_root is None:
            raise UsageError("--ckpt_path last needs a logger or --run_dir to find the run; pass the checkpoint's path")
        pattern = f"{Path(run_dir).name}/checkpoints/last.ckpt" if run_dir else "*/checkpoints/last.ckpt"
        candidates = sorted(run_root.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not candidates:
            where = run_root / pattern.rpartition("/checkpoints")[0]
            rank_zero_info(f"No last.ckpt under {where}/checkpoints: starting a fresh run")
            return None
        last = candidates[-1]
        self.config.run_dir = str(last.parent.parent)
        restore_run_ids(logger, last.parent.parent)
        rank_zero_info(f"Resuming from {last}")
        return str(last)


def fit(args: list[str] | None = None, callbacks: Sequence[Callback] = (), resume_hint: bool = True) -> dict[str, Any]:
    """Fit, then test the best checkpoint, as the tutorial did; returns what the run measured.

    The result is what report.json holds (``best_val_acc``, ``test``, ``epochs``, ``wall_time_s``,
    ``train_seconds``, ``config``, ...) plus ``run_dir``, so callers (sweep.py, the benchmarks, tests)
    never read files or output back. ``args`` are fit.py's options; ``callbacks`` join the configured
    ones (sweep.py adds its pruning callback); ``resume_hint`` false leaves the resume command out of
    the message after Ctrl-C. Raises the project's errors (``UsageError`` for a bad option too,
    ``DataError``, ...), and ``SystemExit(130)`` when interrupted while training or testing.
    """
    check_config_bases(sys.argv[1:] if args is None else args)
    reuse_freed_memory()
    try:
        cli = ClassifierCLI(args=args)
    # A seed, a YAML loop; ImportError: an accelerator or plugin whose package is missing (tpu: torch_xla).
    except (ValueError, TypeError, OverflowError, ZeroDivisionError, RecursionError, ImportError) as err:
        if os.environ.get("TRACEBACK"):
            raise
        raise UsageError(f"the configuration was refused: {(str(err).strip().splitlines() or [''])[0][:300]}") from None
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.callbacks[:0] = callbacks  # before the checkpoint callbacks, which Lightning keeps last
    warn_slow_cpu_bf16(trainer)
    if cli.config.ckpt_path:
        check_checkpoint(cli.config.ckpt_path, model)
    quiet_writer_thread_errors()
    try:
        result = fit_and_test(cli, trainer, model, data, resume_hint)
    except BaseException:
        finish_wandb_runs(trainer, exit_code=1)
        raise
    finish_wandb_runs(trainer, exit_code=0)
    return result


def fit_and_test(cli, trainer: Trainer, model, data, resume_hint: bool) -> dict[str, Any]:
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger | CSVLogger):
                # The next free version_N, chosen now: under ddp_spawn the processes that train get a copy
                # of this logger, and this one, asked after they are gone, would pick the next one again.
                logger.version  # noqa: B018
    run_or_report_interruption(
        trainer, lambda: trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path), resume_hint
    )
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cli.config.test:
        if data.has_test_split:
            run_or_report_interruption(
                trainer, lambda: trainer.test(model, datamodule=data, ckpt_path=best or None), resume_hint
            )
        else:
            rank_zero_info(
                f"No test split in {data.hparams.data_dir}: skipping the test. Add test/<class>/ images "
                "there (or use the official CIFAR-10 files) to evaluate."
            )
    log_dir = run_folder(trainer)  # a collective call under DDP: every process must make it
    if trainer.is_global_zero:
        score = trainer.checkpoint_callback.best_model_score if best else None
        if best:  # a resumed run that had nothing left to train may know no score
            print(f"Best checkpoint: {best}" + (f" (val/acc {float(score):.4f})" if score is not None else ""))
        if log_dir:  # none under --trainer.fast_dev_run, which writes nothing
            print(f"Run directory: {log_dir}")
        for entry, logger in zip(logger_entries(cli.config.trainer.logger), trainer.loggers, strict=False):
            if isinstance(logger, MLFlowLogger):
                init = entry.init_args
                print(f"MLflow run {logger.run_id} ({init.run_name}) in experiment {init.experiment_name}, "
                      f"{init.tracking_uri}")  # fmt: skip
    run_dir = Path(log_dir or trainer.default_root_dir)
    report = next(c for c in trainer.callbacks if isinstance(c, RunReport))
    return {**report.summary(trainer, run_dir), "run_dir": str(run_dir)}


def check_config_bases(args) -> None:
    """An override recipe (its header says ``# extends: BASE``, BASE beside it) must come after
    ``--config BASE``; alone, the parser would refuse its first partial value (``Option 'widths' is
    not accepted``) without saying why, so this names the base and the command instead."""
    check_config_files(args)  # before reading them: a FIFO, a YAML "billion laughs"
    if not isinstance(args, list | tuple):  # LightningCLI also takes a dict or Namespace: nothing to check
        return
    given: list[Path] = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            value = args[i + 1]
        elif isinstance(arg, str) and arg.startswith(("--config=", "-c=")):
            value = arg.partition("=")[2]
        else:
            continue
        if not isinstance(value, str):
            continue
        path = Path(value)
        try:
            header = re.search(r"^# extends: (\S+)", path.read_text(encoding="utf-8"), re.MULTILINE)
        except (OSError, ValueError):  # not a file (a YAML string, a typo): the parser says so
            header = None
        base = path.parent / header.group(1) if header else None
        if base is not None and not any(same_file(base, earlier) for earlier in given):
            raise UsageError(
                f"{value} extends {base}: pass --config {base} --config {value} (the base first, then the override)"
            )
        given.append(path)


# Lightning's own configuration errors are one line too, and so is a diverged run.
@one_line_errors(
    also=(MisconfigurationException, NonFiniteLossError),
    interrupted="stopped outside training and testing; the checkpoints and reports written so far are complete",
)
def fit_main(args: list[str] | None = None) -> int:
    """Entry point of scripts/fit.py: ``fit`` with the frame's exit statuses. SIGTERM acts as Ctrl-C
    outside Lightning's own handling too (between training and the test, Lightning has restored the
    default, which would end the process with no message)."""
    with interrupt_on_signals():
        fit(args)
    return 0


def check_trainer_counts(trainer_config) -> None:
    """Values Lightning divides by or numpy refuses, checked before anything starts (they otherwise
    end in a ZeroDivisionError or ValueError traceback)."""
    for name in ("accumulate_grad_batches", "check_val_every_n_epoch", "num_nodes"):
        value = getattr(trainer_config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--trainer.{name} {value}: use a whole number of 1 or more")
    interval = getattr(trainer_config, "val_check_interval", None)
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise UsageError(
            f"--trainer.val_check_interval {interval}: use a fraction of an epoch in (0, 1] or a number of "
            "batches of 1 or more"
        )
    nodes = getattr(trainer_config, "num_nodes", 1) or 1
    if nodes > 1 and not any(os.environ.get(name) for name in MULTI_NODE_LAUNCHERS):
        # Started by hand, rank 0 waits forever for nodes that never come, deaf to Ctrl-C.
        raise UsageError(
            f"--trainer.num_nodes {nodes}: this process was not started by a multi-node launcher (none of "
            f"{', '.join(MULTI_NODE_LAUNCHERS)} is set); start it on every node with torchrun or SLURM "
            '(docs/reliability.md, "More than one process"), or use --trainer.num_nodes 1'
        )


def check_devices(trainer_config) -> None:
    """More processes than the machine has devices (CPU cores, GPUs) start and then hang: refuse."""
    devices = trainer_config.devices
    count = int(devices) if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()) else None
    if count is None:
        return  # "auto", -1 or a list of device indices: Lightning checks those against the machine
    accelerator = str(trainer_config.accelerator or "auto")
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    have, kind = (torch.cuda.device_count(), "GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    if count > have:
        raise UsageError(f"--trainer.devices {count}: this machine has {have} {kind}; use at most {have} (or auto)")


def resolve_cpu_precision(trainer_config, fallback: bool) -> str | None:
    """The precision to train in: a bf16 recipe on a CPU that only emulates bfloat16 (no AVX512-BF16
    or AMX) trains in 32-true instead, about 1.6x faster there, and says so in one line; anything
    else as configured. ``--bf16_fallback false`` keeps bf16 (fit.py then warns that it is slow)."""
    precision = trainer_config.precision
    accelerator = str(trainer_config.accelerator or "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if fallback and on_cpu and str(precision).startswith("bf16") and cpu_has_native_bf16() is False:
        rank_zero_info(
            f"--trainer.precision {precision}: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16), "
            "so this run trains in 32-true, which is faster here (--bf16_fallback false keeps bf16)"
        )
        return "32-true"
    return precision


def warn_slow_cpu_bf16(trainer: Trainer, cpuinfo: str | None = None) -> bool:
    """One line when a CPU run asks for bfloat16 that this CPU only emulates (slower than float32)."""
    slow = (
        trainer.strategy.root_device.type == "cpu"
        and str(trainer.precision).startswith("bf16")
        and cpu_has_native_bf16(cpuinfo) is False
    )
    if slow:
        rank_zero_warn(
            f"--trainer.precision {trainer.precision}: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16), "
            "so it trains slower than float32; add --trainer.precision 32-true"
        )
    return slow


def check_checkpoint(path: str, model: ImageClassifier) -> None:
    """Fail early, in one line, on a resume checkpoint that is missing, damaged, not a training state,
    or made with another network or optimiser than this configuration builds."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--ckpt_path {path}: no such file; pass a .ckpt from runs/*/version_*/checkpoints or 'last'")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        if "weights_only" in str(err) or "GLOBAL" in str(err):
            raise UsageError(
                f"--ckpt_path {path} is not a Lightning checkpoint of this project (a pickled model such as the "
                "tutorial's?); predict, evaluate or export it with scripts/predict.py --ckpt_path, or start fresh"
            ) from None
        reason = str(err).strip().splitlines()[0].split(". ")[0][:200] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"--ckpt_path {path} is damaged or truncated ({reason}); resume from another checkpoint of that run "
            "or start fresh without --ckpt_path"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise UsageError(
            f"--ckpt_path {path} holds weights only, not a training state to resume (a tutorial .pth?); use it with "
            "scripts/predict.py --ckpt_path, or start fresh without --ckpt_path"
        )
    saved = checkpoint.get("hyper_parameters") or {}
    if not isinstance(saved, dict):
        raise UsageError(
            f"--ckpt_path {path}: its hyper_parameters are a {type(saved).__name__}, not a mapping (damaged or not "
            "written by fit.py); resume from another checkpoint of that run or start fresh without --ckpt_path"
        )
    differs = None
    if not _same_class(saved.get("net"), model.hparams.get("net")):
        differs = ("network", _describe(saved.get("net")), _describe(model.hparams.get("net")))
    elif saved.get("optimizer") and _class_path(saved["optimizer"]) != _class_path(model.hparams.get("optimizer")):
        differs = ("optimiser", _given_path(saved["optimizer"]), _given_path(model.hparams.get("optimizer")))
    if differs:
        what, before, now = differs
        raise UsageError(
            f"--ckpt_path {path} was trained with the {what} {before}, but this run builds {now}; resume with "
            "the run's own config (runs/.../config.yaml) or start fresh without --ckpt_path"
        )
    names = saved.get("class_names")
    if isinstance(names, list) and names != list(model.class_names):
        changed = [f"{i}: {a} -> {b}" for i, (a, b) in enumerate(zip(names, model.class_names, strict=False)) if a != b]
        raise UsageError(
            f"--ckpt_path {path} was trained on the classes {names}, but --data.data_dir has {list(model.class_names)} "
            f"({'; '.join(changed) or 'a different number'}); resume with the run's own data folder, or start fresh"
        )
    keys = set(checkpoint["state_dict"])
    if keys != set(model.state_dict()):
        raise UsageError(f"--ckpt_path {path} does not fit this model's layers; resume with the run's own config")


def remove_unstarted_run(trainer: Trainer) -> None:
    """A fresh run that failed before its first step leaves no run folder (what it wrote: the config
    and an empty event file); a resumed run's folder is never touched."""
    log_dir = run_folder(trainer) if trainer.loggers else None
    if trainer.global_step > 0 or trainer.ckpt_path or not log_dir or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id:  # the tracked run it opened: deleted too
            with contextlib.suppress(Exception):
                logger.experiment.delete_run(logger.run_id)
    folder = Path(log_dir)
    written = {"config.yaml", "hparams.yaml", "metrics.csv", "wandb"}
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if all(n in written or n.startswith("events.out.tfevents.") for n in names):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # runs/<recipe>/ and runs/, if now empty
            with contextlib.suppress(OSError):
                parent.rmdir()


# Set by a launcher that starts one process per node (torchrun, SLURM, LSF, MPI) or by hand
# beside MASTER_ADDR; Lightning's cluster environments read them.
MULTI_NODE_LAUNCHERS = (
    "NODE_RANK",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
    "LSB_JOBID",
    "OMPI_COMM_WORLD_RANK",
)

# What torch and Lightning raise for a value they refuse once the run starts.
STARTING_ERRORS = (ValueError, TypeError, ZeroDivisionError, OverflowError, OSError, RuntimeError)


def tracker_errors() -> tuple[type[Exception], ...]:
    """W&B's errors when it is in use (no API key in online mode, an unknown entity): raised once the run
    starts, they are the configuration's, as ``STARTING_ERRORS`` are."""
    wandb = sys.modules.get("wandb")
    errors = getattr(wandb, "errors", None)
    return (errors.Error,) if errors is not None and isinstance(getattr(errors, "Error", None), type) else ()


def run_or_report_interruption(trainer: Trainer, run, resume_hint: bool = True) -> None:
    """Run ``trainer.fit`` or ``trainer.test``; on Ctrl-C or SIGTERM say what was saved and exit 130."""
    try:
        run()
    except expected_errors():  # the data refused at set-up (DataError): no run folder left behind
        remove_unstarted_run(trainer)
        raise
    except (*STARTING_ERRORS, *tracker_errors()) as err:
        # A value torch or Lightning refuses only once the run starts (a negative learning rate, a
        # read-only folder before the first step; a scheduler step of 0 at the end of the first epoch)
        # is the configuration, not a bug, so it ends in one line. Later, it is a traceback as usual.
        if trainer.current_epoch > 0 or os.environ.get("TRACEBACK"):
            raise
        reason = " ".join(one_line(str(err)).split())  # load_state_dict names the keys after its first line
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        when = (
            "could not start"
            if trainer.global_step == 0
            else f"failed in its first epoch, at step {trainer.global_step}"
        )
        remove_unstarted_run(trainer)
        raise UsageError(
            f"the run {when}: {type(err).__name__}: {reason} (check the options it names; "
            "TRACEBACK=1 shows where it was raised)"
        ) from None
    except (KeyboardInterrupt, SystemExit, SIGTERMException):
        # Lightning has already saved the state (LastCheckpoint saves on exceptions), called the
        # callbacks' on_exception (the report is written with what finished) and, for Ctrl-C, turned
        # the KeyboardInterrupt into SystemExit(1); SIGTERM arrives as SIGTERMException (exit code 0).
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        report_interruption(trainer, resume_hint)


def report_interruption(trainer: Trainer, resume_hint: bool = True) -> NoReturn:
    last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
    saved = last.best_model_path if last is not None and last.best_model_path else None
    if trainer.is_global_zero:
        command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv] if a)
        if trainer.state.fn == "test":
            what = "Interrupted while testing; training had finished and its checkpoints are complete"
            then = "Test again with"
        elif last is not None and last.kept_previous:
            what = (
                f"Interrupted while validating epoch {trainer.current_epoch}; {saved or 'no checkpoint'} holds the "
                "epoch before, so resuming trains and validates this epoch again"
            )
            then = "Resume with"
        else:
            where = f"saved {saved}" if saved else "nothing new to save"
            what = f"Interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: {where}"
            then = "Resume with"
        hint = f". {then}: {command} --ckpt_path last" if resume_hint else ""
        print(what + hint, file=sys.stderr)
    sys.exit(130)


def _class_path(spec) -> str | None:
    """The class's own path, so a class named by a moved module's old path (or a package's re-export)
    compares equal to the same class named today."""
    path = spec.get("class_path") if isinstance(spec, dict) else None
    if not isinstance(path, str):
        return None
    module, _, name = path.rpartition(".")
    if not module.startswith(("torch.", "lightning_modules.")):  # never import what a file names elsewhere
        return path
    try:
        cls = getattr(importlib.import_module(module), name)
        return f"{cls.__module__}.{cls.__qualname__}"
    except (ImportError, AttributeError, ValueError):  # not a class (a module, a function's attribute)
        return path


def _same_class(saved, built) -> bool:
    """The same class (by its own path: ``nets.tudui.Tudui`` is ``nets.Tudui``) with the same arguments."""
    return _class_path(saved) == _class_path(built) and _init_args(saved) == _init_args(built)


def _init_args(spec) -> dict | None:
    """A class spec's arguments: {} when it has none, None when they are not a mapping (a damaged file)."""
    args = spec.get("init_args") if isinstance(spec, dict) else None
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else None


def _given_path(spec) -> str:
    """The class path as the configuration spelled it (any value, never an error)."""
    return str(spec.get("class_path")) if isinstance(spec, dict) else repr(spec)


def _describe(spec) -> str:
    if not isinstance(spec, dict):
        return repr(spec)
    name, init_args = str(spec.get("class_path", "?")).rsplit(".", 1)[-1], _init_args(spec)
    if init_args is None:
        return f"{name}(init_args {spec.get('init_args')!r:.80})"
    args = ", ".join(f"{k}={v}" for k, v in sorted(init_args.items(), key=lambda kv: str(kv[0])))
    return f"{name}({args})"
