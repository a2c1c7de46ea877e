"""Settings declared once: how an adapter trains (``TrainSettings``) and what a sweep is (``SweepSettings``).

Every training default has exactly one definition: the field below. ``loradial.train``,
``loradial.sweep``, the engine's ``AdapterConfig``, the CLI options (``cli/options.py``),
``recommend``'s export and ``export`` all read it from here. ``sweep.yaml`` *is* a
``SweepSettings`` (``to_yaml`` / ``from_yaml``), validated on load with an error that names the
field (``sweep.yaml: configs[2].r must be greater than 0 (got 0)``); files written by earlier
releases are migrated (``migrate``).

Validation is pydantic's (strict types: ``true`` is not a number, ``"3"`` is not an integer).
Owns: the settings models and their validation. Imports: errors only (and pydantic, yaml).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loradial.errors import LoradialError

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "bf16", "fp32")
VARIANTS = ("lora", "rslora", "dora")
MAX_NEW_TOKENS = 64
"""Greedy decoding limit of the exact-match metric (sweep / tune ``--max-new-tokens``)."""
SWEEP_VERSION = 2
"""sweep.yaml format: 1 = flat training keys (loradial 0.1 before settings), 2 = a ``train`` block."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, use_attribute_docstrings=True)


class TrainSettings(_Settings):
    """How every adapter of a run trains: optimizer, schedule, batch, sequence length, base model."""

    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    """Peak AdamW learning rate (``recommend`` gives one that fits the model's size)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate shape after a linear warmup (Hugging Face's formulas)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Warmup as a fraction of the optimizer steps: ceil(warmup_ratio · steps), Hugging Face's rule."""
    warmup_steps: Optional[int] = Field(None, ge=0)
    """Warmup steps; overrides ``warmup_ratio`` when set."""
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    """AdamW weight decay on the LoRA factors."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0, allow_inf_nan=False)
    """Clip each adapter's gradient norm to this (None: no clipping)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """lora_dropout of every adapter."""
    batch_size: int = Field(4, gt=0)
    """Sequences per micro-batch (per adapter)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step: a step sees batch_size × grad_accum sequences."""
    max_len: int = Field(512, gt=0)
    """Truncate (or pack) examples to this many tokens."""
    packing: bool = False
    """Concatenate examples into max_len blocks instead of padding each."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Frozen base weights: auto = bf16 on a GPU, fp32 on a CPU."""
    cuda_graphs: bool = False
    """Experimental, not yet run on a GPU by the project: replay the steady-state training step as one CUDA graph
    (GPU only; batches padded to max_len; no dropout, gradient checkpointing or 4-bit base)."""
    load_in_4bit: bool = False
    """Quantize the frozen base to NF4 (QLoRA; needs bitsandbytes: a CUDA GPU, or on a CPU bitsandbytes >= 0.48)."""
    trust_remote_code: bool = False
    """Let from_pretrained run a model repository's own code (off unless asked)."""
    seed: int = 0
    """Data order, dropout and adapter init (A is drawn as PEFT draws it)."""

    @classmethod
    def checked(cls, source: str = "settings", **values: Any) -> "TrainSettings":
        """Build from keyword values; a bad value is a LoradialError naming the field."""
        return validated(cls, values, source)


#: The one instance every default is read from (``DEFAULT.batch_size`` ...).
DEFAULT = TrainSettings()


class RunSettings(_Settings):
    """How long one ``loradial train`` run is, and when it evaluates and checkpoints (checked before
    anything is loaded; a sweep keeps the same fields in ``SweepSettings``)."""

    steps: Optional[int] = Field(None, gt=0)
    """Optimizer steps (or ``epochs``)."""
    epochs: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    """Passes over the training data (or ``steps``)."""
    eval_every: Optional[int] = Field(None, gt=0)
    """Evaluate every N steps (and at the end)."""
    save_every: Optional[int] = Field(None, gt=0)
    """Checkpoint every N steps."""
    eval_fraction: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    """Part of the data held out for eval."""

    @classmethod
    def checked(cls, source: str = "settings", **values: Any) -> "RunSettings":
        return validated(cls, {k: v for k, v in values.items() if v is not None}, source)


class EvalSettings(_Settings):
    """Evaluating an adapter against its base (alpha-sweep, analyze --data): no backward, larger batches."""

    max_len: int = Field(512, ge=2)
    """Truncate eval examples to this many tokens."""
    batch_size: int = Field(8, gt=0)
    """Sequences per eval forward pass."""


EVAL = EvalSettings()


class SweepConfigEntry(_Settings):
    """One config of the grid as sweep.yaml stores it (PEFT vocabulary + the sweep's own fields)."""

    name: str = Field(min_length=1)
    r: Optional[int] = Field(gt=0)
    """LoRA rank; None for the ``full`` variant (full fine-tuning, the reference)."""
    lora_alpha: Optional[float] = Field(gt=0, allow_inf_nan=False)
    variant: Literal["lora", "rslora", "dora", "full"]
    use_rslora: bool
    use_dora: bool
    targets: str
    target_modules: Union[str, list[str]]
    learning_rate: float = Field(gt=0, allow_inf_nan=False)
    seed: int = 0
    trainable_params: int = Field(ge=0)

    @model_validator(mode="after")
    def _rank_unless_full(self) -> "SweepConfigEntry":
        if self.variant != "full" and (self.r is None or self.lora_alpha is None):
            raise ValueError(f"a {self.variant} config needs r and lora_alpha")
        return self


class ConfigCostEntry(_Settings):
    """Memory cost of one config for the packer: bytes shared by a pack, and bytes per member."""

    name: str
    shared: int
    marginal: int


class TunePolicy(_Settings):
    """How ``tune`` decides at the end of each rung (sweep.yaml's ``tune`` block; absent for a plain sweep).

    Rung 1 (exploration): configs whose curve diagnose calls unstable or diverged, or whose eval loss is
    above the base model's, stop; the best
    ``keep_fraction`` of the rest go on; refinements around the best join (learning rate half-way,
    geometrically, to each explored neighbour; rank one doubling either side) and around the runner-up
    (its learning rate half-way to each neighbour), trained from step 0 to the rung's end. Later rungs: the best ``finalists`` go on. Ties: fewer parameters, then name."""

    keep_fraction: float = Field(1 / 3, gt=0, le=1)
    """Share of the exploration grid kept after the first rung (at least ``finalists``)."""
    finalists: int = Field(3, ge=1)
    """Configs continued from their checkpoints to the full step budget."""
    refine: bool = True
    """Add the refinement configs after the first rung."""
    max_refine: int = Field(6, ge=0)
    """At most this many refinement configs (the budget plan counts them)."""
    base_eval_loss: Optional[float] = None
    """The base model's eval loss (measured before the search): a config above it at a rung has diverged."""


class SweepSettings(_Settings):
    """A sweep, resolved: what sweep.yaml holds and ``--resume`` reads back."""

    loradial_sweep: Literal[2] = SWEEP_VERSION
    model: str
    data: str
    eval_data: Optional[str] = None
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    """Part of the data held out for eval when no eval_data is given (a sweep ranks by eval loss)."""
    grid: dict[str, Any] = Field(default_factory=dict)
    """The grid as asked (ranks, alphas, variants, targets, lrs, lr_rank_exponent, seeds)."""
    steps: int = Field(gt=0)
    """Optimizer steps per config."""
    epochs: Optional[float] = Field(None, gt=0)
    eval_every: Optional[int] = Field(None, gt=0)
    halving: bool = False
    halving_fractions: Optional[list[float]] = None
    halving_boundaries: list[int] = Field(min_length=1)
    """Steps at which rungs end (the last one is ``steps``)."""
    tune: Optional[TunePolicy] = None
    """The tune policy at rung ends instead of plain halving (``loradial tune`` writes it)."""
    metric: Literal["eval_loss", "exact_match"] = "eval_loss"
    """What picks the best config: eval loss, or greedy exact match of the eval completions (reported
    beside eval loss for the configs trained to the end; needs prompt/completion or chat eval data)."""
    max_new_tokens: int = Field(MAX_NEW_TOKENS, gt=0)
    """Greedy decoding limit of the exact-match metric."""
    checkpoint_every: Optional[int] = Field(None, gt=0)
    pack_size: Optional[int] = Field(None, gt=0)
    gpu_memory: Optional[float] = Field(None, gt=0)
    """GiB per device the packer may plan for (default: the device's free memory × ``memory_fraction``)."""
    memory_fraction: float = Field(0.85, gt=0, le=1, allow_inf_nan=False)
    """Part of a device's free memory the packer fills with its estimate of the engine's peak
    (``loradial.cost.engine_memory``); the rest absorbs allocator fragmentation and what the model does
    not see (it is CPU-verified; its GPU check is owed, hence the old 0.85 margin)."""
    budget_bytes: Optional[int] = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    """How every config trains (its ``dtype`` is the resolved compute dtype, never 'auto' here)."""
    configs: list[SweepConfigEntry] = Field(min_length=1)
    costs: list[ConfigCostEntry] = Field(default_factory=list)

    def config(self, name: str) -> SweepConfigEntry:
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.configs]

    def to_yaml(self) -> str:
        import yaml

        head = "# loradial sweep: the resolved grid and run settings (read back by --resume)\n"
        return head + yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=120)

    @classmethod
    def from_dict(cls, data: Any, source: str = "sweep.yaml") -> "SweepSettings":
        if not isinstance(data, dict):
            raise LoradialError(f"{source} is not a loradial sweep file", "pass the --out directory of a `loradial sweep`")
        return validated(cls, migrate(data, source), source)

    @classmethod
    def from_yaml(cls, text: str, source: str = "sweep.yaml") -> "SweepSettings":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LoradialError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
        return cls.from_dict(data, source)


#: Version 1 kept these training keys at the top level (defaults for files written before they existed).
_V1_TRAIN_KEYS = ("seed", "batch_size", "max_len", "dtype", "gradient_checkpointing", "grad_accum", "dropout",
                  "packing", "load_in_4bit", "trust_remote_code")


def migrate(data: dict[str, Any], source: str = "sweep.yaml") -> dict[str, Any]:
    """A sweep.yaml of any released version -> the current version's dict (the input is not changed).

    Version 1 (loradial 0.1): the training keys above at the top level, and schedule / warmup /
    weight decay / clipping in an optional ``train`` dict; a key it lacked means its default then,
    which is today's default (``DEFAULT``)."""
    version = data.get("loradial_sweep")
    if version == SWEEP_VERSION:
        return data
    if version != 1:
        raise LoradialError(f"{source} has format version {version!r}; this loradial reads 1 and {SWEEP_VERSION}",
                            "resume it with the loradial release that wrote it")
    out = {k: v for k, v in data.items() if k not in _V1_TRAIN_KEYS and k != "train"}
    train = {k: data[k] for k in _V1_TRAIN_KEYS if data.get(k) is not None}
    train.update({k: v for k, v in (data.get("train") or {}).items() if v is not None or k == "max_grad_norm"})
    out["train"] = train
    out["loradial_sweep"] = SWEEP_VERSION
    return out


def _loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe(err: ValidationError, source: str) -> LoradialError:
    """The first problem of a ValidationError as one line: '<source>: <field> must be ... (got ...)'."""
    e = err.errors()[0]
    where = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal")))))
    msg = e["msg"]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
    elif e["type"] == "extra_forbidden":
        msg = "is not a known setting"
    elif e["type"] == "missing":
        msg = "is missing"
    got = "" if e["type"] in ("missing",) else f" (got {e.get('input')!r})"
    if source == "flags":  # values given as command-line options: name the flag
        flag = "--" + where.split(".")[0].replace("_", "-")
        return LoradialError(f"{flag} {msg}{got}", f"see `--help` for {flag}")
    hint = "fix that field" if source.endswith((".yaml", ".yml", ".json")) else "fix that value"
    return LoradialError(f"{source}: {where or 'value'} {msg}{got}", hint)


def validated(model: type[BaseModel], values: dict[str, Any], source: str):
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise describe(err, source) from None
