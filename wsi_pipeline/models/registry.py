"""Architectures by name + config, and checkpoints that rebuild their own network.

A checkpoint is a ``.safetensors`` file whose header metadata holds the *record*: architecture name, its config,
free-form metadata, the training config that produced it, and a SHA-256 over the tensors. Next to it,
``<file>.sha256`` (``sha256sum`` format) holds the hash of the whole file. Loading never unpickles: ``.safetensors``
is plain data, and legacy ``.pt``/``.pth`` files go through ``torch.load(weights_only=True)``, which refuses
arbitrary pickles. Anything wrong raises :class:`~wsi_pipeline.errors.WeightsError` naming the file.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "g.safetensors"
>>> net = define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})
>>> digest = save_model(net, path, arch="cyclegan_generator", config={"ngf": 4, "n_blocks": 1})
>>> again, record = load_model(path, expected_sha256=digest)
>>> record.arch, record.config.ngf
('cyclegan_generator', 4)
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write_bytes
from ..config import FrozenConfig
from ..errors import ConfigError, WeightsError
from .cyclegan import GeneratorConfig, PatchGANConfig
from .discriminators import MultiLevelDiscriminatorConfig, ShapeDiscriminatorConfig
from .g2c import G2CClassifierConfig, G2CConfig
from .sst import SSTDiscriminatorConfig, SSTGeneratorConfig
from .unet import UNetConfig

#: Architecture name -> config class; ``config.build()`` makes the network.
ARCHITECTURES: dict[str, type[FrozenConfig]] = {
    "cyclegan_generator": GeneratorConfig,
    "patchgan": PatchGANConfig,
    "g2c_classifier": G2CClassifierConfig,
    "g2c": G2CConfig,
    "unet_resnet34": UNetConfig,
    "multilevel_discriminator": MultiLevelDiscriminatorConfig,
    "shape_discriminator": ShapeDiscriminatorConfig,
    "sst_generator": SSTGeneratorConfig,
    "sst_discriminator": SSTDiscriminatorConfig,
}

RECORD_KEY = "wsi_pipeline.record"
FORMAT = "wsi-pipeline-model/1"


def parse_config(arch: str, config: Mapping[str, Any] | FrozenConfig | None = None) -> FrozenConfig:
    """Validate ``config`` for ``arch`` (``None`` = defaults); raises ``ConfigError`` naming the arch and field."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch={arch!r} unknown; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    if isinstance(config, cls):
        return config
    if isinstance(config, FrozenConfig):
        raise ConfigError(f"arch={arch!r} needs a {cls.__name__}, got {type(config).__name__}")
    return cls.from_dict(dict(config or {}), source=f"arch {arch!r}")


def define(arch: str, config: Mapping[str, Any] | FrozenConfig | None = None) -> nn.Module:
    """Build the network ``arch`` from its config (a mapping, a config object or ``None`` for defaults).

    >>> define("patchgan", {"ndf": 8})(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 1, 6, 6])
    """
    return parse_config(arch, config).build()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ModelRecord:
    """What a checkpoint says about itself."""

    path: str
    arch: str
    config: Any  # the arch's FrozenConfig subclass
    metadata: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] | None = None
    sha256: str = ""  # of the whole file


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(model: nn.Module, path: str | Path, *, arch: str, config: Mapping[str, Any] | FrozenConfig | None,
               metadata: Mapping[str, Any] | None = None, training_config: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` to ``path`` (``.safetensors``) with its record and a ``.sha256`` sidecar; returns the hash.

    The record is checked first: a network built from ``arch`` + ``config`` must have exactly the model's tensor
    names and shapes, so a checkpoint can always rebuild itself. Both files are written atomically.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path={str(path)!r}: checkpoints are written as .safetensors")
    cfg = parse_config(arch, config)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # shapes only, no memory
        reference = cfg.build().state_dict()  # type: ignore[attr-defined]
    _check_matches(state, reference, f"model vs arch={arch!r} record")
    record = {
        "format": FORMAT, "arch": arch, "config": cfg.to_dict(), "metadata": dict(metadata or {}),
        "training_config": dict(training_config) if training_config is not None else None,
        "tensors_sha256": tensors_digest(state), "wsi_pipeline": __version__, "torch": torch.__version__,
    }
    try:
        text = json.dumps(record, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"metadata/training_config must be JSON-serialisable: {exc}") from None
    data = safetensors.torch.save(state, metadata={RECORD_KEY: text})
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n".encode())
    return digest


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, computed once per process per file version (keyed by path, inode, size and
    modification time, so an edited or replaced file is hashed again)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        cached = _SHA_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


def read_record(path: str | Path) -> ModelRecord:
    """What a checkpoint says about itself (arch, validated config, metadata, file SHA-256), read from its
    ``.safetensors`` header only: no tensors loaded, no network built.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.safetensors"
    >>> _ = save_model(define("patchgan", {"ndf": 8}), path, arch="patchgan", config={"ndf": 8}, metadata={"mpp": 2.0})
    >>> record = read_record(path)
    >>> record.arch, record.config.ndf, record.metadata["mpp"], record.sha256 == file_sha256(path)
    ('patchgan', 8, 2.0, True)
    """
    path = Path(path)
    if path.suffix != ".safetensors":  # a legacy torch file has no separate header: load it (checked as always)
        return load_model(path)[1]
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights: {exc.strerror or exc}") from None
    except (struct.error, ValueError) as exc:
        raise WeightsError(f"{path}: not a valid safetensors file: {exc}") from None
    record = _record_of(path, header)
    return _model_record(path, record, file_sha256(path))


def load_model(path: str | Path, *, expected_sha256: str | None = None,
               map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelRecord]:
    """Rebuild the network recorded in ``path`` and load its weights (returned in eval mode).

    ``expected_sha256`` (e.g. from a weights card) is checked against the file; without it the ``.sha256`` sidecar
    is checked when present. The tensors' own digest in the record is always checked.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        digest = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights: {exc.strerror or exc}") from None
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise WeightsError(f"{path}: SHA-256 {digest} does not match the expected {expected_sha256}")
    sidecar = _sidecar(path)
    if expected_sha256 is None and sidecar.is_file():
        recorded = sidecar.read_text(encoding="utf-8").split()[:1]
        if recorded != [digest]:
            raise WeightsError(f"{path}: SHA-256 {digest} does not match {sidecar.name} ({recorded}): file tampered "
                               f"with or corrupt")
    if path.suffix == ".safetensors":
        state, record = _read_safetensors(path, data)
    elif path.suffix in (".pt", ".pth"):
        state, record = _read_torch(path, data)
    else:
        raise WeightsError(f"{path}: unsupported weights format {path.suffix!r} (use .safetensors)")

    info = _model_record(path, record, digest)
    cfg, arch = info.config, info.arch
    if "tensors_sha256" in record and tensors_digest(state) != record["tensors_sha256"]:
        raise WeightsError(f"{path}: tensor digest does not match the record: weights tampered with or corrupt")
    model: nn.Module = cfg.build()  # type: ignore[attr-defined]
    try:
        _check_matches(state, model.state_dict(), f"{path}: weights vs arch={arch!r}")
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    model.to(map_location).eval()
    return model, info


def _model_record(path: Path, record: Mapping[str, Any], digest: str) -> ModelRecord:
    arch = record.get("arch")
    try:
        cfg = parse_config(str(arch), record.get("config"))
    except ConfigError as exc:
        raise WeightsError(f"{path}: bad architecture record: {exc}") from None
    return ModelRecord(str(path), str(arch), cfg, dict(record.get("metadata") or {}), record.get("training_config"),
                       digest)


def _read_safetensors(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types; all mean "not a valid file"
        raise WeightsError(f"{path}: not a valid safetensors file: {exc}") from None
    return state, _record_of(path, header)


def _record_of(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture record in a safetensors header's metadata."""
    text = (header.get("__metadata__") or {}).get(RECORD_KEY)
    if text is None:
        raise WeightsError(f"{path}: no architecture record ({RECORD_KEY!r}) in the safetensors metadata")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: architecture record is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise WeightsError(f"{path}: architecture record is not a mapping")
    return record


def _read_torch(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Legacy ``{"record": {...}, "state_dict": {...}}`` checkpoints; the restricted unpickler refuses code."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path}: refused: not a plain-weights checkpoint (unsafe pickle or corrupt): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("record"), dict) and isinstance(obj.get("state_dict"), dict)):
        raise WeightsError(f"{path}: expected a dict with 'record' and 'state_dict' (a bare state dict cannot "
                           f"rebuild its architecture)")
    return obj["state_dict"], obj["record"]


def _check_matches(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(reference[k].shape)}"
             for k in sorted(set(state) & set(reference)) if state[k].shape != reference[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{what}: state dict mismatch; missing={missing[:5]} unexpected={unexpected[:5]} "
                         f"shapes={wrong[:5]}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


