"""Tiling by copying the slide's JPEG tiles: exact pixels, copied pyramids, the ``wsi_pipeline.jpeg`` zarr codec,
plain-zarr readers in fresh processes, kill + resume."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from wsi_pipeline.errors import StoreError
from wsi_pipeline.export.tiff import aperio_description, write_pyramidal_tiff
from wsi_pipeline.tiling.codec import (
    JpegTilesCodec,
    decode_jpeg_chunk,
    encode_jpeg_chunk,
    pack_jpeg_tiles,
)
from wsi_pipeline.slide import open_slide
from wsi_pipeline.tiling import TileConfig, read_store_info, tile_slide
from wsi_pipeline.tiling.plan import SourceLevel, plan_pyramid, plan_tiling, reduce2
from wsi_pipeline.tiling.shards import JpegChunks, create_image_array, written_chunks
from wsi_pipeline.tiling.tasks import worker_decoder

ROOT = Path(__file__).resolve().parents[1]
PAS = ROOT.parent / "shared" / "data" / "kidney-stains" / "orig_patch_stain_02.png"
W, H = 2345, 1777  # awkward: not a multiple of any tile size
TISSUE_X, TISSUE_Y = 900, 600  # tissue fills [900, W) x [600, H): it touches the right and bottom edges


def _region(x: int, y: int, w: int, h: int) -> np.ndarray:
    patch = _patch()
    out = np.full((h, w, 3), 246, np.uint8)
    yy, xx = np.mgrid[y:y + h, x:x + w]
    m = (xx >= TISSUE_X) & (yy >= TISSUE_Y)
    out[m] = patch[yy[m] % 1000, xx[m] % 1000]
    return out


_PATCH: list[np.ndarray] = []


def _patch() -> np.ndarray:
    if not _PATCH:
        _PATCH.append(np.asarray(Image.open(PAS).convert("RGB")))
    return _PATCH[0]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aperio-style JPEG SVS with 2x levels (2345, 1173, 587, 294 px wide) and 256-px tiles."""
    return write_pyramidal_tiff(tmp_path_factory.mktemp("slides") / "pas.svs", _region, size=(W, H), mpp=0.25,
                                tile=256, quality=90)


@pytest.fixture(scope="module")
def aperio4x_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aperio's own layout: 128-px tiles, one reduced level at 4x with rounded-down size, stripped thumbnail."""
    path = tmp_path_factory.mktemp("slides") / "aperio4x.svs"
    img = _region(0, 0, W, H)
    small = np.asarray(Image.fromarray(img).resize((W // 4, H // 4), Image.Resampling.BOX))
    thumb = np.asarray(Image.fromarray(img).resize((W // 16, H // 16), Image.Resampling.BOX))
    jpeg = {"compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(128, 128), description=aperio_description((W, H), tile=128, mpp=0.25, quality=90,
                                                                        compression="jpeg"), **jpeg)
        tif.write(thumb, rowsperstrip=16, description=aperio_description(thumb.shape[1::-1], tile=128, mpp=None,
                                                                        quality=90, compression="jpeg"), **jpeg)
        tif.write(small, tile=(128, 128), subfiletype=0,
                  description=aperio_description(small.shape[1::-1], tile=128, mpp=None, quality=90,
                                                 compression="jpeg"), **jpeg)
    return path


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _rgb(arr: zarr.Array, y: int = 0, x: int = 0, h: int | None = None, w: int | None = None) -> np.ndarray:
    h = arr.shape[1] - y if h is None else h
    w = arr.shape[2] - x if w is None else w
    return np.asarray(arr[:, y:y + h, x:x + w]).transpose(1, 2, 0)


# -- planning ------------------------------------------------------------------------------------------------
def test_plan_pyramid_copies_aligned_power_of_two_levels() -> None:
    dims, ds = [(46000, 32001), (11500, 8000), (2875, 2000), (1437, 1000)], [1.0, 4.0, 16.0, 32.01]
    plan = plan_tiling(dims, ds, 0.25, target_mpp=None, tile=512, task_px=2048)

    def src(tile: tuple[int, int] | None, skip: int | None = None) -> list[SourceLevel]:
        return [SourceLevel(i, d, f, None if i == skip else tile) for i, (d, f) in enumerate(zip(dims, ds))]

    got = [(lv.shape, lv.factor, lv.copy_from) for lv in plan_pyramid(plan, src((256, 256)))]
    assert got == [((32001, 46000), 1, 0), ((8000, 11500), 4, 1), ((2000, 2875), 16, 2), ((1000, 1437), 32, 3),
                   ((500, 719), 64, None), ((250, 360), 128, None)]  # 4x steps kept; 2x means below the coarsest
    got = [(lv.factor, lv.copy_from) for lv in plan_pyramid(plan, src((256, 256), skip=2))]
    assert got[:3] == [(1, 0), (4, 1), (32, 3)]  # a level that cannot be copied is skipped
    # Aperio's 240-px tiles do not divide 512-px chunks: everything decoded, 2x pyramid
    assert all(lv.copy_from is None for lv in plan_pyramid(plan, src((240, 240))))
    assert [lv.factor for lv in plan_pyramid(plan, src((240, 240)))] == [2**i for i in range(len(plan.shapes))]
    assert len(plan_pyramid(plan, src((256, 256)), pyramid=False)) == 1
    resampled = plan_tiling(dims, ds, 0.25, target_mpp=1.5, tile=512, task_px=2048)
    assert all(lv.copy_from is None for lv in plan_pyramid(resampled, src((256, 256))))
    # a level whose size is not level 0's / 2^k (a crop, a different image) is never copied
    odd = [SourceLevel(0, dims[0], 1.0, (256, 256)), SourceLevel(1, (11000, 8000), 4.0, (256, 256))]
    assert [lv.copy_from for lv in plan_pyramid(plan, odd)][:2] == [0, None]


# -- exact pixels --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tile", "task_px"), [(256, 2048), (512, 2048), (256, 256)])
def test_copied_tiles_are_the_slides_pixels(slide_path: Path, tmp_path: Path, tile: int, task_px: int) -> None:
    store = tmp_path / "c.zarr"
    res = tile_slide(slide_path, store, config=TileConfig(compressor="jpeg", tile=tile, task_px=task_px), workers=2,
                     progress=False)
    assert res.copied and (res.level, res.scale, res.shape) == (0, 1.0, (H, W))
    group = zarr.open_group(store, mode="r")
    info = read_store_info(store)
    extra = [None] if tile < 294 else []  # the slide's coarsest level is 294 px wide: one 2x mean more
    assert [lv.copied_from_level for lv in info.pyramid] == [0, 1, 2, 3, *extra]
    assert [lv.factor for lv in info.pyramid] == [1, 2, 4, 8, 16][:4 + len(extra)]
    assert group["0"].metadata.codecs[0].codecs[1] == JpegTilesCodec(tile_shape=(256, 256), quality=90)
    with open_slide(slide_path) as slide:
        # odd offsets, windows across stored-tile and chunk seams, the bottom-right edge, the last row
        for x, y, w, h in [(1101, 771, 333, 211), (1023, 767, 290, 290), (W - 317, H - 143, 317, 143),
                           (TISSUE_X + 300, H - 1, W - TISSUE_X - 300, 1), (W - 1, TISSUE_Y + 5, 1, 700)]:
            assert np.array_equal(_rgb(group["0"], y, x, h, w), slide.read_region((x, y), 0, (w, h))), (x, y, w, h)
        # the copied levels are the slide's own levels (tissue chunks; the rest is white fill)
        for k in (1, 2, 3):
            lw, lh = slide.level_dimensions[k]
            ref = slide.read_region((0, 0), k, (lw, lh))
            got = _rgb(group[str(k)])
            assert got.shape == ref.shape
            y0, x0 = -(-TISSUE_Y // 2**k) + tile, -(-TISSUE_X // 2**k) + tile  # well inside tissue chunks
            assert np.array_equal(got[y0:, x0:], ref[y0:, x0:]), k
    if extra:  # below the slide's coarsest level: a 2x mean, JPEG-encoded
        err = np.abs(_rgb(group["4"]).astype(int) - reduce2(_rgb(group["3"])))
        assert err.mean() < 3 and group["4"].shape[1:] == (112, 147)  # q90 on a busy texture
    assert written_chunks(store, 0) == {(int(r), int(c)) for r, c in zip(*np.nonzero(
        _tissue_map(store, tile)))}


def _tissue_map(store: Path, tile: int) -> np.ndarray:
    """Chunks that hold any non-white pixel or were written (reads level "0" through zarr)."""
    arr = zarr.open_group(store, mode="r")["0"]
    rows, cols = -(-H // tile), -(-W // tile)
    keys = written_chunks(store, 0)
    out = np.zeros((rows, cols), bool)
    for r, c in keys:
        out[r, c] = True
    assert np.all(_rgb(arr, 0, 0, TISSUE_Y - tile, TISSUE_X - tile) == 255)  # glass chunks: never written
    return out


def test_aperio_4x_levels_are_copied(aperio4x_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "a.zarr"
    res = tile_slide(aperio4x_path, store, config=TileConfig(compressor="jpeg", tile=256), progress=False)
    assert res.copied
    group = zarr.open_group(store, mode="r")
    info = read_store_info(store)
    assert [(lv.factor, lv.copied_from_level) for lv in info.pyramid] == [
        (1, 0), (4, 1), (8, None), (16, None)]
    ms = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"][1] for d in ms] == [0.25, 1.0, 2.0, 4.0]
    with open_slide(aperio4x_path) as slide:
        assert slide.level_dimensions[1] == (W // 4, H // 4)
        for k in (0, 1):
            lw, lh = slide.level_dimensions[k]
            x, y = -(-TISSUE_X // 4**k), -(-TISSUE_Y // 4**k)
            assert np.array_equal(_rgb(group[str(k)], y, x), slide.read_region((0, 0), k, (lw, lh))[y:, x:]), k
    assert np.abs(_rgb(group["2"]).astype(int) - reduce2(_rgb(group["1"]))).mean() < 3


def test_aperio_rgb_tiles_with_tables_decode_like_openslide(fixtures_dir: Path) -> None:
    """Real Aperio tiles: RGB without a JFIF marker, shared JPEGTables (merged into each copied stream)."""
    with open_slide(fixtures_dir / "small.svs") as slide:
        dec = worker_decoder(slide, 0)
        assert dec is not None and dec.copyable_jpeg and dec.jpeg_colorspace == "RGB"  # type: ignore[attr-defined]
        chunk = pack_jpeg_tiles([dec.read_raw(0, 0)])
        px = decode_jpeg_chunk(chunk, shape=(64, 64), tile_shape=(64, 64), colorspace="RGB")
        assert np.array_equal(px[:16, :16], slide.read_region((0, 0), 0, (16, 16)))
        wrong = decode_jpeg_chunk(chunk, shape=(64, 64), tile_shape=(64, 64), colorspace=None)
        assert not np.array_equal(wrong[:16, :16], px[:16, :16])  # the hint matters


# -- the codec -------------------------------------------------------------------------------------------------
def test_codec_round_trip_through_zarr(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    img = np.full((3, 150, 200), 255, np.uint8)
    img[:, 20:130, 70:200] = np.repeat(rng.integers(60, 200, (1, 110, 130), dtype=np.uint8), 3, axis=0)
    group = zarr.open_group(tmp_path / "c.zarr", mode="w")
    arr = create_image_array(group, "0", shape=(150, 200), tile=64, shard=128,
                             codec=JpegChunks(tile_shape=(32, 32), quality=95))
    arr[:] = img  # zarr's own write path encodes through the codec
    back = zarr.open_group(tmp_path / "c.zarr", mode="r")["0"][:]
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img).mean() < 3
    assert np.all(back[:, :16, :64] == 255)  # all-white sub-tiles are stored as absent: exact
    # direct helpers: absent sub-tiles are the fill, sub-tiles land in row-major order
    a = np.full((32, 32, 3), 10, np.uint8)
    data = pack_jpeg_tiles([b"", bytes(encode_jpeg_chunk(a, tile_shape=(32, 32), quality=100)[4:])])
    px = decode_jpeg_chunk(data, shape=(32, 64), tile_shape=(32, 32), fill=7)
    assert np.all(px[:, :32] == 7) and np.abs(px[:, 32:].astype(int) - 10).max() <= 1
    with pytest.raises(ValueError, match="index says"):
        decode_jpeg_chunk(data[:-5], shape=(32, 64), tile_shape=(32, 32))
    one = encode_jpeg_chunk(a, tile_shape=(32, 32), quality=90)
    with pytest.raises(ValueError, match="does not decode"):  # a 32-px stream where 64 px are declared
        decode_jpeg_chunk(one, shape=(64, 64), tile_shape=(64, 64))
    with pytest.raises(ValueError, match="does not decode"):  # damaged entropy-coded data
        decode_jpeg_chunk(one[:40] + bytes(len(one) - 40), shape=(32, 32), tile_shape=(32, 32))
    assert JpegTilesCodec.from_dict(JpegTilesCodec(tile_shape=(8, 16), colorspace="RGB").to_dict()) == \
        JpegTilesCodec(tile_shape=(8, 16), colorspace="RGB")


_READER = """
import hashlib, sys
if sys.argv[2] == "no-entry-points":  # then importing the package that owns the format registers the codec
    import importlib.metadata as md
    md.entry_points = lambda **kw: md.EntryPoints([])
    import wsi_pipeline.tiling  # noqa: F401
import zarr
group = zarr.open_group(sys.argv[1], mode="r")
print(hashlib.sha256(group["0"][:].tobytes() + group["1"][:].tobytes()).hexdigest())
"""


@pytest.mark.parametrize("how", ["entry-point", "no-entry-points"])
def test_plain_zarr_reads_the_store_in_a_fresh_process(slide_path: Path, tmp_path: Path, how: str) -> None:
    import hashlib

    store = tmp_path / "s.zarr"
    tile_slide(slide_path, store, config=TileConfig(compressor="jpeg", tile=512), progress=False)
    group = zarr.open_group(store, mode="r")
    want = hashlib.sha256(group["0"][:].tobytes() + group["1"][:].tobytes()).hexdigest()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", _READER, str(store), how], capture_output=True, text=True,
                         cwd=tmp_path, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == want


# -- store options, resume -----------------------------------------------------------------------------------
def test_settings_digest_covers_the_chunk_format(slide_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "d.zarr"
    tile_slide(slide_path, store, config=TileConfig(compressor="jpeg", tile=256), progress=False)
    for other in (TileConfig(tile=256, compressor="none"), TileConfig(compressor="jpeg", tile=256, jpeg_quality=80)):
        with pytest.raises(StoreError, match="settings digest"):
            tile_slide(slide_path, store, config=other, progress=False)
    raw = tile_slide(slide_path, store, config=TileConfig(tile=256, compressor="none"), overwrite=True,
                     progress=False)
    assert not raw.copied and read_store_info(store).pyramid[0].chunks["kind"] == "raw"


def test_jpeg_compressor_encodes_what_cannot_be_copied(slide_path: Path, tmp_path: Path) -> None:
    cfg = TileConfig(tile=200, compressor="jpeg", jpeg_quality=95)  # 200 is not a multiple of the 256-px tiles
    res = tile_slide(slide_path, tmp_path / "j.zarr", config=cfg, progress=False)
    raw = tile_slide(slide_path, tmp_path / "r.zarr", config=TileConfig(tile=200), progress=False)
    assert not res.copied and not raw.copied and res.chunks_written == raw.chunks_written
    a, b = (zarr.open_group(tmp_path / n, mode="r")["0"] for n in ("j.zarr", "r.zarr"))
    err = np.abs(_rgb(a).astype(int) - _rgb(b))
    assert err.mean() < 2.5 and np.all(_rgb(a, 0, 0, 300, 600) == 255)
    size = {n: sum(p.stat().st_size for p in (tmp_path / n / "0").rglob("*")) for n in ("j.zarr", "r.zarr")}
    assert size["j.zarr"] * 4 < size["r.zarr"]


_KILLABLE = """
import sys, time
import wsi_pipeline.tiling.tasks as tasks
from wsi_pipeline.tiling import TileConfig, tile_slide
write = tasks.write_atomic
def slow_write(path, data):  # copying is too quick to interrupt: same bytes, later
    time.sleep(0.02)
    write(path, data)
tasks.write_atomic = slow_write
tile_slide(sys.argv[1], sys.argv[2], config=TileConfig(compressor="jpeg", tile=256, task_px=256), workers=1,
           progress=False)
"""


def test_kill_mid_copy_then_resume_is_byte_identical(
    slide_path: Path,
    tmp_path: Path,
    sigkill_after_markers: Callable[[subprocess.Popen[bytes], Path, int], dict[Path, int]],
) -> None:
    cfg = TileConfig(compressor="jpeg", tile=256, task_px=256)  # one chunk per block
    reference = tmp_path / "ref.zarr"
    ref = tile_slide(slide_path, reference, config=cfg, workers=1, progress=False)
    assert ref.copied
    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(slide_path), str(store)], cwd=ROOT)
    done_dir = store / "tiling_done" / "c"
    finished = sigkill_after_markers(proc, done_dir, 10)
    shards = [store / "0" / "c" / "0" / d.parent.name / d.name for d in finished]
    kept = {s: s.stat().st_mtime_ns for s in shards if s.exists()}
    assert len(kept) == len(finished) >= 10
    resumed = tile_slide(slide_path, store, config=cfg, workers=2, progress=False)
    assert resumed.blocks_skipped == len(finished) and resumed.blocks_run == ref.blocks_total - len(finished)
    assert all(p.stat().st_mtime_ns == t for p, t in {**finished, **kept}.items())
    assert _files(store) == _files(reference)
