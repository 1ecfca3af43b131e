"""Forward throughput (images/s) of every network at its inference size.

    python -m workflows.bench.models --out bench_models.json [--batch 8] [--repeats 3] [--unet-size 512]

CPU float32 always; with CUDA also float32 and bf16 autocast + channels_last. Each case: one warm-up batch, then
the median of ``--repeats`` timed batches under ``torch.inference_mode``. Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

import torch
from torch import nn

from wsi_pipeline.models import (G2CClassifierConfig, G2CConfig, GeneratorConfig, MultiLevelDiscriminatorConfig,
                                 PatchGANConfig, SSTDiscriminatorConfig, SSTGeneratorConfig, ShapeDiscriminatorConfig,
                                 UNetConfig, count_parameters)


@dataclass
class Case:
    name: str
    size: int
    make: Callable[[], nn.Module]
    inputs: Callable[[int, int], tuple]  # (batch, size) -> forward args


@dataclass
class Result:
    name: str
    size: int
    device: str
    mode: str
    batch: int
    params: int
    seconds_per_batch: float
    images_per_s: float


def cases(unet_size: int) -> list[Case]:
    unet_cfg = UNetConfig()

    def unet_maps(which: str) -> Callable[[int, int], tuple]:
        def make(b: int, s: int) -> tuple:
            with torch.device("cpu"):
                net = unet_cfg.build().eval()
                with torch.inference_mode():
                    out = net.forward_features(torch.rand(b, 3, s, s))
            return ([t.clone() for t in getattr(out, which)],)
        return make

    return [
        Case("CycleGAN generator (6 blocks)", 256, lambda: GeneratorConfig().build(),
             lambda b, s: (torch.rand(b, 3, s, s) * 2 - 1,)),
        Case("CycleGAN generator (9 blocks)", 256, lambda: GeneratorConfig(n_blocks=9).build(),
             lambda b, s: (torch.rand(b, 3, s, s) * 2 - 1,)),
        Case("PatchGAN 70x70", 256, lambda: PatchGANConfig().build(), lambda b, s: (torch.rand(b, 3, s, s),)),
        Case("G2C classifier M=3 +attention", 224, lambda: G2CClassifierConfig(num_stains=4).build(),
             lambda b, s: (torch.rand(b, 4, 3, s, s),)),
        Case("G2C end to end (3 generators + classifier)", 224, lambda: G2CConfig().build(),
             lambda b, s: (torch.rand(b, 3, s, s),)),
        Case("U-Net ResNet-34", unet_size, lambda: unet_cfg.build(), lambda b, s: (torch.rand(b, 3, s, s),)),
        Case("D_e (encoder maps)", unet_size, lambda: MultiLevelDiscriminatorConfig.for_encoder(unet_cfg).build(),
             unet_maps("encoder")),
        Case("D_d (decoder maps)", unet_size, lambda: MultiLevelDiscriminatorConfig.for_decoder(unet_cfg).build(),
             unet_maps("decoder")),
        Case("D_s ResNet-18 (mask)", unet_size, lambda: ShapeDiscriminatorConfig().build(),
             lambda b, s: (torch.rand(b, 1, s, s),)),
        Case("SST FusionNet generator", 256, lambda: SSTGeneratorConfig().build(),
             lambda b, s: (torch.rand(b, 1, s, s) * 2 - 1,)),
        Case("SST conditional DCGAN D", 64, lambda: SSTDiscriminatorConfig().build(),
             lambda b, s: (torch.rand(b, 3, s, s), torch.zeros(b, dtype=torch.long))),
    ]


def _to(args: tuple, device: torch.device, channels_last: bool) -> tuple:
    def move(x: object) -> object:
        if isinstance(x, torch.Tensor):
            x = x.to(device)
            return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
        if isinstance(x, list):
            return [move(t) for t in x]
        return x
    return tuple(move(a) for a in args)


def measure(case: Case, *, device: torch.device, mode: str, batch: int, repeats: int) -> Result:
    model = case.make().eval().to(device)
    channels_last = mode == "bf16+channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    args = _to(case.inputs(batch, case.size), device, channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))
    times = []
    with torch.inference_mode(), autocast:
        for i in range(repeats + 1):  # the first batch is the warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(*args)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return Result(case.name, case.size, device.type, mode, batch, count_parameters(model), sec, batch / sec)


def markdown(results: list[Result]) -> str:
    lines = ["| network | input px | device | mode | params | s / batch | images/s |",
             "|---|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.size} | {r.device} | {r.mode} | {r.params / 1e6:.2f} M | "
              f"{r.seconds_per_batch:.3f} | {r.images_per_s:.2f} |" for r in results]
    return "\n".join(lines)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


@click.command(name="models")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON file to write.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per timed batch.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed batches per case (the median is kept).")
@click.option("--unet-size", type=click.IntRange(min=32), default=512, show_default=True,
              help="U-Net / D_e / D_d / D_s input side.")
@click.option("--only", default="", help="Comma-separated substrings of network names to run [default: all].")
@click.option("--no-cpu", is_flag=True, help="Skip CPU (e.g. on a GPU machine).")
def command(**kw: Any) -> None:
    """Forward throughput (images/s) of every network at its inference size: CPU float32, and with CUDA float32
    and bf16 autocast + channels_last; JSON + a markdown table."""
    _run(SimpleNamespace(**kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench models")


def _run(args: Any) -> None:

    torch.manual_seed(0)
    selected = [c for c in cases(args.unet_size)
                if not args.only or any(s.strip().lower() in c.name.lower() for s in args.only.split(","))]
    runs = [] if args.no_cpu else [(torch.device("cpu"), "fp32")]
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), "fp32"), (torch.device("cuda"), "bf16+channels_last")]
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    results: list[Result] = []
    for device, mode in runs:
        for case in selected:
            r = measure(case, device=device, mode=mode, batch=args.batch, repeats=args.repeats)
            print(f"{r.name:45s} {r.device:4s} {r.mode:18s} {r.images_per_s:9.2f} img/s", flush=True)
            results.append(r)
            _write(args.out, {"environment": env, "batch": args.batch, "repeats": args.repeats,
                              "results": [asdict(r) for r in results]})  # after each case: a long run keeps its work
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
