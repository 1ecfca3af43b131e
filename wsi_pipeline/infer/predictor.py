"""Torch adapter for :func:`~wsi_pipeline.infer.blend.predict_tiled`: device, AMP, memory format, normalisation.

``TorchPredictor(module)`` is a ``model_fn``: numpy ``(N, C, h, w)`` batches (uint8 or float) in, float32 numpy
``(N, C_out, h, w)`` out. On CUDA it uses bf16 autocast and channels_last (tensor cores want NHWC); on CPU plain
float32: on the reference host (AVX2, no AVX-512 BF16) bf16 autocast ran the segmenter 2-3x and the generators
30-160x slower and changed their outputs (segmentation Dice 0.992 against float32, below the 0.995 we require), and
channels_last gave no steady gain (``wsi-pipeline bench precision``, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

Activation = Literal["none", "sigmoid", "softmax"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchPredictor:
    """Wrap an ``nn.Module`` as a batch function for tiled inference.

    Normalisation: ``x * scale``, then ``(x - mean) / std`` per channel when given (defaults map uint8 to [0, 1]).
    ``activation`` is applied to the logits (``"softmax"`` over channels, ``"sigmoid"`` elementwise). The module is
    moved to the device and put in eval mode (in place, as ``nn.Module.to`` does).

        >>> pred = TorchPredictor(nn.Conv2d(3, 2, 3, padding=1), activation="softmax")
        >>> pred(np.zeros((1, 3, 8, 8), np.uint8)).shape
        (1, 2, 8, 8)
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        device: str | torch.device = "auto",
        amp: bool | None = None,
        channels_last: bool | None = None,
        scale: float = 1.0 / 255.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        activation: Activation = "none",
    ) -> None:
        if activation not in ("none", "sigmoid", "softmax"):
            raise ValueError(f"activation={activation!r}: expected 'none', 'sigmoid' or 'softmax'")
        self.device = resolve_device(device)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if amp is None else bool(amp)
        # bf16 where the GPU supports it (Ampere+); fp16 autocast otherwise; bf16 is CPU autocast's only choice
        if on_cuda and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
        else:
            self.amp_dtype = torch.bfloat16
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.scale = float(scale)
        self.activation = activation
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32, device=self.device)
        module = module.to(self.device).eval()
        if self.channels_last:
            # Module.to accepts memory_format at run time; torch's overload stubs leave it out
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) * self.scale
        if self._mean is not None:
            x = x - self._mean.view(1, -1, 1, 1)
        if self._std is not None:
            x = x / self._std.view(1, -1, 1, 1)
        return x

    @torch.inference_mode()
    def forward_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Device-side forward of a raw (un-normalised) ``NCHW`` tensor; returns float32 on the device."""
        x = self._normalise(batch.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            y = self.module(x)
        y = y.float()
        if self.activation == "sigmoid":
            y = torch.sigmoid(y)
        elif self.activation == "softmax":
            y = torch.softmax(y, dim=1)
        return y

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return self.forward_tensor(tensor).cpu().numpy()


def measure_receptive_radius(module: nn.Module, in_channels: int, *, probe: int = 129) -> int:
    """Receptive-field radius of a convolutional ``module`` (pixels), from the gradient of the centre output.

    Measured, not derived from the architecture, so it holds for any fully-convolutional net. A radius of
    ``probe // 2`` means "at least that large": then use a margin from the model's configuration instead.
    """
    if probe < 3 or probe % 2 == 0:
        raise ValueError(f"probe={probe}: must be an odd size >= 3")
    module = module.eval()
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # random input so ReLUs are active almost everywhere (a zero input can hide parts of the field)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, in_channels, probe, probe), generator=gen, dtype=torch.float32).to(device).requires_grad_(True)
    y = module(x)
    c = probe // 2
    y[:, :, c, c].sum().backward()
    assert x.grad is not None
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
    if touched.numel() == 0:
        return 0
    return int((touched - c).abs().max().item())
