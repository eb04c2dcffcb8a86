"""The layout's promises: imports point one way, and the one Lightning internal used still behaves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import REPO

# Each layer may import the layers after it in this list, never those before it (docs/architecture.md).
LAYERS = [
    ("scripts",),
    ("lightning_modules.cli",),
    ("lightning_modules.callbacks",),
    ("lightning_modules.reporting",),
    (
        "lightning_modules.classifier",
        "lightning_modules.optim",
        "lightning_modules.plugins",
        "lightning_modules.metrics",
    ),
    ("lightning_modules.inference",),
    ("lightning_modules.nets",),
    ("datamodules",),
]
# Plain torch: what predict, serve and export load must not pay for (or depend on) the training stack.
NO_TRAINING_STACK = ("lightning", "torchmetrics", "lightning_modules.classifier", "lightning_modules.callbacks")


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    return next((i for i, prefixes in enumerate(LAYERS) if within(module, prefixes)), None)


def project_modules() -> dict[str, Path]:
    modules = {}
    for folder in ("datamodules", "lightning_modules"):
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    for path in (REPO / "scripts").rglob("*.py"):
        modules["scripts." + path.stem] = path
    return modules


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def upward_imports(module: str, path: Path) -> list[str]:
    """The imports of ``module`` (read from ``path``) that name a layer above its own."""
    own = layer_of(module)
    return sorted(name for name in imports_of(path) if (layer_of(name) if layer_of(name) is not None else own) < own)


@pytest.mark.parametrize("module", sorted(m for m in project_modules() if layer_of(m) is not None))
def test_imports_point_down(module):
    upward = upward_imports(module, project_modules()[module])
    assert not upward, f"{module} imports a layer above it: {sorted(upward)}"


def test_inference_needs_no_training_stack():
    for name, path in project_modules().items():
        if name.startswith("lightning_modules.inference"):
            heavy = [i for i in imports_of(path) if within(i, NO_TRAINING_STACK)]
            assert not heavy, f"{name} imports {heavy}"


def test_datamodules_never_import_lightning_modules():
    for name, path in project_modules().items():
        if name.startswith("datamodules"):
            assert not [i for i in imports_of(path) if within(i, ("lightning_modules",))], name


def test_the_undocumented_lightning_sampler_still_shards_without_padding():
    # datamodules/cifar10.py relies on it so that DDP evaluation counts each image exactly once.
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    data = torch.utils.data.TensorDataset(torch.arange(10))
    shards = [list(UnrepeatedDistributedSampler(data, num_replicas=3, rank=r, shuffle=False)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


@pytest.mark.parametrize(
    "module, source",
    [
        ("datamodules.planted", "from lightning_modules.nets import Tudui\n"),  # the bottom layer importing up
        ("lightning_modules.inference.planted", "import lightning_modules.cli.fit\n"),
        ("lightning_modules.callbacks.planted", "from scripts.fit import fit_main\n"),  # layer 0: the top
    ],
)
def test_the_layer_rule_flags_a_planted_upward_import(tmp_path, module, source):
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    assert upward_imports(module, planted), f"{source.strip()} in {module} was not flagged"
    planted.write_text("import torch\nfrom datamodules.sources import DataError\n")  # downward and outside: fine
    assert not upward_imports(module, planted)
