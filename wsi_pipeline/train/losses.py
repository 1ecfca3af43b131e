"""Losses of the four papers: focal (G2C), LSGAN + cycle + identity (CycleGAN), BCE adversarial (multi-level
segmentation, SST), feature-preserving KL (SST), and Dice.

All take logits where a sigmoid/softmax is involved (numerically stable) and return a scalar mean by default.

>>> logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
>>> float(focal_loss(logits, torch.tensor([0, 1]), gamma=0.0)) == float(F.cross_entropy(logits, torch.tensor([0, 1])))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


def _reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction={reduction!r}: expected 'mean', 'sum' or 'none'")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0,
               alpha: float | Sequence[float] | torch.Tensor | None = None,
               reduction: Reduction = "mean") -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``-alpha_t (1 - p_t)**gamma log p_t``; ``gamma=0`` is (weighted) cross-entropy.

    Multi-class: ``logits`` (N, C, ...) and integer ``target`` (N, ...); ``alpha`` one weight per class.
    Binary: ``logits`` and float ``target`` of the same shape; ``alpha`` weighs the positives (1 - alpha negatives).

    >>> focal_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0])) < 1e-3
    tensor(True)
    """
    if gamma < 0:
        raise ValueError(f"gamma={gamma}: must be >= 0")
    if logits.shape == target.shape and target.is_floating_point():
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        log_pt = target * log_p + (1 - target) * log_not_p  # soft targets allowed
        loss = -((1 - log_pt.exp()) ** gamma) * log_pt
        if alpha is not None:
            if not isinstance(alpha, (int, float)):
                raise ValueError("binary focal loss takes a scalar alpha (weight of the positive class)")
            loss = loss * (alpha * target + (1 - alpha) * (1 - target))
        return _reduce(loss, reduction)
    if logits.ndim != target.ndim + 1 or target.is_floating_point():
        raise ValueError(f"logits {tuple(logits.shape)} / target {tuple(target.shape)}: expected (N, C, ...) "
                         f"logits with integer (N, ...) targets, or matching shapes with float targets")
    log_pt = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        weights = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        if weights.ndim != 1 or weights.numel() != logits.shape[1]:
            raise ValueError(f"alpha has {weights.numel()} entries, expected one per class ({logits.shape[1]})")
        loss = loss * weights[target.long()]
    return _reduce(loss, reduction)


def grouped_focal_loss(logits: torch.Tensor, groups: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0,
                       reduction: Reduction = "mean") -> torch.Tensor:
    """Focal loss of a coarse label over fine classes: ``p_t`` = the summed softmax of the target's group.

    ``groups`` (G, C) is a 0/1 matrix, row g marking the classes of coarse label g; ``target`` (N,) holds coarse
    labels. E.g. three classes noa/ss/gs with labels "not GS" = {noa, ss} and "GS" = {gs}: the real glomeruli's
    labels train a three-class head without saying how "not GS" splits into noa and ss.

    >>> g = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> x = torch.tensor([[2.0, 0.5, -1.0]])
    >>> round(float(grouped_focal_loss(x, g, torch.tensor([0]), gamma=0.0)), 4)  # -log(p_noa + p_ss)
    0.0399
    """
    if groups.ndim != 2 or groups.shape[1] != logits.shape[1]:
        raise ValueError(f"groups {tuple(groups.shape)}: expected (G, {logits.shape[1]})")
    log_p = F.log_softmax(logits, dim=1)
    mask = groups.to(logits)[target.long()]  # (N, C)
    log_pt = torch.logsumexp(log_p + torch.log(mask.clamp_min(1e-30)), dim=1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    return _reduce(loss, reduction)


def lsgan_loss(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss (CycleGAN's default): MSE of the discriminator output to 1 (real) or 0 (fake).

    >>> float(lsgan_loss(torch.ones(2, 1, 3, 3), True))
    0.0
    """
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


def bce_adversarial_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Vanilla GAN / domain-classifier loss: BCE with logits against all-real or all-fake (source/target) labels."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if target_is_real else 0.0))


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor, *, weight: float = 10.0) -> torch.Tensor:
    """CycleGAN cycle-consistency, ``weight * |G_BA(G_AB(a)) - a|_1`` (lambda = 10 in Zhu et al.)."""
    return weight * F.l1_loss(reconstructed, real)


def identity_loss(real: torch.Tensor, same: torch.Tensor, *, weight: float = 5.0) -> torch.Tensor:
    """CycleGAN identity loss, ``weight * |G_AB(b) - b|_1`` (Zhu et al.: 0.5 * lambda = 5)."""
    return weight * F.l1_loss(same, real)


def feature_preserving_loss(generated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """SST feature-preserving loss: KL(softmax(original) || softmax(generated)) of GAP features (B, C), batch mean.

    >>> f = torch.randn(4, 16)
    >>> float(feature_preserving_loss(f, f)) == 0.0
    True
    """
    if generated.shape != original.shape or generated.ndim != 2:
        raise ValueError(f"features {tuple(generated.shape)} / {tuple(original.shape)}: expected equal (B, C)")
    return F.kl_div(F.log_softmax(generated, dim=1), F.log_softmax(original, dim=1), log_target=True,
                    reduction="batchmean")


def dice_coefficient(probabilities: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice per sample, ``2|P.T| / (|P| + |T|)`` over all but the batch axis; 1 when both are empty.

    >>> dice_coefficient(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    tensor([1.])
    """
    dims = tuple(range(1, probabilities.ndim))
    inter = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (2 * inter + eps) / (total + eps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` of ``sigmoid(logits)``, batch mean (eps = 1 smooths empty masks)."""
    return (1 - dice_coefficient(torch.sigmoid(logits), target.to(logits.dtype), eps=eps)).mean()
