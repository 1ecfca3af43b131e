"""``wsi-pipeline bench``: the ratio benchmarks in ``benchmarks/`` (options pass through to each one's own parser).

    wsi-pipeline bench tiling --out bench-out/tiling --sizes 10000,20000,40000
    wsi-pipeline bench tiling --help
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from wsi_pipeline.errors import ConfigError

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "tiling": ("benchmarks.bench_tiling", "Tiling vs the JPEG-decode floor vs an openslide read_region loop."),
    "models": ("benchmarks.bench_models", "Model throughput (CPU / GPU)."),
    "pipeline": ("benchmarks.bench_pipeline", "End-to-end slide job on synthetic slides."),
    "accuracy": ("benchmarks.bench_accuracy", "The slide job on held-out phantom slides, scored against the truth GeoJSON."),
    "batch": ("benchmarks.bench_batch", "A folder of phantom slides through 1 vs 2 worker processes (slides/hour, RSS)."),
}


def _benchmark_main(module: str):  # type: ignore[no-untyped-def]
    """The benchmark module's ``main(argv)``; the benchmarks ship with the source tree, not the wheel."""
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # a console script's sys.path lacks the checkout
    try:
        return importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "benchmarks":
            raise ConfigError(f"{module}: not found; the benchmarks live in the source checkout's benchmarks/ "
                              f"(looked in {root})") from None
        raise


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
