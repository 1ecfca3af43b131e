"""``wsi-pipeline synth`` through click's runner: writes and prints the slides, truth and labels; bad input fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import tifffile
from click.testing import CliRunner

from wsi_pipeline.synth import write_phantom
from workflows.cli import cli


def test_synth_command_writes_and_prints(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    result = CliRunner().invoke(cli, ["synth", str(out), "--size", "640", "--stains", "cd34,PAS", "--glomeruli",
                                      "1", "--seed", "4", "--mpp", "1.0", "--ome", "--name", "tiny"])
    assert result.exit_code == 0, result.output
    expected = ["tiny-PAS.svs", "tiny-CD34.svs", "tiny-PAS.ome.tif", "tiny-CD34.ome.tif", "tiny.truth.geojson",
                "tiny.labels.tif"]
    for name in expected:
        assert (out / name).is_file()
        assert str(out / name) in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # nothing else (no temp files)
    assert "1 glomeruli" in result.output
    with openslide.OpenSlide(out / "tiny-CD34.svs") as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert s.properties["openslide.mpp-x"] == "1"
    # four files were written at once from shared renders: each equals a slide written on its own
    solo = write_phantom(tmp_path / "solo", size=640, stains="PAS", n_glomeruli=1, seed=4, mpp=1.0, name="tiny")
    with tifffile.TiffFile(solo.slides["PAS"]) as a, tifffile.TiffFile(out / "tiny-PAS.svs") as b, \
            tifffile.TiffFile(out / "tiny-PAS.ome.tif") as c:
        assert np.array_equal(a.pages.first.asarray(), b.pages.first.asarray())
        assert np.array_equal(a.pages.first.asarray(), c.series[0].levels[0].asarray())


def test_synth_command_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_stain = runner.invoke(cli, ["synth", str(tmp_path / "a"), "--stains", "PAS,GIEMSA"])
    assert bad_stain.exit_code != 0
    assert "GIEMSA" in str(bad_stain.exception) + bad_stain.output
    assert not (tmp_path / "a").exists()
    bad_size = runner.invoke(cli, ["synth", str(tmp_path / "b"), "--size", "10"])
    assert bad_size.exit_code == 2 and "--size" in bad_size.output
