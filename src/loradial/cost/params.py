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
from loradial.models.info import ModelInfo, ModuleInfo

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


# --- what PEFT trains besides LoRA factors ----------------------------------------------------------------------
# PEFT 0.21: modules_to_save -> utils/other.py _set_trainable (ModulesToSaveWrapper: a trainable full copy of every
# module whose name ends with an entry); trainable_token_indices -> the same file's TrainableTokensWrapper (a
# (len(indices), width) delta per wrapped layer; a tied output head shares the embedding's); target_parameters ->
# tuners_utils.py _inject_parameters (ParamWrapper on 'module.param' equal to or ending with '.' + entry); bias ->
# tuners/tuners_utils.py _mark_only_adapters_as_trainable ('all': every parameter named *bias*, 'lora_only': the
# biases of the wrapped layers).


def _plain_params(m: ModuleInfo) -> int | None:
    """Parameters of a leaf module from its shape (weight + bias), or None for a raw parameter."""
    if m.kind == "param":
        return None
    return m.d_in * m.d_out + (m.d_out if m.bias else 0)


def _meta_counts(info: ModelInfo, what: str):
    """The model built on the meta device (for counts the shapes do not give), or a clean error."""
    from loradial.models.resolve import build_meta_model

    try:
        return build_meta_model(info.full_config())
    except LoradialError as e:
        raise LoradialError(f"cannot count {what} for {info.name} without building it: {e.message}", e.hint) from None


def modules_to_save_params(info: ModelInfo, modules_to_save: Iterable[str] | None) -> dict[str, int]:
    """Module name -> parameters of its trainable copy, for every module PEFT wraps in a ModulesToSaveWrapper
    (name ending with an entry, plain ``endswith`` as PEFT does). Leaves counted from shapes; other modules
    (containers, norms) from a meta-device build."""
    keys = [k for k in (modules_to_save or []) if k]
    if not keys:
        return {}
    leaves = {m.name: m for m in info.modules if m.kind != "param"}
    names = list(leaves) + [n for n in info.other_modules if n not in leaves]
    hits = [n for n in names if any(n.endswith(k) for k in keys)]
    if not hits:
        raise LoradialError(f"modules_to_save {keys} match no module of {info.name}",
                            "name a module, e.g. lm_head or embed_tokens (a module name ending with the entry)")
    for a in hits:
        for b in hits:
            if b.startswith(a + "."):
                raise LoradialError(f"modules_to_save wraps {a} and also {b} inside it: PEFT cannot do both",
                                    "name only one of them")
    out: dict[str, int] = {}
    meta = None
    for n in hits:
        count = _plain_params(leaves[n]) if n in leaves else None
        if count is None:
            meta = meta if meta is not None else _meta_counts(info, "modules_to_save")
            count = sum(p.numel() for p in meta.get_submodule(n).parameters())
        out[n] = int(count)
    return out


def _input_embedding(info: ModelInfo) -> ModuleInfo | None:
    vocab = info.full_config().get("vocab_size")
    embs = [m for m in info.modules if m.kind == "embedding"]
    return next((m for m in embs if m.d_in == vocab), embs[0] if embs else None)


def trainable_token_params(info: ModelInfo, indices: list[int] | dict[str, list[int]] | None,
                           lora_modules: Iterable[str] = (), modules_to_save: Iterable[str] = ()) -> dict[str, int]:
    """Layer name -> trainable parameters of its TrainableTokens delta (len(indices) × the layer's width).

    A list means the input embedding. On tied models PEFT ties the output head's token adapter to the
    embedding's (no parameters of its own) unless both are named with different indices."""
    if not indices:
        return {}
    emb = _input_embedding(info)
    head = next((m for m in info.modules if m.is_output_head), None)
    if isinstance(indices, (list, tuple)):
        if emb is None:
            raise LoradialError(f"{info.name} has no input embedding for trainable_token_indices")
        layers = {emb.name: list(indices)}
        keys = {emb.name: emb.name}
    else:
        layers, keys = {}, {}
        by_name = {m.name: m for m in info.modules if m.kind != "param"}
        for key, idx in indices.items():
            found = [n for n in list(by_name) + list(info.other_modules) if n.endswith(key)]
            if not found:
                raise LoradialError(f"trainable_token_indices names {key!r}, which matches no module of {info.name}",
                                    "name the embedding (e.g. embed_tokens) or the output head (lm_head)")
            for n in found:
                layers[n], keys[n] = list(idx), key
        if info.tied_embeddings and len(indices) > 1 and emb is not None and head is not None:
            tied_keys = [k for k in indices if emb.name.endswith(k) or head.name.endswith(k) or k in head.name.split(".")]
            if len(tied_keys) >= 2 and all(list(indices[k]) == list(indices[tied_keys[0]]) for k in tied_keys):
                # PEFT skips the tied keys that are names of modules tied to the embedding (the head)
                layers = {n: v for n, v in layers.items() if not (keys[n] in tied_keys and keys[n] == head.name)}
    out: dict[str, int] = {}
    lora, mts = set(lora_modules), list(modules_to_save)
    by_name = {m.name: m for m in info.modules}
    for n, idx in layers.items():
        m = by_name.get(n)
        if m is None or m.kind not in ("embedding", "linear"):
            raise LoradialError(f"trainable_token_indices can only train rows of an embedding or output head, not {n}")
        if n in lora:
            raise LoradialError(f"trainable_token_indices cannot be applied to {n}, which LoRA also targets (PEFT raises)",
                                "drop it from the targets or from trainable_token_indices")
        if any(n.endswith(k) for k in mts):
            raise LoradialError(f"{n} is in modules_to_save and trainable_token_indices: PEFT allows only one",
                                "keep one of them")
        out[n] = len(idx) * (m.d_out if m.kind == "embedding" else m.d_in)
    return out


def parameter_targets(info: ModelInfo, target_parameters: Iterable[str] | None, rank_for, lora_modules: Iterable[str] = ()
                      ) -> list[tuple[ModuleInfo, int]]:
    """(parameter, rank) for every parameter PEFT's ParamWrapper adapts for ``target_parameters``: a key
    'module.param' equal to an entry or ending with '.' + entry. Linear / Conv1D / Embedding weights count as
    2-D parameters (r·(d_in + d_out), as their factors are shaped); ``rank_for(key)`` is PEFT's pattern lookup."""
    keys = [t for t in (target_parameters or []) if t]
    if not keys:
        return []
    lora = set(lora_modules)
    out: list[tuple[ModuleInfo, int]] = []
    for m in info.modules:
        key = m.name if m.kind == "param" else f"{m.name}.weight"
        if m.kind == "conv" or not (key in keys or any(key.endswith(f".{t}") for t in keys)):
            continue
        if m.kind != "param" and m.name in lora:
            raise LoradialError(f"target_parameters names {key}, but LoRA also wraps {m.name} (PEFT raises)",
                                "drop it from the targets or from target_parameters")
        pm = m if m.kind == "param" else ModuleInfo(key, "param", m.d_in, m.d_out, False, False, 1)
        out.append((pm, rank_for(key)))
    if not out:
        raise LoradialError(f"target_parameters {keys} match no parameter loradial can count in {info.name}",
                            "name a weight, e.g. mlp.experts.gate_up_proj or mlp.up_proj.weight")
    return out


def bias_params(info: ModelInfo, bias: str, lora_modules: Iterable[ModuleInfo] = ()) -> int:
    """Base biases PEFT trains with ``bias``: 'none' 0; 'lora_only' the biases of the wrapped layers; 'all' every
    parameter whose name contains 'bias' (counted on a meta-device build: norms' biases are not in the shapes)."""
    if bias in (None, "none"):
        return 0
    if bias == "lora_only":
        return sum(m.d_out for m in lora_modules if m.bias and m.kind != "param")
    if bias == "all":
        meta = _meta_counts(info, "bias='all'")
        return int(sum(p.numel() for n, p in meta.named_parameters() if "bias" in n))
    raise LoradialError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}")
