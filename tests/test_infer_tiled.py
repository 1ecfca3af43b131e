"""Blended tiled inference equals whole-image inference (in memory and over awkwardly chunked zarr)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from wsi_pipeline.config import FrozenConfig
from wsi_pipeline.errors import ConfigError
from wsi_pipeline.infer import (
    TiledInferenceConfig,
    TorchPredictor,
    cached_predictor,
    clear_predictor_cache,
    measure_receptive_radius,
    predict_tiled,
    predict_zarr,
    window_starts,
    window_weights,
)


def small_net(seed: int = 0, depth: int = 3, dilation: int = 1) -> nn.Module:
    """A real conv net: receptive radius = depth * dilation (3x3 kernels, zero padding like a U-Net)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    ch = 3
    for i in range(depth):
        out = 2 if i == depth - 1 else 8
        layers.append(nn.Conv2d(ch, out, 3, padding=dilation, dilation=dilation))
        if i < depth - 1:
            layers.append(nn.ReLU())
        ch = out
    return nn.Sequential(*layers)


def make_predictor(seed: int = 0, depth: int = 3, dilation: int = 1) -> TorchPredictor:
    return TorchPredictor(small_net(seed, depth, dilation), device="cpu", activation="softmax")


def whole(image: np.ndarray, predictor: TorchPredictor) -> np.ndarray:
    return predictor(image.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (300, 517, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :517]
    img[(yy - 150) ** 2 + (xx - 260) ** 2 < 60**2] //= 3  # some structure, not just noise
    return img


def test_window_starts_cover_and_end_flush() -> None:
    assert window_starts(300, 64, 16) == [0, 48, 96, 144, 192, 236]
    assert window_starts(50, 64, 16) == [0]
    assert window_starts(64, 64, 16) == [0]


def test_weights_zero_in_interior_margin_flat_at_border() -> None:
    w = window_weights((32, 32), kind="gaussian", margin=4, borders=(True, False, False, False))
    assert np.all(w[:, :4] == 0) and np.all(w[-4:, :] == 0)
    assert w[0, 16] == pytest.approx(w[16, 16], rel=0.05)  # top side lies on the image border: flat
    assert w[4:-4, 4:-4].min() > 0
    with pytest.raises(ValueError, match="weight='box'"):
        window_weights((8, 8), kind="box")  # type: ignore[arg-type]


def test_receptive_radius_measured() -> None:
    assert measure_receptive_radius(small_net(depth=3), 3) == 3
    assert measure_receptive_radius(small_net(depth=4, dilation=3), 3) == 12


@pytest.mark.parametrize("weight", ["gaussian", "cosine"])
def test_tiled_equals_whole_image(image: np.ndarray, weight: str) -> None:
    pred = make_predictor()
    ref = whole(image, pred)
    kw = dict(window=64, overlap=16, batch_size=5, margin=4)
    out = predict_tiled(image, pred, weight=weight, **kw)  # type: ignore[arg-type]
    assert out.shape == (300, 517, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bad_arguments_name_the_parameter(image: np.ndarray) -> None:
    pred = make_predictor()
    with pytest.raises(ValueError, match="margin=9"):
        predict_tiled(image, pred, window=64, overlap=16, batch_size=4, margin=9)
    with pytest.raises(ValueError, match="overlap=64"):
        predict_tiled(image, pred, window=64, overlap=64, batch_size=4)
    with pytest.raises(ValueError, match="model_fn returned shape"):
        predict_tiled(image, lambda b: b[:, :, ::2], window=64, overlap=16, batch_size=4)


def seam_energy(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute error against the whole-image reference."""
    return float(np.abs(out - ref).mean())


def test_gaussian_beats_plain_averaging_when_field_exceeds_overlap(image: np.ndarray) -> None:
    # receptive radius 12 > overlap/2: every window edge is wrong somewhere; weighting must hide it
    pred = make_predictor(seed=1, depth=4, dilation=3)
    ref = whole(image, pred)
    kw = dict(window=48, overlap=16, batch_size=8, margin=0)
    err_uniform = seam_energy(predict_tiled(image, pred, weight="uniform", **kw), ref)  # type: ignore[arg-type]
    err_gauss = seam_energy(predict_tiled(image, pred, weight="gaussian", **kw), ref)  # type: ignore[arg-type]
    err_cos = seam_energy(predict_tiled(image, pred, weight="cosine", **kw), ref)  # type: ignore[arg-type]
    assert err_gauss < 0.7 * err_uniform
    assert err_cos < err_uniform


def factory(seed: int) -> TorchPredictor:
    return make_predictor(seed)


@pytest.mark.parametrize("block_chunks", [1, 2])
def test_predict_zarr_equals_whole_image(tmp_path, image: np.ndarray, block_chunks: int) -> None:
    src = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w").create_array(
        "image", shape=image.shape, chunks=(128, 128, 3), dtype="uint8"
    )
    src[:] = image
    cfg = TiledInferenceConfig(
        window=64, overlap=16, margin=4, batch_size=6, dtype="float32", block_chunks=block_chunks
    )
    out = predict_zarr(
        str(tmp_path / "slide.zarr" / "image"),
        str(tmp_path / "slide.zarr"),
        predictor_factory=functools.partial(factory, 0),
        config=cfg,
        out_channels=2,
        name="seg",
        scheduler="threads",
    )
    assert out.shape == (300, 517, 2) and out.chunks == (128, 128, 2)
    np.testing.assert_allclose(out[:], whole(image, make_predictor(0)), atol=1e-5)
    assert out.attrs["chunks_written"] == 3 * 5


def test_predict_zarr_skips_background_chunks_and_quantises(tmp_path, image: np.ndarray) -> None:
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    src = group.create_array("image", shape=image.shape, chunks=(128, 128, 3), dtype="uint8")
    src[:] = image
    mask = np.zeros((3, 5), bool)
    mask[1, 2] = mask[2, 4] = True
    cfg = TiledInferenceConfig(window=64, overlap=16, margin=4, batch_size=6, dtype="uint8", block_chunks=2)
    out = predict_zarr(
        src, group, predictor_factory=functools.partial(factory, 0), config=cfg, out_channels=2, chunk_mask=mask
    )
    assert out.dtype == np.uint8 and out.nchunks_initialized == 2
    ref = np.rint(whole(image, make_predictor(0)) * 255)
    got = out[:].astype(np.float64)
    np.testing.assert_allclose(got[128:256, 256:384], ref[128:256, 256:384], atol=1)
    np.testing.assert_allclose(got[256:300, 512:517], ref[256:300, 512:517], atol=1)
    assert not got[:128].any() and not got[128:256, :256].any()  # untouched chunks read back as the fill value
    with pytest.raises(ValueError, match="chunk_mask"):
        predict_zarr(src, group, predictor_factory=functools.partial(factory, 0), config=cfg, out_channels=2,
                     chunk_mask=np.ones((2, 2), bool))


def test_model_built_once_per_process() -> None:
    clear_predictor_cache()
    calls = []

    def build() -> TorchPredictor:
        calls.append(1)
        return make_predictor(0)

    p1, p2 = cached_predictor(build), cached_predictor(build)
    assert p1 is p2 and len(calls) == 1
    a = cached_predictor(functools.partial(factory, 0))
    b = cached_predictor(functools.partial(factory, 0))  # a new but equal partial: same pickled key
    assert a is b
    clear_predictor_cache()


def test_config_validated() -> None:
    assert issubclass(TiledInferenceConfig, FrozenConfig)
    with pytest.raises(ConfigError, match="margin"):
        TiledInferenceConfig.from_dict({"window": 64, "overlap": 16, "margin": 12})
    cfg = TiledInferenceConfig.for_receptive_radius(measure_receptive_radius(small_net(), 3), window=64, batch_size=2)
    assert (cfg.margin, cfg.overlap, cfg.batch_size) == (3, 14, 2)
    with pytest.raises(ValueError, match="window=16: too small"):
        TiledInferenceConfig.for_receptive_radius(20, window=16)


def test_predictor_normalisation_and_cpu_defaults() -> None:
    ident = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    p = TorchPredictor(ident, device="auto" if not torch.cuda.is_available() else "cpu", mean=(0.5, 0.5, 0.5),
                       std=(0.5, 0.5, 0.5))
    assert p.device.type == "cpu" and not p.amp and not p.channels_last
    out = p(np.array([0, 255], np.uint8).repeat(3).reshape(1, 2, 3, 1).transpose(0, 2, 1, 3).copy())
    np.testing.assert_allclose(out[0, :, :, 0], [[-1, 1]] * 3, atol=1e-6)


BUILDS: list[int] = []


def counting_factory(seed: int) -> TorchPredictor:
    BUILDS.append(seed)
    return make_predictor(seed)


def test_tiling_store_layout_on_a_distributed_client(tmp_path, image: np.ndarray) -> None:
    """The tiling store's OME-NGFF (c, y, x) layout, a chunk mask, a distributed client."""
    from distributed import Client, LocalCluster

    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    src = group.create_array("0", shape=(3, 300, 517), chunks=(3, 128, 128), dtype="uint8", fill_value=255,
                             dimension_names=("c", "y", "x"))
    src[:, 128:256, 256:517] = image[128:256, 256:517].transpose(2, 0, 1)  # tissue in chunks (1, 2..4) only
    expected = np.zeros((3, 5), bool)
    expected[1, 2:] = True
    clear_predictor_cache()
    BUILDS.clear()
    cfg = TiledInferenceConfig(window=64, overlap=16, margin=4, batch_size=4, dtype="float32", block_chunks=1)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        out = predict_zarr(src, group, predictor_factory=functools.partial(counting_factory, 2), config=cfg,
                           out_channels=2, chunk_mask=expected)
    assert BUILDS == [2]  # three block tasks, one model build in the worker process
    assert out.shape == (2, 300, 517) and out.chunks == (2, 128, 128)
    assert out.metadata.dimension_names == ("c", "y", "x")
    assert out.nchunks_initialized == 3 and out.attrs["chunks_written"] == 3
    ref = whole(np.asarray(src[:]).transpose(1, 2, 0), make_predictor(2)).transpose(2, 0, 1)
    np.testing.assert_allclose(out[:, 128:256, 256:517], ref[:, 128:256, 256:517], atol=1e-5)
    assert not out[:, :128].any()
    clear_predictor_cache()
