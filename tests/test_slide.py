"""Slide reading: real openslide fixtures, tifffile-written pyramids, both backends compared pixel for pixel."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_pipeline.errors import SlideError
from wsi_pipeline.slide import OpenSlideSlide, TiffSlide, choose_backend, open_slide
from wsi_pipeline.slide import base as slide_base
from wsi_pipeline.slide import openslide_backend
from wsi_pipeline.slide.tifffile_backend import escalate_tifffile_warnings
from wsi_pipeline.slide.tiles import merge_jpeg_tables

BACKENDS = ("openslide", "tifffile")


# -- files built in tmp ---------------------------------------------------------------------------
def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients + a block + noise: JPEG-friendly but not trivially uniform."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=-1)
    img[h // 7 : h // 2, w // 4 : w // 2] = (200, 40, 120)
    return (img + rng.integers(-20, 20, img.shape)).clip(0, 255).astype(np.uint8)


def write_aperio_svs(path: Path, photometric: str, *, size: tuple[int, int] = (700, 900), tile: int = 128) -> None:
    """A 3-level Aperio-style SVS: level 0, stripped thumbnail page, then reduced tiled levels (as Aperio writes)."""
    h, w = size
    img = _image(h, w, seed=3)
    desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=70|AppMag = 20|MPP = 0.2500"
    kw = {"tile": (tile, tile), "photometric": photometric, "compression": "jpeg", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, description=desc, **kw)
        thumb_desc = f"Aperio Image Library v12.0.0\n{w}x{h} -> {w // 8}x{h // 8} - |AppMag = 20|MPP = 0.2500"
        tw.write(img[::8, ::8], description=thumb_desc, photometric="rgb", compression="jpeg", metadata=None)
        for lv in (1, 2):
            tw.write(img[:: 2**lv, :: 2**lv], description=desc, **kw)


@pytest.fixture(scope="module", params=["rgb", "ycbcr"])
def aperio_svs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svs") / f"pyramid-{request.param}.svs"
    write_aperio_svs(path, request.param)
    return path


def write_ome(path: Path, img: np.ndarray, *, mpp: float, unit: str) -> None:
    """OME-TIFF with a 3-level SubIFD pyramid and a PhysicalSize in ``unit`` (Y is 1.5 x X to catch swaps)."""
    meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": mpp * 1.5, "PhysicalSizeYUnit": unit}
    kw = {"photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=2, tile=(128, 128), metadata=meta, **kw)
        tw.write(img[::2, ::2], subfiletype=1, tile=(128, 128), **kw)
        tw.write(img[::4, ::4], subfiletype=1, tile=(64, 64), **kw)


def _corrupt_tile(src: Path, dst: Path, index: int, *, at: int, nbytes: int = 64) -> None:
    """Copy ``src`` and overwrite ``nbytes`` of tile ``index`` starting ``at`` bytes into the tile."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tif:
        offset = int(tif.pages[0].dataoffsets[index])
    with open(dst, "r+b") as fh:
        fh.seek(offset + at)
        fh.write(bytes(np.random.default_rng(7).integers(0, 256, nbytes, dtype=np.uint8)))


# -- real fixtures ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small.svs", "😐.svs"])
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_small_svs_opens_and_reads(fixtures_dir: Path, name: str, backend: str) -> None:
    with open_slide(fixtures_dir / name, backend=backend) as s:
        assert s.dimensions == (16, 16) and s.level_count == 1 and s.level_downsamples == (1.0,)
        assert s.mpp == (0.499, 0.499) and s.mpp_source == "file"
        assert s.vendor == "aperio" and s.objective_power == 20.0 and s.bounds is None
        region = s.read_region((0, 0), 0, (16, 16))
        assert region.shape == (16, 16, 3) and region.dtype == np.uint8
        assert 0 < region.mean() < 255  # real image content, not a blank fill
    if backend == "auto":
        assert isinstance(s, OpenSlideSlide)  # openslide is the reference for Aperio


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_unopenable_and_missing_raise_slide_error(fixtures_dir: Path, tmp_path: Path, backend: str) -> None:
    text_svs = tmp_path / "notes.svs"
    text_svs.write_text("this is not a slide\n" * 20)
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((fixtures_dir / "small.svs").read_bytes()[:1500])
    for path in (fixtures_dir / "unopenable.tiff", tmp_path / "missing.svs", text_svs, truncated):
        with pytest.raises(SlideError) as info:
            open_slide(path, backend=backend)
        assert str(path) in str(info.value) and info.value.reason
        assert isinstance(info.value, OSError)


def test_truncated_tile_data_is_refused_at_open(tmp_path: Path) -> None:
    src = tmp_path / "tiled.tif"
    tifffile.imwrite(src, _image(256, 256, 1), tile=(64, 64), photometric="rgb", compression="zlib")
    data = src.read_bytes()
    with tifffile.TiffFile(src) as tif:  # cut inside the last tile, keep the IFD (tifffile writes it first)
        page = tif.pages[0]
        cut = int(page.dataoffsets[-1]) + int(page.databytecounts[-1]) // 2
    assert tif.pages[0].offset < cut
    cut_file = tmp_path / "cut.tif"
    cut_file.write_bytes(data[:cut])
    with pytest.raises(SlideError, match="truncated"):
        open_slide(cut_file, backend="tifffile")


def test_unreadable_svs_fails_on_read_then_reopens(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "unreadable.svs") as s:
        assert isinstance(s, OpenSlideSlide) and s.dimensions == (16, 16)
        first_handle = s._osr
        with pytest.raises(SlideError, match="unreadable.svs"):
            s.read_region((0, 0), 0, (16, 16))
        assert s._osr is None  # the errored handle is dropped, never reused
        # a region outside the (only, broken) tile needs no decode: must work on a fresh handle
        assert (s.read_region((100, 100), 0, (8, 8)) == 255).all()
        assert s._osr is not None and s._osr is not first_handle
        with pytest.raises(SlideError):
            s.read_region((0, 0), 0, (4, 4))  # still an error, not a crash or stale pixels


def test_unreadable_svs_tifffile_backend_raises(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "unreadable.svs", backend="tifffile") as s:
        with pytest.raises(SlideError, match="damaged tile"):
            s.read_region((0, 0), 0, (16, 16))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_boxes_tiff_matches_png(fixtures_dir: Path, backend: str) -> None:
    expected = np.asarray(Image.open(fixtures_dir / "boxes.png").convert("RGB"))
    with open_slide(fixtures_dir / "boxes.tiff", backend=backend) as s:
        assert s.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        np.testing.assert_array_equal(s.read_region((0, 0), 0, s.dimensions), expected)


def test_dicom_goes_to_openslide(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "boxes_0.dcm") as s:
        assert s.vendor == "dicom" and s.read_region((0, 0), 0, (4, 4)).shape == (4, 4, 3)


# -- both backends, pixel for pixel -----------------------------------------------------------------
def _assert_backends_equal(path: Path, regions: list[tuple[tuple[int, int], int, tuple[int, int]]]) -> None:
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tifffile") as b:
        assert a.level_dimensions == b.level_dimensions
        np.testing.assert_allclose(a.level_downsamples, b.level_downsamples)
        assert a.mpp == b.mpp and a.objective_power == b.objective_power
        for loc, level, size in regions:
            np.testing.assert_array_equal(a.read_region(loc, level, size), b.read_region(loc, level, size),
                                          err_msg=f"{path.name} loc={loc} level={level} size={size}")


def test_backends_equal_small_svs(fixtures_dir: Path) -> None:
    regions = [((0, 0), 0, (16, 16)), ((-3, -5), 0, (30, 29)), ((7, 11), 0, (20, 3)), ((15, 15), 0, (1, 1)),
               ((40, 40), 0, (5, 5)), ((3, 2), 0, (0, 4))]
    _assert_backends_equal(fixtures_dir / "small.svs", regions)


def test_backends_equal_boxes_every_level(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "boxes.tiff") as s:
        dims = s.level_dimensions
    regions = [((0, 0), lv, dims[lv]) for lv in range(4)]
    regions += [((0, 0), lv, (dims[lv][0] + 20, dims[lv][1] + 9)) for lv in range(4)]  # crosses right/bottom
    # level-aligned locations only: at fractional level positions openslide resamples sub-pixel (see module doc)
    regions += [((-13, -7), 0, (320, 260)), ((-14, -8), 1, (170, 134)), ((66, 122), 1, (101, 77))]
    _assert_backends_equal(fixtures_dir / "boxes.tiff", regions)


def test_backends_equal_aperio_pyramid(aperio_svs: Path) -> None:
    regions = []
    for level, ds in enumerate((1, 2, 4)):
        regions += [
            ((0, 0), level, (900 // ds, 700 // ds)),
            ((ds * 37, ds * 129), level, (301, 199)),  # not tile aligned, crosses right/bottom edges at level 2
            ((ds * -5, ds * -3), level, (900 // ds + 11, 700 // ds + 7)),  # crosses all four edges -> white
            ((ds * 127, ds * 127), level, (3, 130)),  # straddles a tile corner
        ]
    _assert_backends_equal(aperio_svs, regions)
    with open_slide(aperio_svs) as s:
        assert isinstance(s, OpenSlideSlide) and s.vendor == "aperio" and s.level_count == 3  # thumbnail excluded
        assert s.read_region((-10, -10), 0, (10, 10)).min() == 255


@pytest.mark.parametrize("compression", [33003, 33005])
def test_aperio_jpeg2000_equals_openslide(tmp_path: Path, compression: int) -> None:
    path = tmp_path / f"j2k-{compression}.svs"
    desc = "Aperio Image Library v12.0.0\n400x300 [0,0 400x300] (128x128) J2K/KDU Q=70|AppMag = 40|MPP = 0.2520"
    tifffile.imwrite(path, _image(300, 400, 9), tile=(128, 128), photometric="rgb", compression=compression,
                     description=desc, metadata=None)
    with open_slide(path, backend="tifffile") as t:
        assert t.tile_decoder(0) is not None and t.objective_power == 40.0  # the fast path, not tifffile's
    # 33003 holds YCbCr: our conversion uses openslide's own rounding tables, so pixels are identical
    _assert_backends_equal(path, [((0, 0), 0, (400, 300)), ((-7, 101), 0, (150, 260))])


def test_rgba_composited_on_white_both_backends(tmp_path: Path) -> None:
    rgba = np.zeros((100, 130, 4), np.uint8)
    rgba[..., :3] = _image(100, 130, 5)
    rgba[10:60, 20:90, 3] = 255
    rgba[60:80, 20:90, 3] = 128
    path = tmp_path / "alpha.tif"
    tifffile.imwrite(path, rgba, tile=(32, 32), photometric="rgb", extrasamples=["unassalpha"], compression="zlib")
    with open_slide(path, backend="tifffile") as s:
        out = s.read_region((0, 0), 0, (130, 100))
    assert (out[:10] == 255).all()  # fully transparent -> white, not black
    np.testing.assert_array_equal(out[10:60, 20:90], rgba[10:60, 20:90, :3])
    half = (rgba[60:80, 20:90, :3].astype(int) * 128 + 255 * 127 + 127) // 255
    np.testing.assert_array_equal(out[60:80, 20:90], half)
    with open_slide(path, backend="openslide") as o:
        diff = np.abs(o.read_region((0, 0), 0, (130, 100)).astype(int) - out)
    assert diff.max() <= 1  # openslide goes through premultiplied ARGB: one rounding step apart at partial alpha


# -- tile decoder -----------------------------------------------------------------------------------
def test_tile_decoder_matches_read_region(fixtures_dir: Path, aperio_svs: Path) -> None:
    for path, level in ((fixtures_dir / "small.svs", 0), (aperio_svs, 0), (aperio_svs, 1), (aperio_svs, 2)):
        for backend in BACKENDS:
            with open_slide(path, backend=backend) as s:
                dec = s.tile_decoder(level)
                assert dec is not None
                g = dec.grid
                assert (g.width, g.height) == s.level_dimensions[level]
                ds = round(s.level_downsamples[level])
                cells = [(r, c) for r in range(g.rows) for c in range(g.columns)]
                tiles = dec.read_tiles(cells[::-1])[::-1]  # reverse order in, results keep the caller's order
                for (r, c), tile in zip(cells, tiles):
                    assert tile.shape == (g.tile_height, g.tile_width, 3) and tile.dtype == np.uint8
                    vw, vh = min(g.tile_width, g.width - c * g.tile_width), min(g.tile_height, g.height - r * g.tile_height)
                    ref = s.read_region((c * g.tile_width * ds, r * g.tile_height * ds), level, (vw, vh))
                    np.testing.assert_array_equal(tile[:vh, :vw], ref)
                    np.testing.assert_array_equal(dec.decode(dec.read_raw(r, c)), tile)


def test_tile_decoder_raw_bytes_are_self_contained_jpeg(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "small.svs", backend="tifffile") as s:
        dec = s.tile_decoder(0)
        raw = dec.read_raw(0, 0)
        with tifffile.TiffFile(fixtures_dir / "small.svs") as tif:
            assert tif.pages[0].jpegtables  # small.svs uses shared tables: the merge path is exercised
        assert raw[:2] == b"\xff\xd8" and raw[-2:] == b"\xff\xd9" and raw.count(b"\xff\xd8") == 1
        with pytest.raises(IndexError):
            dec.read_raw(1, 0)
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(dec)
    assert merge_jpeg_tables(b"\xff\xd8T\xff\xd9", b"\xff\xd8D\xff\xd9") == b"\xff\xd8TD\xff\xd9"


def test_stripped_tiff_has_no_tile_decoder_but_reads(tmp_path: Path) -> None:
    gray = _image(203, 150, 2)[..., 0]
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, gray, rowsperstrip=37, compression="zlib", resolution=None)
    assert choose_backend(path) == "tifffile"  # openslide cannot read stripped TIFFs
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide) and s.tile_decoder(0) is None
        assert s.mpp is None and s.mpp_source is None  # no resolution tags: never guessed
        out = s.read_region((5, 30), 0, (150, 200))
        np.testing.assert_array_equal(out[:173, :145], np.repeat(gray[30:, 5:, None], 3, axis=2))
        assert (out[173:] == 255).all() and (out[:, 145:] == 255).all()


def test_planar_separate_tiff_reads_through_zarr_path(tmp_path: Path) -> None:
    img = _image(130, 170, 11)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate", tile=(64, 64),
                     compression="zlib")
    with open_slide(path, backend="tifffile") as s:
        assert s.tile_decoder(0) is None  # separate planes: tifffile's generic path, not the tile fast path
        np.testing.assert_array_equal(s.read_region((-3, 4), 0, (170, 130))[:126, 3:], img[4:, :167])


# -- OME-TIFF, mpp ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "unit"), [(0.5, "µm"), (500.0, "nm")])
def test_ome_subifd_pyramid(tmp_path: Path, value: float, unit: str) -> None:
    img = _image(500, 400, 4)
    path = tmp_path / "slide.ome.tif"
    write_ome(path, img, mpp=value, unit=unit)
    assert choose_backend(path) == "tifffile"
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide) and s.vendor == "ome"
        assert s.level_dimensions == ((400, 500), (200, 250), (100, 125))
        assert s.level_downsamples == (1.0, 2.0, 4.0)
        assert s.mpp == pytest.approx((0.5, 0.75)) and s.mpp_source == "file"
        for level in range(3):
            sub = img[:: 2**level, :: 2**level]
            np.testing.assert_array_equal(s.read_region((0, 0), level, s.level_dimensions[level]), sub)
            np.testing.assert_array_equal(np.asarray(s.zarr_level(level)[:]), sub)
        np.testing.assert_array_equal(s.read_region((2 * 91, 2 * 37), 1, (50, 60)), img[::2, ::2][37:97, 91:141])


def test_mpp_override_is_recorded(fixtures_dir: Path) -> None:
    for backend in BACKENDS:
        with open_slide(fixtures_dir / "small.svs", backend=backend, mpp_override=0.25) as s:
            assert s.mpp == (0.25, 0.25) and s.mpp_source == "override"
    with pytest.raises(ValueError, match="mpp_override"):
        open_slide(fixtures_dir / "small.svs", mpp_override=-1.0)
    with pytest.raises(ValueError, match="backend"):
        open_slide(fixtures_dir / "small.svs", backend="pillow")


# -- damage is an error, never zeros -----------------------------------------------------------------
def test_damaged_tiles_raise_not_zero_fill(tmp_path: Path) -> None:
    src = tmp_path / "ok.tif"
    tifffile.imwrite(src, _image(256, 256, 6), tile=(64, 64), photometric="rgb", compression="zlib")
    bad = tmp_path / "bad.tif"
    _corrupt_tile(src, bad, index=5, at=40)
    with open_slide(bad, backend="tifffile") as s:
        assert s.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)  # undamaged tile reads fine
        with pytest.raises(SlideError, match="bad.tif"):
            s.read_region((0, 0), 0, (256, 256))
        with pytest.raises(SlideError):
            s._read_generic(0, 0, 0, 256, 256)  # tifffile's zarr path escalates too
    with pytest.raises(SlideError):
        open_slide(bad, backend="openslide").read_region((0, 0), 0, (256, 256))


def test_damaged_jpeg_header_raises(aperio_svs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.svs"
    _corrupt_tile(aperio_svs, bad, index=3, at=2)
    with open_slide(bad, backend="tifffile") as s:
        with pytest.raises(SlideError, match="damaged tile"):
            s.read_region((0, 0), 0, (900, 700))


def test_tifffile_warnings_escalate(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="damaged"):
        with escalate_tifffile_warnings(tmp_path / "x.tif", "read"):
            logging.getLogger("tifffile").warning("TiffPage 0: missing segment")
    with escalate_tifffile_warnings(tmp_path / "x.tif", "read"):
        logging.getLogger("tifffile").warning("coercing invalid ASCII to bytes")  # metadata noise is tolerated
    with escalate_tifffile_warnings(tmp_path / "x.tif", "open", only_damage=True):
        logging.getLogger("tifffile").warning("OME series cannot read multi-file pyramids")  # a quirk, not damage
    with pytest.raises(SlideError, match="x.tif"):
        with escalate_tifffile_warnings(tmp_path / "x.tif", "open", only_damage=True):
            logging.getLogger("tifffile").warning("<tifffile.TiffPages @8> invalid page offset 1590")


# -- safety -------------------------------------------------------------------------------------------
def test_slide_refuses_pickling_and_bad_args(fixtures_dir: Path) -> None:
    for backend in BACKENDS:
        with open_slide(fixtures_dir / "small.svs", backend=backend) as s:
            with pytest.raises(TypeError, match="pickle"):
                pickle.dumps(s)
            with pytest.raises(IndexError, match="level=3"):
                s.read_region((0, 0), 3, (4, 4))
            with pytest.raises(ValueError, match="size"):
                s.read_region((0, 0), 0, (-1, 4))
    s = open_slide(fixtures_dir / "small.svs")
    s.close()
    with pytest.raises(SlideError, match="closed"):
        s.read_region((0, 0), 0, (4, 4))


def test_large_reads_are_split_into_blocks(aperio_svs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(aperio_svs, backend="tifffile") as t:
        expected = [t.read_region((-6, -2), lv, (480, 390)) for lv in (0, 1)]
    monkeypatch.setattr(openslide_backend, "_MAX_CALL_PIXELS", 97 * 61)
    monkeypatch.setattr(openslide_backend, "_MAX_CALL_WIDTH", 97)
    with open_slide(aperio_svs, backend="openslide") as s:
        for lv, exp in zip((0, 1), expected):
            np.testing.assert_array_equal(s.read_region((-6, -2), lv, (480, 390)), exp)


def test_thumbnail_in_strips_equals_one_shot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, _image(600, 1000, 8), tile=(64, 64), photometric="rgb", compression="zlib")
    with open_slide(path, backend="tifffile") as s:
        one_shot = s.thumbnail(100)
        monkeypatch.setattr(slide_base, "_THUMB_STRIP_PIXELS", 1000 * 25)  # forces 24 strips of 25 rows
        strips = s.thumbnail(100)
        odd = s.thumbnail(77)  # non-integer scale: strip edges fall between rows
        monkeypatch.undo()
        odd_ref = s.thumbnail(77)
    assert one_shot.shape == (60, 100, 3)
    np.testing.assert_array_equal(strips, one_shot)
    assert odd.shape == odd_ref.shape == (46, 77, 3)
    assert np.abs(odd.astype(int) - odd_ref).mean() < 2.0
