"""Memory-aware packing: how many sweep configs train together on one frozen base.

A pack of K adapters on one device costs (from ``loradial.cost.engine_memory.estimate_engine_memory``,
the engine's own memory model: chunked loss, its LoRA saves, every sequence ``--max-len`` long)

    bytes(pack) = shared + sum_k marginal_k,
    marginal_k  = est(config_k, n_adapters=2) - est(config_k, n_adapters=1),
    shared      = max_k (est(config_k, n_adapters=1) - marginal_k),

i.e. the frozen base and fixed overhead once, plus each adapter's weights, gradients, optimizer
states, activations and loss for its own batch slice. Packs are filled first-fit in grid order
(the grid is rank-major, so equal ranks tend to share a pack), never above the device budget
(``--gpu-memory``, or the free memory × ``--memory-fraction``). A config that cannot fit even
alone is bad input: the error says how many bytes it needs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Hashable, Sequence

from loradial.errors import LoradialError
from loradial.settings import SweepSettings

GiB = 1024**3
#: The default of ``--memory-fraction`` (declared in ``SweepSettings``).
MEMORY_FRACTION: float = SweepSettings.model_fields["memory_fraction"].default


@dataclasses.dataclass(frozen=True)
class ConfigCost:
    """Bytes of one config: ``shared`` once per pack, ``marginal`` per adapter in the pack."""

    name: str
    shared: int
    marginal: int

    @property
    def alone(self) -> int:
        return self.shared + self.marginal


#: Pack sizes at which ``config_cost`` samples the estimate (the loss's chunking makes it non-linear in K).
PACK_SIZES = (*range(2, 17), 24, 32, 48, 64)


def config_cost(name: str, estimate: Callable[[int], int], sizes: Sequence[int] = (2,)) -> ConfigCost:
    """Split ``estimate(n_adapters) -> bytes`` into shared and per-adapter parts (see module doc).

    ``marginal`` is the largest per-adapter slope ``(est(n) - est(1)) / (n - 1)`` over ``sizes``,
    so a pack of n copies is never planned below ``est(n)`` for any n in ``sizes``."""
    one = int(estimate(1))
    marginal = max(0, max(math.ceil((int(estimate(n)) - one) / (n - 1)) for n in sizes))
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
                "lower --batch-size or --max-len, drop the largest ranks, or raise --gpu-memory / --memory-fraction",
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


def check_fraction(memory_fraction: float) -> float:
    if isinstance(memory_fraction, bool) or not isinstance(memory_fraction, (int, float)) or not 0 < memory_fraction <= 1:
        raise LoradialError(f"--memory-fraction must be in (0, 1], got {memory_fraction!r}",
                            "e.g. --memory-fraction 0.9 (the rest absorbs allocator fragmentation)")
    return float(memory_fraction)


def device_budget(device: str, gpu_memory_gib: float | None = None, memory_fraction: float = MEMORY_FRACTION) -> int | None:
    """Bytes the packer may use on ``device``: ``--gpu-memory`` if given, else free CUDA memory x
    ``memory_fraction`` (counting as free what this process's caching allocator holds but does not
    use), else (CPU) available RAM x ``memory_fraction``, or None when it cannot be read."""
    fraction = check_fraction(memory_fraction)
    if gpu_memory_gib is not None:
        if not gpu_memory_gib > 0:
            raise LoradialError(f"--gpu-memory must be positive, got {gpu_memory_gib}", "give GiB, e.g. --gpu-memory 40")
        return int(gpu_memory_gib * GiB)
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int((free + cached) * fraction)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * fraction)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def device_total(device: str) -> int | None:
    """Total memory of a local CUDA device (the engine sizes its bucket padding from it), else None."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
