"""Glomerulus segmenter training: supervised U-Net and the multi-level adversarial domain adaptation (METHODS.md 2).

``train_segmenter(config, run_dir=..., progress=...)`` trains a ``unet_resnet34`` on phantom scenes
(:mod:`.data_seg`) with BCE, validates every epoch by sliding-window inference over whole held-out scenes (the
pipeline's own :func:`~wsi_pipeline.infer.predict_tiled`), and exports the best-on-validation network with
``save_model`` (metadata: resolution, window, threshold, measured metrics). Runs resume from their last epoch.

Domain adaptation (``da.mode``): *source* scenes are labelled; *target* scenes are labelled only in ``supervised``
mode. Schedule in epochs of ``steps_per_epoch`` batches (our epoch, not a pass over the paper's 333 images):
``[0, s0)`` G alone on L_seg; ``[s0, s0 + d0)`` D_e, D_d, D_s alone against the frozen G; then every step one
discriminator update and one G update on ``L_full = L_seg - a_e L_De - a_d L_Dd - a_s L_Ds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from pydantic import Field, model_validator
from shapely.geometry import Polygon
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..annotations import mask_to_polygons
from ..config import FrozenConfig
from ..infer.blend import predict_tiled
from ..infer.predictor import TorchPredictor
from ..models.discriminators import MultiLevelDiscriminatorConfig, ShapeDiscriminatorConfig
from ..models.registry import load_model, save_model
from ..models.unet import UNetConfig, UNetResNet34
from ..synth import parse_stains
from ..synth.layout import Layout
from ..synth.truth import label_region
from .augment import SelfAdversarialAugment, SelfAdversarialConfig, StainTransferAugment, StainTransferConfig
from .common import RunState, autocast, infinite, pick_device, seed_everything
from .data_seg_real import MixedPatchDataset, RealPatchDataset, RealSegDataConfig, load_real_data, unlabelled_scenes
from .data_seg import Scene, SegDataConfig, SegPatchDataset, load_scenes
from .losses import bce_adversarial_loss, dice_loss
from .metrics import DetectionScores, PixelCounts, detection_scores, pixel_counts, polygon_detection_scores

Phase = Literal["segmenter", "discriminators", "adversarial"]
EXPORT_NAME = "segmenter.safetensors"


class DAConfig(FrozenConfig):
    """Multi-level adversarial DA settings (defaults: the paper's numbers; epochs are ours, see module doc)."""

    mode: Literal["none", "unsupervised", "supervised"] = "none"
    target_stains: tuple[str, ...] = ("MASSON",)
    target_seeds: tuple[int, ...] = ()  # layouts of the target domain (unsupervised: keep them apart from source)
    # or real unlabelled target images (e.g. the kidney-stains patches of other stains), at ``target_mpp``
    target_images: tuple[str, ...] = ()
    target_mpp: float = Field(0.5, gt=0)
    s0: int = Field(50, ge=0, description="epochs of G alone")
    d0: int = Field(10, ge=0, description="epochs of the discriminators alone")
    a_e: float = Field(0.01, ge=0)
    a_d: float = Field(0.05, ge=0)
    a_s: float = Field(0.1, ge=0)
    disc_width: float = Field(0.25, gt=0, description="width of D_e, D_d, D_s relative to ResNet-34/18")
    # "nonsaturating": G minimises BCE(D(target), source-label), the usual GAN practice (Goodfellow et al. 2014):
    # same fixed point as Eq. 4 but its gradient does not vanish when D wins. "minimax": Eq. 4 literally.
    generator_objective: Literal["nonsaturating", "minimax"] = "nonsaturating"

    def phase(self, epoch: int) -> Phase:
        """Which networks train in ``epoch`` (0-based)."""
        if self.mode == "none" or epoch < self.s0:
            return "segmenter"
        if epoch < self.s0 + self.d0:
            return "discriminators"
        return "adversarial"


class SegmenterTrainConfig(FrozenConfig):
    """Everything a segmenter run depends on (saved next to the run and inside the exported weights)."""

    seed: int = 0
    device: str = "auto"
    threads: int = Field(2, ge=1, description="torch CPU threads")
    model: UNetConfig = UNetConfig(width=0.125, decoder_channels=(32, 16, 16, 8, 8))
    data: SegDataConfig = SegDataConfig()
    stains: tuple[str, ...] = ("PAS",)  # labelled (source) training stains
    train_seeds: tuple[int, ...] = tuple(range(1, 25))
    val_seeds: tuple[int, ...] = (101, 102, 103, 104)
    val_stains: tuple[str, ...] = ("PAS",)
    cache_dir: str = "out/seg/scenes"
    render_workers: int = Field(1, ge=1)
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    cosine_decay: bool = True  # cosine lr decay over the run (the paper is silent; helps short CPU runs settle)
    # a leased GPU for a fixed time: the run ends at the first epoch end past this many seconds (``epochs`` stays the
    # upper bound) and the cosine decay follows the share of the budget spent instead of the share of the steps
    time_budget_s: float | None = Field(None, gt=0)
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: in-process, the 2-core CPU)")
    dice_weight: float = Field(0.0, ge=0, description="add dice_weight * soft-Dice loss to BCE (paper: BCE only)")
    threshold: float = Field(0.5, gt=0, lt=1)
    window: int = Field(256, ge=32, description="inference window (px) for validation and the exported metadata")
    overlap: int = Field(64, ge=0)
    min_area_um2: float = Field(2000.0, ge=0, description="predicted objects smaller than this are dropped")
    # "last": export the final epoch (no selection on the validation fold, so its scores stay held-out figures)
    select_on: Literal["dice", "det_f1", "dice+det_f1", "last"] = "dice+det_f1"
    augment: SelfAdversarialConfig | None = None
    stain_transfer: StainTransferConfig | None = None  # PAS -> other real stains with frozen CycleGAN generators
    da: DAConfig = DAConfig()
    # real labelled data (tiles, crops pasted into tissue): replaces the phantom scenes as training / validation data
    real: RealSegDataConfig | None = None
    # segmenter weights (a run's export) to start G from: e.g. DA after a plain run of the same recipe; a resumed
    # run keeps its checkpoint instead
    init: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SegmenterTrainConfig:
        for name in ("stains", "val_stains"):
            parse_stains(getattr(self, name))
        if self.da.mode != "none":
            if self.da.mode == "supervised" and self.da.target_images:
                raise ValueError("da.target_images are unlabelled: supervised DA needs labelled target layouts")
            if self.da.target_images:
                missing = [p for p in self.da.target_images if not Path(p).is_file()]
                if missing:
                    raise ValueError(f"da.target_images: not found: {', '.join(missing)}")
            else:
                parse_stains(self.da.target_stains)
                if not self.da.target_seeds:
                    raise ValueError("da.target_seeds or da.target_images: the target domain needs images")
        if self.real is None and (not self.train_seeds or not self.val_seeds):
            raise ValueError("train_seeds and val_seeds must not be empty")
        if set(self.train_seeds) & set(self.val_seeds):
            raise ValueError("train_seeds and val_seeds overlap: validation must use held-out layouts")
        if self.overlap >= self.window:
            raise ValueError(f"overlap={self.overlap} must be < window={self.window}")
        return self


# -- evaluation --------------------------------------------------------------------------------------------------
def segment_image(model: nn.Module, image: np.ndarray, *, window: int = 256, overlap: int = 64,
                  batch_size: int = 8, device: str | torch.device = "auto") -> np.ndarray:
    """Glomerulus probability ``(H, W)`` float32 of an RGB uint8 image, exactly as the pipeline computes it."""
    predictor = TorchPredictor(model, device=device, activation="sigmoid")
    prob = predict_tiled(image, predictor, window=window, overlap=overlap, batch_size=batch_size,
                         margin=min(overlap // 2, 16))
    return prob[..., 0]


def score_prediction(prob: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5,
                     min_area_px: int = 0) -> tuple[PixelCounts, DetectionScores]:
    """Pixel counts and detection scores (IoU >= 0.5) of a probability map against instance labels."""
    pred = prob >= threshold
    det = detection_scores(pred, labels, iou_threshold=0.5, min_area=min_area_px)
    return pixel_counts(pred, labels > 0), det


def evaluate_scenes(model: nn.Module, scenes: list[Scene], *, config: SegmenterTrainConfig,
                    device: torch.device) -> dict[str, float]:
    """Pooled pixel metrics and detection scores over whole scenes (model left in eval mode)."""
    counts, det = PixelCounts(), DetectionScores()
    min_px = int(config.min_area_um2 / config.data.mpp**2)
    for scene in scenes:
        prob = segment_image(model, scene.image, window=config.window, overlap=config.overlap, device=device)
        c, d = score_prediction(prob, scene.labels, threshold=config.threshold, min_area_px=min_px)
        counts, det = counts + c, det + d
    return {**counts.as_dict(), **det.as_dict()}


def evaluate_phantom_store(model: nn.Module, store_path: str | Path, layout: Layout, *, threshold: float = 0.5,
                           window: int = 512, overlap: int = 64, min_area_um2: float = 2000.0,
                           device: str | torch.device = "auto") -> dict[str, float]:
    """Score a model on a phantom slide *as the pipeline sees it*: the tiled zarr store of its SVS.

    Pixel metrics against the layout's instance labels at the store's grid; detection F1 (IoU >= 0.5) between the
    pipeline's level-0 polygons (:func:`~wsi_pipeline.annotations.mask_to_polygons`) and the truth outlines.
    """
    group = zarr.open_group(Path(store_path), mode="r")
    # zarr types attrs as any JSON value; the pipeline's store metadata is a mapping
    geo = dict(cast("Mapping[str, Any]", group.attrs["wsi_pipeline"]))["geometry"]
    (x0, y0), (sx, sy) = geo["origin_level0"], geo["scale_level0"]
    if abs(sx - round(sx)) > 1e-9 or sx != sy or x0 or y0:
        raise ValueError(f"{store_path}: expected an integer-scale store at the slide origin, got {geo}")
    level0 = cast(zarr.Array, group["0"])  # group[name] is Array | Group; level 0 is an array
    image = np.moveaxis(np.asarray(level0[:]), 0, -1)  # (c, y, x) -> (y, x, c)
    h, w = image.shape[:2]
    labels = label_region(layout, 0, 0, w, h, downsample=round(sx))
    prob = segment_image(model, image, window=window, overlap=overlap, device=device)
    mpp = layout.mpp * sx
    counts, det = score_prediction(prob, labels, threshold=threshold, min_area_px=int(min_area_um2 / mpp**2))
    polys = mask_to_polygons(prob >= threshold, origin=(x0, y0), scale=(sx, sy),
                             min_area_px=min_area_um2 / layout.mpp**2)
    truth = [Polygon(g.polygon()) for g in layout.glomeruli]
    return {**counts.as_dict(), **det.as_dict("det_px_"), **polygon_detection_scores(polys, truth).as_dict()}


# -- training ----------------------------------------------------------------------------------------------------
class _Nets:
    """G and (with DA) the three discriminators with their optimisers and schedulers."""

    def __init__(self, config: SegmenterTrainConfig, device: torch.device, schedule: _Schedule | None = None) -> None:
        schedule = schedule or _Schedule(config)
        self.g: UNetResNet34 = config.model.build().to(device)
        self.models: dict[str, nn.Module] = {"G": self.g}
        self.disc: dict[str, nn.Module] = {}
        if config.da.mode != "none":
            w = config.da.disc_width
            self.disc = {"De": MultiLevelDiscriminatorConfig.for_encoder(config.model, width=w).build(),
                         "Dd": MultiLevelDiscriminatorConfig.for_decoder(config.model, width=w).build(),
                         "Ds": ShapeDiscriminatorConfig(in_channels=1, width=w).build()}
            self.disc = {k: v.to(device) for k, v in self.disc.items()}
            self.models.update(self.disc)
        self.opt = {"G": torch.optim.Adam(self.g.parameters(), lr=config.lr, betas=config.betas)}
        if self.disc:
            params = [p for d in self.disc.values() for p in d.parameters()]
            self.opt["D"] = torch.optim.Adam(params, lr=config.lr, betas=config.betas)

        def factor(step: int) -> float:
            # a plain float: numpy scalars in the scheduler state would not pass torch.load(weights_only=True)
            return 0.5 * (1.0 + math.cos(math.pi * schedule.done(step))) if config.cosine_decay else 1.0

        self.sched = {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in self.opt.items()}


class _Schedule:
    """How much of the run is done: the share of ``epochs x steps_per_epoch``, or of ``time_budget_s`` when set
    (training seconds carry over a resume through the ``train_seconds`` of the last epoch's metrics)."""

    def __init__(self, config: SegmenterTrainConfig) -> None:
        self.total = config.epochs * config.steps_per_epoch
        self.budget = config.time_budget_s
        self.t0 = time.perf_counter()

    def resume(self, history: list[dict[str, Any]]) -> None:
        self.t0 = time.perf_counter() - (float(history[-1].get("train_seconds", 0.0)) if history else 0.0)

    def spent(self) -> float:
        return time.perf_counter() - self.t0

    def done(self, step: int) -> float:
        if self.budget is None:
            return min(step, self.total) / self.total
        return min(self.spent() / self.budget, 1.0)

    def over(self) -> bool:
        return self.budget is not None and self.spent() >= self.budget


def _seg_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits.float(), mask)
    if dice_weight > 0:
        loss = loss + dice_weight * dice_loss(logits.float(), mask)
    return loss


def _loader(ds: Dataset[dict[str, torch.Tensor]], batch_size: int,
            workers: int = 0) -> DataLoader[dict[str, torch.Tensor]]:
    # in-process by default: on the 2-core CPU the cores are better spent on the network; on a GPU host the crops
    # (paste, resample, recolour: ~13 ms each on one core) are the bottleneck, so workers make them in parallel
    # (items are pure functions of (seed, epoch, index): the same batches either way)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True,
                      prefetch_factor=4 if workers else None, pin_memory=workers > 0 and torch.cuda.is_available())


class _Trainer:
    """One run's step logic; kept apart from the epoch loop so each phase reads on its own."""

    def __init__(self, config: SegmenterTrainConfig, nets: _Nets, device: torch.device,
                 augments: list[SelfAdversarialAugment | StainTransferAugment]) -> None:
        self.c, self.n, self.device, self.augments = config, nets, device, augments
        self.aug_rng = torch.Generator().manual_seed(config.seed + 7)

    def _batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"].to(self.device, non_blocking=True)
        for augment in self.augments:  # on the device: the generators are the costly part of a step
            x = augment(x, generator=self.aug_rng)
        return x, batch["mask"].to(self.device, non_blocking=True)

    def step(self, phase: Phase, src: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor] | None) -> dict[str, float]:
        xs, ys = self._batch(src)
        xt, yt = self._batch(tgt) if tgt is not None else (None, None)
        logs: dict[str, float] = {}
        if phase in ("discriminators", "adversarial"):
            logs.update(self._disc_step(xs, ys, xt, yt))
        if phase in ("segmenter", "adversarial"):
            logs.update(self._gen_step(phase, xs, ys, xt, yt))
        return logs

    def _labelled(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None,
                  yt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.c.da.mode == "supervised" and xt is not None and yt is not None:
            return torch.cat([xs, xt]), torch.cat([ys, yt])
        return xs, ys

    def _disc_losses(self, fs: Any, ft: Any, ys: torch.Tensor, yt: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Eq. 1-3 as BCE: source features / true masks are 'real' (1), target features / predictions 'fake'."""
        d = self.n.disc
        real = ys if (self.c.da.mode != "supervised" or yt is None) else torch.cat([ys, yt])
        fake = torch.sigmoid(ft.logits.float())
        if self.c.da.mode == "supervised":
            fake = torch.cat([torch.sigmoid(fs.logits.float()), fake])
        return {
            "De": bce_adversarial_loss(d["De"](fs.encoder), True) + bce_adversarial_loss(d["De"](ft.encoder), False),
            "Dd": bce_adversarial_loss(d["Dd"](fs.decoder), True) + bce_adversarial_loss(d["Dd"](ft.decoder), False),
            "Ds": bce_adversarial_loss(d["Ds"](real), True) + bce_adversarial_loss(d["Ds"](fake), False),
        }

    def _disc_step(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None,
                   yt: torch.Tensor | None) -> dict[str, float]:
        assert xt is not None, "discriminator phases need a target batch"
        g_mode = self.n.g.training
        self.n.g.eval()  # G is fixed here: its batch statistics must not drift while only D learns
        with torch.no_grad(), autocast(self.device):
            fs, ft = self.n.g.forward_features(xs), self.n.g.forward_features(xt)
        fs = type(fs)(fs.logits.float(), [m.float() for m in fs.encoder], [m.float() for m in fs.decoder])
        ft = type(ft)(ft.logits.float(), [m.float() for m in ft.encoder], [m.float() for m in ft.decoder])
        self.n.g.train(g_mode)
        for m in self.n.disc.values():
            m.train()
        with autocast(self.device):
            losses = self._disc_losses(fs, ft, ys, yt)
        total = losses["De"] + losses["Dd"] + losses["Ds"]
        self.n.opt["D"].zero_grad(set_to_none=True)
        total.backward()
        self.n.opt["D"].step()
        return {f"loss_{k}": float(v.detach()) for k, v in losses.items()}

    def _gen_step(self, phase: Phase, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None,
                  yt: torch.Tensor | None) -> dict[str, float]:
        self.n.g.train()
        da = self.c.da
        with autocast(self.device):
            x, y = self._labelled(xs, ys, xt, yt)
            if phase == "segmenter":
                loss = _seg_loss(self.n.g(x), y, self.c.dice_weight)
                logs = {"loss_seg": float(loss.detach())}
            else:
                for m in self.n.disc.values():
                    m.eval().requires_grad_(False)  # D is fixed during G's update
                fs = self.n.g.forward_features(xs)
                assert xt is not None
                ft = self.n.g.forward_features(xt)
                seg_logits = fs.logits if da.mode != "supervised" else torch.cat([fs.logits, ft.logits])
                l_seg = _seg_loss(seg_logits, y, self.c.dice_weight)
                d = self.n.disc
                if da.generator_objective == "nonsaturating":
                    # target features should pass as source; target predictions as true masks
                    adv = {"De": bce_adversarial_loss(d["De"](ft.encoder), True),
                           "Dd": bce_adversarial_loss(d["Dd"](ft.decoder), True),
                           "Ds": bce_adversarial_loss(d["Ds"](torch.sigmoid(ft.logits.float())), True)}
                    loss = l_seg + da.a_e * adv["De"] + da.a_d * adv["Dd"] + da.a_s * adv["Ds"]
                else:
                    adv = self._disc_losses(fs, ft, ys, yt)
                    loss = l_seg - da.a_e * adv["De"] - da.a_d * adv["Dd"] - da.a_s * adv["Ds"]
                for m in self.n.disc.values():
                    m.requires_grad_(True)
                logs = {"loss_seg": float(l_seg.detach()), **{f"adv_{k}": float(v.detach()) for k, v in adv.items()}}
        self.n.opt["G"].zero_grad(set_to_none=True)
        loss.backward()
        self.n.opt["G"].step()
        return logs


def _select_score(metrics: dict[str, float], select_on: str, epoch: int) -> float:
    if select_on == "last":
        return float(epoch)
    return sum(metrics.get(k, 0.0) for k in select_on.split("+"))


def train_segmenter(config: SegmenterTrainConfig, *, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a segmenter run in ``run_dir``; export the best-on-validation model there.

    With domain adaptation only epochs of the alternating phase are eligible (when the run reaches it).

    Returns ``{"weights": path, "best_epoch": .., "best": {metrics}, "epochs_run": .., "seconds": ..}``.
    """
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = pick_device(config.device)
    run = RunState(run_dir)
    run.write_config(config.to_dict())
    data = config.data
    cache = Path(config.cache_dir)
    load = {"config": data, "cache_dir": cache, "workers": config.render_workers}
    n_items = config.steps_per_epoch * config.batch_size
    src: SegPatchDataset | RealPatchDataset | MixedPatchDataset
    if config.real is not None:
        real = load_real_data(config.real, mpp=data.mpp)
        val_scenes = real.val
        src = RealPatchDataset(real.train, real.crops, config=config.real, mpp=data.mpp, patch=data.patch,
                               glomerulus_fraction=data.glomerulus_fraction, length=n_items, seed=config.seed)
        if config.real.phantom_fraction > 0:
            phantom = SegPatchDataset(load_scenes(config.train_seeds, config.stains, **load),  # type: ignore[arg-type]
                                      config=data, length=n_items, seed=config.seed + 11)
            src = MixedPatchDataset(src, phantom, fraction=config.real.phantom_fraction, seed=config.seed)
    else:
        src_scenes = load_scenes(config.train_seeds, config.stains, **load)  # type: ignore[arg-type]
        val_scenes = load_scenes(config.val_seeds, config.val_stains, **load)  # type: ignore[arg-type]
        src = SegPatchDataset(src_scenes, config=data, length=n_items, seed=config.seed)
    tgt: SegPatchDataset | None = None
    if config.da.mode != "none":
        tgt_scenes = (unlabelled_scenes(config.da.target_images, mpp=data.mpp, image_mpp=config.da.target_mpp)
                      if config.da.target_images else
                      load_scenes(config.da.target_seeds, config.da.target_stains, **load))  # type: ignore[arg-type]
        tgt = SegPatchDataset(tgt_scenes, config=data, length=n_items, seed=config.seed + 1)

    schedule = _Schedule(config)
    nets = _Nets(config, device, schedule)
    if config.init is not None:
        init, _ = load_model(config.init)
        nets.g.load_state_dict(init.state_dict())
    augments: list[SelfAdversarialAugment | StainTransferAugment] = []
    if config.augment is not None:
        augments.append(SelfAdversarialAugment.from_config(config.augment, device=device))
    if config.stain_transfer is not None:
        augments.append(StainTransferAugment.from_config(config.stain_transfer, device=device))
    trainer = _Trainer(config, nets, device, augments)
    start = run.resume(models=nets.models, optimizers=nets.opt, schedulers=nets.sched)
    schedule.resume(run.history)
    # with DA the exported model must be an adapted one: before the alternating phase G has seen no target
    # signal, and validating on source labels (unsupervised DA) would otherwise favour the plain source model
    adapting = config.da.mode != "none" and config.da.s0 + config.da.d0 < config.epochs

    def eligible(entry: dict[str, Any]) -> bool:
        return not adapting or "phase_adversarial" in entry

    best = max((h for h in run.history if eligible(h)), key=lambda h: h.get("select", -1.0), default=None)
    weights = run.run_dir / EXPORT_NAME
    t0 = time.perf_counter()
    epochs_run = 0
    for epoch in range(start, config.epochs):
        if schedule.over() and run.history:  # a time-budgeted run ends at the first epoch end past its budget
            break
        phase = config.da.phase(epoch)
        src.set_epoch(epoch)
        batches: Iterator[Any] = iter(_loader(src, config.batch_size, config.loader_workers))
        tgt_batches: Iterator[Any] | None = None
        if tgt is not None:
            tgt.set_epoch(epoch)
            tgt_batches = infinite(_loader(tgt, config.batch_size, config.loader_workers))
        sums: dict[str, float] = {}
        bar = tqdm(batches, total=config.steps_per_epoch, disable=not progress, leave=False,
                   desc=f"segmenter epoch {epoch + 1}/{config.epochs} [{phase}]")
        for batch in bar:
            logs = trainer.step(phase, batch, next(tgt_batches) if tgt_batches is not None else None)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            # a scheduler steps only after its optimiser did (G: not in the D-only phase; D: not in G-only)
            if phase != "discriminators":
                nets.sched["G"].step()
            if phase != "segmenter":
                nets.sched["D"].step()
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        metrics = {k: v / config.steps_per_epoch for k, v in sums.items()}
        if val_scenes:
            metrics.update({f"val_{k}": v for k, v in evaluate_scenes(nets.g, val_scenes, config=config,
                                                                       device=device).items()})
        nets.g.train()
        val = {k[4:]: v for k, v in metrics.items() if k.startswith("val_")}
        metrics["select"] = _select_score(val, config.select_on, epoch)
        metrics["lr"] = nets.opt["G"].param_groups[0]["lr"]
        metrics["phase_" + phase] = 1.0
        metrics["train_seconds"] = schedule.spent()
        if eligible(metrics) and (best is None or metrics["select"] > best["select"]):
            best = {"epoch": epoch, **metrics}
            _export(nets.g, weights, config=config, epoch=epoch, metrics=val)
        run.end_epoch(epoch, metrics, models=nets.models, optimizers=nets.opt, schedulers=nets.sched)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                        if k.startswith(("loss", "val_dice", "val_det_f1"))))
        epochs_run += 1
    return {"weights": str(weights), "best_epoch": None if best is None else best["epoch"],
            "best": best, "epochs_run": epochs_run, "seconds": time.perf_counter() - t0}


def _export(model: nn.Module, path: Path, *, config: SegmenterTrainConfig, epoch: int,
            metrics: dict[str, float]) -> str:
    """Write the best model with what the inference job needs to use it exactly as validated."""
    meta = {
        "task": "glomerulus segmentation (Bowman's capsule outline)",
        "mpp": config.data.mpp, "window": config.window, "overlap": config.overlap,
        "threshold": config.threshold, "min_area_um2": config.min_area_um2,
        "input": "RGB uint8 / 255 (no mean/std)", "activation": "sigmoid",
        "stains": list(config.stains) + (list(config.da.target_stains) if config.da.mode != "none" else []),
        "da_mode": config.da.mode, "epoch": epoch, "validation": {k: round(v, 6) for k, v in metrics.items()},
    }
    return save_model(model, path, arch="unet_resnet34", config=config.model, metadata=meta,
                      training_config=config.to_dict())


__all__ = ["DAConfig", "SegmenterTrainConfig", "evaluate_phantom_store", "evaluate_scenes", "score_prediction", "segment_image",
           "train_segmenter"]
