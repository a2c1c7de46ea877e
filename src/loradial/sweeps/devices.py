"""Where a sweep may run: local devices (checked), or Ray workers ('ray/cuda', 'ray/cpu'); their memory budgets.

Local: every GPU by default, else the CPU. Ray (``--ray auto|local|ADDRESS``): one entry per
worker, each holding one GPU; the packer's budget is what a probe task on one worker finds (or
``--gpu-memory``). The Ray executor itself is ``ray_exec.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from loradial.errors import LoradialError
from loradial.sweeps.pack import MEMORY_FRACTION, device_budget, device_total

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


def remote_task(fn: Callable, device: str):
    import ray

    return ray.remote(num_gpus=1 if kind(device) == "cuda" else 0, num_cpus=1, max_retries=0)(fn)


def _probe_budget(device: str, memory_fraction: float) -> tuple[int | None, int | None]:
    return device_budget(device, None, memory_fraction), device_total(device)


def worker_budget(device: str, gpu_memory: float | None, memory_fraction: float = MEMORY_FRACTION) -> int | None:
    """The packer's per-worker budget: ``--gpu-memory`` if given, else what a probe task on one worker finds."""
    return worker_memory(device, gpu_memory, memory_fraction)[0]


def worker_memory(device: str, gpu_memory: float | None,
                  memory_fraction: float = MEMORY_FRACTION) -> tuple[int | None, int | None]:
    """(the packer's budget, the device's total memory or None) of one Ray worker."""
    if gpu_memory is not None:
        return device_budget(device, gpu_memory, memory_fraction), None
    import ray

    return tuple(ray.get(remote_task(_probe_budget, device).remote(kind(device), memory_fraction)))


def default_devices() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def check_devices(devices: Sequence[str]) -> list[str]:
    import torch

    out = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, ValueError):
            raise LoradialError(f"unknown device {d!r}", "use e.g. --devices cuda:0,cuda:1 or cpu") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise LoradialError(f"device {d} is not available", "check --devices against nvidia-smi")
        out.append(str(dev) if dev.type != "cuda" or dev.index is not None else "cuda:0")
    return out


def compute_dtype(dtype: str, device: str) -> str:
    """'auto' -> bf16 on a GPU, fp32 on a CPU (the dtype itself was validated by TrainSettings)."""
    if dtype == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return dtype


def resolve_devices(devices: Sequence[str] | None, ray: str | None, ray_workers: int | None) -> list[str]:
    """Local devices (checked; default: every GPU, else the CPU) or, with ``ray``, one 'ray/…' per Ray worker."""
    if ray:
        if devices:
            raise LoradialError("--devices and --ray exclude each other", "on a Ray cluster use --ray-workers N")
        return cluster_devices(ray, ray_workers)
    if ray_workers is not None:
        raise LoradialError("--ray-workers needs --ray", "add --ray auto (a running cluster) or --ray local")
    return check_devices(devices) if devices else default_devices()


def check_4bit(devices: Sequence[str]) -> None:
    """--load-in-4bit's requirements, checked before anything is written (the same errors as ``loradial train``)."""
    from loradial.models.load import check_4bit_support

    if is_ray(list(devices)):
        if any(kind(d) != "cuda" for d in devices):
            raise LoradialError("--load-in-4bit needs a CUDA GPU", "drop --load-in-4bit on this machine")
        return  # bitsandbytes is needed on the workers, not here
    for device_type in sorted({kind(d) for d in devices}):
        check_4bit_support(device_type)
