"""``wsi-pipeline tile``: tile one slide's tissue into a zarr v3 store (resumable: re-run the same command)."""

from __future__ import annotations

from pathlib import Path

import click

from .options import MPP, TARGET_MPP, legacy_workers, writable_folder


@click.command(name="tile")
@click.argument("slide", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output store (STORE.zarr); re-running the same command resumes it.")
@click.option("--mpp", type=TARGET_MPP, default=None, metavar="UM",
              help="Target microns per pixel [default: the slide's level 0]. A target finer than the slide is "
                   "refused beyond tile.max_upsample (2.5x).")
@click.option("--tile", "tile", type=click.IntRange(16, 8192), default=None, metavar="PX",
              help="Chunk edge in pixels [default: from the config, 512].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads of Dask's threaded scheduler in this process [default: all cores].")
@click.option("--workers", "legacy_workers_", type=click.IntRange(min=1), default=None, hidden=True,
              help="Old name of --threads.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of a running dask.distributed scheduler to tile on instead of local threads.")
@click.option("--mpp-override", type=MPP, default=None, metavar="UM",
              help="Use this level-0 um/px (0.05-20) instead of the slide's (recorded in the store); needed for "
                   "files without one or whose MPP is refused as implausible.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML with a `tile:` section [default: configs/tile.yaml].")
@click.option("--overwrite", is_flag=True, help="Replace a store written with other settings.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (tasks done, rate, ETA).")
def command(slide: Path, out: Path, mpp: float | None, tile: int | None, threads: int | None,
            legacy_workers_: int | None, scheduler: str | None, mpp_override: float | None, config_path: Path | None,
            overwrite: bool, progress: bool) -> None:
    """Tile SLIDE's tissue into the zarr v3 group --out (OME-NGFF pyramid, tissue chunks only).

    The slide's MPP is checked first: one from a dpi-style TIFF resolution tag (72 dpi from an image editor) or
    outside 0.05-20 um/px is refused with the reason; pass --mpp-override with the real value.
    """
    from wsi_pipeline.config import load_config
    from wsi_pipeline.errors import NoTissueError, SlideError
    from wsi_pipeline.slide import check_scale, open_slide
    from wsi_pipeline.tiling import TileConfig, tile_slide

    from .lock import output_lock

    workers = legacy_workers(threads, legacy_workers_, default=None)
    writable_folder(out.parent, "--out")
    config_path = config_path or default_tile_config()
    cfg = load_config(config_path, TileConfig, section="tile") if config_path else TileConfig()
    updates = {k: v for k, v in (("mpp", mpp), ("tile", tile)) if v is not None}
    if updates:
        cfg = TileConfig.from_dict({**cfg.to_dict(), **updates}, source="command line")
    with output_lock(out.parent, store=out.name), open_slide(slide, mpp_override=mpp_override) as opened:
        if opened.mpp is None and cfg.mpp is not None:
            raise SlideError(slide, "no microns-per-pixel in the file; pass --mpp-override UM")
        check_scale(opened)  # before any client or thread pool starts
        client = None
        if scheduler:
            from distributed import Client

            client = Client(scheduler)
        try:
            res = tile_slide(opened, out, config=cfg, client=client, workers=workers, mpp_override=mpp_override,
                             overwrite=overwrite, progress=progress)
        except NoTissueError as exc:
            click.echo(f"no-tissue: {exc}")
            return
        finally:
            if client is not None:
                client.close()
    h, w = res.shape
    mpp_txt = f"{res.mpp:.4g} um/px" if res.mpp else "unknown um/px"
    state = "already complete" if res.already_complete else (
        f"{res.chunks_written} chunks written, {res.blocks_skipped} blocks resumed from an earlier run")
    how = "JPEG tiles copied" if res.copied else "decoded"
    click.echo(f"{res.store_path}: {w} x {h} px at {mpp_txt} (level {res.level}, scale {res.scale:.4g}, {how}); "
               f"{res.chunks_tissue} of {res.chunks_total} chunks hold tissue; {state}; {res.seconds:.1f} s")


def default_tile_config() -> Path | None:
    """``configs/tile.yaml`` of the source tree this package runs from (absent in an installed wheel: the code's
    defaults, which that file repeats)."""
    path = Path(__file__).resolve().parents[1] / "configs" / "tile.yaml"
    return path if path.is_file() else None


__all__ = ["command", "default_tile_config"]
