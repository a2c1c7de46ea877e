"""Packing of the sweep's ``full`` variant (full fine-tuning): its memory cost, its own pack, the fit check.

A full config is a pack of one (``pack_group``), costs ``cost.memory.estimate_full_memory`` (fp32 weights,
gradients and AdamW states, activations; nothing per extra member), and is refused before anything is
written when that does not fit the device budget (``check_full_fits``). Training: ``full_segment``.
"""

from __future__ import annotations

from typing import Callable

from loradial.errors import LoradialError
from loradial.settings import SweepSettings


def is_full(settings: SweepSettings, name: str) -> bool:
    return any(c.name == name and c.variant == "full" for c in settings.configs)


def pack_group(settings: SweepSettings) -> Callable[[str], str]:
    """``make_packs``'s group key: each full config alone, every adapter config together."""
    full = {c.name for c in settings.configs if c.variant == "full"}
    return lambda name: name if name in full else ""


def full_cost(name: str, info, train, seq_len: int):
    """Packer cost of a full config: the whole estimate is its own (shared), nothing per extra member."""
    from loradial.cost.memory import estimate_full_memory
    from loradial.sweeps.pack import ConfigCost

    dtype = "fp32" if train.dtype == "fp32" else "bf16"
    est = estimate_full_memory(info, batch_size=train.batch_size, seq_len=seq_len, dtype=dtype,
                               gradient_checkpointing=train.gradient_checkpointing)
    return ConfigCost(name, int(est.total_bytes), 0)


def check_full_fits(settings: SweepSettings) -> None:
    """Refuse (exit 2) a full config the device budget cannot hold, naming what it needs."""
    from loradial.sweeps.pack import fmt_bytes

    budget = settings.budget_bytes
    if settings.train.load_in_4bit and any(c.variant == "full" for c in settings.configs):
        raise LoradialError("full fine-tuning cannot train a 4-bit base", "drop full from --variants or --load-in-4bit")
    for c in settings.costs:
        if budget is not None and is_full(settings, c.name) and c.shared + c.marginal > budget:
            raise LoradialError(
                f"full fine-tuning ({c.name}) needs about {fmt_bytes(c.shared + c.marginal)} (fp32 weights, gradients and "
                f"AdamW states, activations), more than the {fmt_bytes(budget)} available",
                "drop full from --variants, or turn on --gradient-checkpointing, lower --batch-size / --max-len, "
                "or raise --gpu-memory")
