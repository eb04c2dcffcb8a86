"""The networks of the zoo: output shapes, sizes, and AirbenchNet's whitening initialisation."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets import NETS, AirbenchNet, ResNet18


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet18_for_32px():
    net = ResNet18(num_classes=10).eval()
    assert n_params(net) == 11_173_962  # the CIFAR ResNet-18 of peer projects
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert ResNet18(num_classes=3, width=16)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_airbench_shape_and_size():
    net = AirbenchNet(num_classes=10, widths=(8, 16, 16)).eval()
    out = net(torch.zeros(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert net.head.bias is None
    # whiten 312 + groups 50,944 + 738,304 + 1,180,672 (convs and BatchNorms) + head 2,560
    assert n_params(AirbenchNet()) == 1_972_792
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    assert AirbenchNet(whiten_trainable=True).whiten.weight.requires_grad


def test_airbench_batchnorm_and_identity_init():
    from lightning_modules.nets.airbench import ConvGroup

    net = AirbenchNet(widths=(8, 16, 16))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not n.weight.requires_grad and n.bias.requires_grad for n in norms)
    assert all(n.momentum == 0.4 for n in norms)
    assert all(
        n.weight.requires_grad for n in AirbenchNet(bn_weight_trainable=True).modules() if hasattr(n, "running_mean")
    )
    # Each conv starts as the identity on its first input channels (the rest random).
    group = ConvGroup(4, 8, bn_momentum=0.4, bn_weight_trainable=False)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(group.conv1(x)[:, :4], x) and not torch.allclose(
        group.conv1(x)[:, 4:], torch.zeros(2, 4, 6, 6)
    )


def test_airbench_whitening_bias_freezes_after_its_epochs():
    net = AirbenchNet(widths=(8, 8, 8), whiten_bias_epochs=2)
    net.whiten.bias.grad = torch.ones(24)
    net.before_optimizer_step(epoch=1)
    assert net.whiten.bias.grad is not None
    net.before_optimizer_step(epoch=2)
    assert net.whiten.bias.grad is None  # SGD skips it from now on
    always = AirbenchNet(widths=(8, 8, 8), whiten_bias_epochs=None)
    always.whiten.bias.grad = torch.ones(24)
    always.before_optimizer_step(epoch=100)
    assert always.whiten.bias.grad is not None


def test_airbench_whiten_stride_halves_the_resolution():
    net = AirbenchNet(widths=(8, 8, 8), whiten_stride=2).eval()
    assert net.whiten.stride == (2, 2)
    assert net.whiten(torch.zeros(1, 3, 32, 32)).shape == (1, 24, 16, 16)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="whiten_stride must be 1 or 2"):
        AirbenchNet(whiten_stride=3)


def test_whitened_patches_have_identity_covariance():
    torch.manual_seed(0)
    # Correlated channels and neighbouring pixels, like natural images.
    base = torch.randn(64, 1, 17, 17).repeat(1, 3, 1, 1) + 0.3 * torch.randn(64, 3, 17, 17)
    images = (base[..., 1:, 1:] + base[..., :-1, :-1]) / 2
    net = AirbenchNet(widths=(8, 8, 8))
    net.init_whitening(images, eps=1e-8)
    out = torch.nn.functional.conv2d(images, net.whiten.weight[:12])  # the 12 positive filters, no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    flat = flat - flat.mean(0)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_every_net_is_allowlisted_and_describable():
    from lightning_modules.classifier import describe_net

    for name, cls in NETS.items():
        spec = describe_net(cls(num_classes=4))
        assert spec["class_path"].endswith(name) and spec["init_args"]["num_classes"] == 4


@pytest.mark.slow
def test_airbench_trains_through_fit_with_whitening(tmp_path):
    from helpers import make_image_folder, run_script

    make_image_folder(tmp_path / "data", {"train": 8})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "6", "--model.net", "AirbenchNet",
        "--model.net.widths", "[8, 8, 8]", "--trainer.max_epochs", "1", "--test", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = next((tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints").glob("epoch=*.ckpt"))
    weight = torch.load(ckpt, weights_only=True)["state_dict"]["net.whiten.weight"]
    assert torch.equal(weight[12:], -weight[:12])  # initialised from the data, not left random
