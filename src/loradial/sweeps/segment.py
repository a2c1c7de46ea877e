"""One sweep segment on the multi-adapter engine: a pack of configs trained from one step to another.

A thin layer over ``loradial.engine`` (no second trainer): the segment builds an ``Engine`` on the
already loaded base with the pack's ``AdapterConfig``s, restores their state, runs to the end step
(evaluating at the segment's eval points, checkpointing on the way with the engine's own
checkpoint), and then writes one checkpoint per member so the next rung can re-pack survivors
from different packs (on the last rung: the members' PEFT adapters instead). When the next
segment's members all sit in the engine just used, that engine is kept and its other adapters are
dropped (``Engine.drop``) rather than rebuilt from disk. Every adapter sees the same batches in the
same order whatever pack it is in (the engine repeats the batch per slice and its data stream
depends only on the step), so a pack's state is exactly the union of its members' states at the
same step. One exception: with --dropout the engine draws one mask tensor per bucket of adapters,
so a config's masks depend on its pack mates (``seed_segment`` keeps them reproducible, resume
included, for a given packing).

Per-config checkpoint (``work/configs/<name>/step-<S>/``): ``state.safetensors`` (the engine's
``export_state``: factors and AdamW moments, keyed '<module>.<A|B|magnitude>[.exp_avg|.exp_avg_sq]',
plus the CPU RNG), ``meta.json`` (step, data position, AdamW step count, frozen flag, status) and
``adapter/`` (the PEFT adapter at that step, what ``adapters/<name>/`` receives when the config ends).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from loradial.errors import LoradialError
from loradial.settings import SweepSettings
from loradial.sweeps.setup import adapter_configs
from loradial.sweeps.state import fault

#: Without --checkpoint-every, a running segment checkpoints every this many seconds.
CHECKPOINT_SECONDS = 600.0
#: Eval keeps no activations for backward, so its batches can be larger than the training ones.
EVAL_BATCH_FACTOR = 2


@dataclasses.dataclass
class SegmentEnv:
    """The loaded base model and tokenized data of one process on one device (reused by its segments)."""

    settings: SweepSettings
    model: Any
    train: list[dict]
    eval: list[dict]
    pad_token_id: int | None
    device: str

    @classmethod
    def shared(cls, settings: SweepSettings, ctx: Any, device: str) -> "SegmentEnv":
        """This sweep's env on ``device``; the base model is loaded once per process and kept until ``release``."""
        model = base_model(settings, device)
        tok = ctx.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(settings, model, ctx.train, ctx.eval, pad, device)


def base_model(settings: SweepSettings, device: str):
    """The frozen base of this sweep on ``device``, loaded once per process (until ``release``)."""
    t = settings.train
    key = (settings.model, device, t.dtype, t.load_in_4bit)
    if key not in _MODELS:
        from loradial.models.load import load_model

        release()  # one base per process
        _MODELS[key] = load_model(settings.model, dtype=t.dtype, load_in_4bit=t.load_in_4bit, device=device,
                                  trust_remote_code=t.trust_remote_code)[0]
    return _MODELS[key]


_MODELS: dict[tuple, Any] = {}
_HEAD_CHECKED: set[int] = set()
_KEPT: dict[int, Any] = {}  # id(base model) -> the last segment's engine, still wrapped around it


def release() -> None:
    """Drop the cached base model and any kept engine (end of a sweep)."""
    for engine in _KEPT.values():
        engine.unwrap()
    had_model = bool(_MODELS)
    _KEPT.clear()
    _MODELS.clear()
    _HEAD_CHECKED.clear()
    if had_model:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the memory back to other users of the GPU


# --- per-config checkpoints ------------------------------------------------------------------------
def save_config_checkpoint(engine, name: str, path: Path) -> None:
    """Write adapter ``name``'s state at the engine's current step in one rename (see module doc)."""
    import torch
    from safetensors.torch import save_file

    from loradial.adapters.format import save_adapter
    from loradial.io import atomic_dir, atomic_write_json

    if path.is_dir():
        return
    tensors = engine.export_state(name)
    tensors["rng/cpu"] = torch.get_rng_state()
    active = name in engine.active
    k = engine.active.index(name) if active else None
    meta = {"name": name, "step": engine.step, "data": engine.data.state(), "status": engine.status[name],
            "frozen_at": engine.frozen_at.get(name),
            "opt_step": float(engine.opt.steps[k]) if active else float(engine.step),
            "frozen": float(engine.opt.frozen[k]) if active else 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp / "state.safetensors"))
        atomic_write_json(tmp / "meta.json", meta)
        save_adapter(engine.export_adapter(name), tmp / "adapter", overwrite=True)


def compose_state(engine, checkpoints: dict[str, str], step: int) -> None:
    """Load the members' per-config checkpoints (all at ``step``) into a freshly built engine."""
    from safetensors.torch import load_file

    tensors, meta = {}, None
    status, frozen_at, opt_steps, frozen = {}, {}, {}, {}
    for name in engine.configs:
        path = Path(checkpoints[name])
        m = json.loads((path / "meta.json").read_text())
        if m["step"] != step:
            raise LoradialError(f"checkpoint of {name} is at step {m['step']}, expected {step}", "the sweep directory is damaged")
        st = load_file(str(path / "state.safetensors"))
        rng = st.pop("rng/cpu")
        kind = "active" if m["status"] == "training" else "finished"
        tensors.update({f"{kind}/{name}/{k}": t for k, t in st.items()})
        if meta is None:
            meta, tensors["rng/cpu"] = m, rng
        status[name] = m["status"]
        if m.get("frozen_at") is not None:
            frozen_at[name] = m["frozen_at"]
        if kind == "active":
            opt_steps[name], frozen[name] = m["opt_step"], m["frozen"]
    engine.load_state_dict(tensors, {
        "step": step, "total_steps": engine.total_steps, "data": meta["data"], "seed": engine.seed,
        "adapters": [engine.configs[n].to_dict() for n in engine.configs], "status": status, "frozen_at": frozen_at,
        "elapsed": 0.0, "tokens_seen": 0, "opt_steps": opt_steps, "frozen": frozen,
    })


# --- the segment -----------------------------------------------------------------------------------
def _outputs_done(job: dict[str, Any]) -> bool:
    """Whether every member's output exists: its adapter (last rung) or its per-config checkpoint."""
    paths = job["adapter_dirs"] if job["adapter_dirs"] else job["out_checkpoints"]
    return all(Path(paths[n]).is_dir() for n in job["members"])


def _engine_for(job: dict[str, Any], env: SegmentEnv, metrics: Path):
    """The engine of this segment: the previous segment's, kept in memory, when it holds every member at
    the start step (its other adapters are dropped: successive halving on one pack costs no reload);
    otherwise a new one, restored from the segment's own checkpoint or from the members' checkpoints."""
    from loradial.engine import AdapterConfig, Engine
    from loradial.engine.checkpoint import find_checkpoint, load_checkpoint, truncate_metrics

    s, work = env.settings, Path(job["work"])
    t = s.train
    try:
        find_checkpoint(work)
        resumable = True
    except LoradialError:
        resumable = False
    kept = _KEPT.pop(id(env.model), None)
    if kept is not None:
        if (not resumable and kept.step == job["start"] and set(job["members"]) <= set(kept.active)
                and kept.device == torch_device(env.device)):
            metrics.unlink(missing_ok=True)
            kept.metrics_path = metrics
            kept.drop([n for n in kept.active if n not in job["members"]])
            seed_segment(s, job)
            return kept
        kept.unwrap()
    tensors = meta = None
    configs = adapter_configs(s, job["members"])
    if resumable:
        tensors, meta = load_checkpoint(work)
        configs = [AdapterConfig.from_dict(d) for d in meta["adapters"]]  # may hold adapters dropped in-segment
    try:
        engine = Engine(env.model, configs, env.train, batch_size=t.batch_size, steps=s.steps, eval=env.eval,
                        eval_batch_size=EVAL_BATCH_FACTOR * t.batch_size, grad_accum=t.grad_accum,
                        gradient_checkpointing=t.gradient_checkpointing, cuda_graphs=t.cuda_graphs,
                        pad_token_id=env.pad_token_id, seed=t.seed, metrics_path=metrics, base_model_name=s.model,
                        check_head=id(env.model) not in _HEAD_CHECKED)  # once per loaded base
    except ValueError as e:  # e.g. transformers: this model does not support gradient checkpointing
        raise LoradialError(f"the engine refused this sweep's settings: {str(e).splitlines()[0][:200]}",
                            "drop --gradient-checkpointing, or check the model") from None
    _HEAD_CHECKED.add(id(env.model))
    if resumable:
        engine.load_state_dict(tensors, meta)
        truncate_metrics(metrics, engine.step)
    else:
        metrics.unlink(missing_ok=True)
        if job["start"] > 0:
            compose_state(engine, job["checkpoints"], job["start"])
        seed_segment(s, job)
    return engine


def seed_segment(settings: SweepSettings, job: dict[str, Any]) -> None:
    """Seed the RNG (CPU and CUDA) of a segment that starts at its rung's first step, from the sweep's seed
    and that step: the dropout masks are then the same whether the engine was kept in memory, built
    fresh or rebuilt from checkpoints on --resume. (A segment continued from its own checkpoint gets
    the RNG states saved in it.) Nothing else in training draws random numbers."""
    import torch

    torch.manual_seed(settings.train.seed * 1_000_003 + int(job["start"]))


def torch_device(device: str):
    import torch

    d = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


def run_segment(job: dict[str, Any], env: SegmentEnv, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``job['members']`` from ``job['start']`` to ``job['end']``; returns the segment's outcome:
    ``lines`` (its metrics.jsonl text), ``evals`` (name -> eval loss at the end step), ``train_seconds``,
    ``peak_memory_bytes``. Continues from the segment's own checkpoint when a kill interrupted it.

    Outputs: on the last rung each member's PEFT adapter goes straight to ``adapters/<name>/``; on
    other rungs each member gets a per-config checkpoint (for the next rung's packs and for halving).
    Mid-segment checkpoints: every ``--checkpoint-every`` steps, else every CHECKPOINT_SECONDS.
    """
    import torch

    from loradial.adapters.format import save_adapter
    from loradial.engine.checkpoint import save_checkpoint
    if env.model is None:  # a full segment gave the base back
        env.model = base_model(env.settings, env.device)
    work = Path(job["work"])
    work.mkdir(parents=True, exist_ok=True)
    metrics = work / "metrics.jsonl"
    train_seconds, peak = 0.0, None
    if not _outputs_done(job):  # else a kill struck after the outputs: nothing to train
        engine = _engine_for(job, env, metrics)
        cuda = env.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(env.device)
        evals_at, every = set(job["eval_steps"]), job.get("checkpoint_every")
        t0 = last_save = time.perf_counter()

        def step_done(e) -> None:
            nonlocal last_save
            if on_step is not None:
                on_step(e.step)
            if e.step in evals_at:
                e.evaluate()
            due = (e.step % every == 0) if every else time.perf_counter() - last_save > CHECKPOINT_SECONDS
            if due and e.step < job["end"]:
                save_checkpoint(e, work, {"segment": job["id"]})
                last_save = time.perf_counter()
            fault(f"step:{job['id']}:{e.step}")

        keep = False
        try:
            if engine.step < job["end"]:
                engine.run(job["end"], on_step=step_done)
            engine.flush()
            train_seconds = time.perf_counter() - t0
            fault(f"trained:{job['id']}")
            for name in job["members"]:
                if job["adapter_dirs"]:
                    if not Path(job["adapter_dirs"][name]).is_dir():
                        save_adapter(engine.export_adapter(name), job["adapter_dirs"][name], overwrite=True)
                else:
                    save_config_checkpoint(engine, name, Path(job["out_checkpoints"][name]))
            peak = int(torch.cuda.max_memory_allocated(env.device)) if cuda else None
            keep = not job["adapter_dirs"]
        finally:
            if keep:
                _KEPT[id(env.model)] = engine
            else:
                engine.unwrap()
    text = metrics.read_text(encoding="utf-8") if metrics.exists() else ""
    lines = [ln for ln in text.splitlines(keepends=True) if ln.endswith("\n")]
    evals = {}
    for ln in lines:
        row = json.loads(ln)
        if "eval_loss" in row and row["step"] == job["end"]:
            evals[row["adapter"]] = row["eval_loss"]
    return {"lines": "".join(lines), "evals": evals, "train_seconds": train_seconds, "peak_memory_bytes": peak}
