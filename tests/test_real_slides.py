"""Every file in ``../shared/data/real-slides`` (written by real scanners or converters), read in place.

Each file has an expected outcome: which backend opens it, its geometry and MPP, and pixels checked against an
independent reader (openslide where it opens the file, imagecodecs on the raw DICOM frames otherwise), or the
clear reason it is refused. A file added to the folder without an entry here fails the coverage test.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import openslide
import pytest

from workflows.job_config import JobConfig
from workflows.slide_job import run_slide
from wsi_pipeline.errors import SlideError
from wsi_pipeline.slide import open_slide
from wsi_pipeline.tiling import TileConfig, read_store_info, tile_slide

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-slides"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")

# file -> (backend class, level-0 size, mpp or None); files that must fail -> the words their reason must hold
OPENS = {
    "aperio/CMU-1-Small-Region.svs": ("OpenSlideSlide", (2220, 2967), 0.499),
    "aperio/tcga-cr-7395-01a-01-ts1.svs": ("OpenSlideSlide", (4443, 3567), None),
    "dicom/multi_frame_jpeg_camelyon_challenge_image.dcm": ("OpenSlideSlide", (1152, 700), 28.969),
    "dicom/multi_frame_jpeg2000_camelyon_challenge_image.dcm": ("OpenSlideSlide", (1696, 812), 28.969),
    "dicom/small_dicom.dcm": ("DicomFramesSlide", (3236, 2638), None),
    "generic-tiff/kidney-48-5.tif": ("TiffSlide", (1493, 901), None),
}
FAILS = {
    "perkinelmer-qptiff/small_vectra.qptiff": ("QPTIFF", "fluorescence", "DAPI", "brightfield RGB"),
    "zeiss-czi/RGB-8bit.czi": ("openslide cannot open it", "Zeiss CZI", "OME-TIFF"),
}


def _slides() -> list[str]:
    return sorted(str(p.relative_to(REAL)) for p in REAL.rglob("*") if p.is_file() and p.suffix not in (".md", ".json"))


def test_every_real_file_has_an_expected_outcome() -> None:
    assert _slides() == sorted([*OPENS, *FAILS])


@pytest.mark.parametrize("name", sorted(OPENS))
def test_real_slide_opens_with_its_geometry_and_pixels(name: str) -> None:
    backend, size, mpp = OPENS[name]
    with open_slide(REAL / name) as s:
        assert type(s).__name__ == backend
        assert s.dimensions == size
        assert (s.mpp is None) if mpp is None else s.mpp == pytest.approx((mpp, mpp), abs=2e-3)
        x, y = size[0] // 3, size[1] // 3
        px = s.read_region((x, y), 0, (300, 200))
        assert px.shape == (200, 300, 3) and px.dtype == np.uint8 and px.std() > 1  # real pixels, not fill
        if backend == "OpenSlideSlide":
            with openslide.OpenSlide(REAL / name) as o:
                ref = np.asarray(o.read_region((x, y), 0, (300, 200)).convert("RGB"))
            assert np.array_equal(px, ref)
        thumb = s.thumbnail(256)
        assert max(thumb.shape[:2]) == 256


@pytest.mark.parametrize("name", ["dicom/multi_frame_jpeg_camelyon_challenge_image.dcm",
                                  "dicom/multi_frame_jpeg2000_camelyon_challenge_image.dcm"])
def test_wsidicom_backend_reads_what_openslide_reads(name: str) -> None:
    """The wsidicom backend (used for DICOM openslide cannot open) gives openslide's pixels and MPP."""
    with open_slide(REAL / name, backend="dicom") as s, openslide.OpenSlide(REAL / name) as o:
        assert type(s).__name__ == "WsiDicomSlide" and s.dimensions == o.dimensions
        assert s.mpp == pytest.approx((float(o.properties["openslide.mpp-x"]), float(o.properties["openslide.mpp-y"])))
        # inside the image (outside it openslide returns transparent pixels, the Slide interface white)
        for loc in ((0, 0), (37, 411), (s.dimensions[0] - 160, s.dimensions[1] - 120)):
            ref = np.asarray(o.read_region(loc, 0, (160, 120)).convert("RGB"))
            assert np.array_equal(s.read_region(loc, 0, (160, 120)), ref)


def test_dicom_openslide_cannot_open_is_read_frame_by_frame() -> None:
    """small_dicom.dcm has no ImageType (openslide: "Couldn't get image flavor") and no PixelSpacing (wsidicom
    refuses it too): its TILED_FULL JPEG frames are read, matching imagecodecs' decode of the raw frames."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import generate_frames

    path = REAL / "dicom/small_dicom.dcm"
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    cols = -(-int(ds.TotalPixelMatrixColumns) // int(ds.Columns))
    with open_slide(path) as s:
        assert s.properties["dicom.missing"] == "ImageType,PixelSpacing"
        for r, c in ((0, 0), (2, 3), (5, 6)):  # the last frame is clipped at the matrix edge
            want = imagecodecs.jpeg8_decode(frames[r * cols + c])
            x, y = c * 500, r * 500
            w, h = min(500, s.dimensions[0] - x), min(500, s.dimensions[1] - y)
            assert np.array_equal(s.read_region((x, y), 0, (w, h)), want[:h, :w])
        across = s.read_region((450, 450), 0, (100, 100))  # four frames meet here
        assert np.array_equal(across[:50, :50], imagecodecs.jpeg8_decode(frames[0])[450:, 450:])


def test_dicom_frames_slide_tiles_with_an_mpp_override(tmp_path: Path) -> None:
    res = tile_slide(REAL / "dicom/small_dicom.dcm", tmp_path / "s.zarr", config=TileConfig(mpp=2.0, tile=256),
                     mpp_override=0.5, progress=False)
    assert res.chunks_written > 0 and read_store_info(tmp_path / "s.zarr").source["mpp_source"] == "override"


@pytest.mark.parametrize("name", sorted(FAILS))
def test_unsupported_real_file_fails_with_a_clear_reason(name: str) -> None:
    with pytest.raises(SlideError) as err:
        open_slide(REAL / name)
    assert err.value.path == str(REAL / name)
    for words in FAILS[name]:
        assert words in err.value.reason


@pytest.mark.parametrize("name", ["aperio/tcga-cr-7395-01a-01-ts1.svs", "dicom/small_dicom.dcm",
                                  "generic-tiff/kidney-48-5.tif", "perkinelmer-qptiff/small_vectra.qptiff"])
def test_job_reports_why_a_real_file_is_not_processed(name: str, tmp_path: Path) -> None:
    """No MPP in the file, or not brightfield: the job fails that slide, naming the file and the reason."""
    entry = run_slide(REAL / name, tmp_path / "out", config=JobConfig(), workers=1)
    assert entry["status"] == "failed" and Path(name).name in entry["reason"]
    assert ("microns-per-pixel" in entry["reason"]) != ("fluorescence" in entry["reason"])
