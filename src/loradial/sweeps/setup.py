"""Resolve a sweep before anything is written: grid, model, data, step budget, rungs, packing.

Every check that can fail on the user's input runs here, so that bad input (an empty grid, a rank
<= 0, unreadable data, a config that cannot fit even alone, ...) stops the sweep with one line and
no directory. The resolved settings are what sweep.yaml holds; ``load_context`` rebuilds the
in-memory context (tokenized data, module lists, memory costs) from them on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

from loradial.errors import LoradialError
from loradial.sweeps.ray_exec import is_ray
from loradial.sweeps.ray_exec import kind as ray_kind

SETTINGS_VERSION = 1
#: Training settings shared by every config, as ``loradial train`` names them; a sweep.yaml written
#: before they existed resumes with these defaults.
TRAIN_SETTINGS = {"gradient_checkpointing": False, "grad_accum": 1, "dropout": 0.0, "packing": False,
                  "load_in_4bit": False, "trust_remote_code": False}


def train_setting(settings: dict[str, Any], key: str) -> Any:
    """A training setting of the sweep (``TRAIN_SETTINGS``' default when sweep.yaml predates it)."""
    val = settings.get(key)
    return TRAIN_SETTINGS[key] if val is None else val


@dataclasses.dataclass
class Context:
    """What a sweep needs in memory besides its settings (rebuilt identically on resume)."""

    info: Any  # models.ModelInfo
    tokenizer: Any
    train: list[dict]
    eval: list[dict]
    targeted: dict[str, list]  # config name -> [(ModuleInfo, r)]
    devices: list[str]


def _grid_values(grid: str | Path | None, **flags: Any) -> dict[str, Any]:
    from loradial.sweeps.grid import load_grid_yaml

    values = dict(load_grid_yaml(grid)) if grid else {}
    for key, val in flags.items():
        if val is not None:
            values[key] = val
    for key in ("ranks", "variants", "targets", "lrs", "seeds"):  # YAML may give comma strings
        if isinstance(values.get(key), (str, int, float)):
            values[key] = [v.strip() for v in str(values[key]).split(",")] if key != "targets" else [values[key]]
    return values


def build_configs(values: dict[str, Any]) -> list:
    from loradial.sweeps.grid import build_grid

    def ints(xs):
        try:
            return [int(x) if not isinstance(x, bool) and float(x) == int(float(x)) else x for x in xs]
        except (TypeError, ValueError):
            raise LoradialError(f"ranks must be positive integers, got {xs!r}", "use e.g. --ranks 4,8,16") from None

    if "ranks" not in values:
        raise LoradialError("empty grid: no ranks", "use e.g. --ranks 4,8,16,32 (or a --grid file)")
    return build_grid(
        ints(values["ranks"]),
        values.get("alphas"),
        values.get("variants", ["lora"]),
        values.get("targets", ["all-linear"]),
        [float(x) for x in values.get("lrs", [2e-4])],
        float(values.get("lr_rank_exponent") or 0.0),
        [int(s) for s in values.get("seeds", [0])],
    )


def default_devices() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def check_devices(devices: Sequence[str]) -> list[str]:
    import torch

    out = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, ValueError):
            raise LoradialError(f"unknown device {d!r}", "use e.g. --devices cuda:0,cuda:1 or cpu") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise LoradialError(f"device {d} is not available", "check --devices against nvidia-smi")
        out.append(str(dev) if dev.type != "cuda" or dev.index is not None else "cuda:0")
    return out


def compute_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    if dtype not in ("bf16", "fp32"):
        raise LoradialError(f"unsupported dtype {dtype!r}", "use auto, bf16 or fp32 (the engine trains in bf16 autocast on GPUs)")
    return dtype


def resolve_devices(devices: Sequence[str] | None, ray: str | None, ray_workers: int | None) -> list[str]:
    """Local devices (checked; default: every GPU, else the CPU) or, with ``ray``, one 'ray/…' per Ray worker."""
    if ray:
        if devices:
            raise LoradialError("--devices and --ray exclude each other", "on a Ray cluster use --ray-workers N")
        from loradial.sweeps.ray_exec import cluster_devices

        return cluster_devices(ray, ray_workers)
    if ray_workers is not None:
        raise LoradialError("--ray-workers needs --ray", "add --ray auto (a running cluster) or --ray local")
    return check_devices(devices) if devices else default_devices()


def check_4bit(devices: Sequence[str]) -> None:
    """--load-in-4bit's requirements, checked before anything is written (the same errors as ``loradial train``)."""
    if any(ray_kind(d) != "cuda" for d in devices):
        raise LoradialError("--load-in-4bit needs a CUDA GPU", "drop --load-in-4bit on this machine")
    if is_ray(list(devices)):
        return  # bitsandbytes is needed on the workers, not here
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LoradialError("--load-in-4bit needs bitsandbytes", "pip install 'loradial[qlora]'") from None


def check_gradient_checkpointing(model_dir: Path) -> None:
    """A model class that cannot checkpoint is bad input, said before anything is written."""
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(str(model_dir)))]
    except Exception:  # unknown here: the engine's own error will say it
        return
    if not getattr(cls, "supports_gradient_checkpointing", True):
        raise LoradialError(f"{cls.__name__} does not support gradient checkpointing",
                            "drop --gradient-checkpointing (or lower --batch-size / --max-len)")


def _model_dir(model: str | None) -> Path:
    if not model:
        raise LoradialError("no model", "pass --model DIR (a local model directory with weights and tokenizer)")
    path = Path(model).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise LoradialError(f"--model {model} is not a local model directory with config.json",
                            "sweeps train real weights: save the model with save_pretrained() and pass that directory")
    return path.resolve()


def _load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # missing or broken tokenizer files are the user's to fix
        raise LoradialError(f"could not load the tokenizer of {path}: {str(e).splitlines()[0][:160]}",
                            "the model directory needs its tokenizer files") from None


def _config_entry(cfg, target_modules: Any, params: int) -> dict[str, Any]:
    return {"name": cfg.name, "r": cfg.r, "lora_alpha": cfg.lora_alpha, "variant": cfg.variant,
            "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora, "targets": cfg.targets,
            "target_modules": target_modules, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
            "trainable_params": params}


def _targeted(entry: dict[str, Any], info) -> list:
    from loradial.models.targets import matched_modules
    from loradial.spec import LoraSpec

    spec = LoraSpec(r=entry["r"], lora_alpha=entry["lora_alpha"], target_modules=entry["target_modules"],
                    use_rslora=entry["use_rslora"], use_dora=entry["use_dora"])
    return [(m, spec.rank_for(m.name)) for m in matched_modules(spec, info)]


def _trainable_params(targeted: list, use_dora: bool) -> int:
    from loradial.cost.params import trainable_params

    return int(trainable_params(targeted, use_dora=use_dora))


def _data(settings: dict[str, Any], tokenizer) -> tuple[list, list]:
    from loradial.data import load_dataset

    train, ev = load_dataset(settings["data"], tokenizer, settings["max_len"], eval_data=settings["eval_data"],
                             eval_fraction=0.0 if settings["eval_data"] else settings["eval_fraction"],
                             packing=bool(train_setting(settings, "packing")), seed=settings["seed"])
    if not train:
        raise LoradialError(f"no training examples in {settings['data']}", "check the data file")
    if not ev:
        raise LoradialError("a sweep ranks configs by eval loss, but there is no eval data",
                            "pass --eval-data FILE or a positive --eval-fraction")
    return train, ev


def resolve(*, model, data, ranks, alphas, variants, targets, lrs, lr_rank_exponent, seeds, grid, steps, epochs,
            batch_size, max_len, eval_data, eval_fraction, eval_every, halving, halving_at, gpu_memory, devices,
            pack_size, dtype, seed, checkpoint_every, gradient_checkpointing=False, grad_accum=1, dropout=0.0,
            packing=False, load_in_4bit=False, ray=None, ray_workers=None,
            trust_remote_code=False) -> tuple[dict[str, Any], Context]:
    """Validate everything and return (settings for sweep.yaml, in-memory context)."""
    from loradial.sweeps.halving import parse_fractions, rung_boundaries
    from loradial.models.resolve import inspect_model
    from loradial.models.targets import resolve_targets

    values = _grid_values(grid, ranks=ranks, alphas=alphas, variants=variants, targets=targets, lrs=lrs,
                          lr_rank_exponent=lr_rank_exponent, seeds=seeds)
    configs = build_configs(values)
    for name, v in (("--batch-size", batch_size), ("--max-len", max_len)):
        if not isinstance(v, int) or v <= 0:
            raise LoradialError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("--steps", steps), ("--eval-every", eval_every), ("--checkpoint-every", checkpoint_every)):
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise LoradialError(f"{name} must be a positive integer, got {v!r}")
    if steps is not None and epochs is not None:
        raise LoradialError("give --steps or --epochs, not both")
    if epochs is not None and not epochs > 0:
        raise LoradialError(f"--epochs must be positive, got {epochs}")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise LoradialError(f"--grad-accum must be a positive integer, got {grad_accum!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise LoradialError(f"--dropout must be in [0, 1), got {dropout!r}", "use e.g. --dropout 0.05")
    if not data:
        raise LoradialError("no training data", "pass --data FILE")
    devices = resolve_devices(devices, ray, ray_workers)
    model_dir = _model_dir(model)
    if load_in_4bit:
        check_4bit(devices)
        if dtype == "fp32":
            raise LoradialError("--load-in-4bit needs a 16-bit --dtype", "use --dtype auto or bf16 (the 4-bit base computes in bf16)")
    if gradient_checkpointing:
        check_gradient_checkpointing(model_dir)
    remote = bool(trust_remote_code)
    info = inspect_model(str(model_dir), trust_remote_code=remote)
    tokenizer = _load_tokenizer(model_dir, remote)
    settings: dict[str, Any] = {
        "loradial_sweep": SETTINGS_VERSION,
        "model": str(model_dir),
        "data": str(Path(data).expanduser().resolve()),
        "eval_data": str(Path(eval_data).expanduser().resolve()) if eval_data else None,
        "eval_fraction": float(eval_fraction), "seed": int(seed), "batch_size": batch_size, "max_len": max_len,
        "dtype": compute_dtype(dtype, ray_kind(devices[0])), "grid": {k: v for k, v in values.items()},
        "gradient_checkpointing": bool(gradient_checkpointing), "grad_accum": int(grad_accum),
        "dropout": float(dropout), "packing": bool(packing), "load_in_4bit": bool(load_in_4bit),
        "trust_remote_code": remote,
    }
    train, ev = _data(settings, tokenizer)
    per_step = batch_size * grad_accum  # sequences per optimizer step
    n_steps = steps if steps is not None else max(1, math.ceil((epochs or 1.0) * len(train) / per_step))
    fractions = parse_fractions(halving_at) if halving else None
    settings.update({
        "steps": n_steps, "epochs": epochs, "eval_every": eval_every, "halving": bool(halving),
        "halving_fractions": list(fractions) if fractions else None,
        "halving_boundaries": rung_boundaries(n_steps, fractions),
        "checkpoint_every": checkpoint_every, "pack_size": pack_size, "gpu_memory": gpu_memory,
    })
    entries, targeted = [], {}
    resolved: dict[str, Any] = {}
    for cfg in configs:
        if cfg.targets not in resolved:
            resolved[cfg.targets] = resolve_targets(cfg.targets, info)
        entry = _config_entry(cfg, resolved[cfg.targets], 0)
        targeted[cfg.name] = _targeted(entry, info)
        entry["trainable_params"] = _trainable_params(targeted[cfg.name], cfg.use_dora)
        entries.append(entry)
    settings["configs"] = entries
    from loradial.sweeps.segment import adapter_configs

    adapter_configs(settings, [e["name"] for e in entries])  # the engine's own checks, before anything is written
    settings["budget_bytes"], settings["costs"] = memory_costs(settings, info, targeted, train, devices, gpu_memory)
    from loradial.sweeps.pack import ConfigCost, make_packs

    make_packs([ConfigCost(**c) for c in settings["costs"]], settings["budget_bytes"], pack_size)  # fit check
    return settings, Context(info, tokenizer, train, ev, targeted, devices)


def memory_costs(settings, info, targeted, train, devices, gpu_memory) -> tuple[int | None, list[dict]]:
    """Per-config (shared, marginal) bytes from the memory model, and the per-device budget.

    The estimate is that of one micro-batch (``batch_size`` sequences: --grad-accum adds no memory),
    with gradient checkpointing, the 4-bit base and the dropout mask when the sweep uses them (the memory
    model covers DoRA at dropout 0 only, so a DoRA config's mask, M·d_in per module, is added here)."""
    from loradial.cost.memory import estimate_training_memory
    from loradial.sweeps.pack import config_cost, device_budget
    from loradial.sweeps.ray_exec import worker_budget

    seq_len = min(settings["max_len"], max(len(ex["input_ids"]) for ex in train))
    dtype = settings["dtype"]
    checkpointing = bool(train_setting(settings, "gradient_checkpointing"))
    quant = "4bit" if train_setting(settings, "load_in_4bit") else "none"
    dropout = float(train_setting(settings, "dropout"))
    costs = []
    for entry in settings["configs"]:
        def est(n, entry=entry):
            pairs, dora = targeted[entry["name"]], entry["use_dora"]
            total = estimate_training_memory(info, pairs, use_dora=dora, batch_size=settings["batch_size"],
                                             seq_len=seq_len, dtype=dtype, quant=quant,
                                             gradient_checkpointing=checkpointing, n_adapters=n,
                                             lora_dropout=0.0 if dora else dropout).total_bytes
            if dora and dropout > 0:  # the model covers DoRA at dropout 0: add the masks, M·d_in per module
                total += n * settings["batch_size"] * seq_len * sum(m.d_in for m, _ in pairs if m.kind != "embedding")
            return total
        costs.append(dataclasses.asdict(config_cost(entry["name"], est)))
    budgets = ([worker_budget(devices[0], gpu_memory)] if is_ray(devices) else
               [device_budget(d, gpu_memory) for d in devices])
    known = [b for b in budgets if b is not None]
    return (min(known) if known else None), costs


def settings_yaml(settings: dict[str, Any]) -> str:
    import yaml

    head = "# loradial sweep: the resolved grid and run settings (read back by --resume)\n"
    return head + yaml.safe_dump(settings, sort_keys=False, default_flow_style=None, width=120)


def load_context(settings: dict[str, Any], devices: Sequence[str] | None, ray: str | None = None,
                 ray_workers: int | None = None) -> Context:
    """Rebuild the in-memory context of a sweep from its sweep.yaml (for --resume)."""
    from loradial.models.resolve import inspect_model

    if settings.get("loradial_sweep") != SETTINGS_VERSION:
        raise LoradialError(f"sweep.yaml has version {settings.get('loradial_sweep')}, expected {SETTINGS_VERSION}")
    devices = resolve_devices(devices, ray, ray_workers)
    if train_setting(settings, "load_in_4bit"):
        check_4bit(devices)
    model_dir = _model_dir(settings["model"])
    remote = bool(train_setting(settings, "trust_remote_code"))
    info = inspect_model(str(model_dir), trust_remote_code=remote)
    tokenizer = _load_tokenizer(model_dir, remote)
    train, ev = _data(settings, tokenizer)
    targeted = {e["name"]: _targeted(e, info) for e in settings["configs"]}
    return Context(info, tokenizer, train, ev, targeted, devices)
