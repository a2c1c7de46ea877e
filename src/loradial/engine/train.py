"""``loradial train``: train one LoRA/rsLoRA/DoRA adapter (the multi-adapter engine with K = 1).

The output directory holds ``adapters/<name>/`` (a PEFT adapter: ``PeftModel.from_pretrained``
loads it), ``metrics.jsonl`` (one line per step: step, adapter, loss, lr, grad_norm, tokens,
elapsed; eval lines with eval_loss), ``train_result.json`` and, with ``save_every``, a
resumable ``checkpoint/``. Several configurations at once: ``train_many`` (engine/session.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
from loradial.settings import DEFAULT, RunSettings, TrainSettings
from loradial.spec import LoraSpec
from loradial.engine.config import AdapterConfig
from loradial.engine.session import TrainResult, train_many

__all__ = ["train", "train_many", "TrainResult", "model_info"]


def model_info(model, trust_remote_code: bool = False):
    """ModelInfo for a model directory / bundled name / Hub id (meta build) or a loaded model."""
    from loradial.models.info import ModelInfo
    from loradial.models.resolve import inspect_model, list_modules

    if isinstance(model, (str, Path)):
        return inspect_model(str(model), trust_remote_code=trust_remote_code)
    mods = list_modules(model)
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    return ModelInfo(getattr(model, "name_or_path", type(model).__name__) or type(model).__name__, "local", cfg,
                     mods, sum(p.numel() for p in model.parameters()),
                     bool(cfg.get("tie_word_embeddings", False)))


def train(model=None, data=None, *, rank: int = 8, alpha: float = 16, use_rslora: bool = False, use_dora: bool = False,
          targets: str | list[str] = "all-linear", lr: float = DEFAULT.lr, steps: int | None = None,
          epochs: float | None = None, batch_size: int = DEFAULT.batch_size, max_len: int = DEFAULT.max_len,
          out: str | Path | None = None, eval_data=None, eval_fraction: float = 0.0, dropout: float = DEFAULT.dropout,
          seed: int = DEFAULT.seed, save_every: int | None = None, eval_every: int | None = None,
          resume: str | Path | None = None, gradient_checkpointing: bool = DEFAULT.gradient_checkpointing,
          dtype: str = DEFAULT.dtype, load_in_4bit: bool = DEFAULT.load_in_4bit, packing: bool = DEFAULT.packing,
          weight_decay: float = DEFAULT.weight_decay, schedule: str = DEFAULT.schedule,
          warmup_ratio: float = DEFAULT.warmup_ratio, warmup_steps: int | None = DEFAULT.warmup_steps,
          max_grad_norm: float | None = DEFAULT.max_grad_norm, grad_accum: int = DEFAULT.grad_accum, tokenizer=None,
          name: str = "default", overwrite: bool = False, progress: bool = False,
          trust_remote_code: bool = DEFAULT.trust_remote_code, cuda_graphs: bool = DEFAULT.cuda_graphs,
          **engine_kw: Any) -> TrainResult:
    """Train one adapter on ``data`` and save it as a PEFT adapter under ``out/adapters/<name>``.

    ``targets``: 'all-linear', 'attention', 'mlp', 'q_proj,v_proj' or 're:<regex>' (PEFT's rules).
    ``resume``: a run directory written with ``save_every``; it continues with its saved settings.
    ``trust_remote_code``: let ``from_pretrained`` run the model repository's own code (off unless asked).
    ``cuda_graphs``: replay the steady-state step as a CUDA graph (GPU only; see engine/graphs.py).
    """
    if resume is not None:
        return train_many(model, data, None, out=resume, resume=True, tokenizer=tokenizer, progress=progress,
                          trust_remote_code=trust_remote_code, **engine_kw)
    if out is None or str(out) == "":
        raise LoradialError("no output directory", "pass --out DIR")
    if model is None or data is None:
        raise LoradialError("model and data are required", "pass --model and --data")
    if (steps is None) == (epochs is None):
        raise LoradialError("give exactly one of steps and epochs", "use --steps N or --epochs E")
    RunSettings.checked("flags", steps=steps, epochs=epochs, eval_every=eval_every, save_every=save_every,
                        eval_fraction=eval_fraction)
    from loradial.models.targets import resolve_targets

    t = TrainSettings.checked("flags", lr=lr, batch_size=batch_size, max_len=max_len, dropout=dropout, seed=seed,
                              gradient_checkpointing=gradient_checkpointing, dtype=dtype, load_in_4bit=load_in_4bit,
                              packing=packing, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                              warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, grad_accum=grad_accum,
                              trust_remote_code=trust_remote_code, cuda_graphs=cuda_graphs)
    spec = LoraSpec(r=rank, lora_alpha=alpha, target_modules="all-linear", use_rslora=use_rslora, use_dora=use_dora,
                    lora_dropout=t.dropout)  # checks r and alpha before the model is read
    needs_info = isinstance(targets, str) and targets.strip() in ("attention", "mlp")
    target_modules = resolve_targets(targets, model_info(model, trust_remote_code)) if needs_info else resolve_targets(targets, None)
    spec = dataclasses.replace(spec, target_modules=target_modules)
    cfg = AdapterConfig(name, spec, lr=t.lr, weight_decay=t.weight_decay, schedule=t.schedule,
                        warmup_ratio=t.warmup_ratio, warmup_steps=t.warmup_steps, max_grad_norm=t.max_grad_norm,
                        seed=t.seed)
    return train_many(model, data, [cfg], out=out, tokenizer=tokenizer, batch_size=t.batch_size, steps=steps,
                      epochs=epochs, max_len=t.max_len, eval_data=eval_data, eval_fraction=eval_fraction,
                      packing=t.packing, seed=t.seed, save_every=save_every, eval_every=eval_every,
                      gradient_checkpointing=t.gradient_checkpointing, dtype=t.dtype, load_in_4bit=t.load_in_4bit,
                      grad_accum=t.grad_accum, overwrite=overwrite, progress=progress,
                      trust_remote_code=t.trust_remote_code, cuda_graphs=t.cuda_graphs, **engine_kw)
