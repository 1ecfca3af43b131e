"""QuPath GeoJSON: write glomerulus annotations exactly as DESIGN.md's contract says, and read what QuPath exports.

Writing (rules from QuPath's ``QuPathTypeAdapters``/``GsonTools``): a ``FeatureCollection``; every feature has a UUID
``id``; a ``Polygon``/``MultiPolygon`` valid after snapping to 0.01 px; ``properties.objectType``; a classification
is always ``{"name", "color": [r, g, b]}`` (QuPath fails to import one without colour); ``measurements`` is a flat
``{name: number}`` map; ``metadata`` holds strings. Coordinates are level-0 pixels of the image *as QuPath shows it*:
for slides with ``openslide.bounds-x/y`` pass ``bounds_offset`` and it is subtracted (and recorded in metadata).

Reading accepts QuPath's forms: a FeatureCollection, a bare array of features, a single feature (or a bare
Polygon/MultiPolygon geometry); legacy ``colorRGB`` ints, ``names`` lists and list-style measurements; rectangles and
ellipses arrive as polygons. Original properties are kept so classify mode writes back everything it did not change.

Example::

    >>> a = Annotation(shapely.box(0, 0, 10, 10), classification="Glomerulus")
    >>> write_geojson(tmp / "g.geojson", [a], mpp=(0.5, 0.5))  # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import json
import math
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from ..atomic import atomic_write_text
from ..errors import AnnotationError
from .polygons import GRID, snap_valid

RGB = tuple[int, int, int]

#: The QuPath class names of the glomerulus classes (G2C codes ``noa`` / ``ss`` / ``gs``): the one set the job's
#: GeoJSON, the phantom's truth files and the docs use
CLASS_NAMES: dict[str, str] = {
    "noa": "Glomerulus: Non-sclerotic",
    "ss": "Glomerulus: Segmental sclerosis",
    "gs": "Glomerulus: Global sclerosis",
}
GLOMERULUS = "Glomerulus"  # a detected glomerulus not classified (``--task segment``)
TISSUE = "Tissue"  # the tissue outline the job found (its own annotation, not a glomerulus)

#: Colours of the classes this pipeline writes; other names get a stable colour from their hash.
CLASS_COLORS: dict[str, RGB] = {
    GLOMERULUS: (0, 160, 80),
    CLASS_NAMES["noa"]: (40, 170, 60),
    CLASS_NAMES["ss"]: (240, 160, 20),
    CLASS_NAMES["gs"]: (200, 40, 40),
    TISSUE: (120, 120, 200),
}


def class_code(name: str | None) -> str | None:
    """The class code of a QuPath class name (``"Glomerulus: Global sclerosis"`` -> ``"gs"``); the code itself
    after ``"Glomerulus: "`` is accepted too (``"Glomerulus: gs"``, truth files before the names were unified).

    >>> class_code("Glomerulus: Segmental sclerosis"), class_code("Glomerulus: noa"), class_code("Tissue")
    ('ss', 'noa', None)
    """
    for code, full in CLASS_NAMES.items():
        if name == full or name == f"{GLOMERULUS}: {code}":
            return code
    return None


def is_glomerulus(classification: str | None) -> bool:
    """Whether an annotation of this class is a glomerulus (anything but the tissue outline)."""
    return classification != TISSUE


def class_color(name: str) -> RGB:
    """The colour of class ``name``: from :data:`CLASS_COLORS`, else a stable, saturated colour from its CRC."""
    if name in CLASS_COLORS:
        return CLASS_COLORS[name]
    h = zlib.crc32(name.encode()) / 2**32
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.85)
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclass(frozen=True)
class Annotation:
    """One QuPath object: geometry in QuPath image pixels, class, measurements, metadata, original properties."""

    geometry: BaseGeometry
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    classification: str | None = None
    color: RGB | None = None
    measurements: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    object_type: str = "annotation"
    properties: Mapping[str, Any] = field(default_factory=dict)  # as read; written back under the fields above

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, (Polygon, MultiPolygon)):
            raise AnnotationError(f"annotation {self.id}: geometry must be a Polygon or MultiPolygon, "
                                  f"got {self.geometry.geom_type}")
        object.__setattr__(self, "measurements", dict(self.measurements))
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in self.metadata.items()})
        object.__setattr__(self, "properties", dict(self.properties))
        if self.color is not None:
            object.__setattr__(self, "color", _parse_rgb(self.color, where=f"annotation {self.id}"))

    def classified(
        self,
        name: str,
        *,
        color: RGB | None = None,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Annotation:
        """A copy with class ``name`` and extra measurements/metadata merged in; id and other properties kept."""
        return replace(
            self,
            classification=name,
            color=color,
            measurements={**self.measurements, **(measurements or {})},
            metadata={**self.metadata, **(metadata or {})},
        )


# -- writing -----------------------------------------------------------------------------------------------------
def _parse_rgb(value: Any, *, where: str) -> RGB:
    if isinstance(value, bool):
        raise AnnotationError(f"{where}: colour {value!r} is not [r, g, b]")
    if isinstance(value, int):  # QuPath packed (A)RGB int, possibly negative
        return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    if (
        isinstance(value, (list, tuple))
        and len(value) in (3, 4)
        and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 255 for c in value[:3])
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise AnnotationError(f"{where}: colour {value!r} is not [r, g, b] with 0..255 components")


def _coords(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], float | int):
            return [round(float(v), 2) + 0.0 for v in obj]  # + 0.0 turns -0.0 into 0.0
        return [_coords(o) for o in obj]
    return obj


def _geometry_json(geom: BaseGeometry, *, offset: tuple[float, float], where: str) -> dict[str, Any]:
    if offset != (0, 0):
        geom = shapely.affinity.translate(geom, -offset[0], -offset[1])
    parts = snap_valid(geom, grid=GRID)
    if not parts:
        raise AnnotationError(f"{where}: geometry is empty or collapses when snapped to a {GRID} px grid")
    snapped = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    # canonical vertex order (stable output across round trips), then RFC 7946 winding (QuPath ignores it)
    snapped = shapely.orient_polygons(shapely.normalize(snapped))
    if not snapped.is_valid:  # cannot happen after snap_valid, but the contract is worth a hard check
        raise AnnotationError(f"{where}: geometry invalid after snapping: {shapely.is_valid_reason(snapped)}")
    gj = mapping(snapped)
    return {"type": gj["type"], "coordinates": _coords(gj["coordinates"])}


def _clean_measurements(values: Mapping[str, Any]) -> dict[str, float]:
    # non-finite values are left out: JSON has no NaN and QuPath shows a missing measurement as NaN anyway
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v) if isinstance(v, float) else int(v)
    return out


def to_feature(
    annotation: Annotation,
    *,
    bounds_offset: tuple[int, int] | None = None,
    mpp: tuple[float, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The GeoJSON feature of ``annotation`` (see the module docstring for the rules)."""
    where = f"annotation {annotation.id}"
    try:
        uid = str(uuid.UUID(annotation.id))
    except (ValueError, TypeError, AttributeError):
        raise AnnotationError(f"{where}: id must be a UUID (QuPath replaces anything else)") from None
    offset = (0, 0) if bounds_offset is None else (bounds_offset[0], bounds_offset[1])
    geometry = _geometry_json(annotation.geometry, offset=offset, where=where)
    # "type"/"object_type" are QuPath aliases of objectType: drop them so no class name can hide there
    props: dict[str, Any] = {
        k: v for k, v in annotation.properties.items() if k not in ("classification", "type", "object_type")
    }
    props["objectType"] = annotation.object_type
    if annotation.classification is not None:
        rgb = annotation.color if annotation.color is not None else class_color(annotation.classification)
        props["classification"] = {"name": annotation.classification, "color": list(rgb)}
    measurements = _clean_measurements(annotation.measurements)  # read from the file's properties, then updated
    if mpp is not None:
        measurements["area_um2"] = round(shape(geometry).area * mpp[0] * mpp[1], 4)
    if measurements:
        props["measurements"] = measurements
    else:
        props.pop("measurements", None)
    meta = {**annotation.metadata, **(metadata or {})}
    if bounds_offset is not None and tuple(bounds_offset) != (0, 0):
        meta["coordinates"] = (f"QuPath image pixels = openslide level-0 minus bounds "
                               f"(x={bounds_offset[0]}, y={bounds_offset[1]})")
    if meta:
        props["metadata"] = {str(k): str(v) for k, v in meta.items()}
    return {"type": "Feature", "id": uid, "geometry": geometry, "properties": props}


Feature = Mapping[str, Any]  # a GeoJSON feature kept verbatim (a pathologist's points and lines)


def write_geojson(
    path: str | Path,
    annotations: Iterable[Annotation | Feature],
    *,
    bounds_offset: tuple[int, int] | None = None,
    mpp: tuple[float, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a QuPath FeatureCollection atomically (temp file + ``os.replace``); returns ``path``.

    ``mpp`` (level-0 um/px) adds ``area_um2``; ``metadata`` is merged into every annotation's metadata. Items that
    are plain features (from :func:`read_features`: points, lines) are written back as read, so classify mode returns
    the whole file with only the areas changed.
    """
    path = Path(path)
    features = [to_feature(a, bounds_offset=bounds_offset, mpp=mpp, metadata=metadata) if isinstance(a, Annotation)
                else dict(a) for a in annotations]
    ids = [f.get("id") for f in features if f.get("id") is not None]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{path}: duplicate feature ids")
    text = json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False, separators=(",", ":"))
    atomic_write_text(path, text)
    return path


def as_written(annotations: Iterable[Annotation]) -> list[Annotation]:
    """``annotations`` exactly as :func:`read_geojson` returns them from a file :func:`write_geojson` wrote
    (canonical, snapped geometry; properties in file order), without the file: a stage hands its result on in
    memory, and a run resumed from the file sees the same objects, so both write the same bytes."""
    return parse_geojson([to_feature(a) for a in annotations], source="<annotations>")


def qupath_problems(data: Any) -> list[str]:
    """What in a written FeatureCollection QuPath would replace, reject or mis-read; empty when it conforms.

    Checks the contract :func:`write_geojson` keeps: UUID ids, ``objectType``, a classification with a colour, a
    non-empty Polygon/MultiPolygon that is valid and unchanged by snapping to the 0.01 px grid, a flat numeric
    ``measurements`` map, string ``metadata``.

    >>> qupath_problems({"type": "FeatureCollection", "features": [{"type": "Feature", "id": "a"}]})[0]
    "feature 0: id 'a' is not a UUID"
    """
    if not isinstance(data, Mapping) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        return ["not a FeatureCollection with a 'features' array"]
    problems: list[str] = []
    for i, feat in enumerate(data["features"]):
        where = f"feature {i}"
        try:
            uuid.UUID(str(feat.get("id")))
        except ValueError:
            problems.append(f"{where}: id {feat.get('id')!r} is not a UUID")
        props = feat.get("properties") or {}
        if props.get("objectType") not in ("annotation", "detection", "tile", "cell"):
            problems.append(f"{where}: objectType {props.get('objectType')!r}")
        cls = props.get("classification")
        if cls is not None and not (isinstance(cls, Mapping) and isinstance(cls.get("name"), str)
                                    and isinstance(cls.get("color"), list) and len(cls["color"]) == 3
                                    and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])):
            problems.append(f"{where}: classification {cls!r} lacks a name or an [r, g, b] colour")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (props.get("measurements") or {}).values()):
            problems.append(f"{where}: measurements are not all finite numbers")
        if not all(isinstance(v, str) for v in (props.get("metadata") or {}).values()):
            problems.append(f"{where}: metadata values are not all strings")
        gj = feat.get("geometry") or {}
        if gj.get("type") not in ("Polygon", "MultiPolygon"):
            problems.append(f"{where}: geometry type {gj.get('type')!r}")
            continue
        geom = shape(gj)
        if geom.is_empty or not geom.is_valid:
            problems.append(f"{where}: geometry empty or invalid")
        elif not shapely.equals_exact(shapely.normalize(shapely.set_precision(geom, GRID)), shapely.normalize(geom),
                                      tolerance=1e-9):
            problems.append(f"{where}: coordinates are not on the {GRID} px grid (QuPath would reduce them)")
    return problems


# -- reading -----------------------------------------------------------------------------------------------------
def _measurement_map(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):  # QuPath <= 0.3: [{"name": ..., "value": ...}, ...]
        return {m["name"]: m.get("value") for m in value if isinstance(m, Mapping) and "name" in m}
    return {}


def _string_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _classification(value: Any, *, where: str) -> tuple[str | None, RGB | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, Mapping):
        raise AnnotationError(f"{where}: classification must be an object, got {type(value).__name__}")
    name = value.get("name")
    if name is None and isinstance(value.get("names"), list):
        name = ": ".join(str(n) for n in value["names"])
    if not isinstance(name, str):
        raise AnnotationError(f"{where}: classification has no name")
    raw = value.get("color", value.get("colorRGB"))
    return name, None if raw is None else _parse_rgb(raw, where=where)


def _feature_list(data: Any, *, source: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if not isinstance(data, Mapping):
        raise AnnotationError(f"{source}: expected a FeatureCollection, a feature array or a feature, "
                              f"got {type(data).__name__}")
    kind = data.get("type")
    if "features" in data:
        if not isinstance(data["features"], list):
            raise AnnotationError(f"{source}: 'features' must be an array")
        return data["features"]
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise AnnotationError(f"{source}: expected a FeatureCollection, a feature array or a feature, got type={kind!r}")


def _parse_feature(feat: Any, *, where: str, skip_unsupported: bool) -> Annotation | None:
    if not isinstance(feat, Mapping):
        raise AnnotationError(f"{where}: a feature must be an object, got {type(feat).__name__}")
    gj = feat.get("geometry")
    if not isinstance(gj, Mapping) or "type" not in gj:
        raise AnnotationError(f"{where}: missing or malformed geometry")
    if gj["type"] not in ("Polygon", "MultiPolygon"):
        if skip_unsupported:
            return None
        raise AnnotationError(f"{where}: geometry type {gj['type']!r} is not an area (Polygon/MultiPolygon)")
    try:
        geom = shape(gj)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise AnnotationError(f"{where}: malformed {gj['type']} coordinates: {exc}") from None
    if not geom.is_valid:  # hand-drawn shapes can self-intersect; QuPath itself repairs them the same way
        parts = snap_valid(geom)
        geom = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if geom.is_empty:
        raise AnnotationError(f"{where}: empty geometry")
    props = feat.get("properties") or {}
    if not isinstance(props, Mapping):
        raise AnnotationError(f"{where}: properties must be an object")
    name, rgb = _classification(props.get("classification"), where=where)
    meta = _string_map(props.get("metadata"))
    raw_id = feat.get("id")
    try:
        uid = str(uuid.UUID(str(raw_id))) if raw_id is not None else str(uuid.uuid4())
    except ValueError:  # QuPath would replace a non-UUID id too; keep the old one for traceability
        uid = str(uuid.uuid4())
        meta = {**meta, "original_id": str(raw_id)}
    object_type = props.get("objectType", props.get("object_type", "annotation"))
    measurements = _clean_measurements(_measurement_map(props.get("measurements")))
    return Annotation(geom, id=uid, classification=name, color=rgb, measurements=measurements, metadata=meta,
                      object_type=str(object_type), properties=dict(props))


def parse_geojson(
    data: Any, *, source: str = "<geojson>", bounds_offset: tuple[int, int] | None = None,
    skip_unsupported: bool = False,
) -> list[Annotation]:
    """Annotations from decoded GeoJSON ``data`` (any of QuPath's forms); ``bounds_offset`` is added back."""
    out = []
    for i, feat in enumerate(_feature_list(data, source=source)):
        a = _parse_feature(feat, where=f"{source}: feature {i}", skip_unsupported=skip_unsupported)
        if a is None:
            continue
        if bounds_offset is not None:
            a = replace(a, geometry=shapely.affinity.translate(a.geometry, bounds_offset[0], bounds_offset[1]))
        out.append(a)
    return out


def read_geojson(
    path: str | Path, *, bounds_offset: tuple[int, int] | None = None, skip_unsupported: bool = False
) -> list[Annotation]:
    """Read QuPath GeoJSON; errors name the file and the reason. ``skip_unsupported`` drops points and lines."""
    return parse_geojson(_load(Path(path)), source=str(path), bounds_offset=bounds_offset,
                         skip_unsupported=skip_unsupported)


def read_features(path: str | Path, *, bounds_offset: tuple[int, int] | None = None) -> list[Annotation | Feature]:
    """Every feature of a QuPath GeoJSON file in order: areas as annotations (``bounds_offset`` added back), the
    others (points, lines) as the features they are, for :func:`write_geojson` to pass through unchanged."""
    source = str(path)
    out: list[Annotation | Feature] = []
    for i, feat in enumerate(_feature_list(_load(Path(path)), source=source)):
        a = _parse_feature(feat, where=f"{source}: feature {i}", skip_unsupported=True)
        if a is None:
            out.append(feat)
        elif bounds_offset is not None:
            out.append(replace(a, geometry=shapely.affinity.translate(a.geometry, bounds_offset[0], bounds_offset[1])))
        else:
            out.append(a)
    return out


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return data


def annotations_from_polygons(
    polygons: Sequence[BaseGeometry],
    *,
    classes: Sequence[str | None] | None = None,
    measurements: Sequence[Mapping[str, float]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Annotation]:
    """New annotations (fresh UUIDs) for ``polygons`` with optional per-polygon classes and measurements."""
    n = len(polygons)
    for name, seq in (("classes", classes), ("measurements", measurements)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name}: {len(seq)} entries for {n} polygons")
    return [
        Annotation(
            p,
            classification=None if classes is None else classes[i],
            measurements={} if measurements is None else measurements[i],
            metadata=metadata or {},
        )
        for i, p in enumerate(polygons)
    ]
