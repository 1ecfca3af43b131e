"""The job's GPU path for the shipped segmenter: agreement with the CPU float32 path, and speed per variant.

    python scripts/gpu_precision_check.py --tiles PACK/aidpath-tiles --out OUT

On a CUDA host, :class:`~wsi_pipeline.infer.predictor.TorchPredictor` runs bf16 autocast with channels_last by
default. This checks that default (and fp32, each with and without channels_last) against float32 on the CPU on real
input: the AIDPATH tiles at the segmentation resolution set 2 x 2 into 512-px windows (``bench precision``'s
``seg_windows``), masks compared by Dice (the CPU bench keeps a variant at >= 0.995). Speed: windows per second at
batch 8 and 64 (the inputs repeated), CUDA-synchronised, best of 5. Writes ``OUT/gpu-precision.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_pipeline.infer.predictor import TorchPredictor  # noqa: E402
from wsi_pipeline.models.registry import load_model  # noqa: E402
from wsi_pipeline.weights import default_weights  # noqa: E402
from workflows.bench.precision import dice_agreement, seg_windows  # noqa: E402


def timed(pred: TorchPredictor, x: np.ndarray, rounds: int = 5) -> float:
    pred(x[:2])  # warm-up (cuDNN autotune, lazy init)
    best = float("inf")
    for _ in range(rounds):
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pred(x)
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    windows = seg_windows(args.tiles)  # (6, 3, 512, 512) uint8
    model, record = load_model(default_weights("segmenter"))
    agree = dice_agreement(float(record.metadata["threshold"]))  # the CPU bench's mask Dice
    cpu = TorchPredictor(model, device="cpu", amp=False, channels_last=False, activation="sigmoid")
    ref = cpu(windows)
    results: dict[str, dict[str, float]] = {"cpu fp32": {
        "dice_vs_cpu_fp32": 1.0, "windows_per_s_b8": timed(cpu, np.concatenate([windows] * 2)[:8], rounds=2)}}
    big = np.concatenate([windows] * 11)[:64]
    for name, amp, cl in (("cuda bf16 channels_last (job default)", True, True), ("cuda bf16", True, False),
                          ("cuda fp32 channels_last", False, True), ("cuda fp32", False, False)):
        model, _ = load_model(default_weights("segmenter"))
        pred = TorchPredictor(model, device="cuda", amp=amp, channels_last=cl, activation="sigmoid")
        results[name] = {"dice_vs_cpu_fp32": agree(ref, pred(windows))["dice_vs_fp32"],
                         "windows_per_s_b8": timed(pred, big[:8]), "windows_per_s_b64": timed(pred, big)}
        print(name, results[name], flush=True)
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "windows": int(len(windows)),
            "window_px": 512, "mpp": float(record.metadata["mpp"]), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-precision.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
