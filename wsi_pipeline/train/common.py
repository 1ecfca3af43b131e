"""What every training loop shares: seeding, device choice, resumable checkpoints, per-epoch JSON metrics.

A run lives in one folder::

    run_dir/checkpoint.pt     last state (models, optimisers, schedulers, RNGs, epoch) - loaded weights_only
    run_dir/metrics.json      list of per-epoch metric dicts (rewritten atomically each epoch)
    run_dir/config.json       the training config that produced the run

>>> import tempfile, torch
>>> run = RunState(tempfile.mkdtemp())
>>> net = torch.nn.Linear(2, 1); opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> run.resume(models={"net": net}, optimizers={"opt": opt})
0
>>> run.end_epoch(0, {"loss": 1.0}, models={"net": net}, optimizers={"opt": opt})
>>> RunState(run.run_dir).resume(models={"net": net}, optimizers={"opt": opt})
1
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..atomic import atomic_output, atomic_write_json
from ..errors import WeightsError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(preference: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; or an explicit ``"cpu"``/``"cuda"``/``"cuda:1"``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (Hopper/Ampere run it at full rate); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class RunState:
    """Resumable state of one training run in ``run_dir`` (see the module docstring for the layout)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.metrics_path = self.run_dir / "metrics.json"
        self.history: list[dict[str, Any]] = []

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.run_dir / "config.json", dict(config))

    def resume(self, *, models: Mapping[str, torch.nn.Module], optimizers: Mapping[str, Any] = {},
               schedulers: Mapping[str, Any] = {}) -> int:
        """Load the last checkpoint into the given objects; returns the epoch to start from (0 when fresh)."""
        if not self.checkpoint_path.exists():
            return 0
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code; a torn file fails to parse
            raise WeightsError(f"{self.checkpoint_path}: cannot resume: {exc}") from None
        for group, objects in (("models", models), ("optimizers", optimizers), ("schedulers", schedulers)):
            for name, obj in objects.items():
                if name not in state[group]:
                    raise WeightsError(f"{self.checkpoint_path}: checkpoint has no {group[:-1]} {name!r}")
                obj.load_state_dict(state[group][name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), int(rng["numpy_pos"]), 0, 0.0))
        random.seed(int(rng["python_seed"]))
        if self.metrics_path.exists():
            self.history = json.loads(self.metrics_path.read_text())
        return int(state["epoch"]) + 1

    def end_epoch(self, epoch: int, metrics: Mapping[str, float], *, models: Mapping[str, torch.nn.Module],
                  optimizers: Mapping[str, Any] = {}, schedulers: Mapping[str, Any] = {}) -> None:
        """Record ``metrics`` for ``epoch`` and checkpoint everything atomically (metrics first, state last)."""
        self.history = [h for h in self.history if h.get("epoch") != epoch]
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        atomic_write_json(self.metrics_path, self.history)
        # legacy=True (the default) returns the tuple; the stubs type it as tuple | dict
        _, keys, pos, _, _ = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
        state = {
            "epoch": epoch,
            "models": {k: m.state_dict() for k, m in models.items()},
            "optimizers": {k: _plain(o.state_dict()) for k, o in optimizers.items()},
            "schedulers": {k: _plain(s.state_dict()) for k, s in schedulers.items()},
            "rng": {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                    "numpy_pos": pos, "python_seed": random.randrange(2**31)},
        }
        with atomic_output(self.checkpoint_path) as tmp:
            torch.save(state, tmp)


def _plain(obj: Any) -> Any:
    """NumPy scalars -> Python numbers (a schedule lambda returning ``np.float64`` would otherwise put a pickled
    NumPy object into the checkpoint, which ``weights_only`` loading refuses)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def infinite(loader: Any) -> Iterator[Any]:
    """Cycle a data loader forever (for unpaired/adversarial loops that draw from two sources)."""
    while True:
        yield from loader
