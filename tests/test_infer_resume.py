"""Tiled inference resumes inside its stage: real runs SIGKILLed at several points, then byte-identical outputs.

Each run is a real Python process writing a real zarr store on disk; the model is a real (small) torch network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_pipeline.infer import TiledInferenceConfig, plan_windows, window_spans

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent('''
    import functools, os, signal, sys
    import numpy as np, torch, zarr
    from torch import nn
    from wsi_pipeline.infer import TiledInferenceConfig, TorchPredictor, predict_zarr

    def factory(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 2, 3, padding=1))
        return TorchPredictor(net, device="cpu", activation="softmax")

    store, name, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    group = zarr.open_group(store, mode="a")
    mask = np.load(os.path.join(store, "mask.npy"))
    cfg = TiledInferenceConfig(window=96, overlap=16, margin=4, batch_size=3, dtype="float32", block_chunks=1)

    def progress(done, total):
        print(f"progress {done} {total}", flush=True)
        if done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    predict_zarr(group["0"], group, predictor_factory=functools.partial(factory, 0), config=cfg, out_channels=2,
                 name=name, chunk_mask=mask, scheduler="threads", progress=progress)
    print("finished", flush=True)
''')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "slide.zarr"
    group = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (3, 700, 460), dtype=np.uint8)
    arr = group.create_array("0", shape=img.shape, chunks=(3, 64, 64), dtype="uint8", fill_value=255,
                             dimension_names=("c", "y", "x"))
    arr[:] = img
    mask = np.zeros((11, 8), bool)
    mask[1:10, 2:7] = True
    mask[4, 0] = mask[10, 7] = True
    np.save(path / "mask.npy", mask)
    (path / "child.py").write_text(CHILD)
    return path


def run(store: Path, name: str, *, kill_after: int = -1, kill_when_done: int | None = None) -> list[str]:
    """The child on ``store``; SIGKILLed by itself after ``kill_after`` units, or by us once it reports
    ``kill_when_done`` units (then at whatever point it has reached)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(store / "child.py"), str(store), name, str(kill_after)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if kill_when_done is not None and line.startswith("progress") and int(line.split()[1]) >= kill_when_done:
            time.sleep(0.05)  # somewhere inside the next unit: reading, forwarding or writing its chunks
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    if kill_after < 0 and kill_when_done is None:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    else:
        assert proc.returncode == -signal.SIGKILL
    return lines


def chunk_files(array_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(array_dir)): p.read_bytes() for p in sorted((array_dir / "c").rglob("*"))
            if p.is_file()}


def test_sigkilled_runs_resume_to_byte_identical_outputs(store: Path) -> None:
    assert run(store, "ref")[-1] == "finished"
    ref = chunk_files(store / "ref")
    mask = np.load(store / "mask.npy")
    assert len(ref) == mask.sum()

    first = run(store, "out", kill_after=2)  # killed right after its second unit's marker
    assert first[-1] == "progress 2 10"
    second = run(store, "out", kill_when_done=5)  # resumes at unit 3; killed by us inside a later unit
    assert second[0] == "progress 3 10"
    done = {int(p.name) for p in (store / "out" / ".done").iterdir()}
    assert len(done) >= 5 and "finished" not in second
    # a half-written chunk of an unfinished unit (as a kill during the write leaves it) is never trusted
    row = min(set(range(1, 11)) - done)  # units = chunk rows 1..10 (row 0 has no tissue)
    victim = store / "out" / "c" / "0" / str(row) / str(int(np.flatnonzero(mask[row])[0]))
    if victim.is_file():
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:  # killed before this unit wrote anything: plant the half-written chunk a kill during a write leaves
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(ref[str(victim.relative_to(store / "out"))][:100])
    third = run(store, "out")
    assert third[0] == f"progress {len(done) + 1} 10" and third[-1] == "finished"
    assert chunk_files(store / "out") == ref  # every chunk, byte for byte
    same = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(same["out"][:], same["ref"][:])
    assert run(store, "out") == ["finished"]  # nothing left to do: no unit is redone


def test_one_grid_forwards_each_window_once() -> None:
    """Forwarded pixels / tissue pixels on a whole 4096 px image at 2 x 2-chunk units: <= 1.3 at 512 and 608 px."""
    mask = np.ones((8, 8), bool)
    for window in (512, 608):
        cfg = TiledInferenceConfig(window=window, overlap=64, margin=16, dtype="uint8")
        plan = plan_windows((4096, 4096), (512, 512), cfg, mask)
        assert plan.forwarded_px / plan.tissue_px <= 1.3, (window, plan.forwarded_px / plan.tissue_px)
    assert window_spans(4096, 512, 64, multiple=32) == [(i * 448, 512) for i in range(9)]
    # tissue in one chunk: only the windows whose weighted core touches it
    one = np.zeros((8, 8), bool)
    one[3, 5] = True
    plan = plan_windows((4096, 4096), (512, 512), TiledInferenceConfig(window=512, overlap=64, margin=16), one)
    assert plan.windows == 4 and plan.units == (2,)
