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
from loradial.models.load import load_tokenizer
from loradial.settings import DEFAULT, MAX_NEW_TOKENS, SweepConfigEntry, SweepSettings, TrainSettings, validated
from loradial.sweeps.devices import check_4bit, compute_dtype, kind, resolve_devices
from loradial.sweeps.devices import is_ray

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
    for key in ("ranks", "variants", "targets", "lrs", "seeds", "full_lrs"):  # YAML may give comma strings
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
        [float(x) for x in values.get("lrs", [DEFAULT.lr])],
        float(values.get("lr_rank_exponent") or 0.0),
        [int(s) for s in values.get("seeds", [0])],
        [float(x) for x in values["full_lrs"]] if values.get("full_lrs") is not None else None,
    )


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


def _config_entry(cfg, target_modules: Any, params: int) -> SweepConfigEntry:
    return validated(SweepConfigEntry, {
        "name": cfg.name, "r": None if cfg.variant == "full" else cfg.r,
        "lora_alpha": None if cfg.variant == "full" else float(cfg.lora_alpha), "variant": cfg.variant,
        "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora, "targets": cfg.targets,
        "target_modules": target_modules, "learning_rate": float(cfg.learning_rate), "seed": cfg.seed,
        "trainable_params": params}, "grid")


def config_spec(entry: SweepConfigEntry, dropout: float = DEFAULT.dropout):
    """The LoraSpec of one sweep config (built here only, for the packer and for the engine)."""
    from loradial.spec import LoraSpec

    return LoraSpec(r=entry.r, lora_alpha=entry.lora_alpha, target_modules=entry.target_modules,
                    use_rslora=entry.use_rslora, use_dora=entry.use_dora, lora_dropout=dropout)


def adapter_configs(settings: SweepSettings, names: list[str]) -> list:
    """The engine's typed configs for ``names``: each config's LoraSpec and lr, the sweep's optimizer settings."""
    from loradial.engine.config import AdapterConfig

    t = settings.train
    return [AdapterConfig(n, config_spec(c, t.dropout), lr=c.learning_rate, seed=c.seed, schedule=t.schedule,
                          warmup_ratio=t.warmup_ratio, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
                          max_grad_norm=t.max_grad_norm)
            for n in names for c in [settings.config(n)] if c.variant != "full"]  # full: sweeps/full_segment.py


def _targeted(entry: SweepConfigEntry, info) -> list:
    from loradial.models.targets import matched_modules

    if entry.variant == "full":  # every parameter, no LoRA module
        return []
    spec = config_spec(entry)
    return [(m, spec.rank_for(m.name)) for m in matched_modules(spec, info)]


def _trainable_params(targeted: list, use_dora: bool) -> int:
    from loradial.cost.params import trainable_params

    return int(trainable_params(targeted, use_dora=use_dora))


def _data(settings: SweepSettings, tokenizer) -> tuple[list, list]:
    from loradial.data import load_dataset

    t = settings.train
    train, ev = load_dataset(settings.data, tokenizer, t.max_len, eval_data=settings.eval_data,
                             eval_fraction=0.0 if settings.eval_data else settings.eval_fraction,
                             packing=t.packing, seed=t.seed)
    if not train:
        raise LoradialError(f"no training examples in {settings.data}", "check the data file")
    if not ev:
        raise LoradialError("a sweep ranks configs by eval loss, but there is no eval data",
                            "pass --eval-data FILE or a positive --eval-fraction")
    return train, ev


def resolve(*, model, data, ranks, alphas, variants, targets, lrs, lr_rank_exponent, seeds, grid, steps, epochs,
            eval_data, eval_fraction, eval_every, halving, halving_at, gpu_memory, devices, pack_size,
            checkpoint_every, train: TrainSettings, ray=None, ray_workers=None,
            tune=None, metric="eval_loss", max_new_tokens=MAX_NEW_TOKENS,
            memory_fraction=SweepSettings.model_fields["memory_fraction"].default,
            full_lrs=None) -> tuple[SweepSettings, Context]:
    """Validate everything and return (the SweepSettings sweep.yaml will hold, in-memory context)."""
    from loradial.models.resolve import inspect_model
    from loradial.models.targets import resolve_targets
    from loradial.sweeps.halving import parse_fractions, rung_boundaries

    values = _grid_values(grid, ranks=ranks, alphas=alphas, variants=variants, targets=targets, lrs=lrs,
                          lr_rank_exponent=lr_rank_exponent, seeds=seeds, full_lrs=full_lrs)
    configs = build_configs(values)
    from loradial.sweeps.pack import check_fraction

    check_fraction(memory_fraction)
    for name, v in (("--steps", steps), ("--eval-every", eval_every), ("--checkpoint-every", checkpoint_every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise LoradialError(f"{name} must be a positive integer, got {v!r}", f"e.g. {name} 100")
    if steps is not None and epochs is not None:
        raise LoradialError("give --steps or --epochs, not both", "drop one of them")
    if epochs is not None and not epochs > 0:
        raise LoradialError(f"--epochs must be positive, got {epochs}", "e.g. --epochs 1")
    if not data:
        raise LoradialError("no training data", "pass --data FILE")
    if metric not in ("eval_loss", "exact_match"):
        raise LoradialError(f"unknown --metric {metric!r}", "use eval_loss or exact_match")
    if metric == "exact_match" and not eval_data:
        raise LoradialError("--metric exact_match needs --eval-data", "pass an eval file of prompt/completion or chat records")
    devices = resolve_devices(devices, ray, ray_workers)
    model_dir = _model_dir(model)
    if train.load_in_4bit:
        check_4bit(devices)
        if train.dtype == "fp32":
            raise LoradialError("--load-in-4bit needs a 16-bit --dtype", "use --dtype auto or bf16 (the 4-bit base computes in bf16)")
    if train.gradient_checkpointing:
        check_gradient_checkpointing(model_dir)
    if train.cuda_graphs:
        import torch

        from loradial.engine.graphs import check_graphable

        for d in devices:  # refused before anything is written (the engine checks again on the loaded model)
            check_graphable(torch.device(kind(d)),
                            gradient_checkpointing=train.gradient_checkpointing, load_in_4bit=train.load_in_4bit,
                            dropout=train.dropout, optimizer="flat")
    info = inspect_model(str(model_dir), trust_remote_code=train.trust_remote_code)
    tokenizer = load_tokenizer(model_dir, train.trust_remote_code)
    train = train.model_copy(update={"dtype": compute_dtype(train.dtype, kind(devices[0]))})
    base = dict(model=str(model_dir), data=str(Path(data).expanduser().resolve()),
                eval_data=str(Path(eval_data).expanduser().resolve()) if eval_data else None,
                eval_fraction=float(eval_fraction), grid=dict(values), train=train)
    probe = SweepSettings.model_construct(**base)
    train_ex, ev = _data(probe, tokenizer)
    if metric == "exact_match":  # every eval record needs an answer, said before anything is written
        from loradial.adapters.generate import prompts_and_answers
        from loradial.data import load_records

        prompts_and_answers(load_records(eval_data), tokenizer)
    per_step = train.batch_size * train.grad_accum  # sequences per optimizer step
    n_steps = steps if steps is not None else max(1, math.ceil((epochs or 1.0) * len(train_ex) / per_step))
    fractions = parse_fractions(halving_at) if halving else None
    entries, targeted = [], {}
    resolved: dict[str, Any] = {}
    for cfg in configs:
        if cfg.targets not in resolved:
            resolved[cfg.targets] = "full" if cfg.variant == "full" else resolve_targets(cfg.targets, info)
        entry = _config_entry(cfg, resolved[cfg.targets], 0)
        targeted[cfg.name] = _targeted(entry, info)
        entry.trainable_params = (int(info.total_params) if cfg.variant == "full"
                                  else _trainable_params(targeted[cfg.name], cfg.use_dora))
        entries.append(entry)
    settings = validated(SweepSettings, dict(
        base, steps=n_steps, epochs=epochs, eval_every=eval_every, halving=bool(halving),
        halving_fractions=list(fractions) if fractions else None, halving_boundaries=rung_boundaries(n_steps, fractions),
        checkpoint_every=checkpoint_every, pack_size=pack_size, gpu_memory=gpu_memory, memory_fraction=memory_fraction,
        configs=entries, tune=tune,
        metric=metric, max_new_tokens=max_new_tokens,
    ), "sweep")
    adapter_configs(settings, settings.names)  # the engine's own checks, before anything is written
    settings.budget_bytes, costs = memory_costs(settings, info, targeted, train_ex, devices, gpu_memory)
    settings.costs = costs
    from loradial.sweeps.full_pack import check_full_fits
    from loradial.sweeps.pack import ConfigCost, make_packs

    check_full_fits(settings)
    make_packs([ConfigCost(**c.model_dump()) for c in settings.costs], settings.budget_bytes, pack_size)  # fit check
    return settings, Context(info, tokenizer, train_ex, ev, targeted, devices)


def memory_costs(settings: SweepSettings, info, targeted, train, devices, gpu_memory,
                 all_ranks: Sequence[int] | None = None) -> tuple[int | None, list]:
    """Per-config (shared, marginal) bytes from the engine's memory model, and the per-device budget.

    The estimate (``loradial.cost.engine_memory``) is that of one micro-batch (``batch_size``
    sequences of ``max_len`` tokens each — the longest batch the data can give; --grad-accum adds
    no memory), with gradient checkpointing, the 4-bit base and the dropout when the sweep uses
    them. When the grid mixes ranks (``all_ranks``, default: the configs'), a pack may zero-pad
    ranks inside the engine's buckets: the engine's padding budget is added to the shared part.
    ``train`` is unused (kept for callers): packs are sized by ``max_len``, not the longest record."""
    from loradial.cost.engine_memory import AdapterShape, estimate_engine_memory, padding_allowance
    from loradial.settings import ConfigCostEntry
    from loradial.sweeps.devices import worker_memory
    from loradial.sweeps.pack import PACK_SIZES, config_cost, device_budget, device_total

    t = settings.train
    fraction = settings.memory_fraction
    if is_ray(devices):
        budget, total = worker_memory(devices[0], gpu_memory, fraction)
        budgets, totals = [budget], [total]
    else:
        budgets = [device_budget(d, gpu_memory, fraction) for d in devices]
        totals = [device_total(d) for d in devices]
    known = [b for b in budgets if b is not None]
    budget = min(known) if known else None
    cuda = kind(devices[0]) == "cuda"
    ranks = {r for r in (all_ranks if all_ranks is not None else (c.r for c in settings.configs)) if r is not None}
    total = max((x for x in totals if x is not None), default=None) or (budget if cuda else None)
    padding = padding_allowance(total, cuda) if len(ranks) > 1 else 0
    quant = "4bit" if t.load_in_4bit else "none"
    costs = []
    for entry in settings.configs:
        if getattr(entry, "variant", None) == "full":  # its own pack, one model copy: nothing per extra member
            from loradial.sweeps.full_pack import full_cost

            costs.append(ConfigCostEntry(**dataclasses.asdict(full_cost(entry.name, info, t, t.max_len))))
            continue
        shape = AdapterShape(tuple(targeted[entry.name]), entry.use_dora, t.dropout)

        def est(n, shape=shape):
            return estimate_engine_memory(info, [shape] * n, batch_size=t.batch_size, max_len=t.max_len, dtype=t.dtype,
                                          device="cuda" if cuda else "cpu", quant=quant,
                                          gradient_checkpointing=t.gradient_checkpointing,
                                          padding_bytes=padding).total_bytes
        costs.append(ConfigCostEntry(**dataclasses.asdict(config_cost(entry.name, est, PACK_SIZES))))
    return budget, costs


def load_context(settings: SweepSettings, devices: Sequence[str] | None, ray: str | None = None,
                 ray_workers: int | None = None) -> Context:
    """Rebuild the in-memory context of a sweep from its sweep.yaml (for --resume)."""
    from loradial.models.resolve import inspect_model

    devices = resolve_devices(devices, ray, ray_workers)
    if settings.train.load_in_4bit:
        check_4bit(devices)
    model_dir = _model_dir(settings.model)
    remote = settings.train.trust_remote_code
    info = inspect_model(str(model_dir), trust_remote_code=remote)
    tokenizer = load_tokenizer(model_dir, remote)
    train, ev = _data(settings, tokenizer)
    targeted = {e.name: _targeted(e, info) for e in settings.configs}
    return Context(info, tokenizer, train, ev, targeted, devices)


def add_configs(sd, settings: SweepSettings, ctx: Context, news: Sequence) -> tuple[SweepSettings, list[str]]:
    """Append configs to a running sweep (``tune``'s refinements): their entries and memory costs go
    into sweep.yaml (one atomic write) before state.json learns of them. Returns the new settings and
    the names of ``news`` in order; a config already present (a decision replayed after a kill) is
    not added twice."""
    from loradial.models.targets import resolve_targets
    from loradial.sweeps.grid import SweepConfig, config_name
    from loradial.sweeps.pack import ConfigCost, make_packs

    present = set(settings.names)
    entries, names = [], []
    for new in news:
        name = config_name(new.r, new.lora_alpha, new.variant, new.learning_rate,
                           new.targets if len({c.targets for c in settings.configs}) > 1 else None)
        names.append(name)
        if name in present:
            continue
        present.add(name)
        cfg = SweepConfig(name, new.r, new.lora_alpha, new.variant, new.targets, new.learning_rate, new.seed)
        entry = _config_entry(cfg, resolve_targets(new.targets, ctx.info), 0)
        ctx.targeted[name] = _targeted(entry, ctx.info)
        entry.trainable_params = _trainable_params(ctx.targeted[name], entry.use_dora)
        entries.append(entry)
    if not entries:
        return settings, names
    grown = settings.model_copy(deep=True)
    grown.configs = [*grown.configs, *entries]
    adapter_configs(grown, [e.name for e in entries])  # the engine's checks
    _, costs = memory_costs(grown.model_copy(update={"configs": entries}), ctx.info, ctx.targeted, ctx.train,
                            ctx.devices, grown.gpu_memory, all_ranks=[c.r for c in grown.configs])
    grown.costs = [*grown.costs, *costs]
    make_packs([ConfigCost(**c.model_dump()) for c in costs], grown.budget_bytes, grown.pack_size)  # fit check
    sd.write_settings(grown)
    return grown, names
