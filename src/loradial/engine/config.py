"""One adapter's training configuration, its learning-rate schedule, and its PEFT adapter_config."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from typing import Any

from loradial.errors import LoradialError
from loradial.settings import DEFAULT, TrainSettings
from loradial.spec import LoraSpec

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
    lr: float = DEFAULT.lr
    """Peak AdamW learning rate."""
    weight_decay: float = DEFAULT.weight_decay
    schedule: str = DEFAULT.schedule
    """'cosine', 'linear' or 'constant' after a linear warmup (Hugging Face's formulas)."""
    warmup_steps: int | None = DEFAULT.warmup_steps
    """Warmup steps; when None, ceil(warmup_ratio · total steps)."""
    warmup_ratio: float = DEFAULT.warmup_ratio
    max_grad_norm: float | None = DEFAULT.max_grad_norm
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
        TrainSettings.checked(f"adapter {self.name}", lr=self.lr, weight_decay=self.weight_decay,
                              schedule=self.schedule, warmup_steps=self.warmup_steps, warmup_ratio=self.warmup_ratio,
                              max_grad_norm=self.max_grad_norm)  # the one set of checks
        s = self.spec
        if (s.lora_bias or s.bias != "none" or s.modules_to_save or s.trainable_token_indices
                or s.target_parameters):
            raise LoradialError("the engine trains LoRA factors (and DoRA magnitudes) only",
                                "drop lora_bias / bias / modules_to_save / trainable_token_indices / target_parameters")
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
