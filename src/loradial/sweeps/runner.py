"""The durable run loop of a sweep: rungs, packs, segments, halving, commits, results.

State machine (every transition is one atomic replace of state.json, after the files it points to
exist, so a kill -9 between any two instructions leaves a state that ``run`` continues from):

    rung i starts     -> the packs of the configs alive at rung i are decided once and recorded
    segment (i, j)    -> trains pack j from the rung's start step to its end step (its own
                         checkpoints in work/packs/<id>/ make a killed segment continue, not restart)
    segment commit    -> each member's checkpoint at the end step exists (on the last rung: its
                         adapter under adapters/); the segment's metrics lines are appended to
                         metrics.jsonl; then state.json records steps, the new length of
                         metrics.jsonl and the segment as done
    halving           -> losers' adapters exported at the rung step, then marked stopped
    finish            -> results.json from metrics.jsonl and state.json, then state ``finished``

On resume, metrics.jsonl is first cut back to the length state.json records, so lines of a
segment that was killed before its commit are replayed exactly once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from loradial.errors import runtime_failure
from loradial.io import temp_sibling_dir
from loradial.settings import SweepSettings
from loradial.sweeps.state import STATE_VERSION, SweepDir, fault


def initial_state(settings: SweepSettings) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "rung": 0,
        "metrics_bytes": 0,
        "finished": False,
        "rung_packs": [],
        "segments_done": [],
        "configs": {c.name: _config_state() for c in settings.configs},
    }


def eval_steps(start: int, end: int, every: int | None) -> list[int]:
    """Eval points in (start, end]: multiples of ``every`` and always ``end`` (the rung boundary)."""
    pts = set(range(((start // every) + 1) * every, end + 1, every)) if every else set()
    return sorted(pts | {end})


def _packs_for(settings: SweepSettings, alive: list[str], state: dict[str, Any]) -> list[list[str]]:
    """Packs of the configs alive at a rung: configs at the same step (the survivors, or refinements
    that join ``tune`` at step 0) are packed together, in config order."""
    from loradial.sweeps.full_pack import pack_group
    from loradial.sweeps.pack import ConfigCost, make_packs

    costs = {c.name: ConfigCost(**c.model_dump()) for c in settings.costs}
    packs = []
    for step in sorted({state["configs"][n]["step"] for n in alive}, reverse=True):
        group = [n for n in alive if state["configs"][n]["step"] == step]
        packs += make_packs([costs[n] for n in group], settings.budget_bytes, settings.pack_size,
                            group=pack_group(settings))  # a full config trains alone
    return packs


def segment_jobs(sd: SweepDir, settings: SweepSettings, state: dict[str, Any], rung: int) -> list[dict[str, Any]]:
    end = settings.halving_boundaries[rung]
    final = rung == len(settings.halving_boundaries) - 1
    jobs = []
    for j, members in enumerate(state["rung_packs"][rung]):
        seg = f"r{rung}-p{j}"
        if seg in state["segments_done"]:
            continue
        start = state["configs"][members[0]]["step"]  # every member of a pack is at the same step
        jobs.append({
            "id": seg, "rung": rung, "pack": j, "members": list(members), "start": start, "end": end,
            "eval_steps": eval_steps(start, end, settings.eval_every),
            "checkpoint_every": settings.checkpoint_every,
            "checkpoints": {n: state["configs"][n]["checkpoint"] for n in members},
            "out_checkpoints": {n: str(sd.checkpoint_dir(n) / f"step-{end}") for n in members},
            "work": str(sd.pack_dir(seg)),
            "adapter_dirs": {n: str(sd.adapter_dir(n)) for n in members} if final else {},
        })
    return jobs


def export_adapter(checkpoint: str | Path, dest: Path) -> None:
    """Copy the PEFT adapter of a per-config checkpoint to ``dest`` in one rename."""
    src = Path(checkpoint) / "adapter"
    if not src.is_dir():
        raise runtime_failure(f"checkpoint {checkpoint} has no adapter", "the sweep directory is damaged")
    tmp = temp_sibling_dir(dest)  # named by pid: the next writer removes it if this process is killed
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_segment(sd: SweepDir, state: dict[str, Any], job: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Record a finished segment (see the module docstring for the order of the writes)."""
    for n, path in job["adapter_dirs"].items():
        if not Path(path).is_dir():
            raise runtime_failure(f"the adapter of {n} is missing after its last segment", "resume the sweep")
    sd.truncate_metrics(state["metrics_bytes"])
    state["metrics_bytes"] = sd.append_metrics(outcome["lines"])
    fault(f"commit:{job['id']}")
    olds = []
    for n in job["members"]:
        c = state["configs"][n]
        olds.append(c["checkpoint"])
        c.update(step=job["end"], checkpoint=None if job["adapter_dirs"] else job["out_checkpoints"][n],
                 eval_loss=outcome["evals"].get(n),
                 pack=job["pack"], train_seconds=c["train_seconds"] + outcome["train_seconds"])
        peak = outcome.get("peak_memory_bytes")
        if peak is not None:
            c["peak_memory_bytes"] = max(peak, c["peak_memory_bytes"] or 0)
        if job["adapter_dirs"]:
            c["status"] = "done"
    state["segments_done"].append(job["id"])
    sd.write_state(state)
    for old in olds:  # the state no longer points at them
        if old:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(job["work"], ignore_errors=True)


def _config_state() -> dict[str, Any]:
    return {"status": "alive", "step": 0, "checkpoint": None, "eval_loss": None, "stopped_at": None,
            "pack": None, "train_seconds": 0.0, "peak_memory_bytes": None}


def _stop(sd: SweepDir, state: dict[str, Any], names: list[str], step: int) -> None:
    for n in names:
        c = state["configs"][n]
        if not sd.adapter_dir(n).is_dir():
            export_adapter(c["checkpoint"], sd.adapter_dir(n))
        c.update(status="stopped", stopped_at=step)


def halve(sd: SweepDir, settings: SweepSettings, state: dict[str, Any], rung: int, ctx: Any = None) -> SweepSettings:
    """The rung-end decision: plain successive halving (stop the worse half, compared at the same step),
    or ``tune``'s policy (``sweeps/tuning.py``: stop unstable and behind configs, add refinements).
    Returns the settings, which hold the added configs (sweep.yaml is rewritten before state.json)."""
    full = {c.name for c in settings.configs if c.variant == "full"}  # the reference: never stopped
    alive = [n for n in settings.names if state["configs"].get(n, {}).get("status") == "alive" and n not in full]
    step = settings.halving_boundaries[rung]
    losses = {n: state["configs"][n]["eval_loss"] for n in alive}
    if settings.tune is None:
        from loradial.sweeps.halving import survivors

        params = {c.name: c.trainable_params for c in settings.configs}
        keep = set(survivors(losses, params))
        _stop(sd, state, [n for n in alive if n not in keep], step)
    else:
        from loradial.sweeps.results import verdicts
        from loradial.sweeps.setup import add_configs
        from loradial.sweeps.tuning import decide

        lines = [ln for ln in sd.read_metrics() if ln.get("adapter") in losses]
        known = [c for c in settings.configs if c.name in state["configs"] and c.name not in full]  # a replayed decision sees what the first saw
        decision = decide(rung, settings.tune, known, alive, losses, verdicts(lines), step)
        settings, added = add_configs(sd, settings, ctx, decision.add)  # idempotent: a re-decision adds nothing twice
        fault(f"added:{rung}")
        for name in added:
            state["configs"].setdefault(name, _config_state())
        records = decision.records + [{"rung": rung + 1, "step": step, "config": name, "action": "added",
                                       "reason": new.reason, "eval_loss": None, "verdict": None}
                                      for name, new in zip(added, decision.add)]
        state.setdefault("decisions", []).extend(records)
        _stop(sd, state, decision.stopped, step)
    fault(f"halve:{rung}")
    state["rung"] = rung + 1
    sd.write_state(state)
    return settings


def run(sd: SweepDir, settings: SweepSettings, ctx: Any, progress: bool = False) -> SweepSettings:
    """Train every rung to its end, committing as it goes; idempotent after any kill."""
    from loradial.sweeps.devices import is_ray

    state = sd.read_state()
    if state.get("finished"):
        return settings
    sd.truncate_metrics(state["metrics_bytes"])
    bounds = settings.halving_boundaries
    for rung in range(state["rung"], len(bounds)):
        if len(state["rung_packs"]) <= rung:
            alive = [n for n in settings.names if state["configs"].get(n, {}).get("status") == "alive"]
            state["rung_packs"].append(_packs_for(settings, alive, state))
            sd.write_state(state)
        jobs = segment_jobs(sd, settings, state, rung)

        def on_done(job: dict[str, Any], outcome: dict[str, Any]) -> None:
            commit_segment(sd, state, job, outcome)

        if is_ray(ctx.devices):
            from loradial.sweeps.ray_exec import execute_ray  # imports Ray's client only when asked for

            execute_ray(jobs, settings, ctx.devices, on_done, progress, len(bounds))
        elif jobs:
            from loradial.sweeps.executor import execute

            execute(jobs, settings, ctx, on_done, progress=progress, n_rungs=len(bounds))
        if rung < len(bounds) - 1:
            settings = halve(sd, settings, state, rung, ctx)
        else:
            state["rung"] = len(bounds)
            sd.write_state(state)
    return settings


def finish(sd: SweepDir, settings: SweepSettings, ctx: Any, *, wall_seconds: float, resumed: bool):
    """Write results.json (from metrics.jsonl + state.json), mark the sweep finished, clean work/."""
    from loradial.io import atomic_write_json
    from loradial.sweeps.results import (SweepResult, config_result, curves, full_ft_comparison, lr_rank_fit,
                                         pick_best, verdicts)

    state = sd.read_state()
    lines = sd.read_metrics()
    by_name, verdict = curves(lines), verdicts(lines)
    keys = ("name", "r", "lora_alpha", "use_rslora", "use_dora", "variant", "targets", "target_modules",
            "learning_rate", "seed")
    configs = []
    for entry in settings.configs:
        c = state["configs"][entry.name]
        curve = by_name.get(entry.name)
        configs.append(config_result(
            {k: getattr(entry, k) for k in keys}, curve, trainable_params=entry.trainable_params,
            steps=curve["train"][-1][0] if curve and curve["train"] else 0, stopped_at=c["stopped_at"], pack=c["pack"], train_seconds=c["train_seconds"],
            peak_memory_bytes=c["peak_memory_bytes"], verdict=verdict.get(entry.name),
        ))
        configs[-1]["train_seconds"] = c["train_seconds"]
    if settings.metric == "exact_match":
        _add_exact_match(sd, settings, state, configs)
    packs = state["rung_packs"]
    adapters = [c for c in configs if c["variant"] != "full"]
    base_loss = settings.tune.base_eval_loss if settings.tune is not None else None
    full_ft = full_ft_comparison(configs, by_name, base_loss)
    result = SweepResult(
        out=str(sd.root), best=pick_best(adapters, settings.metric), configs=configs, lr_rank_fit=lr_rank_fit(adapters),
        n_packs=len(packs[0]) if packs else 0, packs=packs,
        settings=settings.model_dump(mode="json", exclude={"configs", "costs"}),
        devices=list(ctx.devices), wall_seconds=wall_seconds, resumed=resumed,
        decisions=state.get("decisions") if settings.tune is not None else None, full_ft=full_ft,
    )
    from loradial.adapters.card import write_model_card

    for c in (c for c in adapters if sd.adapter_dir(c["name"]).is_dir()):  # README.md + tokenizer beside each adapter
        write_model_card(sd.adapter_dir(c["name"]), {**c, **settings.train.model_dump(include={"batch_size", "grad_accum", "max_len"}),
                                                     "eval_loss": c["final_eval_loss"], "status": "stopped" if c["stopped_at"] else "done"})
    fault("finish")
    atomic_write_json(sd.results_path, result.to_dict())
    state["finished"] = True
    sd.write_state(state)
    sd.clean_work()
    return result


def _add_exact_match(sd: SweepDir, settings: SweepSettings, state: dict[str, Any], configs: list[dict[str, Any]]) -> None:
    """Greedy exact match of every config trained to the end (``--metric exact_match``), beside eval loss;
    kept in state.json so a resumed finish does not decode again."""
    from loradial.adapters.generate import exact_match_of_adapters

    done = [c["name"] for c in configs if c.get("stopped_at") is None and c.get("variant") != "full" and sd.adapter_dir(c["name"]).is_dir()]
    scores = state.setdefault("exact_match", {})
    todo = {n: sd.adapter_dir(n) for n in done if n not in scores}
    if todo:
        scores.update(exact_match_of_adapters(settings.model, settings.eval_data, todo,
                                              max_new_tokens=settings.max_new_tokens,
                                              batch_size=2 * settings.train.batch_size,
                                              trust_remote_code=settings.train.trust_remote_code))
        sd.write_state(state)
    for c in configs:
        c["exact_match"] = scores.get(c["name"])

