"""Write a phantom to disk: one pyramidal Aperio SVS per stain (optionally OME-TIFF too) + truth GeoJSON + labels."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_pipeline.errors import ConfigError, WsiPipelineError
from wsi_pipeline.export import write_pyramidal_tiff

from .layout import Glomerulus, Layout, make_layout
from .render import render_regions
from .stains import STAINS, StainStyle, stain_style
from .truth import write_label_mask, write_truth_geojson


@dataclass(frozen=True)
class PhantomSlides:
    """What :func:`write_phantom` wrote. All slides share one layout (paired, pixel-aligned stains)."""

    slides: dict[str, Path]  # stain -> .svs
    truth_geojson: Path
    label_mask: Path
    glomeruli: tuple[Glomerulus, ...]
    layout: Layout
    ome_slides: dict[str, Path] = field(default_factory=dict)  # stain -> .ome.tif (only with ome=True)


def parse_stains(stains: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"PAS,HE"`` or a sequence -> validated upper-case tuple without duplicates (order kept)."""
    items = stains.split(",") if isinstance(stains, str) else list(stains)
    out: list[str] = []
    for s in items:
        s = s.strip().upper().replace("&", "")  # H&E -> HE
        if not s:
            continue
        if s not in STAINS:
            raise ConfigError(f"stains: {s!r} is not one of {','.join(STAINS)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ConfigError(f"stains={stains!r}: at least one stain is needed")
    return tuple(out)


class _SharedBlocks:
    """Hands each writer thread its stain of a level-0 block, rendering every block once for all stains.

    All writers request the same blocks in the same order, so the slowest one always finds its block pending;
    the fastest waits once ``max_pending`` blocks are waiting for others, which bounds memory.
    """

    def __init__(self, layout: Layout, styles: list[StainStyle], consumers: list[str], max_pending: int = 4) -> None:
        self.layout, self.styles, self.consumers = layout, styles, consumers
        self.max_pending = max_pending
        self.cond = threading.Condition()
        self.pending: dict[tuple[int, int, int, int], dict[str, np.ndarray]] = {}
        self.computing: set[tuple[int, int, int, int]] = set()
        self.failed = False

    def abort(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def get(self, consumer: str, box: tuple[int, int, int, int]) -> np.ndarray:
        with self.cond:
            while True:
                if self.failed:
                    raise WsiPipelineError(f"{consumer}: stopped because another stain's writer failed")
                entry = self.pending.get(box)
                if entry is not None:
                    arr = entry.pop(consumer)
                    if not entry:
                        del self.pending[box]
                        self.cond.notify_all()
                    return arr
                if box in self.computing or len(self.pending) >= self.max_pending:
                    self.cond.wait()
                    continue
                self.computing.add(box)
                break
        try:
            arrays = render_regions(self.layout, self.styles, *box)
        except BaseException:
            self.abort()
            raise
        by_stain = {st.stain: a for st, a in zip(self.styles, arrays)}
        with self.cond:
            self.computing.discard(box)
            entry = {c: by_stain[c.split(":")[0]] for c in self.consumers}
            arr = entry.pop(consumer)
            if entry:
                self.pending[box] = entry
            self.cond.notify_all()
        return arr


def write_phantom(out_dir: str | os.PathLike[str], *, size: int | tuple[int, int] = 8192,
                  stains: str | tuple[str, ...] | list[str] = ("PAS",), n_glomeruli: int | None = None,
                  seed: int = 0, mpp: float = 0.5, ome: bool = False, name: str | None = None,
                  progress: bool = False) -> PhantomSlides:
    """Render and write a seeded multi-stain phantom; memory stays at a few tile rows whatever the size.

    >>> ph = write_phantom("/tmp/ph", size=2048, stains="PAS,MASSON", seed=1)  # doctest: +SKIP
    >>> sorted(ph.slides)  # doctest: +SKIP
    ['MASSON', 'PAS']
    """
    stain_list = parse_stains(stains)
    layout = make_layout(size, seed=seed, mpp=mpp, n_glomeruli=n_glomeruli)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or f"phantom-s{seed}"
    styles = [stain_style(st, seed=seed) for st in stain_list]
    jobs = [(st, "svs", out / f"{name}-{st.stain}.svs") for st in styles]
    if ome:
        jobs += [(st, "ome", out / f"{name}-{st.stain}.ome.tif") for st in styles]
    shared = _SharedBlocks(layout, styles, [f"{st.stain}:{flavor}" for st, flavor, _ in jobs])

    def write(job: tuple[StainStyle, str, Path], show: bool) -> Path:
        style, flavor, path = job
        consumer = f"{style.stain}:{flavor}"
        extra = (f"Stain = {style.stain}|Synthetic = wsi-pipeline phantom seed {seed}" if flavor == "svs"
                 else f"{name} {style.stain}")
        try:
            return write_pyramidal_tiff(path, lambda x, y, w, h: shared.get(consumer, (x, y, w, h)),
                                        size=(layout.width, layout.height), mpp=mpp, quality=style.jpeg_quality,
                                        flavor=flavor, description_extra=extra, progress=show)  # type: ignore[arg-type]
        except BaseException:
            shared.abort()
            raise

    # one writer thread per output file; numpy, scipy and the JPEG encoder release the GIL
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(write, job, progress and i == 0) for i, job in enumerate(jobs)]
        wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        # the first failure is the cause; the others were stopped because of it
        raise next((e for e in errors if not isinstance(e, WsiPipelineError)), errors[0])  # type: ignore[misc]
    paths = [f.result() for f in futures]
    slides = {st.stain: p for (st, flavor, _), p in zip(jobs, paths) if flavor == "svs"}
    omes = {st.stain: p for (st, flavor, _), p in zip(jobs, paths) if flavor == "ome"}
    truth = write_truth_geojson(layout, out / f"{name}.truth.geojson", stains=stain_list)
    labels = write_label_mask(layout, out / f"{name}.labels.tif")
    return PhantomSlides(slides=slides, truth_geojson=truth, label_mask=labels, glomeruli=layout.glomeruli,
                         layout=layout, ome_slides=omes)


__all__ = ["PhantomSlides", "parse_stains", "write_phantom"]
