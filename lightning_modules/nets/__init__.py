"""Networks an ImageClassifier can hold. Each keeps its constructor arguments as attributes of
the same name, so a plain description (class path + arguments) of it can be saved in checkpoints.

NETS is also the allowlist of what a checkpoint may ask to build (lightning_modules.inference.checkpoints).
"""

from lightning_modules.nets.airbench import AirbenchNet
from lightning_modules.nets.resnet import ResNet18
from lightning_modules.nets.tudui import Tudui

NETS = {"Tudui": Tudui, "ResNet18": ResNet18, "AirbenchNet": AirbenchNet}


def net_class(class_path: str) -> type[Tudui | ResNet18 | AirbenchNet]:
    """The class a saved ``class_path`` names, only from NETS (a file may be untrusted); ValueError naming
    the valid networks for any other."""
    module, _, name = str(class_path).rpartition(".")
    if name not in NETS or not module.startswith("lightning_modules.nets"):
        raise ValueError(f"network {class_path!r} is not one of this project's: {', '.join(sorted(NETS))}")
    return NETS[name]


def build_net(description: dict) -> Tudui | ResNet18 | AirbenchNet:
    """The network a saved description (``{"class_path": ..., "init_args": {...}}``) names (``net_class``)."""
    return net_class(description.get("class_path", ""))(**dict(description.get("init_args") or {}))


__all__ = ["NETS", "AirbenchNet", "ResNet18", "Tudui", "build_net", "net_class"]
