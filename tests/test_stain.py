"""Classic stain normalisation on the real kidney patches in ../shared/data/kidney-stains (read in place)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from wsi_pipeline import stain
from wsi_pipeline.stain.histogram import lookup_tables


def _load(stains_dir, code: str) -> np.ndarray:
    with Image.open(stains_dir / f"orig_patch_stain_{code}.png") as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def pas(stains_dir) -> np.ndarray:
    return _load(stains_dir, "02")


@pytest.fixture(scope="module")
def he(stains_dir) -> np.ndarray:
    return _load(stains_dir, "01")


@pytest.fixture(scope="module")
def jones(stains_dir) -> np.ndarray:
    return _load(stains_dir, "03")


def test_optical_density_round_trip_and_white_is_zero():
    rgb = np.random.default_rng(1).integers(1, 256, (7, 9, 3), dtype=np.uint8)
    assert (stain.od_to_rgb(stain.rgb_to_od(rgb)) == rgb).all()
    od = stain.rgb_to_od(np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8))
    assert od[0, 0].tolist() == [0.0, 0.0, 0.0] and np.isfinite(od).all() and (od[0, 1] > 5).all()


def test_gray_normalize_matches_pillow_L(pas):
    crop = pas[:200, :300]
    expected = np.asarray(Image.fromarray(crop).convert("L"))
    assert (stain.gray_normalize(crop) == expected).all()
    three = stain.gray_normalize(crop, channels=3)
    assert three.shape == crop.shape and (three[..., 1] == expected).all()


@pytest.mark.parametrize("method", ["reinhard", "histogram"])
def test_normalising_pas_to_itself_is_identity(pas, method):
    out = stain.apply(pas, stain.fit(pas, method=method))
    assert out.dtype == np.uint8 and out.shape == pas.shape
    assert np.abs(out.astype(int) - pas).max() <= 1


def test_macenko_pas_to_itself_is_close(pas):
    # Macenko projects OD onto a 2-stain plane, so the residual third component is lost: close, not exact.
    out = stain.apply(pas, stain.fit(pas, method="macenko"))
    diff = np.abs(out.astype(int) - pas)
    assert diff.mean() < 4 and np.percentile(diff, 95) < 12


def test_reinhard_matches_target_lab_statistics_on_tissue(pas, he):
    params = stain.fit_reinhard(he)
    out = stain.apply_reinhard(pas, params)
    mask = stain.tissue_mask(pas)
    lab = rgb2lab(out)[mask]
    assert np.allclose(lab.mean(axis=0), params.mean, atol=1.5)
    assert np.allclose(lab.std(axis=0), params.std, rtol=0.1)
    # and the target's own tissue statistics are what was recorded
    target_lab = rgb2lab(he)[stain.tissue_mask(he)]
    assert np.allclose(target_lab.mean(axis=0), params.mean, atol=1e-6)
    assert (out[~mask] == pas[~mask]).all()  # background untouched


def test_macenko_stain_matrix_of_pas_is_plausible(pas):
    params = stain.fit_macenko(pas)
    m = np.asarray(params.stain_matrix)
    assert m.shape == (2, 3)
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0)
    assert (m > 0).all()
    assert m[0, 0] >= m[1, 0]  # first row absorbs red most (hematoxylin-like)
    assert abs(m[0] @ m[1]) < 0.999  # two distinct stains
    assert all(c > 0 for c in params.max_concentrations)


@pytest.mark.parametrize("target_name", ["he", "jones"])
def test_macenko_moves_colour_towards_target(pas, target_name, request):
    target = request.getfixturevalue(target_name)
    out = stain.apply(pas, stain.fit(target, method="macenko"))
    mask = stain.tissue_mask(pas)
    goal = target[stain.tissue_mask(target)].mean(axis=0)
    before = np.linalg.norm(pas[mask].mean(axis=0) - goal)
    after = np.linalg.norm(out[mask].mean(axis=0) - goal)
    assert after < 0.75 * before, (before, after)


def test_histogram_specification_matches_channel_cdfs(pas, jones):
    params = stain.fit_histogram(jones)
    out = stain.apply_histogram(pas, params)
    mask = stain.tissue_mask(pas)
    ref = np.asarray(params.counts, dtype=float)
    for c in range(3):
        ref_cdf = np.cumsum(ref[c]) / ref[c].sum()
        got = np.bincount(out[mask][:, c], minlength=256)
        got_cdf = np.cumsum(got) / got.sum()
        src = np.bincount(pas[mask][:, c], minlength=256)
        src_cdf = np.cumsum(src) / src.sum()
        ks_after, ks_before = np.abs(got_cdf - ref_cdf).max(), np.abs(src_cdf - ref_cdf).max()
        assert ks_after < 0.02 and ks_after < ks_before / 10, (c, ks_before, ks_after)


def test_lookup_tables_are_monotone():
    rng = np.random.default_rng(3)
    luts = lookup_tables(rng.integers(0, 50, (3, 256)), rng.integers(0, 50, (3, 256)))
    assert (np.diff(luts.astype(int), axis=1) >= 0).all()


@pytest.mark.parametrize("method", ["reinhard", "macenko", "histogram"])
def test_white_tile_is_returned_unchanged_without_nans(pas, method):
    params = stain.fit(pas, method=method)
    white = np.full((64, 48, 3), 255, dtype=np.uint8)
    with np.errstate(all="raise"):  # no division by zero, no invalid values
        out = stain.apply(white, params)
    assert out.dtype == np.uint8 and (out == 255).all()
    assert out is not white


@pytest.mark.parametrize("method", ["reinhard", "macenko", "histogram"])
def test_tiles_use_only_fitted_params_and_do_not_modify_input(pas, he, method):
    params = stain.fit(he, method=method)
    tile = pas[100:356, 200:456].copy()
    before = tile.copy()
    a, b = stain.apply(tile, params), stain.apply(tile, params)
    assert (tile == before).all() and (a == b).all()
    with pytest.raises(Exception):
        params.__setattr__(next(iter(params.__dataclass_fields__)), None)  # frozen


def test_invalid_inputs_name_the_argument():
    with pytest.raises(ValueError, match="image"):
        stain.gray_normalize(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        stain.rgb_to_od(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="reference"):
        stain.fit_reinhard(np.full((32, 32, 3), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match="method"):
        stain.fit(np.zeros((4, 4, 3), np.uint8), method="vahadane")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["reinhard", "macenko", "histogram"])
def test_tiled_with_slide_source_equals_untiled(pas, he, method):
    """Source params fitted on the whole image make tile-by-tile output identical to the whole-image result."""
    target, source = stain.fit(he, method=method), stain.fit(pas, method=method)
    whole = stain.apply(pas, target)  # whole-image statistics == the source fit
    tiled = np.empty_like(pas)
    for y in range(0, pas.shape[0], 384):  # awkward tile size: edge tiles are partial
        for x in range(0, pas.shape[1], 384):
            tile = pas[y:y + 384, x:x + 384]
            tiled[y:y + 384, x:x + 384] = stain.apply(tile, target, source=source)
    assert (tiled == whole).all()
    with pytest.raises(TypeError, match="source"):
        stain.apply(pas[:8, :8], target, source=stain.ReinhardParams((0, 0, 0), (1, 1, 1))
                    if method != "reinhard" else stain.fit(pas, method="histogram"))
