"""Networks an ImageClassifier can hold. Each keeps its constructor arguments as attributes of
the same name, so a plain description (class path + arguments) of it can be saved in checkpoints."""

from lightning_modules.nets.tudui import Tudui

__all__ = ["Tudui"]
