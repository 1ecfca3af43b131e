"""Unpaired CycleGAN training (Zhu et al. 2017), the recipe G2C uses to initialise its PAS -> stain generators.

The original recipe: LSGAN objective, cycle weight lambda = 10, identity weight 0.5 * lambda, Adam lr 2e-4 with
beta1 0.5, a constant learning rate for ``epochs_constant`` epochs then linear decay to 0 over ``epochs_decay``,
a 50-image history pool for the discriminators, batch size 1. Both directions are trained; G2C keeps only G_AB
(``export="AB"``), the self-adversarial augmentation needs both (``export="both"``).

Reference sets are either phantom crops (``source: phantom``; each stain from its own layout seeds, so unpaired)
or folders of patches. When the target is a phantom stain, translation error is measured against the *true*
paired stain of held-out layouts (SSIM / PSNR on glomerulus crops), with the untranslated input as a baseline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from tqdm.auto import tqdm

from ..config import FrozenConfig
from ..models.cyclegan import GeneratorConfig, PatchGANConfig
from ..models.registry import save_model
from .common import RunState, autocast, pick_device, seed_everything
from .data_stain import (GlomerulusCropConfig, PhantomPatchConfig, folder_patches, glomerulus_crops,
                         phantom_patches, to_tensor, to_uint8)
from .losses import cycle_loss, identity_loss, lsgan_loss


class ReferenceSetConfig(FrozenConfig):
    """One side's unlabeled patches: rendered phantom crops, or random crops from a folder (or one image)."""

    source: Literal["phantom", "folder"] = "phantom"
    stain: str = "PAS"  # phantom stain (folder sets: a label for cards and sample grids)
    folder: str | None = None
    pattern: str = "*.png"
    scale: float = Field(1.0, gt=0)  # folder images are resized by this before cropping
    n: int = Field(100, ge=1)  # G2C: 100 unlabeled patches per stain
    seed: int = 0  # phantom: first layout seed; folder: crop seed
    n_layouts: int = Field(10, ge=1)
    slide_size: int = Field(8192, ge=1024)  # phantom layout side (level-0 px)


class CycleGANTrainConfig(FrozenConfig):
    """A CycleGAN run: A (e.g. PAS) <-> B (e.g. H&E); defaults are the original recipe at a small width."""

    domain_a: ReferenceSetConfig = ReferenceSetConfig(stain="PAS", seed=100)
    domain_b: ReferenceSetConfig = ReferenceSetConfig(stain="HE", seed=200)
    size: int = Field(64, ge=16)  # patch side (px)
    mpp: float = Field(2.0, gt=0)  # phantom patches are read at this resolution (the classification one)
    generator: GeneratorConfig = GeneratorConfig(ngf=16, n_blocks=6)
    discriminator: PatchGANConfig = PatchGANConfig(ndf=32, n_layers=3)
    epochs_constant: int = Field(100, ge=0)
    epochs_decay: int = Field(100, ge=0)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = 0.5
    lambda_cycle: float = Field(10.0, ge=0)
    identity_ratio: float = Field(0.5, ge=0)  # identity weight = ratio * lambda_cycle
    pool_size: int = Field(50, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the larger reference set
    seed: int = 0
    device: str = "auto"
    export: Literal["AB", "both"] = "AB"
    eval_seeds: tuple[int, ...] = (9001, 9002)  # held-out layouts for paired SSIM/PSNR (phantom targets only)
    # rendered, as the cards' translation errors were measured (source: slide also works, JPEG in both)
    eval_crop: GlomerulusCropConfig = GlomerulusCropConfig(source="render")

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay


class ImagePool:
    """History of generated images (Shrivastava et al. 2017, as in CycleGAN's ``image_pool.py``).

    Until ``size`` images are stored each query is stored and returned; afterwards, per image, with probability 0.5
    a random stored image is returned and replaced by the new one, else the new one is returned. ``size=0`` is a
    pass-through. The discriminator thereby sees older fakes too, which damps oscillation.
    """

    def __init__(self, size: int, *, rng: random.Random | None = None) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = rng or random.Random(0)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


def linear_decay(epochs_constant: int, epochs_decay: int) -> Callable[[int], float]:
    """CycleGAN's ``lambda_rule``: factor 1 for ``epochs_constant`` epochs, then linearly down to 0 (exclusive).

    >>> rule = linear_decay(2, 3)
    >>> [rule(e) for e in range(5)]
    [1.0, 1.0, 0.75, 0.5, 0.25]
    """
    def rule(epoch: int) -> float:
        return 1.0 - max(0, epoch - epochs_constant + 1) / float(epochs_decay + 1)
    return rule


def load_reference(ref: ReferenceSetConfig, *, size: int, mpp: float) -> NDArray[np.uint8]:
    """The (N, size, size, 3) uint8 patches of one side."""
    if ref.source == "folder":
        if not ref.folder:
            raise ValueError(f"reference set {ref.stain!r}: source 'folder' needs folder=")
        return folder_patches(ref.folder, n=ref.n, size=size, seed=ref.seed, scale=ref.scale, pattern=ref.pattern)
    return phantom_patches(PhantomPatchConfig(stain=ref.stain, n=ref.n, size=size, mpp=mpp, seed=ref.seed,
                                              n_layouts=ref.n_layouts, slide_size=ref.slide_size))


def translation_error(generator: nn.Module, source: NDArray[np.uint8], target: NDArray[np.uint8], *,
                      device: torch.device | str = "cpu", batch_size: int = 16) -> dict[str, float]:
    """Mean SSIM / PSNR of ``generator(source)`` against the true paired ``target`` ((N, H, W, 3) uint8 each),
    with the untranslated source as a baseline (what "no translation" scores).

    ``colour_error`` is the mean absolute difference of the images' mean RGB (grey levels): it separates "right
    colours, lost detail" from "wrong colours", which SSIM and PSNR mix.
    """
    fake = translate(source, generator, device=device, batch_size=batch_size)
    out: dict[str, list[float]] = {"ssim": [], "psnr": [], "colour_error": [], "ssim_input": [], "psnr_input": [],
                                   "colour_error_input": []}
    for f, s, t in zip(fake, source, target):
        mean_t = t.reshape(-1, 3).mean(0)
        for key, img in (("", f), ("_input", s)):
            out[f"ssim{key}"].append(structural_similarity(img, t, channel_axis=2, data_range=255))
            out[f"psnr{key}"].append(peak_signal_noise_ratio(t, img, data_range=255))
            out[f"colour_error{key}"].append(float(np.abs(img.reshape(-1, 3).mean(0) - mean_t).mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def translate(images: NDArray[np.uint8], generator: nn.Module, *, device: torch.device | str = "cpu",
              batch_size: int = 16) -> NDArray[np.uint8]:
    """(N, H, W, 3) uint8 -> translated (N, H, W, 3) uint8 (generator in eval mode, [-1, 1] in and out)."""
    was_training = generator.training
    generator.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(to_uint8(generator(to_tensor(images[i:i + batch_size], signed=True).to(device)), signed=True))
    generator.train(was_training)
    return np.concatenate(out)


def sample_grid(rows: list[NDArray[np.uint8]], path: Path) -> None:
    """Save a PNG with one row per image stack (N, H, W, 3) (e.g. input | translated | truth)."""
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)


def train_cyclegan(config: CycleGANTrainConfig, *, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train G_AB and G_BA; export ``G_AB.safetensors`` (and ``G_BA``) + ``samples.png`` into ``run_dir``."""
    run = RunState(run_dir)
    run.write_config(config.to_dict())
    seed_everything(config.seed)
    device = pick_device(config.device)
    patches_a = load_reference(config.domain_a, size=config.size, mpp=config.mpp)
    patches_b = load_reference(config.domain_b, size=config.size, mpp=config.mpp)
    data_a, data_b = to_tensor(patches_a, signed=True), to_tensor(patches_b, signed=True)

    g_ab, g_ba = config.generator.build().to(device), config.generator.build().to(device)
    d_a, d_b = config.discriminator.build().to(device), config.discriminator.build().to(device)
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=config.lr, betas=(config.beta1, 0.999))
    rule = linear_decay(config.epochs_constant, config.epochs_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, rule)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, rule)
    models = {"g_ab": g_ab, "g_ba": g_ba, "d_a": d_a, "d_b": d_b}
    optimizers = {"g": opt_g, "d": opt_d}
    schedulers = {"g": sched_g, "d": sched_d}
    start = run.resume(models=models, optimizers=optimizers, schedulers=schedulers)
    # pools are not checkpointed (neither are they in the reference); after a resume they refill within 50 steps
    pool_a, pool_b = ImagePool(config.pool_size, rng=random.Random(config.seed + start)), \
        ImagePool(config.pool_size, rng=random.Random(config.seed + start + 1))
    w_idt = config.identity_ratio * config.lambda_cycle
    steps = config.steps_per_epoch or -(-max(len(data_a), len(data_b)) // config.batch_size)
    gen = torch.Generator().manual_seed(config.seed)
    t0 = time.perf_counter()
    for epoch in range(start, config.epochs):
        gen.manual_seed(config.seed * 1000 + epoch)  # per-epoch order: identical after a resume
        idx_a = torch.randint(len(data_a), (steps, config.batch_size), generator=gen)
        idx_b = torch.randint(len(data_b), (steps, config.batch_size), generator=gen)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"cyclegan {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step in bar:
            real_a, real_b = data_a[idx_a[step]].to(device), data_b[idx_b[step]].to(device)
            # generators: adversarial (LSGAN) + cycle + identity; discriminators are not updated here
            d_a.requires_grad_(False)
            d_b.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            with autocast(device):
                fake_b, fake_a = g_ab(real_a), g_ba(real_b)
                loss_gan = lsgan_loss(d_b(fake_b), True) + lsgan_loss(d_a(fake_a), True)
                loss_cyc = cycle_loss(real_a, g_ba(fake_b), weight=config.lambda_cycle) + \
                    cycle_loss(real_b, g_ab(fake_a), weight=config.lambda_cycle)
                loss_idt = torch.zeros((), device=device)
                if w_idt > 0:
                    loss_idt = identity_loss(real_b, g_ab(real_b), weight=w_idt) + \
                        identity_loss(real_a, g_ba(real_a), weight=w_idt)
                loss_g = loss_gan + loss_cyc + loss_idt
            loss_g.backward()
            opt_g.step()
            # discriminators on real vs pooled fakes, each loss halved as in the reference
            d_a.requires_grad_(True)
            d_b.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            with autocast(device):
                pf_b, pf_a = pool_b.query(fake_b.float()), pool_a.query(fake_a.float())
                loss_d_b = 0.5 * (lsgan_loss(d_b(real_b), True) + lsgan_loss(d_b(pf_b), False))
                loss_d_a = 0.5 * (lsgan_loss(d_a(real_a), True) + lsgan_loss(d_a(pf_a), False))
            (loss_d_a + loss_d_b).backward()
            opt_d.step()
            values = {"loss_g": loss_g, "loss_gan": loss_gan, "loss_cycle": loss_cyc, "loss_identity": loss_idt,
                      "loss_d_a": loss_d_a, "loss_d_b": loss_d_b}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(g=f"{sums['loss_g'] / (step + 1):.3f}", d=f"{sums['loss_d_a'] / (step + 1):.3f}")
        lr = opt_g.param_groups[0]["lr"]
        sched_g.step()
        sched_d.step()
        metrics = {k: v / steps for k, v in sums.items()} | {"lr": lr, "elapsed_s": time.perf_counter() - t0}
        run.end_epoch(epoch, metrics, models=models, optimizers=optimizers, schedulers=schedulers)

    result: dict[str, Any] = {"run_dir": str(run.run_dir), "epochs": config.epochs,
                              "history": run.history[-1] if run.history else {}}
    result |= _export(config, run.run_dir, g_ab, g_ba, patches_a, device)
    return result


def _export(config: CycleGANTrainConfig, run_dir: Path, g_ab: nn.Module, g_ba: nn.Module,
            patches_a: NDArray[np.uint8], device: torch.device) -> dict[str, Any]:
    """Measure (paired phantom targets), save the generator(s) through the registry and a sample grid."""
    a, b = config.domain_a.stain, config.domain_b.stain
    metadata: dict[str, Any] = {"source_stain": a, "target_stain": b, "patch_size": config.size,
                                "mpp": config.mpp, "range": "[-1, 1]", "epochs": config.epochs}
    result: dict[str, Any] = {}
    rows = [patches_a[:8], translate(patches_a[:8], g_ab, device=device)]
    if config.domain_b.source == "phantom" and config.domain_a.source == "phantom" and config.eval_seeds:
        crop = config.eval_crop.model_copy(update={"stains": (a, b)})
        held = glomerulus_crops(crop, seeds=config.eval_seeds)
        err = translation_error(g_ab, held.images[:, 0], held.images[:, 1], device=device)
        metadata |= {f"heldout_{k}": v for k, v in err.items()} | {"heldout_n": len(held),
                                                                    "heldout_seeds": list(config.eval_seeds)}
        result["translation"] = err
        n = min(8, len(held))
        rows = [held.images[:n, 0], translate(held.images[:n, 0], g_ab, device=device), held.images[:n, 1]]
    sample_grid(rows, run_dir / "samples.png")
    training = config.to_dict()
    result["G_AB"] = str(run_dir / "G_AB.safetensors")
    result["G_AB_sha256"] = save_model(g_ab.cpu(), run_dir / "G_AB.safetensors", arch="cyclegan_generator",
                                       config=config.generator, metadata=metadata, training_config=training)
    if config.export == "both":
        rev = metadata | {"source_stain": b, "target_stain": a}
        rev = {k: v for k, v in rev.items() if not k.startswith("heldout_")}  # measured for G_AB only
        result["G_BA"] = str(run_dir / "G_BA.safetensors")
        result["G_BA_sha256"] = save_model(g_ba.cpu(), run_dir / "G_BA.safetensors", arch="cyclegan_generator",
                                           config=config.generator, metadata=rev, training_config=training)
    g_ab.to(device)
    g_ba.to(device)
    return result


__all__ = ["CycleGANTrainConfig", "ImagePool", "ReferenceSetConfig", "linear_decay", "load_reference",
           "sample_grid", "train_cyclegan", "translate", "translation_error"]
