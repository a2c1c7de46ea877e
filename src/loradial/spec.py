"""LoraSpec: PEFT's LoRA vocabulary, its scaling rule and its module-matching rules, exactly.

LoRA (Hu et al., 2021, arXiv:2106.09685) adds to a frozen linear layer W (d_out x d_in)

    y = W x + s * B (A x),      A: r x d_in,  B: d_out x r,

with s = lora_alpha / r (LoRA) or s = lora_alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023,
arXiv:2312.03732). The matching rules below mirror PEFT 0.21 ``check_target_module_exists``
and ``get_pattern_key`` (peft/tuners/tuners_utils.py, peft/utils/other.py) line for line.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Sequence

from loradial.errors import LoradialError

ALL_LINEAR = "all-linear"

def scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """s = alpha / r (LoRA, Hu et al. 2021) or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def alpha_for_same_scale(lora_alpha: float, r: int, r_new: int, use_rslora: bool = False) -> float:
    """Alpha that keeps s unchanged when the rank changes: alpha*r_new/r, or alpha*sqrt(r_new/r) for rsLoRA."""
    return lora_alpha * (math.sqrt(r_new / r) if use_rslora else r_new / r)


def get_pattern_key(pattern_keys: Iterable[str], module_name: str) -> str | None:
    """First key k (in order) with ``re.match(rf"(.*\\.)?({k})$", module_name)``; None if none does (PEFT rule)."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


def layer_index(module_name: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """The first numbered path segment after a named one, as PEFT reads ``layers_to_transform``."""
    if not layers_pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module_name)
    else:
        m = None
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module_name)
            if m:
                break
    return int(m.group("idx")) if m else None


def _excluded(exclude: str | Sequence[str] | None, name: str) -> bool:
    if not exclude:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return name in exclude or any(name.endswith(f".{e}") for e in exclude)


@dataclasses.dataclass
class LoraSpec:
    """A LoRA configuration in PEFT's own field names (see ``peft.LoraConfig``)."""

    r: int = 8
    """Rank of A (r x d_in) and B (d_out x r)."""
    lora_alpha: float = 8
    """Numerator of the scaling s."""
    target_modules: str | list[str] | None = None
    """List: names equal to an entry or ending in '.entry'; str: a full regex match; 'all-linear'."""
    use_rslora: bool = False
    """s = alpha / sqrt(r) instead of alpha / r."""
    use_dora: bool = False
    """Weight-decomposed LoRA: a trainable magnitude vector of d_out per module."""
    lora_dropout: float = 0.0
    rank_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    """Regex key -> rank; first key matching ``(.*\\.)?(key)$`` wins."""
    alpha_pattern: dict[str, float] = dataclasses.field(default_factory=dict)
    exclude_modules: str | list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    bias: str = "none"
    lora_bias: bool = False
    """A trainable bias of d_out on lora_B."""
    modules_to_save: list[str] | None = None
    """Modules trained and saved in full (PEFT ModulesToSaveWrapper): a module name ending with an entry."""
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    """Token rows of the input embedding (a list) or of named embedding / head modules (a dict) trained alone."""
    target_parameters: list[str] | None = None
    """Parameters adapted by PEFT's ParamWrapper (e.g. fused MoE experts): 'module.param' equal to or ending in '.' + entry."""

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise LoradialError(f"rank r must be a positive integer, got {self.r!r}", "use e.g. --rank 16")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise LoradialError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}", "use e.g. --alpha 16")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise LoradialError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}", "use e.g. --dropout 0.05")
        for key, value in self.rank_pattern.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LoradialError(f"rank_pattern[{key!r}] must be a positive integer, got {value!r}",
                                    "write e.g. rank_pattern: {'q_proj': 8}")
        for key, value in self.alpha_pattern.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise LoradialError(f"alpha_pattern[{key!r}] must be a positive number, got {value!r}",
                                    "write e.g. alpha_pattern: {'q_proj': 16}")
        for key in [*self.rank_pattern, *self.alpha_pattern]:
            try:
                re.compile(key)
            except re.error as e:
                raise LoradialError(f"pattern key {key!r} is not a valid regex: {e}",
                                    "keys are regular expressions over module names, e.g. layers\\.0\\.q_proj") from None
        if isinstance(self.target_modules, str) and self.target_modules.lower() != ALL_LINEAR:
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise LoradialError(f"target regex {self.target_modules!r} is invalid: {e}",
                                    "give module names (q_proj,v_proj), all-linear, or a valid regex") from None

    # --- matching (PEFT check_target_module_exists) ---------------------------------------
    def matches(self, module_name: str, linear_names: Sequence[str] | None = None) -> bool:
        """Whether PEFT would put a LoRA layer on ``module_name``.

        ``linear_names`` is the expansion of 'all-linear' (every linear/Conv1D layer but the output
        head), needed only when ``target_modules == 'all-linear'``.
        """
        if _excluded(self.exclude_modules, module_name):
            return False
        if self.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", module_name) for m in self.modules_to_save):
            return False
        targets = self.target_modules
        if targets is None:
            return False
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            if linear_names is None:
                raise ValueError("all-linear needs the model's linear module names")
            targets = list(linear_names)
        if isinstance(targets, str):
            return re.fullmatch(targets, module_name) is not None
        if module_name in targets:
            return True
        found = any(module_name.endswith(f".{t}") for t in targets)
        layers = self.layers_to_transform
        using_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
        if found and using_layers:
            idx = layer_index(module_name, self.layers_pattern)
            if idx is None:
                return False
            return idx == layers if isinstance(layers, int) else idx in layers
        return found

    # --- per-module rank and alpha (PEFT get_pattern_key) ---------------------------------
    def rank_for(self, module_name: str) -> int:
        key = get_pattern_key(self.rank_pattern, module_name)
        return self.r if key is None else self.rank_pattern[key]

    def alpha_for(self, module_name: str) -> float:
        key = get_pattern_key(self.alpha_pattern, module_name)
        return self.lora_alpha if key is None else self.alpha_pattern[key]

    def scaling_for(self, module_name: str) -> float:
        return scaling(self.rank_for(module_name), self.alpha_for(module_name), self.use_rslora)

    def unused_pattern_keys(self, module_names: Iterable[str]) -> dict[str, list[str]]:
        """Pattern keys that decide no targeted module (PEFT ignores them silently; we report them)."""
        names = list(module_names)
        used_r = {get_pattern_key(self.rank_pattern, n) for n in names}
        used_a = {get_pattern_key(self.alpha_pattern, n) for n in names}
        return {
            "rank_pattern": [k for k in self.rank_pattern if k not in used_r],
            "alpha_pattern": [k for k in self.alpha_pattern if k not in used_a],
        }

    # --- PEFT interop ---------------------------------------------------------------------
    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``peft.LoraConfig`` (alpha always explicit)."""
        kw: dict[str, Any] = {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "lora_dropout": self.lora_dropout,
            "bias": self.bias,
        }
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(self, name):
                kw[name] = dict(getattr(self, name))
        for name in ("exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
                     "trainable_token_indices", "target_parameters"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.lora_bias:
            kw["lora_bias"] = True
        return kw

    def to_peft_config(self, **extra: Any):
        import peft

        return peft.LoraConfig(**self.peft_kwargs(), **extra)
