"""``loradial recommend``: a starting LoRA config for a model, a task type and a data size - every
choice with a one-line reason and its source, the memory fit, and the escalation ladder ahead.

The rules are data (``loradial.rules``, overridable with ``--rules FILE``):

* rank: the task's range from the seed table (style 4-8, standard 16-32, domain shift 64-128,
  full parity 128-256), *leaning lower for small data*: tiny data (< 500 examples or < 250k tokens)
  takes half the low end (at least 4), normal data the low end, large data (>= 50k examples or
  >= 50M tokens) the high end;
* alpha: the task's rule ('r', '2r', 'r/2'); ``use_rslora`` above r = 64, and the resulting scale
  s = alpha/r or alpha/sqrt(r) is reported, because under Adam s acts like a learning-rate factor;
* targets: all linear layers (QLoRA; LoRA Without Regret; Biderman et al.);
* learning rate: by the model's width (hidden size), ``rules.lr_for_width``: the best LoRA LRs the
  tinker cookbook measured for Llama 3 (1e-3 at hidden 2048-3072, 3e-4 at 4096-8192), interpolated
  in log-log space, and below hidden 2048 their earlier fit lr ~ hidden_size ** -0.781 (so 5.1e-3
  for the bundled 4M demo model at hidden 256, 2.9e-3 at hidden 512); times (r / 16) ** (-exponent)
  with the exponent 0 by default (see ``rules.DEFAULT_RULES``). Measured on the project's own
  models in benchmarks/recommend/RESULTS.md;
* dropout: 0.1 / 0.05 / 0 for tiny / normal / large data;
* batch: the largest micro batch (<= 16 sequences per step) that fits ``--gpu-memory`` without
  gradient checkpointing, else with it, else with a 4-bit base (QLoRA); gradient accumulation
  makes up 16 sequences per optimizer step; DoRA when it fits the same budget. Memory comes from
  ``loradial.memory.estimate_training_memory``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

from loradial.advice import rules as _rules
from loradial.errors import LoradialError
from loradial.result import Result

GIB = 2 ** 30


@dataclasses.dataclass
class Recommendation(Result):
    model: dict[str, Any]
    task: str
    data: dict[str, Any]
    r: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    target_modules: str | list[str]
    learning_rate: float
    lora_dropout: float
    scale: float
    """s = lora_alpha / r (or / sqrt(r) with rsLoRA)."""
    trainable_params: int
    seq_len: int
    micro_batch_size: int | None
    gradient_accumulation_steps: int | None
    gradient_checkpointing: bool | None
    quant: str
    memory: dict[str, Any]
    reasons: dict[str, str]
    """One line per choice."""
    sources: dict[str, list[str]]
    """Citations behind each choice."""
    ladder: dict[str, list[dict[str, Any]]]
    """What to try next if the run underfits / overfits / is unstable, as concrete configs."""
    peft_config: dict[str, Any]
    warnings: list[str]
    export: dict[str, Any] | None = None


def data_band(examples: int | None, tokens: int | None, rules: dict[str, Any]) -> tuple[str, str]:
    """('tiny' | 'normal' | 'large', the sentence saying why) from whichever size was given."""
    ds = rules["data_size"]
    if examples is not None:
        n, unit, tiny, large = examples, "examples", ds["tiny_examples"], ds["large_examples"]
    else:
        n, unit, tiny, large = tokens, "tokens", ds["tiny_tokens"], ds["large_tokens"]
    if n < tiny:
        return "tiny", f"{n:,} {unit} < {tiny:,}"
    if n >= large:
        return "large", f"{n:,} {unit} >= {large:,}"
    return "normal", f"{tiny:,} <= {n:,} {unit} < {large:,}"


def _check_inputs(task: str, examples, tokens, gpu_memory, seq_len, rules) -> None:
    if task not in rules["tasks"]:
        raise LoradialError(f"unknown task type {task!r}", f"expected one of {', '.join(rules['tasks'])}")
    if (examples is None) == (tokens is None):
        raise LoradialError("give the data size as exactly one of --examples N or --tokens N",
                            "e.g. --examples 5000 (training examples) or --tokens 2000000")
    for name, v in (("--examples", examples), ("--tokens", tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise LoradialError(f"{name} must be a positive integer, got {v!r}", "the number of training examples or tokens")
    if gpu_memory is not None and not (isinstance(gpu_memory, (int, float)) and math.isfinite(gpu_memory) and gpu_memory > 0):
        raise LoradialError(f"--gpu-memory must be a positive number of GiB, got {gpu_memory!r}", "e.g. --gpu-memory 24")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0):
        raise LoradialError(f"--seq-len must be a positive integer, got {seq_len!r}", "e.g. --seq-len 2048")


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def fit_batch(estimate, info, pairs, *, budget: int, seq_len: int, rules: dict[str, Any], dtype: str,
              quants: tuple[str, ...]) -> dict[str, Any] | None:
    """First fitting (quant, checkpointing, micro batch): no checkpointing before checkpointing before a
    quantized base; within each, the largest micro batch <= the effective batch. None if nothing fits."""
    target = rules["batch"]["effective_batch"]
    mbs = sorted({m for m in rules["batch"]["micro_batches"] if m <= target} or {1}, reverse=True)
    for quant in quants:
        for gc in (False, True):
            for mb in mbs:
                est = estimate(info, pairs, batch_size=mb, seq_len=seq_len, dtype=dtype, quant=quant,
                               gradient_checkpointing=gc)
                if est.total_bytes <= budget:
                    return {"quant": quant, "gradient_checkpointing": gc, "micro_batch_size": mb,
                            "gradient_accumulation_steps": max(1, math.ceil(target / mb)), "estimate": est}
    return None


def _dora_supported(spec, info, match) -> tuple[bool, str]:
    """Whether PEFT can apply DoRA to these targets (not to fused MoE expert parameters)."""
    try:
        match(dataclasses.replace(spec, use_dora=True), info)
    except LoradialError as e:
        return False, e.message
    return True, ""


def recommend(
    model: str,
    task: str,
    examples: int | None = None,
    tokens: int | None = None,
    *,
    gpu_memory: float | None = None,
    seq_len: int | None = None,
    lr_rank_exponent: float | None = None,
    learning_rate: float | None = None,
    rules_file: str | Path | None = None,
    dtype: str = "bf16",
    export: str | None = None,
    export_out: str | Path | None = None,
) -> Recommendation:
    """A starting config (see the module docstring for every rule and its source).

    ``learning_rate`` replaces the width rule's LR (the rules file can too: ``learning_rate.fixed``, or
    other ``learning_rate.by_width`` anchors).
    """
    overrides = {"learning_rate": {"rank_exponent": lr_rank_exponent}} if lr_rank_exponent is not None else {}
    if lr_rank_exponent is not None and not (isinstance(lr_rank_exponent, (int, float)) and math.isfinite(lr_rank_exponent)):
        raise LoradialError(f"--lr-rank-exponent must be a number, got {lr_rank_exponent!r}", "e.g. 0 or 0.5")
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
                                      or not math.isfinite(learning_rate) or learning_rate <= 0):
        raise LoradialError(f"learning rate must be a positive number, got {learning_rate!r}", "e.g. 1e-3")
    rules = _rules.load_rules(rules_file, **overrides)
    from loradial.io import check_out_not_overlapping

    check_out_not_overlapping(export_out, [("rules file", rules_file), ("model", model)], out_is_file=True)
    _check_inputs(task, examples, tokens, gpu_memory, seq_len, rules)
    if export is not None:
        from loradial.advice.export import FORMATS

        if export.lower() not in FORMATS:
            raise LoradialError(f"unknown export format {export!r}", f"expected one of {', '.join(FORMATS)}")

    from loradial.cost.params import trainable_params
    from loradial.cost.memory import estimate_training_memory
    from loradial.models.resolve import inspect_model
    from loradial.spec import LoraSpec, scaling
    from loradial.models.targets import match

    info = inspect_model(model)
    t = rules["tasks"][task]
    reasons: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    warnings: list[str] = []
    cite = _rules.cited

    # rank from the task range and the data size
    band, why_band = data_band(examples, tokens, rules)
    lo, hi = t["ranks"]
    ds = rules["data_size"]
    r = {"tiny": max(int(ds["min_rank"]), lo // 2), "normal": lo, "large": hi}[band]
    where = {"tiny": "half the low end", "normal": "the low end", "large": "the high end"}[band]
    reasons["r"] = f"{r}: {task} ({t.get('what', task)}) ranges {lo}-{hi}; {band} data ({why_band}) takes {where}"
    sources["r"] = cite(list(t.get("sources", [])) + list(ds.get("sources", [])))
    if task == "full-parity" and band != "large":
        warnings.append(f"full-parity is a large-data regime; with {why_band.split(' <')[0].split(' >=')[0]} a lower "
                        "rank will likely do as well (LoRA Without Regret: low ranks fall behind only once the "
                        "data outgrows their capacity)")

    # alpha, rsLoRA and the resulting scale
    use_rslora = r > rules["rslora_above_rank"]
    alpha = _rules.plain_number(_rules.alpha_from_rule(t["alpha"], r))
    s = scaling(r, alpha, use_rslora)
    reasons["lora_alpha"] = (f"{alpha:g} (alpha = {t['alpha']} for {task}), so s = alpha/{'sqrt(r)' if use_rslora else 'r'}"
                             f" = {s:.3g}; under Adam s acts like a learning-rate factor (Hu et al. 2021, sec. 4.1)")
    sources["lora_alpha"] = cite(["seed", "hu2021"] + (["biderman2024"] if t["alpha"] == "2r" else []))
    if use_rslora:
        reasons["use_rslora"] = (f"true: r = {r} > {rules['rslora_above_rank']}; with alpha/r a fixed alpha makes large "
                                 "ranks stop helping (rsLoRA, Kalajdzievski 2023)")
        if s > 2:
            warnings.append(f"rsLoRA with alpha = {t['alpha']} gives s = {s:.3g}, {s:.3g}x the step of alpha = r LoRA; the "
                            "seed's alpha rule has no source - if training is unstable, lower alpha first (ladder)")
    else:
        reasons["use_rslora"] = f"false: r = {r} <= {rules['rslora_above_rank']}, plain alpha/r scaling"
    sources["use_rslora"] = cite(["seed", "kalajdzievski2023"])

    # targets and parameter count
    targets = rules["target_modules"]
    spec = LoraSpec(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=use_rslora)
    pairs = match(spec, info).pairs
    n_params = trainable_params(pairs)
    reasons["target_modules"] = (f"{targets}: LoRA on every linear layer matters more than rank "
                                 f"({len(pairs)} modules, {n_params:,} trainable parameters)")
    sources["target_modules"] = cite(["dettmers2023", "schulman2025", "biderman2024"])

    # learning rate: by the model's width (rules.lora_learning_rate), unless given
    lr_rules = rules["learning_rate"]
    exponent = float(lr_rules["rank_exponent"])
    width = _rules.model_width(info.full_config())
    if learning_rate is not None:
        lr = float(learning_rate)
        reasons["learning_rate"] = f"{lr:g}: given (learning_rate=...), not the width rule; sweep it"
        sources["learning_rate"] = ["given by the user"]
    else:
        lr, why_lr = _rules.lora_learning_rate(width, r, rules)
        rank_txt = ("not scaled with rank (exponent 0: the folklore r^-0.84 has no primary source; LoRA Without Regret "
                    "finds the best LR roughly rank-invariant)" if exponent == 0 else
                    f"times (r/{lr_rules['reference_rank']})^-{exponent:g} = {(r / lr_rules['reference_rank']) ** -exponent:.3g} "
                    "(--lr-rank-exponent; a hypothesis - loradial sweep measures it)")
        reasons["learning_rate"] = (f"{lr:g}: by model width - {why_lr}; anchors: the best LoRA LRs of the tinker "
                                    f"cookbook's SFT sweep (~10x full fine-tuning's, LoRA Without Regret); {rank_txt}; "
                                    f"here s = {s:.3g}; sweep it")
        sources["learning_rate"] = cite(list(lr_rules.get("sources", [])) + ["hu2021"])
        if width is None and lr_rules.get("fixed") is None:
            warnings.append("the model's config names no hidden size: the learning rate is the widest anchor's "
                            f"({lr:g}), likely low for a small model - sweep it")

    dropout = float(rules["dropout"][band])
    reasons["lora_dropout"] = f"{dropout:g} for {band} data (QLoRA used 0.1 for 7B/13B, 0.05 for 33B/65B; 0 keeps PEFT's fast DoRA path)"
    sources["lora_dropout"] = cite(list(rules["dropout"].get("sources", [])))

    # memory: batch, checkpointing, quantization, DoRA
    T = seq_len or int(rules["batch"]["default_seq_len"])
    batch = rules["batch"]
    memory: dict[str, Any] = {}
    use_dora = False
    mb = ga = gc = None
    quant = "none"
    def model_text(dropout_text: str) -> str:
        return (f"loradial.memory.estimate_training_memory: one step of a plain PEFT loop, lora_dropout {dropout_text}, "
                f"{dtype} base, sdpa attention")

    rule_dropout = dropout
    memory["model"] = model_text(f"{dropout:g}")
    estimate = functools.partial(estimate_training_memory, lora_dropout=dropout)
    if gpu_memory is not None:
        budget = int(gpu_memory * GIB * batch["memory_headroom"])
        memory["budget_bytes"] = budget
        fit = fit_batch(estimate, info, pairs, budget=budget, seq_len=T, rules=rules, dtype=dtype,
                        quants=("none", "4bit"))
        if fit is None:
            est = estimate(info, pairs, batch_size=1, seq_len=T, dtype=dtype, quant="4bit", gradient_checkpointing=True)
            memory.update(fits=False, total_bytes=est.total_bytes, breakdown=est.breakdown)
            mb, ga, gc, quant = 1, int(batch["effective_batch"]), True, "4bit"
            reasons["micro_batch_size"] = (f"nothing fits {gpu_memory:g} GiB: even micro batch 1 with checkpointing and a "
                                           f"4-bit base needs {_gib(est.total_bytes)} at seq_len {T}")
            warnings.append(f"does not fit {gpu_memory:g} GiB (needs {_gib(est.total_bytes)}): shorten --seq-len, lower "
                            "the rank, or use a larger GPU")
            reasons["use_dora"] = "false: even plain LoRA does not fit the budget"
        else:
            est = fit["estimate"]
            mb, ga, gc, quant = fit["micro_batch_size"], fit["gradient_accumulation_steps"], fit["gradient_checkpointing"], fit["quant"]
            memory.update(fits=True, total_bytes=est.total_bytes, breakdown=est.breakdown)
            reasons["micro_batch_size"] = (f"{mb}: the largest of {sorted(batch['micro_batches'])} that fits {gpu_memory:g} GiB "
                                           f"x {batch['memory_headroom']:g} ({_gib(est.total_bytes)} at seq_len {T})")
            if batch["effective_batch"] > mb:
                reasons["gradient_accumulation_steps"] = (f"{ga}: {mb} x {ga} = {mb * ga} sequences per optimizer step "
                                                          f"(target {batch['effective_batch']}; LoRA dislikes large batches)")
            else:
                reasons["gradient_accumulation_steps"] = f"1: the micro batch already holds {mb} sequences"
            reasons["gradient_checkpointing"] = ("true: it does not fit without" if gc else
                                                 "false: it fits without (checkpointing recomputes the forward, ~1/3 more compute)")
            if quant != "none":
                reasons["quant"] = "4bit: the bf16 base does not fit even with checkpointing; QLoRA's 4-bit NF4 base does"
            dora_ok, dora_why = _dora_supported(spec, info, match)
            if not dora_ok:
                reasons["use_dora"] = f"false: {dora_why}"
            elif rules["dora"].get("when_memory_allows", True):
                dest = estimate_training_memory(info, pairs, use_dora=True, batch_size=mb, seq_len=T, dtype=dtype,
                                                quant=quant, gradient_checkpointing=gc)
                use_dora = dest.total_bytes <= budget
                memory["dora_total_bytes"] = dest.total_bytes
                if use_dora and dropout > 0:
                    dropout = 0.0
                    memory["model"] = model_text("0 (DoRA)")
                    reasons["lora_dropout"] = ("0: DoRA is on, and PEFT's fast DoRA path (the one the memory estimate "
                                               f"models) needs lora_dropout 0; without DoRA the rule says {rule_dropout:g} "
                                               f"for {band} data")
                reasons["use_dora"] = (f"{'true' if use_dora else 'false'}: DoRA needs {_gib(dest.total_bytes)} at this batch "
                                       f"({'fits' if use_dora else 'over'} the {_gib(budget)} budget); it can beat LoRA "
                                       "especially at low ranks, at extra time per step")
        sources["micro_batch_size"] = cite(list(batch.get("sources", [])))
    else:
        est = estimate(info, pairs, batch_size=1, seq_len=T, dtype=dtype)
        memory.update(fits=None, total_bytes=est.total_bytes, breakdown=est.breakdown)
        reasons["micro_batch_size"] = (f"not sized: pass --gpu-memory GiB (micro batch 1 without checkpointing needs "
                                       f"{_gib(est.total_bytes)} at seq_len {T})")
        reasons["use_dora"] = "false: DoRA costs extra memory and time; pass --gpu-memory to check whether it fits"
    sources["use_dora"] = cite(list(rules["dora"].get("sources", [])))

    config = {"r": r, "lora_alpha": alpha, "use_rslora": use_rslora, "use_dora": use_dora, "target_modules": targets,
              "lora_dropout": dropout, "learning_rate": lr}
    ladder = {case: _rules.ladder_for(verdict, config, rules)
              for case, verdict in (("underfits", "underfitting"), ("overfits", "overfitting"), ("unstable", "unstable"))}
    peft_config = LoraSpec(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=use_rslora, use_dora=use_dora,
                           lora_dropout=dropout).peft_kwargs()
    data = {"examples": examples} if examples is not None else {"tokens": tokens}
    data["band"] = band
    result = Recommendation(
        model=info.summary(), task=task, data=data, r=r, lora_alpha=alpha, use_rslora=use_rslora, use_dora=use_dora,
        target_modules=targets, learning_rate=lr, lora_dropout=dropout, scale=float(f"{s:.6g}"), trainable_params=n_params,
        seq_len=T, micro_batch_size=mb, gradient_accumulation_steps=ga, gradient_checkpointing=gc, quant=quant,
        memory=memory, reasons=reasons, sources=sources, ladder=ladder, peft_config=peft_config, warnings=warnings,
    )
    if export is not None:
        from loradial.advice.export import export_config

        exp = export_config({**config, "model": model, "micro_batch_size": mb, "gradient_accumulation_steps": ga,
                             "gradient_checkpointing": gc, "seq_len": T}, export, export_out, info=info)
        result.export = exp.to_dict()
    return result
