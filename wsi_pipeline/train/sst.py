"""Stain-style transfer (SST, METHODS.md section 3) and its comparison with the classical normalisations.

Set-up on the phantom: a downstream classifier (s-vs-noa on PAS glomerulus crops, the PAS_ONLY G2C classifier) is
trained on the "training institute's" style. Test glomeruli come from held-out layouts rendered in a *shifted* style
(:class:`~wsi_pipeline.train.data_stain.StyleShift`: another lab's dye strengths and glass). The SST generator
learns gray(training style) -> training style with L1 reconstruction + a label-conditioned GAN + the
feature-preserving KL on the frozen classifier's global-average-pooled features; at test time a shifted image is
gray-normalised and colourised. The classifier's AUC / precision / recall / specificity on the shifted test set is
reported for: no normalisation, Reinhard, Macenko, histogram specification (each fitted on a training-style
reference mosaic; applied with slide-level source statistics), SST, and the unshifted test set as the upper bound.

Loss weights are not given in the paper; we use pix2pix's (L1 x 100, GAN x 1) and 1 for the feature term.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field
from tqdm.auto import tqdm

from .. import stain as stain_norm
from ..atomic import atomic_write_json
from ..config import FrozenConfig
from ..models.g2c import G2CClassifier, G2CClassifierConfig
from ..models.registry import save_model
from ..models.sst import SSTDiscriminatorConfig, SSTGeneratorConfig
from .common import RunState, autocast, pick_device, seed_everything
from .data_stain import GlomerulusCropConfig, GlomerulusCrops, StyleShift, glomerulus_crops, to_tensor, to_uint8
from .g2c import ClassifierWidths, augment, roc_auc
from .losses import bce_adversarial_loss, feature_preserving_loss, focal_loss

#: hema x1.8, PAS x0.55, bluish glass: a lab with strong haematoxylin and weak periodic acid-Schiff
DEFAULT_SHIFT = StyleShift(strength=(1.8, 1.0, 0.55, 1.0, 1.0, 1.0, 1.0, 1.0), glass=(0.06, 0.0, 0.04))


class SSTTrainConfig(FrozenConfig):
    """SST run: downstream classifier, SST generator + conditional discriminator, and the comparison."""

    crop: GlomerulusCropConfig = GlomerulusCropConfig(stains=("PAS",), source="render")  # style_shift renders
    shift: StyleShift = DEFAULT_SHIFT
    train_seeds: tuple[int, int] = (1000, 20)
    test_seeds: tuple[int, int] = (5000, 10)
    classifier: ClassifierWidths = ClassifierWidths()
    classifier_epochs: int = Field(15, ge=1)
    classifier_lr: float = Field(1e-3, gt=0)  # Adam; the paper's ResNet-34 recipe is not given
    generator: SSTGeneratorConfig = SSTGeneratorConfig(base_channels=8, depth=3)
    discriminator: SSTDiscriminatorConfig = SSTDiscriminatorConfig(ndf=16, image_size=64, num_classes=2)
    epochs: int = Field(20, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = 0.5
    batch_size: int = Field(16, ge=2)
    lambda_l1: float = Field(100.0, ge=0)
    lambda_gan: float = Field(1.0, ge=0)
    lambda_feature: float = Field(1.0, ge=0)
    cache_dir: str | None = None
    seed: int = 0
    device: str = "auto"


def _crops(config: SSTTrainConfig, cache: Path, seeds: tuple[int, int], shifted: bool) -> GlomerulusCrops:
    crop = config.crop.model_copy(update={"style_shift": config.shift if shifted else None})
    path = cache / f"sst-crops-{crop.digest()[:12]}-{seeds[0]}-{seeds[1]}.npz"
    if path.exists():
        with np.load(path) as z:
            return GlomerulusCrops(z["images"], z["classes"], z["seeds"], tuple(crop.stains), crop)
    c = glomerulus_crops(crop, seeds=range(seeds[0], seeds[0] + seeds[1]))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), images=c.images, classes=c.classes, seeds=c.seeds)
    path.with_suffix(".tmp.npz").replace(path)
    return c


def classifier_config(config: SSTTrainConfig) -> G2CClassifierConfig:
    """The downstream classifier's architecture: the PAS_ONLY G2C classifier with a two-class head."""
    c = config.classifier
    return G2CClassifierConfig(num_stains=1, num_classes=2, stem_width=c.stem_width, widths=c.widths,
                               blocks_per_unit=c.blocks_per_unit, attention=False)


def train_classifier(images: NDArray[np.uint8], labels: NDArray[np.int64], config: SSTTrainConfig, *,
                     device: torch.device, progress: bool) -> G2CClassifier:
    """The downstream s-vs-noa classifier (PAS_ONLY G2C classifier), focal loss + flips/jitter, Adam."""
    clf = classifier_config(config).build().to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=config.classifier_lr)
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in tqdm(range(config.classifier_epochs), desc="sst classifier", disable=not progress, leave=False):
        clf.train()
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(order) - 1, config.batch_size):
            idx = order[i:i + config.batch_size]
            x = augment(x_all[idx], brightness=0.1, saturation=0.1, generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                logits = clf(x[:, None])
            focal_loss(logits.float(), y_all[idx].to(device)).backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def classify(clf: G2CClassifier, images: NDArray[np.uint8], *, device: torch.device) -> NDArray[np.float32]:
    """P(sclerotic) of (N, H, W, 3) uint8 crops."""
    clf.eval()
    out = [torch.softmax(clf(to_tensor(images[i:i + 64])[:, None].to(device)).float(), 1)[:, 1].cpu().numpy()
           for i in range(0, len(images), 64)]
    return np.concatenate(out)


def binary_metrics(p: NDArray[np.float32], truth: NDArray[np.int64]) -> dict[str, float]:
    """AUC, precision, recall, specificity (threshold 0.5) of P(positive)."""
    pred = p > 0.5
    tp, fp = float((pred & (truth == 1)).sum()), float((pred & (truth == 0)).sum())
    fn, tn = float((~pred & (truth == 1)).sum()), float((~pred & (truth == 0)).sum())
    return {"auc": roc_auc(p, truth), "precision": tp / max(tp + fp, 1.0), "recall": tp / max(tp + fn, 1.0),
            "specificity": tn / max(tn + fp, 1.0)}


@torch.no_grad()
def sst_normalize(images: NDArray[np.uint8], generator: torch.nn.Module, *, device: torch.device) -> NDArray[np.uint8]:
    """Gray-normalise (ITU-R 601) and colourise into the training style: (N, H, W, 3) uint8 -> same."""
    generator.eval()
    gray = np.stack([stain_norm.gray_normalize(im) for im in images])[..., None]
    out = [to_uint8(generator(to_tensor(gray[i:i + 32], signed=True).to(device)), signed=True)
           for i in range(0, len(gray), 32)]
    return np.concatenate(out)


def _mosaic(images: NDArray[np.uint8], n: int = 64) -> NDArray[np.uint8]:
    """Tile up to ``n`` crops into one square image (the 'slide' the classical methods are fitted on)."""
    k = int(np.sqrt(min(n, len(images))))
    rows = [np.concatenate(list(images[r * k:(r + 1) * k]), axis=1) for r in range(k)]
    return np.concatenate(rows, axis=0)


def compare_normalisations(clf: G2CClassifier, generator: torch.nn.Module, train: GlomerulusCrops,
                           shifted: GlomerulusCrops, unshifted: GlomerulusCrops, *,
                           device: torch.device) -> dict[str, dict[str, float]]:
    """The downstream classifier's metrics on the shifted test set under each normalisation."""
    truth = (shifted.classes > 0).astype(np.int64)
    images = shifted.images[:, 0]
    reference, source_mosaic = _mosaic(train.images[:, 0]), _mosaic(images)
    results = {"unshifted (upper bound)": binary_metrics(classify(clf, unshifted.images[:, 0], device=device), truth),
               "none": binary_metrics(classify(clf, images, device=device), truth)}
    for method in ("reinhard", "macenko", "histogram"):
        params = stain_norm.fit(reference, method=method)  # type: ignore[arg-type]
        source = stain_norm.fit(source_mosaic, method=method)  # type: ignore[arg-type]
        normed = np.stack([stain_norm.apply(im, params, source=source) for im in images])
        results[method] = binary_metrics(classify(clf, normed, device=device), truth)
    results["sst"] = binary_metrics(classify(clf, sst_normalize(images, generator, device=device), device=device),
                                    truth)
    return results


def train_sst(config: SSTTrainConfig, *, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train the classifier, then SST; compare all normalisations; save ``sst_generator.safetensors``."""
    run = RunState(run_dir)
    run.write_config(config.to_dict())
    seed_everything(config.seed)
    device = pick_device(config.device)
    cache = Path(config.cache_dir) if config.cache_dir else run.run_dir
    train = _crops(config, cache, config.train_seeds, False)
    test_shifted = _crops(config, cache, config.test_seeds, True)
    test_plain = _crops(config, cache, config.test_seeds, False)
    if not np.array_equal(test_shifted.classes, test_plain.classes):
        raise RuntimeError("shifted and unshifted test crops differ in their glomeruli")  # same layouts, same order
    labels = (train.classes > 0).astype(np.int64)
    t0 = time.perf_counter()
    if run.checkpoint_path.exists():  # resuming: the checkpointed classifier is loaded below
        clf = classifier_config(config).build().to(device)
    else:
        clf = train_classifier(train.images[:, 0], labels, config, device=device, progress=progress)
    clf.requires_grad_(False)  # the feature-preserving loss needs a fixed classifier
    t_clf = time.perf_counter() - t0

    g, d = config.generator.build().to(device), config.discriminator.build().to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    models, opts = {"g": g, "d": d, "classifier": clf}, {"g": opt_g, "d": opt_d}
    start = run.resume(models=models, optimizers=opts)
    clf.eval()  # fixed: batch-norm statistics must not drift while it scores the generator's features
    target = to_tensor(train.images[:, 0], signed=True)
    gray = to_tensor(np.stack([stain_norm.gray_normalize(im) for im in train.images[:, 0]])[..., None], signed=True)
    y_all = torch.from_numpy(labels)
    gen = torch.Generator()
    for epoch in range(start, config.epochs):
        gen.manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(target), generator=gen)
        sums = {"l1": 0.0, "gan": 0.0, "feature": 0.0, "d": 0.0}
        g.train()
        d.train()
        n_batches = 0
        for i in tqdm(range(0, len(order) - 1, config.batch_size), desc=f"sst {epoch + 1}/{config.epochs}",
                      disable=not progress, leave=False):
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:
                continue
            real, src, y = target[idx].to(device), gray[idx].to(device), y_all[idx].to(device)
            with autocast(device):
                fake = g(src)
            opt_d.zero_grad(set_to_none=True)
            with autocast(device):
                loss_d = 0.5 * (bce_adversarial_loss(d(real, y), True) + bce_adversarial_loss(d(fake.detach(), y), False))
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            with autocast(device):
                l1 = torch.nn.functional.l1_loss(fake, real)
                adv = bce_adversarial_loss(d(fake, y), True)
                # classifier inputs are [0, 1]; GAP features of generated vs original
                f_fake = clf.features(((fake + 1) / 2)[:, None]).mean(dim=(2, 3))
                f_real = clf.features(((real + 1) / 2)[:, None]).mean(dim=(2, 3))
                fp = feature_preserving_loss(f_fake.float(), f_real.float())
                loss_g = config.lambda_l1 * l1 + config.lambda_gan * adv + config.lambda_feature * fp
            loss_g.backward()
            opt_g.step()
            for k, v in (("l1", l1), ("gan", adv), ("feature", fp), ("d", loss_d)):
                sums[k] += float(v.detach())
            n_batches += 1
        metrics = {f"loss_{k}": v / max(n_batches, 1) for k, v in sums.items()}
        run.end_epoch(epoch, metrics | {"elapsed_s": time.perf_counter() - t0}, models=models, optimizers=opts)

    comparison = compare_normalisations(clf, g, train, test_shifted, test_plain, device=device)
    g.cpu()
    digest = save_model(g, run.run_dir / "sst_generator.safetensors", arch="sst_generator", config=config.generator,
                        metadata={"input": "gray (ITU-R 601) in [-1, 1]", "output": "RGB in [-1, 1]",
                                  "crop_size": config.crop.size, "crop_mpp": config.crop.mpp,
                                  "comparison": comparison}, training_config=config.to_dict())
    result = {"comparison": comparison, "n_train": len(train), "n_test": len(test_shifted),
              "classifier_train_s": t_clf, "elapsed_s": time.perf_counter() - t0, "sha256": digest,
              "model": str(run.run_dir / "sst_generator.safetensors")}
    atomic_write_json(run.run_dir / "result.json", result)
    return result


__all__ = ["DEFAULT_SHIFT", "SSTTrainConfig", "binary_metrics", "classifier_config", "classify", "compare_normalisations",
           "sst_normalize", "train_classifier", "train_sst"]
