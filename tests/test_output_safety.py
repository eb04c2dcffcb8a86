"""Never write over what the user has (``lightning_modules/cli/outputs.py``): an output path that is
an input, a file inside a run directory the command did not create, or an existing file the user
did not name, is refused in one line (exit status 2) and the file is left as it was."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers import exit_status, make_image_folder
from PIL import Image

from lightning_modules.cli.compare import compare_main
from lightning_modules.cli.evaluate import evaluate_main
from lightning_modules.cli.export import export_main
from lightning_modules.cli.fit import fit_main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def refused(capsys, status: int, *words: str) -> str:
    """The command exited 2 with one line ``error: ...`` holding ``words``."""
    err = capsys.readouterr().err
    assert status == 2, err
    # (Lightning and LightningCLI warn on lines of their own when called in-process: the error is ours.)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], err
    return errors[0]


def fake_run(folder, epochs=(6,), max_epochs=7):
    """A training run's directory as fit.py leaves it: checkpoints/, config.yaml, report.json, report.md."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"the run's last checkpoint")
    config = {"trainer": {"max_epochs": max_epochs, "logger": {"init_args": {"name": "fast_cpu"}}}, "model": {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": e, "wall_s": 10.0 * (e + 1), "val/acc": 0.5} for e in epochs]
    report = {"config": config, "epochs": rows, "wall_time_s": 80.0, "best_val_acc": 0.5, "test": {"test/acc": 0.4}}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text("# Run report\n")
    return folder


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- export.py ----------------------------------------------------------------------------------


def test_export_never_replaces_a_file_it_was_not_told_to(checkpoint, tmp_path, capsys):
    users = tmp_path / "model.pt"  # the default name of model.ckpt's TorchScript export
    users.write_bytes(b"the user's own model.pt")
    args = ["--ckpt_path", str(checkpoint), "--format", "torchscript"]
    refused(capsys, export_main(args), str(users), "already exists", "--output")
    assert users.read_bytes() == b"the user's own model.pt"
    # Named outputs: a checkpoint or a report is not an export, an image of the check is an input.
    run = fake_run(tmp_path / "run")
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32)).save(image)
    before = snapshot(tmp_path)
    for output, words in [
        (run / "checkpoints" / "last.ckpt", ("not a .pt file",)),
        (run / "report.json", ("not a .pt file",)),
        (image, ("an input",)),
    ]:
        refused(capsys, export_main([*args, "--images", str(image), "--output", str(output)]), *words)
    assert snapshot(tmp_path) == before
    # What the user named and is an export's kind of file is replaced; so is the default name once free.
    assert export_main([*args, "--output", str(users)]) == 0 and users.read_bytes() != b"the user's own model.pt"
    users.unlink()
    assert export_main(args) == 0 and users.is_file()


# --- evaluate.py --------------------------------------------------------------------------------


def evaluate(tmp_path, *extra: str) -> int:
    data = ["--data.data_dir", str(tmp_path / "data"), "--data.cache_dir", str(tmp_path / "cache")]
    return exit_status(evaluate_main, [*data, *extra])


def test_evaluate_refuses_a_run_directory_the_data_and_foreign_files(checkpoint, tmp_path, capsys):
    make_image_folder(tmp_path / "data", {"train": 2, "test": 2})
    run = fake_run(tmp_path / "runs" / "fast_cpu" / "version_0")
    config_only = tmp_path / "starting"  # a run that has only written its config.yaml so far
    config_only.mkdir()
    shutil.copy(run / "config.yaml", config_only / "config.yaml")
    notes = tmp_path / "notes"  # any folder of the user's with a report.md of its own
    notes.mkdir()
    (notes / "report.md").write_text("my notes")
    before = snapshot(tmp_path)
    cases = [
        (run, ("training run's directory",)),
        (config_only, ("training run's directory",)),
        (notes, ("report.md that evaluate.py did not write",)),
        (tmp_path / "data" / "test" / "cat", ("inside", "data")),  # its PNG would become a test image
        (checkpoint, ("an input",)),
    ]
    for out, words in cases:
        refused(capsys, evaluate(tmp_path, "--ckpt_path", str(checkpoint), "--output_dir", str(out)), *words)
    assert snapshot(tmp_path) == before
    # Its own folder is rewritten: evaluating again into it works.
    out = tmp_path / "eval"
    for _ in range(2):
        assert evaluate(tmp_path, "--ckpt_path", str(checkpoint), "--output_dir", str(out)) == 0
    assert (out / "report.json").is_file()


def test_evaluate_default_folder_is_one_per_checkpoint(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 2, "test": 2})
    lasts = []
    for name in ("tutorial", "fast_cpu"):
        last = tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        shutil.copy(checkpoint, last)
        lasts.append(last)
        assert evaluate(tmp_path, "--ckpt_path", str(last)) == 0
    folders = sorted((tmp_path / "runs" / "evaluate").iterdir())
    assert [f.name for f in folders] == ["fast_cpu_version_0_last_test", "tutorial_version_0_last_test"]
    for folder, last in zip(folders, reversed(lasts), strict=True):
        assert json.loads((folder / "report.json").read_text())["best_checkpoint"] == str(last)
    # Two checkpoints outside runs that share a name share a default folder: the second is refused.
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        shutil.copy(checkpoint, tmp_path / where / "model.ckpt")
    assert evaluate(tmp_path, "--ckpt_path", "a/model.ckpt") == 0
    first = snapshot(tmp_path / "runs" / "evaluate" / "model_test")
    status = evaluate(tmp_path, "--ckpt_path", "b/model.ckpt")
    refused(capsys, status, "another checkpoint (a/model.ckpt)", "--output_dir")
    assert snapshot(tmp_path / "runs" / "evaluate" / "model_test") == first
    assert evaluate(tmp_path, "--ckpt_path", "a/model.ckpt") == 0  # the same checkpoint again: rewritten


# --- compare.py ---------------------------------------------------------------------------------


def test_compare_never_writes_over_a_run_or_a_foreign_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", epochs=(1, 3), max_epochs=4)
    other = fake_run(tmp_path / "other")
    Image.new("RGB", (8, 8)).save(other / "confusion_matrix.png")  # a PNG compare.py did not draw
    (tmp_path / "notes.png").write_text("not even a PNG")
    before = snapshot(tmp_path)
    cases = [
        (a / "report.json", "an input"),
        (a / "checkpoints" / "last.ckpt", "inside"),
        (a / "curves.png", "inside"),  # a new file, but inside a run that is compared
        (tmp_path / "table.txt", "the figure is a PNG"),
        (other / "confusion_matrix.png", "not a PNG compare.py drew"),
        (tmp_path / "notes.png", "not a PNG compare.py drew"),
    ]
    for output, words in cases:
        refused(capsys, compare_main([str(a), str(b), "--output", str(output)]), words)
    assert snapshot(tmp_path) == before
    # No --output: the table only, no compare.png in the current folder.
    assert compare_main([str(a), str(b)]) == 0
    assert snapshot(tmp_path) == before
    table = capsys.readouterr().out.splitlines()
    # A fast_cpu run validates only at its end (epoch 6 of 0-6): 7 epochs, not 1 row.
    assert table[1].split()[3] == "7" and table[2].split()[3] == "4", table
    # A PNG compare.py drew is redrawn when named again.
    for _ in range(2):
        assert compare_main([str(a), str(b), "--output", "curves.png"]) == 0
    assert Image.open(tmp_path / "curves.png").format == "PNG"


# --- fit.py -------------------------------------------------------------------------------------


@pytest.fixture
def one_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 6})
    recipe = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--test", "false", *QUIET,
              "--trainer.logger.init_args.version", "mine"]  # fmt: skip
    assert fit_main([*recipe, "--trainer.max_epochs", "1"]) == 0
    return recipe, tmp_path / "runs" / "tutorial" / "mine"


def test_a_fresh_run_refuses_a_run_directory_that_holds_a_run(one_run, capsys):
    recipe, run = one_run
    before = snapshot(run)
    status = fit_main([*recipe, "--trainer.max_epochs", "2"])
    refused(capsys, status, "runs/tutorial/mine", "--ckpt_path", "init_args.version")
    assert snapshot(run) == before
    # Resuming writes into it, as it should: by path, and with --ckpt_path last.
    assert fit_main([*recipe, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert fit_main([*recipe, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    assert [row["epoch"] for row in json.loads((run / "report.json").read_text())["epochs"]] == [0, 1, 2]


@pytest.mark.parametrize("filename", ["../../../../x", "sub/x", "..\\x", "{epoch}/../x", ".."])
def test_checkpoint_filename_is_a_name_not_a_path(tmp_path, monkeypatch, capsys, filename):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 2})
    status = exit_status(fit_main, ["--data.data_dir", "data", "--checkpoint.filename", filename, *QUIET])
    refused(capsys, status, "--checkpoint.filename", "--checkpoint.dirpath")
    assert not (tmp_path / "runs").exists() and not list(tmp_path.parent.glob("x*"))


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", '{"epochs": 3}', '"a string"'])
def test_compare_refuses_a_report_json_that_is_not_fit_pys(tmp_path, monkeypatch, capsys, content):
    # {"a": 1} was a row of question marks and dashes, as if it were a run.
    monkeypatch.chdir(tmp_path)
    a = fake_run(tmp_path / "a")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "report.json").write_text(content)
    refused(capsys, compare_main([str(a), "odd"]), "not a report of scripts/fit.py")
