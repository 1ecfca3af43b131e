"""``wsi-pipeline synth``: write seeded synthetic multi-stain kidney slides (+ truth GeoJSON and label mask)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .options import FiniteFloat, writable_folder


@click.command(name="synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.IntRange(min=256), default=8192, show_default=True,
              help="Slide side in level-0 pixels.")
@click.option("--stains", default="PAS", show_default=True,
              help="Comma-separated stains: PAS,HE,MASSON,PASM,CD68,CD34.")
@click.option("--glomeruli", "n_glomeruli", type=click.IntRange(min=0), default=None,
              help="Number of glomeruli (default: about 2.5 per mm^2 of tissue, at least 3).")
@click.option("--seed", type=int, default=0, show_default=True, help="Layout seed (same seed = same tissue).")
@click.option("--mpp", type=FiniteFloat(0.05, 10.0, unit="um/px"), default=0.5, show_default=True,
              help="Microns per pixel at level 0.")
@click.option("--ome", is_flag=True, help="Also write each stain as a pyramidal OME-TIFF.")
@click.option("--name", default=None, help="File name stem (default phantom-s<SEED>).")
@click.option("--progress/--no-progress", default=False, help="Show a progress bar per slide.")
def command(out_dir: Path, size: int, stains: str, n_glomeruli: int | None, seed: int, mpp: float, ome: bool,
            name: str | None, progress: bool) -> None:
    """Write seeded synthetic multi-stain kidney slides into OUT_DIR and print what was written."""
    from collections import Counter

    from wsi_pipeline.synth import parse_stains, write_phantom

    stain_list = parse_stains(stains)  # fail on a bad stain before anything is created or rendered
    writable_folder(out_dir, "OUT_DIR")
    t0 = time.perf_counter()
    ph = write_phantom(out_dir, size=size, stains=stain_list, n_glomeruli=n_glomeruli, seed=seed, mpp=mpp,
                       ome=ome, name=name, progress=progress)
    dt = time.perf_counter() - t0
    for stain, path in ph.slides.items():
        click.echo(f"slide     {stain:<7} {path}")
    for stain, path in ph.ome_slides.items():
        click.echo(f"ome-tiff  {stain:<7} {path}")
    counts = Counter(g.cls for g in ph.glomeruli)
    click.echo(f"truth     {ph.truth_geojson}  ({len(ph.glomeruli)} glomeruli: "
               + ", ".join(f"{c} {counts.get(c, 0)}" for c in ("noa", "ss", "gs")) + ")")
    click.echo(f"labels    {ph.label_mask}")
    mpix = size * size * (len(ph.slides) + len(ph.ome_slides)) / 1e6
    click.echo(f"size      {size} x {size} px at {mpp} um/px; {dt:.1f} s ({mpix / dt:.2f} MPix/s)")


__all__ = ["command"]
