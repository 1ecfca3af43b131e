"""G2C joint fine-tuning (METHODS.md section 1): CycleGAN-initialised generators + the multi-stain classifier.

The recipe: SGD momentum 0.5, ``epochs`` (30) epochs, lr 0.01 divided by 10 every 5 epochs, generators frozen for
the first 5 epochs (then trained jointly, unless ``joint: false``), focal loss, random vertical/horizontal flips and
brightness/saturation jitter on the PAS input, intensities in [0, 1].

Variants: ``PAS_ONLY`` (the same classifier on PAS alone), ``PAS_HE`` / ``PAS_MASSON`` / ``PAS_PASM`` (one generated
stain), ``PAS_ALL`` (all three, no attention), ``PAS_ALL+`` (all three + cross-stain attention). Tasks:
``s_vs_noa``, ``ss_vs_gs`` (the paper's two binary tasks) and ``three_class`` (noa/ss/gs with a softmax head: what
the inference job needs, p_noa/p_ss/p_gs). A three-class model is also scored on the two paper tasks: s-vs-noa from
``p_ss + p_gs`` vs ``p_noa``, ss-vs-gs on true sclerotic glomeruli it called sclerotic (the paper's "correctly
classified abnormal patches"), by ``p_ss`` vs ``p_gs``.

Data are phantom glomerulus crops (:mod:`.data_stain`): training and test layouts are different seeds. With
``crop.source: slide`` (the default) each layout is written as JPEG SVS slides and the crops are read around the
truth polygons with the slide job's own crop function, so the classifier trains on what it will classify.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_json
from ..config import FrozenConfig
from ..errors import ConfigError
from ..models.cyclegan import GeneratorConfig
from ..models.g2c import G2C, G2CClassifierConfig, G2CConfig
from ..models.registry import load_model, save_model
from .common import RunState, autocast, pick_device, seed_everything
from .cyclegan import translation_error
from .data_stain import TASK_CLASSES, GlomerulusCropConfig, GlomerulusCrops, Task, glomerulus_crops, to_tensor
from .losses import focal_loss

Variant = Literal["PAS_ONLY", "PAS_HE", "PAS_MASSON", "PAS_PASM", "PAS_ALL", "PAS_ALL+"]
#: variant -> (generated stains, cross-stain attention)
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "PAS_ONLY": ((), False), "PAS_HE": (("HE",), False), "PAS_MASSON": (("MASSON",), False),
    "PAS_PASM": (("PASM",), False), "PAS_ALL": (("HE", "MASSON", "PASM"), False),
    "PAS_ALL+": (("HE", "MASSON", "PASM"), True),
}


class ClassifierWidths(FrozenConfig):
    """The classifier's widths (the variant decides ``num_stains`` and ``attention``)."""

    stem_width: int = Field(16, ge=8, multiple_of=8)
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_unit: int = Field(2, ge=1)  # paper: 3 residual blocks per unit
    reduction: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class G2CTrainConfig(FrozenConfig):
    """A G2C run; defaults follow the paper's recipe (widths and crop size scaled down for CPU budgets)."""

    variant: Variant = "PAS_ALL+"
    task: Task = "three_class"
    # stain -> pretrained PAS -> stain generator: a checkpoint path, or the name of a shipped one
    generators: dict[str, str] = {"HE": "generator-PAS-HE", "MASSON": "generator-PAS-MASSON",
                                  "PASM": "generator-PAS-PASM"}
    joint: bool = True  # False: generators stay frozen for the whole run (the paper's "frozen" ablation)
    freeze_epochs: int = Field(5, ge=0)
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.01, gt=0)
    lr_step: int = Field(5, ge=1)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    momentum: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)  # the paper gives none
    batch_size: int = Field(16, ge=1)
    focal_gamma: float = Field(2.0, ge=0)
    brightness: float = Field(0.1, ge=0, lt=1)  # factor ~ U(1 - b, 1 + b)
    saturation: float = Field(0.1, ge=0, lt=1)
    crop: GlomerulusCropConfig = GlomerulusCropConfig()
    train_seeds: tuple[int, int] = (1000, 20)  # (first layout seed, number of layouts)
    test_seeds: tuple[int, int] = (5000, 10)  # held-out layouts
    classifier: ClassifierWidths = ClassifierWidths()
    cache_dir: str | None = None  # rendered crops are cached here (default: the run folder)
    seed: int = 0
    device: str = "auto"

    def model_config_record(self, generator: GeneratorConfig) -> G2CConfig:
        stains, attention = VARIANTS[self.variant]
        c = self.classifier
        clf = G2CClassifierConfig(num_stains=len(stains) + 1, num_classes=len(TASK_CLASSES[self.task]),
                                  stem_width=c.stem_width, widths=c.widths, blocks_per_unit=c.blocks_per_unit,
                                  attention=attention, reduction=c.reduction, dropout=c.dropout)
        return G2CConfig(stains=stains, generator=generator, classifier=clf)


def balanced_accuracy(pred: NDArray[np.int64], truth: NDArray[np.int64], *, num_classes: int) -> float:
    """Category-averaged accuracy: the mean per-class recall over the classes present in ``truth``."""
    recalls = [float((pred[truth == c] == c).mean()) for c in range(num_classes) if (truth == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def class_recalls(pred: NDArray[np.int64], truth: NDArray[np.int64], names: tuple[str, ...],
                  prefix: str = "") -> dict[str, float]:
    """Category-wise accuracy (recall) per class name; NaN for a class absent from ``truth``."""
    return {f"{prefix}recall_{n}": float((pred[truth == c] == c).mean()) if (truth == c).any() else float("nan")
            for c, n in enumerate(names)}


def roc_auc(scores: NDArray[np.floating[Any]], truth: NDArray[np.int64]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN when a class is missing."""
    pos, neg = scores[truth == 1], scores[truth == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def lr_at(config: G2CTrainConfig, epoch: int) -> float:
    """The step schedule: ``lr * gamma ** (epoch // step)`` (0.01, 0.001 at 5, 1e-4 at 10, ...).

    >>> [round(lr_at(G2CTrainConfig(), e), 6) for e in (0, 5, 10)]
    [0.01, 0.001, 0.0001]
    """
    return config.lr * config.lr_gamma ** (epoch // config.lr_step)


def augment(x: torch.Tensor, *, brightness: float, saturation: float, generator: torch.Generator) -> torch.Tensor:
    """Random h/v flips + brightness and saturation jitter of (B, 3, H, W) in [0, 1], per sample."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=generator) < 0.5
    flip_v = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    fb = 1 + (torch.rand(b, generator=generator) * 2 - 1) * brightness
    fs = 1 + (torch.rand(b, generator=generator) * 2 - 1) * saturation
    x = x * fb[:, None, None, None].to(x)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # ITU-R 601 luma, as torchvision
    x = gray + (x - gray) * fs[:, None, None, None].to(x)
    return x.clamp(0, 1)


WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def resolve_weights(name_or_path: str) -> Path:
    """A checkpoint path, or a bare name (``generator-PAS-HE``) of a file shipped in ``wsi_pipeline/weights``."""
    path = Path(name_or_path)
    if path.suffix or "/" in name_or_path or "\\" in name_or_path:
        return path
    return WEIGHTS_DIR / f"{name_or_path}.safetensors"


def load_generators(stains: tuple[str, ...], generators: dict[str, str], *, variant: str = ""
                    ) -> tuple[dict[str, nn.Module], dict[str, str], GeneratorConfig | None]:
    """Pretrained PAS -> stain generators of ``stains``, their file digests and their (shared) config."""
    loaded: dict[str, nn.Module] = {}
    digests: dict[str, str] = {}
    gen_cfg: GeneratorConfig | None = None
    for stain in stains:
        if stain not in generators:
            raise ConfigError(f"variant={variant!r} needs generators[{stain!r}] (a PAS -> {stain} checkpoint)")
        net, record = load_model(resolve_weights(generators[stain]))
        if record.arch != "cyclegan_generator":
            raise ConfigError(f"generators[{stain!r}]={generators[stain]!r}: arch {record.arch!r}, "
                              f"expected 'cyclegan_generator'")
        if gen_cfg is not None and record.config != gen_cfg:
            raise ConfigError(f"generators[{stain!r}]: config differs from the other generators (one is shared)")
        gen_cfg = record.config
        loaded[stain] = net
        digests[stain] = record.sha256
    return loaded, digests, gen_cfg


def build_model(config: G2CTrainConfig) -> tuple[G2C, G2CConfig, dict[str, str]]:
    """The G2C model of the variant, its generators initialised from the pretrained checkpoints."""
    loaded, digests, gen_cfg = load_generators(VARIANTS[config.variant][0], config.generators,
                                               variant=config.variant)
    arch = config.model_config_record(gen_cfg or GeneratorConfig(ngf=8, n_blocks=1))
    model = arch.build()
    for stain, net in loaded.items():
        model.generators[stain].load_state_dict(net.state_dict())
    return model, arch, digests


def load_crops(config: G2CTrainConfig, run_dir: Path, which: Literal["train", "test"]) -> GlomerulusCrops:
    """Read (or load the cached) crops of the training or held-out layouts.

    Training needs only the PAS input; the held-out crops also carry the paired stains (translation error).
    Phantom slides (``crop.source: slide``) are written once into ``<cache>/phantom-slides`` and reused.
    """
    first, n = config.train_seeds if which == "train" else config.test_seeds
    seeds = list(range(first, first + n))
    crop = config.crop if which == "test" else config.crop.model_copy(update={"stains": config.crop.stains[:1]})
    cache = Path(config.cache_dir) if config.cache_dir else run_dir
    path = cache / f"crops-{crop.digest()[:12]}-{first}-{n}.npz"
    if path.exists():
        with np.load(path) as z:
            return GlomerulusCrops(z["images"], z["classes"], z["seeds"], tuple(crop.stains), crop)
    crops = glomerulus_crops(crop, seeds=seeds, slide_dir=cache / "phantom-slides")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=crops.images, classes=crops.classes, seeds=crops.seeds)
    tmp.replace(path)
    return crops


@torch.no_grad()
def predict(model: G2C, pas: NDArray[np.uint8], *, device: torch.device, batch_size: int = 32) -> NDArray[np.float32]:
    """Softmax probabilities (N, num_classes) of PAS crops (N, H, W, 3) uint8."""
    model.eval()
    out = []
    for i in range(0, len(pas), batch_size):
        with autocast(device):
            logits = model(to_tensor(pas[i:i + batch_size]).to(device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def score(probs: NDArray[np.float32], crops: GlomerulusCrops, task: Task) -> dict[str, float]:
    """Balanced accuracy (+ AUC for binary tasks) of ``task``; a three-class model also gets the paper's tasks."""
    _, truth = crops.task(task)
    k = probs.shape[1]
    pred = probs.argmax(1)
    out = {"balanced_accuracy": balanced_accuracy(pred, truth, num_classes=k), "accuracy": float((pred == truth).mean())}
    out |= class_recalls(pred, truth, TASK_CLASSES[task])
    if k == 2:
        out["auc"] = roc_auc(probs[:, 1], truth)
    if task == "three_class":
        cls = crops.classes
        sclerotic = probs[:, 1] + probs[:, 2]
        s_pred, s_true = (sclerotic > probs[:, 0]).astype(np.int64), (cls > 0).astype(np.int64)
        out["s_vs_noa_balanced_accuracy"] = balanced_accuracy(s_pred, s_true, num_classes=2)
        out |= class_recalls(s_pred, s_true, TASK_CLASSES["s_vs_noa"], "s_vs_noa_")
        out["s_vs_noa_auc"] = roc_auc(sclerotic, s_true)
        keep = (cls > 0) & (sclerotic > probs[:, 0])  # correctly classified abnormal glomeruli
        g_pred, g_true = (probs[keep, 2] > probs[keep, 1]).astype(np.int64), (cls[keep] == 2).astype(np.int64)
        out["ss_vs_gs_balanced_accuracy"] = balanced_accuracy(g_pred, g_true, num_classes=2)
        out |= class_recalls(g_pred, g_true, TASK_CLASSES["ss_vs_gs"], "ss_vs_gs_")
        out["ss_vs_gs_n"] = float(keep.sum())
    return out


def train_g2c(config: G2CTrainConfig, *, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train one G2C variant; writes ``g2c.safetensors`` (arch ``g2c``) with its measured metrics to ``run_dir``."""
    run = RunState(run_dir)
    run.write_config(config.to_dict())
    seed_everything(config.seed)
    device = pick_device(config.device)
    train, test = load_crops(config, run.run_dir, "train"), load_crops(config, run.run_dir, "test")
    images, labels = train.task(config.task)
    x_all, y_all = to_tensor(images[:, 0]), torch.from_numpy(labels)

    model, arch, gen_digests = build_model(config)
    model.to(device)
    initial = {k: v.detach().clone() for k, v in model.generators.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    start = run.resume(models={"g2c": model}, optimizers={"sgd": optimizer}, schedulers={"lr": scheduler})
    gen = torch.Generator()
    t0 = time.perf_counter()
    for epoch in range(start, config.epochs):
        frozen = (not config.joint) or epoch < config.freeze_epochs
        model.freeze_generators(frozen)  # frozen params get no grad, so SGD leaves them (and their momentum) alone
        model.train()
        gen.manual_seed(config.seed * 1000 + epoch)  # per-epoch order and augmentation: identical after a resume
        order = torch.randperm(len(x_all), generator=gen)
        loss_sum, preds, truths = 0.0, [], []
        batches = range(0, len(order), config.batch_size)
        bar = tqdm(batches, desc=f"g2c {config.variant} {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False)
        for i in bar:
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = augment(x_all[idx], brightness=config.brightness, saturation=config.saturation, generator=gen)
            y = y_all[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(x.to(device))
            loss = focal_loss(logits.float(), y, gamma=config.focal_gamma)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            preds.append(logits.detach().argmax(1).cpu().numpy())
            truths.append(y.cpu().numpy())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        k = len(TASK_CLASSES[config.task])
        metrics = {"loss": loss_sum / len(order), "lr": lr, "generators_frozen": float(frozen),
                   "train_balanced_accuracy_augmented": balanced_accuracy(np.concatenate(preds),
                                                                          np.concatenate(truths), num_classes=k),
                   "elapsed_s": time.perf_counter() - t0}
        run.end_epoch(epoch, metrics, models={"g2c": model}, optimizers={"sgd": optimizer},
                      schedulers={"lr": scheduler})
    return _finish(config, run, model, arch, gen_digests, initial, train, test, device)


def _finish(config: G2CTrainConfig, run: RunState, model: G2C, arch: G2CConfig, gen_digests: dict[str, str],
            initial: dict[str, torch.Tensor], train: GlomerulusCrops, test: GlomerulusCrops,
            device: torch.device) -> dict[str, Any]:
    """Measure on the training and held-out crops, translation error of the (fine-tuned) generators, export."""
    tr = score(predict(model, train.task(config.task)[0][:, 0], device=device), train, config.task)
    te_images = test.task(config.task)[0]
    te = score(predict(model, te_images[:, 0], device=device), test, config.task)
    result: dict[str, Any] = {"variant": config.variant, "task": config.task, "joint": config.joint,
                              "n_train": len(train.task(config.task)[1]), "n_test": len(test.task(config.task)[1]),
                              "train": tr, "test": te,
                              "gap_balanced_accuracy": tr["balanced_accuracy"] - te["balanced_accuracy"]}
    moved = {k: float((v.to(initial[k]) - initial[k]).abs().max()) for k, v in model.generators.state_dict().items()
             if v.is_floating_point()}
    result["generators_max_change"] = max(moved.values(), default=0.0)
    translation = {}
    for stain, g in model.generators.items():
        s = test.stains.index(stain)
        translation[stain] = translation_error(g, test.images[:, 0], test.images[:, s], device=device)
    result["translation_after"] = translation
    result["elapsed_s"] = run.history[-1]["elapsed_s"] if run.history else 0.0
    classes = TASK_CLASSES[config.task]
    metadata = {"task": config.task, "classes": list(classes), "variant": config.variant, "joint": config.joint,
                "input": "PAS RGB in [0, 1], (B, 3, size, size)", "crop_size": config.crop.size,
                "crop_mpp": config.crop.mpp, "crop_margin": config.crop.margin,
                "test_balanced_accuracy": te["balanced_accuracy"], "train_balanced_accuracy": tr["balanced_accuracy"],
                "generator_sha256": gen_digests, "test": te}
    path = run.run_dir / "g2c.safetensors"
    model.cpu()
    result["sha256"] = save_model(model, path, arch="g2c", config=arch, metadata=metadata,
                                  training_config=config.to_dict())
    result["model"] = str(path)
    atomic_write_json(run.run_dir / "result.json", result)
    return result


__all__ = ["ClassifierWidths", "G2CTrainConfig", "VARIANTS", "augment", "balanced_accuracy", "build_model", "class_recalls",
           "Variant", "load_crops", "load_generators", "lr_at", "resolve_weights", "predict", "roc_auc", "score", "train_g2c"]
