"""The model stage side by side: our ``predict_zarr`` vs MONAI's ``sliding_window_inference`` vs a bare forward.

    wsi-pipeline bench pipeline --model-stage [--side 4096] [--rounds 3] [--model-threads 2]

One input for all: a ``side`` x ``side`` px image at the segmentation resolution (2 um/px) made of the real AIDPATH
PAS tiles, tissue inside an ellipse and glass (white) around it, in a zarr store shaped like the tiling store's
level 0 (``(c, y, x)``, 512-px chunks). Same shipped segmenter, ``--model-threads`` torch threads, gaussian blending,
64 px overlap, batch 8 (the job's defaults row: its own window, batch and tissue mask). Every variant runs in its own
fresh process, interleaved, ``--rounds`` times; the median is reported, with the process's peak RSS. Timed: reading
the store, the forward, blending and writing the uint8 probabilities to a zarr array (MONAI: the whole image read
into memory, one ``sliding_window_inference`` call, written back); not timed: building the model and one warm-up
window. The bare forward is the model alone on MONAI's windows, cut into memory beforehand: the floor.
MONAI is an optional benchmark dependency (``pip install 'wsi-pipeline[bench]'``); without it its row is skipped.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from .common import peak_rss_mib

TILES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-glomeruli" / "aidpath-tiles"
OVERLAP, BATCH, CHUNK = 64, 8, 512


def build_input(folder: Path, *, side: int) -> Path:
    """``folder/input.zarr/0``: the real tiles (at 2 um/px) repeated, rotated and flipped, over an ellipse of
    tissue on white glass; ``folder/input.zarr/tissue.npy``: the chunks holding tissue."""
    import zarr
    from PIL import Image

    store = folder / "input.zarr"
    if (store / "tissue.npy").is_file():
        return store
    tiles = []
    for path in sorted((TILES / "images").glob("*.png")):
        with Image.open(path) as im:
            tiles.append(np.asarray(im.convert("RGB").resize((256, 256), Image.Resampling.BOX)))
    img = np.full((side, side, 3), 255, np.uint8)
    n = -(-side // 256)
    for i in range(n * n):
        t = np.rot90(tiles[i % len(tiles)], k=i // len(tiles))
        r, c = divmod(i, n)
        block = img[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256]
        block[:] = t[:block.shape[0], :block.shape[1]]
    yy, xx = np.mgrid[:side, :side]
    glass = ((yy - side / 2) / (0.45 * side)) ** 2 + ((xx - side / 2) / (0.33 * side)) ** 2 > 1
    img[glass] = 255
    group = zarr.open_group(str(store), mode="w")
    arr = group.create_array("0", shape=(3, side, side), chunks=(3, CHUNK, CHUNK), dtype="uint8", fill_value=255,
                             dimension_names=("c", "y", "x"))
    arr[:] = img.transpose(2, 0, 1)
    g = -(-side // CHUNK)
    tissue = np.array([[not glass[r * CHUNK:(r + 1) * CHUNK, c * CHUNK:(c + 1) * CHUNK].all() for c in range(g)]
                       for r in range(g)])
    np.save(store / "tissue.npy", tissue)
    return store


def _segmenter() -> Any:
    from wsi_pipeline.infer.loaders import segmenter_predictor
    from wsi_pipeline.weights import default_weights, file_sha256

    path = default_weights("segmenter")
    return functools.partial(segmenter_predictor, str(path), file_sha256(path), "cpu")


def _ours(store: Path, out: Path, config: Any, mask: np.ndarray | None) -> dict[str, Any]:
    import zarr

    from wsi_pipeline.infer import cached_predictor, predict_zarr

    factory = _segmenter()
    model = cached_predictor(factory)
    model(np.zeros((1, 3, 64, 64), np.uint8))  # warm-up
    src = zarr.open_array(str(store / "0"), mode="r")
    t0 = time.perf_counter()
    arr = predict_zarr(src, str(out), predictor_factory=factory, config=config, out_channels=1, name="seg",
                       chunk_mask=mask, scheduler="threads")
    seconds = time.perf_counter() - t0
    w = cast(dict[str, int], arr.attrs["windows"])  # zarr types attrs as any JSON value
    return {"s": seconds, "windows": w["forwarded"], "forwarded_px": w["forwarded_px"], "window": config.window,
            "batch": config.batch_size}


def _monai(store: Path, out: Path) -> dict[str, Any]:
    import torch
    import zarr
    from monai.inferers import sliding_window_inference

    model = _segmenter()()
    model(np.zeros((1, 3, 64, 64), np.uint8))
    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model.forward_tensor(x)  # normalises the raw 0..255 values, sigmoid

    t0 = time.perf_counter()
    image = torch.from_numpy(np.asarray(zarr.open_array(str(store / "0"), mode="r")[:])[None]).float()
    with torch.inference_mode():
        prob = sliding_window_inference(image, roi_size=(512, 512), sw_batch_size=BATCH, predictor=forward,
                                        overlap=OVERLAP / 512, mode="gaussian")
    probs = np.asarray(prob)[0] if not isinstance(prob, torch.Tensor) else prob[0].numpy()
    result = np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
    group = zarr.open_group(str(out), mode="a")
    dst = group.create_array("seg", shape=result.shape, chunks=(1, CHUNK, CHUNK), dtype="uint8", overwrite=True)
    dst[:] = result
    seconds = time.perf_counter() - t0
    side = image.shape[-1]
    return {"s": seconds, "windows": sum(calls), "forwarded_px": sum(calls) * 512 * 512, "window": 512,
            "batch": BATCH, "side": side}


def _bare(store: Path) -> dict[str, Any]:
    import zarr

    from wsi_pipeline.infer import window_starts

    model = _segmenter()()
    model(np.zeros((1, 3, 64, 64), np.uint8))
    image = np.asarray(zarr.open_array(str(store / "0"), mode="r")[:])
    side = image.shape[-1]
    starts = window_starts(side, 512, OVERLAP)
    windows = [image[:, y:y + 512, x:x + 512] for y in starts for x in starts]
    batches = [np.ascontiguousarray(np.stack(windows[i:i + BATCH])) for i in range(0, len(windows), BATCH)]
    t0 = time.perf_counter()
    for b in batches:
        model(b)
    return {"s": time.perf_counter() - t0, "windows": len(windows), "forwarded_px": len(windows) * 512 * 512,
            "window": 512, "batch": BATCH}


def _variant(queue: Any, name: str, store: str, out: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from workflows.job_config import JobConfig
    from workflows.slide_plan import seg_settings
    from wsi_pipeline.infer import TiledInferenceConfig

    path, dest = Path(store), Path(out)
    whole = dict(overlap=OVERLAP, margin=16, batch_size=BATCH, dtype="uint8")
    if name == "ours-512":
        res = _ours(path, dest, TiledInferenceConfig(window=512, **whole), None)  # type: ignore[arg-type]
    elif name == "ours-608":
        res = _ours(path, dest, TiledInferenceConfig(window=608, **whole), None)  # type: ignore[arg-type]
    elif name == "ours-job":
        res = _ours(path, dest, seg_settings(JobConfig()).inference, np.load(path / "tissue.npy"))
    elif name == "monai":
        res = _monai(path, dest)
    else:
        res = _bare(path)
    res["peak_rss_mb"] = peak_rss_mib()
    queue.put(res)


def run_variant(name: str, store: Path, out: Path, threads: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_variant, args=(queue, name, str(store), str(out), threads))
    proc.start()
    res = queue.get()
    proc.join()
    return res  # type: ignore[no-any-return]


def have_monai() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


def compare(folder: Path, *, side: int = 4096, rounds: int = 3, threads: int = 2) -> dict[str, Any]:
    """Every variant ``rounds`` times, interleaved, each in a fresh process; medians and ratios to the bare floor."""
    import shutil

    store = build_input(folder, side=side)
    tissue = np.load(store / "tissue.npy")
    tissue_px = int(tissue.sum()) * CHUNK * CHUNK
    variants = ["ours-512", "monai", "bare", "ours-608", "ours-job"]
    skipped = {}
    if not have_monai():
        variants.remove("monai")
        skipped["monai"] = "MONAI is not installed (pip install 'wsi-pipeline[bench]'): row skipped"
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for v in variants:
            out = folder / "out" / v
            shutil.rmtree(out, ignore_errors=True)  # a fresh output every time: nothing is resumed
            runs[v].append(run_variant(v, store, out, threads))
            print(f"round {r + 1} {v}: {runs[v][-1]['s']:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    rows: dict[str, Any] = {}
    for v, rs in runs.items():
        rows[v] = {"median_s": statistics.median(x["s"] for x in rs), "all_s": [round(x["s"], 3) for x in rs],
                   "windows": rs[0]["windows"], "window": rs[0]["window"], "batch": rs[0]["batch"],
                   "forwarded_px": rs[0]["forwarded_px"],
                   "peak_rss_mb": max(x["peak_rss_mb"] for x in rs)}
        # whole-image rows are measured against the whole image; the job's row against its tissue chunks
        rows[v]["work_px"] = tissue_px if v == "ours-job" else side * side
        rows[v]["forwarded_ratio"] = rows[v]["forwarded_px"] / rows[v]["work_px"]
    floor = rows["bare"]["median_s"]
    for row in rows.values():
        row["x_bare"] = row["median_s"] / floor
    return {"side": side, "rounds": rounds, "threads": threads, "overlap": OVERLAP, "load_avg_1m": load,
            "tissue_chunks": int(tissue.sum()), "chunks": int(tissue.size), "rows": rows, "skipped": skipped}


LABELS = {"ours-512": "our `predict_zarr`, 512 px windows, whole image",
          "monai": "MONAI `sliding_window_inference`, gaussian, whole image",
          "bare": "bare forward of MONAI's windows",
          "ours-608": "our `predict_zarr`, 608 px windows, whole image",
          "ours-job": "ours with the job's defaults (its window and batch, tissue chunks only)"}


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"Model stage, {r['side']} x {r['side']} px at 2 um/px, shipped segmenter, {r['threads']} threads, "
             f"{r['overlap']} px overlap, each variant in its own process, interleaved, {r['rounds']} rounds "
             f"(load {r['load_avg_1m'][0]:.1f} -> {r['load_avg_1m'][1]:.1f}); the job's row: "
             f"{r['tissue_chunks']} of {r['chunks']} chunks hold tissue.", "",
             "| variant | window / batch | windows forwarded (px / image or tissue px) | median s | x bare floor "
             "| peak RSS |", "|---|---|---|---|---|---|"]
    for v, row in r["rows"].items():
        lines.append(f"| {LABELS[v]} | {row['window']} / {row['batch']} | {row['windows']} "
                     f"({row['forwarded_ratio']:.2f}x) | {row['median_s']:.2f} | {row['x_bare']:.2f} | "
                     f"{row['peak_rss_mb']:.0f} MiB |")
    for v, why in r["skipped"].items():
        lines.append(f"\n{v}: {why}")
    return "\n".join(lines) + "\n"
