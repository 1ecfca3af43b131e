"""Weights: the defaults shipped inside the package, references to them or to any checkpoint, and their loaders.

Nothing is downloaded at run time: ``<name>.safetensors`` (+ ``.sha256`` sidecar + a card) in this folder are the
pipeline's out-of-the-box models. Every access checks a shipped file against its sidecar, so a truncated or edited
file fails loudly instead of segmenting badly. A file is hashed once per process (:func:`file_sha256`); its record
(architecture, config, metadata: MPP, window, classes) is read from the header without building the network
(:func:`checked_record`); :func:`load_checked` builds it.

>>> default_weights("segmenter").name
'segmenter.safetensors'
>>> model, record = load_default("segmenter")
>>> record.metadata["mpp"]
2.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import WeightsError
from ..models.registry import ModelRecord, file_sha256, load_model, read_record

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
    digest = file_sha256(path)
    if expected != [digest]:
        raise WeightsError(f"{path}: SHA-256 {digest} does not match {sidecar.name} ({expected}): file tampered "
                           f"with or corrupt")
    return path


def load_default(name: str, *, directory: str | Path | None = None,
                 map_location: str = "cpu") -> tuple[nn.Module, ModelRecord]:
    """Rebuild shipped network ``name`` through the registry (checksum verified); returns ``(model, record)``."""
    path = default_weights(name, directory=directory)
    return load_model(path, expected_sha256=file_sha256(path), map_location=map_location)


@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights: the file, its SHA-256 and where the reference came from (shipped name or path)."""

    path: Path
    sha256: str
    shipped: bool

    @property
    def label(self) -> str:
        return f"{self.path.name} sha256:{self.sha256[:16]}" + (" (shipped)" if self.shipped else "")


def resolve_weights(ref: str, *, base_dir: str | Path | None = None) -> WeightsRef:
    """A shipped weights name (checked against its sidecar) or a checkpoint path (relative: against ``base_dir``
    when it exists there); ``WeightsError`` names the file."""
    if ref in KNOWN:
        path = default_weights(ref)  # raises WeightsError when missing or tampered with
        return WeightsRef(path, file_sha256(path), True)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (from reference {ref!r})")
    return WeightsRef(path, file_sha256(path), False)


def _check_arch(ref: WeightsRef, record: ModelRecord, arch: Sequence[str]) -> ModelRecord:
    if record.arch not in arch:
        raise WeightsError(f"{ref.path}: arch {record.arch!r}, expected {' or '.join(arch)}")
    if record.sha256 != ref.sha256:
        raise WeightsError(f"{ref.path}: SHA-256 {record.sha256} does not match the expected {ref.sha256}")
    return record


def checked_record(ref: WeightsRef, *, arch: Sequence[str]) -> ModelRecord:
    """``ref``'s record (header only: nothing built), requiring one of the architectures ``arch``."""
    return _check_arch(ref, read_record(ref.path), arch)


def load_checked(ref: WeightsRef, *, arch: Sequence[str], map_location: str = "cpu") -> tuple[nn.Module, ModelRecord]:
    """Build ``ref``'s network through the registry (checksum verified), requiring one of the architectures ``arch``."""
    model, record = load_model(ref.path, expected_sha256=ref.sha256, map_location=map_location)
    return model, _check_arch(ref, record, arch)


__all__ = ["KNOWN", "WEIGHTS_DIR", "WeightsRef", "checked_record", "default_weights", "file_sha256", "load_checked",
           "load_default", "resolve_weights"]
