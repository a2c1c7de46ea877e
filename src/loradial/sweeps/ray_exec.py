"""Sweep segments on a Ray cluster: one worker per GPU (or per CPU slot), on any node of the cluster.

``loradial sweep ... --ray auto`` joins the running cluster (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others, or inside a Ray job); ``--ray local`` starts a
private one on this machine; any other value is passed to ``ray.init(address=...)``. Each worker is
a Ray task holding one GPU (``num_gpus=1``; Ray sets its ``CUDA_VISIBLE_DEVICES``) that loads the
base model once and then takes segments from a shared queue, exactly like the per-device worker
processes of ``sweep_exec``; the driver commits each finished segment, so ``--resume`` works the
same. Requirements: loradial (and the model and data paths) on every node, and the sweep directory
on a filesystem every node sees (workers write their checkpoints and adapters into it).

Without ``--gpu-memory`` the packer's budget is the free memory of one worker's GPU, read by a probe
task. Ray ties the workers' lives to the driver: a killed sweep leaves no worker writing.
"""

from __future__ import annotations

from typing import Any, Callable

from loradial.errors import LoradialError

PREFIX = "ray/"


def is_ray(devices: list[str]) -> bool:
    return bool(devices) and devices[0].startswith(PREFIX)


def kind(device: str) -> str:
    """'cuda' or 'cpu': what a worker of ``device`` ('ray/cuda', 'ray/cpu', or a local device) computes on."""
    return "cuda" if device.removeprefix(PREFIX).startswith("cuda") else "cpu"


def connect(address: str) -> None:
    """``ray.init`` once per process: 'local' starts a private cluster, anything else is an address."""
    try:
        import ray
    except ImportError:
        raise LoradialError("--ray needs Ray", "pip install 'loradial[ray]' on every node") from None
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(address=address, **kw)  # 'local' starts a private cluster even when RAY_ADDRESS is set
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise LoradialError(f"cannot reach a Ray cluster at {address!r}: {str(e).splitlines()[0]}",
                            "start one with `ray start --head`, or use --ray local") from None


def cluster_devices(address: str, workers: int | None) -> list[str]:
    """One 'ray/cuda' (or, on a cluster without GPUs, 'ray/cpu') entry per worker."""
    if workers is not None and workers < 1:
        raise LoradialError(f"--ray-workers must be at least 1, got {workers}", "e.g. --ray-workers 4")
    connect(address)
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = workers or max(gpus, 1)
    if gpus and n > gpus:
        raise LoradialError(f"--ray-workers {n} asks for more workers than the cluster's {gpus} GPUs",
                            f"use --ray-workers {gpus} or fewer (one worker per GPU)")
    return [PREFIX + ("cuda" if gpus else "cpu")] * n


def _remote(fn: Callable, device: str):
    import ray

    return ray.remote(num_gpus=1 if kind(device) == "cuda" else 0, num_cpus=1, max_retries=0)(fn)


def _probe_budget(device: str) -> int | None:
    from loradial.sweeps.pack import device_budget

    return device_budget(device)


def worker_budget(device: str, gpu_memory: float | None) -> int | None:
    """The packer's per-worker budget: ``--gpu-memory`` if given, else what a probe task on one worker finds."""
    from loradial.sweeps.pack import device_budget

    if gpu_memory is not None:
        return device_budget(device, gpu_memory)
    import ray

    return ray.get(_remote(_probe_budget, device).remote(kind(device)))


def _serve(device: str, settings: dict[str, Any], jobs_q, results_q) -> None:
    from loradial.sweeps.executor import serve

    serve(device, settings, [device], jobs_q, results_q)


def execute_ray(jobs: list[dict[str, Any]], settings: dict[str, Any], devices: list[str],
                on_done: Callable, progress: bool, n_rungs: int) -> None:
    """Run one rung's segments on ``min(len(devices), len(jobs))`` Ray workers (see the module docstring)."""
    import ray
    from ray.util.queue import Empty, Queue

    from loradial.sweeps.executor import drive

    jobs_q, results_q = Queue(), Queue()
    n = min(len(devices), len(jobs))
    for job in jobs + [None] * n:
        jobs_q.put(job)
    task = _remote(_serve, devices[0])
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
