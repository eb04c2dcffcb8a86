"""Every argparse command answers a bad command line in one line with exit status 2, as fit.py does."""

from __future__ import annotations

import pytest

from lightning_modules.cli.compare import compare_main
from lightning_modules.cli.export import export_main
from lightning_modules.cli.predict import predict_main
from lightning_modules.cli.serve import serve_main

COMMANDS = {"predict": predict_main, "export": export_main, "serve": serve_main, "compare": compare_main}
REQUIRED = {"predict": ["--ckpt_path", "m.ckpt", "x.png"], "export": ["--ckpt_path", "m.ckpt", "--format", "onnx"],
            "serve": ["--ckpt_path", "m.ckpt"], "compare": ["runs/a"]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("mistake", ["unknown option", "missing required"])
def test_bad_command_line_is_one_line_and_exit_2(name, mistake, capsys):
    args = [*REQUIRED[name], "--no_such_option", "1"] if mistake == "unknown option" else []
    with pytest.raises(SystemExit) as stopped:
        COMMANDS[name](args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {name}.py: ") and "--help" in err
    if mistake == "unknown option":
        assert "--no_such_option" in err
