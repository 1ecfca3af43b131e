"""``wsi-pipeline train {cyclegan,g2c,segmenter,sst} --config FILE``: run one paper's training recipe.

Each kind lives in ``wsi_pipeline.train.<module>`` exposing a frozen config class and a
``train_<kind>(config, *, run_dir, progress) -> dict`` function; the run folder holds the checkpoint (resumable),
per-epoch ``metrics.json`` and the exported ``.safetensors`` model(s).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click

from wsi_pipeline.config import load_config
from wsi_pipeline.errors import ConfigError

from .options import writable_folder

#: kind -> (module, config class, train function)
KINDS: dict[str, tuple[str, str, str]] = {
    "cyclegan": ("wsi_pipeline.train.cyclegan", "CycleGANTrainConfig", "train_cyclegan"),
    "g2c": ("wsi_pipeline.train.g2c", "G2CTrainConfig", "train_g2c"),
    "g2c-real": ("wsi_pipeline.train.g2c_real", "G2CRealConfig", "train_g2c_real"),
    "segmenter": ("wsi_pipeline.train.segmentation", "SegmenterTrainConfig", "train_segmenter"),
    "sst": ("wsi_pipeline.train.sst", "SSTTrainConfig", "train_sst"),
}


@click.command(name="train")
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Training recipe (YAML), e.g. configs/train-segmenter.yaml.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/<kind>-<config stem>). Re-running resumes from its checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change one setting of the recipe, e.g. --set real.fold=2 --set epochs=4 (repeatable).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def command(kind: str, config_path: Path, run_dir: Path | None, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Train a model from a YAML recipe (resumable; metrics as JSON per epoch)."""
    if run_dir is not None:
        writable_folder(run_dir, "--out")
    module_name, config_name, fn_name = KINDS[kind]
    module = importlib.import_module(module_name)
    try:
        config = load_config(config_path, getattr(module, config_name), overrides=overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    run_dir = run_dir or Path("runs") / f"{kind}-{config_path.stem}"
    result = getattr(module, fn_name)(config, run_dir=run_dir, progress=not no_progress)
    click.echo(json.dumps(result, indent=2, default=str))


__all__ = ["KINDS", "command"]
