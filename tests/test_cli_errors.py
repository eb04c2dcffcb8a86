"""Every command answers a bad command line in one line of stderr with exit status 2 (the frame's form)."""

from __future__ import annotations

import pytest

from lightning_modules.cli.compare import compare_main
from lightning_modules.cli.evaluate import evaluate_main
from lightning_modules.cli.export import export_main
from lightning_modules.cli.fit import fit_main
from lightning_modules.cli.predict import predict_main
from lightning_modules.cli.serve import serve_main
from lightning_modules.cli.sweep import sweep_main

COMMANDS = {
    "fit": fit_main, "evaluate": evaluate_main, "predict": predict_main, "export": export_main,
    "serve": serve_main, "compare": compare_main, "sweep": sweep_main,
}  # fmt: skip
# A valid command line of each (nothing runs: a mistake is added to it, or something left out).
VALID = {
    "fit": ["--trainer.max_epochs", "1"],
    "evaluate": ["--ckpt_path", "m.ckpt"],
    "predict": ["--ckpt_path", "m.ckpt", "x.png"],
    "export": ["--ckpt_path", "m.ckpt", "--format", "onnx"],
    "serve": ["--ckpt_path", "m.ckpt"],
    "compare": ["runs/a"],
    "sweep": ["--seeds", "2"],
}
# What each command refuses, and a word its one line must say.
MISSING = {  # a required option or argument left out
    "fit": (["--config"], "expected one argument"),
    "evaluate": ([], "ckpt_path"),
    "predict": ([], "--ckpt_path"),
    "export": (["--ckpt_path", "m.ckpt"], "--format"),
    "serve": ([], "--ckpt_path"),
    "compare": ([], "RUN_DIR"),
    "sweep": ([], "--space FILE"),
}
BAD_VALUE = {
    "fit": (["--trainer.max_epochs", "many"], "max_epochs"),
    "evaluate": (["--ckpt_path", "m.ckpt", "--split", "holdout"], "holdout"),
    "predict": (["--ckpt_path", "m.ckpt", "x.png", "--top_k", "0"], "not a positive integer"),
    "export": (["--ckpt_path", "m.ckpt", "--format", "pdf"], "pdf"),
    "serve": (["--ckpt_path", "m.ckpt", "--port", "70000"], "not a port number"),
    "compare": (["runs/a", "--output"], "expected one argument"),
    "sweep": (["--seeds", "0"], "not a number of seeds from 1 to"),
}
SHARED_BAD = {  # the model options the frame declares once, refused alike everywhere
    "--tta": "sideways",
    "--trainer.accelerator": "tpu",
}


def one_line_exit_2(main, args, capsys) -> str:
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_option(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_exit_2(COMMANDS[name], [*VALID[name], "--no_such_option", "1"], capsys)
    assert "no_such_option" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_required(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, says = MISSING[name]
    assert says in one_line_exit_2(COMMANDS[name], args, capsys)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_value(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, says = BAD_VALUE[name]
    assert says in one_line_exit_2(COMMANDS[name], args, capsys)


@pytest.mark.parametrize("name", ["evaluate", "predict", "export", "serve"])
@pytest.mark.parametrize("option", sorted(SHARED_BAD))
def test_shared_model_options_refuse_bad_values_while_parsing(name, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # m.ckpt does not exist: the value is refused before any file is read
    err = one_line_exit_2(COMMANDS[name], [*VALID[name], option, SHARED_BAD[option]], capsys)
    assert SHARED_BAD[option] in err and "choose from" in err


@pytest.mark.parametrize(
    "name, args, meant",
    [
        ("fit", ["--trainer.max_epoch", "3"], "--trainer.max_epochs"),  # shortened: refused, not guessed
        ("fit", ["--model.lr", "0.05"], "--optimizer.lr"),  # was "ambiguous option" naming two wrong ones
        ("fit", ["--model.label_smothing", "0.1"], "--model.label_smoothing"),
        ("predict", ["--ckpt_path", "m.ckpt", "--top", "3", "x.png"], "--top_k"),
        ("evaluate", ["--ckpt_path", "m.ckpt", "--splt", "val"], "--split"),
    ],
)
def test_unknown_or_shortened_options_name_the_closest_real_one(name, args, meant, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert f"did you mean {meant}?" in one_line_exit_2(COMMANDS[name], args, capsys)


@pytest.mark.parametrize(
    "name, args, says",
    [
        ("fit", ["--trainer.accelerator", "cpu", "--trainer.devices", "64"], "--trainer.devices 64: this machine has"),
        ("serve", ["--ckpt_path", "m.ckpt", "--workers", "4096"], "--workers 4096: this machine has"),
    ],
)
def test_more_processes_than_the_machine_has_are_refused(name, args, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # before any data or checkpoint is read: neither exists here
    assert says in one_line_exit_2(COMMANDS[name], args, capsys)


@pytest.mark.parametrize("name", ["predict", "export", "compare"])
@pytest.mark.parametrize("output", ["out/", "", ".", "out/..", "existing_folder"])
def test_an_output_that_names_a_folder_is_refused_while_parsing(name, output, capsys, tmp_path, monkeypatch):
    # Path("out/") is Path("out"): the command would write a file called "out" where a folder was meant.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_folder").mkdir()
    err = one_line_exit_2(COMMANDS[name], [*VALID[name], "--output", output], capsys)
    assert "give a file name" in err
    assert [p.name for p in tmp_path.iterdir()] == ["existing_folder"]


def test_sweep_names_the_base_of_an_override_recipe(capsys, monkeypatch):
    from helpers import REPO

    monkeypatch.chdir(REPO)
    err = one_line_exit_2(sweep_main, ["--seeds", "2", "--config", "configs/fast_cpu_long.yaml"], capsys)
    assert "extends configs/fast_cpu.yaml" in err


@pytest.mark.parametrize(
    "name, args",
    [
        ("compare", ["run", "--output", "afile/c.png"]),
        ("evaluate", ["--ckpt_path", "model.ckpt", "--data.data_dir", "data", "--output_dir", "afile/eval"]),
        ("export", ["--ckpt_path", "model.ckpt", "--format", "onnx", "--output", "afile/m.onnx"]),
    ],
)
def test_an_output_under_a_file_is_one_line(name, args, capsys, tmp_path, monkeypatch):
    # A file where the output's folder should be (as with a read-only or full disk): the OS refuses;
    # the command says so in one line instead of a traceback.
    import json

    from helpers import make_image_folder, save_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    save_checkpoint(tmp_path / "model.ckpt")
    make_image_folder(tmp_path / "data", {"train": 2, "test": 2})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps({"epochs": [], "config": {}}))
    err = one_line_exit_2(COMMANDS[name], args, capsys)
    assert "afile" in err and "check the path" in err
