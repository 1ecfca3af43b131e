"""Test-time augmentation of the segmenter: exact averaging, equivariance, and the job setting."""

from __future__ import annotations

import torch

from wsi_pipeline.infer.tta import SymmetryAverage
from wsi_pipeline.models import registry


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.define("unet_resnet34", {"width": 0.0625, "decoder_channels": [16, 8, 8, 4, 4]}).eval()


def test_flips_average_the_probabilities_of_the_flipped_inputs() -> None:
    net, x = _net(), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(net(x)), torch.sigmoid(net(x.flip(3))).flip(3),
                                torch.sigmoid(net(x.flip(2))).flip(2), torch.sigmoid(net(x.flip(2, 3))).flip(2, 3)]
                               ).mean(0)
        got = torch.sigmoid(SymmetryAverage(net, "flips")(x))
    assert torch.allclose(got, expected, atol=1e-5)


def test_d4_average_is_equivariant_where_the_bare_network_is_not() -> None:
    net, x = _net(), torch.rand(1, 3, 64, 64)
    tta = SymmetryAverage(net, "d4")
    with torch.no_grad():
        assert not torch.allclose(net(x.rot90(1, (2, 3))), net(x).rot90(1, (2, 3)), atol=1e-4)
        for turned, back in ((x.rot90(1, (2, 3)), lambda y: y.rot90(-1, (2, 3))), (x.flip(3), lambda y: y.flip(3))):
            assert torch.allclose(back(tta(turned)), tta(x), atol=1e-4)


def test_job_setting_changes_the_segment_digest_only_when_used() -> None:
    from workflows.job_config import JobConfig
    from workflows.slide_plan import seg_settings

    plain = seg_settings(JobConfig())
    flips = seg_settings(JobConfig.model_validate({"segment": {"tta": "flips"}}))
    assert "tta" not in plain.to_dict()  # the digests of runs made before the setting existed stay valid
    assert flips.tta == "flips" and flips.to_dict()["tta"] == "flips"
