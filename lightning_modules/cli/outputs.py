"""Never write over what the user has: the one rule for the files and folders commands write.

An output path that is one of the command's inputs, lies inside a folder the command reads (a run
directory compare.py is given, the data folder evaluate.py scores), or already exists when the
user did not name it (a default or derived name), is refused in one line (``UsageError``, exit
status 2) before anything is read or written. An existing output the user named is replaced only
when it is what this command writes (``ours``): a PNG compare.py drew, a file of export's format,
evaluate's own report folder; anything else (a run's report.json, a checkpoint, a training run's
directory) is refused. ``check_output`` is that rule; the commands pass their inputs and ``ours``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from lightning_modules.cli.frame import UsageError

# What a file says it is, where a command marks its own output (a PNG text chunk).
WRITTEN_BY_KEY = "Written-by"
# config.yaml files larger than this are not read back to tell whose they are (no run's is).
MAX_CONFIG_BYTES = 1 << 20


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or the same file through links."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies anywhere below it (links resolved)."""
    inner, outer = Path(path).resolve(), Path(folder).resolve()
    return inner == outer or outer in inner.parents


def read_config(path: Path) -> dict | None:
    """A config.yaml's top level as a dict, or None where it is missing, too large or not such a file."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def is_run_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a training run's directory (fit.py's): it holds checkpoints/, or the
    config.yaml LightningCLI writes when a run starts (it has a ``trainer`` section)."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():
        return True
    config = read_config(folder / "config.yaml")
    return config is not None and "trainer" in config


def check_output(
    path: str | os.PathLike,
    *,
    option: str,
    named: bool,
    inputs: Iterable[str | os.PathLike] = (),
    read_dirs: Iterable[str | os.PathLike] = (),
    ours: Callable[[Path], bool] | None = None,
    what: str = "file",
) -> None:
    """The rule of the module docstring for one output; raises ``UsageError`` naming the fix.

    Args:
        path: where the command is about to write.
        option: the option that chooses it (``--output``), named in the message as the fix.
        named: the user gave ``path`` (else it is a default or derived name, which must not exist).
        inputs: files the command reads: the output may be none of them.
        read_dirs: folders the command reads (run directories, a data folder): nothing is written inside.
        ours: for an existing named output, whether it is what this command writes (then it is replaced).
        what: what ``ours`` accepts, for the message ("PNG compare.py wrote").
    """
    path = Path(path)
    for source in inputs:
        if same_file(path, source):
            raise UsageError(f"{option} {path} is {source}, an input of this command; write to another {option}")
    for folder in read_dirs:
        if is_inside(path, folder):
            raise UsageError(
                f"{option} {path} is inside {folder}, which this command reads; write to an {option} outside it"
            )
    if not (path.exists() or path.is_symlink()):
        return
    if not named:
        raise UsageError(
            f"{path} already exists and was not named by you; pass {option} to choose where to write "
            "(or move the file away)"
        )
    if ours is None or not ours(path):
        raise UsageError(
            f"{option} {path} already exists and is not a {what}; choose another {option} (nothing is written over "
            "files a command did not write)"
        )


def png_written_by(path: Path, command: str) -> bool:
    """Whether ``path`` is a PNG that ``command`` wrote (it marks its PNGs with ``png_metadata``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=("PNG",)) as im:
            return im.text.get(WRITTEN_BY_KEY) == command
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def png_metadata(command: str) -> dict[str, str]:
    """matplotlib's ``savefig(metadata=...)`` for a PNG that ``png_written_by`` recognises."""
    return {WRITTEN_BY_KEY: command}


# --- fit.py: a fresh run never writes into another run's directory ---------------------------


def logger_run_dir(logger) -> Path | None:
    """The run directory a TensorBoard or CSV logger's configuration names explicitly
    (``save_dir/name/version``, as Lightning's checkpoints and logs use it), or None where the
    version is left to the logger (it then picks the next free ``version_N``)."""
    init = getattr(logger, "init_args", None)
    version = getattr(init, "version", None)
    save_dir = getattr(init, "save_dir", None)
    if version is None or save_dir is None:
        return None
    name = getattr(init, "name", None) or ""
    return Path(save_dir) / str(name) / (version if isinstance(version, str) else f"version_{version}")


def check_fresh_run_dir(run_dir: str | os.PathLike | None, ckpt_path: str | None) -> None:
    """A fresh run (no ``--ckpt_path``) refuses, in one line, a run directory that is not empty: its
    checkpoints, config and reports would be replaced or mixed with the new run's (Lightning only
    warns). Resuming (``--ckpt_path``, ``last`` included) writes into its own run, as it should.
    ``run_dir`` is the folder fit.py decided (None: the logger picks its next free version)."""
    run_dir = Path(run_dir) if run_dir is not None else None
    if ckpt_path is not None or run_dir is None or not run_dir.is_dir():
        return
    with os.scandir(run_dir) as entries:
        held = sorted(entry.name for entry in entries)
    if not held:
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = f"resume it with --ckpt_path {last}" if last.is_file() else "resume a run with --ckpt_path last"
    raise UsageError(
        f"run directory {run_dir} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
        f"{resume}, or start a fresh one with another --trainer.logger.init_args.version (null: the next free one) "
        "or --run_dir"
    )


def check_checkpoint_filename(filename: str | None) -> None:
    """``--checkpoint.filename`` names a file in the run's checkpoints/ folder: path separators and
    ".." outside the ``{metric}`` fields (``{val/acc:.4f}`` is a metric's name) are refused in one line."""
    import re

    literal = re.sub(r"\{[^{}]*\}", "", filename or "")
    if "/" in literal or "\\" in literal or ".." in literal:
        raise UsageError(
            f"--checkpoint.filename {filename}: a file name, not a path (no '/', '\\' or '..'); "
            "choose the folder with --checkpoint.dirpath"
        )
