"""Write a LoRA config in another trainer's own key names (``--export`` on recommend, ``loradial export``).

Alpha is always written explicitly: the trainers' defaults differ (PEFT r=8/alpha=8, TRL 16/32,
Unsloth 16/16, LLaMA-Factory alpha=2r). Whatever a format cannot express is said in ``warnings``,
never dropped silently. Key names were checked against each tool's source:

* ``peft``          JSON of ``peft.LoraConfig`` keyword arguments.
* ``trl``           YAML for ``trl sft --config``: ModelConfig (use_peft, lora_r, lora_alpha, lora_dropout,
                    lora_target_modules, use_rslora, use_dora, model_name_or_path) + SFTConfig (_HF_KEYS).
* ``axolotl``       YAML: adapter: lora (qlora + load_in_4bit: true for a 4-bit base), lora_r, lora_alpha
                    (an int), lora_dropout, lora_target_linear or lora_target_modules, peft_use_rslora,
                    peft_use_dora, lora_rank_pattern / lora_alpha_pattern (regex -> int, forwarded to
                    PEFT's rank_pattern / alpha_pattern; axolotl >= 0.19), micro_batch_size, ...
* ``llamafactory``  YAML: finetuning_type: lora, lora_rank, lora_alpha, lora_dropout, lora_target
                    ('all' or comma-separated names), use_rslora, use_dora, quantization_bit: 4 for a
                    4-bit base, disable_gradient_checkpointing (LLaMA-Factory checkpoints by default).
* ``unsloth``       JSON: ``from_pretrained`` (load_in_4bit always explicit: Unsloth's default is True,
                    which would replay a LoRA measurement as QLoRA), ``get_peft_model`` keyword arguments
                    (target_modules as an explicit list; Unsloth iterates it) and the trainer arguments.
* ``torchtune``     YAML fragment of a LoRA recipe: model.lora_attn_modules (q_proj, k_proj, v_proj,
                    output_proj), apply_lora_to_mlp (all MLP projections or none),
                    apply_lora_to_output, lora_rank, lora_alpha, lora_dropout, use_dora;
                    optimizer.lr/weight_decay, batch_size, epochs, max_steps_per_epoch, clip_grad_norm, ...
                    No rsLoRA: alpha is rescaled to alpha*sqrt(r), so alpha'/r = alpha/sqrt(r) (same s).

Every format is checked in tests by the tool's own parser where it installs (PEFT ``LoraConfig``, TRL's
``HfArgumentParser((ModelConfig, SFTConfig))``, axolotl's ``AxolotlInputConfig``, LLaMA-Factory's
argument parser, torchtune's ``config.validate``) and always against each tool's field list committed
in tests/data/schemas/ (with the version and source it was read from).

The input is a config in PEFT's vocabulary (``CONFIG_KEYS``) plus optional training settings
(``TRAIN_KEYS``, the engine's names) that each builder writes as its tool's keys; warmup in steps (the
engine's ceil(ratio x steps)) when the total is known; a setting the input lacks is not written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
from loradial.io import atomic_write_text, check_out_not_overlapping, read_json
from loradial.result import Result
from loradial.settings import TrainSettings, migrate, validated
from loradial.advice.rules import plain_number

FORMATS = ("peft", "trl", "axolotl", "llamafactory", "unsloth", "torchtune")
CONFIG_KEYS = ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "lora_dropout", "rank_pattern", "alpha_pattern")
TRAIN_KEYS = ("model", "learning_rate", "micro_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "seq_len",
              "max_steps", "epochs", "schedule", "warmup_steps", "warmup_ratio", "max_grad_norm", "weight_decay",
              "load_in_4bit")
REQUIRED = ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "learning_rate")
#: TRAIN_KEYS -> the keys of trainers built on HF TrainingArguments (TRL's SFTConfig, LLaMA-Factory, Unsloth).
_HF_KEYS = {"learning_rate": "learning_rate", "micro_batch_size": "per_device_train_batch_size",
            "gradient_accumulation_steps": "gradient_accumulation_steps", "max_steps": "max_steps",
            "epochs": "num_train_epochs", "schedule": "lr_scheduler_type", "warmup_steps": "warmup_steps",
            "warmup_ratio": "warmup_ratio", "max_grad_norm": "max_grad_norm", "weight_decay": "weight_decay"}
_AXOLOTL_KEYS = {"seq_len": "sequence_len", **_HF_KEYS, "micro_batch_size": "micro_batch_size", "epochs": "num_epochs",
                 "schedule": "lr_scheduler", "gradient_checkpointing": "gradient_checkpointing"}
#: The engine's schedules (linear warmup, then ...) in HF's SchedulerType names.
_HF_SCHEDULE = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}

#: Unsloth's own default target list for Llama-style models (used when the model is unknown).
LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_TT_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj", "out_proj": "output_proj",
            "query": "q_proj", "key": "k_proj", "value": "v_proj", "output_proj": "output_proj"}
_MLP_LEAVES = {"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3", "fc1", "fc2", "c_fc", "dense_h_to_4h", "dense_4h_to_h"}


@dataclasses.dataclass
class ExportResult(Result):
    format: str
    document: dict[str, Any]
    """The exported config as data (what ``text`` serializes)."""
    text: str
    path: str | None
    warnings: list[str]


# --- helpers -------------------------------------------------------------------------------------
def _check(config: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise LoradialError(f"config lacks {', '.join(missing)}", f"an exported config needs {', '.join(REQUIRED)}")
    r = config["r"]
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise LoradialError(f"r must be a positive integer, got {r!r}")
    a = config["lora_alpha"]
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0:
        raise LoradialError(f"lora_alpha must be a positive number, got {a!r}")
    return config


def _int_alpha(alpha: float, r: int, rslora: bool, tool: str, warnings: list[str]) -> int | float:
    """Tools that type lora_alpha as int: round, and say how much the scale moved."""
    if float(alpha).is_integer():
        return int(alpha)
    new = max(1, int(round(alpha)))
    denom = math.sqrt(r) if rslora else r
    warnings.append(f"{tool} takes an integer lora_alpha: {alpha:g} rounded to {new} (s {alpha / denom:.4g} -> {new / denom:.4g})")
    return new


def target_leaves(target_modules: Any, info=None) -> tuple[list[str] | None, str | None]:
    """(explicit leaf names, regex) for a PEFT target_modules value.

    'all-linear' with a model expands to the leaf names of its linear layers (output head excluded);
    without a model it stays None. A regex string is returned as the regex (and expanded to leaf
    names when the model is known).
    """
    if isinstance(target_modules, (list, tuple)):
        return [str(t) for t in target_modules], None
    if not isinstance(target_modules, str):
        raise LoradialError(f"target_modules must be a list of names, a regex or 'all-linear', got {target_modules!r}")
    regex = None if target_modules.lower() == "all-linear" else target_modules
    if info is None:
        return None, regex
    from loradial.models.targets import matched_modules
    from loradial.spec import LoraSpec

    names = [m.name for m in matched_modules(LoraSpec(r=1, lora_alpha=1, target_modules=target_modules), info)]
    leaves: list[str] = []
    for n in names:
        leaf = n.rsplit(".", 1)[-1]
        if leaf not in leaves:
            leaves.append(leaf)
    return leaves, regex


def _leaves_exact(leaves: list[str], target_modules: Any, info) -> bool:
    """Whether PEFT would wrap the same modules for ``leaves`` as for ``target_modules``."""
    from loradial.models.targets import matched_modules
    from loradial.spec import LoraSpec

    a = {m.name for m in matched_modules(LoraSpec(r=1, lora_alpha=1, target_modules=target_modules), info)}
    b = {m.name for m in matched_modules(LoraSpec(r=1, lora_alpha=1, target_modules=leaves), info)}
    return a == b


def _pattern_warning(config: dict[str, Any], tool: str, warnings: list[str]) -> None:
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            warnings.append(f"{tool} cannot express {key} {config[key]}: every module gets r={config['r']}, "
                            f"lora_alpha={config['lora_alpha']}")


# --- one builder per format ----------------------------------------------------------------------
def _peft(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    doc = {"r": c["r"], "lora_alpha": c["lora_alpha"], "target_modules": c["target_modules"],
           "lora_dropout": c.get("lora_dropout", 0.0), "use_rslora": c["use_rslora"], "use_dora": c["use_dora"],
           "bias": "none", "task_type": "CAUSAL_LM"}
    doc.update({k: dict(c[k]) for k in ("rank_pattern", "alpha_pattern") if c.get(k)})
    return doc


def _trl(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    _pattern_warning(c, "TRL's ModelConfig", w)
    targets = c["target_modules"]
    doc: dict[str, Any] = {}
    if c.get("model"):
        doc["model_name_or_path"] = c["model"]
    doc.update({"use_peft": True, "lora_r": c["r"], "lora_alpha": c["lora_alpha"],
                "lora_dropout": c.get("lora_dropout", 0.0),
                "lora_target_modules": targets if isinstance(targets, str) else list(targets),
                "use_rslora": c["use_rslora"], "use_dora": c["use_dora"]})
    if c.get("load_in_4bit"):
        doc["load_in_4bit"] = True
    doc.update(_training(c, {**_HF_KEYS, "gradient_checkpointing": "gradient_checkpointing", "seq_len": "max_length"}))
    return doc


def _training(c: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The training settings in ``c`` under a tool's own names (``keys``: ours -> its); absent ones omitted."""
    out: dict[str, Any] = {}
    for ours, theirs in keys.items():
        v = c.get(ours)
        if v is None and theirs == "max_grad_norm" and ours in c:
            v = 0.0  # the engine's None (no clipping) is 0 in HF's TrainingArguments (torchtune's default is None)
        if v is not None:
            out[theirs] = _HF_SCHEDULE.get(v, v) if ours == "schedule" else bool(v) if ours == "gradient_checkpointing" else v
    return out


def _axolotl(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if c.get("model"):
        doc["base_model"] = c["model"]
    if c.get("load_in_4bit"):
        doc["load_in_4bit"] = True
    doc.update({"adapter": "qlora" if c.get("load_in_4bit") else "lora", "lora_r": c["r"],
                "lora_alpha": _int_alpha(c["lora_alpha"], c["r"], c["use_rslora"], "axolotl", w),
                "lora_dropout": c.get("lora_dropout", 0.0)})
    t = c["target_modules"]
    if isinstance(t, str) and t.lower() == "all-linear":
        doc["lora_target_linear"] = True
    else:
        doc["lora_target_modules"] = t if isinstance(t, str) else list(t)
    doc.update({"peft_use_rslora": c["use_rslora"], "peft_use_dora": c["use_dora"]})
    if c.get("rank_pattern"):
        doc["lora_rank_pattern"] = {k: int(v) for k, v in c["rank_pattern"].items()}
    if c.get("alpha_pattern"):  # axolotl types the values as positive ints, like lora_alpha
        doc["lora_alpha_pattern"] = {k: _int_alpha(v, c.get("rank_pattern", {}).get(k, c["r"]), c["use_rslora"],
                                                   f"axolotl (alpha_pattern {k!r})", w)
                                     for k, v in c["alpha_pattern"].items()}
    doc.update(_training(c, _AXOLOTL_KEYS))
    return doc


def _llamafactory(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    _pattern_warning(c, "LLaMA-Factory", w)
    doc: dict[str, Any] = {}
    if c.get("model"):
        doc["model_name_or_path"] = c["model"]
    t = c["target_modules"]
    if isinstance(t, str) and t.lower() == "all-linear":
        target = "all"
    else:
        leaves, regex = target_leaves(t, info)
        if regex is not None and leaves is None:
            raise LoradialError(f"LLaMA-Factory takes module names, not the regex {regex!r}",
                                "pass --model so the regex can be expanded to module names")
        if regex is not None:
            w.append(f"LLaMA-Factory takes module names: regex {regex!r} expanded to {','.join(leaves)}")
        target = ",".join(leaves)
    doc.update({"stage": "sft", "finetuning_type": "lora", "lora_rank": c["r"],
                "lora_alpha": _int_alpha(c["lora_alpha"], c["r"], c["use_rslora"], "LLaMA-Factory", w),
                "lora_dropout": c.get("lora_dropout", 0.0), "lora_target": target,
                "use_rslora": c["use_rslora"], "use_dora": c["use_dora"]})
    if c.get("load_in_4bit"):
        doc["quantization_bit"] = 4
    doc.update(_training(c, {**_HF_KEYS, "seq_len": "cutoff_len"}))
    if c.get("gradient_checkpointing") is not None:
        doc["disable_gradient_checkpointing"] = not c["gradient_checkpointing"]
    return doc


def _explicit_list(c: dict[str, Any], info, tool: str, w: list[str]) -> list[str]:
    t = c["target_modules"]
    leaves, regex = target_leaves(t, info)
    if leaves is None:
        if regex is not None:
            raise LoradialError(f"{tool} needs module names, not the regex {regex!r}",
                                "pass --model so the regex can be expanded to module names")
        w.append(f"{tool} needs explicit target names: assumed the Llama-style {','.join(LLAMA_STYLE)} "
                 "for all-linear (pass --model for this model's names)")
        return list(LLAMA_STYLE)
    if info is not None and isinstance(t, str) and not _leaves_exact(leaves, t, info):
        w.append(f"{tool}: the names {','.join(leaves)} match more modules than {t!r} does in this model")
    return leaves


def _unsloth(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"r": c["r"], "lora_alpha": c["lora_alpha"], "lora_dropout": c.get("lora_dropout", 0.0),
                              "target_modules": _explicit_list(c, info, "Unsloth", w), "bias": "none",
                              "use_rslora": c["use_rslora"]}
    if c.get("gradient_checkpointing") is not None:
        kwargs["use_gradient_checkpointing"] = "unsloth" if c["gradient_checkpointing"] else False
    passed = [k for k in ("use_dora", "rank_pattern", "alpha_pattern") if c.get(k)]
    kwargs.update({k: True if k == "use_dora" else dict(c[k]) for k in passed})
    if passed:
        w.append(f"Unsloth's get_peft_model has no {', '.join(passed)} parameter; they are passed through its "
                 "**kwargs to peft.LoraConfig, outside Unsloth's optimized path")
    # Unsloth's from_pretrained defaults to load_in_4bit=True: without it a replay trains QLoRA, not what was measured
    doc: dict[str, Any] = {"from_pretrained": {k: v for k, v in (("model_name", c.get("model")), ("max_seq_length", c.get("seq_len"))) if v}}
    doc["from_pretrained"]["load_in_4bit"] = bool(c.get("load_in_4bit"))
    doc["get_peft_model"] = kwargs
    train = _training(c, _HF_KEYS)
    if train:
        doc["training_args"] = train
    return doc


def _torchtune(c: dict[str, Any], info, w: list[str]) -> dict[str, Any]:
    _pattern_warning(c, "torchtune", w)
    t = c["target_modules"]
    attn: list[str] = []
    mlp_hit: set[str] = set()
    output = False
    if isinstance(t, str) and t.lower() == "all-linear" and info is None:
        attn, mlp_all = ["q_proj", "k_proj", "v_proj", "output_proj"], True
    else:
        leaves, _ = target_leaves(t, info)
        if leaves is None:
            raise LoradialError(f"torchtune needs module names, not the regex {t!r}", "pass --model to expand it")
        mlp_model = {m.name.rsplit(".", 1)[-1] for m in info.modules if _is_mlp(m.name)} if info is not None else _MLP_LEAVES
        dropped = []
        for leaf in leaves:
            if leaf in _TT_ATTN:
                if _TT_ATTN[leaf] not in attn:
                    attn.append(_TT_ATTN[leaf])
            elif leaf in mlp_model or leaf in _MLP_LEAVES:
                mlp_hit.add(leaf)
            elif leaf in ("lm_head", "output"):
                output = True
            else:
                dropped.append(leaf)
        if dropped:
            w.append(f"torchtune has no LoRA switch for {', '.join(dropped)}: not targeted")
        mlp_names = (mlp_model & _MLP_LEAVES) or mlp_model
        mlp_all = bool(mlp_hit)
        if mlp_hit and mlp_names and mlp_hit != mlp_names:
            w.append(f"torchtune applies LoRA to all MLP projections or none: apply_lora_to_mlp covers "
                     f"{', '.join(sorted(mlp_names))}, not only {', '.join(sorted(mlp_hit))}")
    alpha = c["lora_alpha"]
    if c["use_rslora"]:
        alpha = plain_number(round(alpha * math.sqrt(c["r"]), 4))
        w.append(f"torchtune has no rsLoRA: lora_alpha {c['lora_alpha']:g} with s = alpha/sqrt(r) written as "
                 f"lora_alpha {alpha:g} with s = alpha/r (the same scale at r={c['r']})")
    if c.get("load_in_4bit"):
        w.append("torchtune: the measurement used a 4-bit base; use your model's qlora_* builder (e.g. "
                 "torchtune.models.llama3_1.qlora_llama3_1_8b) as model._component_")
    w.append("set model._component_ to your model's torchtune LoRA builder (e.g. torchtune.models.llama3_1.lora_llama3_1_8b)")
    model = {"lora_attn_modules": attn, "apply_lora_to_mlp": mlp_all, "apply_lora_to_output": output,
             "lora_rank": c["r"], "lora_alpha": alpha, "lora_dropout": c.get("lora_dropout", 0.0),
             "use_dora": c["use_dora"]}
    doc: dict[str, Any] = {"model": model, "optimizer": _training(c, {"learning_rate": "lr", "weight_decay": "weight_decay"})}
    doc.update(_training(c, {"micro_batch_size": "batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
                             "gradient_checkpointing": "enable_activation_checkpointing", "max_grad_norm": "clip_grad_norm",
                             "epochs": "epochs"}))
    if c.get("max_steps"):
        doc.update(epochs=1, max_steps_per_epoch=c["max_steps"])
        w.append(f"torchtune ends an epoch when the data runs out: if {c['max_steps']} steps are more than one pass, "
                 "raise epochs so that epochs x steps per epoch reaches them")
    if c.get("schedule") == "cosine" and c.get("warmup_steps") is not None:
        doc["lr_scheduler"] = {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                               "num_warmup_steps": c["warmup_steps"]}
    elif c.get("schedule"):
        w.append(f"torchtune: lr_scheduler not written (set one for the {c['schedule']} schedule with warmup "
                 f"{c.get('warmup_steps', c.get('warmup_ratio'))})")
    return doc


def _is_mlp(name: str) -> bool:
    from loradial.models.targets import module_category

    return module_category(name) == "mlp"


_BUILDERS = {"peft": _peft, "trl": _trl, "axolotl": _axolotl, "llamafactory": _llamafactory,
             "unsloth": _unsloth, "torchtune": _torchtune}
_YAML = {"trl", "axolotl", "llamafactory", "torchtune"}


def render(fmt: str, doc: dict[str, Any]) -> str:
    if fmt in _YAML:
        import yaml

        head = f"# {fmt} config written by loradial (alpha explicit; merge into your config)\n"
        return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return json.dumps(doc, indent=2) + "\n"


def export_config(config: dict[str, Any], format: str, out: str | Path | None = None, info=None) -> ExportResult:
    """Export ``config`` (PEFT vocabulary + optional training keys) as ``format``; write ``out`` if given.

    ``info`` (a ``models.ModelInfo``) lets all-linear and regex targets expand to this model's names.
    """
    fmt = (format or "").lower()
    if fmt not in FORMATS:
        raise LoradialError(f"unknown export format {format!r}", f"expected one of {', '.join(FORMATS)}")
    c = _check(dict(config))
    c["lora_alpha"] = plain_number(c["lora_alpha"])
    if c.get("model"):
        c["model"] = hub_id(str(c["model"]))
    if c.get("warmup_steps") is None and c.get("warmup_ratio") is not None and c.get("max_steps"):
        c["warmup_steps"] = math.ceil(c["warmup_ratio"] * c["max_steps"])  # the engine's count: exact in every tool
    if c.get("warmup_steps") is not None:
        c.pop("warmup_ratio", None)
    warnings: list[str] = []
    doc = _BUILDERS[fmt](c, info, warnings)
    text = render(fmt, doc)
    if out is not None:
        atomic_write_text(out, text)
    return ExportResult(fmt, doc, text, str(out) if out is not None else None, warnings)


# --- sweep results ---------------------------------------------------------------------------------
def sweep_entry(results: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The config to export from a sweep's results.json: ``name``, or the ``best`` one.

    Fields read (the sweep writes them): top level ``best`` (a config name) and ``configs`` (a list);
    per config ``name``, ``r``, ``lora_alpha``, ``use_rslora``, ``use_dora``, ``target_modules``,
    ``learning_rate`` and, if present, ``lora_dropout``, ``rank_pattern``, ``alpha_pattern``;
    ``variant`` ('lora' | 'rslora' | 'dora') stands in for use_rslora/use_dora when those are absent.
    ``settings.model``, ``steps`` (else ``epochs``) and ``settings.train`` (a ``TrainSettings``: max_len,
    batch_size, grad_accum, gradient_checkpointing, dropout, schedule, warmup, weight decay, clipping, load_in_4bit)
    fill the training keys; a results.json of an earlier release is migrated first.
    """
    configs = results.get("configs")
    if not isinstance(configs, list) or not configs:
        raise LoradialError("results.json has no configs", "expected a finished `loradial sweep` directory")
    want = name if name is not None else results.get("best")
    if isinstance(want, dict):
        want = want.get("name")
    if want is None:
        raise LoradialError("results.json names no best config (no eval loss?)", "pick one with --config NAME")
    entry = next((c for c in configs if isinstance(c, dict) and c.get("name") == want), None)
    if entry is None:
        names = ", ".join(str(c.get("name")) for c in configs[:10] if isinstance(c, dict))
        raise LoradialError(f"no config named {want!r} in results.json", f"configs: {names}")
    cfg = {k: entry[k] for k in (*CONFIG_KEYS, "learning_rate") if k in entry}
    variant = entry.get("variant")
    cfg.setdefault("use_rslora", variant == "rslora")
    cfg.setdefault("use_dora", variant == "dora")
    settings = results.get("settings") or {}
    if not isinstance(settings, dict):
        raise LoradialError("results.json: settings is not an object", "expected a finished `loradial sweep` directory")
    if settings.get("loradial_sweep", 1) == 1:  # results.json of a release before settings were typed
        settings = migrate({**settings, "loradial_sweep": 1}, "results.json")
    train = validated(TrainSettings, settings.get("train") or {}, "results.json: settings.train")
    for src, dst in (("model", "model"), ("steps", "max_steps")):
        if settings.get(src) is not None:
            cfg[dst] = settings[src]
    cfg["seq_len"], cfg["micro_batch_size"] = train.max_len, train.batch_size
    if "max_steps" not in cfg and settings.get("epochs") is not None:
        cfg["epochs"] = settings["epochs"]
    cfg["gradient_accumulation_steps"] = train.grad_accum
    if train.gradient_checkpointing:
        cfg["gradient_checkpointing"] = True
    cfg["load_in_4bit"] = bool(train.load_in_4bit)
    if train.dropout and "lora_dropout" not in cfg:  # sweep --dropout: every config's lora_dropout
        cfg["lora_dropout"] = train.dropout
    cfg.update({k: getattr(train, k) for k in TRAIN_KEYS
                if k in TrainSettings.model_fields and getattr(train, k) is not None})
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise LoradialError(f"config {want!r} in results.json lacks {', '.join(missing)}",
                            f"each config needs {', '.join(REQUIRED)}")
    cfg["name"] = want
    return cfg


def export_sweep(sweep_dir: str | Path, format: str, out: str | Path | None = None, name: str | None = None) -> ExportResult:
    """Export the best config (or ``name``) of a finished sweep directory (its results.json)."""
    p = Path(sweep_dir)
    path = p / "results.json" if p.is_dir() else p
    if not path.exists():
        raise LoradialError(f"no results.json in {p}", "export needs a finished `loradial sweep` directory")
    check_out_not_overlapping(out, [("sweep", p), ("sweep results", path)], out_is_file=True)
    results = read_json(path, "sweep results")
    if not isinstance(results, dict):
        raise LoradialError(f"{path} is not a sweep results object", "expected keys best and configs")
    cfg = sweep_entry(results, name)
    cfg.pop("name")
    return export_config(cfg, format, out, info=_local_model_info(cfg.get("model")))


def hub_id(model: str) -> str:
    """A bundled short name ('llama-3.2-1b') becomes its Hub id, which the trainers load; others stay."""
    from loradial.models.resolve import bundled_entry

    entry = None if Path(model).expanduser().exists() else bundled_entry(model)
    return entry.get("hub_id") or model if entry else model


def _local_model_info(model: str | None):
    """ModelInfo for a local model directory or a bundled name (never the network); None otherwise."""
    if not model:
        return None
    from loradial.models.resolve import bundled_entry, inspect_model

    if not (Path(model).expanduser().is_dir() or bundled_entry(model) is not None):
        return None
    try:
        return inspect_model(model)
    except LoradialError:
        return None
