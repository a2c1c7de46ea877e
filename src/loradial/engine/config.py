"""One adapter's training configuration, its learning-rate schedule, and its PEFT adapter_config."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from typing import Any

from loradial.errors import LoradialError
from loradial.spec import LoraSpec

SCHEDULES = ("cosine", "linear", "constant")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """λ(step) of Hugging Face's ``get_{cosine,linear,constant}_schedule_with_warmup`` (step 0-based).

    warmup: step/warmup; then cosine: ½(1 + cos(π·p)), linear: 1 − p, constant: 1, with
    p = (step − warmup)/(total − warmup) (transformers/optimization.py).
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclasses.dataclass
class AdapterConfig:
    """One adapter trained by the engine: its LoRA spec (PEFT vocabulary) and its optimizer settings."""

    name: str
    spec: LoraSpec
    lr: float = 2e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    schedule: str = "cosine"
    """'cosine', 'linear' or 'constant' after a linear warmup (Hugging Face's formulas)."""
    warmup_steps: int | None = None
    """Warmup steps; when None, ceil(warmup_ratio · total steps)."""
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    """Clip this adapter's gradient norm (None: no clipping)."""
    seed: int = 0
    """Init seed: A is drawn exactly as ``torch.manual_seed(seed); peft.get_peft_model(...)`` would."""
    init: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    """Optional initial factors: module name -> (A, B) or (A, B, magnitude), PEFT orientation."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise LoradialError(f"adapter name {self.name!r} is not a safe name", "use letters, digits, '.', '_' or '-'")
        if isinstance(self.spec, dict):
            self.spec = LoraSpec(**self.spec)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise LoradialError(f"learning rate must be a positive number, got {self.lr!r}", "use e.g. --lr 2e-4")
        if self.weight_decay < 0:
            raise LoradialError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise LoradialError(f"unknown schedule {self.schedule!r}", f"use one of {', '.join(SCHEDULES)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise LoradialError(f"warmup steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise LoradialError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise LoradialError(f"max grad norm must be positive or None, got {self.max_grad_norm}")
        s = self.spec
        if s.lora_bias or s.bias != "none" or s.modules_to_save:
            raise LoradialError("the engine trains LoRA factors (and DoRA magnitudes) only",
                                "drop lora_bias / bias / modules_to_save from the config")
        if s.target_modules is None:
            raise LoradialError(f"adapter {self.name!r} has no target modules", "use e.g. --targets all-linear")

    def warmup(self, total_steps: int) -> int:
        """Hugging Face's rule: warmup_steps if given, else ceil(warmup_ratio · total)."""
        return self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total_steps)

    def lr_at(self, step: int, total_steps: int) -> float:
        return self.lr * lr_factor(self.schedule, step, total_steps, self.warmup(total_steps))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("spec", "init")}
        d["spec"] = dataclasses.asdict(self.spec)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdapterConfig":
        d = dict(d)
        d["spec"] = LoraSpec(**d["spec"])
        return cls(**d)


def peft_config_dict(spec: LoraSpec, target_names: list[str], base_model: str | None = None) -> dict[str, Any]:
    """The adapter_config.json PEFT writes for ``spec`` ('all-linear' expanded to leaf names, as PEFT saves it)."""
    import peft

    kw = spec.peft_kwargs()
    if isinstance(spec.target_modules, str) and spec.target_modules.lower() == "all-linear":
        kw["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in target_names})
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", base_model_name_or_path=base_model, **kw)

    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (set, frozenset)):
            return sorted(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in cfg.to_dict().items()}
