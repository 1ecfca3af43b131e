"""G2C on real labelled glomeruli (AIDPATH crops): cross-site training, slide-grouped CV, calibration, export.

One run = one variant trained on ``train_sites`` and tested on ``test_sites`` with several seeds. The training
site's slides are split into ``folds`` slide-grouped folds; seed ``i`` trains without fold ``i mod folds`` and
predicts it, so over the seeds every training glomerulus gets an out-of-fold prediction. Those out-of-fold
predictions (training site only) fit the temperature and the cross-validated GS threshold; the test site is only
scored, never used to choose anything. ``holdout: false`` trains each seed on all of ``train_sites`` (shipping).

Labels: real crops say only *globally sclerosed (GS) or not*. The head keeps the three classes noa / ss / gs and
is trained with :func:`~wsi_pipeline.train.losses.grouped_focal_loss` ("not GS" = noa or ss). The split of "not GS"
into noa and ss comes from the initialisation (``init``: the shipped phantom-trained three-class G2C, whose ss
class was learnt on phantom segmental sclerosis); real labels never constrain it.

Recipe (METHODS.md section 1, scaled to a CPU budget, ``configs/train-g2c-real*.yaml``): SGD momentum 0.5, lr 0.01
divided by 10 every ``lr_step`` epochs, ``epochs`` epochs, focal loss, flips + brightness/saturation jitter, inputs
in [0, 1]. ``joint: false`` keeps the generators frozen: their outputs are computed once per crop and flipped with
it (jitter acts on the PAS input only). ``joint: true`` runs them in the loop and trains them after
``freeze_epochs``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes, atomic_write_json
from ..config import FrozenConfig
from ..errors import ConfigError
from ..models.blocks import BasicBlock
from ..models.cyclegan import GeneratorConfig
from ..models.g2c import G2C, G2CClassifier, G2CClassifierConfig, G2CConfig
from ..models.registry import load_model, save_model
from .appearance import AppearanceConfig, augment_appearance
from .calibration import ece, fit_temperature, gs_probability
from .common import RunState, seed_everything
from .data_real import RealCropsConfig, RealGlomeruli, read_real_crops, slide_folds
from .g2c import VARIANTS, ClassifierWidths, balanced_accuracy, load_generators, resolve_weights, roc_auc
from .losses import grouped_focal_loss

CLASSES = ("noa", "ss", "gs")
RealVariant = Literal["PAS_ONLY", "PAS_HE", "PAS_MASSON", "PAS_PASM", "PAS_CD68", "PAS_ALL", "PAS_ALL+"]
#: the paper's variants plus one IHC stain (the real stain set has CD68; the phantom has none)
REAL_VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = VARIANTS | {"PAS_CD68": (("CD68",), False)}
#: coarse real labels -> fine classes: 0 "not GS" = noa + ss, 1 "GS" = gs
GROUPS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


class G2CRealConfig(FrozenConfig):
    """A cross-site G2C experiment on the real crops (or, with ``holdout: false``, the shipping run)."""

    variant: RealVariant = "PAS_ONLY"
    generators: dict[str, str] = {}  # stain -> PAS -> stain generator checkpoint (path or shipped name)
    # a g2c record whose classifier initialises ours (stem/trunk; fc sliced per branch): a path, a shipped name, or
    # "git:<commit>:<path>" (a file from this repository's history, extracted into init_cache: see resolve_init)
    init: str | None = "g2c"
    init_sha256: str | None = None  # the init file's expected SHA-256 (checked when set)
    init_cache: str = "runs/init"
    classifier: ClassifierWidths = ClassifierWidths()  # used when init is None
    joint: bool = False
    freeze_epochs: int = Field(2, ge=0)
    data: RealCropsConfig = RealCropsConfig()
    train_sites: tuple[str, ...] = ("SESCAM",)
    test_sites: tuple[str, ...] = ("SAS",)
    folds: int = Field(3, ge=2)
    fold_seed: int = 0
    holdout: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = Field(12, ge=1)
    lr: float = Field(0.01, gt=0)
    lr_step: int = Field(2, ge=1)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    momentum: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(8, ge=2)
    focal_gamma: float = Field(2.0, ge=0)
    brightness: float = Field(0.1, ge=0, lt=1)
    saturation: float = Field(0.1, ge=0, lt=1)
    rot90: bool = False  # also rotate by a random multiple of 90 degrees (every stain of a sample alike)
    # hospital-to-hospital variation: ``views`` appearance-augmented copies of every training crop (stain hue and
    # intensity, optics, JPEG: ``appearance``), each with its own generated stains, made once before training;
    # every step draws one of the original + ``views`` copies per sample. 0: the original crops only.
    views: int = Field(0, ge=0)
    view_seed: int = 0
    appearance: AppearanceConfig = AppearanceConfig(
        p_recolour=0.5, p_hed_jitter=0.5, counterstains=("pas",), counter_scale=(0.5, 1.5), hema_scale=(0.6, 1.4),
        hue_noise=0.08, hed_sigma=0.1, hed_bias=0.03, p_gray=0.0, p_optics=0.3, max_down=1.5, max_blur=0.8,
        p_jpeg=0.3, jpeg_quality=(50, 95))
    threads: int = Field(1, ge=1)
    # holdout: false (shipping): fit the temperature and GS threshold on the pooled out-of-fold predictions of these
    # finished cross-validation runs (their result.json) and write them into the model's metadata
    calibrate_from: tuple[str, ...] = ()


# -- model -----------------------------------------------------------------------------------------------------------
def _blocks(clf: G2CClassifier) -> list[nn.Module]:
    return [m for m in clf.trunk if isinstance(m, BasicBlock)]


def init_classifier(clf: G2CClassifier, source: G2CClassifier) -> None:
    """Copy the stem, the residual blocks (in order) and the fc columns of our branches; the whole classifier when
    the structure matches (attention included). Attention is never copied into a classifier without it."""
    clf.stem.load_state_dict(source.stem.state_dict())
    for mine, theirs in zip(_blocks(clf), _blocks(source), strict=True):
        mine.load_state_dict(theirs.state_dict())
    if clf.state_dict().keys() == source.state_dict().keys():  # same branches and attention: the whole classifier
        clf.load_state_dict(source.state_dict())
        return
    n = clf.fc.in_features  # fewer branches, or the same without attention (PAS_ALL from PAS_ALL+): no attention
    with torch.no_grad():  # the first branches' columns: PAS (+ the first generated stains)
        clf.fc.weight.copy_(source.fc.weight[:, :n] * source.num_stains / clf.num_stains)
        clf.fc.bias.copy_(source.fc.bias)


_GIT_SPEC = re.compile(r"git:(?P<rev>[0-9A-Za-z._/-]+):(?P<path>[^:]+)")


def resolve_init(spec: str, *, cache: str | Path = "runs/init", repo: str | Path = ".") -> Path:
    """The checkpoint file of ``init``: ``git:<commit>:<path>`` is extracted once from the history of the git
    repository at ``repo`` into ``cache`` (atomically; reused afterwards); anything else as :func:`resolve_weights`."""
    m = _GIT_SPEC.fullmatch(spec)
    if m is None:
        if spec.startswith("git:"):
            raise ConfigError(f"init={spec!r}: expected git:<commit>:<path>")
        return resolve_weights(spec)
    rev, inner = m["rev"], m["path"]
    out = Path(cache) / f"{rev.replace('/', '_')}-{inner.replace('/', '_')}"
    if out.is_file():
        return out
    try:
        blob = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{inner}"], capture_output=True, check=True,
                              timeout=120).stdout
    except FileNotFoundError:
        raise ConfigError(f"init={spec!r}: git is not installed") from None
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode(errors="replace").strip() or f"exit status {exc.returncode}"
        raise ConfigError(f"init={spec!r}: cannot read {inner} at {rev} from the git repository {repo}: {reason} "
                          f"(a full clone is needed, not a shallow one)") from None
    return atomic_write_bytes(out, blob)


def build_real_model(config: G2CRealConfig) -> tuple[G2C, G2CConfig, dict[str, str]]:
    """The variant's G2C: generators from their checkpoints, the classifier from ``init`` (or fresh)."""
    stains, attention = REAL_VARIANTS[config.variant]
    gens, digests, gen_cfg = load_generators(stains, config.generators, variant=config.variant)
    source: G2CClassifier | None = None
    if config.init:
        init_net, init_record = load_model(resolve_init(config.init, cache=config.init_cache),
                                           expected_sha256=config.init_sha256)
        if init_record.arch != "g2c":
            raise ConfigError(f"init={config.init!r}: arch {init_record.arch!r}, expected 'g2c'")
        source = cast(G2CClassifier, init_net.classifier)
        c = init_record.config.classifier
        widths = ClassifierWidths(stem_width=c.stem_width, widths=c.widths, blocks_per_unit=c.blocks_per_unit,
                                  reduction=c.reduction)
    else:
        widths = config.classifier
    clf_cfg = G2CClassifierConfig(num_stains=len(stains) + 1, num_classes=len(CLASSES), stem_width=widths.stem_width,
                                  widths=widths.widths, blocks_per_unit=widths.blocks_per_unit, attention=attention,
                                  reduction=widths.reduction, dropout=widths.dropout)
    arch = G2CConfig(stains=stains, generator=gen_cfg or GeneratorConfig(ngf=8, n_blocks=1), classifier=clf_cfg)
    model = arch.build()
    for stain, net in gens.items():
        model.generators[stain].load_state_dict(net.state_dict())
    if source is not None:
        init_classifier(model.classifier, source)
    return model, arch, digests


# -- data ------------------------------------------------------------------------------------------------------------
def unit(images: NDArray[np.uint8]) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float().div_(255.0)


@torch.no_grad()
def stain_stack(model: G2C, pas: NDArray[np.uint8], *, batch_size: int = 32) -> torch.Tensor:
    """(N, M + 1, 3, H, W) in [0, 1]: each crop and its generated stains (frozen generators, eval mode)."""
    model.eval()
    return torch.cat([model.stains(unit(pas[i:i + batch_size])) for i in range(0, len(pas), batch_size)])


def augment_stack(x: torch.Tensor, *, brightness: float, saturation: float, generator: torch.Generator,
                  rot90: bool = False) -> torch.Tensor:
    """Flip (and with ``rot90`` rotate) every stain of a sample alike; brightness/saturation jitter on the PAS input
    (index 0) only."""
    b = x.shape[0]
    flip_h = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None, None]
    flip_v = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None, None]
    x = torch.where(flip_h, x.flip(-1), x)
    x = torch.where(flip_v, x.flip(-2), x)
    if rot90:  # with both flips, a transpose gives all eight symmetries of the square
        swap = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None, None]
        x = torch.where(swap, x.transpose(-1, -2), x)
    fb = (1 + (torch.rand(b, generator=generator) * 2 - 1) * brightness)[:, None, None, None]
    fs = (1 + (torch.rand(b, generator=generator) * 2 - 1) * saturation)[:, None, None, None]
    pas = x[:, 0] * fb
    gray = (0.299 * pas[:, 0] + 0.587 * pas[:, 1] + 0.114 * pas[:, 2]).unsqueeze(1)
    pas = (gray + (pas - gray) * fs).clamp(0, 1)
    return torch.cat([pas[:, None], x[:, 1:]], dim=1)


@torch.no_grad()
def view_stacks(model: G2C, pas: NDArray[np.uint8], *, views: int, appearance: AppearanceConfig, seed: int,
                progress: bool = False) -> list[torch.Tensor]:
    """``views`` appearance-augmented copies of the crops ``pas``, each as its stain stack in float16 (memory):
    copy ``v`` of crop ``i`` is a pure function of ``(seed, v, i)``."""
    out = []
    for v in tqdm(range(1, views + 1), desc="g2c-real views", disable=not progress, leave=False):
        images = np.stack([augment_appearance(img, rng=np.random.default_rng([seed, v, i]), config=appearance)
                           for i, img in enumerate(pas)]) if len(pas) else pas
        out.append(stain_stack(model, images).half())
    return out


def draw_views(stacks: list[torch.Tensor], idx: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """One of ``stacks`` (the original, then the augmented copies) per sample ``idx``, as float32."""
    if len(stacks) == 1:
        return stacks[0][idx].float()
    pick = torch.randint(len(stacks), (len(idx),), generator=generator)
    return torch.stack([stacks[int(v)][int(i)].float() for v, i in zip(pick, idx)])


@torch.no_grad()
def logits_of(model: G2C, stack: torch.Tensor, *, batch_size: int = 32) -> NDArray[np.float32]:
    """Classifier logits (N, 3) of a precomputed stain stack."""
    model.eval()
    out = [model.classifier(stack[i:i + batch_size]) for i in range(0, len(stack), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, len(CLASSES)), np.float32)


# -- training --------------------------------------------------------------------------------------------------------
def train_one(config: G2CRealConfig, stacks: torch.Tensor | list[torch.Tensor], gs: NDArray[np.int64], *, seed: int,
              run_dir: Path, progress: bool = True) -> tuple[G2C, G2CConfig, dict[str, str]]:
    """Train one seed on ``stacks`` (precomputed stains: the crops, then any augmented copies of them) / ``gs``
    labels; resumable per epoch in ``run_dir``."""
    stacks = [stacks] if isinstance(stacks, torch.Tensor) else stacks
    seed_everything(seed)
    model, arch, digests = build_real_model(config)
    optimizer = torch.optim.SGD([p for p in model.parameters()], lr=config.lr, momentum=config.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    run = RunState(run_dir)
    start = run.resume(models={"g2c": model}, optimizers={"sgd": optimizer}, schedulers={"lr": scheduler})
    y_all = torch.from_numpy(gs)
    gen = torch.Generator()
    t0 = time.perf_counter()
    for epoch in range(start, config.epochs):
        in_loop = config.joint and epoch >= config.freeze_epochs
        model.freeze_generators(not in_loop)
        model.train()
        gen.manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(y_all), generator=gen)
        loss_sum = 0.0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"g2c-real {config.variant} s{seed} "
                   f"{epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = augment_stack(draw_views(stacks, idx, generator=gen), brightness=config.brightness,
                              saturation=config.saturation, generator=gen, rot90=config.rot90)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x[:, 0]) if in_loop else model.classifier(x)
            loss = grouped_focal_loss(logits, GROUPS, y_all[idx], gamma=config.focal_gamma)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        run.end_epoch(epoch, {"loss": loss_sum / len(order), "lr": lr, "elapsed_s": time.perf_counter() - t0},
                      models={"g2c": model}, optimizers={"sgd": optimizer}, schedulers={"lr": scheduler})
    return model, arch, digests


def binary_scores(logits: NDArray[np.float32], gs: NDArray[np.int64], *, temperature: float = 1.0,
                  threshold: float = 0.5) -> dict[str, float]:
    """GS-vs-not balanced accuracy (``p_gs >= threshold``), recalls, AUC and ECE at ``temperature``."""
    p = gs_probability(logits, temperature=temperature)
    return call_scores(p >= threshold, p, gs) | {"ece": ece(p, gs)}


def call_scores(called_gs: NDArray[np.bool_], p_gs: NDArray[np.floating[Any]],
                gs: NDArray[np.int64]) -> dict[str, float]:
    """GS-vs-not figures of decisions ``called_gs`` and probabilities ``p_gs``: balanced accuracy (over the classes
    present), each class's recall (NaN when absent), AUC of ``p_gs``, count."""
    pred = np.asarray(called_gs, bool).astype(np.int64)
    return {"balanced_accuracy": balanced_accuracy(pred, gs, num_classes=2),
            "recall_gs": float((pred[gs == 1] == 1).mean()) if (gs == 1).any() else float("nan"),
            "recall_not_gs": float((pred[gs == 0] == 0).mean()) if (gs == 0).any() else float("nan"),
            "auc": roc_auc(p_gs, gs), "n": float(len(gs))}


def cv_threshold(p: NDArray[np.float64], gs: NDArray[np.int64]) -> float:
    """The ``p_gs`` threshold (0.05..0.95) with the best out-of-fold balanced accuracy (ties: closest to 0.5)."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    accs = [balanced_accuracy((p >= t).astype(np.int64), gs, num_classes=2) for t in grid]
    best = max(accs)
    return float(min((t for t, a in zip(grid, accs) if a == best), key=lambda t: abs(t - 0.5)))


def train_g2c_real(config: G2CRealConfig, *, run_dir: str | Path, progress: bool = True,
                   data: RealGlomeruli | None = None) -> dict[str, Any]:
    """Run every seed, calibrate on the out-of-fold predictions, score the test sites; writes ``result.json``."""
    torch.set_num_threads(config.threads)
    root = Path(run_dir)
    RunState(root).write_config(config.to_dict())
    data = data if data is not None else read_real_crops(config.data)
    train, test = data.at_sites(config.train_sites), data.at_sites(config.test_sites)
    if len(train) == 0:
        raise ConfigError(f"train_sites={config.train_sites}: no crops")
    folds = slide_folds(train.slides, k=config.folds, seed=config.fold_seed)
    probe, _, _ = build_real_model(config)
    stack_train = stain_stack(probe, train.images)
    extra = view_stacks(probe, train.images, views=config.views, appearance=config.appearance,
                        seed=config.view_seed, progress=progress)
    stack_test = stain_stack(probe, test.images) if len(test) else None
    oof = np.full((len(train), len(CLASSES)), np.nan, np.float32)
    runs: list[dict[str, Any]] = []
    calibration = pooled_calibration(config.calibrate_from) if config.calibrate_from else {}
    for k, seed in enumerate(config.seeds):
        fold = k % config.folds
        fit = folds != fold if config.holdout else np.ones(len(train), bool)
        rows = torch.from_numpy(np.flatnonzero(fit))
        model, arch, digests = train_one(config, [stack_train[rows]] + [v[rows] for v in extra], train.gs[fit],
                                         seed=seed, run_dir=root / f"seed{seed}", progress=progress)
        entry: dict[str, Any] = {"seed": seed, "n_train": int(fit.sum()), "model": str(root / f"seed{seed}" / "g2c.safetensors")}
        if config.holdout:
            oof[~fit] = logits_of(model, stack_train[torch.from_numpy(np.flatnonzero(~fit))])
            entry["fold"] = fold
        if stack_test is not None:
            entry["test_logits"] = logits_of(model, stack_test).tolist()
        metadata = {"task": "three_class", "classes": list(CLASSES), "variant": config.variant, "joint": config.joint,
                    "crop_size": config.data.size, "crop_mpp": 1.0, "crop_margin": config.data.margin,
                    "generator_sha256": digests, "train_sites": list(config.train_sites), "seed": seed,
                    **calibration}
        save_model(model, entry["model"], arch="g2c", config=arch, metadata=metadata, training_config=config.to_dict())
        runs.append(entry)
    return _summarise(config, root, train, test, folds, oof, runs) | {"calibration": calibration}


def pooled_calibration(results: tuple[str, ...]) -> dict[str, Any]:
    """Temperature and GS threshold fitted on the pooled out-of-fold predictions of finished CV runs."""
    logits, gs = [], []
    for r in results:
        path = Path(r) / "result.json" if Path(r).is_dir() else Path(r)
        if not path.is_file():
            raise ConfigError(f"calibrate_from: {path} not found (run the cross-validation first)")
        oof = json.loads(path.read_text())["oof"]
        logits.append(np.asarray(oof["logits"], np.float32))
        gs.append(np.asarray(oof["gs"], np.int64))
    z, y = np.concatenate(logits), np.concatenate(gs)
    t = fit_temperature(z, y)
    return {"temperature": t, "gs_threshold": cv_threshold(gs_probability(z, temperature=t), y),
            "calibration_n": len(y), "calibration_sources": list(results)}


def _summarise(config: G2CRealConfig, root: Path, train: RealGlomeruli, test: RealGlomeruli, folds: NDArray[np.int64],
               oof: NDArray[np.float32], runs: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"variant": config.variant, "joint": config.joint, "train_sites": list(config.train_sites),
                              "test_sites": list(config.test_sites), "n_train_site": len(train), "n_test": len(test),
                              "folds": {str(s): int(f) for s, f in sorted(set(zip(train.slides, folds)))}}
    covered = ~np.isnan(oof).any(1)
    temperature, threshold = 1.0, 0.5
    if covered.any():
        temperature = fit_temperature(oof[covered], train.gs[covered])
        threshold = cv_threshold(gs_probability(oof[covered], temperature=temperature), train.gs[covered])
        result["oof"] = {"logits": oof[covered].round(5).tolist(), "gs": train.gs[covered].tolist()}
        result["cv"] = {"n": int(covered.sum()), "raw": binary_scores(oof[covered], train.gs[covered]),
                        "calibrated": binary_scores(oof[covered], train.gs[covered], temperature=temperature)}
    result |= {"temperature": temperature, "gs_threshold_cv": threshold}
    per_seed = []
    for entry in runs:
        row = {k: v for k, v in entry.items() if k != "test_logits"}
        if "test_logits" in entry and len(test):
            logits = np.asarray(entry["test_logits"], np.float32)
            row["test_raw"] = binary_scores(logits, test.gs)
            row["test_calibrated"] = binary_scores(logits, test.gs, temperature=temperature)
            row["test_cv_threshold"] = binary_scores(logits, test.gs, temperature=temperature, threshold=threshold)
        per_seed.append(row)
    result["seeds"] = per_seed
    if per_seed and "test_raw" in per_seed[0]:
        for key in ("test_raw", "test_calibrated", "test_cv_threshold"):
            for metric in ("balanced_accuracy", "auc", "ece"):
                vals = [r[key][metric] for r in per_seed]
                result[f"{key}_{metric}_mean"] = float(np.mean(vals))
                result[f"{key}_{metric}_std"] = float(np.std(vals))
    atomic_write_json(root / "result.json", result)
    return result


__all__ = ["CLASSES", "G2CRealConfig", "GROUPS", "REAL_VARIANTS", "RealVariant", "augment_stack", "binary_scores", "call_scores", "draw_views", "build_real_model", "cv_threshold",
           "init_classifier", "logits_of", "pooled_calibration", "resolve_init", "stain_stack", "train_g2c_real", "train_one", "unit",
           "view_stacks"]
