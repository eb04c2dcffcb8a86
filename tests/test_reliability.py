"""Never lose a run: signals, resume, atomic checkpoint files, determinism, DDP, bad configuration."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, exit_status, make_image_folder, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import atomic_files
from lightning_modules.cli.fit import fit_main
from lightning_modules.plugins.atomic_checkpoint_io import AtomicCheckpointIO

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
LOOKAHEAD = "lightning_modules.callbacks.Lookahead"


def val_scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    # By step: a resumed run's two event files are read in name order, and two starts within the same
    # second are named by process id, so file order is not run order.
    return {
        tag: [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("val/")
    }


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# --- atomic checkpoint files ----------------------------------------------------------------


def test_atomic_save_keeps_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"].item() == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no partial or temporary file


def test_temporary_file_is_beside_the_checkpoint_not_in_tmpdir(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(atomic_files.os, "replace", lambda src, dst: (renames.append(src), real_replace(src, dst)))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    path = tmp_path / "ckpt" / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": 1}, path)
    (src,) = renames
    assert Path(src).parent == path.parent and torch.load(path, weights_only=True) == {"x": 1}


# --- bad configuration and data: one line, exit status 2, no traceback ----------------------


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", {"train": 6})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["fit.py"])  # LightningCLI warns when pytest's own arguments are there
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.batch_sise", "3"], "unrecognized arguments: --data.batch_sise"),
        (["--data.batch_size", "abc"], 'Parser key "data.batch_size"'),
        (["--data.batch_size", "0"], "--data.batch_size must be a whole number from 1 to"),
        (["--data.val_size", "500"], "val_size must be between 1 and 17"),
        (["--model.net", "ResNet999"], "(networks: AirbenchNet, ResNet18, Tudui"),
        (["--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
        (["--ckpt_path", "half.ckpt"], "--ckpt_path half.ckpt is damaged or truncated"),
        (["--trainer.check_val_every_n_epoch", "2"], "does not divide --trainer.max_epochs 1"),
        (["--data.progressive_sizes", "[16, 40]"], "each size must be from 2 to --data.image_size (32)"),
        (["--model.bias_lr_scale", "-1"], "--model.bias_lr_scale must be >= 0"),
        ([f"--trainer.callbacks+={LOOKAHEAD}", "--trainer.callbacks.every", "0"], "Lookahead every=0"),
        (
            # max_time: were the check missing, the test would fail instead of training forever
            [f"--trainer.callbacks+={LOOKAHEAD}", "--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:00:30"]
            + ["--data.val_size", "6", "--test", "false"],
            "Lookahead needs the run's length",
        ),
    ],
)
def test_bad_configuration_is_one_line(tiny, capsys, args, message):
    (tiny / "half.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    assert exit_status(fit_main, ["--data.data_dir", "data", "--trainer.max_epochs", "1", *QUIET, *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_corrupted_image_is_named_or_skipped(tiny, capsys, caplog):
    bad = tiny / "data" / "train" / "dog" / "zz-broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    base = ["--data.data_dir", "data", "--data.val_size", "3", "--trainer.max_epochs", "1", *QUIET]
    assert exit_status(fit_main, base) == 2
    assert str(Path("data") / "train" / "dog" / "zz-broken.png") in capsys.readouterr().err.strip().splitlines()[-1]
    caplog.set_level(logging.INFO)
    fit_main([*base, "--data.skip_bad_images", "true", "--test", "false"])
    err = caplog.text  # Lightning's messages go through logging
    assert err.count("skipped 1 unreadable image(s)") == 1 and "train 15 | val 3" in err  # once, not per load


def test_trainer_saves_through_atomic_io(tiny):
    from lightning_modules.cli.fit import ClassifierCLI

    cli = ClassifierCLI(args=["--data.data_dir", "data", *QUIET])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(tiny):
    # "epoch" monitored with mode min: only epoch 0 is ever the best. Lightning 2.6 alone would leave
    # last.ckpt at epoch 0, and --ckpt_path last would retrain epochs 1 and 2.
    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--test", "false"]
    fit_main([*args, "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min", *QUIET])
    folder = tiny / "runs" / "tutorial" / "version_0" / "checkpoints"
    assert [p.name.split("-")[0] for p in folder.glob("epoch=*.ckpt")] == ["epoch=00"]
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # 12 images in batches of 6: 2 steps per epoch


@pytest.mark.parametrize("mode, best_epoch", [("min", 0), ("max", 2)])
def test_best_ckpt_is_always_the_best_epochs_checkpoint(tiny, mode, best_epoch):
    # "epoch" monitored: with min the best stays epoch 0, with max it moves every epoch. README's
    # predict, evaluate and export examples name best.ckpt, so it must exist and follow the best.
    from lightning_modules.cli.predict import predict_main

    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--test", "false"]
    fit_main([*args, "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch", "--checkpoint.mode", mode, *QUIET])
    folder = tiny / "runs" / "tutorial" / "version_0" / "checkpoints"
    (best_file,) = folder.glob("epoch=*.ckpt")
    assert best_file.name.startswith(f"epoch={best_epoch:02d}")
    assert (folder / "best.ckpt").read_bytes() == best_file.read_bytes()
    assert torch.load(folder / "best.ckpt", weights_only=True)["epoch"] == best_epoch
    assert not list(folder.glob(".*.tmp"))
    assert predict_main(["--ckpt_path", str(folder / "best.ckpt"), str(tiny / "data" / "train" / "cat")]) == 0


def test_last_checkpoint_follows_epochs_without_validation(tiny):
    # Validation only every 2nd epoch: Lightning alone saves nothing after epoch 0, so a crash in
    # epoch 1 would lose epoch 0 too.
    from lightning.pytorch.callbacks import Callback

    from lightning_modules.cli.fit import ClassifierCLI

    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", *QUIET]
    cli = ClassifierCLI(args=[*args, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2"])
    seen = []

    class LastCheckpointSpy(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            seen.append(torch.load(last, weights_only=True)["epoch"] if last.exists() else None)

    cli.trainer.callbacks.append(LastCheckpointSpy())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen == [None, 0]
    assert torch.load(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=True)["epoch"] == 1


def test_runs_without_a_logger(tiny, capsys):
    args = ["--data.data_dir", "data", "--data.val_size", "6", "--trainer.max_epochs", "1", "--test", "false", *QUIET]
    fit_main([*args, "--trainer.logger", "false"])
    assert "Run directory" in capsys.readouterr().out


# --- determinism and exact resume ------------------------------------------------------------

RECIPE = [
    "--data.data_dir", "data", "--data.val_size", "10", "--data.batch_size", "8",
    # Shuffling and augmentation draw random numbers, so an exact resume must restore the RNG; momentum
    # and a schedule, so it must restore the optimiser's buffers and the scheduler's position too.
    "--data.crop_padding", "2", "--data.flip", "true",
    "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5",
    "--test", "false", *QUIET,
]  # fmt: skip


@pytest.mark.parametrize(
    "optimizer",
    [
        ["--optimizer.momentum", "0.9"],
        # Both parts of the hybrid keep momentum buffers; the filters' go through Newton-Schulz.
        ["--optimizer", "MuonSGD", "--optimizer.lr", "0.01", "--optimizer.muon_lr", "0.05"],
    ],
    ids=["SGD", "MuonSGD"],
)
def test_same_seed_same_run_and_exact_resume(tmp_path, monkeypatch, optimizer):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 10})
    recipe = [*RECIPE, *optimizer]
    runs = {}
    for name in ("a", "b"):  # two identical uninterrupted runs of 2 epochs
        assert fit_main([*recipe, "--trainer.max_epochs", "2", "--trainer.logger.name", name]) == 0
        runs[name] = tmp_path / "runs" / name / "version_0"
    # The same run stopped after epoch 1 and resumed for epoch 2.
    for extra in (["--trainer.max_epochs", "1"], ["--trainer.max_epochs", "2", "--ckpt_path", "last"]):
        assert fit_main([*recipe, *extra, "--trainer.logger.name", "c"]) == 0
    runs["c"] = tmp_path / "runs" / "c" / "version_0"

    final = {name: torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for name, run in runs.items()}
    for name in ("b", "c"):
        for key, tensor in final["a"]["state_dict"].items():
            assert torch.equal(tensor, final[name]["state_dict"][key]), f"run {name} differs from run a in {key}"
        momentum = final[name]["optimizer_states"][0]["state"]
        for index, state in final["a"]["optimizer_states"][0]["state"].items():
            assert torch.equal(state["momentum_buffer"], momentum[index]["momentum_buffer"])
        assert final[name]["lr_schedulers"] == final["a"]["lr_schedulers"]
    metrics = {name: val_scalars(run) for name, run in runs.items()}
    assert metrics["a"]["val/acc"] == metrics["b"]["val/acc"] == metrics["c"]["val/acc"]
    assert metrics["a"]["val/loss"] == metrics["c"]["val/loss"]
    assert len(metrics["c"]["val/acc"]) == 2
    # The report of the resumed run covers the whole run, not only the epochs after the resume.
    assert [row["epoch"] for row in json.loads((runs["c"] / "report.json").read_text())["epochs"]] == [0, 1]


# --- signals ---------------------------------------------------------------------------------


def default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM as a foreground process has them, even when the tests run
    from a background shell (where SIGINT is ignored, and the child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def long_run(tmp_path):
    """Starts fit.py for 100,000 epochs in tmp_path; whatever happens in the test, it is killed after."""
    started: list[subprocess.Popen] = []

    def start(*extra: str) -> tuple[subprocess.Popen, Path]:
        make_image_folder(tmp_path / "data", {"train": 30})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
        cmd = [
            sys.executable, str(REPO / "scripts" / "fit.py"), "--data.data_dir", "data", "--data.val_size", "10",
            "--data.batch_size", "4", "--trainer.max_epochs", "100000", "--test", "false", *QUIET, *extra,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=default_signals,
        )  # fmt: skip
        started.append(proc)
        return proc, tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints"

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_says_how_to_resume_and_exits_non_zero(tmp_path, long_run, sig, monkeypatch):
    # No validation, so the signal always lands in training (an interrupted validation keeps the
    # epoch before: test_interrupted_in_the_last_validation_the_resume_validates_it).
    proc, checkpoints = long_run("--trainer.limit_val_batches", "0")
    wait_for(checkpoints / "last.ckpt", proc)
    time.sleep(1.0)  # mid-epoch, some steps after the last epoch-end checkpoint
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("Interrupted at epoch"))
    assert "saved " in line and "last.ckpt" in line and line.endswith("--ckpt_path last")
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    step = saved["global_step"]
    # The checkpoint holds the step the message names: nothing after it is lost, nothing is stale.
    assert step > 0 and f", step {step}:" in line
    # Resuming continues from that step (in-process: the signal half needed a real process, this does not).
    monkeypatch.chdir(tmp_path)
    args = [
        "--data.data_dir", "data", "--data.val_size", "10", "--data.batch_size", "4", "--test", "false",
        "--trainer.max_epochs", "100000", "--trainer.limit_val_batches", "0", "--trainer.max_steps", str(step + 3),
        "--ckpt_path", "last", *QUIET,
    ]  # fmt: skip
    assert exit_status(fit_main, args) == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == step + 3


def test_sigterm_during_the_final_test_exits_130_with_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # Lightning adds its handler to the one there; this one keeps a stray signal from ending pytest.
    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    try:
        make_image_folder(tmp_path / "data", {"train": 6, "test": 2})
        args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.eval_batch_size", "2",
                "--trainer.max_epochs", "1", *QUIET, "--trainer.callbacks+=helpers.SigtermDuringTest"]  # fmt: skip
        assert exit_status(fit_main, args) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "Interrupted while testing" in capsys.readouterr().err
    report = json.loads((tmp_path / "runs" / "tutorial" / "version_0" / "report.json").read_text())
    assert [row["epoch"] for row in report["epochs"]] == [0] and report["best_checkpoint"]


def test_interrupted_in_the_last_validation_the_resume_validates_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 6})
    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.eval_batch_size", "2", "--test", "false",
            "--trainer.max_epochs", "2", "--trainer.num_sanity_val_steps", "0", *QUIET]  # fmt: skip
    assert exit_status(fit_main, [*args, "--trainer.callbacks+=helpers.InterruptValidationOfEpoch1"]) == 130
    assert "Interrupted while validating epoch 1" in capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tutorial" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert fit_main([*args, "--ckpt_path", "last"]) == 0
    assert len(val_scalars(run_dir)["val/acc"]) == 2  # epoch 1 was validated after all
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_file(tmp_path):
    # Killed at a known point: the writer has written half of the new checkpoint. A writer that
    # overwrote the file in place would leave that half behind as last.ckpt.
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"step": torch.tensor(1)}, path)
    ready, told = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes, says so in the middle, and waits to be killed
        try:
            os.close(ready)

            def half_then_wait(obj, f):
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                os.write(told, b"x")
                time.sleep(60)

            torch.save = half_then_wait
            checkpoint_io.save_checkpoint({"step": torch.tensor(2)}, path)
        finally:
            os._exit(1)
    os.close(told)
    try:
        assert os.read(ready, 1) == b"x"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready)
    assert torch.load(path, weights_only=True)["step"].item() == 1  # the previous checkpoint, complete
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]


# --- DDP -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_metrics_equal_a_single_process_evaluation(tmp_path):
    import lightning as L

    from datamodules import CIFAR10DataModule
    from lightning_modules import ImageClassifier

    make_image_folder(tmp_path / "data", {"train": 10, "test": 5})  # 30 / 15 images: odd splits
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "13", "--data.batch_size", "4",
        "--trainer.max_epochs", "2", "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu", *QUIET, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tutorial" / "version_0"
    ddp_val = val_scalars(run_dir)
    best = next((run_dir / "checkpoints").glob("epoch=*.ckpt"))
    epoch = int(best.name.split("=")[1].split("-")[0])

    data = CIFAR10DataModule(data_dir=str(tmp_path / "data"), val_size=13, batch_size=4, cache_dir=str(tmp_path / "c"))
    model = ImageClassifier.load_from_checkpoint(best, weights_only=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(model, datamodule=data)
    assert single["val/acc"] == pytest.approx(ddp_val["val/acc"][epoch], abs=1e-6)
    assert single["val/loss"] == pytest.approx(ddp_val["val/loss"][epoch], abs=1e-6)
    (single_test,) = trainer.test(model, datamodule=data)
    ddp_test = json.loads((run_dir / "report.json").read_text())["test"]["test/acc"]
    assert single_test["test/acc"] == pytest.approx(ddp_test, abs=1e-6)
    assert 15 * single_test["test/acc"] == pytest.approx(round(15 * single_test["test/acc"]))  # k/15: no padding


def test_ddp_spawn_names_the_run_folder_its_processes_wrote(tmp_path):
    # The processes that train are copies; the parent's logger, asked afterwards, picked version_1.
    make_image_folder(tmp_path / "data", {"train": 4})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "4",
        "--trainer.max_epochs", "1", "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu", "--test", "false", *QUIET, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs" / "tutorial").iterdir()] == ["version_0"]
    assert f"Run directory: {Path('runs') / 'tutorial' / 'version_0'}\n" in result.stdout, result.stdout[-500:]


def test_a_run_saved_under_the_old_module_paths_resumes(tmp_path, monkeypatch):
    # MuonSGD, WarmupDecay and the CSV logger moved to optim/ and plugins/; runs made before name the
    # old modules in their checkpoint's hyper-parameters and in config.yaml.
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 10})
    recipe = [
        *RECIPE[: RECIPE.index("--lr_scheduler")], "--test", "false", *QUIET,
        "--optimizer", "MuonSGD", "--optimizer.lr", "0.01", "--lr_scheduler", "lightning_modules.optim.WarmupDecay",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "runs", "--trainer.logger.name", "old",
    ]  # fmt: skip
    assert fit_main([*recipe, "--trainer.max_epochs", "1"]) == 0
    run = tmp_path / "runs" / "old" / "version_0"
    old_paths = {
        "lightning_modules.optim.muon_sgd.MuonSGD": "lightning_modules.muon_sgd.MuonSGD",
        "lightning_modules.optim.MuonSGD": "lightning_modules.muon_sgd.MuonSGD",
        "lightning_modules.optim.schedules.WarmupDecay": "lightning_modules.schedules.WarmupDecay",
        "lightning_modules.optim.WarmupDecay": "lightning_modules.schedules.WarmupDecay",
        "lightning_modules.plugins.resumable_csv_logger.": "lightning_modules.resumable_csv_logger.",
    }
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    for key in ("optimizer", "lr_scheduler"):
        for new, old in old_paths.items():
            hparams[key]["class_path"] = hparams[key]["class_path"].replace(new, old)
    assert hparams["optimizer"]["class_path"] == "lightning_modules.muon_sgd.MuonSGD"
    assert hparams["lr_scheduler"]["class_path"] == "lightning_modules.schedules.WarmupDecay"
    torch.save(checkpoint, last)
    config = (run / "config.yaml").read_text()
    for new, old in old_paths.items():
        config = config.replace(new, old)
    assert "lightning_modules.resumable_csv_logger.ResumableCSVLogger" in config
    (run / "config.yaml").write_text(config)

    assert fit_main(["--config", str(run / "config.yaml"), "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) >= 3  # header, epoch 0 kept, epoch 1


def test_resuming_a_finished_run_under_a_new_name_ends_cleanly(tiny, capsys):
    # Nothing is left to train: Lightning restores the best path but no score; the summary must cope.
    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--test", "false", *QUIET]
    assert fit_main([*args, "--trainer.max_epochs", "1"]) == 0
    last = tiny / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    resumed = [*args, "--trainer.max_epochs", "1", "--ckpt_path", str(last), "--trainer.logger.init_args.name", "b"]
    assert fit_main(resumed) == 0
    assert "Best checkpoint: " in capsys.readouterr().out


def test_sigterm_between_training_and_the_test_exits_130_with_the_report_written(tiny, monkeypatch, capsys):
    # Lightning restores the default SIGTERM handling when fit returns; a signal before the test
    # starts would end the process with status 143 and no word.
    from datamodules import CIFAR10DataModule

    def signalled(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
        return True

    monkeypatch.setattr(CIFAR10DataModule, "has_test_split", property(signalled))
    args = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--trainer.max_epochs", "1"]
    assert exit_status(fit_main, [*args, *QUIET]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted: stopped outside training")
    assert (tiny / "runs" / "tutorial" / "version_0" / "report.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handed back
