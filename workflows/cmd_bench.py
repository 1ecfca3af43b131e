"""``wsi-pipeline bench NAME``: the ratio benchmarks in :mod:`workflows.bench`, each a click command of its own
module (imported when it runs or shows its help: each pulls in what it measures).

    wsi-pipeline bench tiling --out bench-out/tiling --sizes 10000,20000,40000
    wsi-pipeline bench tiling --help
"""

from __future__ import annotations

import importlib

import click

from . import bench

# name -> one-line help (shown without importing the module)
BENCHMARKS: dict[str, str] = {
    "tiling": "Tiling vs the JPEG-decode floor vs an openslide read_region loop.",
    "models": "Model throughput (CPU / GPU).",
    "pipeline": "End-to-end slide job on synthetic slides: time per stage, RSS, overhead.",
    "accuracy": "The slide job on held-out phantom slides (or your own labelled images), scored against the truth.",
    "batch": "A folder of phantom slides through local clusters of different layouts (slides/hour, RSS).",
    "phantom": "Phantom writer MPix/s and the demo's wall time, this tree vs another checkout.",
    "precision": "CPU fast paths per shipped network: bf16 autocast and channels_last vs float32.",
    "trace": "Repeated work of one slide job: slide opens, weight hashes, network builds, store reads.",
}


class BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHMARKS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in BENCHMARKS:
            return None
        module = importlib.import_module(f"{bench.__name__}.{cmd_name}")
        return module.command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Benchmarks"):
            formatter.write_dl(list(BENCHMARKS.items()))


@click.group(name="bench", cls=BenchGroup)
def command() -> None:
    """Run the ratio benchmarks (results as JSON + a markdown table). Each one's options: wsi-pipeline bench NAME
    --help."""


__all__ = ["BENCHMARKS", "command"]
