"""The decisions ``tune`` takes at the end of each rung of its sweep: stop, keep, refine.

A pure function of what the sweep measured (eval losses at the rung step, the curve verdicts of
``diagnose`` over the metrics so far) and the configs: the same inputs give the same decisions, so a
sweep killed mid-decision and resumed decides the same again (``runner.decide`` relies on it).

Rung 1 (the exploration grid, trained at once to the first boundary):
  1. a config whose curve is ``unstable`` or ``diverged`` (diagnose's rules: non-finite loss, loss
     above where it started with exploding gradient norms, spikes), or whose eval loss is above the base
     model's (measured once before the search), stops, whatever its rank among the others;
  2. the best ``keep_fraction`` of the rest (at least ``finalists``) go on, ranked by eval loss at the
     same step (ties: fewer trainable parameters, then name); the others stop as "behind";
  3. refinements around the best two configs join, trained from step 0 to the same boundary: the best's
     learning rate half-way (geometric mean) to each explored neighbour and its rank one doubling either
     side, then the runner-up's learning rate half-way to each neighbour (early rankings are noisy: on
     the CPU validation tasks the grid's winner was twice a refined learning rate at the runner-up's
     rank, benchmarks/tune/RESULTS.md).
Later rungs: the best ``finalists`` go on to the full budget, continued from their checkpoints.

Budget (``planned_adapter_steps``): with E exploration configs, boundaries b1 < b2 < … < S, K kept,
R refinements and F finalists, the search trains E·b1 + K·(b2 − b1) + R·b2 + F·(S − b2) adapter-steps
(one optimizer step of one config is one adapter-step), the worst case whatever the decisions are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from loradial.settings import SweepConfigEntry, TunePolicy
from loradial.sweeps.halving import rank_key

STOP_VERDICTS = ("unstable", "diverged")


@dataclasses.dataclass(frozen=True)
class NewConfig:
    """A refinement to add: the grid point (PEFT vocabulary) and why."""

    r: int
    lora_alpha: float
    variant: str
    targets: str
    learning_rate: float
    seed: int
    reason: str


@dataclasses.dataclass
class Decision:
    """What one rung end decides: per-config records (kept / stopped, with the numbers) and additions."""

    records: list[dict[str, Any]]
    add: list[NewConfig]

    @property
    def stopped(self) -> list[str]:
        return [r["config"] for r in self.records if r["action"] == "stopped"]


def _n_kept(n: int, policy: TunePolicy) -> int:
    return min(n, max(policy.finalists, math.ceil(n * policy.keep_fraction)))


def planned_adapter_steps(n_explore: int, boundaries: Sequence[int], policy: TunePolicy) -> int:
    """The most adapter-steps the search can train (see the module docstring)."""
    total, alive, prev = 0, n_explore, 0
    for i, b in enumerate(boundaries):
        total += alive * (b - prev)
        if i == 0:
            alive = _n_kept(n_explore, policy)
            if policy.refine and len(boundaries) > 1:
                total += policy.max_refine * boundaries[1]  # refinements catch up from step 0
                alive += policy.max_refine
        else:
            alive = min(alive, policy.finalists)
        prev = b
    return total


def _geo_mid(a: float, b: float) -> float:
    return float(f"{math.sqrt(a * b):.3g}")


def refinements(best: SweepConfigEntry, configs: Sequence[SweepConfigEntry], limit: int,
                healthy: Sequence[str] | None = None, ranks: bool = True) -> list[NewConfig]:
    """Around ``best``: lr half-way (geometric) to each explored neighbour whose configs did not diverge,
    and (``ranks``) rank one doubling either side."""
    same = [c for c in configs if c.variant == best.variant and c.targets == best.targets]
    ok = set(healthy) if healthy is not None else {c.name for c in same}
    lrs = sorted({c.learning_rate for c in same if c.name in ok} | {best.learning_rate})
    i = lrs.index(best.learning_rate)
    taken = {(c.r, c.learning_rate) for c in same}
    alpha_ratio = best.lora_alpha / best.r
    out: list[NewConfig] = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(lrs):
            lr = _geo_mid(best.learning_rate, lrs[j])
            if (best.r, lr) not in taken:
                out.append(NewConfig(best.r, best.lora_alpha, best.variant, best.targets, lr, best.seed,
                                     f"learning rate half-way from {best.learning_rate:g} to its neighbour {lrs[j]:g}"))
    for r in (best.r // 2, best.r * 2) if ranks else ():
        if r >= 1 and (r, best.learning_rate) not in taken:
            out.append(NewConfig(r, alpha_ratio * r, best.variant, best.targets, best.learning_rate, best.seed,
                                 f"rank one doubling {'below' if r < best.r else 'above'} the best ({best.r})"))
    return out[:limit]


def decide(rung: int, policy: TunePolicy, configs: Sequence[SweepConfigEntry], alive: Sequence[str],
           eval_loss: Mapping[str, float | None], verdict: Mapping[str, str], step: int) -> Decision:
    """The decisions at the end of rung ``rung`` (0-based) for the configs ``alive`` at ``step``."""
    by_name = {c.name: c for c in configs}
    records: list[dict[str, Any]] = []

    def record(name: str, action: str, reason: str) -> None:
        records.append({"rung": rung + 1, "step": step, "config": name, "action": action, "reason": reason,
                        "eval_loss": eval_loss.get(name), "verdict": verdict.get(name)})

    healthy = []
    base = policy.base_eval_loss
    for n in alive:
        v, loss = verdict.get(n), eval_loss.get(n)
        if v in STOP_VERDICTS or loss is None or not math.isfinite(loss):
            record(n, "stopped", f"curve is {v if v in STOP_VERDICTS else 'diverged (eval loss not finite)'}: "
                                 "stopped early, whatever its eval loss")
        elif base is not None and loss > base:
            record(n, "stopped", f"curve is diverged: eval loss {loss:.4f} is above the base model's {base:.4f}")
        else:
            healthy.append(n)
    order = sorted(healthy, key=lambda n: rank_key(eval_loss[n], by_name[n].trainable_params, n))
    keep = _n_kept(len(order), policy) if rung == 0 else min(len(order), policy.finalists)
    best = eval_loss[order[0]] if order else None
    for i, n in enumerate(order):
        if i < keep:
            record(n, "kept", f"#{i + 1} of {len(order)} by eval loss at step {step}")
        else:
            gap = 100 * (eval_loss[n] - best) / best if best else 0.0
            record(n, "stopped", f"behind: #{i + 1} of {len(order)}, eval loss {gap:+.1f} % vs the best "
                                 f"(only the best {keep} go on)")
    add: list[NewConfig] = []
    if rung == 0 and policy.refine and order:
        add = refinements(by_name[order[0]], configs, policy.max_refine, healthy)
        if len(order) > 1:
            seen = {(a.r, a.variant, a.learning_rate) for a in add}
            more = refinements(by_name[order[1]], configs, policy.max_refine, healthy, ranks=False)
            add += [a for a in more if (a.r, a.variant, a.learning_rate) not in seen][:policy.max_refine - len(add)]
    return Decision(records, add)
