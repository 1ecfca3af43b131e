"""CycleGAN self-adversarial augmentation (METHODS.md section 4) as a batch transform for segmentation training.

A CycleGAN hides the information it needs to invert a translation as near-invisible noise; perturbing the
intermediate image breaks that code and the back-translation invents a plausible new stain appearance. For a
training sample ``b`` in stain B, with probability ``p``::

    a' = G_BA(b);   a' += N(0, sigma),  sigma ~ U(0, eps];   b~ = G_AB(a')

Images here are float ``(N, 3, H, W)`` in [0, 1] (what the segmenter sees); the generators work in [-1, 1] (tanh),
so the noise ``sigma`` is in the generators' units, as in the paper. Masks are untouched (geometry is preserved).

>>> from wsi_pipeline.models import registry
>>> g = lambda: registry.define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})
>>> aug = SelfAdversarialAugment(g(), g(), p=1.0, eps=0.05)
>>> aug(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from ..config import FrozenConfig
from ..errors import WeightsError
from ..models.registry import load_model


class SelfAdversarialConfig(FrozenConfig):
    """Where the two generators are and how strongly to perturb. ``g_ab``: A -> B (B = the training stain)."""

    g_ab: str = Field(description="weights of G_AB (translates into the training stain B)")
    g_ba: str = Field(description="weights of G_BA (translates the training stain B into A)")
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a sample is augmented (paper: 0.5)")
    eps: float = Field(0.05, gt=0.0, description="upper bound of the noise sigma (paper's best: 0.05)")
    g_ab_sha256: str | None = None
    g_ba_sha256: str | None = None


class SelfAdversarialAugment(nn.Module):
    """Self-adversarial transform; the generators are frozen and run without gradients, in eval mode."""

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module, *, p: float = 0.5, eps: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p}: expected a probability in [0, 1]")
        if eps <= 0:
            raise ValueError(f"eps={eps}: must be > 0 (sigma is drawn from (0, eps])")
        self.g_ab, self.g_ba = g_ab.eval().requires_grad_(False), g_ba.eval().requires_grad_(False)
        self.p, self.eps = float(p), float(eps)

    @classmethod
    def from_config(cls, config: SelfAdversarialConfig, *, device: torch.device | str = "cpu"
                    ) -> SelfAdversarialAugment:
        """Load both generators through the registry (checksums checked); ``WeightsError`` names a bad file."""
        nets = []
        for path, digest in ((config.g_ab, config.g_ab_sha256), (config.g_ba, config.g_ba_sha256)):
            net, record = load_model(Path(path), expected_sha256=digest, map_location=device)
            if record.arch != "cyclegan_generator":
                raise WeightsError(f"{path}: arch {record.arch!r} is not a cyclegan_generator")
            nets.append(net)
        return cls(nets[0], nets[1], p=config.p, eps=config.eps)

    def train(self, mode: bool = True) -> SelfAdversarialAugment:
        # the generators stay in eval mode whatever the enclosing module does (frozen statistics)
        super().train(mode)
        self.g_ab.eval()
        self.g_ba.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (a new tensor; ``images`` is left as is). ``generator`` seeds the draws (CPU RNG)."""
        if images.ndim != 4:
            raise ValueError(f"images shape {tuple(images.shape)}: expected (N, C, H, W)")
        n = images.shape[0]
        chosen = torch.rand(n, generator=generator) < self.p
        out = images.clone()
        if not bool(chosen.any()):
            return out
        idx = chosen.nonzero().flatten().to(images.device)
        b = images.index_select(0, idx) * 2.0 - 1.0
        a = self.g_ba(b)
        # sigma ~ U(0, eps]: 1 - U[0, 1) lies in (0, 1]
        sigma = self.eps * (1.0 - torch.rand(len(idx), generator=generator))
        noise = torch.randn(a.shape, generator=generator) * sigma.view(-1, 1, 1, 1)
        b_tilde = self.g_ab(a + noise.to(a.device, a.dtype))
        out[idx] = ((b_tilde.to(images.dtype) + 1.0) / 2.0).clamp_(0.0, 1.0)
        return out


__all__ = ["SelfAdversarialAugment", "SelfAdversarialConfig"]
