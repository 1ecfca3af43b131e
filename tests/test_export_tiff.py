"""Streaming pyramidal TIFF writer: openslide/tifffile round trips, streaming, atomicity, argument checks."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsi_pipeline.errors import ConfigError, WsiPipelineError
from wsi_pipeline.export import downsample2, level_sizes, write_pyramidal_tiff
from wsi_pipeline.export.tiff import OmeInfo


def pattern(x: int, y: int, w: int, h: int) -> np.ndarray:
    """Smooth, position-coded test image (JPEG-friendly, every pixel knows where it is)."""
    yy, xx = np.mgrid[y:y + h, x:x + w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 37.0)
    g = 128 + 100 * np.cos(yy / 23.0)
    b = (xx + yy) / 8.0 % 200 + 20
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.calls.append((x, y, w, h))
        return pattern(x, y, w, h)


SIZE = (1000, 777)  # awkward: neither a multiple of the tile nor of 2


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorder]:
    rec = Recorder()
    path = write_pyramidal_tiff(tmp_path_factory.mktemp("svs") / "p.svs", rec, size=SIZE, mpp=0.25, tile=128,
                                quality=92, min_level_size=128, description_extra="Stain = PAS")
    return path, rec


def test_svs_opens_in_openslide_as_aperio(svs: tuple[Path, Recorder]) -> None:
    path, _ = svs
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert float(s.properties["openslide.objective-power"]) == pytest.approx(40)
        assert s.properties["aperio.Stain"] == "PAS"
        assert s.level_dimensions == tuple(level_sizes(SIZE, min_level_size=128))
        assert s.level_dimensions[:3] == ((1000, 777), (500, 389), (250, 195))
        assert "thumbnail" in s.associated_images
        got = np.asarray(s.read_region((301, 203), 0, (257, 190)).convert("RGB")).astype(np.int16)
        assert np.abs(got - pattern(301, 203, 257, 190)).mean() < 3.0
        # level 1 is the 2x box mean of level 0
        low = np.asarray(s.read_region((0, 0), 1, (500, 388)).convert("RGB")).astype(np.int16)
        ref = downsample2(pattern(0, 0, 1000, 776)).astype(np.int16)
        assert np.abs(low - ref).mean() < 3.0


def test_svs_readable_by_tifffile(svs: tuple[Path, Recorder]) -> None:
    path, _ = svs
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        first = tif.pages.first
        assert first.is_tiled and first.tilewidth == 128
        assert first.compression == tifffile.COMPRESSION.JPEG
        assert first.photometric == tifffile.PHOTOMETRIC.YCBCR
        assert first.description.startswith("Aperio Image Library")
        assert "|MPP = 0.25" in first.description
        assert not tif.pages[1].is_tiled  # Aperio thumbnail strip page
        data = first.asarray()
    assert data.shape == (777, 1000, 3)
    assert np.abs(data.astype(np.int16) - pattern(0, 0, 1000, 777)).mean() < 3.0


def test_svs_pyramid_levels_are_levels_not_label(svs: tuple[Path, Recorder]) -> None:
    """Reduced levels carry NewSubfileType 0 like Aperio's: tifffile lists them, the direct decoder finds them."""
    from wsi_pipeline.slide import open_slide

    path, _ = svs
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) > 1
        assert all(lv.keyframe.subfiletype == 0 for lv in levels)
        assert not any(s.name == "Label" for s in tif.series)
    with open_slide(path) as s:
        assert s.level_count == len(levels)
        for level in range(s.level_count):
            assert s.tile_decoder(level) is not None, level


def test_level0_is_streamed_in_small_blocks(svs: tuple[Path, Recorder]) -> None:
    _, rec = svs
    assert max(h for *_, h in rec.calls) <= 128
    assert max(w for _, _, w, _ in rec.calls) <= 128 * 8
    covered = np.zeros((777, 1000), np.int32)
    for x, y, w, h in rec.calls:
        covered[y:y + h, x:x + w] += 1
    assert (covered == 1).all()  # every level-0 pixel requested exactly once


def test_ome_flavor_pyramid_is_the_same_in_openslide_tiffslide_and_tifffile(tmp_path: Path) -> None:
    """One copy of each reduced level, in the main IFD chain (openslide) and in level 0's SubIFDs (OME readers)."""
    import tiffslide

    path = write_pyramidal_tiff(tmp_path / "p.ome.tif", pattern, size=SIZE, mpp=0.5, tile=128, flavor="ome",
                                min_level_size=128, description_extra="virtual PAS",
                                ome=OmeInfo(channel="PAS (virtual)", objective_power=20, annotations={"k": "a<b"}))
    want = [(h, w) for w, h in level_sizes(SIZE, min_level_size=128)]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert len(tif.pages) == len(want)  # the levels are main-chain pages ...
        assert list(tif.pages.first.subifds) == [p.offset for p in tif.pages[1:]]  # ... and level 0's SubIFDs
        root = ET.fromstring(tif.ome_metadata)
        pixels = root.find(".//{*}Pixels")
        assert pixels is not None
        assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.5)
        assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.5)
        assert pixels.get("PhysicalSizeXUnit") == "µm"
        assert root.find(".//{*}Channel").get("Name") == "PAS (virtual)"
        assert float(root.find(".//{*}Objective").get("NominalMagnification")) == 20
        assert root.find(".//{*}M").text == "a<b" and root.find(".//{*}Image").get("Name") == "virtual PAS"
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == want
        assert np.abs(levels[0].asarray().astype(np.int16) - pattern(0, 0, *SIZE)).mean() < 3.0
        top = levels[-1].asarray()
    with openslide.OpenSlide(path) as s, tiffslide.TiffSlide(path) as ts:
        assert s.level_dimensions == ts.level_dimensions == tuple((w, h) for h, w in want)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        w, h = s.level_dimensions[-1]
        assert np.array_equal(np.asarray(s.read_region((0, 0), s.level_count - 1, (w, h)).convert("RGB")), top)


def test_lossless_flavor_is_exact_at_every_level(tmp_path: Path) -> None:
    path = write_pyramidal_tiff(tmp_path / "p.tif", pattern, size=(300, 211), mpp=None, tile=64,
                                compression="zlib", flavor="tiff", min_level_size=40)
    with tifffile.TiffFile(path) as tif:
        pages = [p.asarray() for p in tif.pages]
    expect = pattern(0, 0, 300, 211)
    assert np.array_equal(pages[0], expect)
    for page in pages[1:]:
        expect = downsample2(expect)
        assert np.array_equal(page, expect)
    assert [p.shape[:2] for p in pages] == [(211, 300), (106, 150), (53, 75), (27, 38)]


def test_four_x_levels_as_aperio_scanners_write_them(tmp_path: Path) -> None:
    """``level_step=4``: levels 1x, 4x, 16x (each the 2x reduction applied twice), read by openslide as aperio."""
    path = write_pyramidal_tiff(tmp_path / "p.tif", pattern, size=(300, 211), mpp=None, tile=64,
                                compression="zlib", flavor="tiff", min_level_size=20, level_step=4)
    with tifffile.TiffFile(path) as tif:
        pages = [p.asarray() for p in tif.pages]
    assert [p.shape[:2] for p in pages] == [(211, 300), (53, 75), (14, 19)]
    assert np.array_equal(pages[1], downsample2(downsample2(pattern(0, 0, 300, 211))))
    assert np.array_equal(pages[2], downsample2(downsample2(pages[1])))
    svs = write_pyramidal_tiff(tmp_path / "p.svs", pattern, size=SIZE, mpp=0.2528, tile=128, min_level_size=40,
                               level_step=4)
    with openslide.OpenSlide(svs) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert osr.level_dimensions == ((1000, 777), (250, 195), (63, 49), (16, 13))
        assert [round(d) for d in osr.level_downsamples] == [1, 4, 16, 61]


def test_failing_region_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "slide.svs"
    write_pyramidal_tiff(target, pattern, size=(256, 256), mpp=0.5, tile=64)
    before = target.read_bytes()

    def broken(x: int, y: int, w: int, h: int) -> np.ndarray:
        if y >= 128:
            raise RuntimeError("scanner fell over")
        return pattern(x, y, w, h)

    with pytest.raises(RuntimeError, match="scanner fell over"):
        write_pyramidal_tiff(target, broken, size=(256, 256), mpp=0.5, tile=64)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["slide.svs"]  # no temp file, no scratch folder
    with pytest.raises(RuntimeError):
        write_pyramidal_tiff(tmp_path / "new.svs", broken, size=(256, 256), mpp=0.5, tile=64)
    assert sorted(os.listdir(tmp_path)) == ["slide.svs"]


def test_region_with_wrong_shape_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"region\(0, 0, 64, 64\) returned"):
        write_pyramidal_tiff(tmp_path / "x.svs", lambda x, y, w, h: np.zeros((h, w), np.uint8), size=(64, 64),
                             mpp=0.5, tile=64)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, name", [
    ({"tile": 100}, "tile=100"), ({"flavor": "ndpi"}, "flavor='ndpi'"), ({"quality": 0}, "quality=0"),
    ({"compression": "webp2"}, "compression='webp2'"), ({"mpp": -1.0}, "mpp=-1.0"), ({"size": (0, 10)}, "size="),
    ({"level_step": 3}, "level_step=3"),
])
def test_bad_arguments_name_the_parameter(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"size": (64, 64), "mpp": 0.5, **kwargs}
    with pytest.raises(ConfigError, match=name.replace("(", r"\(")) as info:
        write_pyramidal_tiff(tmp_path / "x.svs", pattern, **args)  # type: ignore[arg-type]
    assert isinstance(info.value, (WsiPipelineError, ValueError))


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        write_pyramidal_tiff(tmp_path / "nope" / "x.svs", pattern, size=(64, 64), mpp=0.5)


def test_level_sizes_halve_down_to_the_minimum() -> None:
    assert level_sizes((40000, 30000)) == [(40000, 30000), (20000, 15000), (10000, 7500), (5000, 3750),
                                            (2500, 1875), (1250, 938), (625, 469), (313, 235)]
    assert level_sizes((300, 200)) == [(300, 200)]
    assert json.dumps(level_sizes((513, 10))) == "[[513, 10], [257, 5]]"
