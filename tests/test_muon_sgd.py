"""MuonSGD: SGD where torch's SGD would step, orthogonalised steps for convolution filters."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_modules.classifier import ImageClassifier
from lightning_modules.nets import AirbenchNet
from lightning_modules.optim.muon_sgd import MuonSGD, orthogonalize


def losses_and_weights(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5):
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_without_filters_it_is_torch_sgd():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))

    kwargs = {"lr": 0.1, "momentum": 0.85, "nesterov": True, "weight_decay": 5e-4}
    a, b = make(), make()
    expected = losses_and_weights(a, torch.optim.SGD(a.parameters(), **kwargs))
    got = losses_and_weights(b, MuonSGD(b.parameters(), **kwargs))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)


def test_filters_take_orthogonalised_steps_of_muon_lr_and_keep_their_norm():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, bias=True)
    optimizer = MuonSGD(conv.parameters(), lr=0.1, muon_lr=0.05, muon_momentum=0.0)
    assert [g["muon"] for g in optimizer.param_groups] == [False, True]
    conv(torch.randn(4, 3, 6, 6)).square().mean().backward()
    before = conv.weight.detach().clone()
    normalised = before * (len(before) ** 0.5 / before.norm())
    optimizer.step()
    step = ((normalised - conv.weight) / 0.05).reshape(8, -1)
    singular = torch.linalg.svdvals(step)
    assert singular.min() > 0.3 and singular.max() < 1.6  # every direction moves by about the same amount
    torch.testing.assert_close(conv.weight.norm(), torch.tensor(8**0.5), rtol=0.05, atol=0)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 64), cols=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_orthogonalize_flattens_the_spectrum_of_any_shape(rows, cols, seed):
    # A gradient with singular values spread over 0.2-1 (times any scale) comes out with all of
    # them near 1 (Newton-Schulz as tuned lands them in about 0.5-1.5), in the same directions.
    generator = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator))
    spread = 0.2 + 0.8 * torch.rand(k, generator=generator)
    scale = 10 ** (8 * torch.rand(1, generator=generator).item() - 4)
    g = scale * (u * spread) @ v.T
    out = orthogonalize(g, steps=5)
    assert out.shape == g.shape and torch.isfinite(out).all()
    singular = torch.linalg.svdvals(out)
    assert singular.max() < 1.6 and singular.min() > 0.4
    torch.testing.assert_close(u.T @ out @ v, torch.diag(torch.diagonal(u.T @ out @ v)), atol=1e-3, rtol=0)


def test_schedulers_scale_both_parts_and_group_ratios_are_kept():
    model = ImageClassifier(AirbenchNet(widths=[8, 8, 8]), bias_lr_scale=4.0)
    groups = model.parameter_groups(lr=0.1, weight_decay=0.0)
    optimizer = MuonSGD(groups, lr=0.1, muon_lr=0.2)
    lrs = sorted((g["muon"], g["lr"]) for g in optimizer.param_groups)
    assert lrs == [(False, 0.1), (False, pytest.approx(0.4)), (True, 0.2)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.05, 0.1, 0.2])
    del scheduler


@pytest.mark.parametrize("kwargs", [{"lr": -1}, {"muon_momentum": 1.0}, {"ns_steps": 0}, {"weight_decay": -0.1}])
def test_bad_settings_name_the_option(kwargs):
    with pytest.raises(ValueError, match="--optimizer."):
        MuonSGD(nn.Linear(2, 2).parameters(), **kwargs)
