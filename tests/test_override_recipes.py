"""Every recipe in configs/ works alone: an override file (``# extends: BASE`` in its header) given
without its base is refused in one line that names the base and the command, before any parsing.

The commands here end in ``--print_config``: LightningCLI prints the resolved configuration while
parsing and exits 0, so a recipe is known to parse without building a model or a Trainer.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from lightning_modules.cli.fit import check_config_bases, fit_main
from lightning_modules.cli.frame import UsageError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def base_of(recipe: str) -> str | None:
    found = re.search(r"^# extends: (\S+)", (REPO / "configs" / recipe).read_text(), re.MULTILINE)
    return found.group(1) if found else None


OVERRIDES = [r for r in RECIPES if base_of(r)]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """As under scripts/fit.py, where the arguments come from nowhere else (not pytest's own)."""
    monkeypatch.setattr(sys, "argv", ["fit.py"])


def print_config(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        code = fit_main([*args, "--print_config"])
        raise SystemExit(code)  # an error returns its status instead of printing the config
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_there_are_override_recipes():
    assert "fast_cpu_long.yaml" in OVERRIDES and base_of("fast_cpu_long.yaml") == "fast_cpu.yaml"


@pytest.mark.parametrize("recipe", OVERRIDES)
def test_an_override_alone_names_its_base_in_one_line(recipe, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = print_config(["--config", f"configs/{recipe}"], capsys)
    base = f"configs/{base_of(recipe)}"
    assert code == 2 and out == ""
    assert err == (
        f"error: configs/{recipe} extends {base}: pass --config {base} --config configs/{recipe} "
        "(the base first, then the override)\n"
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_parses_as_its_header_says(recipe, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    base = base_of(recipe)
    args = (["--config", f"configs/{base}"] if base else []) + ["--config", f"configs/{recipe}"]
    code, out, err = print_config(args, capsys)
    assert code == 0, err
    assert "class_path: lightning_modules.nets." in out


def test_the_override_after_its_base_keeps_the_override_values(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = print_config(["--config", "configs/fast_cpu.yaml", "--config=configs/fast_cpu_long.yaml"], capsys)
    assert code == 0
    assert re.search(r"widths:\s*- 48\s*- 96\s*- 192", out) and "max_epochs: 10" in out


def test_the_command_line_itself_is_checked(capsys, monkeypatch):
    """``scripts/fit.py`` and ``cifar10-fit`` call ``fit_main()`` with no arguments: sys.argv is read."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["cifar10-fit", "--config", "configs/fast_cpu_long.yaml"])
    assert fit_main() == 2
    assert "extends configs/fast_cpu.yaml" in capsys.readouterr().err


def test_the_base_is_found_from_anywhere(tmp_path, monkeypatch):
    """Paths are compared as files: an absolute base, or the base by another relative path, counts."""
    monkeypatch.chdir(tmp_path)
    base, override = REPO / "configs" / "fast_cpu.yaml", REPO / "configs" / "fast_cpu_long.yaml"
    check_config_bases(["--config", str(base), "--config", str(override)])
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    check_config_bases(["--config", os.path.relpath(base), "--config", str(override)])
    with pytest.raises(UsageError, match=f"extends {re.escape(str(base))}: pass --config {re.escape(str(base))}"):
        check_config_bases(["--config", str(override), "--config", str(base)])  # the base must come first
    # Not files (a YAML string, a missing file) and non-list arguments are left to the parser.
    check_config_bases(["--config", "{trainer: {max_epochs: 1}}", "--config", "missing.yaml"])
    check_config_bases({"trainer": {"max_epochs": 1}})
