"""QuPath GeoJSON: the DESIGN.md contract on write, QuPath's accepted forms on read, errors naming the file."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely

from wsi_pipeline.annotations import (
    Annotation,
    annotations_from_polygons,
    class_color,
    mask_to_polygons,
    qupath_problems,
    read_geojson,
    write_geojson,
)
from wsi_pipeline.errors import AnnotationError

RING = shapely.Polygon(
    [(10.123, 20.456), (110.0, 20.0), (110.0, 120.0), (10.0, 120.0)],
    holes=[[(40.0, 50.0), (60.0, 50.0), (60.0, 70.0), (40.0, 70.0)]],
)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_written_file_follows_the_contract(tmp_path: Path) -> None:
    polys = [RING, shapely.box(200, 200, 300.004, 260)]
    anns = annotations_from_polygons(
        polys,
        classes=["Glomerulus: Global sclerosis", None],
        measurements=[{"p_gs": 0.91, "p_noa": 0.03, "seg_confidence": 0.8}, {"seg_confidence": float("nan")}],
        metadata={"pipeline": "wsi-pipeline 0.1.0"},
    )
    out = write_geojson(tmp_path / "sub" / "g.geojson", anns, mpp=(0.25, 0.5), metadata={"virtual_stains": "HE,PASM"})
    data = load(out)
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file
    f0, f1 = data["features"]
    for f in (f0, f1):
        assert f["type"] == "Feature" and str(uuid.UUID(f["id"])) == f["id"]
        assert f["properties"]["objectType"] == "annotation" and "type" not in f["properties"]
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and shapely.set_precision(geom, 0.01).equals(geom)
        assert f["properties"]["metadata"] == {"pipeline": "wsi-pipeline 0.1.0", "virtual_stains": "HE,PASM"}
        assert all(isinstance(v, (int, float)) for v in f["properties"]["measurements"].values())
    assert f0["properties"]["classification"] == {"name": "Glomerulus: Global sclerosis", "color": [200, 40, 40]}
    assert "classification" not in f1["properties"]
    assert f0["geometry"]["type"] == "Polygon" and len(f0["geometry"]["coordinates"]) == 2  # hole kept
    assert f0["geometry"]["coordinates"][0][0] in ([10.12, 20.46], [110.0, 20.0], [110.0, 120.0], [10.0, 120.0])
    m0 = f0["properties"]["measurements"]
    assert m0["area_um2"] == pytest.approx(shapely.geometry.shape(f0["geometry"]).area * 0.125, rel=1e-6)
    assert m0["p_gs"] == 0.91
    assert "seg_confidence" not in f1["properties"]["measurements"]  # NaN dropped: JSON has no NaN


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    a = Annotation(RING, classification="Glomerulus", color=(1, 2, 3), measurements={"x": 1.5}, metadata={"k": "v"})
    path = write_geojson(tmp_path / "a.geojson", [a])
    (b,) = read_geojson(path)
    assert b.id == a.id and b.classification == "Glomerulus" and b.color == (1, 2, 3)
    assert b.measurements == {"x": 1.5} and b.metadata == {"k": "v"} and b.object_type == "annotation"
    assert b.geometry.equals(shapely.set_precision(RING, 0.01))
    path2 = write_geojson(tmp_path / "b.geojson", [b])
    assert load(path2) == load(path)  # a second round trip is byte-for-byte stable in content


def test_bounds_offset_subtracted_recorded_and_restored(tmp_path: Path) -> None:
    a = Annotation(shapely.box(1000, 2000, 1100, 2100))
    path = write_geojson(tmp_path / "b.geojson", [a], bounds_offset=(300, 400))
    f = load(path)["features"][0]
    assert shapely.geometry.shape(f["geometry"]).bounds == (700, 1600, 800, 1700)
    assert "x=300, y=400" in f["properties"]["metadata"]["coordinates"]
    (back,) = read_geojson(path, bounds_offset=(300, 400))
    assert back.geometry.equals(a.geometry)


def test_snapping_keeps_near_degenerate_shapes_valid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((60, 80)) < 0.5
    polys = mask_to_polygons(mask, origin=(0.003, 0.004), scale=(1.0049, 1.0049), simplify_tol=0)
    sliver = shapely.Polygon([(0, 0), (10, 0.004), (20, 0), (10, 5)])  # a spike thinner than the grid
    path = write_geojson(tmp_path / "n.geojson", annotations_from_polygons([*polys, sliver]))
    for f in load(path)["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert g.is_valid and shapely.set_precision(g, 0.01).is_valid
    assert qupath_problems(load(path)) == []


def test_qupath_conformance_check_names_each_breach(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "g.geojson", annotations_from_polygons(
        [RING, shapely.box(0, 0, 5, 5), shapely.box(9, 9, 19, 19)], classes=["Glomerulus: Global sclerosis"] * 3))
    data = load(path)
    assert qupath_problems(data) == []
    f0, f1, f2 = data["features"]
    f0["id"] = "glom-1"
    del f1["properties"]["classification"]["color"]
    f2["geometry"]["coordinates"][0][1][0] += 0.004  # off the 0.01 grid
    problems = qupath_problems(data)
    assert len(problems) == 3
    assert problems[0].startswith("feature 0: id 'glom-1'") and problems[1].startswith("feature 1: classification")
    assert "0.01 px grid" in problems[2]
    assert qupath_problems([f0]) == ["not a FeatureCollection with a 'features' array"]


def test_degenerate_geometry_and_bad_ids_raise(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="collapses"):
        write_geojson(tmp_path / "x.geojson", [Annotation(shapely.box(0, 0, 0.001, 0.001))])
    with pytest.raises(AnnotationError, match="UUID"):
        write_geojson(tmp_path / "x.geojson", [Annotation(shapely.box(0, 0, 5, 5), id="glom-1")])
    a = Annotation(shapely.box(0, 0, 5, 5))
    with pytest.raises(AnnotationError, match="duplicate"):
        write_geojson(tmp_path / "x.geojson", [a, a])
    with pytest.raises(AnnotationError, match="Polygon"):
        Annotation(shapely.Point(0, 0))  # type: ignore[arg-type]
    assert not (tmp_path / "x.geojson").exists()


QUPATH_FEATURE = {
    "type": "Feature",
    "id": "0b9f7c1e-4a2d-4c8e-9f3a-2d6b1e7a5c44",
    "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [60, 10], [60, 40], [10, 40], [10, 10]]]},
    "properties": {"objectType": "annotation", "isLocked": True, "name": "box 1", "color": [255, 0, 0]},
}


@pytest.mark.parametrize("form", ["collection", "array", "single", "bare-geometry"])
def test_reads_each_qupath_form(tmp_path: Path, form: str) -> None:
    data = {
        "collection": {"type": "FeatureCollection", "features": [QUPATH_FEATURE]},
        "array": [QUPATH_FEATURE],
        "single": QUPATH_FEATURE,
        "bare-geometry": QUPATH_FEATURE["geometry"],
    }[form]
    path = tmp_path / "in.geojson"
    path.write_text(json.dumps(data))
    (a,) = read_geojson(path)
    assert a.geometry.equals(shapely.box(10, 10, 60, 40))  # a QuPath rectangle is a 5-point polygon
    if form != "bare-geometry":
        assert a.id == QUPATH_FEATURE["id"] and a.properties["isLocked"] is True
    assert a.classification is None


def test_reads_legacy_and_multipolygon_forms(tmp_path: Path) -> None:
    feats = [
        {  # QuPath 0.2: packed colorRGB, measurements as a list, no id
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [
                [[[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]], [[[10, 0], [15, 0], [15, 5], [10, 5], [10, 0]]]]},
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016},
                           "measurements": [{"name": "Area", "value": 50.0}]},
        },
        {  # derived class as names, a non-UUID id, a bow-tie drawn by hand, a point to skip
            "type": "Feature", "id": "abc",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]},
            "properties": {"classification": {"names": ["Glomerulus", "Sclerotic"], "color": [1, 2, 3]}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
    ]
    path = tmp_path / "legacy.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    with pytest.raises(AnnotationError, match=r"feature 2: geometry type 'Point'"):
        read_geojson(path)
    a, b = read_geojson(path, skip_unsupported=True)
    assert a.geometry.geom_type == "MultiPolygon" and a.classification == "Tumor" and a.color == (200, 0, 0)
    assert a.measurements == {"Area": 50.0}
    uuid.UUID(a.id)
    assert b.classification == "Glomerulus: Sclerotic" and b.color == (1, 2, 3)
    assert b.geometry.is_valid and b.geometry.area == pytest.approx(50.0) and b.metadata["original_id"] == "abc"


def test_classify_mode_updates_and_keeps_other_properties(tmp_path: Path) -> None:
    src = tmp_path / "pathologist.geojson"
    feat = dict(QUPATH_FEATURE, properties={**QUPATH_FEATURE["properties"], "measurements": {"Old": 3.0},
                                            "metadata": {"drawn_by": "dr x"}, "type": "Glomerulus"})
    src.write_text(json.dumps([feat]))
    (a,) = read_geojson(src)
    b = a.classified("Glomerulus: Segmental sclerosis", measurements={"p_ss": 0.7}, metadata={"model": "g2c v1"})
    out = write_geojson(tmp_path / "out.geojson", [b], mpp=(0.5, 0.5))
    (f,) = load(out)["features"]
    assert f["id"] == QUPATH_FEATURE["id"]
    p = f["properties"]
    assert p["isLocked"] is True and p["name"] == "box 1" and p["color"] == [255, 0, 0]
    assert p["objectType"] == "annotation" and "type" not in p  # a class name must never sit under "type"
    assert p["classification"] == {"name": "Glomerulus: Segmental sclerosis", "color": [240, 160, 20]}
    assert p["measurements"] == {"Old": 3.0, "p_ss": 0.7, "area_um2": 375.0}
    assert p["metadata"] == {"drawn_by": "dr x", "model": "g2c v1"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('"a string"', "expected a FeatureCollection"),
        ('{"type": "FeatureCollection", "features": {}}', "'features' must be an array"),
        ('{"type": "Topology"}', "type='Topology'"),
        ('[{"type": "Feature", "properties": {}}]', "feature 0: missing or malformed geometry"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]', "malformed Polygon"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,0]]]},'
         ' "properties": {"classification": {"name": "X", "color": [300, 0, 0]}}}]', "colour"),
        ("[3]", "feature 0: a feature must be an object"),
    ],
)
def test_bad_files_name_the_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=reason) as info:
        read_geojson(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="cannot read"):
        read_geojson(tmp_path / "nope.geojson")


def test_class_colours_stable_and_valid() -> None:
    assert class_color("Glomerulus: Global sclerosis") == (200, 40, 40)
    c = class_color("Something else")
    assert c == class_color("Something else") and all(0 <= v <= 255 for v in c)


def test_multipolygon_written_and_read_back(tmp_path: Path) -> None:
    multi = shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)])
    a = Annotation(multi, classification="Glomerulus")
    (f,) = load(write_geojson(tmp_path / "m.geojson", [a]))["features"]
    assert f["geometry"]["type"] == "MultiPolygon" and len(f["geometry"]["coordinates"]) == 2
    (b,) = read_geojson(tmp_path / "m.geojson")
    assert b.geometry.equals(multi) and b.color == class_color("Glomerulus")
