"""What every command line shares: one-line errors with exit status 2, the device choice, CPU settings.

Exit statuses of every script: 0 done; 1 done in part (some inputs failed, said above); 2 a usage
or input error, printed as one line ``error: ...`` that says how to fix it; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import difflib
import functools
import math
import os
import platform
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


class UsageError(Exception):
    """A command-line, configuration or input mistake; the message says how to fix it."""


# Where str.splitlines() breaks a line; a file name in a message may hold any of them.
LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def single_line(text: object) -> str:
    """A message as exactly one line: line breaks inside it (a file name's, say) shown escaped."""
    return str(text).translate(LINE_BREAKS)


def one_line(message: str) -> str:
    """A parser's message in one line: its first line, then the others joined by "; "."""
    parts = [line.strip(" -") for line in str(message).splitlines() if line.strip(" -")]
    return " ".join(parts[:1]) + (" " + "; ".join(parts[1:]) if parts[1:] else "")


class OneLineErrors:
    """The frame's error form for any argparse or jsonargparse parser (a mixin): a bad command line
    raises ``UsageError``, which the command's ``one_line_errors`` prints as one line ``error: ...``
    with exit status 2, instead of the usage block, which lists every option and buries the one
    mistake. In-process callers (tests, sweep.py checking fit.py's options) get the error itself."""

    # Options users reach for that are spelled otherwise here: named in the error instead.
    meant: dict[str, str] = {}

    def hint(self, message: str) -> str:
        """What to add to a message: the real option closest to an unknown one."""
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        for word in unknown.group(1).split() if unknown else ():
            option = word.split("=", 1)[0]
            if not option.startswith("--"):
                continue
            close = difflib.get_close_matches(option, list(self._option_string_actions), n=1, cutoff=0.75)
            guess = self.meant.get(option) or (close[0] if close else None)
            if guess:
                return f"; did you mean {guess}?"
        return ""

    def parse_args(self, *args, **kwargs):
        try:
            return super().parse_args(*args, **kwargs)
        except UnicodeDecodeError as err:  # jsonargparse reading a binary file given as a config
            self.error(f"a file given as a config is not text ({err.reason} at byte {err.start}); give a YAML file")

    def error(self, message: str, ex: Exception | None = None):
        text = one_line(message)
        raise UsageError(f"{self.prog}: {text}{self.hint(text)} (see {self.prog} --help)")


class OneLineArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """argparse with the frame's one-line errors: the parser of predict, export, serve, compare and
    sweep (fit and evaluate use jsonargparse's, with the same errors). Shortened option names are
    refused, not guessed (``--top 3`` is not ``--top_k 3``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})


def _number(convert: Callable[[str], float], accept: Callable[[float], bool], name: str, says: str):
    """An argparse type that refuses, while parsing and in one line, anything but ``says``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {says}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {says}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = f"An argument type: {says}."
    return parse


positive_int = _number(int, lambda v: v >= 1, "positive_int", "a positive integer (1 or more)")
port_number = _number(int, lambda v: 0 <= v <= 65535, "port_number", "a port number (0 to 65535; 0: any free one)")
# numpy's and Optuna's samplers take seeds below 2**32; seed_everything as well.
seed_number = _number(int, lambda v: 0 <= v < 2**32, "seed_number", "a seed from 0 to 4294967295")
MAX_SEEDS = 10_000  # runs of one recipe: far more than any mean +- sd needs, and a list that fits in memory
seed_count = _number(int, lambda v: 1 <= v <= MAX_SEEDS, "seed_count", f"a number of seeds from 1 to {MAX_SEEDS:,}")
positive_float = _number(float, lambda v: 0 < v < math.inf, "positive_float", "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "non_negative_float", "a number >= 0")


def file_name(text: str) -> str:
    """An argparse type for an output file: refused when it names a folder (``out/``: ``Path`` drops the
    slash, and the command would write a file called ``out``; an existing folder: found only after
    the work is done) or nothing."""
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", "..") or os.path.isdir(text):
        example = os.path.join(text, "NAME") if text else "NAME"
        what = "names a folder, not a file" if text else "is empty"
        raise argparse.ArgumentTypeError(f"{text!r} {what}; give a file name, e.g. {example}")
    return text


MAX_CONFIG_BYTES = 1 << 20  # a recipe is a few KB
MAX_CONFIG_VALUES = 100_000  # a recipe holds about a hundred; YAML aliases can multiply them past any memory
CONFIG_OPTIONS = ("--config", "-c")  # LightningCLI's config file option and its short name
NOT_CONFIGS = ("ckpt_path",)  # options whose file the command reads itself, never the parser


def check_config_files(args) -> None:
    """Files a jsonargparse command line names that the parser would read, checked first: a FIFO or a
    device would be read forever; a YAML file whose aliases expand to a billion values ("billion
    laughs") would fill the memory. Any option's value may be such a file (``--config``, ``-c``,
    ``--data``, ``--model.net``: jsonargparse reads a file given for a group or a class), and so may a
    string inside one (``data: other.yaml``); paths that do not exist are the parser's to judge."""
    if not isinstance(args, list | tuple):  # LightningCLI also takes a dict or Namespace
        return
    for i, arg in enumerate(args):
        if not isinstance(arg, str) or not arg.startswith("-"):
            continue
        option, equals, value = arg.partition("=")
        if not equals:
            value = args[i + 1] if i + 1 < len(args) else None
        if isinstance(value, str) and not option.endswith(NOT_CONFIGS):
            _check_config_file(option, value, config=option in CONFIG_OPTIONS)


def _check_config_file(option: str, value: str, config: bool, depth: int = 0) -> None:
    """``value``, if it names a file: a regular one, and if it holds YAML, one of a bounded size once
    its aliases are expanded; the strings in it that name files, likewise (4 levels deep)."""
    import stat

    try:
        info = os.stat(value)
    except (OSError, ValueError):  # not a path (a YAML string, a number, a typo)
        return
    if stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{option} {value} is not a regular file (a FIFO or a device); give a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        if config or Path(value).suffix.lower() in (".yaml", ".yml", ".json"):
            raise UsageError(
                f"{option} {value} is {info.st_size:,} bytes; a config is a few KB (at most {MAX_CONFIG_BYTES:,}): "
                "is it the right file?"
            )
        return  # not a config: the parser will say so
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError):
        return  # the parser names the line (or the file)
    stack, count, named = [data], 0, set()
    while stack:  # values counted as the parser would see them, aliases expanded; stops at the limit
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise UsageError(
                f"{option} {value} expands to over {MAX_CONFIG_VALUES:,} values (YAML aliases of aliases?); "
                "write the values out"
            )
        if isinstance(item, dict):
            stack.extend(v for k, v in item.items() if not str(k).endswith(NOT_CONFIGS))
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and item not in named and depth < 4:
            named.add(item)  # a file named inside: as written, and beside this file (jsonargparse's rule)
            for candidate in {item, os.path.join(os.path.dirname(value), item)}:
                _check_config_file(f"{option} {value}: {item!r}", candidate, config=False, depth=depth + 1)


def config_parser(**kwargs):
    """A jsonargparse parser with the frame's one-line errors, for commands that also take a class's
    arguments (evaluate.py: the DataModule's). jsonargparse is imported here, not by predict and the
    other argparse commands, which start faster without it."""
    from jsonargparse import ArgumentParser

    class OneLineConfigParser(OneLineErrors, ArgumentParser):
        pass

    return OneLineConfigParser(**{"allow_abbrev": False, **kwargs})


# predict.py and serve.py also run an exported model under ONNX Runtime.
CKPT_OR_ONNX = "a .ckpt from scripts/fit.py, a tutorial .pth file, or an .onnx from scripts/export.py"


def add_model_options(parser, *, ckpt_help: str = "a .ckpt from scripts/fit.py, or a tutorial .pth file") -> None:
    """The options every command that uses a trained model shares, declared once, with types that
    refuse bad values while parsing: ``--ckpt_path``, ``--tta`` and ``--trainer.accelerator`` (read as
    ``accelerator``). Works on the frame's argparse parser and on jsonargparse's."""
    from lightning_modules.inference.model import TTA_MODES

    parser.add_argument("--ckpt_path", required=True, help=ckpt_help)
    parser.add_argument(
        "--tta", choices=TTA_MODES, default=None, help="test-time augmentation (default: the checkpoint's own)"
    )
    parser.add_argument(
        "--trainer.accelerator",
        dest="accelerator",
        default="auto",
        choices=ACCELERATORS,
        help="device, as in fit.py: auto picks cuda, then mps, then cpu",
    )


def expected_errors() -> tuple[type[Exception], ...]:
    """The project's own error types: each carries a one-line message that names the fix."""
    from datamodules.image_reader import ImageFileError
    from datamodules.sources import DataError
    from lightning_modules.inference.checkpoints import CheckpointError

    return (UsageError, DataError, CheckpointError, ImageFileError)


INTERRUPTED = 130


def one_line_errors(
    main: Callable[..., int | None] | None = None,
    *,
    also: tuple[type[Exception], ...] = (),
    interrupted: str = "stopped before finishing",
):
    """Wrap a command's main: the project's errors (and ``also``) become ``error: ...`` on stderr and
    exit status 2; Ctrl-C (KeyboardInterrupt, and SIGTERM inside ``interrupt_on_signals``) becomes
    ``interrupted: <interrupted>`` and exit status 130, never a traceback. Use as ``@one_line_errors``
    or ``@one_line_errors(also=(SomeError,), interrupted="what is left")``."""

    def decorate(function: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(function)
        def wrapped(*args, **kwargs) -> int:
            try:
                return function(*args, **kwargs) or 0
            except (*expected_errors(), *also) as err:
                print(f"error: {single_line(err)}", file=sys.stderr)
                return 2
            except OSError as err:  # a path the user gave: a file where a folder should be, no space, no access
                where = f"{err.filename}: " if err.filename else ""
                reason = err.strerror or (str(err).splitlines() or [type(err).__name__])[0][:200]
                if isinstance(err, FileExistsError) and err.filename and not os.path.isdir(err.filename):
                    reason = "a file is there, where a folder is needed"  # mkdir's "File exists"
                print(
                    f"error: {single_line(where + reason)}; check the path (a writable folder with space)",
                    file=sys.stderr,
                )
                return 2
            except KeyboardInterrupt:
                print(f"interrupted: {interrupted}", file=sys.stderr)
                return INTERRUPTED

        return wrapped

    return decorate(main) if main is not None else decorate


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[list[int]]:
    """Within the block SIGTERM (kill, docker stop, a scheduler) interrupts this process as Ctrl-C
    does: KeyboardInterrupt, so ``finally`` blocks clean up and ``one_line_errors`` ends the command
    with exit status 130 in one line. Yields the signals received, for a library that catches
    KeyboardInterrupt itself and returns. A process forked inside the
    block inherits the handler; there a signal ends it at once and quietly, as by default. A signal
    the process ignores (SIGINT in a background job) or that someone else handles is left alone;
    outside the main thread nothing changes. The previous handlers are back after the block."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    owner = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child (a DataLoader worker): end as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        raise KeyboardInterrupt

    ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {s: signal.getsignal(s) for s in ours}
    for signum, default in ours.items():
        if previous[signum] is default:
            signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM inside ``interrupt_on_signals``) wait for the end of the block, then act:
    for imports of native extensions, which crash the process (SIGSEGV, nothing cleaned up) when a
    KeyboardInterrupt is raised inside their initialisation (onnx's did, 1 in ~15 Ctrl-Cs of export)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    replaced = {s: h for s, h in previous.items() if callable(h)}
    for signum in replaced:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        for signum in held[:1]:
            replaced[signum](signum, None)  # KeyboardInterrupt, now that no import is half done


def pick_device(accelerator: str) -> torch.device:
    """``--trainer.accelerator`` as Lightning reads it: auto picks cuda, then mps, then cpu."""
    if accelerator not in ACCELERATORS:
        raise UsageError(f"--trainer.accelerator {accelerator}: use one of {', '.join(ACCELERATORS)}")
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise UsageError(f"--trainer.accelerator {accelerator}: no CUDA GPU here; use cpu or auto")
        return torch.device("cuda")
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--trainer.accelerator mps: MPS is not available here; use cpu or auto")
        return torch.device("mps")
    if accelerator == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
    return torch.device("cpu")


# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic (x86: AVX512-BF16 or AMX; Arm: BF16).
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes in bfloat16 natively (then ``bf16-mixed`` trains faster than float32,
    1.6x for fast_cpu's network on an AMD EPYC); None where it cannot tell (not Linux)."""
    if cpuinfo is None:
        if platform.system() != "Linux":
            return None
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(BF16_CPU_FLAGS & set(value.split()))
    return None


# glibc's mallopt() options (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from the heap. glibc accepts at most 32 MiB on some versions, 64 MiB on
# others; fast_cpu's largest activations are 16 MiB in bf16 and exactly 32 MiB in float32.
HEAP_BLOCK_LIMITS = (64 << 20, 32 << 20)


# Threads that write a logger's files for the main thread, which re-raises their error on its next
# write or flush: TensorBoard's event writer.
WRITER_THREAD_MODULES = ("tensorboard.", "torch.utils.tensorboard.")


def quiet_writer_thread_errors() -> None:
    """From now on in this process, an OSError (a full disk) in a logger's writer thread prints
    nothing: the main thread gets the same error on its next write or flush and the command says it
    in one line, where Python would also print the thread's traceback (even after the command's
    error, from the final flush). For the rest of the process: that flush comes as it ends."""
    previous = threading.excepthook
    if getattr(previous, "quiet_writers", False):
        return

    def hook(args) -> None:
        writer = type(args.thread).__module__.startswith(WRITER_THREAD_MODULES) if args.thread else False
        if not (writer and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.quiet_writers = True
    threading.excepthook = hook


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees, for the next step.

    By default glibc hands memory back to the operating system as soon as a step frees its
    activations and gradients (the heap is trimmed once its free top passes a threshold, and large
    blocks are mapped one by one), so the next step page-faults the same memory in again. On 2 CPU
    cores that was ~18% of fast_cpu's step at 32 px (69-74 against 83-90 ms, a plain loop). The
    price: each process keeps its peak memory until it exits. Returns whether the setting was made:
    not off glibc, and not where the user set glibc's own malloc options (MALLOC_*_ variables or
    glibc.malloc tunables), which then apply instead.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # Never trim: the largest int glibc takes. Then serve blocks below the limit from the heap.
        if not libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1):
            return False
        return any(libc.mallopt(_M_MMAP_THRESHOLD, limit) for limit in HEAP_BLOCK_LIMITS)
    except (OSError, AttributeError):
        return False
