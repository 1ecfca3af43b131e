"""Losses: reference values, limits, and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsi_pipeline.train.losses import (bce_adversarial_loss, cycle_loss, dice_coefficient, dice_loss,
                                       feature_preserving_loss, focal_loss, identity_loss, lsgan_loss)


def test_focal_multiclass_reduces_to_cross_entropy_and_downweights_easy_examples():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=gen)
    target = torch.randint(0, 3, (16,), generator=gen)
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    w = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(focal_loss(logits, target, gamma=0.0, alpha=w, reduction="sum"),
                          F.cross_entropy(logits, target, weight=w, reduction="sum"))
    # hand-computed value for one example: p_t = softmax([2, 0])[0]
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)[0]
    expected = -((1 - p) ** 2) * torch.log(p)
    assert torch.allclose(focal_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0])), expected)
    easy = focal_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([0]))
    hard = focal_loss(torch.tensor([[-1.0, 1.0]]), torch.tensor([0]))
    assert easy < 1e-6 < hard


def test_focal_binary_matches_bce_at_gamma_zero_and_segmentation_shapes():
    logits = torch.randn(2, 1, 5, 7)
    target = (torch.rand(2, 1, 5, 7) > 0.5).float()
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.binary_cross_entropy_with_logits(logits, target))
    weighted = focal_loss(logits, target, gamma=0.0, alpha=0.25, reduction="none")
    plain = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(weighted, plain * torch.where(target > 0, 0.25, 0.75))
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)


def test_gan_losses():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert lsgan_loss(ones, True) == 0 and lsgan_loss(ones, False) == 1 and lsgan_loss(zeros, True) == 1
    big = torch.full((3, 1), 20.0)
    assert bce_adversarial_loss(big, True) < 1e-6 and bce_adversarial_loss(big, False) > 19
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert torch.isclose(cycle_loss(a, b), torch.tensor(5.0)) and torch.isclose(identity_loss(a, b), torch.tensor(2.5))


def test_feature_preserving_kl():
    f = torch.randn(4, 8, requires_grad=True)
    g = torch.randn(4, 8)
    assert feature_preserving_loss(g, g) == 0
    loss = feature_preserving_loss(f, g)
    expected = (torch.softmax(g, 1) * (torch.log_softmax(g, 1) - torch.log_softmax(f, 1))).sum(1).mean()
    assert loss > 0 and torch.allclose(loss, expected)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        feature_preserving_loss(torch.zeros(4, 8), torch.zeros(4, 7))


def test_dice():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    assert torch.allclose(dice_coefficient(mask, mask), torch.ones(2))
    half = mask.clone()
    half[:, :, 2:4] = 0  # 8 of 16 pixels
    assert torch.allclose(dice_coefficient(half, mask), torch.full((2,), 2 * 8 / 24), atol=1e-5)
    assert dice_loss(torch.where(mask > 0, 20.0, -20.0), mask) < 1e-4
    assert dice_loss(torch.where(mask > 0, -20.0, 20.0), mask) > 0.9
