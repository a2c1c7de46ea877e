"""Every field of PEFT 0.21's ``LoraConfig``, and how each loradial verb treats it: the single source.

A PEFT adapter's ``adapter_config.json`` carries every ``LoraConfig`` field. Each field (or, where the
value matters, each group of values) has one row in ``FEATURES`` saying, for every verb that reads an
adapter, what loradial does with it:

- ``exact``        modelled exactly (the tests compare the verb's numbers with PEFT's on adapters PEFT made);
- ``approximate``  a documented approximation that the verb's output says in its notes (DoRA truncation);
- ``refused``      the verb stops with exit code 2, names the feature and says what the user can do;
- ``harmless``     the field does not change what the verb computes (metadata, training-only settings);
- ``not offered``  (plan only) plan has no option for it, so it never enters a count.

``check(config, verb)`` is what the verbs call: it raises a ``LoradialError`` for the first engaged
feature the verb refuses, and also for a config field this table does not know (a newer PEFT) whose
value is not a default — loradial never guesses what an unknown field does. ``render_markdown()``
writes docs/adapter-features.md (``scripts/gen_adapter_features.py``); a test keeps the page equal to it
and another keeps this table equal to ``peft.LoraConfig``'s fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from loradial.errors import LoradialError

ANALYZE, DATA, RESIZE, RESCALE, ALPHA, MERGE, PLAN = (
    "analyze", "analyze --data", "resize", "rescale", "alpha-sweep", "merge", "plan")
VERBS = (ANALYZE, DATA, RESIZE, RESCALE, ALPHA, MERGE, PLAN)
ADAPTER_VERBS = VERBS[:-1]
READ = "read"
"""The pseudo-verb of ``load_adapter``: refuses only what no verb can read (checked before the tensors)."""

EXACT, APPROXIMATE, REFUSED, HARMLESS, NOT_OFFERED = "exact", "approximate", "refused", "harmless", "not offered"
STATUSES = (EXACT, APPROXIMATE, REFUSED, HARMLESS, NOT_OFFERED)

#: every value a missing / switched-off field can have: such a field engages nothing
_OFF = (None, False, "", "none", 0)


def _on(value: Any, config: Mapping[str, Any]) -> bool:
    if isinstance(value, (list, dict, tuple, set)):
        return len(value) > 0
    return value not in _OFF


def _always(value: Any, config: Mapping[str, Any]) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Feature:
    """One row: a ``LoraConfig`` field (or a group of its values) and what every verb does with it."""

    field: str
    case: str
    """Which values this row covers, as the docs show it ('any', 'not null', "'pissa', 'olora'", ...)."""
    title: str
    """How messages name the feature ('aLoRA', 'modules_to_save', ...)."""
    statuses: Mapping[str, str]
    reason: str
    action: str = ""
    """What the user can do when a verb refuses it."""
    engaged: Callable[[Any, Mapping[str, Any]], bool] = _on

    def status(self, verb: str) -> str:
        return self.statuses[verb]


def _row(field: str, title: str, statuses: str | Mapping[str, str], reason: str, action: str = "",
         case: str = "any", engaged: Callable[[Any, Mapping[str, Any]], bool] = _always, **per_verb: str) -> Feature:
    """A row whose verbs all have ``statuses`` (a string) except those named in ``per_verb`` (e.g. merge=...)."""
    if isinstance(statuses, str):
        statuses = {v: statuses for v in VERBS}
    st = dict(statuses)
    for key, value in per_verb.items():
        st[{"data": DATA, "alpha": ALPHA}.get(key, key)] = value
    return Feature(field, case, title, st, reason, action, engaged)


def _init_value(value: Any) -> str:
    return str(value).lower()


_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
_HARMLESS_INITS = ("true", "false", "gaussian", "orthogonal", "eva")
_MODEL_VERBS_REFUSED = {DATA: REFUSED, ALPHA: REFUSED, MERGE: REFUSED}


def _base_changing_init(value: Any, config: Mapping[str, Any]) -> bool:
    v = _init_value(value)
    return v.startswith("pissa") or v.startswith("corda") or v in ("olora", "lora_ga", "loftq")


def _unknown_init(value: Any, config: Mapping[str, Any]) -> bool:
    v = _init_value(value)
    return not (v in _HARMLESS_INITS or v == "mica" or _base_changing_init(value, config))


def _not_causal(value: Any, config: Mapping[str, Any]) -> bool:
    return value is not None and str(value).upper() != "CAUSAL_LM"


def _not_lora(value: Any, config: Mapping[str, Any]) -> bool:
    return str(value if value is not None else "LORA").upper() != "LORA"


_ALL_EXACT = {v: EXACT for v in VERBS}
_ALL_HARMLESS = {v: HARMLESS for v in VERBS}
_ALL_REFUSED = {**{v: REFUSED for v in ADAPTER_VERBS}, PLAN: NOT_OFFERED}
_FACTORS_ONLY = {ANALYZE: EXACT, RESIZE: EXACT, RESCALE: EXACT, DATA: REFUSED, ALPHA: REFUSED, MERGE: REFUSED}
_SAVED_TENSORS = {ANALYZE: EXACT, DATA: EXACT, RESIZE: EXACT, RESCALE: EXACT, ALPHA: EXACT, MERGE: EXACT, PLAN: EXACT}

FEATURES: tuple[Feature, ...] = (
    # --- metadata -------------------------------------------------------------------------------------------
    _row("task_type", "task_type", HARMLESS, "metadata for a causal LM adapter", case="null or 'CAUSAL_LM'",
         engaged=lambda v, c: not _not_causal(v, c)),
    _row("task_type", "a non-causal-LM adapter", {**_FACTORS_ONLY, PLAN: NOT_OFFERED},
         "loradial loads the base with AutoModelForCausalLM; a SEQ_CLS / TOKEN_CLS / SEQ_2_SEQ_LM / ... adapter belongs to "
         "another head (PEFT adds e.g. 'score' / 'classifier' to modules_to_save), so evaluating or merging it as a "
         "causal LM would not be the adapter; its LoRA factors are read exactly",
         "merge it with PEFT on the right model class (PeftModel.from_pretrained(...).merge_and_unload())",
         case="anything else", engaged=_not_causal),
    _row("peft_type", "peft_type", EXACT, "must be LORA: the only adapter type loradial reads", case="'LORA'",
         engaged=lambda v, c: not _not_lora(v, c), plan=HARMLESS),
    _row("peft_type", "a non-LoRA adapter", _ALL_REFUSED, "loradial reads PEFT LoRA adapters only",
         "use PEFT for other adapter types", case="anything else", engaged=_not_lora),
    _row("auto_mapping", "auto_mapping", _ALL_HARMLESS, "metadata (the base model class PEFT recorded)"),
    _row("peft_version", "peft_version", _ALL_HARMLESS, "metadata"),
    _row("base_model_name_or_path", "base_model_name_or_path", _ALL_HARMLESS,
         "metadata: the verbs that need the base model take it from --model"),
    _row("revision", "revision", _ALL_HARMLESS, "metadata: the verbs that need the base model take it from --model"),
    _row("inference_mode", "inference_mode", _ALL_HARMLESS, "whether PEFT loads the adapter trainable; no effect on outputs"),
    # --- the LoRA update ------------------------------------------------------------------------------------
    _row("r", "r", _ALL_EXACT, "the rank; checked against every module's lora_A / lora_B shapes"),
    _row("lora_alpha", "lora_alpha", _ALL_EXACT, "s = lora_alpha / r (or / √r with use_rslora)", plan=HARMLESS),
    _row("use_rslora", "use_rslora", _ALL_EXACT, "s = lora_alpha / √r", plan=HARMLESS),
    _row("rank_pattern", "rank_pattern", _ALL_EXACT, "per-module rank by PEFT's get_pattern_key rule; resize writes one"),
    _row("alpha_pattern", "alpha_pattern", _ALL_EXACT, "per-module alpha by PEFT's get_pattern_key rule", plan=HARMLESS),
    _row("target_modules", "target_modules", _ALL_EXACT,
         "which modules PEFT wraps; the adapter file holds exactly those modules' factors"),
    _row("exclude_modules", "exclude_modules", _ALL_EXACT, "narrows target_modules; the file holds the result"),
    _row("layers_to_transform", "layers_to_transform", _ALL_EXACT, "narrows target_modules; the file holds the result"),
    _row("layers_pattern", "layers_pattern", _ALL_EXACT, "narrows target_modules; the file holds the result"),
    _row("fan_in_fan_out", "fan_in_fan_out", _ALL_EXACT,
         "GPT-2 Conv1D stores the base weight transposed; PEFT keeps A / B in linear orientation either way, and "
         "loradial takes the orientation from the base module (as PEFT corrects the flag)", plan=HARMLESS),
    _row("use_dora", "DoRA",
         {ANALYZE: EXACT, DATA: APPROXIMATE, RESIZE: APPROXIMATE, RESCALE: REFUSED, ALPHA: EXACT, MERGE: EXACT, PLAN: EXACT},
         "analyze gives the spectrum of the directional update s·B·A (said in its notes); DoRA renormalizes W + s·B·A "
         "per row, so a rank-k cut (resize, the truncation curve) is the best rank-k s·B·A, not the best rank-k output "
         "(said in the notes), and scaling s does not scale the output: rescale --scale / --alpha refuses unless "
         "--force (rescale --to keeps s and is exact); merge and alpha-sweep follow PEFT's DoRA forward exactly",
         "use rescale --to, or --force to scale s anyway", case="true", engaged=_on),
    _row("lora_bias", "lora_bias", _ALL_EXACT, "the bias on lora_B: added (times s) in every forward, merge adds s·b "
         "to the base bias, rescale scales it with s, resize keeps it", case="true", engaged=_on),
    _row("lora_dropout", "lora_dropout", {**_ALL_HARMLESS}, "training only: PEFT's eval forward has no dropout"),
    _row("bias", "bias", _ALL_HARMLESS, "no base bias is trained", case="'none'", engaged=lambda v, c: not _on(v, c)),
    _row("bias", "trained base biases", _SAVED_TENSORS,
         "the trained base biases are saved in the adapter; alpha-sweep and analyze --data evaluate with them and "
         "merge writes them, at every scale (PEFT's rescale_adapter_scale leaves them too); resize / rescale carry them "
         "unchanged; analyze's spectrum is of the LoRA factors only (said in its notes)",
         case="'all' or 'lora_only'", engaged=_on),
    # --- saved modules and tokens ------------------------------------------------------------------------------
    _row("modules_to_save", "modules_to_save", _SAVED_TENSORS,
         "full copies of these modules (e.g. lm_head) are saved in the adapter; alpha-sweep and analyze --data load them "
         "into the evaluated model and merge writes them, at every scale and also at truncation rank 0 (PEFT's "
         "rescale_adapter_scale leaves them too); resize / rescale carry them unchanged; analyze's spectrum is of the "
         "LoRA factors only (said in its notes); plan counts every parameter of each copy as PEFT does",
         case="not null", engaged=_on),
    _row("trainable_token_indices", "trainable_token_indices", _SAVED_TENSORS,
         "the trained rows of the embedding (and of a tied output head, as PEFT ties them) replace the base rows in "
         "alpha-sweep, analyze --data and merge; resize / rescale carry them unchanged; plan counts rows × width",
         case="not null", engaged=_on),
    _row("ensure_weight_tying", "ensure_weight_tying", _ALL_EXACT,
         "PEFT saves the tied copies (the output head's LoRA factors, both modules_to_save copies) explicitly, and "
         "loradial applies each as saved", plan=NOT_OFFERED),
    # --- initializations ------------------------------------------------------------------------------------
    _row("init_lora_weights", "init_lora_weights", _ALL_HARMLESS,
         "an initialization of A and B only; the saved weights replace it on load",
         case="true, false, 'gaussian', 'orthogonal', 'eva'", engaged=lambda v, c: _init_value(v) in _HARMLESS_INITS),
    _row("init_lora_weights", "MiCA initialization", {**_ALL_HARMLESS, PLAN: NOT_OFFERED},
         "MiCA's forward and merge are plain LoRA's (its B is only frozen in training, so PEFT counts fewer trainable "
         "parameters, which plan does not model)", case="'mica'", engaged=lambda v, c: _init_value(v) == "mica"),
    _row("init_lora_weights", "a PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ adapter saved without conversion", {**_ALL_REFUSED, PLAN: HARMLESS},
         "PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ subtract their initial B·A from (or quantize) the base weights, and "
         "PEFT re-applies that change when it loads an adapter whose config still says so: the adapter's effect is not "
         "W + s·B·A, so every number loradial would give is wrong",
         "convert the adapter with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=<the initial "
         "adapter>) first (that writes a plain LoRA adapter of rank 2r with init_lora_weights=true); or, if --model is "
         "the residual / LoftQ base the adapter was trained on, set init_lora_weights to true in adapter_config.json",
         case="'pissa', 'pissa_niter_<n>', 'olora', 'corda', 'lora_ga', 'loftq'", engaged=_base_changing_init),
    _row("init_lora_weights", "an unknown initialization", _ALL_REFUSED,
         "a value PEFT 0.21 does not define: loradial cannot tell whether it changes the base weights",
         "check the value; loradial knows PEFT 0.21's initializations", case="any other value", engaged=_unknown_init),
    _row("loftq_config", "loftq_config", _ALL_HARMLESS, "settings of the LoftQ initialization (see init_lora_weights)"),
    _row("eva_config", "eva_config", _ALL_HARMLESS,
         "settings of the EVA initialization; EVA's redistributed ranks and alphas are saved as rank_pattern / alpha_pattern"),
    _row("corda_config", "corda_config", _ALL_HARMLESS, "settings of the CorDA initialization (see init_lora_weights)"),
    _row("lora_ga_config", "lora_ga_config", _ALL_HARMLESS, "settings of the LoRA-GA initialization (see init_lora_weights)"),
    # --- variants ---------------------------------------------------------------------------------------------
    _row("alora_invocation_tokens", "aLoRA", {**_FACTORS_ONLY, PLAN: HARMLESS},
         "an aLoRA adapter acts only on the tokens from its invocation sequence on, so it cannot be merged (PEFT "
         "refuses too) and loradial's evaluation, which applies it to every token, would not be the adapter; its factors "
         "are ordinary LoRA factors (analyze / resize / rescale are exact)",
         "evaluate it with PEFT (which finds the invocation tokens); merging is impossible", case="not null", engaged=_on),
    _row("target_parameters", "an MoE expert (parameter) LoRA", {**_ALL_REFUSED, PLAN: EXACT},
         "MoE expert adapters are not supported yet: PEFT's ParamWrapper adapts raw parameters (on transformers-5 MoE "
         "models the fused expert weights, which PEFT targets for 'all-linear' and for the experts' v4 names), with one "
         "lora_A / lora_B pair shared across the experts, which loradial does not model; the file is valid (plan counts "
         "these adapters exactly)",
         "analyze / merge MoE expert adapters with PEFT (merge_and_unload); target only the attention and dense layers "
         "(target_modules=[...] without the experts) for an adapter loradial can read",
         case="not empty", engaged=_on),
    _row("layer_replication", "replicated layers", {**_FACTORS_ONLY, PLAN: NOT_OFFERED},
         "PEFT stacks copies of base layers into a deeper model before adapting it: the adapter's modules (layers.N "
         "beyond the base's depth) exist only in that model, which loradial does not build; the factors themselves are "
         "read exactly (analyze --base maps each copy to the base layer it repeats)",
         "merge / evaluate it with PEFT, which builds the replicated model", case="not null", engaged=_on),
    _row("use_qalora", "QALoRA", _ALL_REFUSED,
         "QALoRA (GPTQ bases only) average-pools the input in groups before lora_A, so ΔW is not s·B·A",
         "merge / evaluate it with PEFT on the GPTQ base", case="true", engaged=_on),
    _row("qalora_group_size", "qalora_group_size", _ALL_HARMLESS, "only used with use_qalora"),
    _row("use_bdlora", "BD-LoRA", _ALL_REFUSED,
         "BD-LoRA stores block-diagonal lora_A / lora_B compactly (one block row per shard), not as r × d_in / d_out × r",
         "merge it with PEFT (merge_and_unload)", case="not null", engaged=_on),
    _row("kasa_config", "KaSA", _ALL_REFUSED,
         "KaSA truncates the base weights' smallest singular directions and inserts a learned diagonal between A and B",
         "merge it with PEFT (merge_and_unload) on the base it was trained from", case="not null", engaged=_on),
    _row("arrow_config", "Arrow routing", _ALL_REFUSED,
         "Arrow routes each token among several task adapters; one adapter alone is not the model it describes",
         "use PEFT's create_arrow_model", case="not null", engaged=_on),
    _row("velora_config", "VeLoRA", {**_ALL_HARMLESS, PLAN: HARMLESS},
         "VeLoRA changes only the training backward pass; its forward and merge are plain LoRA's and its saved "
         "projection buffer (lora_velora_embed) is carried through", case="not null", engaged=_on),
    _row("monteclora_config", "MonteCLoRA", {**_ALL_HARMLESS, RESIZE: REFUSED, PLAN: NOT_OFFERED},
         "MonteCLoRA samples perturbations of lora_A in training only; its eval forward and merge are plain LoRA's and "
         "its saved sampler parameters are carried through (plan does not count them); but the sampler's parameters "
         "are sized by the rank, so a resized adapter would not load in PEFT",
         "resize is not possible; analyze, rescale, alpha-sweep and merge are exact", case="not null", engaged=_on),
    _row("megatron_config", "Megatron parallel layers", _ALL_REFUSED,
         "a LoRA for Megatron-LM's tensor-parallel layers, not a Hugging Face model loradial can load",
         "merge it with Megatron / PEFT", case="not null", engaged=_on),
    _row("megatron_core", "megatron_core", _ALL_HARMLESS, "only used with megatron_config"),
    _row("runtime_config", "runtime_config", _ALL_HARMLESS, "runtime settings (e.g. ephemeral GPU offload), not saved behaviour"),
)

BY_FIELD: dict[str, list[Feature]] = {}
for _f in FEATURES:
    BY_FIELD.setdefault(_f.field, []).append(_f)


def rows_for(field: str, value: Any, config: Mapping[str, Any]) -> list[Feature]:
    """The rows of ``field`` that ``value`` engages."""
    return [f for f in BY_FIELD.get(field, ()) if f.engaged(value, config)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(config: Mapping[str, Any], verb: str) -> None:
    """Raise a ``LoradialError`` (exit 2) if ``verb`` refuses a feature ``config`` engages.

    ``verb`` is one of ``ADAPTER_VERBS`` or ``READ`` (``load_adapter``: only what every adapter verb refuses,
    so a file loradial cannot read is named for what it is rather than failing a shape check). Fields this
    table does not know are refused by every verb (not by ``READ``) unless their value is off (null, false, empty).
    """
    if verb != READ and verb not in ADAPTER_VERBS:
        raise ValueError(f"unknown verb {verb!r}")
    for field, value in config.items():
        rows = BY_FIELD.get(field)
        if rows is None:
            if verb != READ and _on(value, config) and not field.startswith("_"):
                raise LoradialError(
                    f"adapter_config.json has {field}={_short(value)}, a field PEFT 0.21's LoraConfig does not have",
                    "loradial knows PEFT 0.21's LoRA features and will not guess what this one does; remove the field "
                    "if it is off, or use PEFT for this adapter")
            continue
        for row in rows:
            if not row.engaged(value, config):
                continue
            refused = (all(row.status(v) == REFUSED for v in ADAPTER_VERBS) if verb == READ
                       else row.status(verb) == REFUSED)
            if refused and not (verb == RESCALE and field == "use_dora"):  # rescale decides DoRA by its mode
                who = "loradial cannot use this adapter" if verb == READ else f"loradial {verb} cannot use it"
                raise LoradialError(f"{row.title} ({field}={_short(value)}): {who}: {row.reason}", row.action or None)


# --- the docs page ------------------------------------------------------------------------------------------
_MARK = {EXACT: "exact", APPROXIMATE: "approx.", REFUSED: "**refused**", HARMLESS: "harmless", NOT_OFFERED: "—"}


def counts() -> dict[str, int]:
    """How many rows are refused somewhere, exact somewhere (and refused nowhere), or harmless everywhere."""
    out = {"rows": len(FEATURES), "fields": len(BY_FIELD), "harmless": 0, "exact": 0, "refused": 0, "partly refused": 0}
    for f in FEATURES:
        st = [f.status(v) for v in ADAPTER_VERBS]
        if all(s == HARMLESS for s in st):
            out["harmless"] += 1
        elif all(s == REFUSED for s in st):
            out["refused"] += 1
        elif REFUSED in st:
            out["partly refused"] += 1
        else:
            out["exact"] += 1
    return out


def render_markdown() -> str:
    """docs/adapter-features.md, generated from ``FEATURES`` (scripts/gen_adapter_features.py writes it)."""
    c = counts()
    lines = [
        "# PEFT adapter features: what each verb does with every `LoraConfig` field",
        "",
        "<!-- generated by scripts/gen_adapter_features.py from src/loradial/adapters/features.py; do not edit -->",
        "",
        "loradial promises exact answers, so every field of PEFT 0.21's `LoraConfig` is either modelled exactly or "
        "refused with exit code 2, a message naming the feature and a hint — never silently ignored when it changes "
        "what the adapter does. A field this table does not know (a newer PEFT) is refused unless its value is off.",
        "",
        "- **exact**: modelled exactly; tests compare with PEFT on adapters PEFT made (tests/test_adapter_features.py)",
        "- **approx.**: a documented approximation, said in the verb's notes",
        "- **refused**: exit code 2 with the reason and what to do; nothing is written",
        "- **harmless**: does not change what the verb computes",
        "- **—** (plan): plan has no option for it",
        "",
        f"{c['fields']} fields in {c['rows']} rows: {c['exact']} exact (or approximate, said), {c['harmless']} harmless, "
        f"{c['refused']} refused by every verb, {c['partly refused']} refused by some verbs.",
        "",
        "| field | values | " + " | ".join(VERBS) + " |",
        "|---|---|" + "---|" * len(VERBS),
    ]
    for f in FEATURES:
        lines.append(f"| `{f.field}` | {f.case} | " + " | ".join(_MARK[f.status(v)] for v in VERBS) + " |")
    lines += ["", "## Why, and what you can do", ""]
    for f in FEATURES:
        lines.append(f"- **`{f.field}`** ({f.case}): {f.reason}." + (f" *What to do:* {f.action}." if f.action else ""))
    lines += [
        "",
        "Not a config field, but also refused cleanly: conv LoRA layers (4-D factors), pickle checkpoints without "
        "`--allow-pickle`, and adapter tensors that match no parameter of the base model (merge, alpha-sweep, "
        "analyze --data).",
        "",
    ]
    return "\n".join(lines)
