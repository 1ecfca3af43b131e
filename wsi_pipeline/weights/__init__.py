"""Default weights shipped inside the package, each ``<name>.safetensors`` + ``.sha256`` sidecar + a card.

Nothing is downloaded at run time: these files are the pipeline's out-of-the-box models. Every access checks the
file against its SHA-256 sidecar, so a truncated or edited file fails loudly instead of segmenting badly.

>>> default_weights("segmenter").name
'segmenter.safetensors'
>>> model, record = load_default("segmenter")
>>> record.metadata["mpp"]
2.0
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from ..errors import WeightsError
from ..models.registry import ModelRecord, load_model

WEIGHTS_DIR = Path(__file__).resolve().parent

#: name -> what it is (the training recipe is in its card and in the weights' own record)
KNOWN: dict[str, str] = {
    "segmenter": "glomerulus segmenter (U-Net, ResNet-34 layout), PAS at 2.0 um/px",
    "generator-PAS-HE": "CycleGAN generator PAS -> H&E",
    "generator-PAS-MASSON": "CycleGAN generator PAS -> Masson's trichrome",
    "generator-PAS-PASM": "CycleGAN generator PAS -> PASM (Jones silver)",
    "generator-real-PAS-HE": "CycleGAN generator PAS -> H&E, learnt from real kidney stain patches",
    "generator-real-PAS-PASM": "CycleGAN generator PAS -> Jones silver (PASM role), learnt from real patches",
    "generator-real-PAS-MASSON": "CycleGAN generator PAS -> Sirius Red (MASSON role), learnt from real patches",
    "generator-real-PAS-CD68": "CycleGAN generator PAS -> CD68 IHC, learnt from real kidney stain patches",
    "g2c": "G2C glomerulus classifier (trained on real labelled glomeruli; see its card)",
}


def _check_name(name: str) -> None:
    if name not in KNOWN:
        raise WeightsError(f"name={name!r}: no such shipped weights; known: {', '.join(KNOWN)}")


def default_weights(name: str, *, directory: str | Path | None = None) -> Path:
    """Path of shipped weights ``name``, verified against ``<file>.sha256``; ``WeightsError`` if missing/tampered.

    ``directory`` replaces the package's own folder (tests, or a site-wide copy).
    """
    _check_name(name)
    folder = Path(directory) if directory is not None else WEIGHTS_DIR
    path = folder / f"{name}.safetensors"
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise WeightsError(f"{path}: shipped weights {name!r} are missing ({KNOWN[name]})")
    if not sidecar.is_file():
        raise WeightsError(f"{sidecar}: checksum sidecar of {name!r} is missing; refusing unverified weights")
    expected = sidecar.read_text(encoding="utf-8").split()[:1]
    digest = _sha256(path)
    if expected != [digest]:
        raise WeightsError(f"{path}: SHA-256 {digest} does not match {sidecar.name} ({expected}): file tampered "
                           f"with or corrupt")
    return path


def load_default(name: str, *, directory: str | Path | None = None,
                 map_location: str = "cpu") -> tuple[nn.Module, ModelRecord]:
    """Rebuild shipped network ``name`` through the registry (checksum verified); returns ``(model, record)``."""
    path = default_weights(name, directory=directory)
    expected = path.with_name(path.name + ".sha256").read_text(encoding="utf-8").split()[0]
    return load_model(path, expected_sha256=expected, map_location=map_location)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["KNOWN", "WEIGHTS_DIR", "default_weights", "load_default"]
