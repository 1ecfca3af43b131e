"""Folders of labelled images (``images/`` + ``masks/``): the layout a lab uses to check the tool on its own slides.

A folder holds ``images/<name>.<png|jpg|tif>`` and ``masks/<name>.png`` (0 = background, anything else =
glomerulus; touching glomeruli should carry different values, else they count as one object). The resolution comes,
first match wins, from the caller (``mpp=``), from ``mpp.json`` (``{"mpp": 0.5}`` or ``{"<name>": 0.5, ...}``), or from
a ``manifest.json`` as ``aidpath-tiles`` ships it (``files[].mpp`` or ``source.mpp``). Optional per-image ``stain`` and
``group`` (slide or patient: cross-validation never splits a group) come from the same files; ``group`` defaults to
the image's name.

>>> read_labelled_folder("no/such/folder")
Traceback (most recent call last):
...
wsi_pipeline.errors.DataError: no/such/folder: not a labelled folder (need images/ and masks/)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image: where its pixels and mask are, its resolution, stain and group."""

    name: str
    image: Path
    mask: Path
    mpp: float
    stain: str | None = None
    group: str = ""

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 ``(H, W, 3)`` and instance labels ``(H, W)`` uint16 (0 = background)."""
        return read_rgb(self.image), read_instance_mask(self.mask, self.image)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (alpha composited on white, as glass)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "P"):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from exc


def read_instance_mask(path: Path, image: Path | None = None) -> np.ndarray:
    """A mask file as instance labels: distinct values are distinct objects, and each value's connected components
    are split into objects (a binary 0/255 mask becomes one object per component)."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "1") else im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask: {exc}") from exc
    if raw.ndim != 2:
        raise DataError(f"{path}: mask must be single-channel, got shape {raw.shape}")
    labels = np.zeros(raw.shape, np.uint16)
    n = 0
    for value in np.unique(raw):
        if value == 0:
            continue
        comp, k = ndimage.label(raw == value)
        labels[comp > 0] = comp[comp > 0] + n
        n += k
    if image is not None:
        with Image.open(image) as im:
            if im.size != (raw.shape[1], raw.shape[0]):
                raise DataError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but {image.name} is "
                                f"{im.size[0]}x{im.size[1]}")
    return labels


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON: {exc}") from exc


def _per_image_info(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-image entries and folder-wide defaults from ``mpp.json`` / ``manifest.json`` (if present)."""
    per: dict[str, dict[str, Any]] = {}
    folder_wide: dict[str, Any] = {}
    manifest = folder / "manifest.json"
    if manifest.exists():
        data = _json(manifest)
        src = data.get("source", {}) if isinstance(data, dict) else {}
        folder_wide.update({k: src[k] for k in ("mpp", "stain") if k in src})
        folder_wide.update({k: data[k] for k in ("mpp", "stain") if isinstance(data, dict) and k in data})
        for entry in data.get("files", []) if isinstance(data, dict) else []:
            name = Path(entry.get("image", entry.get("id", ""))).stem
            per[name] = {k: entry[k] for k in ("mpp", "stain", "group", "slide") if k in entry}
    mpp_file = folder / "mpp.json"
    if mpp_file.exists():
        data = _json(mpp_file)
        if isinstance(data, (int, float)):
            folder_wide["mpp"] = float(data)
        elif isinstance(data, dict):
            for k, v in data.items():
                if k in ("mpp", "stain"):
                    folder_wide[k] = v
                elif isinstance(v, (int, float)):
                    per.setdefault(Path(k).stem, {})["mpp"] = float(v)
    return per, folder_wide


def read_labelled_folder(folder: str | Path, *, mpp: float | None = None,
                         stain: str | None = None) -> list[LabelledImage]:
    """Every image of ``folder`` that has a mask, sorted by name; :class:`DataError` names what is missing."""
    root = Path(folder)
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DataError(f"{folder}: not a labelled folder (need images/ and masks/)")
    if mpp is not None and not (mpp > 0):
        raise DataError(f"{folder}: mpp={mpp} must be > 0")
    per, folder_wide = _per_image_info(root)
    mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem not in mask_by_stem:
            raise DataError(f"{path}: no mask {masks}/{path.stem}.png")
        info = {**folder_wide, **per.get(path.stem, {})}
        res = mpp if mpp is not None else info.get("mpp")
        if res is None:
            raise DataError(f"{path}: no resolution: give --mpp, or write {root}/mpp.json as {{\"mpp\": 0.5}}")
        out.append(LabelledImage(name=path.stem, image=path, mask=mask_by_stem[path.stem], mpp=float(res),
                                 stain=stain or info.get("stain"),
                                 group=str(info.get("group", info.get("slide", path.stem)))))
    if not out:
        raise DataError(f"{images}: no images")
    return out


def contiguous_groups(items: list[LabelledImage], n: int) -> dict[str, int]:
    """Fold index per image name: ``n`` runs of consecutive names (sorted), whole groups kept together.

    For tiles cut from few slides and numbered in scan order (``aidpath-tiles``: neighbouring ids are neighbouring
    tiles of one slide), consecutive runs keep a slide's tiles in one fold far better than a random split.
    """
    groups: list[str] = []
    for it in sorted(items, key=lambda i: i.name):
        if it.group not in groups:
            groups.append(it.group)
    size = {g: sum(1 for i in items if i.group == g) for g in groups}
    total, acc, fold_of_group = len(items), 0, {}
    for g in groups:
        fold_of_group[g] = min(n - 1, acc * n // total)
        acc += size[g]
    return {i.name: fold_of_group[i.group] for i in items}


__all__ = ["IMAGE_SUFFIXES", "LabelledImage", "contiguous_groups", "read_instance_mask", "read_labelled_folder",
           "read_rgb"]
