"""The sweep's ``full`` variant: full fine-tuning trained as its own pack, the reference for the adapters.

Packing, cost and the fit check are ``full_pack``'s; ``run_job`` sends each segment job to its trainer
(``executor`` calls it). A full config's segment (``run_full_segment``) gives back the shared frozen base (``segment.release``), loads its
own fp32 copy of the model, and trains it with ``engine.full.FullEngine`` on the same data order,
steps, schedule and eval points as the adapters; at step 0 it evaluates the untouched model, which
is the sweep's base eval loss. Like an adapter segment it checkpoints on the way
(``work/packs/<id>/checkpoint``: weights, AdamW moments, data position, RNG), continues from that
checkpoint after a kill, and writes on the last rung a Hugging Face model directory to
``adapters/<name>/`` (``save_pretrained``, safetensors, with the tokenizer), on other rungs a
per-config checkpoint for the next rung. Halving and ``tune`` never stop it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from loradial.errors import LoradialError
from loradial.settings import SweepSettings
from loradial.sweeps.full_pack import is_full
from loradial.sweeps.segment import run_segment
from loradial.sweeps.state import fault


def run_job(job: dict[str, Any], env, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one segment job: a full config's with ``run_full_segment``, an adapter pack's with ``segment.run_segment``."""
    if len(job["members"]) == 1 and is_full(env.settings, job["members"][0]):
        return run_full_segment(job, env, on_step)
    return run_segment(job, env, on_step)



def _load_full_model(settings: SweepSettings, device: str):
    from loradial.models.load import load_model
    from loradial.sweeps.segment import release

    release()  # the frozen base of the adapter packs: one model copy at a time
    if settings.train.load_in_4bit:
        raise LoradialError("full fine-tuning cannot train a 4-bit base", "drop full from --variants or --load-in-4bit")
    return load_model(settings.model, dtype="fp32", device=device, trust_remote_code=settings.train.trust_remote_code)


def run_full_segment(job: dict[str, Any], env, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``segment.run_segment`` for a full config (same job and outcome dicts; see the module docstring)."""
    import gc

    import torch

    from loradial.engine.checkpoint import truncate_metrics
    from loradial.engine.full import FullEngine
    from loradial.sweeps.segment import CHECKPOINT_SECONDS, EVAL_BATCH_FACTOR, seed_segment

    (name,) = job["members"]
    s, t = env.settings, env.settings.train
    work = Path(job["work"])
    work.mkdir(parents=True, exist_ok=True)
    metrics, own = work / "metrics.jsonl", work / "checkpoint"
    final = bool(job["adapter_dirs"])
    out = Path(job["adapter_dirs"][name] if final else job["out_checkpoints"][name])
    train_seconds, peak = 0.0, None
    if not out.is_dir():
        entry = s.config(name)
        env.model = None  # give the frozen base back (the next adapter segment reloads it)
        model, tokenizer = _load_full_model(s, env.device)
        engine = FullEngine(model, name, env.train, batch_size=t.batch_size, steps=s.steps, lr=entry.learning_rate,
                            schedule=t.schedule, warmup_ratio=t.warmup_ratio, warmup_steps=t.warmup_steps,
                            weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, eval=env.eval,
                            eval_batch_size=EVAL_BATCH_FACTOR * t.batch_size, grad_accum=t.grad_accum,
                            pad_token_id=env.pad_token_id, gradient_checkpointing=t.gradient_checkpointing,
                            seed=t.seed, metrics_path=metrics)
        if (own / "state.json").is_file():
            engine.load_state(own)
            truncate_metrics(metrics, engine.step)
        else:
            metrics.unlink(missing_ok=True)
            if job["start"] > 0:
                engine.load_state(job["checkpoints"][name])
            else:
                engine.evaluate()  # step 0: the untouched model, i.e. the base eval loss
            seed_segment(s, job)
        cuda = env.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(env.device)
        evals_at, every = set(job["eval_steps"]), job.get("checkpoint_every")
        t0 = last_save = time.perf_counter()

        def step_done(e: FullEngine) -> None:
            nonlocal last_save
            if on_step is not None:
                on_step(e.step)
            if e.step in evals_at:
                e.evaluate()
            due = (e.step % every == 0) if every else time.perf_counter() - last_save > CHECKPOINT_SECONDS
            if due and e.step < job["end"]:
                e.save_state(own)
                last_save = time.perf_counter()
            fault(f"step:{job['id']}:{e.step}")

        if engine.step < job["end"]:
            engine.run(job["end"], on_step=step_done)
        if engine.status != "training" and engine.step < job["end"]:  # diverged: the rest of its steps are skipped
            engine.step = job["end"]
        train_seconds = time.perf_counter() - t0
        fault(f"trained:{job['id']}")
        if final:
            engine.save_model(out, tokenizer)
        else:
            engine.save_state(out)
        peak = int(torch.cuda.max_memory_allocated(env.device)) if cuda else None
        del engine, model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    text = metrics.read_text(encoding="utf-8") if metrics.exists() else ""
    lines = [ln for ln in text.splitlines(keepends=True) if ln.endswith("\n")]
    evals = {}
    for ln in lines:
        row = json.loads(ln)
        if "eval_loss" in row and row["step"] == job["end"]:
            evals[row["adapter"]] = row["eval_loss"]
    return {"lines": "".join(lines), "evals": evals, "train_seconds": train_seconds, "peak_memory_bytes": peak}
