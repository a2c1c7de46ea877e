"""Act on a trained adapter: resize (best rank-k), rescale (strength / scaling rule), merge into the base.

resize — per module ΔW = s·B·A is replaced by its best rank-k approximation (Eckart–Young, through
``spectrum.best_rank_k``), k from a fixed rank, an energy threshold, or a parameter budget
(``spectrum.allocate_ranks``). The scale s of each module is kept: alpha_new = alpha·k/r (LoRA) or
alpha·√(k/r) (rsLoRA), written as ``rank_pattern`` / ``alpha_pattern`` so PEFT rebuilds exactly
the truncated ΔW; √σ goes into each factor.

rescale — ΔW ← c·ΔW by editing alpha (s = alpha/r or alpha/√r is linear in alpha), or with
``fold`` by multiplying lora_B (and its bias, which PEFT also scales by s). Switching LoRA ↔ rsLoRA
keeps s per module (alpha' = s·√r or s·r), so outputs are identical. DoRA's output
m ⊙ (W + sBA)/‖W + sBA‖ is not linear in s, so scaling a DoRA adapter is refused unless forced.

merge — W' = W + s·B·A (transposed for Conv1D and embeddings), computed in float32 and rounded
once; DoRA: W' = (m/‖V‖_row) ⊙ V with V = W + s·B·A (linear orientation), as PEFT's
``merge_and_unload``; lora_bias: b' = b + s·b_B; ``modules_to_save`` copies replace their modules.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from loradial.adapters import features
from loradial.adapters.format import Adapter, LoraModule, load_adapter, replace_modules, save_adapter
from loradial.errors import LoradialError
from loradial.models.info import type_key
from loradial.result import Result
from loradial.spec import alpha_for_same_scale, scaling
from loradial.adapters.spectrum import allocate_ranks, best_rank_k, energy_rank, factored_svd, rank_k_factors


def _load(adapter: str | Path | Adapter, allow_pickle: bool, verb: str) -> Adapter:
    """The adapter (read from disk unless given), with every config field one ``verb`` supports (``features``)."""
    if isinstance(adapter, Adapter):
        features.check(adapter.config, verb)
        return adapter
    return load_adapter(adapter, allow_pickle=allow_pickle, verb=verb)


# --- resize ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ResizeResult(Result):
    out: str
    mode: str
    ranks: dict[str, int]
    retained_energy: float
    per_type: dict[str, dict[str, Any]]
    params_before: int
    params_after: int
    approximate: bool
    notes: list[str]
    warnings: list[str] = dataclasses.field(default_factory=list)
    """E.g. modules left unchanged because the requested rank is not below their r."""


def _unchanged_check(mods: list[LoraModule], ks: list[int], rank: int | None, energy: float | None,
                     budget: int | None) -> list[str]:
    """Refuse a resize that would cut nothing (every k ≥ its module's r); warn when --rank leaves some
    modules as they are (a rank_pattern may mix ranks)."""
    same = [m for m, k in zip(mods, ks) if k >= m.r]
    if not same:
        return []
    rs = sorted({m.r for m in mods})
    r_text = f"rank {rs[0]}" if len(rs) == 1 else f"ranks {rs[0]}–{rs[-1]}"
    if len(same) == len(mods):
        if rank is not None:
            msg, hint = f"--rank {rank} is not below the adapter's {r_text}", f"the adapter is already {r_text}; pick --rank below {rs[-1]}"
        elif energy is not None:
            msg, hint = f"keeping {energy * 100:g}% of each module's energy needs its full rank (the adapter's {r_text})", "lower --energy"
        else:
            msg = f"--budget {budget:,} covers the whole adapter ({sum(m.n_params for m in mods):,} parameters, {r_text})"
            hint = "give a smaller --budget"
        raise LoradialError(f"nothing to resize: {msg}", hint)
    if rank is None:
        return []
    return [f"{len(same)} of {len(mods)} modules already have rank ≤ {rank} and are copied unchanged "
            f"(e.g. {same[0].name}, r={same[0].r})"]


def truncate_module(m: LoraModule, k: int, use_rslora: bool, svd: Any = None) -> LoraModule:
    """``m`` with ΔW replaced by its best rank-k approximation, the same scale s and alpha adjusted.
    k ≥ r returns ``m`` itself (nothing to cut). ``svd``: a precomputed ``factored_svd(m.A, m.B,
    m.scale, vectors=True)`` to reuse for several k."""
    if k >= m.r:
        return m
    alpha = alpha_for_same_scale(m.alpha, m.r, k, use_rslora)
    if float(alpha).is_integer():
        alpha = int(alpha)
    s = scaling(k, alpha, use_rslora)
    if svd is None:
        A, B = best_rank_k(m.A, m.B, m.scale, k, new_scale=s)
    else:
        A, B = rank_k_factors(*svd, k, s, m.A.dtype)
    return LoraModule(m.name, m.kind, A, B, s, k, alpha, m.magnitude, m.bias)


def choose_ranks(spectra: list[np.ndarray], modules: list[LoraModule], rank: int | None, energy: float | None,
                 budget: int | None) -> list[int]:
    """Per-module target ranks for exactly one of ``rank`` / ``energy`` / ``budget``."""
    given = [x is not None for x in (rank, energy, budget)]
    if sum(given) != 1:
        raise LoradialError("give exactly one of --rank, --energy, --budget", "e.g. --rank 8")
    if rank is not None:
        if rank < 1:
            raise LoradialError(f"--rank must be ≥ 1, got {rank}", "e.g. --rank 8")
        return [min(rank, m.r) for m in modules]
    if energy is not None:
        if not 0 < energy <= 1:
            raise LoradialError(f"--energy must be in (0, 1], got {energy}", "e.g. --energy 0.9")
        return [max(1, energy_rank(s, energy)) for s in spectra]
    costs = [m.d_in + m.d_out for m in modules]
    if budget < sum(costs):
        raise LoradialError(f"--budget {budget:,} is below one rank per module ({sum(costs):,} parameters)",
                            f"give at least {sum(costs):,}")
    return allocate_ranks(spectra, costs, budget, min_rank=1, max_ranks=[m.r for m in modules]).ranks


def resize(
    adapter: str | Path | Adapter,
    out: str | Path,
    rank: int | None = None,
    energy: float | None = None,
    budget: int | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> ResizeResult:
    """Best rank-k approximation of every module's ΔW (fixed k, energy threshold, or parameter budget),
    written as a PEFT adapter whose rank_pattern / alpha_pattern reproduce exactly that ΔW."""
    ad = _load(adapter, allow_pickle, features.RESIZE)
    mods = list(ad.modules.values())
    spectra = [factored_svd(m.A, m.B, m.scale) for m in mods]
    ks = choose_ranks(spectra, mods, rank, energy, budget)
    warnings = _unchanged_check(mods, ks, rank, energy, budget)
    new = {m.name: truncate_module(m, k, ad.use_rslora) for m, k in zip(mods, ks)}
    result_ad = replace_modules(ad, new)
    save_adapter(result_ad, out, overwrite=overwrite)
    per_type: dict[str, dict[str, Any]] = {}
    kept_all = total_all = 0.0
    for m, s, k in zip(mods, spectra, ks):
        e = s**2
        g = per_type.setdefault(type_key(m.name), {"kept": 0.0, "total": 0.0, "ranks": [], "params_before": 0, "params_after": 0})
        g["kept"] += float(e[:k].sum())
        g["total"] += float(e.sum())
        g["ranks"].append(min(k, m.r))
        g["params_before"] += m.n_params
        g["params_after"] += new[m.name].n_params
        kept_all += float(e[:k].sum())
        total_all += float(e.sum())
    per_type_out = {
        t: {"retained_energy": 1.0 if g["total"] == 0 else g["kept"] / g["total"], "min_rank": min(g["ranks"]),
            "max_rank": max(g["ranks"]), "params_before": g["params_before"], "params_after": g["params_after"]}
        for t, g in per_type.items()
    }
    notes = []
    if ad.use_dora:
        notes.append("DoRA: the magnitude vectors are kept; the result is the best rank-k s·B·A, but DoRA renormalizes "
                     "W + s·B·A per row, so the adapter's output is approximated, not optimally")
    mode = "rank" if rank is not None else ("energy" if energy is not None else "budget")
    return ResizeResult(str(out), mode, {m.name: k for m, k in zip(mods, ks)},
                        1.0 if total_all == 0 else min(1.0, kept_all / total_all), per_type_out,
                        ad.n_params, result_ad.n_params, ad.use_dora, notes, warnings)


# --- rescale -----------------------------------------------------------------------------------
@dataclasses.dataclass
class RescaleResult(Result):
    out: str
    mode: str
    fold: bool
    use_rslora: bool
    factors: dict[str, float]
    """ΔW multiplier per module (1.0 for --to: outputs identical)."""
    outputs_identical: bool
    notes: list[str]


def rescale(
    adapter: str | Path | Adapter,
    out: str | Path,
    scale: float | None = None,
    alpha: float | None = None,
    to: str | None = None,
    fold: bool = False,
    force: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> RescaleResult:
    """Scale ΔW by ``scale``, set every module's alpha to ``alpha``, or switch the scaling rule ``to``
    'lora' / 'rslora' with identical outputs — by editing lora_alpha / alpha_pattern, or with
    ``fold`` by multiplying lora_B instead."""
    if sum(x is not None for x in (scale, alpha, to)) != 1:
        raise LoradialError("give exactly one of --scale, --alpha, --to", "e.g. --scale 0.5")
    for what, v in (("--scale", scale), ("--alpha", alpha)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise LoradialError(f"{what} must be a positive number, got {v}", "e.g. 0.5")
    if to is not None and to not in ("lora", "rslora"):
        raise LoradialError(f"--to must be 'lora' or 'rslora', got {to!r}",
                            "--to rslora switches to alpha/√r scaling, --to lora to alpha/r (outputs identical)")
    ad = _load(adapter, allow_pickle, features.RESCALE)
    if ad.use_dora and to is None and not force:
        raise LoradialError(
            "refusing to rescale a DoRA adapter: its output m ⊙ (W + s·B·A)/‖W + s·B·A‖ is not linear in s, so "
            "scaling s does not scale the change it makes",
            "pass --force to scale s anyway, or use --to (which keeps s and outputs identical)",
        )
    rs_new = ad.use_rslora if to is None else (to == "rslora")
    new: dict[str, LoraModule] = {}
    factors: dict[str, float] = {}
    for m in ad.modules.values():
        if scale is not None:
            c, a_new = scale, m.alpha * scale
        elif alpha is not None:
            c, a_new = alpha / m.alpha, alpha
        else:  # same s under the new rule
            c, a_new = 1.0, (m.scale * math.sqrt(m.r) if rs_new else m.scale * m.r)
        factors[m.name] = c
        if fold:  # alpha stays; lora_B (and bias) absorb the change of s
            s_new = scaling(m.r, m.alpha, rs_new)
            f = c * m.scale / s_new
            B = (m.B.double() * f).to(m.B.dtype)
            bias = None if m.bias is None else (m.bias.double() * f).to(m.bias.dtype)
            new[m.name] = LoraModule(m.name, m.kind, m.A, B, s_new, m.r, m.alpha, m.magnitude, bias)
        else:
            a_new = _round_alpha(a_new)
            new[m.name] = LoraModule(m.name, m.kind, m.A, m.B, scaling(m.r, a_new, rs_new), m.r, a_new, m.magnitude, m.bias)
    res = replace_modules(ad, new, use_rslora=rs_new)
    save_adapter(res, out, overwrite=overwrite)
    notes = []
    if ad.use_dora and to is None:
        notes.append("DoRA (forced): s was scaled, but the output change is not scaled by the same factor")
    mode = "scale" if scale is not None else ("alpha" if alpha is not None else f"to-{to}")
    identical = to is not None
    return RescaleResult(str(out), mode, fold, rs_new, factors, identical, notes)


def _round_alpha(a: float) -> float:
    """Snap alphas within 1e-12 of an integer (e.g. 16·0.25·4) to it, so configs stay readable."""
    r = round(a)
    return int(r) if abs(a - r) <= 1e-12 * max(1.0, abs(a)) else a


# --- merge -------------------------------------------------------------------------------------
@dataclasses.dataclass
class MergeResult(Result):
    out: str
    n_modules: int
    dtype: str
    untied_embeddings: bool
    replaced_modules: list[str]
    """Modules with tensors from the adapter file: modules_to_save copies, trained biases and token rows, saved
    embedding layers."""
    files: list[str]
    notes: list[str]


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
                    "chat_template.json", "spiece.model", "sentencepiece.bpe.model")


def merged_weight(base_weight: Any, m: LoraModule, kind: str):
    """The merged weight (same layout and dtype as ``base_weight``), computed in float32."""
    import torch

    W = base_weight.detach().float()
    W_lin = W if kind == "linear" else W.T
    V = W_lin + m.scale * (m.B.float() @ m.A.float())
    if m.magnitude is not None:  # DoRA
        V = (m.magnitude.float() / torch.linalg.vector_norm(V, dim=1))[:, None] * V
    return (V if kind == "linear" else V.T).to(base_weight.dtype).contiguous()


def _tied(model) -> bool:
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    return inp is not None and outp is not None and inp.weight is outp.weight


def _untie(model) -> None:
    """Give the output head its own copy of the (tied) weight."""
    import torch.nn as nn

    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)


def _untie_config(model) -> None:
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def check_shard_size(size: str) -> None:
    """``--max-shard-size``: '<number><KB|MB|GB|TB>', positive (what huggingface_hub's shard splitter parses)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]B)\s*", str(size), re.IGNORECASE)
    if m is None or float(m.group(1)) * 1000 ** "KMGT".index(m.group(2)[0].upper()) * 1000 < 1:
        raise LoradialError(f"--max-shard-size must be a positive size such as 5GB, got {size!r}",
                            "e.g. --max-shard-size 5GB or 500MB (units KB, MB, GB, TB)")


def merge(
    adapter: str | Path | Adapter,
    model: str | Path,
    out: str | Path,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> MergeResult:
    """Fold the adapter into the base weights and save the merged model (sharded safetensors, config,
    tokenizer if present), equal to PEFT's ``merge_and_unload``.

    Tied embeddings: if the adapter changes the input embedding or the output head while they
    share one tensor, they are untied (the head keeps the base weights, ``tie_word_embeddings``
    becomes false) so the merged model computes what base + adapter computes; this is reported.
    ``trust_remote_code``: let ``from_pretrained`` run the model directory's own code (off unless asked).
    """
    import torch

    from loradial.adapters.evaluate import apply_saved, load_base_model, locate
    from loradial.io import atomic_dir, check_finite, check_out_not_overlapping, check_output_dir

    ad = _load(adapter, allow_pickle, features.MERGE)
    check_out_not_overlapping(out, [("input adapter", ad.source), ("base model", model)])
    check_shard_size(max_shard_size)
    check_output_dir(out, overwrite)
    from loradial.models.hub import resolve_model

    model = resolve_model(model)  # a Hub id's snapshot: its tokenizer files are copied below too
    base = load_base_model(model, device="cpu", trust_remote_code=trust_remote_code)
    notes: list[str] = []
    located = {name: locate(base, m) for name, m in ad.modules.items()}
    was_tied = _tied(base)
    # modules_to_save copies, trained biases and token rows, saved embedding layers (format.saved_tensors)
    _restore, replaced = apply_saved(base, ad)
    head, emb = base.get_output_embeddings(), base.get_input_embeddings()
    lora_on = {id(mod) for mod, _ in located.values()}
    if _tied(base) and (id(emb) in lora_on or id(head) in lora_on):
        _untie(base)
    untied = was_tied and not _tied(base)
    if untied:
        _untie_config(base)
        notes.append("input embedding and output head were tied and the adapter changes one of them: untied them "
                     "(tie_word_embeddings=false) so the head is not silently changed")
    with torch.no_grad():
        for name, m in ad.modules.items():
            mod, kind = located[name]
            if m.bias is not None:
                if getattr(mod, "bias", None) is None:
                    raise LoradialError(f"cannot merge lora_bias into {name}: the base layer has no bias",
                                        "PEFT cannot either; keep the adapter unmerged")
                b = (mod.bias.float() + m.scale * m.bias.float()).to(mod.bias.dtype)
                check_finite({f"{name}.bias": b}, "the merged model", "the adapter's bias overflows the base's dtype")
                mod.bias.copy_(b)
            w = merged_weight(mod.weight, m, kind)
            check_finite({f"{name}.weight": w}, "the merged model", "the adapter's ΔW overflows the base weights' dtype")
            mod.weight.copy_(w)
    mts_modules = sorted({n.rsplit(".", 1)[0] for n in replaced})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        base.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        for src in (Path(model).expanduser(), ad.source):  # the adapter's tokenizer (if any) wins
            if src is None:
                continue
            for fname in _TOKENIZER_FILES:
                if (Path(src) / fname).is_file():
                    shutil.copy2(Path(src) / fname, tmp / fname)
        files = sorted(p.name for p in tmp.iterdir())
    return MergeResult(str(out), len(ad.modules), str(next(base.parameters()).dtype).replace("torch.", ""), untied,
                       mts_modules, files, notes)
