"""CPU fast paths per shipped network: bf16 autocast and channels_last against float32, speed and agreement.

    wsi-pipeline bench precision --out bench-out/precision [--rounds 2] [--windows 6] [--all-generators]

Inputs are real: the AIDPATH tiles (``aidpath-tiles``, PAS at about 0.5 um/px) reduced to the segmentation
resolution and set 2 x 2 into 512-px windows (the job's window scale) for the segmenter and the PAS -> stain
generators; the AIDPATH crops (``aidpath-crops``), cut as the job cuts them, for G2C. Agreement is against float32
on the same inputs: segmentation Dice of the thresholded masks (kept if >= 0.995), generator uint8 outputs (kept if
99.9 % of values are within 2 grey levels), G2C class decisions (kept if all unchanged). Variants run interleaved,
``--rounds`` times, best time kept (a shared host drifts). Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

import numpy as np

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-glomeruli"
VARIANTS = {"fp32": (False, False), "fp32 channels_last": (False, True), "bf16": (True, False),
            "bf16 channels_last": (True, True)}
GENERATORS = ("generator-PAS-HE", "generator-PAS-MASSON", "generator-PAS-PASM")  # the job's whole-slide stains
MORE_GENERATORS = ("generator-real-PAS-HE", "generator-real-PAS-MASSON", "generator-real-PAS-PASM",
                   "generator-real-PAS-CD68")  # same architecture; ``--all-generators``


def seg_windows(tiles: Path, *, mpp_from: float = 0.5, mpp_to: float = 2.0) -> np.ndarray:
    """``(N, 3, 512, 512)`` uint8: every four real tiles, reduced to ``mpp_to``, set 2 x 2 into one window."""
    from PIL import Image

    side = round(1024 * mpp_from / mpp_to)
    small = []
    for path in sorted((tiles / "images").glob("*.png")):
        with Image.open(path) as im:
            small.append(np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BOX)))
    windows = []
    for i in range(0, len(small) - 3, 4):
        top, bottom = np.concatenate(small[i:i + 2], 1), np.concatenate(small[i + 2:i + 4], 1)
        windows.append(np.concatenate([top, bottom], 0).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(windows))


def _best(fn: Callable[[], Any], slot: dict[str, Any]) -> None:
    """Run ``fn`` (already warmed up); keep its output and the best wall time over the rounds in ``slot``."""
    t0 = time.perf_counter()
    slot["out"] = fn()
    slot["s"] = min(slot.get("s", float("inf")), time.perf_counter() - t0)


def tiled_network(make: Callable[[bool, bool], Any], windows: np.ndarray, *, batch: int, rounds: int,
                  agree: Callable[[np.ndarray, np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """A tiled-inference predictor per variant over ``windows``; seconds per window and agreement with fp32."""
    predictors = {v: make(*flags) for v, flags in VARIANTS.items()}
    for p in predictors.values():
        p(windows[:batch])  # warm-up: oneDNN builds its kernels for this shape
    slots: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
    def over_windows(p: Any) -> Callable[[], np.ndarray]:
        return lambda: np.concatenate([p(windows[i:i + batch]) for i in range(0, len(windows), batch)])

    for _ in range(rounds):
        for v, p in predictors.items():
            _best(over_windows(p), slots[v])
    ref = slots["fp32"]
    return {v: {"s_per_window": s["s"] / len(windows), "speedup": ref["s"] / s["s"], **agree(ref["out"], s["out"])}
            for v, s in slots.items()}


def dice_agreement(threshold: float) -> Callable[[np.ndarray, np.ndarray], dict[str, Any]]:
    def agree(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
        a, b = ref >= threshold, out >= threshold
        dice = 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
        return {"dice_vs_fp32": round(dice, 5), "keeps_outputs": dice >= 0.995}
    return agree


def uint8_agreement(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    a = np.rint(np.clip(ref, 0, 1) * 255).astype(np.int16)
    b = np.rint(np.clip(out, 0, 1) * 255).astype(np.int16)
    diff = np.abs(a - b)
    within = float((diff <= 2).mean())
    return {"mean_abs_levels": round(float(diff.mean()), 4), "max_abs_levels": int(diff.max()),
            "within_2_levels": round(within, 6), "keeps_outputs": within >= 0.999}


def g2c_network(rounds: int, *, n_crops: int | None = None) -> dict[str, Any]:
    """G2C (generators + classifier) on the real crops (``n_crops`` evenly spaced ones, default all): seconds per
    crop and decisions changed against fp32."""
    import torch

    from workflows.job_config import JobConfig
    from workflows.slide_plan import classifier_settings
    from wsi_pipeline.infer.classify import decide, g2c_probabilities
    from wsi_pipeline.train.data_real import RealCropsConfig, read_real_crops

    cls = classifier_settings(JobConfig().classify, base_dir=None)
    model = cls.load()
    crops = read_real_crops(RealCropsConfig(root=str(DATA / "aidpath-crops"), size=cls.spec.size,
                                            margin=cls.spec.margin)).images
    if n_crops is not None and n_crops < len(crops):
        crops = crops[np.linspace(0, len(crops) - 1, n_crops).round().astype(int)]
    modules = [*model.generators.values(), model.classifier]
    slots: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}

    def run(amp: bool, channels_last: bool) -> list[str]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for m in modules:
            m.to(memory_format=fmt)  # type: ignore[call-overload]
        probs = g2c_probabilities(crops, model, batch_size=cls.batch_size, device="cpu", amp=amp)
        return decide(probs, model.classes, gs_threshold=cls.gs_threshold)

    for flags in VARIANTS.values():
        g2c_probabilities(crops[:cls.batch_size], model, batch_size=cls.batch_size, device="cpu", amp=flags[0])
    for _ in range(rounds):
        for v, flags in VARIANTS.items():
            _best(functools.partial(run, *flags), slots[v])
    run(False, False)  # leave the cached model as the job uses it
    ref = slots["fp32"]
    out = {}
    for v, s in slots.items():
        changed = sum(a != b for a, b in zip(ref["out"], s["out"]))
        out[v] = {"s_per_window": s["s"] / len(crops), "speedup": ref["s"] / s["s"], "decisions_changed": changed,
                  "crops": len(crops), "keeps_outputs": changed == 0}
    return out


def measure(*, rounds: int, batch: int, windows_n: int, generators: tuple[str, ...],
            networks: tuple[str, ...] = ("segmenter", "generators", "g2c"), n_crops: int | None = None) -> dict[str, Any]:
    import torch

    from wsi_pipeline.infer import TorchPredictor
    from wsi_pipeline.infer.translate import SignedToUnit
    from wsi_pipeline.weights import WeightsRef, default_weights, file_sha256, load_checked

    def loaded(name: str, arch: tuple[str, ...]) -> Any:
        path = default_weights(name)
        return load_checked(WeightsRef(path, file_sha256(path), False), arch=arch)

    windows = seg_windows(DATA / "aidpath-tiles")[:windows_n]
    results: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                                        "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]},
                               "windows": list(windows.shape), "networks": {}}
    if "segmenter" in networks:
        seg, record = loaded("segmenter", ("unet_resnet34",))
        threshold = float(record.metadata.get("threshold", 0.5))
        results["networks"]["segmenter"] = tiled_network(
            lambda amp, cl: TorchPredictor(seg, device="cpu", amp=amp, channels_last=cl, activation="sigmoid"),
            windows, batch=batch, rounds=rounds, agree=dice_agreement(threshold))
        print("segmenter", results["networks"]["segmenter"], flush=True)
    for name in generators if "generators" in networks else ():
        gen, _ = loaded(name, ("cyclegan_generator",))

        def make(amp: bool, cl: bool, g: Any = gen) -> TorchPredictor:
            return TorchPredictor(SignedToUnit(g), device="cpu", amp=amp, channels_last=cl)

        results["networks"][name] = tiled_network(make, windows, batch=batch, rounds=rounds, agree=uint8_agreement)
        print(name, results["networks"][name], flush=True)
    if "g2c" in networks:
        results["networks"]["g2c"] = g2c_network(rounds, n_crops=n_crops)
    results["host"]["load_avg_1m_end"] = os.getloadavg()[0]
    return results


def to_markdown(r: dict[str, Any]) -> str:
    h = r["host"]
    lines = [f"# CPU precision paths ({h['cpus']} CPUs, {h['cpu_capability']}, mkldnn bf16 {h['mkldnn_bf16']}, "
             f"torch {h['torch']}, {h['threads']} threads, load {h['load_avg_1m']:.1f} -> "
             f"{h.get('load_avg_1m_end', 0):.1f})", "",
             "| network | variant | s / window (crop) | speed vs fp32 | agreement with fp32 | keeps outputs |",
             "|---|---|---|---|---|---|"]
    for net, variants in r["networks"].items():
        for v, m in variants.items():
            agree = ", ".join(f"{k} {m[k]}" for k in ("dice_vs_fp32", "mean_abs_levels", "max_abs_levels",
                                                      "within_2_levels", "decisions_changed") if k in m)
            lines.append(f"| {net} | {v} | {m['s_per_window']:.4f} | {m['speedup']:.2f}x | {agree} | "
                         f"{'yes' if m['keeps_outputs'] else 'no'} |")
    return "\n".join(lines) + "\n"


@click.command(name="precision")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/precision"),
              show_default=True, help="Results folder (results.json, results.md).")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Interleaved rounds per variant (best time kept).")
@click.option("--batch", type=click.IntRange(min=1), default=3, show_default=True, help="Windows per forward.")
@click.option("--windows", type=click.IntRange(1, 6), default=6, show_default=True,
              help="512-px windows cut from real tiles (at most 6).")
@click.option("--all-generators", is_flag=True, help="Also the real-stain generators.")
@click.option("--networks", default="segmenter,generators,g2c", show_default=True,
              help="Comma-separated subset of the networks to measure.")
@click.option("--crops", type=click.IntRange(min=1), default=None,
              help="G2C: this many evenly spaced real crops [default: all 484].")
@click.option("--variants", default=",".join(VARIANTS), show_default=True,
              help="Comma-separated subset of the precision / memory-layout variants.")
def command(**kw: Any) -> None:
    """CPU fast paths per shipped network: bf16 autocast and channels_last against float32 (speed, agreement)."""
    _run(SimpleNamespace(**kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench precision")


def _run(args: Any) -> None:
    chosen = ["fp32", *(v.strip() for v in args.variants.split(",") if v.strip() != "fp32")]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}", param_hint="--variants")
    for v in list(VARIANTS):
        if v not in chosen:
            del VARIANTS[v]
    gens = GENERATORS + (MORE_GENERATORS if args.all_generators else ())
    results = measure(rounds=args.rounds, batch=args.batch, windows_n=args.windows, generators=gens,
                      networks=tuple(args.networks.split(",")), n_crops=args.crops)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
