"""Static checks of docker/: the compose file's shape and the Dockerfiles' install order. No Docker needed."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
SCHEDULER = "tcp://scheduler:8786"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def torch_pin() -> str:
    """The pin scripts/env.sh installs: the images must use the same."""
    match = re.search(r'"torch==([\w.+]+)"', (ROOT / "scripts" / "env.sh").read_text())
    assert match, "scripts/env.sh no longer pins torch"
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services(compose: dict) -> None:
    services = compose["services"]
    assert {"scheduler", "worker", "gpu-worker", "job"} <= set(services)

    scheduler = services["scheduler"]
    assert scheduler["entrypoint"] == ["dask"] and scheduler["command"][0] == "scheduler"
    assert {p.rsplit(":", 1)[1] for p in scheduler["ports"]} == {"8786", "8787"}
    assert "8787/health" in " ".join(scheduler["healthcheck"]["test"])

    for name in ("worker", "gpu-worker"):
        svc = services[name]
        assert svc["entrypoint"] == ["dask"] and svc["command"][:2] == ["worker", SCHEDULER]
        assert svc["depends_on"]["scheduler"]["condition"] == "service_healthy"
        assert "replicas" in svc["deploy"]
    assert services["worker"]["image"] != services["gpu-worker"]["image"]

    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    assert "GPU=1" in gpu["command"][gpu["command"].index("--resources") + 1]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"

    job = services["job"]
    assert job["profiles"] == ["job"]
    assert job["command"][0] == "run" and job["command"][job["command"].index("--scheduler") + 1] == SCHEDULER
    assert job["depends_on"]["scheduler"]["condition"] == "service_healthy"


def test_compose_shared_data_path(compose: dict) -> None:
    """The job hands file paths to the workers: every slide-handling container mounts the same folder at /data."""
    services = compose["services"]
    mounts = {name: services[name]["volumes"] for name in ("worker", "gpu-worker", "job")}
    assert len({tuple(v) for v in mounts.values()}) == 1
    (volume,) = mounts["job"]
    assert volume.rsplit(":", 1)[1] == "/data"
    assert all(arg.startswith("/data/") for arg in services["job"]["command"][1:] if arg.startswith("/"))


def test_compose_builds_from_repo_root(compose: dict) -> None:
    for name, svc in compose["services"].items():
        build = svc["build"]
        assert (DOCKER / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).is_file(), name


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_pinned_torch_before_package(kind: str) -> None:
    pin = torch_pin()
    runs = [args for keyword, args in instructions(DOCKERFILES[kind]) if keyword == "RUN"]
    torch_runs = [i for i, r in enumerate(runs) if f'"torch=={pin}"' in r and "pip install" in r]
    package_runs = [i for i, r in enumerate(runs) if re.search(r"pip install [^&]*\s/src(\s|$)", r)]
    assert torch_runs and package_runs, (torch_runs, package_runs)
    assert torch_runs[0] < package_runs[0]
    torch_run = runs[torch_runs[0]]
    if kind == "cpu":
        assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    else:
        assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu12\d\b", torch_run)
    # every later pip install is constrained, so `torch>=2.4` in pyproject.toml cannot swap the build
    for r in runs[torch_runs[0] + 1:]:
        if "pip install" in r:
            assert "-c /src/constraints.txt" in r, r


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runtime_settings(kind: str) -> None:
    ins = instructions(DOCKERFILES[kind])
    args = {k: a for k, a in ins}  # the last of each: the runtime stage
    assert args["ENTRYPOINT"] == '["wsi-pipeline"]'
    assert args["WORKDIR"] == "/data"
    assert args["USER"].split(":")[0] not in ("root", "0")
    base = next(a for k, a in ins if k == "ARG" and a.startswith(("PYTHON_IMAGE=", "CUDA_IMAGE=")))
    tag = base.split("=", 1)[1].split(":", 1)[1]
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"base image tag not pinned to a full version: {base}"
    if kind == "cuda":
        assert re.match(r"12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", tag)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in [f"{k} {a}" for k, a in ins]


def test_constraints_match_pyproject() -> None:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = spec.version
    assert pins["torch"] == torch_pin()
    assert pins["dask"] == pins["distributed"]
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name], prereleases=True), (dep, pins[req.name])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a relative path: the last matching pattern wins; a match on a parent folder counts."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat.startswith("**/"):  # at any depth
            globs = [pat[3:], "*/" + pat[3:]]
        else:
            globs = [pat]
        hit = any(fnmatch.fnmatch(c, g) for c in candidates for g in globs)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    for junk in (".venv/bin/python", ".git/HEAD", "out/x/report.json", "bench-out/a.json", "docker/data/slides/a.svs",
                 "wsi_pipeline/__pycache__/x.pyc", "wsi_pipeline.egg-info/PKG-INFO", ".pytest_cache/v"):
        assert dockerignored(junk, patterns), junk
    # everything the Dockerfiles COPY from the context is sent
    for kind, path in DOCKERFILES.items():
        for keyword, args in instructions(path):
            if keyword == "COPY" and not args.startswith("--from"):
                for src in args.split()[:-1]:
                    assert (ROOT / src).exists(), (kind, src)
                    assert not dockerignored(src, patterns), (kind, src)
    assert not dockerignored("wsi_pipeline/weights/segmenter.safetensors", patterns)
