"""``wsi-pipeline bench``: the ratio benchmarks in :mod:`workflows.bench` (options pass through to each one's own parser).

    wsi-pipeline bench tiling --out bench-out/tiling --sizes 10000,20000,40000
    wsi-pipeline bench tiling --help
"""

from __future__ import annotations

import importlib

import click

from . import bench

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "tiling": ("tiling", "Tiling vs the JPEG-decode floor vs an openslide read_region loop."),
    "models": ("models", "Model throughput (CPU / GPU)."),
    "pipeline": ("pipeline", "End-to-end slide job on synthetic slides."),
    "accuracy": ("accuracy", "The slide job on held-out phantom slides, scored against the truth GeoJSON."),
    "batch": ("batch", "A folder of phantom slides through 1 vs 2 worker processes (slides/hour, RSS)."),
    "phantom": ("phantom", "Phantom writer MPix/s and the demo's wall time, this tree vs another checkout."),
    "precision": ("precision", "CPU fast paths per shipped network: bf16 autocast and channels_last vs float32."),
    "trace": ("trace", "Repeated work of one slide job: slide opens, weight hashes, network builds, store reads."),
}


def _benchmark_main(module: str):  # type: ignore[no-untyped-def]
    """The benchmark module's ``main(argv)`` (imported when its command runs: each pulls in what it measures)."""
    return importlib.import_module(f"{bench.__name__}.{module}").main


def _command(name: str, module: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} Options: `wsi-pipeline bench {name} --help`.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   add_help_option=False)
    @click.pass_context
    def run(ctx: click.Context) -> None:
        _benchmark_main(module)(list(ctx.args))

    return run


@click.group(name="bench")
def command() -> None:
    """Run the ratio benchmarks (results as JSON + a markdown table)."""


for _name, (_module, _help) in BENCHMARKS.items():
    command.add_command(_command(_name, _module, _help))

__all__ = ["command"]
