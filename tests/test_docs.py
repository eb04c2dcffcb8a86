"""The documentation says what the code does: commands, options, paths, class paths and recipe values.

What is read: README.md and docs/*.md (fenced code blocks and inline code), the header comments of
configs/*.yaml and the docstrings of scripts/*.py. Every command ``[python|torchrun|srun ...]
scripts/X.py ARGS`` found there is checked:

- the script exists;
- a complete command (no ``...`` or ``<placeholder>``) is parsed in full by the script's own parser,
  in this process: option names, values, choices, required options and ``--config`` files;
- a fragment (``scripts/sweep.py ... --name x``) has each ``--option`` name checked instead.

The parsers are built without running anything:

- fit.py: ``ClassifierCLI`` with ``parse_arguments`` overridden to hand back the parser it was
  given. LightningCLI builds the full parser (model, data, trainer, optimizer and scheduler options,
  the project's additions and links) before that hook and instantiates nothing until after it, so
  this costs ~0.1 s where ``ClassifierCLI(args=...)`` would build a Trainer and model per command,
  and ``--print_config`` in a subprocess would cost a Python start (~10 s) per command. Each
  command is then ``parser.parse_args(args)``: the same parse ``scripts/fit.py`` does, subclass
  options such as ``--optimizer MuonSGD --optimizer.muon_lr 0.24`` included.
- evaluate, predict, sweep, compare, export, serve: their ``build_parser()``.
- sweep.py passes options it does not know to fit.py: those are parsed by fit's parser, after the
  ``--config`` files sweep.py was given.
- scripts/bench/*: only that they exist (they are benchmarks, not the user's commands); the
  ``add_argument("--...")`` names in their source (and in the common.py helpers they call) count
  as declared for the inline-option check below.

Besides commands: every inline ``--option`` is declared by some parser; every repo path in inline
code (configs/, docs/, scripts/, lightning_modules/, datamodules/, tests/, and ``cli/frame.py``-style
paths inside the packages) and every relative Markdown link exists, ``file.py: name`` names
something defined in the file; every ``lightning_modules.X.Y`` / ``datamodules.X.Y`` in the docs and
configs, and every ``class_path`` in configs, imports; a recipe value quoted as ``key: value`` is
the value of the recipe named beside it. And the README's install steps (a virtual environment,
PyTorch's CPU wheels) are there and ``.venv/`` is ignored by git.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))
PACKAGE_ROOTS = ("lightning_modules", "datamodules")
REPO_PREFIXES = ("configs/", "docs/", "scripts/", "lightning_modules/", "datamodules/", "tests/")
SCRIPT_TOKEN = re.compile(r"^(?:\./)?(scripts/[\w/.-]+\.(?:py|sh))$")
OTHER_TOOLS_OPTIONS = {"--no-index"}  # pip's, in docs/gpu.md
CLASS_PATH = re.compile(r"\b(?:lightning_modules|datamodules)(?:\.[A-Za-z_]\w*)+")


@dataclass
class Command:
    where: str  # file:line
    script: str  # scripts/X.py
    args: list[str]
    fragment: bool  # has "..." or <placeholders>: check option names only


# --- reading the docs -------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def split_markdown(path: Path) -> tuple[list[tuple[int, str]], str]:
    """The fenced code lines (line number, text) and the rest of the text with fences blanked."""
    fenced, prose, inside = [], [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            prose.append("")
        elif inside:
            fenced.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return fenced, "\n".join(prose)


def inline_spans(text: str) -> list[tuple[int, str]]:
    """Inline code spans (they may wrap a line) with their line numbers, whitespace collapsed."""
    return [(text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())) for m in re.finditer(r"`([^`]+)`", text)]


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Shell lines: continuations joined, comments dropped."""
    out, pending, start = [], "", 0
    for number, line in lines:
        if not pending:
            start = number
        line = re.sub(r"(^|\s)#.*$", "", line)
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def commands_in(where: str, line: str, mention: bool = False) -> list[Command]:
    """The script commands in a shell line; with ``mention`` (inline code that is not a whole
    ``python ...`` command, such as `scripts/evaluate.py --split val`) only option names are checked."""
    found = []
    for part in re.split(r"&&|\|\||;|\|", line):
        try:
            tokens = shlex.split(part)
        except ValueError:
            tokens = part.split()
        for i, token in enumerate(tokens):
            match = SCRIPT_TOKEN.match(token)
            if match:
                args = tokens[i + 1 :]
                fragment = mention or any(a == "..." or "<" in a for a in args)
                found.append(Command(where, match.group(1), [a for a in args if a != "..."], fragment))
                break
    return found


def doc_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        fenced, prose = split_markdown(path)
        for number, line in logical_lines(fenced):
            commands += commands_in(f"{rel(path)}:{number}", line)
        for number, span in inline_spans(prose):
            commands += commands_in(f"{rel(path)}:{number}", span, mention=not span.startswith("python "))
    for path in RECIPES:  # "#   python scripts/fit.py --config ... (a remark)" in the header
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("#") and "scripts/" in line:
                commands += commands_in(f"{rel(path)}:{number}", line.lstrip("# ").split(" (")[0])
    for path in sorted((REPO / "scripts").glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        for number, line in enumerate(docstring.splitlines(), 2):
            if line.startswith("python "):
                commands += commands_in(f"{rel(path)}:{number}", logical_lines([(number, line)])[0][1])
    return commands


COMMANDS = doc_commands()


def ids(commands: list[Command]) -> list[str]:
    return [f"{c.where} {c.script}" for c in commands]


# --- the parsers ------------------------------------------------------------------------------


class _Parser(Exception):
    """Carries a parser out of the function that built it, before it parses anything."""


def fit_parser():
    from lightning_modules.cli.fit import ClassifierCLI

    class ParserOnly(ClassifierCLI):
        def parse_arguments(self, parser, args) -> None:
            raise _Parser(parser)

    try:
        ParserOnly(args=[])
    except _Parser as found:
        return found.args[0]
    raise AssertionError("ClassifierCLI never reached parse_arguments")


@dataclass
class Bench:
    """A benchmark script: the option names its source declares."""

    options: set[str]


@pytest.fixture(scope="module")
def parsers() -> dict:
    from lightning_modules.cli import compare, evaluate, export, predict, serve, sweep

    found = {
        "scripts/fit.py": fit_parser(),
        "scripts/evaluate.py": evaluate.build_parser(),
        "scripts/predict.py": predict.build_parser(),
        "scripts/sweep.py": sweep.build_parser(),
        "scripts/compare.py": compare.build_parser(),
        "scripts/export.py": export.build_parser(),
        "scripts/serve.py": serve.build_parser(),
    }
    common = REPO / "scripts" / "bench" / "common.py"
    helpers = {  # common.py's functions that add options: add_images_dir adds --data_dir, ...
        node.name: declared_options(ast.get_source_segment(common.read_text(encoding="utf-8"), node))
        for node in ast.parse(common.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef)
    }
    for path in (REPO / "scripts" / "bench").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        options = declared_options(source).union(*(o for name, o in helpers.items() if f"{name}(" in source))
        found[rel(path)] = Bench(options)
    return found


def declared_options(source: str) -> set[str]:
    """The names in ``add_argument("--a", "--b", ...)`` calls."""
    calls = re.findall(r"add_argument\(\s*((?:[\"']--[\w.-]+[\"']\s*,?\s*)+)", source)
    return {name for call in calls for name in re.findall(r"--[\w.-]+", call)}


def declares(parser, option: str) -> bool:
    """Whether a parser takes this option name; for fit's and evaluate's jsonargparse parsers, a
    class's own arguments (``--optimizer.muon_lr`` after ``--optimizer MuonSGD``) count when the
    option before the last dot takes a subclass (it then has a ``.help`` option)."""
    if isinstance(parser, Bench):
        return option in parser.options
    known = parser._option_string_actions
    if option in known:
        return True
    parts = option.split(".")
    return any(".".join(parts[:i]) + ".help" in known for i in range(1, len(parts)))


def options_of(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def parse_fit(fit, args: list[str]) -> None:
    if "--print_config" in args:  # it prints and exits while parsing: checked by name instead
        assert declares(fit, "--print_config")
        args = [a for a in args if a != "--print_config"]
    fit.parse_args(args)


# --- the checks -------------------------------------------------------------------------------


def test_the_docs_have_commands_to_check():
    scripts = {c.script for c in COMMANDS}
    assert {f"scripts/{n}.py" for n in ("fit", "evaluate", "predict", "export", "serve", "compare", "sweep")} <= scripts
    assert sum(not c.fragment and c.script == "scripts/fit.py" for c in COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=ids(COMMANDS))
def test_every_documented_script_exists(command):
    assert (REPO / command.script).is_file(), f"{command.where}: {command.script} does not exist"


def test_every_documented_command_parses(parsers, monkeypatch):
    """All commands in one test: the parsers are shared, and each parse takes ~0.1 s."""
    from lightning_modules.cli.frame import UsageError

    monkeypatch.chdir(REPO)  # --config configs/... as written, from the repository root
    fit = parsers["scripts/fit.py"]
    failures, seen = [], set()
    for command in COMMANDS:
        parser = parsers.get(command.script)
        if parser is None or isinstance(parser, Bench) or (command.script, *command.args) in seen:
            continue  # a benchmark or shell script: that it exists is checked above
        seen.add((command.script, *command.args))
        unknown = [
            o
            for o in options_of(command.args)
            if not declares(parser, o) and not (command.script == "scripts/sweep.py" and declares(fit, o))
        ]
        if unknown:
            failures.append(f"{command.where}: {command.script} has no option {', '.join(unknown)}")
            continue
        if command.fragment:
            continue
        try:
            if command.script == "scripts/fit.py":
                parse_fit(fit, command.args)
            elif command.script == "scripts/sweep.py":
                known, rest = parser.parse_known_args(command.args)
                parse_fit(fit, [*(a for c in known.config for a in ("--config", c)), *rest])
                assert known.space is None or (REPO / known.space).is_file(), f"--space {known.space}: no such file"
            else:
                parser.parse_args(command.args)
        except (UsageError, SystemExit, AssertionError) as err:
            failures.append(f"{command.where}: {command.script} {shlex.join(command.args)}: {err}")
    assert not failures, "\n".join(failures)


def test_every_inline_option_is_declared_by_a_parser(parsers):
    """``--trainer.check_val_every_n_epoch 1`` in the prose: some command takes it."""
    failures = []
    for path in DOCS:
        _, prose = split_markdown(path)
        for number, span in inline_spans(prose):
            if not span.startswith("--"):
                continue
            for option in options_of(span.split()):
                if "*" in option or option in OTHER_TOOLS_OPTIONS:  # `--data.*`: a family of options
                    continue
                if not any(declares(p, option) for p in parsers.values()):
                    failures.append(f"{rel(path)}:{number}: {option} is no command's option")
    assert not failures, "\n".join(failures)


def repo_path(text: str) -> Path | None:
    """The file a span names: configs/x.yaml, or cli/frame.py inside one of the packages."""
    if text.startswith(REPO_PREFIXES):
        return REPO / text
    if re.fullmatch(r"[\w/]+/[\w]+\.py", text):
        for root in ("", *PACKAGE_ROOTS):
            if (REPO / root / text).exists():
                return REPO / root / text
        return REPO / "lightning_modules" / text
    return None


def defines(path: Path, name: str) -> bool:
    source = path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]", source, re.MULTILINE) is not None


def test_every_repo_path_and_link_in_the_docs_exists():
    failures = []
    texts = [(path, *split_markdown(path)) for path in DOCS]
    for path, fenced, prose in texts:
        spans = inline_spans(prose)
        spans += [(n, t) for n, line in logical_lines(fenced) for t in line.split()]
        for number, span in spans:
            # `lightning_modules/cli/frame.py: reuse_freed_memory`, `tests/test_x.py::test_y`, `cli/fit.py: fit(args)`
            target, _, name = span.partition(": ")
            target = target.split("::")[0].strip("\"'")
            if "<" in target or "*" in target or "{" in target:
                continue
            for word in re.split(r"[\s,]+", target) if not name else [target]:
                file = repo_path(word.rstrip(".,;:)"))
                if file is None:
                    continue
                if not file.exists():
                    failures.append(f"{rel(path)}:{number}: {word} does not exist")
                elif name and file.suffix == ".py":
                    symbol = re.match(r"\w+", name)
                    if symbol and not defines(file, symbol.group(0)):
                        failures.append(f"{rel(path)}:{number}: {word} defines no {symbol.group(0)}")
        for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            link = m.group(1)
            if "://" in link or link.startswith("mailto:"):
                continue
            if not (path.parent / link).exists():
                line = prose.count("\n", 0, m.start()) + 1
                failures.append(f"{rel(path)}:{line}: link to {link}, which does not exist")
    assert not failures, "\n".join(failures)


def resolves(dotted: str) -> bool:
    module, _, attribute = dotted.rpartition(".")
    try:
        importlib.import_module(dotted)
        return True
    except ImportError:
        pass
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


def class_paths_in_configs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return own + [p for value in node.values() for p in class_paths_in_configs(value)]
    if isinstance(node, list):
        return [p for value in node for p in class_paths_in_configs(value)]
    return []


def test_every_class_path_in_the_docs_and_configs_imports():
    named = {}
    for path in [*DOCS, *RECIPES]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CLASS_PATH.finditer(line):
                named.setdefault(m.group(0), f"{rel(path)}:{number}")
    for path in RECIPES:
        for dotted in class_paths_in_configs(yaml.safe_load(path.read_text(encoding="utf-8"))):
            if "." in dotted:
                named.setdefault(dotted, rel(path))
    failures = [f"{where}: {dotted} does not import" for dotted, where in sorted(named.items()) if not resolves(dotted)]
    assert len(named) >= 8
    assert not failures, "\n".join(failures)


def merged_recipe(path: Path) -> dict:
    """A recipe's values, with those of the file it extends (``# extends: base.yaml``) underneath."""
    text = path.read_text(encoding="utf-8")
    base = re.search(r"^# extends: (\S+)", text, re.MULTILINE)
    values = merged_recipe(path.parent / base.group(1)) if base else {}

    def merge(into: dict, new: dict) -> dict:
        for key, value in new.items():
            into[key] = merge(dict(into.get(key) or {}), value) if isinstance(value, dict) else value
        return into

    return merge(values, yaml.safe_load(text) or {})


def values_of(config, key: str) -> list:
    """Every value under ``key`` (or a dotted ``a.b``) anywhere in a nested config."""
    found = []
    if isinstance(config, dict):
        head, _, rest = key.partition(".")
        if head in config:
            found += values_of(config[head], rest) if rest else [config[head]]
        for value in config.values():
            found += values_of(value, key)
    elif isinstance(config, list):
        for value in config:
            found += values_of(value, key)
    return found


def quoted_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def test_recipe_values_quoted_in_the_docs_are_the_recipes():
    """`check_val_every_n_epoch: 6` beside `fast_cpu.yaml` must be fast_cpu.yaml's value. A key no
    recipe has (the device tool's `carry: [...]`) is not a recipe value and is left alone."""
    recipes = {p.name: merged_recipe(p) for p in RECIPES}
    failures, checked = [], 0
    for path in DOCS:
        _, prose = split_markdown(path)
        offset = 0
        for paragraph in prose.split("\n\n"):
            named = [recipes[n] for n in re.findall(r"([\w]+\.yaml)", paragraph) if n in recipes]
            for m in re.finditer(r"`([A-Za-z_][\w.]*): ([^`]+)`", paragraph):
                key, quoted = m.group(1), quoted_value(m.group(2))
                having = [c for c in named if values_of(c, key)]
                candidates = having or [c for c in recipes.values() if values_of(c, key)]
                if not candidates:
                    continue
                checked += 1
                if not any(quoted in values_of(c, key) for c in candidates):
                    line = prose.count("\n", 0, offset + m.start()) + 1
                    actual = sorted({repr(v) for c in candidates for v in values_of(c, key)})
                    failures.append(f"{rel(path)}:{line}: {m.group(0)}, but the recipe says {', '.join(actual)}")
            offset += len(paragraph) + 2
    assert checked >= 2
    assert not failures, "\n".join(failures)


def test_readme_installs_in_a_virtual_environment_with_cpu_wheels():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line.split(" #")[0].strip() for line in readme.splitlines()]

    def first(command: str) -> int:
        return next((i for i, line in enumerate(lines) if line.startswith(command)), -1)

    venv = first("python -m venv .venv && . .venv/bin/activate")
    cpu = first("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu")
    install = next((i for i, line in enumerate(lines) if line == "pip install -e ."), -1)
    assert -1 < venv < cpu < install, "README: a virtual environment, then PyTorch's CPU wheels, then pip install -e ."
    ignored = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=REPO, check=False)
    assert ignored.returncode == 0, ".venv/ is not in .gitignore"
    assert 140 <= len(readme.splitlines()) <= 175
