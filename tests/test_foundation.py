from __future__ import annotations

import pytest
from click.testing import CliRunner

from wsi_pipeline.config import FrozenConfig, load_config
from wsi_pipeline.errors import ConfigError, SlideError, WsiPipelineError
from workflows.cli import cli


class _Cfg(FrozenConfig):
    mpp: float = 1.0
    tile: int = 512


def test_load_config_validates_and_names_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("mpp: 0.5\ntile: 256\n")
    cfg = load_config(good, _Cfg)
    assert (cfg.mpp, cfg.tile) == (0.5, 256)
    with pytest.raises(Exception):
        cfg.mpp = 2.0  # frozen
    bad = tmp_path / "bad.yaml"
    bad.write_text("mpp: fast\nextra: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, _Cfg)
    assert "bad.yaml" in str(info.value) and "mpp" in str(info.value) and "extra" in str(info.value)


def test_config_digest_changes_with_settings():
    assert _Cfg().digest() == _Cfg().digest()
    assert _Cfg(tile=256).digest() != _Cfg().digest()


def test_slide_error_is_oserror_and_names_file():
    err = SlideError("/x/a.svs", "not a slide")
    assert isinstance(err, OSError) and isinstance(err, WsiPipelineError)
    assert str(err) == "/x/a.svs: not a slide"
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert again.path == "/x/a.svs" and again.reason == "not a slide"


def test_cli_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Gigapixel" in result.output
