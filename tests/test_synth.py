"""Synthetic phantom: determinism, tile independence, stain behaviour, files on disk, truth, real-patch colours."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import shape

from wsi_pipeline.annotations import CLASS_NAMES
from wsi_pipeline.errors import ConfigError
from wsi_pipeline.synth import (
    CLASSES, COMPONENTS, STAINS, Layout, PhantomSlides, components, make_layout, parse_stains, render_region,
    stain_style, truth_features, write_phantom,
)

SEED = 5


@pytest.fixture(scope="module")
def layout() -> Layout:
    return make_layout(2048, seed=SEED, n_glomeruli=4)


def glom(layout: Layout, cls: str):  # noqa: ANN201
    return next(g for g in layout.glomeruli if g.cls == cls)


def od(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(rgb.astype(np.float64), 1, 255) / 255.0)


def test_same_seed_same_pixels_other_seed_other_pixels(layout: Layout) -> None:
    g = layout.glomeruli[0]
    box = (int(g.cx) - 100, int(g.cy) - 80, 200, 160)
    a = render_region(layout, "PAS", *box)
    b = render_region(make_layout(2048, seed=SEED, n_glomeruli=4), "PAS", *box)
    assert np.array_equal(a, b)
    c = render_region(make_layout(2048, seed=SEED + 1, n_glomeruli=4), "PAS", *box)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


@pytest.mark.parametrize("stain", ["PAS", "CD34"])
def test_tiles_equal_the_whole_render_at_awkward_offsets(layout: Layout, stain: str) -> None:
    g = layout.glomeruli[1]
    x0, y0, w, h = int(g.cx) - 157, int(g.cy) - 133, 301, 259
    style = stain_style(stain, seed=SEED)
    assert style.blur > 0.4  # the halo path is exercised
    whole = render_region(layout, style, x0, y0, w, h)
    cols, rows = [0, 97, 211, w], [0, 1, 130, h]
    for r0, r1 in zip(rows, rows[1:]):
        for c0, c1 in zip(cols, cols[1:]):
            part = render_region(layout, style, x0 + c0, y0 + r0, c1 - c0, r1 - r0)
            assert np.array_equal(part, whole[r0:r1, c0:c1]), (stain, r0, c0)


def test_downsampled_render_matches_level0_structure(layout: Layout) -> None:
    g = layout.glomeruli[0]
    x0, y0 = int(g.cx) - 160, int(g.cy) - 160
    full = render_region(layout, "MASSON", x0, y0, 320, 320).astype(np.float64)
    low = render_region(layout, "MASSON", x0, y0, 80, 80, level_downsample=4).astype(np.float64)
    box = full.reshape(80, 4, 80, 4, 3).mean(axis=(1, 3))
    assert np.abs(low - box).mean() < 25  # point samples vs box means of the same tissue
    assert np.corrcoef(low[..., 0].ravel(), box[..., 0].ravel())[0, 1] > 0.6


def test_layout_has_all_classes_and_sensible_glomeruli() -> None:
    lay = make_layout(8192, seed=0)
    classes = [g.cls for g in lay.glomeruli]
    assert len(classes) >= 8 and set(classes) == set(CLASSES)
    assert [g.label for g in lay.glomeruli] == list(range(1, len(classes) + 1))
    for g in lay.glomeruli:
        diameter_um = 2 * g.radius * lay.mpp
        assert 90 <= diameter_um <= 140
        assert float(lay.core_distance(np.array(g.cx), np.array(g.cy))) < 0  # inside the core
    assert len(make_layout(4096, seed=1, n_glomeruli=7).glomeruli) == 7
    with pytest.raises(ConfigError, match="n_glomeruli=40"):
        make_layout(1024, seed=1, n_glomeruli=40)  # cannot fit: say so rather than return fewer
    with pytest.raises(ConfigError, match="size="):
        make_layout(100)
    with pytest.raises(ConfigError, match="mpp="):
        make_layout(1024, mpp=0.0)


def test_background_is_white_glass(layout: Layout) -> None:
    corner = render_region(layout, "PASM", 0, 0, 64, 64)  # the core runs along a diagonal, away from a corner
    mask = components(layout, np.arange(64.0)[None, :], np.arange(64.0)[:, None])
    if mask[COMPONENTS.index("tissue")].max() == 0:
        assert corner.mean() > 225


def test_sclerosis_shows_in_masson_and_silver_more_than_in_pas(layout: Layout) -> None:
    gs = glom(layout, "gs")
    box = (int(gs.cx) - 20, int(gs.cy) - 20, 40, 40)  # the middle of a globally sclerotic tuft
    pas, masson, pasm = (od(render_region(layout, s, *box)).reshape(-1, 3).mean(0) for s in ("PAS", "MASSON", "PASM"))
    # aniline blue absorbs red light: the red-channel OD (what makes it look blue) is far higher in MASSON
    assert masson[0] > pas[0] + 0.3
    assert masson[0] - masson[2] > pas[0] - pas[2] + 0.3
    assert pasm.mean() > pas.mean() + 0.3  # silver: black matrix
    noa = glom(layout, "noa")
    box_noa = (int(noa.cx) - 20, int(noa.cy) - 20, 40, 40)
    masson_noa = od(render_region(layout, "MASSON", *box_noa)).reshape(-1, 3).mean(0)
    assert masson[0] > masson_noa[0] + 0.2  # and it is the sclerosis, not any tuft


def test_segmental_sclerosis_is_one_sector(layout: Layout) -> None:
    ss = glom(layout, "ss")
    rt = 0.6 * ss.radius
    sick = (ss.cx + rt * np.cos(ss.sector), ss.cy + rt * np.sin(ss.sector))
    well = (ss.cx - rt * np.cos(ss.sector), ss.cy - rt * np.sin(ss.sector))
    scler = COMPONENTS.index("scler")
    c_sick = components(layout, np.array([sick[0]]), np.array([sick[1]]))[scler, 0]
    c_well = components(layout, np.array([well[0]]), np.array([well[1]]))[scler, 0]
    assert c_sick > 0.5 and c_well == 0


def test_ihc_markers_hit_their_cells(layout: Layout) -> None:
    g = glom(layout, "noa")
    x0, y0 = int(g.cx) - 200, int(g.cy) - 200
    xs, ys = np.arange(x0, x0 + 400, dtype=np.float64), np.arange(y0, y0 + 400, dtype=np.float64)
    comp = components(layout, xs[None, :], ys[:, None])
    macro = comp[COMPONENTS.index("macro")] > 0.5
    endo = comp[COMPONENTS.index("endo")] > 0.5
    cyto = (comp[COMPONENTS.index("cyto")] > 0.5) & ~macro & ~endo
    assert macro.sum() > 50 and endo.sum() > 500 and cyto.sum() > 5000
    cd68, cd34 = od(render_region(layout, "CD68", x0, y0, 400, 400)), od(render_region(layout, "CD34", x0, y0, 400, 400))
    assert cd68[macro].mean() > cd68[cyto].mean() + 0.3  # DAB-brown macrophages
    assert cd68[macro][:, 2].mean() > cd68[macro][:, 0].mean()  # brown: blue light absorbed most
    assert cd34[endo][:, 1].mean() > cd34[cyto][:, 1].mean() + 0.3  # red chromogen on endothelium


@pytest.mark.parametrize("stain, code", [("PAS", "02"), ("PASM", "03"), ("CD68", "16"), ("CD34", "39"), ("HE", "01")])
def test_stain_colours_resemble_the_real_patches(layout: Layout, stains_dir: Path, stain: str, code: str) -> None:
    """Mean OD colour direction of tissue pixels: phantom vs the real patch of that stain (and not the others)."""
    g = layout.glomeruli[0]

    def direction(rgb: np.ndarray) -> np.ndarray:
        px = rgb.reshape(-1, 3)
        m = od(px[px.mean(1) < 215]).mean(0)
        return m / np.linalg.norm(m)

    phantom = direction(render_region(layout, stain, int(g.cx) - 160, int(g.cy) - 160, 320, 320))
    real = {c: direction(np.asarray(Image.open(stains_dir / f"orig_patch_stain_{c}.png").convert("RGB")))
            for c in ("02", "03", "16", "39", "01")}
    assert float(phantom @ real[code]) > 0.985
    assert float(phantom @ real[code]) >= max(float(phantom @ v) for v in real.values()) - 0.01


def test_parse_stains() -> None:
    assert parse_stains("pas, H&E ,Masson,PAS") == ("PAS", "HE", "MASSON")
    assert parse_stains(list(STAINS)) == STAINS
    with pytest.raises(ConfigError, match="'GIEMSA'"):
        parse_stains("PAS,GIEMSA")
    with pytest.raises(ConfigError):
        parse_stains(" , ")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomSlides:
    return write_phantom(tmp_path_factory.mktemp("phantom"), size=1024, stains=("PAS", "MASSON"), seed=3,
                         n_glomeruli=3, mpp=1.0)


def test_write_phantom_files_and_openslide(phantom: PhantomSlides) -> None:
    assert set(phantom.slides) == {"PAS", "MASSON"}
    folder = phantom.truth_geojson.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "phantom-s3-MASSON.svs", "phantom-s3-PAS.svs", "phantom-s3.labels.tif", "phantom-s3.truth.geojson"]
    g = phantom.glomeruli[0]
    for stain, path in phantom.slides.items():
        with openslide.OpenSlide(path) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(1.0)
            assert s.level_dimensions == ((1024, 1024), (512, 512))
            assert s.properties["aperio.Stain"] == stain
            x, y = int(g.cx) - 150, int(g.cy) - 150
            got = np.asarray(s.read_region((x, y), 0, (300, 300)).convert("RGB")).astype(np.int16)
        want = render_region(phantom.layout, stain, x, y, 300, 300).astype(np.int16)
        assert np.abs(got - want).mean() < 6  # JPEG tolerance
        assert np.abs(got.mean((0, 1)) - want.mean((0, 1))).max() < 3


def test_truth_geojson_follows_qupath_conventions(phantom: PhantomSlides) -> None:
    fc = json.loads(phantom.truth_geojson.read_text(encoding="utf-8"))
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == len(phantom.glomeruli) == 3
    ids = [f["id"] for f in fc["features"]]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 5 for i in ids)
    names = set()
    for f, g in zip(fc["features"], phantom.glomeruli):
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert cls["name"] == CLASS_NAMES[g.cls]  # the job's class names (wsi_pipeline.annotations)
        assert len(cls["color"]) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
        names.add(cls["name"])
        poly = shape(f["geometry"])
        assert poly.is_valid and shapely.set_precision(poly, 0.01).is_valid
        assert poly.contains(shapely.Point(g.cx, g.cy))
        area_um2 = props["measurements"]["area_um2"]
        assert area_um2 == pytest.approx(poly.area * 1.0, rel=1e-3)
        assert area_um2 == pytest.approx(np.pi * g.radius**2, rel=0.05)
        assert "type" not in props
    assert names == set(CLASS_NAMES.values())
    again = truth_features(make_layout(1024, seed=3, n_glomeruli=3, mpp=1.0))
    assert [f["id"] for f in again["features"]] == ids  # uuid5 from the seed: stable across runs


def test_label_mask_matches_the_polygons(phantom: PhantomSlides) -> None:
    with tifffile.TiffFile(phantom.label_mask) as tif:
        labels = tif.pages.first.asarray()
        meta = json.loads(tif.pages.first.description)
    ds = meta["downsample"]
    assert labels.dtype == np.uint16 and labels.shape == (1024 // ds, 1024 // ds)
    assert meta["labels"] == {str(g.label): g.cls for g in phantom.glomeruli}
    assert set(np.unique(labels)) == {0, *(g.label for g in phantom.glomeruli)}
    for g in phantom.glomeruli:
        assert labels[int(g.cy // ds), int(g.cx // ds)] == g.label
        poly = shapely.Polygon(g.polygon())
        assert (labels == g.label).sum() * ds * ds == pytest.approx(poly.area, rel=0.05)


def test_a_failing_stain_writer_stops_the_others_and_leaves_no_files(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_pipeline.synth import stains as stains_mod

    real = stains_mod.StainStyle.od_matrix

    def broken(self: stains_mod.StainStyle) -> np.ndarray:
        if self.stain == "CD68":
            raise RuntimeError("dye ran out")
        return real(self)

    monkeypatch.setattr(stains_mod.StainStyle, "od_matrix", broken)
    with pytest.raises(RuntimeError, match="dye ran out"):
        write_phantom(tmp_path, size=512, stains="PAS,CD68,HE", n_glomeruli=1, mpp=1.0)
    assert list(tmp_path.iterdir()) == []


def test_render_threads_do_not_change_the_pixels(tmp_path: Path) -> None:
    one = write_phantom(tmp_path / "one", size=640, stains="PAS,HE", n_glomeruli=1, seed=8, mpp=1.0, threads=1)
    three = write_phantom(tmp_path / "three", size=640, stains="PAS,HE", n_glomeruli=1, seed=8, mpp=1.0, threads=3)
    for stain in ("PAS", "HE"):
        with tifffile.TiffFile(one.slides[stain]) as a, tifffile.TiffFile(three.slides[stain]) as b:
            assert np.array_equal(a.pages.first.asarray(), b.pages.first.asarray())
    with pytest.raises(ConfigError, match="threads=0"):
        write_phantom(tmp_path / "zero", size=512, threads=0)


def test_reuse_returns_a_recorded_phantom_and_rewrites_a_changed_or_damaged_one(tmp_path: Path) -> None:
    kwargs = dict(size=512, stains="PAS", n_glomeruli=1, seed=2, mpp=1.0, reuse=True)
    first = write_phantom(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not first.reused and (tmp_path / "phantom-s2.phantom.json").is_file()
    written = first.slides["PAS"].stat().st_mtime_ns
    again = write_phantom(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert again.reused and again.slides == first.slides and again.glomeruli == first.glomeruli
    assert again.slides["PAS"].stat().st_mtime_ns == written  # not rewritten
    other_seed = write_phantom(tmp_path, **{**kwargs, "seed": 3})  # type: ignore[arg-type]
    assert not other_seed.reused  # another name, another record
    bigger = write_phantom(tmp_path, **{**kwargs, "size": 640})  # type: ignore[arg-type]
    assert not bigger.reused  # same name, other parameters: rendered again
    with tifffile.TiffFile(bigger.slides["PAS"]) as tif:
        assert tif.pages.first.shape[:2] == (640, 640)
    bigger.label_mask.unlink()  # a file went missing: rendered again
    assert not write_phantom(tmp_path, **{**kwargs, "size": 640}).reused  # type: ignore[arg-type]
    assert write_phantom(tmp_path, **{**kwargs, "size": 640}).reused  # type: ignore[arg-type]
    assert not write_phantom(tmp_path, **{**kwargs, "size": 512, "reuse": False}).reused  # type: ignore[arg-type]
    assert not (tmp_path / "phantom-s2.phantom.json").exists()  # the 640 px record no longer vouches for 512 px
    assert not write_phantom(tmp_path, **{**kwargs, "size": 640}).reused  # type: ignore[arg-type]
