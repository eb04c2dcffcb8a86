"""The run folder, whatever the loggers, and fit.py's MLflow and Weights & Biases set-up.

A run's folder (``runs/<name>/version_N``: config.yaml, checkpoints/, report.json) is what
``--ckpt_path last``, evaluate.py and compare.py read. TensorBoard and CSV loggers name it
(``save_dir/name/version``); MLflow and W&B keep their runs elsewhere (a database, a server), so
for them fit.py names it: ``--run_dir``, or ``<save_dir>/<experiment_name or project>/<run name or
version_N>``. ``place_run`` decides it before anything is built, fills in the trackers' defaults
(MLflow: a SQLite store beside the runs, ``sqlite:///<save_dir>/mlflow.db``; W&B: its files
inside the run folder) and refuses, in one line, what would fail only once training started: a
missing extra, a tracking server that does not answer, a store that cannot be written.
``SaveRunConfig`` writes config.yaml into that folder with the trackers' run ids (so a resume
goes on in the same tracked run) and gives the configuration to the trackers as parameters.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from lightning_modules.callbacks.report import run_folder
from lightning_modules.cli.frame import UsageError

FILE_LOGGERS = ("TensorBoardLogger", "CSVLogger", "ResumableCSVLogger")
TRACKERS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}
INSTALL = "pip install -e '.[track]'"
SERVER_TIMEOUT_S = 5.0


def kind(entry) -> str | None:
    """``file`` (TensorBoard, CSV), ``mlflow``, ``wandb``, or None for another logger (a class_path +
    init_args namespace)."""
    return logger_kind(getattr(entry, "class_path", ""))


def logger_kind(class_path: Any) -> str | None:
    """``kind`` of a logger's class path, as a namespace or a saved config.yaml holds it."""
    name = str(class_path or "").rpartition(".")[2]
    return "file" if name in FILE_LOGGERS else TRACKERS.get(name)


def logger_entries(logger_config) -> list:
    """The configured loggers (class_path + init_args namespaces), in order; [] for none."""
    entries = logger_config if isinstance(logger_config, list) else [logger_config]
    return [e for e in entries if getattr(e, "class_path", None)]


def next_version(root: Path) -> str:
    """``version_N`` after the highest one under ``root``, as TensorBoard picks its own."""
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    taken = [int(m.group(1)) for name in names if (m := re.fullmatch(r"version_(\d+)", name))]
    return f"version_{max(taken, default=-1) + 1}"


def tracker_root(entry) -> tuple[Path, str]:
    """Where a tracker-only run's folder goes: its save_dir (``runs``) and its name there."""
    init = entry.init_args
    if kind(entry) == "mlflow":
        return Path(init.save_dir or "runs"), str(init.experiment_name or "lightning_logs")
    return Path(getattr(init, "save_dir", None) or getattr(init, "dir", None) or "runs"), str(
        getattr(init, "project", None) or "lightning_logs"
    )


def search_root(logger_config, run_dir: str | None) -> Path | None:
    """Where ``--ckpt_path last`` looks for ``*/checkpoints/last.ckpt``."""
    if run_dir:
        return Path(run_dir).parent
    entries = logger_entries(logger_config)
    files = [e for e in entries if kind(e) == "file"]
    if files:
        init = files[0].init_args
        return Path(init.save_dir) / (init.name or "") if getattr(init, "save_dir", None) else None
    trackers = [e for e in entries if kind(e)]
    if trackers:
        root, name = tracker_root(trackers[0])
        return root / name
    return None


def restore_run_ids(logger_config, folder: Path) -> None:
    """A resumed run goes on in the tracked runs its folder recorded (config.yaml: run_id, id)."""
    from lightning_modules.cli.outputs import read_config

    saved = read_config(folder / "config.yaml") or {}
    recorded = (saved.get("trainer") or {}).get("logger")
    recorded = recorded if isinstance(recorded, list) else [recorded]
    for entry in logger_entries(logger_config):
        for old in recorded:
            if not isinstance(old, dict) or logger_kind(old.get("class_path")) != kind(entry):
                continue
            old_init = old.get("init_args") or {}
            if kind(entry) == "mlflow" and old_init.get("run_id"):
                entry.init_args.run_id = old_init["run_id"]
            elif kind(entry) == "wandb" and old_init.get("id"):
                entry.init_args.id = old_init["id"]


def place_run(config, resuming: bool) -> tuple[Path | None, bool]:
    """Decide the run folder and complete the loggers' settings (see the module docstring).

    Returns the run folder (None where a TensorBoard or CSV logger picks its next version itself,
    or there is no logger) and whether fit.py must point the checkpoints there itself (the first
    logger keeps no folder: MLflow, W&B)."""
    trainer = config.trainer
    entries = logger_entries(trainer.logger)
    for entry in entries:
        module = kind(entry)  # a tracker's kind is its module's name
        if module in TRACKERS.values() and importlib.util.find_spec(module) is None:
            raise UsageError(f"--trainer.logger {entry.class_path.rpartition('.')[2]} needs {module}: {INSTALL}")
    files = [e for e in entries if kind(e) == "file"]
    if isinstance(trainer.logger, list) and files and kind(trainer.logger[0]) != "file":
        # The first logger names the run folder in Lightning (log_dir, checkpoints): the one with a folder.
        trainer.logger = files + [e for e in trainer.logger if e not in files]
    run_dir = Path(config.run_dir) if config.run_dir else None
    if run_dir is not None:
        for entry in files:
            entry.init_args.save_dir = str(run_dir.parent.parent)
            entry.init_args.name = run_dir.parent.name
            entry.init_args.version = run_dir.name
    elif files:
        from lightning_modules.cli.outputs import logger_run_dir

        run_dir = logger_run_dir(files[0])
    trackers = [e for e in entries if kind(e) in ("mlflow", "wandb")]
    if run_dir is None and trackers and not files:
        root, name = tracker_root(trackers[0])
        # W&B's name is a label (the recipe's name carries over from TensorBoard's): not a folder.
        named = trackers[0].init_args.run_name if kind(trackers[0]) == "mlflow" else None
        run_dir = root / name / (named or next_version(root / name))
    for entry in trackers:
        init = entry.init_args
        if kind(entry) == "mlflow":
            if not resuming:
                init.run_id = None  # a fresh run is a new tracked run, also from a copied config.yaml
            if init.run_name is None and run_dir is not None:
                init.run_name = run_dir.name
            store = Path(init.save_dir or "runs").absolute()
            if not init.tracking_uri:
                init.tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
                if init.artifact_location is None:  # else MLflow puts them in ./mlruns of wherever fit.py runs
                    init.artifact_location = str(store / "mlartifacts")
            check_tracking_uri(init.tracking_uri)
        else:
            if not resuming:
                init.id = None
            if run_dir is not None:
                init.save_dir = str(run_dir)  # wandb/ goes inside the run folder
            if getattr(init, "name", None) is None and run_dir is not None:
                init.name = run_dir.name
    separate = bool(trackers) and not files and run_dir is not None
    if separate:
        trainer.default_root_dir = str(run_dir)
    return run_dir, separate


def check_tracking_uri(uri: str) -> None:
    """An MLflow tracking URI that will work once training starts: a server that answers, a local
    store whose folder can be written. Other schemes (databricks, postgresql, ...) are MLflow's to check."""
    option = f"--trainer.logger.tracking_uri {uri}"
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            # /health is the tracking server's own probe; any HTTP answer (401, 404) means one listens.
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise UsageError(
                f"{option}: no tracking server answers there ({reason}); start it (mlflow server --host HOST "
                "--port PORT), correct the address, or leave tracking_uri out for the local store runs/mlflow.db"
            ) from None
        return
    if scheme == "sqlite":
        path = uri.partition("sqlite:///")[2]
        if not path or path == ":memory:":
            return
        check_writable(Path(path), option)
    elif scheme in ("", "file"):
        check_writable(Path(urlparse(uri).path if scheme == "file" else uri) / "mlruns.probe", option)


def check_writable(target: Path, option: str) -> None:
    """``target`` (a file, or where one goes) can be created or written: probed, nothing left behind."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if target.is_file():
            with open(target, "r+b"):
                pass
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(
            f"{option}: the tracking store cannot be written ({err.strerror or err} in {folder}); choose a "
            "writable place, or leave tracking_uri out for the local store runs/mlflow.db"
        ) from None


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"c": 2}]}`` -> ``{"a/b": 1, "l/0/c": 2}``: the names Lightning's loggers
    give hyper-parameters (a list of plain values stays one value)."""
    if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
        values = {str(i): v for i, v in enumerate(values)}
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, written into the run folder (Lightning writes it to
    ``trainer.log_dir``, which an MLflow run does not have) with the trackers' run ids, so that
    ``--ckpt_path last`` goes on in the same tracked run; and the configuration as the trackers'
    parameters (MLflow: ``trainer/max_epochs``, ...; a resumed run keeps the values it started with)."""

    def __init__(self, parser, config, config_filename: str = "config.yaml", **kwargs) -> None:
        super().__init__(parser, config, config_filename, overwrite=True, save_to_log_dir=False)
        self.folder: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        self.folder = run_folder(trainer)  # collective under DDP; save_config runs on rank 0 only
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        entries = logger_entries(self.config.trainer.logger)
        pairs = list(zip(entries, trainer.loggers, strict=False))
        for entry, logger in pairs:
            if isinstance(logger, MLFlowLogger):
                entry.init_args.run_id = logger.run_id
            elif isinstance(logger, WandbLogger):
                entry.init_args.id = logger.version
        if self.folder is not None:
            os.makedirs(self.folder, exist_ok=True)
            self.parser.save(
                self.config, os.path.join(self.folder, self.config_filename), skip_none=False, overwrite=True
            )
        import yaml

        values = yaml.safe_load(self.parser.dump(self.config, skip_none=False, format="yaml"))
        params = flatten(values)
        for _, logger in pairs:
            if isinstance(logger, MLFlowLogger):
                client, run_id = logger.experiment, logger.run_id
                # MLflow refuses to change a parameter: a resumed run keeps its first values.
                known = client.get_run(run_id).data.params
                fresh = {k: v for k, v in params.items() if k not in known}
                if fresh:
                    logger.log_hyperparams(fresh)
                if self.folder is not None:
                    client.set_tag(run_id, "run_dir", str(Path(self.folder).absolute()))
            elif isinstance(logger, WandbLogger):
                logger.log_hyperparams(values)


def finish_wandb_runs(trainer, exit_code: int) -> None:
    """End this process's W&B runs, as the end of the process would: Lightning leaves them open, so the
    next fit in the same process (a sweep's next trial) would log into the same W&B run."""
    if trainer.is_global_zero and any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish(exit_code=exit_code)  # the active run, if one was started; else nothing
