"""What a LoRA adapter costs: trainable parameters, file size and extra FLOPs, exactly as PEFT builds it.

Per wrapped module of rank r (PEFT 0.21, peft/tuners/lora/layer.py ``update_layer`` of each class):

    linear / GPT-2 conv1d   lora_A (r x d_in) + lora_B (d_out x r)              = r * (d_in + d_out)
    conv (nn.ConvNd)        lora_A conv (in -> r, kernel k) + lora_B conv 1x1   = r * (in * prod(k) + out)
    embedding (n x d)       lora_embedding_A (r x n) + lora_embedding_B (d x r) = r * (n + d)
    param (E experts)       ParamWrapper lora_A (r*E x d_in) + lora_B (d_out x r*E) = r * E * (d_in + d_out)
    + DoRA                  a magnitude vector of d_out (embedding: d)          (Liu et al. 2024, arXiv:2402.09353)
    + lora_bias             a bias on lora_B of d_out (not for embeddings, not with DoRA)

Each function states its formula; ``targeted`` is always a list of (ModuleInfo, rank) pairs.
"""

from __future__ import annotations

from typing import Any, Iterable

from loradial.errors import LoradialError
from loradial.models.info import ModuleInfo

#: bytes per element of the dtypes an adapter is stored in
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def module_params(m: ModuleInfo, r: int, use_dora: bool = False, lora_bias: bool = False) -> int:
    """Trainable parameters PEFT adds for one module at rank r (formulas in the module docstring)."""
    if m.kind == "param":
        if use_dora or lora_bias:
            raise LoradialError(f"PEFT's ParamWrapper ({m.name}) supports neither DoRA nor lora_bias")
        return r * m.experts * (m.d_in + m.d_out)
    if m.kind == "embedding" and lora_bias:
        raise LoradialError(f"PEFT does not support lora_bias on an Embedding ({m.name})", "drop --lora-bias")
    if use_dora and lora_bias:
        raise LoradialError("PEFT does not support lora_bias together with DoRA", "drop one of --dora / --lora-bias")
    return r * (m.d_in + m.d_out) + (m.d_out if use_dora or lora_bias else 0)


def trainable_params(targeted: Iterable[tuple[ModuleInfo, int]], use_dora: bool = False, lora_bias: bool = False) -> int:
    """Sum of ``module_params`` over the targeted modules: equals PEFT's ``get_nb_trainable_parameters()[0]``."""
    return sum(module_params(m, r, use_dora, lora_bias) for m, r in targeted)


def per_type_breakdown(targeted: Iterable[tuple[ModuleInfo, int]], use_dora: bool = False, lora_bias: bool = False) -> list[dict[str, Any]]:
    """One entry per module type (name with layer indices as '*', kind and shape), in model order.

    Each entry: type, kind, d_in, d_out, experts, count, rank (an int, or None when the type's modules
    differ, e.g. through rank_pattern), ranks (sorted distinct), params.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for m, r in targeted:
        key = (m.type_key, m.kind, m.d_in, m.d_out, m.experts)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"type": m.type_key, "kind": m.kind, "d_in": m.d_in, "d_out": m.d_out,
                               "experts": m.experts, "count": 0, "ranks": set(), "params": 0}
        g["count"] += 1
        g["ranks"].add(r)
        g["params"] += module_params(m, r, use_dora, lora_bias)
    out = []
    for g in groups.values():
        ranks = sorted(g.pop("ranks"))
        out.append({**g, "rank": ranks[0] if len(ranks) == 1 else None, "ranks": ranks})
    return out


def adapter_bytes(n_params: int, dtype: str = "fp32") -> int:
    """Tensor payload of the saved adapter: n_params * bytes(dtype). PEFT keeps and saves adapters in fp32
    by default (``autocast_adapter_dtype=True``); the safetensors header adds a few kB on top."""
    try:
        return n_params * DTYPE_BYTES[dtype]
    except KeyError:
        raise LoradialError(f"unknown adapter dtype {dtype!r}", f"one of {', '.join(DTYPE_BYTES)}") from None


def adapter_bytes_by_dtype(n_params: int) -> dict[str, int]:
    return {dt: adapter_bytes(n_params, dt) for dt in DTYPE_BYTES}


def extra_flops_per_token(targeted: Iterable[tuple[ModuleInfo, int]]) -> int:
    """Forward FLOPs per token an unmerged adapter adds (0 once merged into the base weights).

    linear / conv1d: 2·r·(d_in + d_out) (x·Aᵀ then ·Bᵀ, multiply-add = 2 FLOPs); conv: the same per output
    position; embedding: 2·r·d (the A lookup is a gather, no FLOPs); param (ParamWrapper): 0 per token —
    PEFT folds ΔW into the expert weights once per forward (see ``weight_side_flops``).
    Training adds about twice this again in the backward pass (input and A/B gradients).
    """
    total = 0
    for m, r in targeted:
        if m.kind == "embedding":
            total += 2 * r * m.d_out
        elif m.kind != "param":
            total += 2 * r * (m.d_in + m.d_out)
    return total


def weight_side_flops(targeted: Iterable[tuple[ModuleInfo, int]], use_dora: bool = False) -> int:
    """FLOPs per forward pass (independent of the token count) spent forming weight-sized products.

    param (ParamWrapper, E experts): ΔW = B·A per expert, 2·E·r·d_in·d_out. DoRA: the row norm of
    W + s·B·A needs B·A, 2·r·d_in·d_out per module (PEFT DoraLinearLayer.get_weight_norm).
    """
    total = 0
    for m, r in targeted:
        if m.kind == "param":
            total += 2 * m.experts * r * m.d_in * m.d_out
        elif use_dora:
            total += 2 * r * m.d_in * m.d_out
    return total
