"""The model side of the project: ImageClassifier (the LightningModule), its networks (nets/),
optimisation (optim/), metrics/, callbacks/, reporting/ (tables and figures), plugins/ (Trainer
plug-ins fit.py uses), inference/ (plain torch: using a trained model) and cli/ (command lines).

ImageClassifier is imported lazily: prediction imports ``lightning_modules.inference`` and must
not pay for importing Lightning and torchmetrics.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["ImageClassifier"]

# Modules that moved. Checkpoints and the config.yaml of older runs name classes by their class
# path (``lightning_modules.muon_sgd.MuonSGD``), so the old module names keep importing the new
# modules (the same module objects: classes compare equal either way).
MOVED = {
    "lightning_modules.muon_sgd": "lightning_modules.optim.muon_sgd",
    "lightning_modules.schedules": "lightning_modules.optim.schedules",
    "lightning_modules.atomic_checkpoint_io": "lightning_modules.plugins.atomic_checkpoint_io",
    "lightning_modules.resumable_csv_logger": "lightning_modules.plugins.resumable_csv_logger",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as its new module, without a file left at the old place."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._own_spec = module.__spec__  # the import machinery stamps the alias's spec on it next
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._own_spec


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    if name == "ImageClassifier":
        from lightning_modules.classifier import ImageClassifier

        return ImageClassifier
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
