"""Networks an ImageClassifier can hold. Each keeps its constructor arguments as attributes of
the same name, so a plain description (class path + arguments) of it can be saved in checkpoints.

NETS is also the allowlist of what a checkpoint may ask to build (lightning_modules.inference.checkpoints).
"""

from lightning_modules.nets.airbench import AirbenchNet
from lightning_modules.nets.resnet import ResNet18
from lightning_modules.nets.tudui import Tudui

NETS = {"Tudui": Tudui, "ResNet18": ResNet18, "AirbenchNet": AirbenchNet}

__all__ = ["NETS", "AirbenchNet", "ResNet18", "Tudui"]
