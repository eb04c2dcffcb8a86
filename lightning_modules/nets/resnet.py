"""ResNet18 for 32x32 images: the standard strong CIFAR-10 baseline of peer projects."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.nets.limits import check_net_args


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016) adapted to 32x32 inputs as CIFAR code bases do: a 3x3 stride-1
    stem and no max-pool, so the 4 stages see 32, 16, 8 and 4 pixels. About 11.2 M parameters."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        check_net_args(num_classes, [width, 8 * width])
        self.num_classes = num_classes
        self.width = width
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, channels = [], width
        for i, w in enumerate(widths):
            layers += [BasicBlock(channels, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            channels = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))
