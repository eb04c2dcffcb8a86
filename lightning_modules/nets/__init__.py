"""Networks an ImageClassifier can hold. Each keeps its constructor arguments as attributes of
the same name, so a plain description (class path + arguments) of it can be saved in checkpoints.

NETS is also the allowlist of what a checkpoint may ask to build (lightning_modules.checkpoints).
"""

from lightning_modules.nets.tudui import Tudui

NETS = {"Tudui": Tudui}

__all__ = ["NETS", "Tudui"]
