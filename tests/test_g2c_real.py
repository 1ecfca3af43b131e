"""G2C on real glomeruli: the AIDPATH crops reader (job geometry, slide split), calibration, the real-label loss, and
the classifier path on real crops (read in place from ../shared/data/real-glomeruli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_pipeline.config import load_config
from wsi_pipeline.errors import ConfigError
from wsi_pipeline.infer.classify import G2CModel, decide, g2c_probabilities
from wsi_pipeline.train.calibration import ece, fit_temperature, gs_probability
from wsi_pipeline.train.data_real import RealCropsConfig, job_crop, read_labels, read_real_crops, slide_folds, slide_id
from wsi_pipeline.train.g2c import ClassifierWidths
from wsi_pipeline.train.g2c_real import (GROUPS, G2CRealConfig, augment_stack, build_real_model, cv_threshold,
                                         draw_views, init_classifier, logits_of, resolve_init, stain_stack, train_one,
                                         view_stacks)
from wsi_pipeline.train.losses import grouped_focal_loss

REPO = Path(__file__).resolve().parents[1]
CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-glomeruli" / "aidpath-crops"
FEW = ("SESCAM_4_0-12.png", "SESCAM_1_0-3.png", "SAS_21883_001-10.png", "SAS_21942_001-1.png")


@pytest.fixture(scope="module")
def crops_root() -> Path:
    if not (CROPS / "labels.csv").is_file():
        pytest.fail(f"shared test data missing: {CROPS}")
    return CROPS


@pytest.fixture(scope="module")
def few(crops_root: Path):  # type: ignore[no-untyped-def]
    files = [r["file"] for r in read_labels(crops_root)]
    picked = [f for f in FEW if f in files] or files[:4]
    return read_real_crops(RealCropsConfig(root=str(crops_root), size=64), files=picked)


def test_labels_and_slide_ids(crops_root: Path) -> None:
    rows = read_labels(crops_root)
    assert len(rows) == 484
    assert {r["site"] for r in rows} == {"SESCAM", "SAS"}
    assert sum(int(r["global_sclerosis"]) for r in rows) == 191
    assert slide_id("SESCAM_4_0-12.png") == "SESCAM_4_0" and slide_id("SAS_21883_001-3.png") == "SAS_21883_001"
    assert all(slide_id(r["file"]).startswith(r["site"]) for r in rows)  # no slide id crosses sites


@pytest.mark.parametrize("site", ["SESCAM", "SAS"])
def test_slide_folds_never_split_a_slide(crops_root: Path, site: str) -> None:
    slides = np.asarray([slide_id(r["file"]) for r in read_labels(crops_root) if r["site"] == site])
    for seed in (0, 1):
        folds = slide_folds(slides, k=3, seed=seed)
        for s in np.unique(slides):
            assert len(set(folds[slides == s])) == 1, f"slide {s} in two folds"
        counts = np.bincount(folds, minlength=3)
        assert (counts > 0).all() and counts.max() <= 2 * counts.min()  # balanced by crop count
    with pytest.raises(Exception, match="folds"):
        slide_folds(slides[:1], k=3)


def test_job_crop_geometry_on_a_real_crop(crops_root: Path) -> None:
    name = FEW[0] if (crops_root / "images" / FEW[0]).exists() else read_labels(crops_root)[0]["file"]
    image = np.asarray(Image.open(crops_root / "images" / name).convert("RGB"))
    mask = np.asarray(Image.open(crops_root / "masks" / name).convert("L")) > 127
    out = job_crop(image, mask, size=112, margin=0.2)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    # the box fills 1 / 1.2 of the side, centred: the middle of the crop is the middle of the image
    inner = job_crop(image, np.ones_like(mask), size=112, margin=0.0)
    centre = out[46:66, 46:66].astype(float).mean()
    assert abs(centre - inner[46:66, 46:66].astype(float).mean()) < 20
    small = np.zeros_like(mask)
    small[50:100, 60:140] = True  # a box inside the crop: no padding needed, square around the longer side
    assert job_crop(image, small, size=32, margin=0.2).shape == (32, 32, 3)


def test_reader_returns_labelled_job_crops(few) -> None:  # type: ignore[no-untyped-def]
    assert few.images.shape == (len(few), 64, 64, 3)
    assert set(few.sites) <= {"SESCAM", "SAS"} and set(few.gs) <= {0, 1}
    assert len(few.at_sites(("SAS",))) + len(few.at_sites(("SESCAM",))) == len(few)


def test_temperature_scaling_fixes_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    gs = rng.integers(0, 2, n)
    true_logit = rng.normal(0, 1.5, n) + np.where(gs == 1, 1.0, -1.0)
    p_true = 1 / (1 + np.exp(-true_logit))
    gs = (rng.random(n) < p_true).astype(np.int64)  # labels drawn from the calibrated probability
    logits = np.stack([np.zeros(n), np.full(n, -30.0), 4.0 * true_logit], 1)  # 4x overconfident, ss unused
    t = fit_temperature(logits, gs)
    assert 3.0 < t < 5.0
    before = ece(gs_probability(logits), gs)
    after = ece(gs_probability(logits, temperature=t), gs)
    assert after < before / 2 and after < 0.03
    assert 0.3 <= cv_threshold(gs_probability(logits, temperature=t), gs) <= 0.7


def test_grouped_focal_loss_is_the_coarse_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    target = torch.tensor([0, 1])
    p = torch.softmax(logits, 1)
    expected = -(torch.log(p[0, 0] + p[0, 1]) + torch.log(p[1, 2])) / 2
    assert torch.allclose(grouped_focal_loss(logits, GROUPS, target, gamma=0.0), expected)
    assert grouped_focal_loss(logits, GROUPS, target, gamma=2.0) < expected


def test_decision_rule() -> None:
    probs = np.array([[0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], np.float32)
    assert decide(probs, ("noa", "ss", "gs")) == ["noa", "ss", "gs"]
    assert decide(probs, ("noa", "ss", "gs"), gs_threshold=0.35) == ["gs", "ss", "gs"]
    assert decide(probs, ("noa", "ss", "gs"), gs_threshold=0.9) == ["noa", "ss", "noa"]


def test_classifier_path_on_real_crops(few, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    tiny = ClassifierWidths(stem_width=8, widths=(16,), blocks_per_unit=1)
    cfg = G2CRealConfig(init=None, classifier=tiny, epochs=1, batch_size=2)
    stack = stain_stack(build_real_model(cfg)[0], few.images)
    assert stack.shape == (len(few), 1, 3, 64, 64) and 0 <= float(stack.min()) and float(stack.max()) <= 1
    aug = augment_stack(stack, brightness=0.1, saturation=0.1, generator=torch.Generator().manual_seed(0))
    assert aug.shape == stack.shape
    model, _, _ = train_one(cfg, stack, few.gs, seed=0, run_dir=tmp_path / "run", progress=False)
    logits = logits_of(model, stack)
    assert logits.shape == (len(few), 3) and np.isfinite(logits).all()
    # the job's probability path with a temperature = softmax(logits / T)
    bundle = G2CModel({}, model.classifier, ("noa", "ss", "gs"), temperature=2.0)
    probs = g2c_probabilities(few.images, bundle)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits) / 2.0, 1).numpy(), atol=1e-5)


def test_init_copies_the_shared_trunk_into_fewer_branches() -> None:
    from wsi_pipeline.models.g2c import G2CClassifierConfig

    torch.manual_seed(0)
    src = G2CClassifierConfig(num_stains=4, num_classes=3, stem_width=8, widths=(16,), blocks_per_unit=1).build()
    dst = G2CClassifierConfig(num_stains=1, num_classes=3, stem_width=8, widths=(16,), blocks_per_unit=1,
                              attention=False).build()
    init_classifier(dst, src)
    for a, b in zip(dst.stem.state_dict().values(), src.stem.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.allclose(dst.fc.weight, src.fc.weight[:, :16] * 4)
    # PAS_ALL from PAS_ALL+: the same branches without attention: trunk and the whole fc, no attention
    same = G2CClassifierConfig(num_stains=4, num_classes=3, stem_width=8, widths=(16,), blocks_per_unit=1,
                               attention=False).build()
    init_classifier(same, src)
    assert torch.equal(same.fc.weight, src.fc.weight) and torch.equal(same.fc.bias, src.fc.bias)
    for a, b in zip(same.trunk.parameters(), (p for m in src.trunk if type(m).__name__ == "BasicBlock"
                                              for p in m.parameters())):
        assert torch.equal(a, b)


def test_recipe_init_and_generated_stains_on_real_crops(few, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = load_config(REPO / "configs" / "train-g2c-real-cv.yaml", G2CRealConfig)
    cfg = recipe.model_copy(update={"variant": "PAS_ALL+", "init_cache": str(tmp_path / "init")})
    model, arch, digests = build_real_model(cfg)
    assert arch.stains == ("HE", "MASSON", "PASM") and set(digests) == {"HE", "MASSON", "PASM"}
    stack = stain_stack(model, few.images[:2])
    assert stack.shape == (2, 4, 3, 64, 64)
    logits = logits_of(model, stack)
    assert np.isfinite(logits).all()


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_cross_site_run_then_calibrated_shipping_run(few, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from wsi_pipeline.models.registry import load_model
    from wsi_pipeline.train.g2c_real import train_g2c_real

    tiny = ClassifierWidths(stem_width=8, widths=(16,), blocks_per_unit=1)
    cfg = G2CRealConfig(init=None, classifier=tiny, epochs=1, batch_size=2, folds=2, seeds=(0, 1),
                        train_sites=("SESCAM",), test_sites=("SAS",))
    result = train_g2c_real(cfg, run_dir=tmp_path / "cv", data=few, progress=False)
    n_sescam = len(few.at_sites(("SESCAM",)))
    assert result["cv"]["n"] == n_sescam and len(result["oof"]["gs"]) == n_sescam  # every one out of fold once
    assert len(set(result["folds"].values())) == 2
    assert {"test_raw", "test_calibrated", "test_cv_threshold"} <= set(result["seeds"][0])
    assert result["temperature"] > 0 and 0 < result["gs_threshold_cv"] < 1
    ship = cfg.model_copy(update={"holdout": False, "seeds": (0,), "train_sites": ("SESCAM", "SAS"), "views": 1,
                                  "rot90": True, "test_sites": (), "calibrate_from": (str(tmp_path / "cv"),)})
    shipped = train_g2c_real(ship, run_dir=tmp_path / "ship", data=few, progress=False)
    _, record = load_model(shipped["seeds"][0]["model"])
    assert record.metadata["temperature"] == json.loads((tmp_path / "cv" / "result.json").read_text())["temperature"]
    assert 0 < record.metadata["gs_threshold"] < 1 and record.metadata["classes"] == ["noa", "ss", "gs"]


def test_views_are_seeded_augmented_copies_with_their_own_generated_stains(few) -> None:  # type: ignore[no-untyped-def]
    """A view is the crop re-stained (PAS hue / intensity, optics, JPEG) with stains generated from *that* copy, the
    same for the same seed; draw_views picks one stack per sample and the original stays exactly as it was."""
    recipe = load_config(REPO / "configs" / "train-g2c-real-cv-aug.yaml", G2CRealConfig)
    assert recipe.views == 6 and recipe.rot90 and recipe.appearance.counterstains == ("pas",)
    model, _, _ = build_real_model(G2CRealConfig(variant="PAS_PASM", init=None, generators={
        "PASM": "generator-real-PAS-PASM"}, classifier=ClassifierWidths(stem_width=8, widths=(16,), blocks_per_unit=1)))
    pas = few.images[:3]
    views = view_stacks(model, pas, views=2, appearance=recipe.appearance, seed=0)
    again = view_stacks(model, pas, views=2, appearance=recipe.appearance, seed=0)
    assert len(views) == 2 and views[0].dtype == torch.float16 and views[0].shape == (3, 2, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    original = stain_stack(model, pas)
    assert (views[0][:, 0].float() - original[:, 0]).abs().mean() > 0.01  # the PAS copy differs ...
    regenerated = stain_stack(model, (views[0][:, 0].float().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))
    assert (regenerated[:, 1] - views[0][:, 1].float()).abs().mean() < 0.02  # ... and its stain comes from it
    gen = torch.Generator().manual_seed(0)
    picked = draw_views([original, *views], torch.arange(3), generator=gen)
    assert picked.dtype == torch.float32 and picked.shape == original.shape
    assert torch.equal(draw_views([original], torch.tensor([2, 0]), generator=gen), original[[2, 0]])


def test_rotations_move_every_stain_of_a_sample_alike() -> None:
    base = torch.rand(16, 1, 3, 8, 8)
    x = base.expand(16, 3, 3, 8, 8).clone()  # three identical "stains" per sample
    y = augment_stack(x, brightness=0.0, saturation=0.0, generator=torch.Generator().manual_seed(1), rot90=True)
    assert torch.allclose(y[:, 1], y[:, 2]) and torch.allclose(y[:, 0], y[:, 1], atol=1e-6)
    moved = [(y[i, 1] - base[i, 0]).abs().sum() > 0 for i in range(16)]
    transposed = [torch.equal(y[i, 1], base[i, 0].transpose(-1, -2).flip(-1)) or
                  torch.equal(y[i, 1], base[i, 0].transpose(-1, -2)) for i in range(16)]
    assert any(moved) and any(transposed)


def test_pas_only_recolouring_keeps_the_pas_hue() -> None:
    from wsi_pipeline.train.appearance import AppearanceConfig, recolour

    with pytest.raises(ValueError, match="counterstains"):
        AppearanceConfig(counterstains=("mauve",))
    img = np.full((32, 32, 3), 235, np.uint8)
    img[4:28, 4:28] = (190, 90, 170)  # PAS magenta
    img[12:20, 12:20] = (70, 60, 140)  # hematoxylin
    cfg = AppearanceConfig(counterstains=("pas",), hue_noise=0.02)
    for seed in range(5):
        out = recolour(img, rng=np.random.default_rng(seed), config=cfg).astype(int)
        r, g, b = out[6, 6]
        assert g < r and g < b, (seed, out[6, 6])  # magenta stays magenta, never brown, red-only or grey


def test_resolve_init_extracts_a_file_from_git_history(tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "w").mkdir()
    (repo / "w" / "m.safetensors").write_bytes(b"first")
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    (repo / "w" / "m.safetensors").write_bytes(b"second")  # the working tree changes: history does not
    out = resolve_init(f"git:{rev}:w/m.safetensors", cache=tmp_path / "cache", repo=repo)
    assert out.parent == tmp_path / "cache" and out.read_bytes() == b"first"
    assert resolve_init(f"git:{rev}:w/m.safetensors", cache=tmp_path / "cache", repo=repo) == out  # reused
    assert not list((tmp_path / "cache").glob("*.tmp*"))
    with pytest.raises(ConfigError, match="cannot read w/none.safetensors"):
        resolve_init(f"git:{rev}:w/none.safetensors", cache=tmp_path / "cache", repo=repo)
    with pytest.raises(ConfigError, match="expected git:<commit>:<path>"):
        resolve_init("git:only-a-rev", cache=tmp_path / "cache", repo=repo)
    assert resolve_init("g2c").name == "g2c.safetensors"  # a shipped name, as before


def test_recipes_init_from_the_phantom_g2c_not_the_shipped_one(tmp_path: Path) -> None:
    from wsi_pipeline.models.registry import file_sha256, read_record
    from wsi_pipeline.train.g2c import resolve_weights

    for name in ("train-g2c-real-cv.yaml", "train-g2c-real.yaml"):
        cfg = load_config(REPO / "configs" / name, G2CRealConfig)
        assert cfg.init is not None and cfg.init.startswith("git:") and cfg.init_sha256
        path = resolve_init(cfg.init, cache=tmp_path, repo=REPO)
        assert file_sha256(path) == cfg.init_sha256  # the phantom-trained G2C of the recipe, byte for byte
        assert file_sha256(path) != file_sha256(resolve_weights("g2c"))  # never the shipped (real-data) model
        assert "train_sites" not in read_record(path).metadata  # trained on no real hospital
        for stain, gen in cfg.generators.items():  # the shipped real-stain generators
            assert gen == f"generator-real-PAS-{stain}" and resolve_weights(gen).is_file()
    bad = cfg.model_copy(update={"init_sha256": "0" * 64, "init_cache": str(tmp_path)})
    with pytest.raises(Exception, match="does not match the expected"):
        build_real_model(bad)


def test_cross_site_table_layout() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("g2c_real_table", REPO / "scripts" / "g2c_real_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(tag: str, train: str, test: str, accs: list[float]) -> dict:  # type: ignore[type-arg]
        seeds = [{"test_cv_threshold": {"balanced_accuracy": a, "auc": 0.9, "ece": 0.1},
                  "test_raw": {"balanced_accuracy": a - 0.1, "auc": 0.9, "ece": 0.2},
                  "test_calibrated": {"balanced_accuracy": a - 0.1, "auc": 0.9, "ece": 0.05}} for a in accs]
        return {"tag": tag, "train_sites": [train], "test_sites": [test], "seeds": seeds, "temperature": 0.5,
                "gs_threshold_cv": 0.3, "cv": {"n": 10, "raw": seeds[0]["test_raw"],
                                               "calibrated": seeds[0]["test_calibrated"]}}

    rows = [run("PAS_ALL+", "SESCAM", "SAS", [0.9, 0.8, 1.0]), run("PAS_ALL+", "SAS", "SESCAM", [0.7, 0.8, 0.6]),
            run("PAS_ALL", "SESCAM", "SAS", [0.5, 0.5])]
    lines = mod.table(rows).splitlines()
    full = next(x for x in lines if x.startswith("| PAS_ALL+ "))
    assert "90.0 +- 8.2 (90.0, 80.0, 100.0)" in full and "70.0 +- 8.2 (70.0, 80.0, 60.0)" in full
    assert "**80.0 +- 0.0**" in full  # seed k of one direction paired with seed k of the other: (0.9+0.7)/2 ...
    assert "93.68" in full and "90.45" in full  # the paper beside
    half = next(x for x in lines if x.startswith("| PAS_ALL "))
    assert "50.0 +- 0.0 (50.0, 50.0)" in half and half.count("| - ") == 3  # the direction not run, no mean
    assert "| 0.200 | 0.050 |" in mod.calibration_table(rows) and "| 10 |" in mod.cv_table(rows)
