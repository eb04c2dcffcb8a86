"""An airbench-style fast network: a frozen whitening layer, three conv groups, a scaled linear head.

After Keller Jordan's airbench (94% CIFAR-10 in seconds on one GPU); written here from the
published description, not copied.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.nets.limits import check_net_args


def batch_norm(channels: int, momentum: float, weight_trainable: bool) -> nn.BatchNorm2d:
    # eps near 0: the conv before has no bias and a free scale, so eps would only blur small channels.
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(weight_trainable)
    return norm


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv 3x3 -> BatchNorm -> GELU."""

    def __init__(self, channels_in: int, channels_out: int, bn_momentum: float, bn_weight_trainable: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = batch_norm(channels_out, bn_momentum, bn_weight_trainable)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
        self.norm2 = batch_norm(channels_out, bn_momentum, bn_weight_trainable)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            # Start each conv as (partly) the identity on its first input channels: the signal passes
            # through the untrained network, which makes the first few hundred steps count.
            nn.init.dirac_(conv.weight.data[: conv.in_channels])

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """Whitening conv (2x2, from the training images' patch statistics) -> 3 ConvGroups -> max
    over space -> bias-free linear head, logits multiplied by ``logit_scale``.

    Args:
        num_classes: outputs.
        widths: channels of the three conv groups.
        logit_scale: multiplies the logits (a fixed temperature; airbench uses 1/9).
        whiten_trainable: let the optimiser tune the whitening weights after their
            initialisation.
        whiten_bias_epochs: train the whitening bias for this many epochs, then freeze it (airbench:
            3); None trains it throughout.
        whiten_stride: 1 whitens every 2x2 patch (airbench); 2 only non-overlapping ones, so the
            conv groups run at half the resolution for about a quarter of the compute (the CPU recipe).
        bn_momentum: BatchNorm running-statistics momentum (PyTorch's convention: weight of the new
            batch). High, because short runs must have good statistics after a few hundred steps.
        bn_weight_trainable: train the BatchNorm scales too; airbench trains only the biases, at a
            higher learning rate (``--model.bias_lr_scale``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        logit_scale: float = 1 / 9,
        whiten_trainable: bool = False,
        whiten_bias_epochs: int | None = 3,
        whiten_stride: int = 1,
        bn_momentum: float = 0.4,
        bn_weight_trainable: bool = False,
    ) -> None:
        super().__init__()
        check_net_args(num_classes, widths)
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.logit_scale = logit_scale
        self.whiten_trainable = whiten_trainable
        self.whiten_bias_epochs = whiten_bias_epochs
        self.whiten_stride = whiten_stride
        self.bn_momentum = bn_momentum
        self.bn_weight_trainable = bn_weight_trainable
        if whiten_stride not in (1, 2):
            raise ValueError(f"--model.net.whiten_stride must be 1 or 2, got {whiten_stride}")
        # 3 channels x 2 x 2 pixels = 12 patch dimensions; each eigenvector is used with both signs
        # so that the GELU after it keeps the information of either half.
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, stride=whiten_stride, padding=0, bias=True)
        self.whiten.weight.requires_grad_(whiten_trainable)
        self.act = nn.GELU()
        groups, channels = [], 24
        for width in widths:
            groups.append(ConvGroup(channels, width, bn_momentum, bn_weight_trainable))
            channels = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(channels, num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the whitening weights from normalised float training images (N, 3, H, W)."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, 3, H-1, W-1, 2, 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        weight = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([weight, -weight]).to(self.whiten.weight))

    def before_optimizer_step(self, epoch: int) -> None:
        """Called by ImageClassifier once gradients are ready (and averaged, under DDP), before each step.

        Dropping the gradient freezes the bias (SGD skips parameters without one, momentum
        included); switching requires_grad off instead would break DDP's gradient bookkeeping.
        """
        if self.whiten_bias_epochs is not None and epoch >= self.whiten_bias_epochs:
            self.whiten.bias.grad = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale
