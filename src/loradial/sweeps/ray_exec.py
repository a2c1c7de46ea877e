"""Sweep segments on a Ray cluster: one worker per GPU (or per CPU slot), on any node of the cluster.

``loradial sweep ... --ray auto`` joins the running cluster (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others, or inside a Ray job); ``--ray local`` starts a
private one on this machine; any other value is passed to ``ray.init(address=...)``. Each worker is
a Ray task holding one GPU (``num_gpus=1``; Ray sets its ``CUDA_VISIBLE_DEVICES``) that loads the
base model once and then takes segments from a shared queue, exactly like the per-device worker
processes of ``executor.py``; the driver commits each finished segment, so ``--resume`` works the
same. Requirements: loradial (and the model and data paths) on every node, and the sweep directory
on a filesystem every node sees (workers write their checkpoints and adapters into it).

Without ``--gpu-memory`` the packer's budget is the free memory of one worker's GPU, read by a probe
task. Ray ties the workers' lives to the driver: a killed sweep leaves no worker writing.
"""

from __future__ import annotations

from typing import Any, Callable

from loradial.settings import SweepSettings
from loradial.sweeps.devices import kind, remote_task
from loradial.sweeps.executor import drive, serve

def _serve(device: str, settings: SweepSettings, jobs_q, results_q) -> None:
    serve(device, settings, [device], jobs_q, results_q)


def execute_ray(jobs: list[dict[str, Any]], settings: SweepSettings, devices: list[str],
                on_done: Callable, progress: bool, n_rungs: int) -> None:
    """Run one rung's segments on ``min(len(devices), len(jobs))`` Ray workers (see the module docstring)."""
    import ray
    from ray.util.queue import Empty, Queue

    jobs_q, results_q = Queue(), Queue()
    n = min(len(devices), len(jobs))
    for job in jobs + [None] * n:
        jobs_q.put(job)
    task = remote_task(_serve, devices[0])
    refs = [task.remote(kind(devices[0]), settings, jobs_q, results_q) for _ in range(n)]

    def next_message(timeout: float):
        try:
            return results_q.get(timeout=timeout)
        except Empty:
            return None

    def any_alive() -> bool:
        return bool(ray.wait(refs, num_returns=len(refs), timeout=0)[1])

    try:
        drive(jobs, next_message, any_alive, on_done, progress, n_rungs)
    finally:
        for ref in ray.wait(refs, num_returns=len(refs), timeout=0)[1]:
            ray.cancel(ref, force=True)
        jobs_q.shutdown()
        results_q.shutdown()
