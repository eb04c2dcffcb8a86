"""scripts/fit.py end to end, in a subprocess, as a user runs it; its one-line errors and --print_config in-process."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, exit_status, make_image_folder, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_modules.cli.fit import fit_main

TINY = [
    "--data.val_size", "12",
    "--data.batch_size", "16",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def scalars(run_dir: Path) -> dict[str, list]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("fit")
    make_image_folder(work / "data", {"train": 12, "test": 4})
    result = run_script("fit.py", "--data.data_dir", "data", "--trainer.max_epochs", "2", *TINY, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, result


@pytest.mark.slow
def test_fit_trains_tests_and_reports(first_run):
    work, result = first_run
    run_dir = work / "runs" / "tutorial" / "version_0"
    assert "Data (folder, 3 classes, 32x32): train 24 | val 12" in result.stderr
    # The test metrics of the best checkpoint are printed, then where that checkpoint is.
    assert "test/acc" in result.stdout and "test/precision" in result.stdout
    assert f"Best checkpoint: {Path('runs/tutorial/version_0/checkpoints')}" in result.stdout
    best = next((run_dir / "checkpoints").glob("epoch=*.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["class_names"] == ["cat", "dog", "ship"]
    assert hparams["net"]["init_args"]["num_classes"] == 3  # linked from the data, not typed twice
    assert checkpoint["state_dict"]["net.model.8.weight"].shape == (3, 64)
    tags = scalars(run_dir)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/precision", "val/recall", "val/f1",
                "val/acc_best", "test/acc", "lr-SGD"):  # fmt: skip
        assert tag in tags, f"{tag} not logged; got {sorted(tags)}"
    assert len(tags["val/acc"]) == 2  # once per epoch, not the sanity check
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_resume_from_last_continues_the_run(first_run, tmp_path):
    # In a copy: the module's run stays as test_fit_trains_tests_and_reports expects it, in any order.
    work = shutil.copytree(first_run[0], tmp_path / "work", symlinks=True)
    run_dir = work / "runs" / "tutorial" / "version_0"
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--trainer.max_epochs", "3", "--ckpt_path", "last", "--test", "false",
        *TINY, cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == before["global_step"] * 3 // 2  # one more epoch of as many steps
    assert not (work / "runs" / "tutorial" / "version_1").exists()  # logs continue in the same run
    assert len(scalars(run_dir)["val/acc"]) == 3


@pytest.mark.slow
def test_resume_without_checkpoint_starts_fresh(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 6})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "6", "--trainer.max_epochs", "1",
        "--ckpt_path", "last", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No last.ckpt under" in result.stderr and "starting a fresh run" in result.stderr
    # No test split: said, and skipped instead of failing.
    assert "No test split" in result.stderr
    assert (tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt").is_file()


# In this process (fit_main), not as scripts: a Python start costs ~10 s; the script itself runs above.


def test_missing_data_dir_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_status(fit_main, ["--data.data_dir", "nowhere", "--data.download", "false"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: data_dir nowhere does not exist")
    assert not (tmp_path / "runs").exists()


def print_config(capsys, *args: str) -> str:
    assert exit_status(fit_main, [*args, "--print_config"]) == 0
    captured = capsys.readouterr()
    assert captured.out, captured.err
    return captured.out


def test_tutorial_yaml_is_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    default = print_config(capsys)
    assert print_config(capsys, "--config", str(REPO / "configs" / "tutorial.yaml")) == default
    for expected in ("class_path: lightning_modules.nets.Tudui", "lr: 0.01", "batch_size: 64", "max_epochs: 10"):
        assert expected in default


def test_overrides_reach_the_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    printed = print_config(
        capsys, "--optimizer", "AdamW", "--optimizer.lr", "0.002", "--model.label_smoothing", "0.1",
        "--data.flip", "true", "--trainer.max_epochs", "3",
    )  # fmt: skip
    expected_lines = (
        "class_path: torch.optim.AdamW",
        "lr: 0.002",
        "label_smoothing: 0.1",
        "flip: true",
        "max_epochs: 3",
    )
    for expected in expected_lines:
        assert expected in printed


X86_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw{}\nbogomips\t: 4000\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (X86_FLAGS.format(" avx512_bf16"), True),  # AMD Zen 4, Intel Cooper Lake
        (X86_FLAGS.format(" amx_bf16 amx_tile"), True),  # Intel Sapphire Rapids
        (X86_FLAGS.format(""), False),  # AVX-512 without bfloat16 (Skylake-SP)
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3)
        ("processor\t: 0\nFeatures\t: fp asimd crc32\n", False),
        ("no flags here", None),
    ],
)
def test_cpu_bfloat16_support_is_read_from_cpuinfo(cpuinfo, native):
    from lightning_modules.cli.frame import cpu_has_native_bf16

    assert cpu_has_native_bf16(cpuinfo) is native


def test_bf16_on_a_cpu_without_bfloat16_warns_with_the_fix():
    from lightning.pytorch import Trainer

    from lightning_modules.cli.fit import warn_slow_cpu_bf16

    bf16 = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="add --trainer.precision 32-true"):
        assert warn_slow_cpu_bf16(bf16, X86_FLAGS.format(""))
    assert not warn_slow_cpu_bf16(bf16, X86_FLAGS.format(" avx512_bf16"))
    fp32 = Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    assert not warn_slow_cpu_bf16(fp32, X86_FLAGS.format(""))


# Two "training steps" that each allocate ten 16 MiB blocks with malloc (as torch's CPU allocator
# does for activations) and free them; then how much freed memory glibc's heap kept for the next step.
MALLOC_PROBE = """
import ctypes, sys
from lightning_modules.cli.frame import reuse_freed_memory
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
for step in range(2):
    blocks = [libc.malloc(16 << 20) for _ in range(10)]
    for block in blocks:
        ctypes.memset(block, 1, 16 << 20)
    for block in blocks:
        libc.free(ctypes.c_void_p(block))
print(applied, libc.mallinfo2().fordblks)
"""


def glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")) if name == "glibc" else ()


@pytest.mark.skipif(glibc_version() < (2, 33), reason="needs glibc 2.33+ (mallinfo2)")
@pytest.mark.parametrize("setting", ["on", "off"])
def test_freed_activations_stay_in_the_heap_for_the_next_step(setting):
    # A process-wide allocator setting, so each case runs in a fresh interpreter.
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, setting], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, kept = done.stdout.split()
    if setting == "on":
        assert applied == "True"
        assert int(kept) >= 160 << 20, "the step's freed memory went back to the operating system"
    else:  # glibc's default gives it back, which the probe must be able to tell apart
        assert int(kept) < 16 << 20


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    from lightning_modules.cli.frame import reuse_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert reuse_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert reuse_freed_memory() is False


@pytest.mark.parametrize(
    "native, extra, expected",
    [(False, [], "32-true"), (False, ["--bf16_fallback", "false"], "bf16-mixed"), (True, [], "bf16-mixed")],
)
def test_a_bf16_recipe_picks_32_bit_on_a_cpu_without_bfloat16(tmp_path, monkeypatch, native, extra, expected):
    from helpers import make_image_folder

    import lightning_modules.cli.fit as fit_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit_module, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    make_image_folder(tmp_path / "data", {"train": 4})
    args = ["--data.data_dir", "data", "--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed", *extra]
    cli = fit_module.ClassifierCLI(args=[*args, "--trainer.logger", "false"])
    assert str(cli.trainer.precision) == expected


def test_help_lists_the_projects_networks_not_every_torch_module(capsys):
    from lightning_modules.cli.fit import ClassifierCLI

    with pytest.raises(SystemExit) as done:
        ClassifierCLI(args=["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 900  # was 1,530, 671 of them torch.nn.Module subclasses for --model.net
    assert all(f"lightning_modules.nets.{n}" in text for n in ("Tudui", "ResNet18", "AirbenchNet"))
    assert "torch.nn.Identity" not in text and "or any class path" in text
