"""Write a phantom to disk: one pyramidal Aperio SVS per stain (optionally OME-TIFF too) + truth GeoJSON + labels."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_pipeline.atomic import atomic_write_json
from wsi_pipeline.errors import ConfigError, WsiPipelineError
from wsi_pipeline.export import level0_boxes, write_pyramidal_tiff

from .layout import Glomerulus, Layout, make_layout
from .render import render_regions
from .stains import STAINS, StainStyle, stain_style
from .truth import write_label_mask, write_truth_geojson

Box = tuple[int, int, int, int]
_TILE = 256  # level-0 tile edge of the written slides
# bump when the rendered pixels change: phantoms written by another renderer version are not reused
RENDERER_VERSION = 2


@dataclass(frozen=True)
class PhantomSlides:
    """What :func:`write_phantom` wrote. All slides share one layout (paired, pixel-aligned stains)."""

    slides: dict[str, Path]  # stain -> .svs
    truth_geojson: Path
    label_mask: Path
    glomeruli: tuple[Glomerulus, ...]
    layout: Layout
    ome_slides: dict[str, Path] = field(default_factory=dict)  # stain -> .ome.tif (only with ome=True)
    reused: bool = False  # found complete on disk (``reuse=True``), nothing rendered


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
    """Renders the level-0 blocks ahead on a thread pool and hands each writer thread its stain of each block.

    Every block is rendered once for all stains. The writers ask for the blocks in one known order
    (:func:`level0_boxes`), so up to ``ahead`` blocks past the slowest writer are in flight or waiting; a writer
    that gets further ahead waits, which bounds memory.
    """

    def __init__(self, layout: Layout, styles: list[StainStyle], consumers: list[str], boxes: list[Box], *,
                 pool: ThreadPoolExecutor, ahead: int) -> None:
        self.layout, self.styles, self.consumers = layout, styles, consumers
        self.boxes = boxes
        self.index = {box: i for i, box in enumerate(boxes)}
        self.pool, self.ahead = pool, ahead
        self.cond = threading.Condition()
        self.futures: dict[int, Future[dict[str, np.ndarray]]] = {}
        self.taken: dict[int, set[str]] = {}
        self.position = dict.fromkeys(consumers, 0)  # next block index each writer will ask for
        self.submitted = 0
        self.failed = False

    def _render(self, box: Box) -> dict[str, np.ndarray]:
        arrays = render_regions(self.layout, self.styles, *box)
        return {st.stain: a for st, a in zip(self.styles, arrays)}

    def _submit_ahead(self) -> None:  # holding self.cond
        limit = min(len(self.boxes), min(self.position.values()) + self.ahead)
        while self.submitted < limit:
            self.futures[self.submitted] = self.pool.submit(self._render, self.boxes[self.submitted])
            self.submitted += 1

    def abort(self) -> None:
        with self.cond:
            self.failed = True
            for fut in self.futures.values():
                fut.cancel()
            self.cond.notify_all()

    def get(self, consumer: str, box: Box) -> np.ndarray:
        i = self.index.get(box)
        if i is None:  # not a block of the known order: render it here
            return self._render(box)[consumer.split(":")[0]]
        with self.cond:
            while True:
                if self.failed:
                    raise WsiPipelineError(f"{consumer}: stopped because another stain's writer failed")
                self._submit_ahead()
                fut = self.futures.get(i)
                if fut is not None:
                    break
                self.cond.wait()  # this writer is ``ahead`` blocks past the slowest one
        try:
            arrays = fut.result()
        except BaseException:
            self.abort()
            raise
        with self.cond:
            self.position[consumer] = i + 1
            taken = self.taken.setdefault(i, set())
            taken.add(consumer)
            if len(taken) == len(self.consumers):
                del self.futures[i], self.taken[i]
            self._submit_ahead()
            self.cond.notify_all()
        return arrays[consumer.split(":")[0]]


def write_phantom(out_dir: str | os.PathLike[str], *, size: int | tuple[int, int] = 8192,
                  stains: str | tuple[str, ...] | list[str] = ("PAS",), n_glomeruli: int | None = None,
                  seed: int = 0, mpp: float = 0.5, ome: bool = False, name: str | None = None,
                  progress: bool = False, threads: int | None = None, reuse: bool = False) -> PhantomSlides:
    """Render and write a seeded multi-stain phantom; memory stays at a few tile rows whatever the size.

    ``threads``: render threads (default: the usable CPUs). ``reuse``: if ``out_dir`` already holds this phantom
    (same parameters, same renderer version, every file present, as recorded in ``<name>.phantom.json``), return
    it without rendering; else write it and then that record (atomically, last, so it only names complete files).

    >>> ph = write_phantom("/tmp/ph", size=2048, stains="PAS,MASSON", seed=1)  # doctest: +SKIP
    >>> sorted(ph.slides)  # doctest: +SKIP
    ['MASSON', 'PAS']
    """
    stain_list = parse_stains(stains)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: must be >= 1")
    layout = make_layout(size, seed=seed, mpp=mpp, n_glomeruli=n_glomeruli)
    out = Path(out_dir)
    name = name or f"phantom-s{seed}"
    styles = [stain_style(st, seed=seed) for st in stain_list]
    jobs = [(st, "svs", out / f"{name}-{st.stain}.svs") for st in styles]
    if ome:
        jobs += [(st, "ome", out / f"{name}-{st.stain}.ome.tif") for st in styles]
    truth_path, labels_path = out / f"{name}.truth.geojson", out / f"{name}.labels.tif"
    files = sorted(p.name for p in [*(path for _, _, path in jobs), truth_path, labels_path])
    record = {"renderer": RENDERER_VERSION, "size": [layout.width, layout.height], "stains": list(stain_list),
              "n_glomeruli": n_glomeruli, "seed": seed, "mpp": mpp, "ome": ome, "files": files}
    record_path = out / f"{name}.phantom.json"
    result = PhantomSlides(slides={st.stain: p for st, flavor, p in jobs if flavor == "svs"},
                           truth_geojson=truth_path, label_mask=labels_path, glomeruli=layout.glomeruli,
                           layout=layout, ome_slides={st.stain: p for st, flavor, p in jobs if flavor == "ome"})
    if reuse and _recorded(record_path) == record and all((out / f).is_file() for f in files):
        return dataclasses.replace(result, reused=True)
    out.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)  # the files are about to change: no record may vouch for them
    n_threads = threads or max(1, min(8, len(os.sched_getaffinity(0))))
    boxes = level0_boxes((layout.width, layout.height), tile=_TILE)

    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="phantom-render") as render_pool:
        shared = _SharedBlocks(layout, styles, [f"{st.stain}:{flavor}" for st, flavor, _ in jobs], boxes,
                               pool=render_pool, ahead=2 * n_threads)

        def write(job: tuple[StainStyle, str, Path], show: bool) -> Path:
            style, flavor, path = job
            consumer = f"{style.stain}:{flavor}"
            extra = (f"Stain = {style.stain}|Synthetic = wsi-pipeline phantom seed {seed}" if flavor == "svs"
                     else f"{name} {style.stain}")
            try:
                return write_pyramidal_tiff(path, lambda x, y, w, h: shared.get(consumer, (x, y, w, h)),
                                            size=(layout.width, layout.height), mpp=mpp, tile=_TILE,
                                            quality=style.jpeg_quality, flavor=flavor,  # type: ignore[arg-type]
                                            description_extra=extra, progress=show)
            except BaseException:
                shared.abort()
                raise

        # one writer thread per output file (pyramid and JPEG encoding), fed by the render threads; numpy, scipy
        # and the JPEG encoder release the GIL
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="phantom-write") as pool:
            futures = [pool.submit(write, job, progress and i == 0) for i, job in enumerate(jobs)]
            wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        # the first failure is the cause; the others were stopped because of it
        raise next((e for e in errors if not isinstance(e, WsiPipelineError)), errors[0])  # type: ignore[misc]
    write_truth_geojson(layout, truth_path, stains=stain_list)
    write_label_mask(layout, labels_path)
    if reuse:
        atomic_write_json(record_path, record)
    return result


def _recorded(path: Path) -> object:
    """The parameters a previous :func:`write_phantom` recorded at ``path``; None when absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = ["RENDERER_VERSION", "PhantomSlides", "parse_stains", "write_phantom"]
