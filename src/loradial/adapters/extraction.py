"""A LoRA adapter extracted from a full fine-tune (``loradial resize --from-full``), like mergekit's extract-lora.

Per module, ΔW = W_ft − W_base (``full_update.delta_weight``, PEFT's linear orientation) has the SVD
U S Vᵀ; its best rank-k approximation (Eckart & Young 1936) is U_k S_k V_kᵀ. With PEFT's scale
s = lora_alpha / k the factors

    B = U_k · diag(√(S_k / s))   (d_out × k),      A = diag(√(S_k / s)) · V_kᵀ   (k × d_in)

give s·B·A = U_k S_k V_kᵀ exactly (``spectrum.rank_k_factors``; lora_alpha defaults to k, so s = 1 and
B = U_k√S_k, A = √S_k V_kᵀ). k is a fixed rank (capped at min(d_in, d_out)) or, per module, the smallest
rank keeping ``energy`` of Σσ². Modules whose ΔW is 0 are left out. The adapter is written by
``format.save_adapter`` (adapter_config.json + adapter_model.safetensors): target_modules name exactly the
extracted modules, rank_pattern / alpha_pattern appear when ranks differ, fan_in_fan_out for GPT-2 Conv1D.
Changed norms and biases are not LoRA weights and are not carried (``full_update.changed_other_params``).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from loradial.adapters.format import Adapter, LoraModule, patterns_for, save_adapter
from loradial.adapters.full_update import (BASE_HINT, changed_other_params, module_deltas, module_pairs,
                                           resolve_device)
from loradial.adapters.spectrum import energy_rank, rank_k_factors
from loradial.adapters.surgery import ResizeResult
from loradial.errors import LoradialError
from loradial.io import check_out_not_overlapping
from loradial.models.info import ModuleInfo, type_key
from loradial.spec import scaling


def extract_factors(delta: Any, k: int | None = None, energy: float | None = None, alpha: float | None = None,
                    dtype: Any = None):
    """(A (k × d_in), B (d_out × k), S (all singular values, float64 numpy), alpha) with
    (alpha / k) · B @ A the best rank-k approximation of the dense ``delta`` (d_out × d_in), from one SVD.
    k is given (capped at min(d_in, d_out)) or, with ``energy``, the smallest rank keeping that fraction of
    Σσ² (at least 1); alpha defaults to k (scale 1)."""
    import torch

    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    sigma = S.double().cpu().numpy()
    if energy is not None:
        k = max(1, energy_rank(sigma, energy))
    if k is None or k < 1:
        raise LoradialError(f"rank must be ≥ 1, got {k}", "e.g. --rank 16")
    k = min(k, S.shape[0])
    alpha = float(k) if alpha is None else float(alpha)
    A, B = rank_k_factors(U[:, :k], S[:k], Vh[:k], k, scaling(k, alpha, False), dtype or torch.float32)
    return A.cpu(), B.cpu(), sigma, alpha


def target_modules_for(names: list[str], candidates: list[ModuleInfo]) -> list[str]:
    """PEFT target_modules selecting exactly ``names`` among ``candidates``: their leaf names when every
    candidate with such a leaf is extracted (short, like PEFT's own configs), else the full names."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    chosen = set(names)
    hit = {c.name for c in candidates if any(c.name == leaf or c.name.endswith("." + leaf) for leaf in leaves)}
    return leaves if hit == chosen else sorted(names)


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def adapter_config(modules: dict[str, LoraModule], target_modules: list[str], base: str | None) -> dict[str, Any]:
    """The adapter_config.json PEFT would write: r / lora_alpha / patterns reproducing each module's own (r, alpha)."""
    import peft

    pat = patterns_for(modules, use_rslora=False)
    cfg = peft.LoraConfig(
        task_type="CAUSAL_LM", base_model_name_or_path=base, target_modules=target_modules, r=pat["r"],
        lora_alpha=pat["lora_alpha"], rank_pattern=pat["rank_pattern"], alpha_pattern=pat["alpha_pattern"],
        lora_dropout=0.0, bias="none", fan_in_fan_out=any(m.kind == "conv1d" for m in modules.values()),
    )
    return {k: _plain(v) for k, v in cfg.to_dict().items()}


def resize_from_full(
    model: str | Path,
    base: str | Path,
    out: str | Path,
    rank: int | None = None,
    energy: float | None = None,
    alpha: float | None = None,
    include_embeddings: bool = False,
    device: str | None = None,
    dtype: str = "float64",
    overwrite: bool = False,
    progress: bool = False,
) -> ResizeResult:
    """Extract a rank-``rank`` (or per module: ``energy``) LoRA adapter from the full update W_ft − W_base and
    save it as a PEFT adapter at ``out``; ``alpha`` (default: each module's rank, so s = 1) sets lora_alpha."""
    import torch

    if (rank is None) == (energy is None):
        raise LoradialError("with --from-full give exactly one of --rank, --energy", "e.g. --rank 16")
    if energy is not None and not 0 < energy <= 1:
        raise LoradialError(f"--energy must be in (0, 1], got {energy}", "e.g. --energy 0.9")
    if rank is not None and rank < 1:
        raise LoradialError(f"--rank must be ≥ 1, got {rank}", "e.g. --rank 16")
    if alpha is not None and not alpha > 0:
        raise LoradialError(f"--alpha must be > 0, got {alpha}", "e.g. --alpha 16 (default: the rank, so scale 1)")
    candidates, _skipped, _info = module_pairs(model, base, include_embeddings)
    check_out_not_overlapping(out, [("fine-tuned model", model), ("base model", base)])
    dev = resolve_device(device)
    new: dict[str, LoraModule] = {}
    ranks: dict[str, int] = {}
    per_type: dict[str, dict[str, Any]] = {}
    covered: set[str] = set()
    zero: list[str] = []
    kept_all = total_all = 0.0
    for m, delta, _wb, key in module_deltas(model, base, candidates, dtype, dev, progress):
        if delta is None:
            continue
        covered.add(key)
        if not bool(delta.any()):
            zero.append(m.name)
            continue
        A, B, S, a = extract_factors(delta, rank, energy, alpha, torch.float32)
        k = A.shape[0]
        kind = m.kind
        new[m.name] = LoraModule(m.name, kind, A, B, scaling(k, a, False), k, int(a) if a.is_integer() else a)
        ranks[m.name] = k
        e = S**2
        kept, total = float(e[:k].sum()), float(e.sum())
        kept_all, total_all = kept_all + kept, total_all + total
        g = per_type.setdefault(type_key(m.name), {"kept": 0.0, "total": 0.0, "ranks": [], "params_before": 0, "params_after": 0})
        g["kept"] += kept
        g["total"] += total
        g["ranks"].append(k)
        g["params_before"] += m.d_in * m.d_out
        g["params_after"] += k * (m.d_in + m.d_out)
        del delta
    if not new:
        raise LoradialError("the fine-tuned model's linear weights equal --base's: there is no update to extract", BASE_HINT)
    names = list(new)
    config = adapter_config(new, target_modules_for(names, candidates), str(base))
    save_adapter(Adapter(config, new), out, overwrite=overwrite)
    other, _unmatched = changed_other_params(model, base, covered)
    notes = [f"extracted from the full update of {model} over {base} (truncated SVD, {dtype} on {dev})"]
    if zero:
        notes.append(f"{len(zero)} module(s) did not change and are not targeted (e.g. {zero[0]})")
    if other:
        notes.append(f"{len(other)} other changed parameter(s) are not carried (e.g. {other[0]}): norms, biases, "
                     "embeddings are not LoRA weights" + ("" if include_embeddings else " (see --include-embeddings)"))
    per_type_out = {t: {"retained_energy": 1.0 if g["total"] == 0 else g["kept"] / g["total"], "min_rank": min(g["ranks"]),
                        "max_rank": max(g["ranks"]), "params_before": g["params_before"], "params_after": g["params_after"]}
                    for t, g in per_type.items()}
    return ResizeResult(str(out), "rank" if rank is not None else "energy", ranks,
                        1.0 if total_all == 0 else min(1.0, kept_all / total_all), per_type_out,
                        sum(g["params_before"] for g in per_type.values()), sum(g["params_after"] for g in per_type.values()),
                        False, notes)
