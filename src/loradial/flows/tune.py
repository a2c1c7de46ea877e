"""``loradial tune``: the best rank, alpha and learning rate on *your* data, within a compute budget.

Stages (one sweep directory carries all of them, so ``--resume`` after a kill -9 continues exactly):

1. *Start* from ``recommend`` (rank and a learning rate that fits the model's size).
2. *Explore*: a grid trained at once on the engine — ranks r/2, r, 2r, 4r around the start, learning
   rates lr/3, lr, 3·lr, LoRA and rsLoRA (alpha = r), on the targets asked (all-linear by default) —
   to the first rung (1/8 of the steps).
3. *Stop early* what is clearly worse: unstable or diverged curves (diagnose's rules) and all but the
   best third (``sweeps/tuning.py``), each decision recorded with its numbers.
4. *Refine* around the best (learning rate half-way to each explored neighbour, rank one doubling either
   side), trained from step 0 to the second rung (1/4) and compared with the survivors there.
5. *Continue* the best two from their checkpoints (never from step 0) to the full step budget.
6. *Check the rank*: the winner's truncation curve on the eval data (``analyze --data``); when a smaller
   rank keeps ≥ 99 % of the eval gain, the resized adapter and its measured loss are given too.

Outputs in ``out``: ``best/`` (the best adapter, standard PEFT), ``tune.json`` (every stage, config,
decision and the compute used vs the exhaustive grid it stands for), ``exports/`` (PEFT, TRL, Axolotl,
LLaMA-Factory, Unsloth, torchtune), ``rank-check/`` and ``report.html``; the search itself in ``search/``.

Budget unit: one adapter-step = one optimizer step of one config at ``batch_size`` × ``max_len`` (a
sweep of K configs × S steps spends K·S). The plan's worst case (``tuning.planned_adapter_steps``) must
fit the budget: it fixes the full step count S when only ``budget`` is given.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time as _time
from pathlib import Path
from typing import Any, Sequence

from loradial.errors import LoradialError
from loradial.io import atomic_write_json, atomic_write_text, check_out_not_overlapping, read_json
from loradial.result import Result
from loradial.settings import DEFAULT, MAX_NEW_TOKENS, SweepSettings, TunePolicy

PLAN_FILE = "tune-plan.json"
RETAIN = 0.99
"""A smaller rank is reported when its truncation keeps at least this share of the eval gain."""


@dataclasses.dataclass
class TuneResult(Result):
    """The answer and the numbers behind it (``tune.json``)."""

    out: str
    best_adapter: str
    """Directory of the best adapter (a standard PEFT adapter)."""
    best_config: dict[str, Any]
    best_eval_loss: float | None
    base_eval_loss: float | None
    adapter_steps_used: int
    adapter_steps_budget: int
    adapter_steps_grid: int
    """What the exhaustive grid it stands for would spend: every explored or refined rank × every
    learning rate × both scalings, each to the full step count."""
    steps: int
    start: dict[str, Any]
    stages: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    configs: list[dict[str, Any]]
    rank_check: dict[str, Any] | None
    exports: dict[str, str]
    report: str | None
    why: list[str]
    """One line per reason this config won."""
    wall_seconds: float
    resumed: bool = False
    full_ft: dict[str, Any] | None = None
    """With the ``full`` variant: the adapters against full fine-tuning (``sweeps.results.full_ft_comparison``)."""


# --- the plan ---------------------------------------------------------------------------------------
def explore_grid(r0: int, lr0: float) -> tuple[list[int], list[float]]:
    """Ranks r/2, r, 2r, 4r (at least 1) and learning rates lr/3, lr, 3·lr around the start."""
    ranks = sorted({max(1, r0 // 2), r0, 2 * r0, 4 * r0})
    lrs = sorted({float(f"{lr0 / 3:.3g}"), float(f"{lr0:.3g}"), float(f"{lr0 * 3:.3g}")})
    return ranks, lrs


def boundaries(steps: int) -> list[int]:
    """Rung ends: 1/8 and 1/4 of the steps, then all of them (each at least one step past the last)."""
    b1 = max(1, round(steps / 8))
    b2 = max(b1 + 1, round(steps / 4))
    return [b1, b2, steps]


def plan_steps(n_explore: int, budget: int | None, steps: int | None, policy: TunePolicy) -> int:
    """The full step count S: ``steps`` if given (checked against ``budget``), else the largest S whose
    worst-case plan fits ``budget``."""
    from loradial.sweeps.tuning import planned_adapter_steps

    def cost(s: int) -> int:
        return planned_adapter_steps(n_explore, boundaries(s), policy)

    if steps is not None:
        if budget is not None and cost(steps) > budget:
            raise LoradialError(f"--budget {budget} adapter-steps cannot pay for --steps {steps}: the search plans "
                                f"{cost(steps)} ({n_explore} exploration configs)",
                                f"raise --budget to {cost(steps)} or lower --steps")
        return steps
    if budget is None:
        raise LoradialError("no compute budget", "pass --budget N (adapter-steps) or --steps S")
    if cost(8) > budget:
        raise LoradialError(f"--budget {budget} is too small: the smallest search ({n_explore} configs, 8 steps) "
                            f"needs {cost(8)} adapter-steps", f"raise --budget to at least {cost(8)}")
    lo, hi = 8, max(8, budget)
    while lo < hi:  # cost is non-decreasing in s
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return lo


def _split(data: str, eval_data: str | None, eval_fraction: float, seed: int, out: Path) -> tuple[str, str]:
    """Train and eval files: the given ones, or a seeded record-level split of ``data`` written to out/data/
    (the rank check evaluates on the same held-out records the search ranked by)."""
    from loradial.data import load_records

    if eval_data:
        return str(Path(data).expanduser().resolve()), str(Path(eval_data).expanduser().resolve())
    if not 0.0 < eval_fraction < 1.0:
        raise LoradialError(f"--eval-fraction must be in (0, 1) without --eval-data, got {eval_fraction}",
                            "tune ranks configs by eval loss: e.g. --eval-fraction 0.1, or pass --eval-data")
    records = load_records(data)
    n_eval = max(1, round(len(records) * eval_fraction))
    if len(records) - n_eval < 1:
        raise LoradialError(f"{data} has {len(records)} records: too few to hold {eval_fraction:.0%} out",
                            "pass --eval-data, or more data")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    import json

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train.jsonl", False), ("eval.jsonl", True)):
        atomic_write_text(d / name, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for i, r in enumerate(records) if (i in held) == keep))
    return str(d / "train.jsonl"), str(d / "eval.jsonl")


# --- the verb ---------------------------------------------------------------------------------------
def tune(
    model: str | None = None,
    data: str | None = None,
    *,
    out: str | Path,
    budget: int | None = None,
    steps: int | None = None,
    time: float | None = None,
    metric: str = "eval_loss",
    max_new_tokens: int = MAX_NEW_TOKENS,
    eval_data: str | None = None,
    eval_fraction: float = 0.1,
    task: str = "standard",
    targets: str = "all-linear",
    rank: int | None = None,
    lr: float | None = None,
    batch_size: int = DEFAULT.batch_size,
    max_len: int = DEFAULT.max_len,
    grad_accum: int = DEFAULT.grad_accum,
    dropout: float = DEFAULT.dropout,
    packing: bool = DEFAULT.packing,
    gradient_checkpointing: bool = DEFAULT.gradient_checkpointing,
    dtype: str = DEFAULT.dtype,
    load_in_4bit: bool = DEFAULT.load_in_4bit,
    seed: int = DEFAULT.seed,
    eval_every: int | None = None,
    devices: Sequence[str] | None = None,
    gpu_memory: float | None = None,
    memory_fraction: float = SweepSettings.model_fields["memory_fraction"].default,
    trust_remote_code: bool = DEFAULT.trust_remote_code,
    rank_check: bool = True,
    variants: Sequence[str] = ("lora", "rslora"),
    full_lrs: Sequence[float] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TuneResult:
    """Find the best rank / alpha / learning rate / scaling on ``data`` within ``budget`` adapter-steps.

    ``rank`` / ``lr`` override recommend's start; ``steps`` fixes the full step count (else the
    budget does). ``time`` (seconds of wall clock) stands in for ``budget``: a short calibration run of
    the exploration grid measures adapter-steps per second (model load and eval included, so it errs
    low), and the budget is that rate × the time left × ``TIME_SAFETY``. ``resume=True`` continues the
    tune in ``out`` (every other argument is ignored). ``variants`` are the scalings explored (lora, rslora,
    dora); adding ``full`` trains full fine-tuning beside the search as the reference (one config per
    learning rate of ``full_lrs``, default: the explored learning rates / 10; to the full step count, outside the
    adapter-step budget), and the result compares every adapter with it (``full_ft``)."""
    from loradial.sweeps.state import claim_new_dir

    t0 = _time.time()
    out = Path(out)
    say = _sayer(progress)
    if resume:
        return _resume(out, devices, progress, t0, say)
    _check_inputs(out, model, data, eval_data, budget, time)
    sweep_kw = dict(batch_size=batch_size, max_len=max_len, eval_every=eval_every, gpu_memory=gpu_memory,
                    memory_fraction=memory_fraction,
                    dtype=dtype, seed=seed, gradient_checkpointing=gradient_checkpointing, grad_accum=grad_accum,
                    dropout=dropout, packing=packing, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code,
                    metric=metric, max_new_tokens=max_new_tokens)
    with claim_new_dir(out, "tune") as td:  # locked from here: a concurrent tune into `out` exits 2
        plan = _plan(out, str(model), data, eval_data, eval_fraction, task, targets, rank, lr, budget, steps, time,
                     rank_check, devices, sweep_kw, t0, say, variants, full_lrs)
        atomic_write_json(out / PLAN_FILE, plan)
    try:
        res = _search(out, plan, resume=False, devices=devices, progress=progress)
        return _finish(out, plan, res, t0, resumed=False, rank_check=rank_check, say=say)
    except BaseException:
        if not (out / "search" / "sweep.yaml").exists():  # the search never started: leave nothing behind
            for name in (PLAN_FILE, ".lock"):
                (out / name).unlink(missing_ok=True)
            for name in ("data", "search"):
                shutil.rmtree(out / name, ignore_errors=True)
            td.unlock()
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        td.unlock()


def _check_inputs(out: Path, model, data, eval_data, budget, time) -> None:
    if model is None or data is None:
        raise LoradialError("model and data are required", "pass --model DIR and --data FILE (or --resume DIR)")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise LoradialError(f"--budget must be a positive integer (adapter-steps), got {budget!r}", "e.g. --budget 2000")
    if time is not None and budget is not None:
        raise LoradialError("give --time or --budget, not both", "--time SECONDS derives the budget by calibration")
    if time is not None and not (isinstance(time, (int, float)) and math.isfinite(time) and time > 0):
        raise LoradialError(f"--time must be a positive number of seconds, got {time!r}", "e.g. --time 3600")
    if (out / PLAN_FILE).exists():
        raise LoradialError(f"{out} already holds a tune", f"continue it with `loradial tune --resume {out}`, or choose a new --out")
    check_out_not_overlapping(out, [("base model", model), ("training data", data), ("eval data", eval_data)])


def _resume(out: Path, devices, progress: bool, t0: float, say) -> TuneResult:
    from loradial.sweeps.state import SweepDir

    if not (out / PLAN_FILE).is_file():
        raise LoradialError(f"{out} holds no tune", "pass the --out directory of an earlier `loradial tune`")
    td = SweepDir(out)
    td.lock(starting="tune")
    try:
        plan = read_json(out / PLAN_FILE, "tune plan")
        say("resuming the search")
        res = _search(out, plan, resume=True, devices=devices, progress=progress)
        return _finish(out, plan, res, t0, resumed=True, rank_check=plan.get("rank_check", True), say=say)
    finally:
        td.unlock()


def _plan(out: Path, model: str, data: str, eval_data, eval_fraction: float, task: str, targets: str, rank, lr,
          budget, steps, time, rank_check: bool, devices, sweep_kw: dict[str, Any], t0: float, say,
          variants: Sequence[str] = ("lora", "rslora"), full_lrs: Sequence[float] | None = None) -> dict[str, Any]:
    """Everything the search needs, decided before it starts: the start, the grid, the data split, the base
    model's eval loss, the step count (from the budget, or from the time by calibration). Files it made
    are removed again if it fails."""
    from loradial.sweeps.tuning import planned_adapter_steps

    start = _start(model, data, task, rank, lr, sweep_kw["max_len"])
    ranks, lrs = explore_grid(start["r"], start["learning_rate"])
    full = "full" in variants
    variants = [v for v in variants if v != "full"]
    if not variants:
        raise LoradialError("tune needs an adapter variant besides full", "use e.g. --variants lora,rslora,full")
    n_explore = len(ranks) * len(lrs) * len(variants)
    n_steps = plan_steps(n_explore, budget, steps, TunePolicy()) if time is None else None
    calibration = None
    try:
        train_file, eval_file = _split(data, eval_data, eval_fraction, sweep_kw["seed"], out)
        base_loss = _base_eval_loss(model, eval_file, sweep_kw["max_len"], 2 * sweep_kw["batch_size"],
                                    sweep_kw["trust_remote_code"])
        if time is not None:
            calibration = _calibrate(out, model, train_file, eval_file, ranks, lrs, targets, devices, sweep_kw)
            budget = int(calibration["adapter_steps_per_s"] * (time - (_time.time() - t0)) * TIME_SAFETY)
            calibration["budget"] = budget
            say(f"calibration: {calibration['adapter_steps_per_s']:.2f} adapter-steps/s over "
                f"{calibration['seconds']:.0f} s -> a budget of {budget:,} adapter-steps for {time:g} s")
            n_steps = plan_steps(n_explore, budget, steps, TunePolicy())
    except BaseException:
        shutil.rmtree(out / "data", ignore_errors=True)
        shutil.rmtree(out / "calibration", ignore_errors=True)
        raise
    policy = TunePolicy(base_eval_loss=base_loss)
    bounds = boundaries(n_steps)
    planned = planned_adapter_steps(n_explore, bounds, policy)
    say(f"start: r={start['r']}, lr={start['learning_rate']:g} ({start['source']}); explore {n_explore} configs "
        f"(ranks {ranks} x lr {lrs} x lora/rslora) to step {bounds[0]}, refine to {bounds[1]}, "
        f"continue the best {policy.finalists} to {n_steps}: at most {planned:,} adapter-steps")
    return {"model": model, "train": train_file, "eval": eval_file, "start": start, "ranks": ranks, "lrs": lrs,
            "variants": list(variants), "full": full, "full_lrs": list(full_lrs) if full_lrs else None, "targets": targets, "steps": n_steps, "boundaries": bounds,
            "budget": budget if budget is not None else planned, "planned_adapter_steps": planned,
            "policy": policy.model_dump(), "rank_check": rank_check, "max_len": sweep_kw["max_len"],
            "eval_batch_size": 2 * sweep_kw["batch_size"], "trust_remote_code": sweep_kw["trust_remote_code"],
            "sweep": sweep_kw, "time": time, "calibration": calibration}


def _search(out: Path, plan: dict[str, Any], *, resume: bool, devices, progress: bool):
    """The search: one sweep directory with the tune policy at its rung ends (out/search)."""
    from loradial.sweeps.api import sweep

    if resume:
        return sweep(out=out / "search", resume=True, devices=devices, progress=progress)
    bounds, n_steps = plan["boundaries"], plan["steps"]
    return sweep(plan["model"], plan["train"], out=out / "search", ranks=plan["ranks"], alphas="ratio:1",
                 variants=plan["variants"] + (["full"] if plan.get("full") else []), full_lrs=plan.get("full_lrs"),
                 targets=[plan["targets"]], lrs=plan["lrs"], steps=n_steps,
                 eval_data=plan["eval"], eval_fraction=0.0, halving=True, halving_at=[b / n_steps for b in bounds[:-1]],
                 devices=devices, tune=TunePolicy(**plan["policy"]), progress=progress, **plan["sweep"])


CALIBRATION_STEPS = 3
TIME_SAFETY = 0.8
"""Share of the measured rate a --time budget plans with (the rank check and reporting come on top)."""


def _calibrate(out: Path, model: str, train_file: str, eval_file: str, ranks: list[int], lrs: list[float],
               targets: str, devices, sweep_kw: dict[str, Any]) -> dict[str, Any]:
    """Adapter-steps per second of the exploration grid on this machine: the whole grid trained for a few
    steps in a scratch sweep (model load and one eval included, so the rate errs low), then removed."""
    from loradial.sweeps.api import sweep

    t0 = _time.time()
    sweep(model, train_file, out=out / "calibration", ranks=ranks, alphas="ratio:1", variants=["lora", "rslora"],
          targets=[targets], lrs=lrs, steps=CALIBRATION_STEPS, eval_data=eval_file, eval_fraction=0.0,
          devices=devices, **sweep_kw)
    seconds = _time.time() - t0
    shutil.rmtree(out / "calibration", ignore_errors=True)
    n = len(ranks) * len(lrs) * 2
    return {"steps": CALIBRATION_STEPS, "configs": n, "seconds": round(seconds, 2),
            "adapter_steps_per_s": n * CALIBRATION_STEPS / seconds}


def _base_eval_loss(model: str, eval_file: str, max_len: int, batch_size: int, trust_remote_code: bool) -> float:
    """The base model's eval loss on the eval records (one pass): a config that ends a rung above it diverged."""
    from loradial.adapters.evaluate import open_eval_session

    return float(open_eval_session(model, eval_file, max_len=max_len, batch_size=batch_size,
                                   trust_remote_code=trust_remote_code).evaluate()[0])


def _sayer(progress: bool):
    if not progress:
        return lambda text: None
    from loradial.console import console

    return lambda text: console.print(f"[bold]tune[/] {text}", soft_wrap=True, highlight=False)


def _start(model: str, data: str, task: str, rank: int | None, lr: float | None, max_len: int) -> dict[str, Any]:
    """recommend's start (rank, learning rate for the model's size), or the user's override."""
    from loradial.advice.recommendation import recommend
    from loradial.data import load_records

    rec = recommend(str(model), task, examples=len(load_records(data)), seq_len=max_len)
    r = rank if rank is not None else rec.r
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise LoradialError(f"--rank must be a positive integer, got {r!r}", "e.g. --rank 16")
    learning_rate = lr if lr is not None else rec.learning_rate
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0 and math.isfinite(learning_rate)):
        raise LoradialError(f"--lr must be a positive number, got {learning_rate!r}", "e.g. --lr 1e-3")
    source = "recommend" if rank is None and lr is None else "given"
    return {"r": r, "learning_rate": float(learning_rate), "source": source, "recommend": {
        "r": rec.r, "learning_rate": rec.learning_rate, "reasons": {k: rec.reasons.get(k) for k in ("r", "learning_rate")
                                                                      if k in rec.reasons}}}


# --- after the search -------------------------------------------------------------------------------
def _finish(out: Path, plan: dict[str, Any], res, t0: float, *, resumed: bool, rank_check: bool, say) -> TuneResult:
    from loradial.advice.export import FORMATS, export_sweep

    configs = [c for c in res.configs if c.get("variant") != "full"]  # the full variant is the reference
    by_name = {c["name"]: c for c in configs}
    if res.best is None:
        raise LoradialError("no config reached a finite eval loss: every one diverged",
                            "lower --lr (or the start's) by 10x and tune again")
    best = by_name[res.best]
    best_dir = out / "best"
    if not best_dir.is_dir():
        _copy_dir(Path(res.out) / "adapters" / res.best, best_dir)
    used = sum(int(c.get("steps") or 0) for c in configs)
    ranks = sorted({c["r"] for c in configs})
    lrs = sorted({c["learning_rate"] for c in configs})
    grid = len(ranks) * len(lrs) * len(plan["variants"]) * plan["steps"]
    say(f"best: {res.best} (eval loss {best.get('best_eval_loss'):.4f}); {used:,} adapter-steps, "
        f"{100 * used / grid:.0f} % of the {len(ranks)}x{len(lrs)}x{len(plan['variants'])} grid at {plan['steps']} steps")
    check = _rank_check(out, plan, best, best_dir, say) if rank_check else None
    exports = {}
    for fmt in FORMATS:
        path = out / "exports" / f"{fmt}.{'json' if fmt in ('peft', 'unsloth') else 'yaml'}"
        if not path.exists():
            export_sweep(res.out, fmt, out=path)
        exports[fmt] = str(path)
    decisions = res.decisions or []
    stages = _stages(plan, configs, decisions)
    base = (check or {}).get("base_eval_loss") or plan["policy"].get("base_eval_loss")
    result = TuneResult(
        out=str(out), best_adapter=str(best_dir),
        best_config={k: best.get(k) for k in ("name", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules",
                                              "learning_rate", "trainable_params", "steps", "exact_match")},
        best_eval_loss=best.get("best_eval_loss"), base_eval_loss=base, adapter_steps_used=used,
        adapter_steps_budget=int(plan["budget"]), adapter_steps_grid=grid, steps=int(plan["steps"]),
        start=plan["start"], stages=stages, decisions=decisions, configs=res.configs, rank_check=check,
        exports=exports, report=None, why=_why(best, configs, decisions, check),
        wall_seconds=round(_time.time() - t0, 2), resumed=resumed, full_ft=getattr(res, "full_ft", None),
    )
    atomic_write_json(out / "tune.json", result.to_dict())
    try:
        from loradial.reports.api import report

        result.report = report(out).path
        atomic_write_json(out / "tune.json", result.to_dict())
    except ImportError:  # the report extra (jinja2) is not installed
        pass
    return result


def _copy_dir(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dest)


def _rank_check(out: Path, plan: dict[str, Any], best: dict[str, Any], best_dir: Path, say) -> dict[str, Any]:
    """The winner's truncation curve; the smallest rank keeping ≥ RETAIN of the eval gain, resized and measured."""
    from loradial.adapters.analysis import analyze
    from loradial.adapters.evaluate import alpha_sweep
    from loradial.adapters.surgery import resize

    d = out / "rank-check"
    if (d / "rank_check.json").is_file():
        return read_json(d / "rank_check.json", "rank check")
    r = int(best["r"])
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k < r} | {r})
    kw = dict(max_len=plan["max_len"], batch_size=plan["eval_batch_size"], trust_remote_code=plan["trust_remote_code"])
    an = analyze(str(best_dir), model=plan["model"], data=plan["eval"], ranks=ks, retain=RETAIN, **kw)
    analysis = an.to_dict()
    atomic_write_json(d / "analysis.json", analysis)
    curve = analysis.get("truncation_curve") or []
    full = next((p for p in curve if p["k"] == r), None)
    base = next((p["eval_loss"] for p in curve if p["k"] == 0), None)
    smaller = [p for p in curve if 0 < p["k"] < r and (p.get("retained") or 0) >= RETAIN]
    check: dict[str, Any] = {"r": r, "retain": RETAIN, "base_eval_loss": base,
                             "eval_loss_at_r": full["eval_loss"] if full else None, "curve": curve, "smaller": None}
    if smaller:
        k = min(p["k"] for p in smaller)
        path = d / f"r{k}"
        if not path.is_dir():
            resize(str(best_dir), out=str(path), rank=k)
        measured = alpha_sweep(str(path), plan["model"], plan["eval"], scales=[1.0], **kw).losses[0]
        check["smaller"] = {"r": k, "adapter": str(path), "eval_loss": measured,
                            "retained": next(p["retained"] for p in smaller if p["k"] == k)}
        say(f"rank check: r={k} keeps {check['smaller']['retained']:.1%} of the eval gain of r={r} "
            f"(eval loss {measured:.4f}): {path}")
    else:
        say(f"rank check: no rank below {r} keeps {RETAIN:.0%} of the eval gain")
    atomic_write_json(d / "rank_check.json", check)
    return check


def _stages(plan: dict[str, Any], configs: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    b1, b2, s = plan["boundaries"]
    added = {d["config"] for d in decisions if d["action"] == "added"}
    explore = [c["name"] for c in configs if c["name"] not in added]

    def at(rung: int, action: str) -> list[str]:
        return [d["config"] for d in decisions if d["rung"] == rung and d["action"] == action]

    return [
        {"stage": "start", "r": plan["start"]["r"], "learning_rate": plan["start"]["learning_rate"],
         "source": plan["start"]["source"]},
        {"stage": "explore", "configs": explore, "steps": [0, b1], "ranks": plan["ranks"], "lrs": plan["lrs"],
         "variants": plan["variants"], "stopped": at(1, "stopped"), "kept": at(1, "kept")},
        {"stage": "refine", "configs": sorted(added), "steps": [0, b2], "stopped": at(2, "stopped"), "kept": at(2, "kept")},
        {"stage": "continue", "configs": at(2, "kept"), "steps": [b2, s], "from": "their checkpoints at step %d" % b2},
    ]


def _why(best: dict[str, Any], configs: list[dict[str, Any]], decisions: list[dict[str, Any]],
         check: dict[str, Any] | None) -> list[str]:
    finished = [c for c in configs if c.get("best_eval_loss") is not None and c is not best
                and c.get("stopped_at") is None]
    lines = [f"lowest eval loss: {best['best_eval_loss']:.4f} after {best.get('steps')} steps"]
    if best.get("exact_match") is not None:
        lines[0] = f"highest exact match: {best['exact_match']:.1%} (eval loss {best['best_eval_loss']:.4f}) after {best.get('steps')} steps"
    for c in finished:
        em = f", exact match {c['exact_match']:.1%}" if c.get("exact_match") is not None else ""
        lines.append(f"beat {c['name']} ({c['best_eval_loss']:.4f}{em}) trained to the same step")
    n_stop = sum(1 for d in decisions if d["action"] == "stopped")
    if n_stop:
        lines.append(f"{n_stop} configs were stopped early (unstable or behind at a rung; see decisions)")
    if check and check.get("smaller"):
        s = check["smaller"]
        lines.append(f"rank {s['r']} keeps {s['retained']:.1%} of its eval gain: {s['adapter']} "
                     f"(eval loss {s['eval_loss']:.4f}) is the smaller choice")
    elif check:
        lines.append(f"no smaller rank keeps {RETAIN:.0%} of the eval gain: r={best['r']} is needed")
    return lines
