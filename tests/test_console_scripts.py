"""Installing the package gives the commands cifar10-fit, cifar10-evaluate, ... : the same mains
scripts/*.py call, callable with no arguments (they read sys.argv), named in the README.

The installed entry points are read from the package's metadata: after editing
``[project.scripts]``, ``pip install -e . --no-deps`` refreshes it (the tests do not install).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("fit", "evaluate", "predict", "export", "serve", "compare", "sweep")


def main_of(script: str) -> str:
    """``module:function`` of the main that scripts/<script>.py imports and calls."""
    tree = ast.parse((REPO / "scripts" / f"{script}.py").read_text(encoding="utf-8"))
    (found,) = [
        f"{node.module}:{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_modules.cli.")
        for alias in node.names
        if alias.name.endswith("_main")
    ]
    return found


EXPECTED = {f"cifar10-{script}": main_of(script) for script in SCRIPTS}


def test_pyproject_declares_a_command_per_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert declared == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_installed_command_is_the_scripts_main(name):
    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("cifar10-")}
    assert name in installed, f"{name} is not installed; run pip install -e . --no-deps"
    entry = installed[name]
    assert entry.value == EXPECTED[name]
    main = entry.load()
    module, _, function = EXPECTED[name].partition(":")
    assert callable(main) and main is getattr(importlib.import_module(module), function)
    # The console-script wrapper calls main() with no arguments: the arguments come from sys.argv.
    assert all(p.default is not p.empty for p in inspect.signature(main).parameters.values())


def test_the_readme_names_the_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in EXPECTED)


def test_a_command_runs_from_the_path():
    executable = shutil.which("cifar10-predict")
    if executable is None:
        pytest.skip("cifar10-predict is not on PATH (pip install -e . puts it there)")
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--ckpt_path" in result.stdout and "--top_k" in result.stdout


def test_a_main_reads_sys_argv_when_called_without_arguments(monkeypatch, capsys):
    from lightning_modules.cli.predict import predict_main

    monkeypatch.setattr(sys, "argv", ["cifar10-predict", "--top_k", "0", "--ckpt_path", "x.ckpt"])
    assert predict_main() == 2
    assert "--top_k" in capsys.readouterr().err
