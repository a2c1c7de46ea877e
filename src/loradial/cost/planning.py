"""`loradial plan`: what rank r on these targets costs — exact, offline, without weights.

For every (target set x rank) the plan lists the modules PEFT would wrap (targets.py, PEFT's rules
exactly), their trainable parameters per module type (cost.py: r·(d_in + d_out) per linear, r·(n + d)
per embedding, + d_out for DoRA), the adapter's file size per dtype, the forward FLOPs an unmerged
adapter adds per token, and the estimated peak training memory (memory.py) with its breakdown.
Counts come from module shapes, never from running PEFT, so a 405B model plans in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from loradial.cost import params as cost
from loradial.cost.memory import check_memory_args, estimate_full_memory, estimate_training_memory, full_param_count
from loradial.errors import LoradialError
from loradial.models.info import ModelInfo
from loradial.models.resolve import inspect_model
from loradial.result import Result
from loradial.spec import LoraSpec, scaling
from loradial.models.targets import match, resolve_targets

DEFAULT_MODEL = "llama-2-7b"
DEFAULT_RANKS = (8, 16, 64, 256)
DEFAULT_TARGETS = ("attention", "all-linear")

FORMULAS = {
    "trainable_params": "sum over wrapped modules: r*(d_in+d_out) (linear, conv1d, conv with d_in=in*prod(kernel)); "
    "r*(n+d) (embedding); r*E*(d_in+d_out) (MoE experts, PEFT ParamWrapper); +d_out with DoRA or lora_bias",
    "trainable_percent": "100 * trainable_params / total base params",
    "adapter_bytes": "trainable_params * bytes per element (tensor payload; PEFT saves fp32 by default)",
    "extra_flops_per_token": "forward, unmerged: 2*r*(d_in+d_out) per linear/conv1d/conv module, 2*r*d per embedding, "
    "0 per token for ParamWrapper experts; 0 once merged; training adds ~2x this in the backward pass",
    "weight_side_flops_per_step": "per forward pass: 2*E*r*d_in*d_out per ParamWrapper (delta of the expert weights), "
    "2*r*d_in*d_out per DoRA module (weight norm)",
    "full_peak_memory_bytes": "full fine-tuning: fp32 weights 4N + gradients 4N + AdamW states 8N + activations "
    "(every layer from its input, each linear's input, autocast weight copies) + loss (cost.memory.estimate_full_memory)",
    "auxiliary_params": "also trainable (included in trainable_params): every parameter of each modules_to_save copy; "
    "len(indices)*width per trainable_token_indices layer (a tied head shares the embedding's); the base biases "
    "of bias='lora_only' (wrapped layers) or 'all' (every *bias* parameter)",
}


@dataclasses.dataclass
class PlanRow:
    """One (target set, rank) combination."""

    rank: int
    targets: str
    target_modules: str | list[str]
    lora_alpha: float
    scaling: float
    trainable_params: int
    trainable_percent: float
    n_modules: int
    modules: list[dict[str, Any]]
    adapter_bytes: dict[str, int]
    peak_memory_bytes: int | None
    memory_breakdown: dict[str, int]
    extra_flops_per_token: int
    weight_side_flops_per_step: int
    target_parameters: list[str]
    peft_config: dict[str, Any]
    unused_pattern_keys: dict[str, list[str]]
    use_dora: bool = False
    auxiliary_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Trainable parameters besides LoRA factors (included in trainable_params): modules_to_save {module: n},
    trainable_tokens {layer: n}, bias n."""


@dataclasses.dataclass
class PlanResult(Result):
    model: dict[str, Any]
    settings: dict[str, Any]
    rows: list[PlanRow]
    formulas: dict[str, str]
    notes: list[str]
    full: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Full fine-tuning as the reference: {"variant": "full", "trainable_params", "peak_memory_bytes" (at the
    plan's checkpointing setting), "peak_memory_bytes_no_checkpointing", "peak_memory_bytes_checkpointing",
    "memory_breakdown", ...} (``cost.memory.estimate_full_memory``: fp32 weights, gradients and AdamW states)."""


# --- argument parsing shared by the CLI and API callers ------------------------------------------------
def parse_pattern(text: str | dict | None, cast: type = int, what: str = "rank_pattern") -> dict[str, Any]:
    """'q_proj=4,v_proj=8' or a JSON object -> {key: value}; keys are PEFT regex keys."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        items = text.items()
    elif text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoradialError(f"{what} is not valid JSON: {e}", 'use e.g. \'{"q_proj": 4}\' or q_proj=4,v_proj=8') from None
        if not isinstance(obj, dict):
            raise LoradialError(f"{what} JSON must be an object", 'use e.g. \'{"q_proj": 4}\'')
        items = obj.items()
    else:
        items = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, value = part.rpartition("=")
            if not sep or not key:
                raise LoradialError(f"{what} entry {part!r} is not key=value", "use e.g. q_proj=4,v_proj=8 or a JSON object")
            items.append((key.strip(), value.strip()))
    out: dict[str, Any] = {}
    for key, value in items:
        try:
            num = float(value)
            if cast is int and (isinstance(value, bool) or not num.is_integer()):
                raise ValueError
            out[str(key)] = int(num) if cast is int else num
        except (TypeError, ValueError):
            kind = "a positive integer" if cast is int else "a positive number"
            raise LoradialError(f"{what}[{key!r}] must be {kind}, got {value!r}") from None
    return out


def parse_layers(text: str | Sequence[int] | int | None) -> list[int] | None:
    """'0,1,2' or '0-3,8' -> [0, 1, 2, 3, 8] (PEFT layers_to_transform)."""
    if text is None or text == "":
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        text = [text]
    if not isinstance(text, str):
        layers = list(text)
    else:
        layers = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, dash, hi = part.partition("-")
            try:
                first, last = (int(lo), int(hi)) if dash else (int(part), int(part))
            except ValueError:
                raise LoradialError(f"invalid layer {part!r} in {text!r}", "use e.g. --layers 0,1,2 or --layers 0-7") from None
            if last < first:
                raise LoradialError(f"layer range {part!r} is reversed", f"write it low-high, e.g. --layers {last}-{first}")
            layers += range(first, last + 1)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise LoradialError(f"layer indices must be non-negative integers, got {layers}", "use e.g. --layers 0,1,2")
    if not layers:
        raise LoradialError(f"no layer given in {text!r}", "use e.g. --layers 0,1,2 or --layers 0-7, or leave --layers out")
    return sorted(set(layers))


def _span(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    runs: list[list[int]] = []
    for i in sorted(set(layers)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def check_layers(layers: list[int] | None, info: ModelInfo) -> None:
    """Refuse layer indices the model does not have (PEFT would silently adapt nothing there)."""
    n = info.num_layers
    if layers is None or not n:
        return
    outside = [i for i in layers if i >= n]
    if outside:
        plural = "layers" if len(outside) > 1 else "layer"
        verb = "are" if len(outside) > 1 else "is"
        raise LoradialError(f"{plural} {_span(outside)} {verb} outside 0-{n - 1} ({info.name} has {n} layers)",
                            f"use --layers within 0-{n - 1}, e.g. --layers 0-{min(n - 1, 3)}")


def parse_exclude(text: str | list[str] | None) -> str | list[str] | None:
    """PEFT exclude_modules from CLI syntax: 'v_proj,k_proj' -> a name list, 're:<regex>' -> a regex string."""
    if not text:
        return None
    if not isinstance(text, str):
        return list(text)
    if text.startswith("re:"):
        return text[3:]
    return [e.strip() for e in text.split(",") if e.strip()] or None


def _check_ranks(ranks: Sequence[int]) -> list[int]:
    ranks = [ranks] if isinstance(ranks, int) else list(ranks)
    if not ranks:
        raise LoradialError("no rank given", "use e.g. --rank 8,16,64")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoradialError(f"rank must be a positive integer, got {r!r}", "use e.g. --rank 8,16,64")
    return list(dict.fromkeys(ranks))


# --- the verb ----------------------------------------------------------------------------------------------
def plan(
    model: str | ModelInfo = DEFAULT_MODEL,
    ranks: Sequence[int] | int = DEFAULT_RANKS,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    *,
    alpha: float | None = None,
    use_dora: bool = False,
    use_rslora: bool = False,
    lora_bias: bool = False,
    layers: str | Sequence[int] | int | None = None,
    layers_pattern: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    rank_pattern: str | dict[str, int] | None = None,
    alpha_pattern: str | dict[str, float] | None = None,
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: str = "bf16",
    quant: str = "none",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    modules_to_save: str | Sequence[str] | None = None,
    trainable_token_indices: str | Sequence[int] | dict[str, Sequence[int]] | None = None,
    target_parameters: str | Sequence[str] | None = None,
    bias: str = "none",
    full_optim_dtype: str = "fp32",
) -> PlanResult:
    """Exact LoRA cost for every (target set x rank) on ``model``: one row each.

    ``targets``: each entry is one target set in CLI syntax ('q_proj,v_proj', 'all-linear', 'attention',
    'mlp', 're:<regex>'). ``alpha`` None means alpha = r (scaling 1 for LoRA). ``exclude``: a name list
    (or 're:<regex>'), PEFT ``exclude_modules``. ``layers``: PEFT ``layers_to_transform``; with it,
    presets and 'all-linear' are expanded to name lists, as PEFT requires.
    Memory flags describe one training step (see loradial.memory). ``trust_remote_code``: a model
    that ships its own code (``auto_map``) is built from it on the meta device.
    ``modules_to_save`` ('lm_head,embed_tokens'), ``trainable_token_indices`` ('0-9,42' for the input
    embedding, or a JSON object / dict {module: indices}), ``target_parameters`` ('mlp.experts.gate_up_proj')
    and ``bias`` ('none' / 'lora_only' / 'all') are PEFT's fields, counted as PEFT counts them; a target set
    'none' is target_modules=[] (only target_parameters). ``full_optim_dtype``: AdamW's state dtype in the
    full fine-tuning row (``full``; fp32 or bf16).
    """
    ranks = _check_ranks(ranks)
    target_sets = [targets] if isinstance(targets, str) else list(targets)
    if not target_sets:
        raise LoradialError("no target set given", "use e.g. --targets q_proj,v_proj --targets all-linear")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 and math.isfinite(alpha)):
        raise LoradialError(f"alpha must be a positive number, got {alpha!r}", "use e.g. --alpha 16")
    mem_dtype = check_memory_args(batch_size, seq_len, dtype, quant, attn_implementation)
    layer_list = parse_layers(layers)
    r_pattern, a_pattern = parse_pattern(rank_pattern, int, "rank_pattern"), parse_pattern(alpha_pattern, float, "alpha_pattern")
    exclude_modules = parse_exclude(exclude)
    extra = dict(modules_to_save=parse_names(modules_to_save, "modules_to_save"),
                 trainable_token_indices=parse_token_indices(trainable_token_indices),
                 target_parameters=parse_names(target_parameters, "target_parameters"), bias=_check_bias(bias))
    info = model if isinstance(model, ModelInfo) else inspect_model(model, trust_remote_code=trust_remote_code)
    mem_kw = dict(use_dora=use_dora, batch_size=batch_size, seq_len=seq_len, dtype=mem_dtype, quant=quant,
                  gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation)
    rows: list[PlanRow] = []
    for text in target_sets:
        for r in ranks:
            spec = make_spec(info, text, r, alpha=alpha, use_dora=use_dora, use_rslora=use_rslora,
                             lora_bias=lora_bias, layers=layer_list, layers_pattern=layers_pattern, exclude=exclude,
                             rank_pattern=r_pattern, alpha_pattern=a_pattern, **extra)
            rows.append(_row(spec, text, info, mem_kw))
    settings = {
        "ranks": ranks, "targets": target_sets, "alpha": alpha, "use_dora": use_dora, "use_rslora": use_rslora,
        "lora_bias": lora_bias, "layers_to_transform": layer_list, "layers_pattern": layers_pattern,
        "exclude_modules": exclude_modules, "rank_pattern": r_pattern, "alpha_pattern": a_pattern,
        "batch_size": batch_size, "seq_len": seq_len, "dtype": mem_dtype, "quant": quant,
        "gradient_checkpointing": gradient_checkpointing, "attn_implementation": attn_implementation,
        **extra,
    }
    full = full_row(info, batch_size=batch_size, seq_len=seq_len, dtype=mem_dtype,
                    gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation,
                    optim_dtype=full_optim_dtype)
    notes = _notes(info, rows) + (["the full fine-tuning row trains an unquantized fp32 copy: --quant does not apply to it"]
                                  if quant != "none" else [])
    return PlanResult(info.summary(), settings, rows, dict(FORMULAS), notes, full)


def full_row(info: ModelInfo, *, batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16",
             gradient_checkpointing: bool = False, attn_implementation: str = "sdpa", optim_dtype: str = "fp32") -> dict[str, Any]:
    """Plan's full fine-tuning row: every parameter trainable, its peak memory with and without checkpointing."""
    kw = dict(batch_size=batch_size, seq_len=seq_len, dtype=dtype, attn_implementation=attn_implementation,
              optim_dtype=optim_dtype)
    est = {ck: estimate_full_memory(info, gradient_checkpointing=ck, **kw) for ck in (False, True)}
    n = full_param_count(info)
    chosen = est[bool(gradient_checkpointing)]
    return {"variant": "full", "trainable_params": n,
            "trainable_percent": 100.0 if info.total_params else float("nan"),
            "peak_memory_bytes": int(chosen.total_bytes),
            "peak_memory_bytes_no_checkpointing": int(est[False].total_bytes),
            "peak_memory_bytes_checkpointing": int(est[True].total_bytes),
            "memory_breakdown": {k: int(v) for k, v in chosen.breakdown.items()}, "peak_phase": chosen.peak_phase,
            "model_file_bytes": 4 * n, "optimizer_dtype": optim_dtype}


def make_spec(
    info: ModelInfo, targets: str | list[str], r: int, *, alpha: float | None = None, use_dora: bool = False,
    use_rslora: bool = False, lora_bias: bool = False, layers: str | Sequence[int] | int | None = None,
    layers_pattern: str | list[str] | None = None, exclude: str | list[str] | None = None,
    rank_pattern: str | dict | None = None, alpha_pattern: str | dict | None = None,
    modules_to_save: str | Sequence[str] | None = None,
    trainable_token_indices: str | Sequence[int] | dict[str, Sequence[int]] | None = None,
    target_parameters: str | Sequence[str] | None = None, bias: str = "none",
) -> LoraSpec:
    """The LoraSpec of one plan row: ``targets`` in CLI syntax (a list is taken as PEFT target_modules; 'none' is
    target_modules=[], for target_parameters alone), alpha = r by default."""
    layer_list = parse_layers(layers)
    check_layers(layer_list, info)
    if targets == "none" or targets == []:
        targets = []
    else:
        targets = resolve_targets(targets, info, need_list=layer_list is not None)
    return LoraSpec(
        r=r, lora_alpha=alpha if alpha is not None else r, target_modules=targets, use_rslora=use_rslora,
        use_dora=use_dora, rank_pattern=parse_pattern(rank_pattern, int, "rank_pattern"),
        alpha_pattern=parse_pattern(alpha_pattern, float, "alpha_pattern"), exclude_modules=parse_exclude(exclude),
        layers_to_transform=layer_list, layers_pattern=layers_pattern, lora_bias=lora_bias,
        modules_to_save=parse_names(modules_to_save, "modules_to_save"), bias=_check_bias(bias),
        trainable_token_indices=parse_token_indices(trainable_token_indices),
        target_parameters=parse_names(target_parameters, "target_parameters"),
    )


def targeting(spec: LoraSpec, info: ModelInfo) -> tuple[Any, list[tuple[Any, int]], dict[str, Any]]:
    """(PEFT's targeting of the LoRA modules, every (module or parameter, rank) pair, the auxiliary trainable
    parameters {modules_to_save, trainable_tokens, bias}) — everything ``get_peft_model`` makes trainable."""
    from loradial.models.targets import Targeting
    from loradial.spec import get_pattern_key

    if spec.target_modules == [] and not spec.target_parameters:
        raise LoradialError("no target: target_modules is empty and no target_parameters are given",
                            "give --targets or --target-parameters")
    if spec.target_modules == []:
        tg = Targeting(spec, [], [], {"rank_pattern": [], "alpha_pattern": []})
    else:
        tg = match(spec, info)
    pairs = list(tg.pairs)
    lora_names = [m.name for m, _ in pairs if m.kind != "param"]

    def rank_for(key: str) -> int:
        k = get_pattern_key(tg.spec.rank_pattern, key)
        return spec.r if k is None else tg.spec.rank_pattern[k]

    have = {m.name for m, _ in pairs}
    for m, r in cost.parameter_targets(info, spec.target_parameters, rank_for, lora_names):
        if m.name not in have:
            pairs.append((m, r))
            have.add(m.name)
    if any(m.kind == "param" for m, _ in pairs) and (spec.use_dora or spec.lora_bias):
        raise LoradialError("PEFT's ParamWrapper (target_parameters) supports neither DoRA nor lora_bias",
                            "drop --dora / --lora-bias, or the parameter targets")
    mts = cost.modules_to_save_params(info, spec.modules_to_save)
    for name in mts:
        if name in lora_names:  # cannot happen through LoraSpec.matches, kept as PEFT's own guard
            raise LoradialError(f"{name} is both a LoRA target and in modules_to_save")
    aux: dict[str, Any] = {}
    if mts:
        aux["modules_to_save"] = mts
    tokens = cost.trainable_token_params(info, spec.trainable_token_indices, lora_names, spec.modules_to_save or [])
    if tokens:
        aux["trainable_tokens"] = tokens
    b = cost.bias_params(info, spec.bias, [m for m, _ in pairs])
    if b:
        aux["bias"] = b
    return tg, pairs, aux


def auxiliary_total(aux: dict[str, Any]) -> int:
    return sum(sum(v.values()) if isinstance(v, dict) else int(v) for v in aux.values())


# --- parsing of the PEFT fields plan counts besides LoRA ------------------------------------------------------
def parse_names(text: str | Sequence[str] | None, what: str) -> list[str] | None:
    """'lm_head,embed_tokens' or a list -> a list of names (None when empty)."""
    if text is None or text == "":
        return None
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    names = [n for n in names if n]
    if not names:
        raise LoradialError(f"empty {what}", f"give names, e.g. --{what.replace('_', '-')} lm_head")
    return names


def parse_token_indices(text: str | Sequence[int] | dict | None) -> list[int] | dict[str, list[int]] | None:
    """PEFT trainable_token_indices: '0-9,42' / a list (the input embedding) or a JSON object / dict {module: indices}."""
    if text is None or text == "" or (not isinstance(text, str) and len(text) == 0):
        return None
    if isinstance(text, str) and text.lstrip().startswith("{"):
        try:
            text = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoradialError(f"trainable_token_indices is not valid JSON: {e}",
                                'use e.g. \'{"embed_tokens": [0, 1]}\' or 0-9,42') from None
    if isinstance(text, dict):
        return {str(k): _token_list(v) for k, v in text.items()}
    return _token_list(text)


def _token_list(value: Any) -> list[int]:
    if isinstance(value, str):
        try:
            out = parse_layers(value)
        except LoradialError:
            raise LoradialError(f"invalid token indices {value!r}", "use e.g. 0-9,42") from None
    else:
        out = list(value)
    if not out or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise LoradialError(f"token indices must be non-negative integers, got {value!r}", "use e.g. 0-9,42")
    return list(dict.fromkeys(out))


def _check_bias(bias: str | None) -> str:
    bias = bias or "none"
    if bias not in ("none", "all", "lora_only"):
        raise LoradialError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}", "PEFT's bias field")
    return bias


def _row(spec: LoraSpec, text: str, info: ModelInfo, mem_kw: dict[str, Any]) -> PlanRow:
    tg, pairs, aux = targeting(spec, info)
    n = cost.trainable_params(pairs, spec.use_dora, spec.lora_bias) + auxiliary_total(aux)
    est = estimate_training_memory(info, pairs, **mem_kw)
    peak, breakdown = int(est.total_bytes), {k: int(v) for k, v in est.breakdown.items()}
    return PlanRow(
        rank=spec.r,
        targets=text,
        target_modules=spec.target_modules,
        lora_alpha=spec.lora_alpha,
        scaling=scaling(spec.r, spec.lora_alpha, spec.use_rslora),
        trainable_params=n,
        trainable_percent=100.0 * n / info.total_params if info.total_params else float("nan"),
        n_modules=len(pairs),
        modules=cost.per_type_breakdown(pairs, spec.use_dora, spec.lora_bias),
        adapter_bytes=cost.adapter_bytes_by_dtype(n),
        peak_memory_bytes=peak,
        memory_breakdown=breakdown,
        extra_flops_per_token=cost.extra_flops_per_token(pairs),
        weight_side_flops_per_step=cost.weight_side_flops(pairs, spec.use_dora),
        target_parameters=list(dict.fromkeys(tg.target_parameters + list(spec.target_parameters or []))),
        peft_config=spec.peft_kwargs(),
        unused_pattern_keys=tg.unused_pattern_keys,
        use_dora=spec.use_dora,
        auxiliary_params=aux,
    )


def _notes(info: ModelInfo, rows: list[PlanRow]) -> list[str]:
    notes: list[str] = []
    unused = {(kind, key) for row in rows for kind, keys in row.unused_pattern_keys.items() for key in keys}
    for kind, key in sorted(unused):
        every = all(key in row.unused_pattern_keys[kind] for row in rows)
        notes.append(f"{kind} key {key!r} decides no wrapped module{'' if every else ' in some rows'} (PEFT ignores it silently)")
    experts = [m for m in info.modules if m.kind == "param" and m.experts > 1]
    if experts and not any(row.target_parameters for row in rows):
        from loradial.models.targets import MOE_CONVERTED

        how = ("name them with their transformers-v4 names (e.g. --targets mlp)" if info.model_type in MOE_CONVERTED
               else f"PEFT 0.21's target_modules do not reach them on {info.model_type}")
        notes.append(f"the {len(experts)} fused MoE expert parameters are not targeted: {how}")
    if any(row.target_parameters for row in rows):
        notes.append("the memory model does not yet account for ParamWrapper (MoE expert) adapters: peak_memory_bytes "
                     "of rows with target_parameters is a lower bound")
    if any(row.target_parameters for row in rows):
        notes.append("MoE experts are wrapped by PEFT's ParamWrapper via its transformers-v5 config conversion: a fused "
                     "gate_up_proj gets rank 2r and alpha 2*alpha; layers_to_transform and exclude_modules do not apply to them")
    if any(row.auxiliary_params for row in rows):
        notes.append("the memory model counts LoRA factors only: modules_to_save copies, trained token rows and biases "
                     "(in trainable_params) add their weights, gradients and optimizer states on top of peak_memory_bytes")
    if info.tied_embeddings and any(m["kind"] == "embedding" for row in rows for m in row.modules):
        notes.append("input and output embeddings are tied: PEFT adapts only the module you target")
    return notes

