"""``loradial train``: train one LoRA/rsLoRA/DoRA adapter (the multi-adapter engine with K = 1).

The output directory holds ``adapters/<name>/`` (a PEFT adapter: ``PeftModel.from_pretrained``
loads it), ``metrics.jsonl`` (one line per step: step, adapter, loss, lr, grad_norm, tokens,
elapsed; eval lines with eval_loss), ``train_result.json`` and, with ``save_every``, a
resumable ``checkpoint/``. Several configurations at once: ``train_many`` (engine/session.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
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
          targets: str | list[str] = "all-linear", lr: float = 2e-4, steps: int | None = None, epochs: float | None = None,
          batch_size: int = 8, max_len: int = 1024, out: str | Path | None = None, eval_data=None,
          eval_fraction: float = 0.0, dropout: float = 0.0, seed: int = 0, save_every: int | None = None,
          eval_every: int | None = None, resume: str | Path | None = None, gradient_checkpointing: bool = False,
          dtype: str = "auto", load_in_4bit: bool = False, packing: bool = False, weight_decay: float = 0.0,
          schedule: str = "cosine", warmup_ratio: float = 0.03, warmup_steps: int | None = None,
          max_grad_norm: float | None = 1.0, grad_accum: int = 1, tokenizer=None, name: str = "default",
          overwrite: bool = False, progress: bool = False, trust_remote_code: bool = False, **engine_kw: Any) -> TrainResult:
    """Train one adapter on ``data`` and save it as a PEFT adapter under ``out/adapters/<name>``.

    ``targets``: 'all-linear', 'attention', 'mlp', 'q_proj,v_proj' or 're:<regex>' (PEFT's rules).
    ``resume``: a run directory written with ``save_every``; it continues with its saved settings.
    ``trust_remote_code``: let ``from_pretrained`` run the model repository's own code (off unless asked).
    """
    if resume is not None:
        return train_many(model, data, None, out=resume, resume=True, tokenizer=tokenizer, progress=progress,
                          trust_remote_code=trust_remote_code, **engine_kw)
    if out is None:
        raise LoradialError("no output directory", "pass --out DIR")
    if model is None or data is None:
        raise LoradialError("model and data are required", "pass --model and --data")
    if (steps is None) == (epochs is None):
        raise LoradialError("give exactly one of steps and epochs", "use --steps N or --epochs E")
    from loradial.models.targets import resolve_targets

    needs_info = isinstance(targets, str) and targets.strip() in ("attention", "mlp")
    target_modules = resolve_targets(targets, model_info(model, trust_remote_code)) if needs_info else resolve_targets(targets, None)
    spec = LoraSpec(r=rank, lora_alpha=alpha, target_modules=target_modules, use_rslora=use_rslora,
                    use_dora=use_dora, lora_dropout=dropout)
    cfg = AdapterConfig(name, spec, lr=lr, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, seed=seed)
    return train_many(model, data, [cfg], out=out, tokenizer=tokenizer, batch_size=batch_size, steps=steps,
                      epochs=epochs, max_len=max_len, eval_data=eval_data, eval_fraction=eval_fraction, packing=packing,
                      seed=seed, save_every=save_every, eval_every=eval_every, gradient_checkpointing=gradient_checkpointing,
                      dtype=dtype, load_in_4bit=load_in_4bit, grad_accum=grad_accum, overwrite=overwrite,
                      progress=progress, trust_remote_code=trust_remote_code, **engine_kw)
