"""CycleGAN augmentations as batch transforms for segmentation training: the self-adversarial one (METHODS.md
section 4) and stain transfer into other real stains.

A CycleGAN hides the information it needs to invert a translation as near-invisible noise; perturbing the
intermediate image breaks that code and the back-translation invents a plausible new stain appearance. For a
training sample ``b`` in stain B, with probability ``p``::

    a' = G_BA(b);   a' += N(0, sigma),  sigma ~ U(0, eps];   b~ = G_AB(a')

The paper uses one partner stain A; with several (``pairs``: PAS <-> H&E, silver, Sirius Red, CD68 for a PAS
segmenter) each augmented sample goes round one pair drawn at random, so the new appearances stay PAS-like while the
round trip's invented variation comes from every partner.

:class:`StainTransferAugment` is the translation half of it for a segmenter labelled in one stain only: with
probability ``p`` a sample goes through one PAS -> X generator drawn at random (X: the real stains the generators
learnt from unlabelled patches), its input perturbed by the same ``N(0, sigma)``, so the network also sees the
labelled glomeruli in H&E-, silver-, Sirius Red- or IHC-like appearance. It needs only the PAS -> X direction.

Images here are float ``(N, 3, H, W)`` in [0, 1] (what the segmenter sees); the generators work in [-1, 1] (tanh),
so the noise ``sigma`` is in the generators' units, as in the paper. Masks are untouched (geometry is preserved).

>>> from wsi_pipeline.models import registry
>>> g = lambda: registry.define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})
>>> aug = SelfAdversarialAugment(g(), g(), p=1.0, eps=0.05)
>>> aug(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import FrozenConfig
from ..errors import WeightsError
from ..models.registry import load_model
from ..weights import resolve_weights


class GeneratorPair(FrozenConfig):
    """One CycleGAN's two generators: ``g_ab`` A -> B (B = the training stain), ``g_ba`` B -> A."""

    g_ab: str = Field(description="weights of G_AB (translates into the training stain B)")
    g_ba: str = Field(description="weights of G_BA (translates the training stain B into A)")
    g_ab_sha256: str | None = None
    g_ba_sha256: str | None = None


_PAIR_KEYS = ("g_ab", "g_ba", "g_ab_sha256", "g_ba_sha256")  # one pair written flat in SelfAdversarialConfig


class SelfAdversarialConfig(FrozenConfig):
    """Where the generators are and how strongly to perturb: ``pairs`` (one drawn per augmented sample), or the
    paper's one pair written flat as ``g_ab`` / ``g_ba`` (with optional ``g_ab_sha256`` / ``g_ba_sha256``)."""

    pairs: tuple[GeneratorPair, ...] = Field(min_length=1, description="the CycleGANs, one drawn per sample")
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a sample is augmented (paper: 0.5)")
    eps: float = Field(0.05, gt=0.0, description="upper bound of the noise sigma (paper's best: 0.05)")

    @model_validator(mode="before")
    @classmethod
    def _one_pair_flat(cls, data: Any) -> Any:
        """``g_ab: ..., g_ba: ...`` -> ``pairs: [{g_ab: ..., g_ba: ...}]``; never both forms, never neither."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in _PAIR_KEYS if k in data}
        if bool(flat) == ("pairs" in data) or (flat and not {"g_ab", "g_ba"} <= flat.keys()):
            raise ValueError("augment: give either both g_ab and g_ba (one CycleGAN) or pairs (several), not both")
        if not flat:
            return data
        return {**{k: v for k, v in data.items() if k not in _PAIR_KEYS}, "pairs": (flat,)}


class StainTransferConfig(FrozenConfig):
    """PAS -> X generators (shipped names or checkpoint paths) and how often / how strongly to use them."""

    generators: tuple[str, ...] = Field(min_length=1, description="weights of the PAS -> X generators")
    p: float = Field(0.4, ge=0.0, le=1.0, description="probability that a sample is translated")
    eps: float = Field(0.05, ge=0.0, description="upper bound of the input noise sigma (generator units)")


def _load_generator(ref: str, digest: str | None, device: torch.device | str) -> nn.Module:
    net, record = load_model(Path(ref), expected_sha256=digest, map_location=device)
    if record.arch != "cyclegan_generator":
        raise WeightsError(f"{ref}: arch {record.arch!r} is not a cyclegan_generator")
    return net


class _FrozenGeneratorAugment(nn.Module):
    """Shared parts: every submodule (the generators) stays in eval mode whatever the enclosing module does (frozen
    statistics), and the per-sample draw."""

    p: float

    def train(self, mode: bool = True) -> _FrozenGeneratorAugment:
        super().train(mode)
        for net in self.children():
            net.eval()
        return self

    def _chosen(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Which samples of an ``(N, C, H, W)`` batch are augmented (bool ``(N,)``, drawn with probability ``p``)."""
        if images.ndim != 4:
            raise ValueError(f"images shape {tuple(images.shape)}: expected (N, C, H, W)")
        return torch.rand(images.shape[0], generator=generator) < self.p


class SelfAdversarialAugment(_FrozenGeneratorAugment):
    """Self-adversarial transform; the generators are frozen and run without gradients, in eval mode.

    ``SelfAdversarialAugment(g_ab, g_ba)`` is the paper's one partner stain; ``more_pairs`` adds further
    ``(g_ab, g_ba)`` pairs, one drawn at random for each augmented sample.
    """

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module, *, p: float = 0.5, eps: float = 0.05,
                 more_pairs: Sequence[tuple[nn.Module, nn.Module]] = ()) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p}: expected a probability in [0, 1]")
        if eps <= 0:
            raise ValueError(f"eps={eps}: must be > 0 (sigma is drawn from (0, eps])")
        self.g_ab, self.g_ba = g_ab.eval().requires_grad_(False), g_ba.eval().requires_grad_(False)
        self.more_ab = nn.ModuleList(ab.eval().requires_grad_(False) for ab, _ in more_pairs)
        self.more_ba = nn.ModuleList(ba.eval().requires_grad_(False) for _, ba in more_pairs)
        self.p, self.eps = float(p), float(eps)

    @classmethod
    def from_config(cls, config: SelfAdversarialConfig, *, device: torch.device | str = "cpu"
                    ) -> SelfAdversarialAugment:
        """Load every generator through the registry (checksums checked); ``WeightsError`` names a bad file."""
        nets = [(_load_generator(pair.g_ab, pair.g_ab_sha256, device),
                 _load_generator(pair.g_ba, pair.g_ba_sha256, device)) for pair in config.pairs]
        (g_ab, g_ba), *more = nets
        return cls(g_ab, g_ba, p=config.p, eps=config.eps, more_pairs=more)

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(g_ab, g_ba)`` of every partner stain, the first pair first."""
        return [(self.g_ab, self.g_ba), *zip(self.more_ab, self.more_ba)]

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (a new tensor; ``images`` is left as is). ``generator`` seeds the draws (CPU RNG)."""
        chosen = self._chosen(images, generator)
        out = images.clone()
        if not bool(chosen.any()):
            return out
        pairs = self.pairs()
        # one pair: no draw, so the paper's single-partner setting keeps its random stream
        for k, idx in _per_option(chosen, len(pairs), generator, images.device, draw_single=False):
            g_ab, g_ba = pairs[k]
            a = g_ba(images.index_select(0, idx) * 2.0 - 1.0)
            b_tilde = g_ab(_perturb(a, self.eps, generator))
            out[idx] = ((b_tilde.to(images.dtype) + 1.0) / 2.0).clamp_(0.0, 1.0)
        return out


def _per_option(chosen: torch.Tensor, n: int, generator: torch.Generator | None, device: torch.device, *,
                draw_single: bool) -> list[tuple[int, torch.Tensor]]:
    """Split the chosen samples among ``n`` options drawn uniformly per sample: ``(option, indices on device)`` for
    each option that got any. With ``n == 1`` the draw is made only if ``draw_single`` (it keeps a random stream)."""
    which = (torch.randint(n, chosen.shape, generator=generator) if n > 1 or draw_single
             else torch.zeros(chosen.shape, dtype=torch.long))
    groups = [(k, (chosen & (which == k)).nonzero().flatten()) for k in range(n)]
    return [(k, idx.to(device)) for k, idx in groups if len(idx)]


def _perturb(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x + N(0, sigma)`` per sample, sigma ~ U(0, eps] (1 - U[0, 1) lies in (0, 1]); ``x`` itself if eps == 0."""
    if eps <= 0:
        return x
    sigma = eps * (1.0 - torch.rand(len(x), generator=generator))
    noise = torch.randn(x.shape, generator=generator) * sigma.view(-1, 1, 1, 1)
    return x + noise.to(x.device, x.dtype)


class StainTransferAugment(_FrozenGeneratorAugment):
    """Translate a random subset of a PAS batch into other stains with frozen PAS -> X generators.

    >>> from wsi_pipeline.models import registry
    >>> g = lambda: registry.define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})
    >>> aug = StainTransferAugment([g(), g()], p=1.0, eps=0.05)
    >>> aug(torch.rand(3, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 3, 32, 32])
    """

    def __init__(self, generators: list[nn.Module], *, p: float = 0.4, eps: float = 0.05) -> None:
        super().__init__()
        if not generators:
            raise ValueError("generators: need at least one PAS -> X generator")
        if not 0.0 <= p <= 1.0 or eps < 0:
            raise ValueError(f"p={p}, eps={eps}: expected p in [0, 1] and eps >= 0")
        self.generators = nn.ModuleList(g.eval().requires_grad_(False) for g in generators)
        self.p, self.eps = float(p), float(eps)

    @classmethod
    def from_config(cls, config: StainTransferConfig, *, device: torch.device | str = "cpu") -> StainTransferAugment:
        """Shipped names (``generator-real-PAS-HE``) or checkpoint paths; ``WeightsError`` names a bad file."""
        nets = []
        for ref in config.generators:
            resolved = resolve_weights(ref)
            nets.append(_load_generator(str(resolved.path), resolved.sha256, device))
        return cls(nets, p=config.p, eps=config.eps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a ``(N, 3, H, W)`` batch in [0, 1] (a new tensor); ``generator`` seeds the draws (CPU RNG)."""
        chosen = self._chosen(images, generator)
        out = images.clone()
        for k, idx in _per_option(chosen, len(self.generators), generator, images.device, draw_single=True):
            net = self.generators[k]
            x = _perturb(images.index_select(0, idx) * 2.0 - 1.0, self.eps, generator)
            out[idx] = ((net(x).to(images.dtype) + 1.0) / 2.0).clamp_(0.0, 1.0)
        return out


__all__ = ["GeneratorPair", "SelfAdversarialAugment", "SelfAdversarialConfig", "StainTransferAugment",
           "StainTransferConfig"]
