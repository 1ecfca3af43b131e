"""Many slides on a ``dask.distributed`` cluster: failure isolation, timeouts, resume, live progress, report.

    >>> with open_cluster(ClusterOptions(n_workers=2), n_slides=len(slides)) as cluster:  # doctest: +SKIP
    ...     entries = run_batch(slides, "out", client=cluster.client, config=JobConfig())

How a batch runs:

- **Cluster**: a ``LocalCluster`` of worker processes bound to 127.0.0.1 (the default), or an existing scheduler
  (``ClusterOptions.scheduler``, TLS through :class:`distributed.security.Security`).
- **Tasks**: each slide is two tasks on the cluster, ``tile`` (reading and tiling, CPU) and then ``infer`` (segment,
  polygons, classify, export; or the virtual stains), each a call of :func:`workflows.slide_job.run_slide`; the
  ``classify`` task (annotations given) is one ``infer`` task. Inside a task the slide's own graph runs on Dask's
  threaded scheduler, never on the cluster (no nested clients).
- **Threads**: a worker runs ``nthreads`` slides at once, each with ``$WSI_PIPELINE_THREADS`` threads (PyTorch and
  the inner scheduler; default 1), unless it advertises the resource ``slide`` (``dask worker --nthreads 8
  --resources slide=1``): then it runs that many slides at once, sharing its ``nthreads`` among them. (Nannies
  set ``OMP_NUM_THREADS=1``, so the task sets ``torch.set_num_threads`` itself.) The local cluster's workers run
  one slide at a time (``nthreads=1``) with ``--threads-per-worker`` threads through the environment variable.
  The client keeps no more tasks on the cluster than it has slide slots (Dask would otherwise queue them on
  workers at once), so a worker that dies or is restarted takes no waiting slide down with it, and ``infer``
  tasks go first, so slides finish one after another instead of all tiling first.
- **GPU**: ``infer`` tasks ask for ``GPU=1`` when the config's device is ``cuda*``, or ``auto`` and some worker
  advertises ``GPU`` (``dask worker --resources GPU=1``); ``tile`` tasks never do, so CPU workers tile while GPU
  workers infer. ``device: cuda`` with no GPU worker is a :class:`~wsi_pipeline.errors.ConfigError`. The local
  cluster's workers advertise ``GPU=1`` each when CUDA is present (they share the device). When every worker
  advertises ``slide``, both tasks also ask for ``slide=1``.
- **Failures**: a bad slide is an entry (``run_slide`` never raises for one). A task that raises anyway is re-run
  ``retries`` times. A worker that dies (segfault, out-of-memory kill) has its task rescheduled on another worker,
  up to Dask's ``distributed.scheduler.allowed-failures`` (default 3), then the slide fails with ``KilledWorker``.
  A task running longer than ``timeout`` seconds (counted from its start on a worker) is cancelled, its worker is
  restarted through its nanny (the only way to stop a hung reader), and the slide fails "timed out after N s".
- **Resume**: the stage markers (:mod:`workflows.stages`) make a re-run, or a task retried after its worker died,
  continue where it stopped; a finished slide's tasks find every marker and report ``skipped``.
- **Report**: ``OUT/report.json`` and ``OUT/report.md`` are rewritten (atomically) after every finished slide.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_pipeline.atomic import atomic_write_text
from wsi_pipeline.errors import ConfigError

from .cluster import (
    _advertised,
    GPU_RESOURCE,
    SLIDE_RESOURCE,
    THREADS_ENV,
    Cluster,
    ClusterOptions,
    local_layout,
    open_cluster,
    slide_slots,
    step_resources,
)
from .job_config import TASKS, JobConfig
from .report import unique_stems, write_markdown, write_report
from .slide_job import slide_stem

#: seconds between checks of futures, timeouts and worker liveness
POLL_S = 0.2
#: least seconds between two progress events of one slide (Dask events go through the scheduler)
PROGRESS_EVERY_S = 1.0


# -- the task, on a worker ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlideTask:
    """What a worker needs for one slide (paths and small settings; the slide is opened on the worker)."""

    index: int
    slide: str
    stem: str
    out_dir: str
    task: str = "full"
    mpp_override: float | None = None
    annotations: str | None = None


def slide_step(item: SlideTask, config: JobConfig, *, step: str, topic: str | None = None) -> dict[str, Any]:
    """Run one step (``tile`` or ``infer``) of a slide on this worker; returns the step's report entry."""
    from .slide_job import run_slide

    worker = _this_worker()
    threads = slide_threads(worker)
    _set_torch_threads(threads)

    def emit(kind: str, **extra: Any) -> None:
        if worker is not None and topic is not None:
            worker.log_event(topic, {"kind": kind, "index": item.index, "step": step, "worker": worker.address,
                                     "pid": os.getpid(), **extra})

    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()  # at most one event a second per slide, plus each stage's first and last
        if done in (0, total) or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            emit("progress", stage=stage, done=done, total=total)

    emit("start")
    entry = run_slide(item.slide, item.out_dir, config=config, task=item.task, mpp_override=item.mpp_override,
                      annotations=item.annotations, workers=threads, stem=item.stem,
                      until="tile" if step == "tile" else None, on_stage=lambda s: emit("stage", stage=s),
                      on_progress=progress)
    entry["worker"] = worker.address if worker is not None else None
    entry = json.loads(json.dumps(entry, default=str))  # plain types: it also travels as an event
    emit("end", entry=entry)  # the client has the entry even if this worker dies before the result is fetched
    return entry


def slide_threads(worker: Any = None) -> int:
    """Threads one slide may use on ``worker``: ``$WSI_PIPELINE_THREADS``; else its share of the worker's threads
    when it advertises ``slide``; else 1."""
    text = os.environ.get(THREADS_ENV)
    if text is None:
        resources = (worker.state.total_resources or {}) if worker is not None else {}
        if SLIDE_RESOURCE not in resources:
            return 1
        return max(1, worker.state.nthreads // max(1, slide_slots(worker.state.nthreads, resources)))
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r}: expected a whole number >= 1")
    return threads


def _this_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# -- the batch, on the client -------------------------------------------------------------------------------------
@dataclass
class SlideState:
    """One slide as the client follows it."""

    index: int
    path: Path
    stem: str
    steps: list[str]  # steps still to submit, in order
    step: str | None = None
    future: Any = None
    worker: str | None = None
    pid: int | None = None
    started: float | None = None  # monotonic time the current attempt started on a worker
    stage: str | None = None
    progress: tuple[str, int, int, float] | None = None  # stage, units done, total, when the stage started (client)
    attempts: Counter[str] = field(default_factory=Counter)
    parts: list[dict[str, Any]] = field(default_factory=list)
    entry: dict[str, Any] | None = None


@dataclass
class BatchState:
    """What the progress display shows: finished entries, slides in flight, throughput."""

    slides: list[SlideState]
    t0: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [s.entry for s in self.slides if s.entry is not None]

    @property
    def running(self) -> list[SlideState]:
        return [s for s in self.slides if s.entry is None and s.started is not None]

    def totals(self) -> Counter[str]:
        return Counter(e["status"] for e in self.finished)

    def per_hour(self) -> float:
        elapsed = time.monotonic() - self.t0
        return len(self.finished) * 3600.0 / elapsed if elapsed > 0 else 0.0


EventHook = Callable[[BatchState, dict[str, Any]], None]


class BatchInterrupted(KeyboardInterrupt):
    """The batch was interrupted; ``entries`` are every slide's, the unfinished ones ``interrupted`` (both reports
    are written)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__("interrupted")
        self.entries = entries


def run_batch(slides: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, client: Any,
              config: JobConfig, task: str = "full", stems: Sequence[str] | None = None,
              mpp_override: float | None = None, annotations: str | None = None, timeout: float | None = None,
              retries: int = 1, notes: Sequence[str] = (), on_event: EventHook | None = None) -> list[dict[str, Any]]:
    """Run ``task`` on every slide on ``client``'s cluster; returns the report entries in input order.

    Never raises for a bad slide: each ends as an entry (see module doc). ``on_event(state, event)`` sees the
    workers' events (``start``, ``stage``) and the client's (``done``), e.g. for a progress display.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout={timeout}: must be > 0 seconds (or None)")
    out = Path(out_dir).resolve()
    paths = [Path(p) for p in slides]
    names = list(stems) if stems is not None else unique_stems(paths, slide_stem)
    steps = ["infer"] if task == "classify" else ["tile", "infer"]
    state = BatchState([SlideState(i, p, s, list(steps)) for i, (p, s) in enumerate(zip(paths, names))])
    runner = _Runner(client, out, state, config=config, task=task, mpp_override=mpp_override,
                     annotations=annotations, timeout=timeout, retries=retries, notes=notes, on_event=on_event)
    return runner.run()


class _Runner:
    """The client's loop: submit steps, follow worker events, collect results, enforce timeouts, write reports."""

    def __init__(self, client: Any, out: Path, state: BatchState, *, config: JobConfig, task: str,
                 mpp_override: float | None, annotations: str | None, timeout: float | None, retries: int,
                 notes: Sequence[str], on_event: EventHook | None) -> None:
        self.client, self.out, self.state, self.config, self.task = client, out, state, config, task
        self.mpp_override, self.annotations, self.timeout, self.retries = mpp_override, annotations, timeout, retries
        self.notes, self.on_event = list(notes), on_event
        self.topic = f"wsi-pipeline-{uuid.uuid4().hex[:12]}"
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.resources: dict[str, dict[str, int]] = {}
        self.capacity = 0  # slides the cluster runs at once
        self.gpus = 0  # GPU resources of the cluster (when infer steps ask for one)

    def run(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        tile_res, infer_res = step_resources(self.client, device=self.config.device)
        self.resources = {"tile": tile_res, "infer": infer_res}
        self.client.subscribe_topic(self.topic, self.events.put)
        last_check = 0.0
        try:
            while any(s.entry is None for s in self.state.slides):
                now = time.monotonic()
                if now - last_check > 1.0:
                    self.check_workers()
                    last_check = now
                self.fill()
                time.sleep(POLL_S)
                self.drain_events()
                for s in self.state.slides:
                    if s.entry is None and s.future is not None and s.future.done():
                        self.collect(s)
                self.enforce_timeout(time.monotonic())
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the command
            self.interrupt()
            raise BatchInterrupted(self.state.finished) from None
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)
            for s in self.state.slides:  # interrupted: leave nothing running on a shared cluster
                if s.entry is None and s.future is not None:
                    with contextlib.suppress(Exception):
                        s.future.cancel()
        self.write_reports()
        return self.state.finished

    def interrupt(self) -> None:
        """Every unfinished slide becomes an ``interrupted`` entry (what it finished is kept), in both reports."""
        if getattr(self.client, "cluster", None) is not None:
            # our own local cluster closes next: its workers need not report the tasks cancelled below
            with contextlib.suppress(Exception):
                self.client.run(_quiet_worker_logs)
        for s in self.state.slides:
            if s.entry is not None:
                continue
            with contextlib.suppress(Exception):
                if s.future is not None:
                    s.future.cancel()
            under_way = s.future is not None or bool(s.parts)
            where = f"during {s.step or 'its next step'}" + (f", stage {s.stage}" if s.stage else "")
            entry = merge_steps(s.parts) if s.parts else self.blank_entry(s)
            entry.update(status="interrupted",
                         reason=(f"{s.path}: interrupted {where}; re-run the same command to resume" if under_way
                                 else f"{s.path}: not started (interrupted)"))
            entry["attempts"] = max(s.attempts.values(), default=0)
            s.entry, s.future = entry, None
        self.notes.append(f"interrupted at {time.strftime('%Y-%m-%d %H:%M:%S')}: re-run the same command to resume")
        with contextlib.suppress(Exception):
            self.write_reports()

    def blank_entry(self, s: SlideState) -> dict[str, Any]:
        return {"input": str(s.path), "output": str(self.out / s.stem), "task": self.task, "timings": {},
                "stages_run": [], "stages_skipped": [], "counts": {}, "outputs": {}}

    # -- steps ---------------------------------------------------------------------------------------------------
    def fill(self) -> None:
        """Submit ready steps while the cluster has idle threads, ``infer`` steps (of tiled slides) first; GPU
        ``infer`` steps only while a GPU is free, so tiling keeps the CPU workers busy meanwhile."""
        busy = Counter(s.step for s in self.state.slides if s.future is not None)
        free = self.capacity - sum(busy.values())
        ready = [s for s in self.state.slides if s.entry is None and s.future is None and s.steps]
        ready.sort(key=lambda s: (s.steps[0] != "infer", s.index))
        for s in ready:
            if free <= 0:
                return
            step = s.steps[0]
            if step == "infer" and GPU_RESOURCE in self.resources["infer"] and busy["infer"] >= self.gpus:
                continue
            self.submit(s)
            busy[step] += 1
            free -= 1

    def submit(self, s: SlideState) -> None:
        step = s.steps.pop(0)
        item = SlideTask(s.index, str(s.path), s.stem, str(self.out), task=self.task,
                         mpp_override=self.mpp_override, annotations=self.annotations)
        s.step, s.started, s.stage, s.worker = step, None, None, None
        s.future = self.client.submit(
            slide_step, item, self.config, step=step, topic=self.topic, key=f"{step}-{s.stem}-{uuid.uuid4().hex[:8]}",
            pure=False, retries=self.retries, resources=self.resources[step] or None)

    def collect(self, s: SlideState) -> None:
        """A step's future is done without its ``end`` event having been seen: take the result from it."""
        fut, s.future = s.future, None
        if fut.status == "finished":
            self.advance(s, fut.result())
            return
        exc = fut.exception() if fut.status == "error" else None
        tb = "".join(traceback.format_tb(fut.traceback())) if exc is not None else ""
        self.fail(s, _failure_reason(s.path, exc, fut.status), detail=tb)

    def advance(self, s: SlideState, part: dict[str, Any]) -> None:
        """A step finished with entry ``part``: submit the next step, or finish the slide."""
        s.parts.append(part)
        s.future, s.started, s.stage = None, None, None
        if not (s.steps and part["status"] in ("ok", "skipped")):
            self.finish(s, merge_steps(s.parts))
        self.fill()

    def fail(self, s: SlideState, reason: str, *, detail: str = "") -> None:
        entry = merge_steps(s.parts) if s.parts else self.blank_entry(s)
        entry.update(status="failed", reason=reason)
        with contextlib.suppress(OSError):
            atomic_write_text(self.out / s.stem / "job.log", f"{s.path}\n{reason}\n{detail}")
        self.finish(s, entry)

    def finish(self, s: SlideState, entry: dict[str, Any]) -> None:
        entry["attempts"] = max(s.attempts.values(), default=0)
        entry.setdefault("worker", s.worker)
        s.entry, s.started, s.stage = entry, None, None
        self.write_reports()
        self.emit({"kind": "done", "index": s.index, "status": entry["status"]})

    # -- events, liveness, timeouts ------------------------------------------------------------------------------
    def drain_events(self) -> None:
        while True:
            try:
                _, msg = self.events.get_nowait()
            except queue.Empty:
                return
            s = self.state.slides[msg["index"]]
            if msg["kind"] == "start":
                s.attempts[msg["step"]] += 1
            if s.entry is not None or msg.get("step") != s.step:
                continue  # a late event of a cancelled attempt or of a finished step
            if msg["kind"] == "start":
                s.started, s.worker, s.pid, s.stage = time.monotonic(), msg["worker"], msg["pid"], None
            elif msg["kind"] == "stage":
                s.stage = msg["stage"]
            elif msg["kind"] == "progress":
                since = s.progress[3] if s.progress is not None and s.progress[0] == msg["stage"] else time.monotonic()
                s.stage = msg["stage"]
                s.progress = (msg["stage"], int(msg["done"]), int(msg["total"]), since)
            elif msg["kind"] == "end":
                # the step's entry, sent just before the task returns: no need to fetch the result from a worker
                # that may die meanwhile (a lost result would be recomputed)
                fut = s.future
                self.advance(s, msg["entry"])
                if fut is not None:
                    fut.release()
                continue
            self.emit(msg)

    def check_workers(self) -> None:
        """Count the cluster's threads; a slide whose worker left waits to be rescheduled, and its timeout clock
        restarts with its next attempt."""
        workers = _advertised(self.client)
        self.capacity = sum(slide_slots(n, res) for n, res in workers.values())
        self.gpus = sum(int(res.get(GPU_RESOURCE, 0)) for _, res in workers.values())
        alive = set(workers)
        for s in self.state.running:
            if s.worker not in alive:
                s.started, s.worker, s.stage = None, None, None

    def enforce_timeout(self, now: float) -> None:
        if self.timeout is None:
            return
        for s in self.state.running:
            if now - (s.started or now) <= self.timeout:
                continue
            worker, step, stage = s.worker, s.step, s.stage
            s.future.cancel()
            s.future = None
            restarted = self.restart(worker)
            self.fail(s, f"{s.path}: timed out after {self.timeout:g} s (step {step}, stage {stage or '-'}); "
                         f"worker {worker} {restarted}")

    def restart(self, worker: str | None) -> str:
        """Restart a worker whose task hung: cancelling a running task cannot stop its thread."""
        if worker is None:
            return "gone"
        try:
            status = self.client.restart_workers([worker], timeout=60, raise_for_error=False)
        except Exception as exc:  # noqa: BLE001  (a worker without a nanny cannot be restarted)
            return f"not restarted ({type(exc).__name__}: {exc})"
        return "restarted" if status.get(worker) == "OK" else f"not restarted ({status.get(worker)})"

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(self.state, event)

    # -- report ----------------------------------------------------------------------------------------------------
    def write_reports(self) -> None:
        entries = self.state.finished
        write_report(self.out, entries, task=self.task, config=self.config.to_dict())
        done = (f"{len(entries)}/{len(self.state.slides)} slides finished in "
                f"{time.monotonic() - self.state.t0:.0f} s ({self.state.per_hour():.1f} slides/hour)")
        write_markdown(self.out, entries, task=self.task, notes=[*self.notes, done])


def _quiet_worker_logs() -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def merge_steps(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report entry from a slide's step entries (``tile`` then ``infer``)."""
    entry = dict(parts[-1])
    ran = _unique([s for p in parts for s in p.get("stages_run", [])])
    entry.update(
        stages_run=ran,
        stages_skipped=_unique([s for p in parts for s in p.get("stages_skipped", []) if s not in ran]),
        timings={k: v for p in parts for k, v in (p.get("timings") or {}).items()},
        counts={k: v for p in parts for k, v in (p.get("counts") or {}).items()},
        outputs={k: v for p in parts for k, v in (p.get("outputs") or {}).items()},
        seconds=round(sum(p.get("seconds", 0.0) for p in parts), 3))
    if entry["status"] == "skipped" and ran:
        entry["status"] = "ok"
    return entry


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _failure_reason(path: Path, exc: BaseException | None, status: str) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        last = getattr(getattr(exc, "last_worker", None), "address", "?")
        return (f"{path}: its worker died while processing it, {exc.allowed_failures + 1} time(s) (KilledWorker: "
                f"a reader crash or an out-of-memory kill?); last worker {last}")
    if exc is not None:
        return f"{path}: {type(exc).__name__}: {exc}"
    return f"{path}: task {status}"


__all__ = ["GPU_RESOURCE", "SLIDE_RESOURCE", "THREADS_ENV", "BatchInterrupted", "BatchState", "Cluster", "ClusterOptions", "SlideState",
           "SlideTask", "local_layout", "merge_steps", "open_cluster", "run_batch", "slide_slots", "slide_step",
           "slide_threads", "step_resources"]
