"""Which modules PEFT wraps for a LoRA config — exactly, without building the model.

The rules are PEFT 0.21's (peft/tuners/tuners_utils.py ``check_target_module_exists``,
``_maybe_include_all_linear_layers``, ``inject_adapter``, ``_inject_parameters``; peft/tuners/lora/model.py
``_create_and_replace``), applied to the module list of a ``ModelInfo``:

- a list matches a module whose name equals an entry or ends with '.' + entry (``layers_to_transform``
  then filters by the first numbered path segment); a string is a full regex match; 'all-linear' is
  every Linear / GPT-2 Conv1D but the output head; ``exclude_modules`` wins over both.
- a target that matches a module LoRA cannot wrap (a container, a norm...) is an error in PEFT.
- rank and alpha per module: the first ``rank_pattern`` / ``alpha_pattern`` key k (in order) with
  ``re.match(rf"(.*\\.)?({k})$", name)``, else r / lora_alpha.
- MoE models whose experts transformers 5 fuses into 3-D parameters: PEFT rewrites the config first
  (peft/utils/transformers_weight_conversion.py ``_convert_peft_config_moe``): the transformers-v4
  names (Mixtral w1/w2/w3/gate, Qwen-MoE gate_proj/up_proj/down_proj/gate) become
  ``target_parameters`` (wrapped by lora.ParamWrapper regardless of layers_to_transform and
  exclude_modules), a fused gate_up_proj gets rank 2r and alpha 2·alpha, and a string target is first
  reduced to the leaf names of what it matches.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from loradial.errors import LoradialError
from loradial.models.info import LINEAR_KINDS, ModelInfo, ModuleInfo
from loradial.spec import ALL_LINEAR, LoraSpec, _excluded, get_pattern_key, layer_index

PRESETS = ("all-linear", "attention", "mlp")
_ROUTERS = {"gate", "router", "shared_expert_gate"}

# --- PEFT 0.21's transformers-v5 MoE conversion (peft/utils/transformers_weight_conversion.py) ----
_MOE_MAPPING = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"},
}
_MOE_FUSED = {"mixtral": {"gate_up_proj": ["w1", "w3"]}, "qwen2_moe": {"gate_up_proj": ["gate_proj", "up_proj"]}}
#: model_type -> conversion base, where PEFT 0.21 converts configs under transformers 5.17 (checked by a test
#: against PEFT's own tables). Note that qwen2_moe itself is *not* converted: its experts stay untargeted.
MOE_CONVERTED = {
    "mixtral": "mixtral", "minimax": "mixtral", "minimax_m2": "mixtral",
    **{t: "qwen2_moe" for t in (
        "afmoe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe", "glm4_moe", "glm4_moe_lite",
        "glm_moe_dsa", "glm4v_moe", "longcat_flash", "solar_open", "mellum", "qwen3_moe", "qwen3_omni_moe",
        "qwen3_omni_moe_thinker", "qwen3_next", "hunyuan_v1_moe", "flex_olmo", "olmoe", "exaone_moe", "cohere2_moe")},
}


@dataclasses.dataclass
class Targeting:
    """What PEFT does with one LoRA config on one model."""

    spec: LoraSpec
    """The config as PEFT applies it (after the MoE conversion; equal to the input otherwise)."""
    targeted: list[tuple[ModuleInfo, int, float]]
    """(module, rank, alpha) for every wrapped module or parameter, in model order."""
    target_parameters: list[str]
    unused_pattern_keys: dict[str, list[str]]

    @property
    def pairs(self) -> list[tuple[ModuleInfo, int]]:
        """(module, rank): the ``targeted`` argument of cost.trainable_params and memory.estimate_training_memory."""
        return [(m, r) for m, r, _ in self.targeted]


# --- fast matching ---------------------------------------------------------------------------------
def _dot_suffixes(name: str) -> list[str]:
    """'a.b.c' -> ['a.b.c', 'b.c', 'c']: the strings t with name == t or name.endswith('.' + t)."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


class Matcher:
    """``LoraSpec.matches`` with the target list as a set (PEFT check_target_module_exists, same rules).

    Equal to ``spec.matches(name, linear_names)`` for every name (tested); O(depth) per name instead
    of O(len(targets)), which matters for 'all-linear' on a 126-layer model.
    """

    def __init__(self, spec: LoraSpec, linear_names: Sequence[str]):
        self.spec = spec
        targets = spec.target_modules
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            targets = list(linear_names)
        self.regex = re.compile(targets) if isinstance(targets, str) else None
        self.names = set(targets or []) if self.regex is None else set()
        layers = spec.layers_to_transform
        self.layers = layers if (layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)) else None

    def __call__(self, name: str) -> bool:
        spec = self.spec
        if _excluded(spec.exclude_modules, name):
            return False
        if spec.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in spec.modules_to_save):
            return False
        if spec.target_modules is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(name) is not None
        if name in self.names:
            return True
        found = any(s in self.names for s in _dot_suffixes(name)[1:])
        if found and self.layers is not None:
            idx = layer_index(name, spec.layers_pattern)
            if idx is None:
                return False
            return idx == self.layers if isinstance(self.layers, int) else idx in self.layers
        return found


# --- presets -----------------------------------------------------------------------------------------
def module_category(name: str) -> str | None:
    """'attention' or 'mlp' from the module path, by the naming conventions of HF model families."""
    low = name.lower()
    if "attn" in low or "attention" in low:
        return "attention"
    if any(h in low for h in ("mlp", "feed_forward", "ffn", "intermediate", "experts", "moe")) or low.endswith(".output.dense"):
        return "mlp"
    return None


def _all_module_names(info: ModelInfo) -> list[str]:
    return [m.name for m in info.modules if m.kind != "param"] + list(info.other_modules)


def exact_names(members: Sequence[str], info: ModelInfo) -> list[str]:
    """The shortest dot-suffixes that, as a PEFT target list, match exactly ``members`` among all modules."""
    member_set = set(members)
    owners: dict[str, set[str]] = {}
    for name in _all_module_names(info):
        for s in _dot_suffixes(name):
            owners.setdefault(s, set()).add(name)
    out: list[str] = []
    for name in members:
        for s in reversed(_dot_suffixes(name)):  # shortest first
            if owners.get(s, set()) <= member_set:
                if s not in out:
                    out.append(s)
                break
    return out


def preset_targets(preset: str, info: ModelInfo, need_list: bool = False) -> str | list[str]:
    """Expand 'attention', 'mlp' (or 'all-linear' when ``need_list``) to PEFT ``target_modules``.

    A list of the shortest unambiguous names (['q_proj', 'k_proj', ...], GPT-2's ['c_attn', 'attn.c_proj']);
    when that needs per-layer names (RoBERTa's 'output.dense' also ends 'attention.output.dense') a
    full-match regex over the paths after the layer index, unless ``need_list`` (layers_to_transform
    works with lists only). On MoE models PEFT converts, 'mlp' adds the experts' transformers-v4 names.
    """
    linear = [m for m in info.modules if m.kind in LINEAR_KINDS and not m.is_output_head]

    def wanted(m: ModuleInfo) -> bool:
        if preset == "all-linear":
            return True
        last = m.name.rsplit(".", 1)[-1]
        return module_category(m.name) == preset and not (preset == "mlp" and last in _ROUTERS)

    members = [m.name for m in linear if wanted(m)]
    base = MOE_CONVERTED.get(info.model_type)
    experts = [old for old, new in _MOE_MAPPING[base].items() if new != "gate.weight"] if base else []
    if preset == "mlp" and experts and any(m.kind == "param" and m.experts > 1 for m in info.modules):
        need_list = True
    else:
        experts = []
    if not members and not experts:
        return []
    names = exact_names(members, info)
    if not need_list and any(re.match(r"\d+\.", n) for n in names):
        suffixes = sorted({_suffix(n) for n in members})
        return r".*\.\d+\.(?:" + "|".join(re.escape(s) for s in suffixes) + ")"
    return names + [e for e in experts if e not in names]


def _suffix(name: str) -> str:
    """The path after the last numeric segment: 'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj'."""
    parts = name.split(".")
    idx = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    return ".".join(parts[idx + 1:]) or name


def resolve_targets(text: str | list[str], info: ModelInfo, need_list: bool = False) -> str | list[str]:
    """CLI target syntax -> PEFT ``target_modules``.

    'all-linear' stays as is (PEFT expands it) unless ``need_list``; 'attention' / 'mlp' expand to this
    model's module names; 're:<regex>' is a full-match regex string; anything else is a comma-separated
    name list.
    """
    if isinstance(text, list):
        return text
    text = text.strip()
    if not text:
        raise LoradialError("empty target set", "use e.g. --targets q_proj,v_proj or --targets all-linear")
    if text.lower() in PRESETS and (text.lower() != ALL_LINEAR or need_list):
        names = preset_targets(text.lower(), info, need_list)
        if not names:
            raise LoradialError(f"preset {text!r} found no modules in {info.name}", existing_hint(info))
        return names
    if text.lower() == ALL_LINEAR:
        return ALL_LINEAR
    if text.startswith("re:"):
        if need_list:
            raise LoradialError(
                f"PEFT does not allow layers_to_transform with a regex target ({text!r})",
                "use a name list (e.g. --targets q_proj,v_proj) or a preset with --layers",
            )
        try:
            re.compile(text[3:])
        except re.error as e:
            raise LoradialError(f"target regex {text[3:]!r} is invalid: {e}", "re: takes a Python regular expression") from None
        return text[3:]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise LoradialError(f"empty target set {text!r}", "use e.g. --targets q_proj,v_proj")
    return names


def existing_hint(info: ModelInfo) -> str:
    leaves: list[str] = []
    for m in info.modules:
        if m.is_output_head:
            continue
        s = _suffix(m.name) if m.kind != "param" else _suffix(m.name.rsplit(".", 1)[0])
        if s not in leaves:
            leaves.append(s)
    return "modules that exist: " + ", ".join(leaves[:40]) + (" ..." if len(leaves) > 40 else "")


# --- PEFT's MoE config conversion ------------------------------------------------------------------------
def _convert_moe(spec: LoraSpec, info: ModelInfo) -> tuple[LoraSpec, list[str]]:
    """(spec as PEFT rewrites it, target_parameters) — peft ``_convert_peft_config_moe``, line for line."""
    base = MOE_CONVERTED.get(info.model_type)
    if base is None:
        return spec, []
    mapping, fused = _MOE_MAPPING[base], _MOE_FUSED[base]
    targets = spec.target_modules
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            targets = {n.rsplit(".", 1)[-1] for n in info.linear_names} | set(mapping)
        else:
            targets = _resolve_moe_regex(spec, info, mapping)
            if not targets:
                return spec, []
    rank_pattern, alpha_pattern = dict(spec.rank_pattern), dict(spec.alpha_pattern)
    params: list[str] = []
    remaining: list[str] = []
    present: dict[str, set[str]] = {new: set() for new in fused}
    for t in sorted(set(targets or [])):
        hit = next(((old, new) for old, new in mapping.items() if t == old or t.endswith(f".{old}")), None)
        if hit is None:
            remaining.append(t)
            continue
        if hit[1] not in params:
            params.append(hit[1])
        if hit[1] in fused:
            present[hit[1]].add(hit[0])
    for new, required in fused.items():
        got = present.get(new, set())
        if 0 < len(got) < len(required):
            raise LoradialError(
                f"PEFT cannot target {', '.join(sorted(got))} without {', '.join(sorted(set(required) - got))} on "
                f"{info.model_type}: transformers 5 fuses them into {new}",
                f"target all of {', '.join(required)}",
            )
        if len(got) == len(required) > 1:
            rank_pattern[rf".*\.{re.escape(new)}"] = spec.r * len(required)
            alpha_pattern[rf".*\.{re.escape(new)}"] = spec.lora_alpha * len(required)
    converted = dataclasses.replace(spec, target_modules=remaining, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    return converted, params


def _resolve_moe_regex(spec: LoraSpec, info: ModelInfo, mapping: dict[str, str]) -> set[str]:
    """peft ``_resolve_string_target_modules`` for a regex: leaf names of the module/parameter keys it matches."""
    match = Matcher(spec, info.linear_names)
    params = [m.name for m in info.modules if m.kind == "param"]
    # other parameters are all named weight/bias: leaves that match no module name, so they change nothing
    matched = {k.rsplit(".", 1)[-1] for k in _all_module_names(info) + params if match(k)}
    containers: dict[str, set[str]] = {}
    for p in params:
        container, _, leaf = p.rpartition(".")
        containers.setdefault(leaf, set()).add(container)
    for old, new in mapping.items():
        if old not in matched and any(match(f"{c}.{old}") for c in containers.get(new, ())):
            matched.add(old)
    return matched


# --- the whole thing -----------------------------------------------------------------------------------
def match(spec: LoraSpec, info: ModelInfo) -> Targeting:
    """Emulate PEFT's ``get_peft_model(model, LoraConfig(**spec.peft_kwargs()))`` targeting on ``info``.

    Errors where PEFT raises: a target matching a module LoRA cannot wrap, a config matching
    nothing, DoRA / lora_bias on ParamWrapper targets, a half-targeted fused MoE projection,
    layers_to_transform with a string target.
    """
    if spec.layers_to_transform is not None and isinstance(spec.target_modules, str):
        raise LoradialError(
            "PEFT does not allow layers_to_transform with a string target (regex or all-linear)",
            "use a name list or a preset: loradial expands presets to names when --layers is given",
        )
    peft_spec, target_params = _convert_moe(spec, info)
    matcher = Matcher(peft_spec, info.linear_names)
    for name in info.other_modules:
        if matcher(name):
            raise LoradialError(
                f"target {spec.target_modules!r} matches {name}, a module LoRA cannot wrap (PEFT raises "
                "'Target module ... is not supported')",
                "name the Linear layers inside it, e.g. q_proj,v_proj, or use a preset",
            )
    targeted: list[tuple[ModuleInfo, int, float]] = []
    for m in info.modules:
        if m.kind == "param":
            hit = any(m.name == t or m.name.endswith(f".{t}") for t in target_params)
        else:
            hit = matcher(m.name)
        if hit:
            targeted.append((m, _pick(peft_spec.rank_pattern, m.name, spec.r), _pick(peft_spec.alpha_pattern, m.name, spec.lora_alpha)))
    if not targeted:
        raise LoradialError(f"targets {spec.target_modules!r} match no module of {info.name}", existing_hint(info))
    if any(m.kind == "param" for m, _, _ in targeted) and (spec.use_dora or spec.lora_bias):
        raise LoradialError(
            f"PEFT's ParamWrapper (fused MoE experts of {info.model_type}) does not support "
            f"{'DoRA' if spec.use_dora else 'lora_bias'}",
            "drop --dora/--lora-bias, or target only attention layers",
        )
    names = [m.name for m, _, _ in targeted]
    used_r = {get_pattern_key(peft_spec.rank_pattern, n) for n in names}
    used_a = {get_pattern_key(peft_spec.alpha_pattern, n) for n in names}
    unused = {
        "rank_pattern": [k for k in spec.rank_pattern if k not in used_r],
        "alpha_pattern": [k for k in spec.alpha_pattern if k not in used_a],
    }
    return Targeting(peft_spec, targeted, target_params, unused)


def _pick(pattern: dict[str, Any], name: str, default: Any) -> Any:
    key = get_pattern_key(pattern, name)
    return default if key is None else pattern[key]


def matched_modules(spec: LoraSpec, info: ModelInfo) -> list[ModuleInfo]:
    """The modules (and MoE parameters) PEFT would wrap for ``spec``; an error if there are none."""
    return [m for m, _, _ in match(spec, info).targeted]
