"""`wsi-pipeline bench phantom`: each tree measured in its own process, results as JSON + markdown."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from workflows.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_bench_phantom_measures_both_trees(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # the baseline is this same tree: the benchmark only needs a checkout whose write_phantom it can import
    result = CliRunner().invoke(cli, ["bench", "phantom", "--out", str(out), "--sizes", "512", "--rounds", "1",
                                      "--threads", "1", "--baseline", str(ROOT)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = {(r["tree"], r["threads"]): r for r in results["write"]}
    assert set(rows) == {("baseline", 0), ("this tree", 1)}
    for row in rows.values():
        (run,) = row["runs"]
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["mpix"] == 512 * 512 / 1e6
        assert run["mpix_per_s"] == run["mpix"] / run["wall_s"]
    assert rows[("this tree", 1)]["runs"][0]["threads_option"]
    assert list(results["speedup"]) == ["512 px, threads 1"]
    assert "| this tree | 512 | 1 |" in (out / "results.md").read_text()
    assert not (out / "scratch").exists()  # the written phantoms are removed after each run
