"""The trained model without the training machinery: what prediction, serving and export run.

Plain torch (no Lightning, torchmetrics or torchvision import), so ``scripts/predict.py`` starts
as fast as the tutorial's test.py. It has the same input contract and the same state_dict keys
(``net.*``, ``mean``, ``std``) as ImageClassifier, so a training checkpoint loads into it as is,
and the same test-time augmentation (``tta_logits``, shared with ImageClassifier), so it scores
what the fit-time test scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TTA_MODES = ("none", "mirror", "mirror_translate")


def normalize_uint8(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) in 0..255 -> float, scaled to [0, 1], minus mean, over std (per channel)."""
    if images.dim() != 4:
        raise TypeError(f"the classifier takes a batch of images (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"the classifier takes uint8 images (N, 3, H, W) with values 0..255, got {images.dtype}; "
            "pass raw pixels: the model normalises them itself"
        )
    # x * (1 / (255 std)) - mean / std, in place on the new float tensor: 34 us for 64 images here,
    # against 790 us for three passes that each allocate a new batch.
    return images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)


def check_tta(tta: str, option: str = "tta") -> str:
    """The one check of a test-time augmentation mode: ``ValueError`` naming the valid ones."""
    if tta not in TTA_MODES:
        raise ValueError(f"{option} {tta!r}: use one of {', '.join(TTA_MODES)}")
    return tta


def net_logits(
    net: nn.Module,
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The model's forward for one view, in training and inference alike: uint8 images normalised,
    cast to the network's dtype (a half type under true half precision), laid out as ``channels_last``
    says, through the network."""
    x = normalize_uint8(images, mean, std)
    if dtype != torch.float32:
        x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return net(x)


def inference_layout(images: Tensor) -> bool:
    """Channels-last for a forward without gradients on a CPU, as the inference model always runs there:
    oneDNN's convolutions and pooling are ~2x faster in that layout for the tutorial network (logits
    within ~1e-6), so ``ImageClassifier.load_from_checkpoint(...)(images)`` and validation run as fast
    as predict. Training keeps the recipe's layout: its backward pass is another matter. A trace
    (TensorBoard's graph, export) keeps it too: a graph must not depend on the grad mode."""
    return images.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()


def tta_views(images: Tensor, tta: str) -> list[Tensor]:
    """The views of a batch that test-time augmentation averages.

    "none": the images; "mirror": also their mirror images; "mirror_translate": also both shifted
    by one pixel up-left and down-right (edges repeated), each mirrored (6 views, airbench's level 2).
    """
    check_tta(tta)
    if tta == "none":
        return [images]
    views = [images, images.flip(-1)]
    if tta == "mirror_translate":
        h, w = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        views += shifted + [v.flip(-1) for v in shifted]
    return views


def tta_logits(forward: Callable[[Tensor], Tensor], images: Tensor, tta: str) -> Tensor:
    """Mean logits of ``forward`` over the views ``tta`` names; the one TTA of training and inference."""
    views = tta_views(images, tta)
    if len(views) == 1:
        return forward(images)
    return torch.stack([forward(v) for v in views]).mean(dim=0)


def use_channels_last(device: torch.device | str, requested: bool = False) -> bool:
    """The one channels-last rule: always on a CPU for inference (oneDNN's convolutions and pooling
    run about 2x faster that way, and logits differ by ~1e-7), elsewhere when the recipe asks."""
    return requested or torch.device(device).type == "cpu"


class InferenceClassifier(nn.Module):
    """uint8 images in, logits out (averaged over the TTA views); knows its class names and input size."""

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        image_size: int,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        tta: str = "none",
    ) -> None:
        super().__init__()
        check_tta(tta)
        self.net = net
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        self.image_size = int(image_size)
        self.tta = tta
        self.channels_last = False
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # True when the file held no class names and CIFAR-10's were assumed (tutorial .pth files).
        self.class_names_assumed = False

    def to_device(self, device: torch.device | str) -> InferenceClassifier:
        """Move to ``device`` in the layout the channels-last rule picks there."""
        self.channels_last = use_channels_last(device)
        self.to(device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        return self

    def logits_one_view(self, images: Tensor) -> Tensor:
        return net_logits(self.net, images, self.mean, self.std, self.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        return tta_logits(self.logits_one_view, images, self.tta)
