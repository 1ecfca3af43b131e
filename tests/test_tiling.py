"""Tiling into zarr v3: exact pixels, resampling, tissue-only chunks, pyramid, settings digest, kill + resume."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from wsi_pipeline.errors import NoTissueError, StoreError
from wsi_pipeline.export.tiff import write_pyramidal_tiff
from wsi_pipeline.slide import open_slide
from wsi_pipeline.tiling import TileConfig, read_store_info, tile_slide
from wsi_pipeline.tiling.plan import area_resample, plan_tiling, reduce2
from wsi_pipeline.tiling.ngff import ThresholdedPlane, label_levels, write_label
from wsi_pipeline.tiling.shards import written_chunks

ROOT = Path(__file__).resolve().parents[1]
PAS = ROOT.parent / "shared" / "data" / "kidney-stains" / "orig_patch_stain_02.png"
W, H = 2345, 1777  # awkward: not a multiple of any tile size
TISSUE_X, TISSUE_Y = 900, 600  # tissue fills [900, W) x [600, H): it touches the right and bottom edges


def _patch_region(patch: np.ndarray):
    def region(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 246, np.uint8)
        yy, xx = np.mgrid[y:y + h, x:x + w]
        m = (xx >= TISSUE_X) & (yy >= TISSUE_Y)
        out[m] = patch[yy[m] % 1000, xx[m] % 1000]
        return out
    return region


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Aperio-style JPEG SVS (openslide vendor 'aperio'): real PAS tissue on glass, 256-px tiles."""
    patch = np.asarray(Image.open(PAS).convert("RGB"))
    return write_pyramidal_tiff(tmp_path_factory.mktemp("slides") / "pas.svs", _patch_region(patch), size=(W, H),
                                mpp=0.25, tile=256, quality=90)


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _chunk_keys(store: Path, level: int = 0) -> set[tuple[int, int]]:
    return written_chunks(store, level)


def _rgb(arr: zarr.Array, y: int, x: int, h: int, w: int) -> np.ndarray:
    return np.asarray(arr[:, y:y + h, x:x + w]).transpose(1, 2, 0)


def test_plan_picks_level_and_resamples_only_when_needed() -> None:
    dims, ds = [(4000, 3000), (2000, 1500), (1000, 750)], [1.0, 2.0, 4.0]
    p = plan_tiling(dims, ds, 0.25, target_mpp=0.5, tile=256, task_px=2048)
    assert (p.level, p.scale, p.width, p.height, p.block, p.resampled) == (1, 1.0, 2000, 1500, 8, False)
    p = plan_tiling(dims, ds, 0.25, target_mpp=0.8, tile=256, task_px=2048)
    assert p.level == 1 and p.resampled and abs(p.scale - 1.6) < 1e-9 and (p.width, p.height) == (1250, 938)
    assert p.block == 4  # the block's source must stay within task_px
    assert plan_tiling(dims, ds, None, target_mpp=None, tile=256, task_px=256).shapes[-1] == (188, 250)
    with pytest.raises(ValueError, match="MPP"):
        plan_tiling(dims, ds, None, target_mpp=1.0, tile=256, task_px=2048)


def test_area_resample_chunks_agree_with_whole_image() -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    scale, out_shape = 1.7, (round(97 / 1.7), round(131 / 1.7))
    whole = area_resample(src, src_origin=(0, 0), out_origin=(0, 0), out_shape=out_shape, scale=scale,
                          src_limit=(97, 131))
    assert whole.shape == (*out_shape, 3)
    # an awkward window computed from just its source span
    oy, ox, oh, ow = 13, 29, 21, 35
    sy0, sx0 = int(oy * scale), int(ox * scale)
    sy1, sx1 = min(97, int(np.ceil((oy + oh) * scale))), min(131, int(np.ceil((ox + ow) * scale)))
    part = area_resample(src[sy0:sy1, sx0:sx1], src_origin=(sy0, sx0), out_origin=(oy, ox), out_shape=(oh, ow),
                         scale=scale, src_limit=(97, 131))
    assert np.abs(part.astype(int) - whole[oy:oy + oh, ox:ox + ow]).max() <= 1
    # integer factor: plain block mean
    blocks = area_resample(src[:96, :130], src_origin=(0, 0), out_origin=(0, 0), out_shape=(48, 65), scale=2.0,
                           src_limit=(96, 130))
    ref = src[:96, :130].reshape(48, 2, 65, 2, 3).mean(axis=(1, 3))
    assert np.abs(blocks - ref).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("k", [2, 3, 4])
def test_whole_factor_fast_path_is_the_area_mean(k: int) -> None:
    """A whole scale on the k grid takes the block-mean path: the general area resampling's numbers (within the
    rounding of .5), and a window of it equals the whole image's pixels, edge boxes cut by the level included."""
    rng = np.random.default_rng(k)
    src = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    shape = (-(-97 // k), -(-131 // k))
    fast = area_resample(src, src_origin=(0, 0), out_origin=(0, 0), out_shape=shape, scale=float(k),
                         src_limit=(97, 131))
    slow = area_resample(src, src_origin=(0, 0), out_origin=(0, 0), out_shape=shape, scale=k * (1 + 1e-12),
                         src_limit=(97, 131))  # not a whole number: the general path
    assert fast.shape == slow.shape == (*shape, 3) and np.abs(fast.astype(int) - slow).max() <= 1
    assert fast[-1, -1].tolist() == np.round(src[(shape[0] - 1) * k:, (shape[1] - 1) * k:].reshape(-1, 3).mean(0)
                                              + 1e-9).astype(int).tolist()  # the corner box cut on both sides
    oy, ox, h, w = 5, 7, shape[0] - 5, 9
    part = area_resample(src[oy * k:, ox * k:(ox + w) * k], src_origin=(oy * k, ox * k), out_origin=(oy, ox),
                         out_shape=(h, w), scale=float(k), src_limit=(97, 131))
    assert np.array_equal(part, fast[oy:oy + h, ox:ox + w])


def test_scanner_mpp_within_tolerance_copies_or_reduces_a_level() -> None:
    """Real scanners' MPPs are not round: within mpp_tolerance a level is copied or reduced by a whole factor."""
    dims, ds = [(40000, 30000), (10000, 7500), (2500, 1875)], [1.0, 4.0, 16.0]
    at2 = 0.2528  # an Aperio AT2 at 40x
    p = plan_tiling(dims, ds, at2, target_mpp=2.0, tile=512, task_px=2048, mpp_rtol=0.05)
    assert (p.level, p.scale, p.width, p.height) == (1, 2.0, 5000, 3750)
    p = plan_tiling(dims, ds, at2, target_mpp=1.0, tile=512, task_px=2048, mpp_rtol=0.05)
    assert (p.level, p.scale, p.resampled) == (1, 1.0, False)  # level 1 itself (1.011 um/px)
    strict = plan_tiling(dims, ds, at2, target_mpp=1.0, tile=512, task_px=2048, mpp_rtol=0.0)
    assert strict.level == 0 and strict.scale == pytest.approx(1.0 / at2)  # 16x the pixels, fractional scale
    assert plan_tiling(dims, ds, 0.25, target_mpp=1.5, tile=512, task_px=2048, mpp_rtol=0.05).scale == 1.5
    with pytest.raises(ValueError, match="mpp_rtol"):
        plan_tiling(dims, ds, 0.25, target_mpp=2.0, tile=512, task_px=2048, mpp_rtol=0.7)


def test_tiling_a_scanner_mpp_reduces_the_nearest_level(slide_path: Path, tmp_path: Path) -> None:
    """From a 0.2528 um/px scan (levels x1, x2, x4, x8): 2.0 um/px is level 3 (x7.97) as it is, 4.0 um/px is level 3
    reduced 2x; each store records the MPP it really has. Without the tolerance both resample a finer level."""
    def tile(name: str, mpp: float, tol: float = 0.05) -> Any:
        return tile_slide(slide_path, tmp_path / name, config=TileConfig(mpp=mpp, tile=64, task_px=256,
                                                                         mpp_tolerance=tol),
                          mpp_override=0.2528, progress=False)

    with open_slide(slide_path) as slide:
        level3 = slide.read_region((0, 0), 3, slide.level_dimensions[3])
        ds = slide.level_downsamples
    same, half = tile("a.zarr", 2.0), tile("b.zarr", 4.0)
    assert (same.level, same.scale, half.level, half.scale) == (3, 1.0, 3, 2.0)
    assert same.mpp == pytest.approx(0.2528 * ds[3]) and half.mpp == pytest.approx(0.2528 * ds[3] * 2)
    assert read_store_info(tmp_path / "b.zarr").geometry.mpp == pytest.approx(half.mpp)
    # chunks from (1, 1) on are all tissue
    assert np.array_equal(_rgb(zarr.open_group(tmp_path / "a.zarr", mode="r")["0"], 64, 64, 223 - 64, 294 - 64),
                          level3[64:, 64:])
    expect = reduce2(level3)[64:half.shape[0], 64:half.shape[1]]
    assert np.array_equal(_rgb(zarr.open_group(tmp_path / "b.zarr", mode="r")["0"], 64, 64, *expect.shape[:2]),
                          expect)
    strict = tile("s.zarr", 2.0, tol=0.0)
    assert strict.level == 2 and strict.scale == pytest.approx(2.0 / 0.2528 / ds[2])


@pytest.mark.parametrize("tile", [128, 200])  # aligned with the 256-px stored tiles, and not
def test_exact_pixels_at_awkward_offsets_and_slide_edge(slide_path: Path, tmp_path: Path, tile: int) -> None:
    res = tile_slide(slide_path, tmp_path / "s.zarr", config=TileConfig(tile=tile, task_px=4 * tile),
                     workers=2, progress=False)
    assert (res.level, res.scale, res.shape) == (0, 1.0, (H, W))
    arr = zarr.open_group(tmp_path / "s.zarr", mode="r")["0"]
    assert arr.shape == (3, H, W) and arr.chunks == (3, tile, tile)
    with open_slide(slide_path) as slide:
        # inside tissue chunks: odd offsets, a window crossing stored-tile and chunk seams, the bottom-right edge
        for x, y, w, h in [(1101, 771, 333, 211), (1023, 767, 290, 290), (W - 317, H - 143, 317, 143),
                           (TISSUE_X + 300, H - 1, W - TISSUE_X - 300, 1)]:
            assert np.array_equal(_rgb(arr, y, x, h, w), slide.read_region((x, y), 0, (w, h))), (x, y, w, h)


def test_level_pick_exact_copy_of_level1(slide_path: Path, tmp_path: Path) -> None:
    res = tile_slide(slide_path, tmp_path / "l1.zarr", config=TileConfig(mpp=0.5, tile=128), progress=False)
    with open_slide(slide_path) as slide:
        lw, lh = slide.level_dimensions[1]
        assert (res.level, res.scale, res.shape) == (1, 1.0, (lh, lw))
        arr = zarr.open_group(tmp_path / "l1.zarr", mode="r")["0"]
        x, y, w, h = 600, 400, lw - 600, lh - 400  # tissue to the level's edge
        # whole level from the origin: level-0 -> level-1 coordinate rounding cannot shift the reference
        ref = slide.read_region((0, 0), 1, (lw, lh))[y:, x:]
    assert np.array_equal(_rgb(arr, y, x, h, w), ref)


def test_resampled_close_to_reference_resize(slide_path: Path, tmp_path: Path) -> None:
    res = tile_slide(slide_path, tmp_path / "r.zarr", config=TileConfig(mpp=0.37, tile=128, task_px=512),
                     progress=False)
    scale = 0.37 / 0.25
    assert res.level == 0 and abs(res.scale - scale) < 1e-9
    assert res.shape == (round(H / scale), round(W / scale))
    arr = zarr.open_group(tmp_path / "r.zarr", mode="r")["0"]
    with open_slide(slide_path) as slide:
        full = slide.read_region((0, 0), 0, (W, H))
    oy, ox = round(TISSUE_Y / scale) + 8, round(TISSUE_X / scale) + 8  # tissue chunks only
    got = _rgb(arr, oy, ox, res.shape[0] - oy, res.shape[1] - ox).astype(int)
    ours = area_resample(full, src_origin=(0, 0), out_origin=(0, 0), out_shape=res.shape, scale=scale,
                         src_limit=(H, W))[oy:, ox:].astype(int)
    # an independent reference: Pillow's antialiased (triangle) resize over the same source window; its BOX
    # filter weights whole pixels, not exact areas, so it only agrees with ours at integer factors
    ny, nx = int(H / scale) - oy, int(W / scale) - ox
    src_box = (ox * scale, oy * scale, (ox + nx) * scale, (oy + ny) * scale)
    pil = np.asarray(Image.fromarray(full).resize((nx, ny), Image.Resampling.BILINEAR, box=src_box)).astype(int)
    pil = np.pad(pil, ((0, got.shape[0] - ny), (0, got.shape[1] - nx), (0, 0)), mode="edge")
    err_ours, err_pil = np.abs(got - ours), np.abs(got - pil)
    print(f"resampled x{scale:.3f}: vs whole-image area resize max {err_ours.max()} mean {err_ours.mean():.4f}; "
          f"vs Pillow antialiased bilinear max {err_pil.max()} mean {err_pil.mean():.3f}")
    assert err_ours.max() <= 1 and err_pil.mean() < 2.5


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (3, 3), (7, 9), (8, 5), (256, 256), (513, 257)])
def test_reduce2_is_pillow_reduce_bit_for_bit(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).reduce(2))
    assert np.array_equal(reduce2(img), ref)
    canvas = np.zeros((ref.shape[0] + 3, ref.shape[1] + 4, 3), np.uint8)  # out= a strided view
    reduce2(img[:, :], out=canvas[1:1 + ref.shape[0], 2:2 + ref.shape[1]])
    assert np.array_equal(canvas[1:1 + ref.shape[0], 2:2 + ref.shape[1]], ref)
    assert np.all(reduce2(np.full_like(img, 255)) == 255)


def test_only_tissue_chunks_written_and_pyramid(slide_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "t.zarr"
    res = tile_slide(slide_path, store, config=TileConfig(tile=128, task_px=512), progress=False)
    keys = _chunk_keys(store)
    assert len(keys) == res.chunks_written == res.chunks_tissue < res.chunks_total
    for r, c in keys:  # every written chunk touches tissue (with the mask's 1-thumbnail-pixel margin)
        assert (r + 1) * 128 > TISSUE_Y - 64 and (c + 1) * 128 > TISSUE_X - 64
    # chunks well inside the glass are absent and read as white
    assert (0, 0) not in keys and (2, 3) not in keys
    group = zarr.open_group(store, mode="r")
    assert np.all(_rgb(group["0"], 0, 0, 256, 512) == 255)
    # pyramid: level 1 is the 2x2 mean of level 0 (white where nothing was written); NGFF metadata for viewers
    lvl0 = _rgb(group["0"], 0, 0, H, W)
    assert np.array_equal(_rgb(group["1"], 0, 0, *group["1"].shape[1:]), np.asarray(Image.fromarray(lvl0).reduce(2)))
    lvl1 = _rgb(group["1"], 0, 0, *group["1"].shape[1:])  # level 2 is reduced chunk-wise inside the block tasks
    assert np.array_equal(_rgb(group["2"], 0, 0, *group["2"].shape[1:]), np.asarray(Image.fromarray(lvl1).reduce(2)))
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == [str(i) for i in range(len(ms["datasets"]))]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    assert max(group[ms["datasets"][-1]["path"]].shape[1:]) <= 128
    info = read_store_info(store)
    assert info.complete and info.geometry.scale == (1.0, 1.0)
    assert info.source["mpp"] == [0.25, 0.25] and info.source["mpp_source"] == "file"
    assert info.tissue.polygons_level0 is not None and info.tissue.polygons_level0["type"] == "MultiPolygon"
    assert group["tissue_mask"][:].any()


def test_settings_digest_guards_the_store(slide_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "d.zarr"
    cfg = TileConfig(tile=256)
    tile_slide(slide_path, store, config=cfg, progress=False)
    again = tile_slide(slide_path, store, config=cfg, progress=False)
    assert again.already_complete and again.blocks_run == 0
    with pytest.raises(StoreError, match="settings digest"):
        tile_slide(slide_path, store, config=TileConfig(tile=128), progress=False)
    with pytest.raises(StoreError):
        tile_slide(slide_path, store, config=cfg, mpp_override=0.3, progress=False)
    redone = tile_slide(slide_path, store, config=TileConfig(tile=128), overwrite=True, progress=False)
    assert redone.blocks_run > 0 and zarr.open_group(store, mode="r")["0"].chunks == (3, 128, 128)
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "precious.txt").write_text("not ours")
    with pytest.raises(StoreError, match="not a wsi-pipeline store"):
        tile_slide(slide_path, tmp_path / "other.zarr", config=cfg, progress=False)


def test_blank_slide_raises_no_tissue(tmp_path: Path) -> None:
    blank = write_pyramidal_tiff(tmp_path / "blank.svs", lambda x, y, w, h: np.full((h, w, 3), 243, np.uint8),
                                 size=(900, 700), mpp=0.5, tile=256)
    with pytest.raises(NoTissueError, match="no tissue"):
        tile_slide(blank, tmp_path / "blank.zarr", config=TileConfig(tile=128), progress=False)
    assert not (tmp_path / "blank.zarr").exists()


_KILLABLE = """
import sys
from wsi_pipeline.tiling import TileConfig, tile_slide
tile_slide(sys.argv[1], sys.argv[2], config=TileConfig(tile=32, task_px=32), workers=1, progress=False)
"""


def test_kill_mid_run_then_resume_is_byte_identical(
    slide_path: Path,
    tmp_path: Path,
    sigkill_after_markers: Callable[[subprocess.Popen[bytes], Path, int], dict[Path, int]],
) -> None:
    cfg = TileConfig(tile=32, task_px=32)  # one chunk per task: many small tasks to interrupt
    reference = tmp_path / "ref.zarr"
    ref_res = tile_slide(slide_path, reference, config=cfg, workers=1, progress=False)

    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(slide_path), str(store)], cwd=ROOT)
    done_dir = store / "tiling_done" / "c"
    finished = sigkill_after_markers(proc, done_dir, 50)
    assert not zarr.open_group(store, mode="r").attrs["wsi_pipeline"]["complete"]
    with pytest.raises(StoreError, match="did not finish"):
        read_store_info(store)

    done_blocks = {(int(p.parent.name), int(p.name)) for p in finished}
    # shard files of finished blocks (one per block and level) must not be rewritten
    kept = {p: p.stat().st_mtime_ns for r, c in done_blocks if (p := store / "0" / "c" / "0" / str(r) / str(c)).exists()}
    assert len(kept) == len(done_blocks)
    resumed = tile_slide(slide_path, store, config=cfg, workers=2, progress=False)
    assert resumed.blocks_skipped == len(done_blocks) >= 50
    assert resumed.blocks_run == ref_res.blocks_total - len(done_blocks)
    assert resumed.chunks_written == ref_res.chunks_written - len(done_blocks)
    assert all(p.stat().st_mtime_ns == t for p, t in {**finished, **kept}.items())
    assert _files(store) == _files(reference)


@pytest.mark.parametrize("tile", [128, 256])  # decoded chunks; copied JPEG tiles (block and post copy tasks)
def test_distributed_processes_give_identical_store(slide_path: Path, tmp_path: Path, tile: int) -> None:
    from distributed import Client, LocalCluster

    cfg = TileConfig(tile=tile, task_px=256)
    tile_slide(slide_path, tmp_path / "threads.zarr", config=cfg, workers=2, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tile_slide(slide_path, tmp_path / "procs.zarr", config=cfg, client=client, progress=False)
    assert _files(tmp_path / "threads.zarr") == _files(tmp_path / "procs.zarr")


def test_cli_tile(slide_path: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from workflows.cli import cli

    out = tmp_path / "cli.zarr"
    result = CliRunner().invoke(cli, ["tile", str(slide_path), "--out", str(out), "--mpp", "0.5", "--tile", "128",
                                      "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "chunks" in result.output and read_store_info(out).geometry.mpp == pytest.approx(0.5, rel=1e-3)
    again = CliRunner().invoke(cli, ["tile", str(slide_path), "--out", str(out), "--tile", "256", "--no-progress"])
    assert again.exit_code != 0 and "settings digest" in str(again.exception or again.output)


@pytest.mark.parametrize("compressor", ["lz4", "zstd"])
def test_compressed_chunks_read_back_through_zarr(slide_path: Path, tmp_path: Path, compressor: str) -> None:
    plain = tile_slide(slide_path, tmp_path / "n.zarr", config=TileConfig(tile=256, mpp=1.0, compressor="none"),
                       progress=False)
    packed = tile_slide(slide_path, tmp_path / "c.zarr", config=TileConfig(tile=256, mpp=1.0, compressor=compressor),
                        progress=False)
    assert packed.chunks_written == plain.chunks_written > 0
    a, b = (zarr.open_group(tmp_path / n, mode="r") for n in ("n.zarr", "c.zarr"))
    for level in ("0", "1"):
        assert np.array_equal(a[level][:], b[level][:])


@pytest.mark.parametrize("mpp", [None, 0.37])
def test_read_region_path_matches_direct_decode(slide_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                mpp: float | None) -> None:
    """Slides without a direct tile decoder (non-TIFF vendors) go through read_region: same pixels."""
    import wsi_pipeline.tiling.run as run
    import wsi_pipeline.tiling.tasks as tasks

    cfg = TileConfig(tile=256, mpp=mpp, compressor="none")
    tile_slide(slide_path, tmp_path / "fast.zarr", config=cfg, progress=False)
    # the JPEG copy at level 0 (exact pixels); resampled, the default (lossless) store
    copying = TileConfig(tile=256, mpp=mpp, compressor="jpeg" if mpp is None else "zstd")
    copied = tile_slide(slide_path, tmp_path / "copied.zarr", config=copying, progress=False)
    assert copied.copied == (mpp is None)
    for module in (run, tasks):
        monkeypatch.setattr(module, "worker_decoder", lambda slide, level: None)
    tile_slide(slide_path, tmp_path / "slow.zarr", config=cfg, progress=False)
    assert _files(tmp_path / "fast.zarr") == _files(tmp_path / "slow.zarr")
    a, b = (zarr.open_group(tmp_path / n, mode="r")["0"] for n in ("slow.zarr", "copied.zarr"))
    assert np.array_equal(a[:], b[:])


def test_cli_bench_tiling(tmp_path: Path) -> None:
    """`wsi-pipeline bench tiling` runs the benchmark (options pass through to its own parser)."""
    from click.testing import CliRunner

    from workflows.cli import cli

    shown = CliRunner().invoke(cli, ["bench", "tiling", "--help"])
    assert "--phantom-size" in shown.output and "--sizes" in shown.output
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", "tiling", "--out", str(out), "--phantom-size", "0", "--compare-size",
                                      "0", "--mpp", "", "--sizes", "3000", "--scaling-reps", "1", "--reps", "1",
                                      "--scanner-size", "3000", "--scanner-mpp", "2.0"])
    assert result.exit_code == 0, result.output
    res = __import__("json").loads((out / "results.json").read_text())
    row = res["scaling"][0]
    assert row["size"] == 3000 and row["tile-jpeg"]["copied"] and not row["tile"]["copied"]
    assert row["tile_over_floor"] > 0 and row["tile"]["store_mb"] > row["tile-jpeg"]["store_mb"]
    assert 30 < row["tile"]["peak_rss_mib"] < 2000  # the measuring process's own high-water mark
    scanner = res["resampled"][0]["tile"]  # 0.2528 um/px, 4x levels: level 1 reduced 2x
    assert (scanner["level"], scanner["scale"]) == (1, 2.0)
    assert "| 3000 |" in (out / "results.md").read_text()


def test_label_pyramid_from_a_zarr_array_equals_the_in_memory_one(tmp_path: Path) -> None:
    """labels/glomeruli is written a chunk row at a time from the probability array (never read whole): same pixels
    on every level as thresholding the whole array in memory, odd shapes and partial chunks included."""
    rng = np.random.default_rng(3)
    prob = (rng.random((1, 301, 257)) * 255).astype(np.uint8)
    seg = zarr.create_array(tmp_path / "seg.zarr", shape=prob.shape, chunks=(1, 64, 64), dtype="uint8",
                            dimension_names=("c", "y", "x"))
    seg[:] = prob
    shapes, factors = [(301, 257), (151, 129), (76, 65), (38, 33)], [1, 2, 4, 8]
    expected = [lv.read() for lv in label_levels(prob[0] >= 128, shapes, factors)]
    assert expected[2].tolist() == (prob[0, ::4, ::4] >= 128).astype(np.uint8).tolist()
    path = write_label(tmp_path / "store", "glomeruli", label_levels(ThresholdedPlane(seg, threshold=128), shapes,
                                                                     factors),
                       factors=factors, mpp=2.0, translation=(0.0, 0.0), chunk=50)
    for k, want in enumerate(expected):
        got = zarr.open_array(path / str(k), mode="r")
        assert got.chunks == (1, min(50, want.shape[0]), min(50, want.shape[1]))
        np.testing.assert_array_equal(np.asarray(got[0]), want)
