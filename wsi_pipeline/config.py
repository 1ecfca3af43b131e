"""Frozen, validated configuration objects loaded from YAML.

Each job or stage defines a ``FrozenConfig`` subclass; :func:`load_config` validates a YAML file against it and
raises :class:`~wsi_pipeline.errors.ConfigError` naming the file and the offending field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

C = TypeVar("C", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Base class: immutable, unknown keys rejected, JSON round-trippable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "<dict>") -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: invalid {cls.__name__}: {_describe(exc)}") from None

    def digest(self) -> str:
        """Stable SHA-256 of the settings (:func:`digest_of` their JSON form)."""
        return digest_of(self.to_dict())


def digest_of(*parts: Any) -> str:
    """The one settings digest: SHA-256 of the JSON form of ``parts`` (keys sorted; paths and other objects as
    ``str``) and the pipeline version, so a new release recomputes everything it caches.

    >>> digest_of({"a": 1}, "x") == digest_of({"a": 1}, "x") != digest_of({"a": 2}, "x")
    True
    """
    from . import __version__

    text = json.dumps([__version__, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], *, source: str) -> dict[str, Any]:
    """``["real.fold=2", "epochs=3"]`` applied to a nested mapping (values parsed as YAML); a copy.

    >>> apply_overrides({"a": {"b": 1}}, ["a.b=2", "c=[1, 2]"], source="cli")
    {'a': {'b': 2}, 'c': [1, 2]}
    """
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} must look like key.sub=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {item!r}: value is not valid YAML: {exc}") from None
    return out


def load_config(path: str | Path, cls: type[C], *, section: str | None = None,
                overrides: Sequence[str] = ()) -> C:
    """Read ``path`` (YAML) and validate it as ``cls``; ``section`` picks one top-level key; ``overrides``
    (``key.sub=value``) change single settings before validation."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: missing section {section!r}")
        data = data[section]
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return cls.from_dict(data, source=str(path))
