"""Load a classifier from a file someone handed you, without ever running code from it.

Accepted, all through ``torch.load(..., weights_only=True)``:

1. our Lightning ``.ckpt`` files (hyper-parameters name the network by class path; only the
   networks in ``lightning_modules.nets.NETS`` are built);
2. a ``state_dict`` of the tutorial network (``torch.save(model.state_dict(), "x.pth")``);
3. the tutorial's whole pickled model (``torch.save(model, "tudui_0.pth")``), whose pickle names
   ``__main__.Tudui`` or ``model.Tudui``: those names are mapped to our ``Tudui`` and only the
   torch.nn layer classes it is made of are allowed. Its weights are copied into a fresh network,
   so nothing of the unpickled object is used beyond its tensors.

Anything else (a pickle that would import or call something outside the allowlist, a foreign
class path in the hyper-parameters, a truncated or empty file) raises CheckpointError.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datamodules.sources import CIFAR10_CLASSES
from lightning_modules.inference.model import InferenceClassifier, check_tta
from lightning_modules.nets import Tudui, net_class
from lightning_modules.nets.limits import MAX_CLASSES, MAX_PARAMETERS, parameter_count

# Where a tutorial user's pickled Tudui may claim to come from.
TUTORIAL_CLASS_NAMES = ("__main__.Tudui", "model.Tudui", "nn_module.Tudui", "train.Tudui", "train_gpu.Tudui")
# The layers the tutorial's network is built from, and the containers pickling an nn.Module touches.
TUTORIAL_LAYERS = [nn.Sequential, nn.Conv2d, nn.MaxPool2d, nn.Flatten, nn.Linear, set]
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
CLASSIFIER_PATHS = ("lightning_modules.classifier.ImageClassifier", "lightning_modules.ImageClassifier")
# Ranges of hyper-parameters read from a file, checked before anything is allocated from them.
MAX_IMAGE_SIZE = 1024
MAX_NAME_LENGTH = 255  # characters: a class name is a folder's name, which file systems cap at 255


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded safely; the message says why and what to do."""


def load_classifier(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", tta: str | None = None, onnx: bool = False
) -> InferenceClassifier:
    """An InferenceClassifier in eval mode on ``map_location``, from any accepted file (see the module
    docstring), with the checkpoint's test-time augmentation unless ``tta`` overrides it. An ``.onnx``
    file from scripts/export.py gives an OnnxClassifier (ONNX Runtime, CPU) with the same interface
    where the caller takes one (``onnx``: predict and serve)."""
    if Path(path).suffix.lower() == ".onnx":
        if not onnx:
            raise CheckpointError(f"{path}: .onnx files are for predict.py and serve.py; pass the checkpoint here")
        from lightning_modules.inference.onnx_model import OnnxClassifier

        if torch.device(map_location).type != "cpu":
            raise CheckpointError(f"{path}: .onnx files run on the CPU here; pass the checkpoint to use a GPU")
        return OnnxClassifier(path, tta)
    model = _load(Path(path))
    if tta is not None:
        try:
            model.tta = check_tta(tta)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    _check_outputs(model, path)
    return model.to_device(map_location).eval()


def _load(path: Path) -> InferenceClassifier:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass the path of a .ckpt or .pth file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the checkpoint was not written completely")
    allowed = TUTORIAL_LAYERS + [(Tudui, name) for name in TUTORIAL_CLASS_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            # On the CPU first: the file is checked there before anything moves to a device.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refused a global: the file wants to import or call something not allowlisted.
        first = str(err).strip().splitlines()
        reason = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise CheckpointError(
            f"refused {path}: it holds more than weights ({reason.strip()[:200]}); only our checkpoints and the "
            "tutorial's Tudui files load, never arbitrary pickles"
        ) from None
    except Exception as err:  # truncated zip, junk bytes (struct.error), I/O errors: never a traceback
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read {path} ({reason}): truncated or not a checkpoint") from None

    if isinstance(obj, nn.Module):
        if not isinstance(obj, Tudui):
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a tutorial Tudui")
        try:  # an unpickled module may carry hooks or odd attributes; only its tensors are wanted
            state = {k: v for k, v in obj.state_dict().items() if isinstance(v, torch.Tensor)}
        except Exception as err:
            reason = type(err).__name__
            raise CheckpointError(f"refused {path}: its Tudui does not give up its weights ({reason})") from None
        return _tutorial_classifier(state, path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj:
        return _lightning_classifier(obj, path)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _tutorial_classifier(obj, path)
    raise CheckpointError(f"{path} is neither a Lightning checkpoint nor a Tudui state_dict or model")


def _tutorial_classifier(state: Mapping[str, torch.Tensor], path: Path) -> InferenceClassifier:
    head = state.get("model.8.weight")
    # The head's rows are the outputs; checked before a network is built from the count.
    if head is not None and (head.dim() != 2 or head.shape[0] != len(CIFAR10_CLASSES)):
        raise CheckpointError(
            f"{path} has a last layer of shape {tuple(head.shape)}; tutorial files are taken as CIFAR-10 "
            f"(10 outputs, weights of shape (10, 64))"
        )
    net = Tudui(num_classes=len(CIFAR10_CLASSES))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the tutorial network: {_reason(err)}") from None
    model = InferenceClassifier(net, class_names=CIFAR10_CLASSES, image_size=32)
    # Such files know no class names; the caller says so to the user.
    model.class_names_assumed = True
    return model


def _lightning_classifier(checkpoint: Mapping[str, Any], path: Path) -> InferenceClassifier:
    if not isinstance(checkpoint["hyper_parameters"], Mapping) or not isinstance(checkpoint["state_dict"], Mapping):
        raise CheckpointError(f"refused {path}: its hyper_parameters and state_dict must be mappings")
    hparams = dict(checkpoint["hyper_parameters"])
    instantiator = hparams.get("_instantiator")
    if instantiator not in (None, LIGHTNING_INSTANTIATOR):
        raise CheckpointError(f"refused {path}: its hyper-parameters name an unknown instantiator {instantiator!r}")
    class_path = hparams.get("_class_path")
    if class_path not in (None, *CLASSIFIER_PATHS):
        raise CheckpointError(f"refused {path}: its model class {class_path!r} is not this project's ImageClassifier")
    net_spec = hparams.get("net")
    if not isinstance(net_spec, Mapping) or not isinstance(net_spec.get("class_path"), str):
        raise CheckpointError(f"{path} does not say which network it holds (hyper-parameter 'net')")
    network = _allowed_net(net_spec["class_path"], path)
    init_args = net_spec.get("init_args")
    if not isinstance(init_args, Mapping | None):
        kind = type(init_args).__name__
        raise CheckpointError(f"refused {path}: the network's init_args must be a mapping, got {kind}")
    init_args = dict(init_args or {})
    if not all(isinstance(v, (bool, int, float, str, type(None), list, tuple)) for v in init_args.values()):
        raise CheckpointError(f"refused {path}: the network's arguments are not plain values")
    class_names, image_size, mean, std, tta = _checked_contract(hparams, path)
    try:
        size = parameter_count(lambda: network(**init_args))  # nothing allocated yet
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"refused {path}: its network's arguments {init_args}: {str(err)[:200]}") from None
    if size > MAX_PARAMETERS:
        raise CheckpointError(
            f"refused {path}: its network would have {size:,} parameters (at most {MAX_PARAMETERS:,})"
        )
    try:
        model = InferenceClassifier(network(**init_args), class_names, image_size, mean, std, tta)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not match its own description: {_reason(err)}") from None
    model.class_names_assumed = _stored_names(hparams) is None
    return model


def _stored_names(hparams: Mapping[str, Any]) -> Any:
    """The file's class names, or None where it has none (None or an empty list: CIFAR-10's are taken)."""
    names = hparams.get("class_names")
    return None if names is None or (isinstance(names, (list, tuple)) and not names) else names


def _checked_contract(hparams: Mapping[str, Any], path: Path) -> tuple[list[str], int, tuple, tuple, str]:
    """Class names, image size, mean, std and TTA from a file, range-checked before any use."""
    stored = _stored_names(hparams)
    names = check_class_names(list(CIFAR10_CLASSES) if stored is None else stored, path)
    size = check_image_size(hparams.get("image_size", 32), path)
    mean, std = hparams.get("mean", (0.0, 0.0, 0.0)), hparams.get("std", (1.0, 1.0, 1.0))
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise CheckpointError(f"refused {path}: {name} must be 3 numbers, got {values!r}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise CheckpointError(f"refused {path}: {name} {list(values)} holds a non-finite value")
    if not all(v > 0 for v in std):
        raise CheckpointError(f"refused {path}: std {list(std)} must be > 0 in every channel")
    tta = hparams.get("tta", "none")
    try:
        check_tta(tta, "its tta")
    except ValueError as err:
        raise CheckpointError(f"refused {path}: {err}") from None
    return [str(n) for n in names], size, tuple(mean), tuple(std), tta


def check_class_names(names: Any, path) -> list:
    """A file's class names, refused unless 1 to MAX_CLASSES distinct non-empty one-line texts of at most
    MAX_NAME_LENGTH characters."""
    if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES:
        raise CheckpointError(f"refused {path}: class_names must be a list of 1 to {MAX_CLASSES:,} names")
    # Names print as one column of a tab-separated row, and an answer must say which class it is.
    if not all(isinstance(n, str) and n.strip() and not set(n) & set("\t\r\n") for n in names):
        raise CheckpointError(f"refused {path}: class_names must be non-empty text without tabs or line breaks")
    if max(len(n) for n in names) > MAX_NAME_LENGTH:
        raise CheckpointError(f"refused {path}: a class name is longer than {MAX_NAME_LENGTH} characters")
    if len(set(names)) != len(names):
        raise CheckpointError(
            f"refused {path}: class_names holds duplicates ({sorted({n for n in names if names.count(n) > 1})})"
        )
    return list(names)


def check_image_size(size: Any, path) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise CheckpointError(f"refused {path}: image_size {size!r} is not an integer from 1 to {MAX_IMAGE_SIZE}")
    return size


def _check_outputs(model: InferenceClassifier, path) -> None:
    """One name per output and finite weights, or the file is refused (never a wrong answer later)."""
    if not all(t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point()):
        raise CheckpointError(f"refused {path}: its weights hold NaN or infinite values (a diverged run?)")
    # The buffers are checked as the hyper-parameters are: a state_dict may disagree with them.
    if not (model.std > 0).all():
        raise CheckpointError(
            f"refused {path}: its std buffer {model.std.flatten().tolist()} must be > 0 in every channel"
        )
    # A black and a white image: weights near float32's limit score black finely and overflow on light.
    probe = torch.zeros(2, 3, model.image_size, model.image_size, dtype=torch.uint8)
    probe[1] = 255
    try:
        with torch.inference_mode():
            logits = model.eval().logits_one_view(probe)
            outputs = logits.shape[-1]
    except (RuntimeError, ValueError) as err:  # a shape mismatch; a network's own size check
        raise CheckpointError(
            f"refused {path}: its network does not run on {model.image_size}x{model.image_size} images "
            f"({str(err).splitlines()[0][:200]})"
        ) from None
    if outputs != model.num_classes:
        raise CheckpointError(
            f"refused {path}: the network has {outputs} outputs but the file names {model.num_classes} classes"
        )
    if not logits.isfinite().all():
        raise CheckpointError(f"refused {path}: it scores a plain image as NaN or infinity (damaged weights?)")


def _reason(err: Exception, limit: int = 400) -> str:
    """An error's lines in one (load_state_dict names the keys on the lines after its first), cut to ``limit``."""
    text = ""
    for line in (line.strip() for line in str(err).splitlines() if line.strip()):
        text += (" " if text.endswith(":") else "; " if text else "") + line
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_net(class_path: str, path: Path) -> type[nn.Module]:
    try:
        return net_class(class_path)
    except ValueError as err:
        raise CheckpointError(f"refused {path}: {err}") from None
