"""Where sweep segments run: in this process on one device, or one worker process per device.

One device: segments run here one after another, and the base model stays loaded between them.
Several devices (``--devices cuda:0,cuda:1``): one ``torch.multiprocessing`` worker per device
(spawned, so CUDA is initialised in each child only), each loading the base once and taking the
next segment from a shared queue; the parent commits each finished segment and draws the progress
bars. A worker that fails stops the sweep with a runtime error (exit 1); the sweep can be resumed.
Ray (``--ray``, ``ray_exec.py``): the same workers and the same driver loop, as Ray tasks on a cluster.
"""

from __future__ import annotations

import os
import queue as _queue
import traceback
from typing import Any, Callable

from loradial.settings import SweepSettings
from loradial.errors import LoradialError, runtime_failure


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from loradial.console import console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def _label(job: dict[str, Any], n_rungs: int) -> str:
    rung = f"rung {job['rung'] + 1}/{n_rungs} " if n_rungs > 1 else ""
    return f"{rung}pack {job['pack'] + 1} ({len(job['members'])} configs)"


def execute(jobs: list[dict[str, Any]], settings: SweepSettings, ctx: Any,
            on_done: Callable[[dict[str, Any], dict[str, Any]], None], *, progress: bool = False, n_rungs: int = 1) -> None:
    """Run ``jobs`` (segments of one rung) on local devices and call ``on_done(job, outcome)`` for each,
    in this process (Ray clusters: ``ray_exec.execute_ray``, the same contract)."""
    if not jobs:
        return
    if len(ctx.devices) <= 1 or len(jobs) == 1:
        _execute_local(jobs, settings, ctx, on_done, progress, n_rungs)
    else:
        _execute_pool(jobs, settings, ctx, on_done, progress, n_rungs)


def _execute_local(jobs, settings, ctx, on_done, progress, n_rungs) -> None:
    from loradial.sweeps.full_segment import run_job as run_segment  # full configs: their own trainer
    from loradial.sweeps.segment import SegmentEnv

    env = SegmentEnv.shared(settings, ctx, ctx.devices[0])
    with _progress(progress) as bars:
        for job in jobs:
            task = bars.add_task(_label(job, n_rungs), total=job["end"] - job["start"])
            outcome = run_segment(job, env, lambda step, t=task, j=job: bars.update(t, completed=step - j["start"]))
            on_done(job, outcome)


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive its sweep process (a kill -9 of the parent would leave it writing into a
    directory that a resumed sweep uses): exit as soon as the parent is gone."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(device: str, settings: SweepSettings, devices: list[str], jobs_q, results_q, parent: int) -> None:
    """Child process: exit with the parent; serve segments on ``device``."""
    _exit_with_parent(parent)
    serve(device, settings, devices, jobs_q, results_q)


def serve(device: str, settings: SweepSettings, devices: list[str], jobs_q, results_q) -> None:
    """A worker: load the context and the base on ``device``, then run segments from ``jobs_q`` until a
    None, reporting ("step", id, step), ("done", id, outcome) or ("error", device, message) on ``results_q``."""
    try:
        from loradial.sweeps.full_segment import run_job as run_segment  # full configs: their own trainer
        from loradial.sweeps.segment import SegmentEnv
        from loradial.sweeps.setup import load_context

        ctx = load_context(settings, devices)
        env = SegmentEnv.shared(settings, ctx, device)
        while True:
            job = jobs_q.get()
            if job is None:
                return
            outcome = run_segment(job, env, lambda step, j=job: results_q.put(("step", j["id"], step)))
            results_q.put(("done", job["id"], outcome))
    except LoradialError as e:
        results_q.put(("error", device, f"{e.message}" + (f" (hint: {e.hint})" if e.hint else "")))
    except BaseException as e:  # report, then let the parent stop the sweep
        results_q.put(("error", device, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


def _execute_pool(jobs, settings, ctx, on_done, progress, n_rungs) -> None:
    import torch.multiprocessing as mp

    mp_ctx = mp.get_context("spawn")
    jobs_q, results_q = mp_ctx.Queue(), mp_ctx.Queue()
    for job in jobs:
        jobs_q.put(job)
    workers = []
    for device in ctx.devices[: len(jobs)]:
        jobs_q.put(None)
        p = mp_ctx.Process(target=_worker, args=(device, settings, list(ctx.devices), jobs_q, results_q, os.getpid()),
                           daemon=True)
        p.start()
        workers.append(p)

    def next_message(timeout: float):
        try:
            return results_q.get(timeout=timeout)
        except _queue.Empty:
            return None

    finished = False
    try:
        drive(jobs, next_message, lambda: any(p.is_alive() for p in workers), on_done, progress, n_rungs)
        finished = True
    finally:
        for p in workers:
            p.join(timeout=10 if finished else 0.1)
            if p.is_alive():
                p.terminate()
                p.join()


def drive(jobs: list[dict[str, Any]], next_message: Callable[[float], Any], any_alive: Callable[[], bool],
          on_done: Callable, progress: bool, n_rungs: int) -> None:
    """The driver's loop over the workers' messages (see ``serve``): progress bars, ``on_done`` per
    finished segment, a runtime error when a worker fails or every worker is gone too early."""
    by_id = {j["id"]: j for j in jobs}
    remaining = set(by_id)
    with _progress(progress) as bars:
        tasks = {j["id"]: bars.add_task(_label(j, n_rungs), total=j["end"] - j["start"]) for j in jobs}
        while remaining:
            message = next_message(5.0)
            if message is None:
                if not any_alive():
                    raise runtime_failure("every sweep worker exited before the rung finished",
                                          "resume the sweep with --resume")
                continue
            kind, key, payload = message
            if kind == "step":
                bars.update(tasks[key], completed=payload - by_id[key]["start"])
            elif kind == "done":
                remaining.discard(key)
                bars.update(tasks[key], completed=by_id[key]["end"] - by_id[key]["start"])
                on_done(by_id[key], payload)
            else:
                raise runtime_failure(f"sweep worker on {key} failed: {payload}", "resume the sweep with --resume")
