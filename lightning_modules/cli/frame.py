"""What every command line shares: one-line errors with exit status 2, the device choice, CPU settings.

Exit statuses of every script: 0 done; 1 done in part (some inputs failed, said above); 2 a usage
or input error, printed as one line ``error: ...`` that says how to fix it; 130 interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


class UsageError(Exception):
    """A command-line, configuration or input mistake; the message says how to fix it."""


def expected_errors() -> tuple[type[Exception], ...]:
    """The project's own error types: each carries a one-line message that names the fix."""
    from datamodules.image_reader import ImageFileError
    from datamodules.sources import DataError
    from lightning_modules.inference.checkpoints import CheckpointError

    return (UsageError, DataError, CheckpointError, ImageFileError)


def one_line_errors(main: Callable[..., int | None] | None = None, *, also: tuple[type[Exception], ...] = ()):
    """Wrap a command's main: the project's errors (and ``also``) become ``error: ...`` on stderr and
    exit status 2. Use as ``@one_line_errors`` or ``@one_line_errors(also=(SomeError,))``."""

    def decorate(function: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(function)
        def wrapped(*args, **kwargs) -> int:
            try:
                return function(*args, **kwargs) or 0
            except (*expected_errors(), *also) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2

        return wrapped

    return decorate(main) if main is not None else decorate


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


# glibc's mallopt() options (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
REUSED_BLOCK_MAX = 32 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for the next allocation instead of
    returning each to the operating system.

    By default glibc maps every large block (activations, gradients: 1-16 MiB for fast_cpu's batches)
    fresh from the OS and unmaps it when freed, so each training step page-faults the same memory in
    again: on 2 CPU cores that was ~20% of fast_cpu's step at 32 px (81 against 66 ms, a plain loop).
    The price is that the process does not hand memory back after its peak. Returns whether the
    setting was made: not off glibc, and not where MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
    are set (glibc has then applied the user's own values).
    """
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Trimming is what returns the heap's top to the OS; the largest int keeps it, like the mmap threshold.
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, REUSED_BLOCK_MAX)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        )
    except (OSError, AttributeError):
        return False
