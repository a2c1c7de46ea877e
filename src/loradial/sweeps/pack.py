"""Memory-aware packing: how many sweep configs train together on one frozen base.

A pack of K adapters on one device costs (from ``loradial.memory.estimate_training_memory``)

    bytes(pack) = shared + sum_k marginal_k,
    marginal_k  = est(config_k, n_adapters=2) - est(config_k, n_adapters=1),
    shared      = max_k (est(config_k, n_adapters=1) - marginal_k),

i.e. the frozen base and fixed overhead once, plus each adapter's weights, gradients, optimizer
states, activations and logits for its own batch slice. Packs are filled first-fit in grid order
(the grid is rank-major, so equal ranks tend to share a pack), never above the device budget.
A config that cannot fit even alone is bad input: the error says how many bytes it needs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Hashable, Sequence

from loradial.errors import LoradialError

GiB = 1024**3
#: Part of the free device memory the packer may plan for (the rest absorbs allocator fragmentation
#: and what the estimate does not see).
SAFETY = 0.85


@dataclasses.dataclass(frozen=True)
class ConfigCost:
    """Bytes of one config: ``shared`` once per pack, ``marginal`` per adapter in the pack."""

    name: str
    shared: int
    marginal: int

    @property
    def alone(self) -> int:
        return self.shared + self.marginal


def config_cost(name: str, estimate: Callable[[int], int]) -> ConfigCost:
    """Split ``estimate(n_adapters) -> bytes`` into shared and per-adapter parts (see module doc)."""
    one, two = int(estimate(1)), int(estimate(2))
    marginal = max(0, two - one)
    return ConfigCost(name, one - marginal, marginal)


def pack_bytes(costs: Sequence[ConfigCost]) -> int:
    return max(c.shared for c in costs) + sum(c.marginal for c in costs) if costs else 0


def fmt_bytes(n: float) -> str:
    if n >= GiB / 10:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 / 10 else f"{int(n):,} bytes"


def make_packs(
    costs: Sequence[ConfigCost],
    budget: int | None,
    max_pack: int | None = None,
    group: Callable[[str], Hashable] | None = None,
) -> list[list[str]]:
    """First-fit packing in the given order under ``budget`` bytes (None = unlimited).

    ``max_pack`` caps the adapters per pack; ``group(name)`` keeps configs with different keys in
    different packs (for configs the engine cannot train side by side). Deterministic: the same
    costs give the same packs, which resume relies on.
    """
    if max_pack is not None and max_pack < 1:
        raise LoradialError(f"--pack-size must be at least 1, got {max_pack}")
    for c in costs:
        if budget is not None and c.alone > budget:
            raise LoradialError(
                f"config {c.name} needs about {fmt_bytes(c.alone)} to train alone, more than the "
                f"{fmt_bytes(budget)} available",
                "lower --batch-size or --max-len, drop the largest ranks, or raise --gpu-memory",
            )
    packs: list[list[ConfigCost]] = []
    for c in costs:
        for p in packs:
            if max_pack is not None and len(p) >= max_pack:
                continue
            if group is not None and group(p[0].name) != group(c.name):
                continue
            if budget is None or pack_bytes([*p, c]) <= budget:
                p.append(c)
                break
        else:
            packs.append([c])
    return [[c.name for c in p] for p in packs]


def device_budget(device: str, gpu_memory_gib: float | None = None) -> int | None:
    """Bytes the packer may use on ``device``: ``--gpu-memory`` if given, else free CUDA memory x
    SAFETY (counting as free what this process's caching allocator holds but does not use), else
    (CPU) available RAM x SAFETY, or None when it cannot be read."""
    if gpu_memory_gib is not None:
        if not gpu_memory_gib > 0:
            raise LoradialError(f"--gpu-memory must be positive, got {gpu_memory_gib}", "give GiB, e.g. --gpu-memory 40")
        return int(gpu_memory_gib * GiB)
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int((free + cached) * SAFETY)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * SAFETY)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None
