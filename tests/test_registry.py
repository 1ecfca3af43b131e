"""Model registry: round trips, checksums, mismatches, and refusal of pickled code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from wsi_pipeline.errors import ConfigError, WeightsError
from wsi_pipeline.models import ARCHITECTURES, define, load_model, save_model
from wsi_pipeline.models.g2c import G2C
from wsi_pipeline.models.registry import RECORD_KEY, tensors_digest

TINY = {
    "cyclegan_generator": {"ngf": 4, "n_blocks": 1},
    "patchgan": {"ndf": 4},
    "g2c_classifier": {"num_stains": 2, "stem_width": 8, "widths": [8], "blocks_per_unit": 1},
    "g2c": {"stains": ["HE"], "generator": {"ngf": 4, "n_blocks": 1},
            "classifier": {"num_stains": 2, "stem_width": 8, "widths": [8], "blocks_per_unit": 1}},
    "unet_resnet34": {"width": 0.125, "decoder_channels": [8, 8, 4, 4, 4]},
    "multilevel_discriminator": {"in_channels": [4, 8], "blocks": [1], "width": 0.5},
    "shape_discriminator": {"width": 0.0625},
    "sst_generator": {"base_channels": 4, "depth": 2},
    "sst_discriminator": {"ndf": 4, "image_size": 16},
}


def _input(arch: str) -> tuple:
    if arch == "g2c_classifier":
        return (torch.rand(2, 2, 3, 48, 48),)
    if arch == "multilevel_discriminator":
        return ([torch.rand(2, 4, 16, 16), torch.rand(2, 8, 8, 8)],)
    if arch == "shape_discriminator":
        return (torch.rand(2, 1, 64, 64),)
    if arch == "sst_generator":
        return (torch.rand(2, 1, 20, 24),)
    if arch == "sst_discriminator":
        return (torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    return (torch.rand(2, 3, 64, 64),)


def _train_a_little(model: torch.nn.Module, inputs: tuple) -> None:
    """Change weights and BatchNorm running stats away from their initial values."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(*inputs).float().mean().backward()
    opt.step()
    model.eval()


def test_every_arch_has_a_tiny_config():
    assert set(TINY) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_round_trip_rebuilds_network_with_identical_outputs(tmp_path, arch):
    torch.manual_seed(0)
    model = define(arch, TINY[arch])
    inputs = _input(arch)
    _train_a_little(model, inputs)
    path = tmp_path / f"{arch}.safetensors"
    digest = save_model(model, path, arch=arch, config=TINY[arch], metadata={"stain": "PAS"},
                        training_config={"lr": 0.01, "epochs": 30})
    loaded, record = load_model(path, expected_sha256=digest)
    assert type(loaded) is type(model) and not loaded.training
    assert record.arch == arch and record.metadata == {"stain": "PAS"} and record.sha256 == digest
    assert record.training_config == {"lr": 0.01, "epochs": 30}
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))
    assert (tmp_path / f"{arch}.safetensors.sha256").read_text().split() == [digest, path.name]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temp files replaced


def test_g2c_round_trip_keeps_stain_names(tmp_path):
    model = define("g2c", TINY["g2c"])
    save_model(model, tmp_path / "g2c.safetensors", arch="g2c", config=TINY["g2c"])
    loaded, record = load_model(tmp_path / "g2c.safetensors")
    assert isinstance(loaded, G2C) and list(loaded.generators) == ["HE"] and record.config.stains == ("HE",)


@pytest.fixture()
def saved(tmp_path) -> Path:
    model = define("patchgan", TINY["patchgan"])
    path = tmp_path / "d.safetensors"
    save_model(model, path, arch="patchgan", config=TINY["patchgan"])
    return path


def test_tampered_file_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor
    saved.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="d.safetensors.*SHA-256"):
        load_model(saved)
    os.remove(str(saved) + ".sha256")  # without the sidecar the record's tensor digest still catches it
    with pytest.raises(WeightsError, match="d.safetensors.*tensor digest"):
        load_model(saved)


def test_expected_hash_mismatch_is_refused(saved):
    with pytest.raises(WeightsError, match=r"d\.safetensors.*expected 0{64}"):
        load_model(saved, expected_sha256="0" * 64)


def _rewrite(path: Path, *, record_change=None, tensors=None) -> None:
    """Rewrite a checkpoint with a changed record (and no sidecar), as a hand-edited file would be."""
    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        record = json.loads(fh.metadata()[RECORD_KEY])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if tensors is not None:
        state = tensors(state)
        record["tensors_sha256"] = tensors_digest(state)
    if record_change is not None:
        record_change(record)
    safetensors.torch.save_file(state, str(path), metadata={RECORD_KEY: json.dumps(record)})
    Path(str(path) + ".sha256").unlink(missing_ok=True)


def test_unknown_arch_is_refused(saved):
    _rewrite(saved, record_change=lambda r: r.update(arch="vit_giant"))
    with pytest.raises(WeightsError, match="d.safetensors.*vit_giant"):
        load_model(saved)


def test_state_dict_not_matching_the_record_is_refused(saved):
    _rewrite(saved, record_change=lambda r: r["config"].update(ndf=8))
    with pytest.raises(WeightsError, match="d.safetensors.*mismatch"):
        load_model(saved)
    _rewrite(saved, record_change=lambda r: r["config"].update(ndf=4),
             tensors=lambda s: {k: v for k, v in s.items() if not k.endswith("bias")})
    with pytest.raises(WeightsError, match="missing"):
        load_model(saved)


def test_file_without_record_or_not_safetensors_is_refused(tmp_path):
    import safetensors.torch

    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(WeightsError, match="bare.safetensors.*no architecture record"):
        load_model(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="junk.safetensors.*not a valid"):
        load_model(junk)
    with pytest.raises(WeightsError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    other = tmp_path / "w.onnx"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="w.onnx.*unsupported"):
        load_model(other)


class _Payload:
    """Unpickling this would run code: create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    torch.save({"record": {"arch": "patchgan", "config": {}}, "state_dict": _Payload(str(marker))}, evil)
    with pytest.raises(WeightsError, match=f"evil\\{suffix}.*refused"):
        load_model(evil)
    assert not marker.exists()


def test_plain_torch_checkpoint_with_record_loads(tmp_path):
    model = define("patchgan", TINY["patchgan"])
    path = tmp_path / "legacy.pt"
    torch.save({"record": {"arch": "patchgan", "config": TINY["patchgan"]}, "state_dict": model.state_dict()}, path)
    loaded, record = load_model(path)
    assert record.arch == "patchgan"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="bare.pt.*record"):
        load_model(tmp_path / "bare.pt")


def test_save_checks_the_record_against_the_model(tmp_path):
    model = define("patchgan", TINY["patchgan"])
    with pytest.raises(ValueError, match="mismatch"):
        save_model(model, tmp_path / "x.safetensors", arch="patchgan", config={"ndf": 8})
    with pytest.raises(ConfigError, match="unknown"):
        save_model(model, tmp_path / "x.safetensors", arch="nope", config={})
    with pytest.raises(ConfigError, match="ndf"):
        define("patchgan", {"ndf": "wide"})
    with pytest.raises(ValueError, match="safetensors"):
        save_model(model, tmp_path / "x.pt", arch="patchgan", config=TINY["patchgan"])
    assert not list(tmp_path.iterdir())
