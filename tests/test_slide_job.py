"""The slide job end to end on a seeded phantom with real registry models saved to tmp files.

The segmenter is a real ``unet_resnet34`` whose weights are set by hand to one path through the network (stem ->
last two decoder blocks -> head) computing "mean green darkness over ~20 px above a threshold": on the phantom at
2 um/px that fires on the dense glomerular tufts and, above 2500 um^2, nowhere else. So the test knows the answer
(6 glomeruli at known places) without training. G2C and the generators are tiny, randomly initialised registry
models: the tests check the pipeline around them, not their accuracy.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import torch
import yaml
import zarr
from PIL import Image
from shapely.geometry import shape
from torch import nn

from workflows.job_config import DEFAULT_CLASS_NAMES, load_job_config
from workflows.slide_job import run_slide, slide_stem
from workflows.slide_plan import qupath_offset
from wsi_pipeline.annotations import Annotation, class_code, evaluate_geojson, read_features, snap_valid, write_geojson
from wsi_pipeline.export.tiff import write_pyramidal_tiff
from wsi_pipeline.models.registry import define, save_model
from wsi_pipeline.synth import write_phantom
from wsi_pipeline.tiling import read_store_info, tissue_chunks

N_GLOMERULI = 6
SEG_MPP = 2.0


def dark_blob_unet(threshold: float = 0.385, gain: float = 40.0) -> nn.Module:
    """A real U-Net (ResNet-34 layout, width 1/8) wired by hand into a large-scale darkness detector."""
    net = define("unet_resnet34", {"width": 0.125, "decoder_channels": [8, 8, 8, 8, 8]})
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
        stem_conv, stem_bn = net.encoder.stem[0][0], net.encoder.stem[0][1]
        stem_conv.weight[0, 1] = -1.0 / 49  # green channel, 7x7 mean, negated
        stem_bn.bias[0] = 1.0  # stem channel 0 = 1 - mean7(G)
        dec4, dec5 = net.decoder[3], net.decoder[4]
        skip0 = dec4.conv[0][0].in_channels - net.encoder.channels[0]  # concat order: [upsampled, skip]
        dec4.conv[0][0].weight[0, skip0] = 1.0 / 9
        for conv in (dec4.conv[1][0], dec5.conv[0][0], dec5.conv[1][0]):
            conv.weight[0, 0] = 1.0 / 9
        net.head.weight[0, 0, 1, 1] = gain
        net.head.bias[0] = -gain * (1 - threshold)
    return net.eval()


def save_models(folder: Path, *, g2c_seed: int = 0) -> dict[str, Path]:
    """Segmenter, G2C (arch ``g2c``, its own generators) and one stand-alone generator, as registry files."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = folder / "seg.safetensors"
    save_model(dark_blob_unet(), seg, arch="unet_resnet34",
               config={"width": 0.125, "decoder_channels": [8, 8, 8, 8, 8]},
               metadata={"mpp": SEG_MPP, "window": 256, "threshold": 0.5, "min_area_um2": 2500.0})
    torch.manual_seed(g2c_seed)
    g2c_cfg = {"stains": ["HE", "MASSON", "PASM"], "generator": {"ngf": 4, "n_blocks": 1},
               "classifier": {"num_stains": 4, "num_classes": 3, "stem_width": 8, "widths": [16]}}
    g2c = folder / f"g2c-{g2c_seed}.safetensors"
    save_model(define("g2c", g2c_cfg), g2c, arch="g2c", config=g2c_cfg,
               metadata={"classes": ["noa", "ss", "gs"], "crop_size": 32, "crop_mpp": 2.0, "crop_margin": 0.2})
    gen = folder / "gen-HE.safetensors"
    save_model(define("cyclegan_generator", {"ngf": 4, "n_blocks": 1}), gen, arch="cyclegan_generator",
               config={"ngf": 4, "n_blocks": 1}, metadata={"mpp": 2.0})
    return {"segmenter": seg, "g2c": g2c, "generator": gen}


def job_config_file(folder: Path, models: dict[str, Path], **sections: dict) -> Path:
    data = {"segment": {"weights": str(models["segmenter"]), "window": 256, "batch_size": 4},
            "classify": {"weights": str(models["g2c"])},
            "translate": {"stains": ["HE"], "generators": {"HE": models["generator"].name}, "window": 128},
            "tile": {"tile": 128, "thumbnail_px": 512}, "overlay_px": 512}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("slidejob")
    phantom = write_phantom(root / "slides", size=2048, stains=("PAS",), seed=3, n_glomeruli=N_GLOMERULI)
    models = save_models(root / "models")
    cfg_path = job_config_file(root / "models", models)
    config = load_job_config(cfg_path)
    slide = phantom.slides["PAS"]
    entry = run_slide(slide, root / "out", config=config, workers=2)
    return {"root": root, "phantom": phantom, "models": models, "config": config, "slide": slide, "entry": entry,
            "slide_dir": root / "out" / slide_stem(slide)}


def test_full_job_writes_qupath_geojson_and_overlay(work: dict) -> None:
    entry = work["entry"]
    assert entry["status"] == "ok", entry["reason"]
    assert entry["stages_run"] == ["tile", "segment", "polygons", "classify", "export"]
    assert set(entry["timings"]) == set(entry["stages_run"])
    data = json.loads((work["slide_dir"] / "glomeruli.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    tissue = [f for f in data["features"] if f["properties"]["classification"]["name"] == "Tissue"]
    feats = [f for f in data["features"] if f not in tissue]
    assert len(feats) == N_GLOMERULI == entry["counts"]["glomeruli"]
    assert len(tissue) == 1 and tissue[0]["properties"]["classification"]["color"]  # the outline, its own class
    outline = shape(tissue[0]["geometry"])
    assert all(outline.contains(shape(f["geometry"]).centroid) for f in feats)
    assert tissue[0]["properties"]["measurements"]["area_um2"] > sum(
        f["properties"]["measurements"]["area_um2"] for f in feats)
    assert entry["counts"]["stain"] == "PAS" and "warnings" not in entry["counts"]  # recognised, no warning
    truth = [shape(f["geometry"]) for f in json.loads(work["phantom"].truth_geojson.read_text())["features"]]
    matched = set()
    for f in feats:
        assert str(uuid.UUID(f["id"])) == f["id"]
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] in DEFAULT_CLASS_NAMES.values()
        assert len(props["classification"]["color"]) == 3
        m = props["measurements"]
        assert m["p_noa"] + m["p_ss"] + m["p_gs"] == pytest.approx(1.0, abs=2e-3)
        assert m["seg_confidence"] > 0.5 and 2500 < m["area_um2"] < 200_000
        meta = props["metadata"]
        assert meta["virtual_stains"] == "HE,MASSON,PASM" and meta["mpp_source"] == "file"
        assert meta["stain"] == "PAS"
        assert "sha256:" in meta["segmenter"] and "sha256:" in meta["classifier"]
        assert meta["pipeline"].startswith("wsi-pipeline ") and meta["bounds_offset"] == "0,0"
        geom = shape(f["geometry"])
        assert geom.is_valid and shapely.set_precision(geom, 0.01).equals(geom)  # already on QuPath's grid
        assert len(snap_valid(geom)) == 1
        hits = [i for i, t in enumerate(truth) if t.contains(geom.centroid)]  # level-0 coordinates of the slide
        assert len(hits) == 1
        matched.add(hits[0])
    assert len(matched) == N_GLOMERULI
    overlay = np.asarray(Image.open(work["slide_dir"] / "overlay.png"))
    assert overlay.shape == (512, 512, 3)
    seg = zarr.open_array(str(work["slide_dir"] / "slide.zarr" / "seg"), mode="r")
    assert seg.shape == (1, 512, 512) and seg.dtype == np.uint8


def test_rerun_skips_and_changes_invalidate_only_downstream(work: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("out")  # relative on purpose: markers must not depend on the working directory
    shutil.copytree(work["slide_dir"], out / work["slide_dir"].name)
    markers = out / work["slide_dir"].name / "stages"
    before = {p.name: p.stat().st_mtime_ns for p in markers.glob("*.done.json")}
    again = run_slide(work["slide"], out, config=work["config"], workers=2)
    assert again["status"] == "skipped" and again["stages_run"] == []
    assert again["counts"]["glomeruli"] == N_GLOMERULI
    assert {p.name: p.stat().st_mtime_ns for p in markers.glob("*.done.json")} == before

    models = work["models"]
    cfg = load_job_config(job_config_file(tmp_path, models, polygons={"max_area_um2": 150_000.0}))
    changed = run_slide(work["slide"], out, config=cfg, workers=2)
    assert changed["status"] == "ok"
    assert changed["stages_run"] == ["polygons", "classify", "export"]
    assert changed["stages_skipped"] == ["tile", "segment"]

    other = save_models(tmp_path / "models2", g2c_seed=1)  # a different classifier checkpoint
    cfg2 = load_job_config(job_config_file(tmp_path, models, polygons={"max_area_um2": 150_000.0},
                                           classify={"weights": str(other["g2c"])}))
    swapped = run_slide(work["slide"], out, config=cfg2, workers=2)
    assert swapped["stages_run"] == ["classify", "export"]


def _qupath_file(kind: str, truth: list[dict]) -> object:
    """A pathologist's annotations as QuPath exports them: a traced glomerulus, a box, and a point."""
    traced = {"type": "Feature", "id": truth[0]["id"], "geometry": truth[0]["geometry"],
              "properties": {"objectType": "annotation", "name": "traced", "isLocked": False}}
    x0, y0, x1, y1 = shape(truth[1]["geometry"]).bounds
    box = {"type": "Feature", "id": str(uuid.uuid4()),
           "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
           "properties": {"objectType": "annotation", "classification": {"name": "Region*", "color": [0, 0, 255]}}}
    point = {"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": "Point", "coordinates": [5.0, 6.0]},
             "properties": {"objectType": "annotation"}}
    if kind == "collection":
        return {"type": "FeatureCollection", "features": [traced, box, point]}
    if kind == "array":
        return [traced, box]
    return box


@pytest.mark.parametrize("kind", ["collection", "array", "single"])
def test_classify_mode_round_trips_qupath_files(work: dict, tmp_path: Path, kind: str) -> None:
    truth = json.loads(work["phantom"].truth_geojson.read_text())["features"]
    src = tmp_path / "pathologist.geojson"
    original = _qupath_file(kind, truth)
    src.write_text(json.dumps(original))
    entry = run_slide(work["slide"], tmp_path / "out", config=work["config"], task="classify", annotations=str(src))
    assert entry["status"] == "ok", entry["reason"]
    assert entry["stages_run"] == ["classify", "export"]
    feats = json.loads((tmp_path / "out" / slide_stem(work["slide"]) / "glomeruli.geojson").read_text())["features"]
    given = original["features"] if kind == "collection" else original if kind == "array" else [original]
    assert [f["id"] for f in feats] == [g["id"] for g in given]
    for f, g in zip(feats, given):
        if g["geometry"]["type"] == "Point":
            assert f == g  # not an area: passed through untouched
            continue
        props = f["properties"]
        assert props["classification"]["name"] in DEFAULT_CLASS_NAMES.values() and props["classification"]["color"]
        assert set(props["measurements"]) >= {"p_noa", "p_ss", "p_gs", "area_um2"}
        assert props["metadata"]["annotations_source"] == "pathologist.geojson"
        assert shape(f["geometry"]).hausdorff_distance(shape(g["geometry"])) < 0.01  # same area, on the 0.01 grid
        for key in ("name", "isLocked"):
            if key in g["properties"]:
                assert props[key] == g["properties"][key]


def test_translate_writes_aligned_ome_tiff(work: dict) -> None:
    """The virtual stain has the source's level-0 geometry: openslide, tiffslide and tifffile read the same pyramid,
    and each glomerulus polygon of the job's GeoJSON (source level-0 pixels) falls on the same tissue in it."""
    import tifffile
    import tiffslide
    from PIL import ImageDraw

    out = work["root"] / "out"  # same folder as the full run: tiling is reused
    entry = run_slide(work["slide"], out, config=work["config"], task="translate", workers=2)
    assert entry["status"] == "ok", entry["reason"]
    assert entry["stages_run"] == ["translate-HE"] and "tile" in entry["stages_skipped"]
    tif = work["slide_dir"] / "virtual-HE.ome.tif"
    virtual = zarr.open_array(str(work["slide_dir"] / "slide.zarr" / "virtual" / "HE" / "0"), mode="r")
    assert virtual.shape == (3, 512, 512)
    assert virtual.attrs["geometry"]["scale_level0"] == [4.0, 4.0]
    with openslide.OpenSlide(work["slide"]) as src:
        size, mpp = src.dimensions, float(src.properties["openslide.mpp-x"])
    with openslide.OpenSlide(tif) as s, tiffslide.TiffSlide(tif) as ts, tifffile.TiffFile(tif) as tf:
        assert s.dimensions == size == (2048, 2048)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(mpp)
        levels = [lv.shape[1::-1] for lv in tf.series[0].levels]
        assert len(levels) > 1 and s.level_dimensions == ts.level_dimensions == tuple(levels)
        assert s.level_count == ts.level_count == len(levels)
        for level in range(s.level_count):  # every level has pixels in every reader (no transparent zeros)
            w, h = s.level_dimensions[level]
            a = np.asarray(s.read_region((0, 0), level, (w, h)).convert("RGB"))
            b = np.asarray(ts.read_region((0, 0), level, (w, h), as_array=True))[..., :3]
            assert np.array_equal(a, b) and np.array_equal(a, tf.series[0].levels[level].asarray())
            assert (a < 250).any()
        ome = tf.ome_metadata
        assert 'Name="HE (virtual)"' in ome and "NominalMagnification=" in ome
        px = np.asarray(s.read_region((0, 0), 0, size).convert("RGB")).astype(np.int16)
    grid = np.asarray(virtual[:]).transpose(1, 2, 0)
    expected = grid.repeat(4, 0).repeat(4, 1).astype(np.int16)  # the tiled grid on the source's level 0
    feats = json.loads((work["slide_dir"] / "glomeruli.geojson").read_text())["features"]
    glomeruli = [f for f in feats if f["properties"]["classification"]["name"] != "Tissue"]
    assert len(glomeruli) == N_GLOMERULI
    for f in glomeruli:
        inside = Image.new("1", size)
        ImageDraw.Draw(inside).polygon([tuple(p) for p in f["geometry"]["coordinates"][0]], fill=1)
        m = np.asarray(inside)
        assert m.sum() > 1000
        assert (px[m] < 245).any(axis=1).mean() > 0.95  # on generated tissue, not on glass
        assert np.abs(px[m] - expected[m]).mean() < 6  # the same pixels as the store's grid (JPEG noise only)
        shifted = np.roll(m, (0, 48), axis=(0, 1))  # what a misplaced overlay would compare against
        assert np.abs(px[m] - expected[shifted]).mean() > np.abs(px[m] - expected[m]).mean()


THIRD_PARTY = r"""
import json, sys
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

store = sys.argv[1]
root = zarr.open_group(store, mode="r")
arrays = {}
def walk(group, prefix):
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            arrays[prefix + name] = [int(node[...].max()), list(node.shape)]  # every chunk decodes
        else:
            walk(node, prefix + name + "/")
walk(root, "")
image = Image.from_zarr(root)
labels = image.labels.label_paths if image.labels else []
virtual = {name: len(Image.from_zarr(node).ome_attributes.multiscales[0].datasets)
           for name, node in root["virtual"].groups()} if "virtual" in root else {}
nodes = [(type(n.specs[0]).__name__, [list(d.shape) for d in n.data]) for n in Reader(parse_url(store))()]
transforms = image.ome_attributes.multiscales[0].datasets[0].coordinateTransformations
print(json.dumps({"arrays": arrays, "labels": labels, "virtual": virtual, "nodes": nodes,
                  "transforms": [t.type for t in transforms], "imported": "wsi_pipeline" in sys.modules}))
"""


def test_job_store_opens_in_third_party_readers(work: dict, tmp_path: Path) -> None:
    """The job's slide.zarr as a user without wsi-pipeline sees it: plain zarr opens every array, ome-zarr-models
    validates it as an OME-NGFF image with labels (tissue, glomeruli), ome-zarr-py reads image and labels."""
    import os
    import subprocess
    import sys

    run_slide(work["slide"], work["root"] / "out", config=work["config"], task="translate", workers=2)  # resumed
    store = work["slide_dir"] / "slide.zarr"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", THIRD_PARTY, str(store)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not seen["imported"]
    info = read_store_info(store)
    levels = [str(i) for i in range(len(info.pyramid))]
    assert set(levels) | {"seg", "tissue_mask", "tiling_done", "virtual/HE/0"} <= set(seen["arrays"])
    assert {f"labels/{n}/{lv}" for n in ("tissue", "glomeruli") for lv in levels} <= set(seen["arrays"])
    assert seen["arrays"]["labels/glomeruli/0"][0] == 1 and seen["arrays"]["labels/tissue/0"][0] == 1
    assert seen["arrays"]["labels/glomeruli/0"][1] == [1, *info.geometry.shape]
    assert sorted(seen["labels"]) == ["glomeruli", "tissue"] and seen["virtual"] == {"HE": 1}
    assert seen["transforms"] == ["scale", "translation"]
    kinds = [k for k, _ in seen["nodes"]]
    assert kinds[0] == "Multiscales" and kinds.count("Label") == 2


def test_other_stain_is_recognised_and_processed_with_a_warning(work: dict, tmp_path: Path) -> None:
    he = write_phantom(tmp_path / "slides", size=1024, stains=("HE",), seed=4, n_glomeruli=2).slides["HE"]
    entry = run_slide(he, tmp_path / "out", config=work["config"], task="segment", workers=1)
    assert entry["status"] == "ok", entry["reason"]
    counts = entry["counts"]
    assert counts["stain"] == "HE" and counts["route"] == "direct"
    assert any("HE" in w and "PAS" in w for w in counts["warnings"])
    meta = json.loads((Path(entry["output"]) / "glomeruli.geojson").read_text())
    assert all(f["properties"]["metadata"]["stain"] == "HE" for f in meta["features"])


def test_no_tissue_slide_is_an_outcome(work: dict, tmp_path: Path) -> None:
    blank = write_pyramidal_tiff(tmp_path / "blank.svs", lambda x, y, w, h: np.full((h, w, 3), 242, np.uint8),
                                 size=(1024, 768), mpp=0.5)
    entry = run_slide(blank, tmp_path / "out", config=work["config"])
    assert entry["status"] == "no-tissue" and "blank.svs" in entry["reason"]


def test_bounds_offset_applied_on_write_and_undone_on_read(tmp_path: Path) -> None:
    offset = qupath_offset((1000, 250, 5000, 4000))
    assert offset == (1000, 250) and qupath_offset(None) == (0, 0)
    ann = Annotation(shapely.box(1100, 300, 1200, 420))
    path = write_geojson(tmp_path / "g.geojson", [ann], bounds_offset=offset, mpp=(0.5, 0.5))
    feat = json.loads(path.read_text())["features"][0]
    assert shape(feat["geometry"]).bounds == (100, 50, 200, 170)  # QuPath image pixels
    assert "bounds" in feat["properties"]["metadata"]["coordinates"]
    (back,) = read_features(path, bounds_offset=offset)
    assert isinstance(back, Annotation) and back.id == ann.id and back.geometry.equals(ann.geometry)


def test_classify_mode_without_annotations_fails_naming_the_file(work: dict, tmp_path: Path) -> None:
    entry = run_slide(work["slide"], tmp_path / "out", config=work["config"], task="classify")
    assert entry["status"] == "failed"
    assert f"{slide_stem(work['slide'])}.geojson" in entry["reason"] and "--annotations" in entry["reason"]


def test_demo_evaluation_scores_detection_and_classes(work: dict, tmp_path: Path) -> None:

    truth = json.loads(work["phantom"].truth_geojson.read_text())
    pred = json.loads(json.dumps(truth))
    for i, f in enumerate(pred["features"]):
        code = class_code(f["properties"]["classification"]["name"])
        wrong = {"noa": "gs", "ss": "noa", "gs": "ss"}[code] if i == 0 else code
        f["properties"]["measurements"] = {f"p_{c}": float(c == wrong) for c in ("noa", "ss", "gs")}
    pred["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]]}, "properties": {}})  # a false positive
    path = tmp_path / "pred.geojson"
    path.write_text(json.dumps(pred))
    scores = evaluate_geojson(path, work["phantom"].truth_geojson)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (N_GLOMERULI, 1, 0)
    assert scores["f1"] == pytest.approx(2 * 6 / 13)
    assert scores["classified"] == N_GLOMERULI and scores["class_accuracy"] == pytest.approx(5 / 6)
    area = sum(shapely.geometry.shape(f["geometry"]).area for f in truth["features"])  # disjoint glomeruli
    assert scores["dice"] == pytest.approx(2 * area / (2 * area + 2500))  # the 50 x 50 false positive


def test_bench_accuracy_scores_the_job_against_the_truth(work: dict, tmp_path: Path) -> None:
    """`wsi-pipeline bench accuracy` runs the job on (cached) phantom slides and pools detection and class scores."""
    from click.testing import CliRunner

    from workflows.bench.accuracy import class_scores, parse_seeds
    from workflows.cli import cli

    assert parse_seeds("31-33,40") == [31, 32, 33, 40]
    scores = class_scores([("noa", "noa"), ("ss", "noa"), ("ss", "ss"), ("gs", "gs")])
    assert scores["confusion"]["ss"] == {"noa": 1, "ss": 1, "gs": 0}
    assert scores["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert scores["s_vs_noa_balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)

    cache = tmp_path / "bench" / "slides" / "2048"
    cache.mkdir(parents=True)
    for f in (work["slide"], work["phantom"].truth_geojson):
        shutil.copy(f, cache / f.name)
    cfg = work["root"] / "models" / "job.yaml"
    result = CliRunner().invoke(cli, ["bench", "accuracy", "--out", str(tmp_path / "bench"), "--seeds", "3",
                                      "--size", "2048", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "bench" / "results.json").read_text())
    direct = evaluate_geojson(tmp_path / "bench" / "jobs" / slide_stem(work["slide"]) / "glomeruli.geojson",
                      work["phantom"].truth_geojson)
    pooled = res["pooled"]
    assert pooled["tp"] + pooled["fn"] == N_GLOMERULI and pooled["qupath_problems"] == 0
    assert (pooled["tp"], pooled["fp"], pooled["f1"]) == (direct["tp"], direct["fp"], pytest.approx(direct["f1"]))
    assert sum(sum(row.values()) for row in res["classes"]["confusion"].values()) == direct["classified"]
    assert pooled["dice_mean"] == pytest.approx(direct["dice"]) and 0 < direct["dice"] <= 1
    assert "Pooled detection" in (tmp_path / "bench" / "results.md").read_text()
