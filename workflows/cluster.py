"""The cluster a batch runs on: a local cluster of worker processes on 127.0.0.1 or an existing scheduler (TLS),
and what its workers advertise (``GPU``, ``slide`` resources). :mod:`workflows.batch` runs slides on it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wsi_pipeline.errors import ConfigError

GPU_RESOURCE = "GPU"
#: a worker advertising ``slide=K`` runs K slides at once, sharing its threads among them
SLIDE_RESOURCE = "slide"
#: environment variable of a worker: threads each of its slides uses (PyTorch and the slide's threaded scheduler)
THREADS_ENV = "WSI_PIPELINE_THREADS"
#: memory the local cluster plans per worker process (one slide at a time; a 4096-px phantom peaks at 0.7 GB)
WORKER_MEMORY_GIB = 4.0


# -- the cluster ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterOptions:
    """Where the batch runs: an existing scheduler's address, or a local cluster of ``n_workers`` processes."""

    scheduler: str | None = None
    n_workers: int | None = None  # local cluster: worker processes, one slide each at a time [local_layout]
    threads_per_worker: int | None = None  # local cluster: threads of that slide [default: cores // n_workers]
    dashboard: bool = True
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    worker_wait_s: float = 120.0  # how long to wait for the first worker of an existing scheduler

    def __post_init__(self) -> None:
        for name in ("n_workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value}: must be >= 1")
        tls = (self.tls_ca_file, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            raise ConfigError("TLS needs all of --tls-ca-file, --tls-cert and --tls-key")
        if any(tls) and self.scheduler is None:
            raise ConfigError("TLS options apply to --scheduler only (the local cluster stays on 127.0.0.1)")

    def security(self) -> Any:
        if not self.tls_ca_file:
            return None
        from distributed.security import Security

        return Security(tls_ca_file=self.tls_ca_file, tls_client_cert=self.tls_cert, tls_client_key=self.tls_key,
                        require_encryption=True)


@dataclass
class Cluster:
    """An open client plus what to tell the user about it."""

    client: Any
    description: str
    dashboard: str | None


def local_layout(n_slides: int, *, n_workers: int | None = None, threads: int | None = None,
                 cores: int | None = None, memory_gib: float | None = None) -> tuple[int, int]:
    """``(worker processes, threads per worker)`` of the local cluster.

    Slides scale across processes far better than across the threads of one slide (bench-out/batch: 2 processes
    x 1 thread 1.76x one process, 1 process x 2 threads 1.08x), so by default one worker per core, as many as
    memory allows at :data:`WORKER_MEMORY_GIB` each, never more than there are slides; the cores left over go to
    the workers' threads.

    >>> local_layout(20, cores=8, memory_gib=64), local_layout(20, cores=64, memory_gib=64), local_layout(1, cores=8)
    ((8, 1), (16, 4), (1, 8))
    """
    cores = cores or _cores()
    if memory_gib is None:
        import psutil

        memory_gib = psutil.virtual_memory().total / 2**30
    workers = n_workers or max(1, min(n_slides, cores, int(memory_gib // WORKER_MEMORY_GIB)))
    return workers, threads or max(1, cores // workers)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def open_cluster(options: ClusterOptions, *, n_slides: int) -> Iterator[Cluster]:
    """A client on ``options.scheduler`` or on a new local cluster (closed, with its workers, on exit)."""
    from distributed import Client, LocalCluster

    if options.scheduler is not None:
        try:
            client = Client(options.scheduler, security=options.security(), timeout="60s")
        except Exception as exc:  # OSError, TimeoutError, TypeError (tls:// without certificates), ...
            raise ConfigError(f"--scheduler {options.scheduler}: cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            try:
                client.wait_for_workers(1, timeout=options.worker_wait_s)
            except TimeoutError as exc:
                raise ConfigError(f"--scheduler {options.scheduler}: no worker connected within "
                                  f"{options.worker_wait_s:g} s") from exc
            n = len(client.nthreads())
            yield Cluster(client, f"scheduler {options.scheduler} ({n} workers)", _dashboard(client))
        finally:
            client.close()
        return
    workers, threads = local_layout(n_slides, n_workers=options.n_workers, threads=options.threads_per_worker)
    dashboard = options.dashboard and importlib.util.find_spec("bokeh") is not None
    with workers_ignore_interrupts():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0",  # the HTTP server always runs: never a fixed port
                               scheduler_kwargs={"dashboard": dashboard}, env={THREADS_ENV: str(threads)},
                               resources={GPU_RESOURCE: 1} if _local_gpus() else None)
    try:
        client = Client(cluster)
        try:
            desc = f"local cluster: {workers} worker processes x {threads} threads on 127.0.0.1"
            yield Cluster(client, desc, _dashboard(client) if dashboard else None)
        finally:
            client.close()
    finally:
        # every task has ended here: a worker slow to exit is killed with nothing lost, so its nanny's
        # "still alive after N seconds, killing" warning is noise
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        nanny.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            nanny.setLevel(level)


@contextlib.contextmanager
def workers_ignore_interrupts() -> Iterator[None]:
    """Worker processes started inside this block ignore SIGINT and SIGTERM (an ignored signal stays ignored across
    exec, and Python then installs no KeyboardInterrupt handler): Ctrl-C in a terminal, or a batch system's SIGTERM,
    reaches the whole process group, and the client, not each worker, stops the batch and closes the cluster
    quietly (the nannies stop their workers by message, not by signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _dashboard(client: Any) -> str | None:
    try:
        return str(client.dashboard_link) if client.scheduler_info().get("services", {}).get("dashboard") else None
    except Exception:  # noqa: BLE001  (no dashboard is not an error)
        return None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _advertised(client: Any) -> dict[str, tuple[int, dict[str, float]]]:
    """``{worker address: (nthreads, resources)}``."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {a: (int(w.get("nthreads", 1)), dict(w.get("resources") or {})) for a, w in workers.items()}


def step_resources(client: Any, *, device: str) -> tuple[dict[str, int], dict[str, int]]:
    """Resources of the ``tile`` and the ``infer`` tasks, from what the workers advertise (see module doc)."""
    advertised = [res for _, res in _advertised(client).values()]
    base = {SLIDE_RESOURCE: 1} if advertised and all(SLIDE_RESOURCE in r for r in advertised) else {}
    gpu_workers = sum(1 for r in advertised if r.get(GPU_RESOURCE, 0) >= 1)
    want_gpu = device.startswith("cuda") or (device == "auto" and gpu_workers > 0)
    if want_gpu and not gpu_workers:
        raise ConfigError(f"device={device!r} but no worker advertises a {GPU_RESOURCE} resource "
                          f"(start GPU workers with `dask worker ... --resources {GPU_RESOURCE}=1`)")
    return base, ({**base, GPU_RESOURCE: 1} if want_gpu else base)


def slide_slots(nthreads: int, resources: dict[str, float]) -> int:
    """How many slides a worker runs at once: its ``slide`` resource, else its threads."""
    return int(resources[SLIDE_RESOURCE]) if SLIDE_RESOURCE in resources else nthreads


__all__ = ["GPU_RESOURCE", "SLIDE_RESOURCE", "THREADS_ENV", "WORKER_MEMORY_GIB", "Cluster", "ClusterOptions",
           "local_layout", "open_cluster", "slide_slots", "step_resources", "workers_ignore_interrupts"]
