"""Batched image augmentation that runs on whatever device holds the batch.

Per-image torchvision transforms in DataLoader workers cost Python work per image; these act
on a whole uint8 batch with a few tensor ops, so on a GPU they are nearly free and on a CPU
they avoid the per-image overhead. Randomness comes from torch's global generator, which
``seed_everything`` seeds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Zero-pad each side by ``padding`` pixels and crop back at a random offset per image.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` applied image by image.
    """
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    return crop_at(padded, dy, dx, h, w)


def crop_at(padded: Tensor, dy: Tensor, dx: Tensor, h: int, w: int) -> Tensor:
    """Crop an (h, w) window from each padded image at its own offset (dy[i], dx[i])."""
    n, c, hp, wp = padded.shape
    rows = (torch.arange(h, device=padded.device)[None, :] + dy[:, None]).view(n, 1, h, 1).expand(n, c, h, wp)
    out = padded.gather(2, rows)
    cols = (torch.arange(w, device=padded.device)[None, :] + dx[:, None]).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)


def random_flip(images: Tensor) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def alternating_flip(images: Tensor, first_flips: Tensor, epoch: int) -> Tensor:
    """Mirror image i in epoch 0 when ``first_flips[i]``, and in every later epoch when it was not
    mirrored in the epoch before (airbench's alternating flip).

    A coin toss per epoch shows some images the same way several epochs running; alternating
    shows every image both ways in any two consecutive epochs, which helps short runs most.
    """
    flip = first_flips if epoch % 2 == 0 else ~first_flips
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)


def resize(images: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """Resize uint8 images to ``size`` x ``size`` (bilinear, antialiased when shrinking), still uint8.

    The one resize of the project: decoding at another ``--data.image_size`` and progressive
    resizing share it, so a model never sees two slightly different shrinks of the same picture.
    Works in float and rounds (torchvision's uint8 kernel differs by one level in ~20% of pixels);
    ``chunk`` images at a time, so a whole dataset never exists as float at once.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:-2], size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round_().clamp_(0, 255)
    return out
