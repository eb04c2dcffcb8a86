"""The network of the classic PyTorch CIFAR-10 tutorial ("Tudui"), layer for layer."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.nets.limits import check_net_args


class Tudui(nn.Module):
    """Conv5x5(3->32) MaxPool Conv5x5(32->32) MaxPool Conv5x5(32->64) MaxPool Flatten Linear(1024->64) Linear(64->C).

    Exactly the tutorial's network, including what it leaves out: there are no activation
    functions, so apart from the max-pooling it is a linear model. That caps its accuracy (about
    60-65% on CIFAR-10); it is kept as is so that results and the tutorial's saved ``.pth`` files
    (whose keys are ``model.0.weight`` ...) carry over. Inputs must be 32x32.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        check_net_args(num_classes)
        self.num_classes = num_classes
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"Tudui takes 32x32 images, got {tuple(x.shape[-2:])}; set --data.image_size 32")
        return self.model(x)
