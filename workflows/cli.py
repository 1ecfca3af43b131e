"""The ``wsi-pipeline`` command. Each sub-command lives in its own ``workflows/cmd_<name>.py`` module
(exposing ``command: click.Command``) and is imported only when used, so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from wsi_pipeline import __version__
from wsi_pipeline.errors import WsiPipelineError

# name -> one-line help (shown without importing the module)
COMMANDS: dict[str, str] = {
    "demo": "Synthesize a PAS kidney slide, run the default job on it with the shipped weights and score it "
            "against its truth (GeoJSON, overlay, report.md).",
    "synth": "Write seeded synthetic multi-stain kidney slides (+ truth GeoJSON and label mask).",
    "tile": "Tile one slide's tissue into a zarr v3 store at a target resolution (resumable).",
    "run": "Process slide files and folders (recursive) on a Dask cluster: tissue, glomeruli, G2C classes -> "
           "QuPath GeoJSON, overlay, report.json / report.md; a re-run resumes.",
    "train": "Train a model from a YAML recipe (cyclegan, g2c, g2c-real, segmenter, sst; resumable).",
    "bench": "Run the ratio benchmarks (tiling, models, pipeline, accuracy, batch, trace): JSON + markdown tables.",
}


def _available() -> list[str]:
    return [n for n in COMMANDS if importlib.util.find_spec(f"workflows.cmd_{n}") is not None]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return _available()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's full description (click would cut them to one short line with "...")."""
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _available():
            return None
        module = importlib.import_module(f"workflows.cmd_{cmd_name}")
        return module.command  # type: ignore[no-any-return]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-pipeline")
def cli() -> None:
    """Gigapixel kidney-biopsy slides -> glomerulus annotations for QuPath.

    Every command checks its options before it starts any work. Parallelism has one vocabulary: --workers counts
    worker processes (run, bench batch), --threads and --threads-per-worker count the threads one slide uses.
    Each command's own options: wsi-pipeline COMMAND --help.
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="wsi-pipeline", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except WsiPipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
