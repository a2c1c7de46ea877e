"""From a sweep's metrics lines to results.json: per-config numbers, a verdict, the best config.

Everything here is a pure function of the metrics lines (``{step, adapter, loss, tokens, ...}`` for
training, ``{step, adapter, eval_loss}`` for evaluation) and the sweep's bookkeeping, so a resumed
sweep, whose metrics.jsonl is cut back to its last checkpoint and replayed, reports the same numbers
as an uninterrupted one.

- final_train_loss: mean training loss over the last 10 % of the config's steps (at least 1 step),
  which smooths the per-batch noise of a single step.
- gap: final_train_loss - final_eval_loss (train minus eval, as the issue names it: negative when
  the eval loss sits above the training loss).
- verdict: ``loradial.diagnose``'s curve verdict (underfitting / overfitting / healthy / unstable /
  too_few_steps / memorizing), or ``diverged`` when the loss turned non-finite;
- best: lowest best_eval_loss; ties go to fewer trainable parameters, then to the name. Configs
  stopped by halving compete with the eval loss they reached.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from loradial.result import Result
from loradial.sweeps.halving import rank_key


@dataclasses.dataclass
class SweepResult(Result):
    """What results.json holds: one entry per config, the best one, and the LR-rank fit."""

    out: str
    best: str | None
    configs: list[dict[str, Any]]
    lr_rank_fit: dict[str, Any] | None
    n_packs: int
    """Packs the full grid needed (the first rung's; later rungs re-pack the survivors)."""
    packs: list[list[list[str]]]
    """Per rung, the packs (lists of config names) that trained in it."""
    settings: dict[str, Any]
    devices: list[str]
    wall_seconds: float
    resumed: bool = False
    decisions: list[dict[str, Any]] | None = None
    """``tune``'s rung-end decisions (kept / stopped / added, with the numbers); None for a plain sweep."""
    full_ft: dict[str, Any] | None = None
    """With the ``full`` variant: the adapters against full fine-tuning (``full_ft_comparison``); else None."""



TRAIN_WINDOW = 0.10


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def curves(lines: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """Group metrics lines by adapter: {name: {"train": [(step, loss, tokens)], "eval": [(step, eval_loss)]}}.

    A line with ``eval_loss`` is an eval point; a line with ``loss`` a training step. The last line
    for a (adapter, step) wins, so a replayed step never counts twice.
    """
    train: dict[str, dict[int, tuple]] = {}
    evals: dict[str, dict[int, float]] = {}
    for line in lines:
        name = line.get("adapter")
        if name is None or "step" not in line:
            continue
        step = int(line["step"])
        if "eval_loss" in line:
            evals.setdefault(name, {})[step] = _num(line["eval_loss"])
        elif "loss" in line:
            train.setdefault(name, {})[step] = (step, _num(line["loss"]), int(line.get("tokens") or 0))
    out: dict[str, dict[str, list]] = {}
    for name in set(train) | set(evals):
        out[name] = {
            "train": [train.get(name, {})[s] for s in sorted(train.get(name, {}))],
            "eval": sorted(evals.get(name, {}).items()),
        }
    return out


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def verdicts(lines: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per adapter, the curve verdict of ``loradial.diagnose`` (its robust, documented rules over the
    same metrics lines ``loradial diagnose`` reads), with ``diverged`` for a run whose train or eval
    loss turned non-finite (the engine freezes such an adapter)."""
    from loradial.advice.diagnosis import judge
    from loradial.advice.logs import curves_from_records

    broke = {r.get("adapter") for r in lines if r.get("diverged") or any(
        k in r and not _finite(r[k]) for k in ("loss", "eval_loss"))}
    out = {}
    for name, curve in curves_from_records([dict(r) for r in lines]).items():
        if name in broke or not all(map(_finite, curve.loss)):
            out[name] = "diverged"
        elif not curve.loss:
            out[name] = "not trained"
        elif getattr(curve, "diverged_at", None) is not None:
            out[name] = "diverged"
        else:
            flags = judge(curve)[0]
            out[name] = flags[0] if flags else "healthy"
    return out


def _window_mean(losses: Sequence[float]) -> float:
    k = max(1, math.ceil(TRAIN_WINDOW * len(losses)))
    tail = [x for x in losses[-k:] if _finite(x)]
    return sum(tail) / len(tail) if len(tail) == len(losses[-k:]) else float("nan")


def config_result(
    config: Mapping[str, Any],
    curve: Mapping[str, list] | None,
    *,
    trainable_params: int,
    steps: int,
    stopped_at: int | None,
    pack: int | None,
    train_seconds: float,
    peak_memory_bytes: int | None,
    verdict: str | None = None,
) -> dict[str, Any]:
    """The results.json entry of one config (see the module doc for each number); ``verdict`` comes from
    ``verdicts`` (None: the config has no metrics lines, 'not trained')."""
    train = list((curve or {}).get("train", []))
    evals = list((curve or {}).get("eval", []))
    final_train = _window_mean([t[1] for t in train]) if train else None
    finite_evals = [e for _, e in evals if _finite(e)]
    best_eval = min(finite_evals) if finite_evals else None
    final_eval = evals[-1][1] if evals else None
    gap = final_train - final_eval if _finite(final_train) and _finite(final_eval) else None
    tokens = sum(t[2] for t in train)
    return {
        **config,
        "trainable_params": int(trainable_params),
        "final_train_loss": final_train,
        "best_eval_loss": best_eval,
        "final_eval_loss": final_eval,
        "gap": gap,
        "verdict": verdict or "not trained",
        "tokens": tokens,
        "tokens_per_s": tokens / train_seconds if train_seconds > 0 else None,
        "peak_memory_bytes": peak_memory_bytes,
        "steps": steps,
        "pack": pack,
        "stopped_at": stopped_at,
    }


def pick_best(results: Sequence[Mapping[str, Any]], metric: str = "eval_loss") -> str | None:
    """Name of the config with the lowest best eval loss (ties: fewer params, then name); None if none.
    With ``metric='exact_match'``: the highest exact match among the configs that have one (ties: the
    eval-loss order)."""
    if metric == "exact_match":
        scored = [r for r in results if _finite(r.get("exact_match")) and _finite(r.get("best_eval_loss"))]
        if scored:
            return min(scored, key=lambda r: (-r["exact_match"], *rank_key(r["best_eval_loss"], r["trainable_params"],
                                                                           r["name"])))["name"]
    scored = [r for r in results if _finite(r.get("best_eval_loss"))]
    if not scored:
        return None
    return min(scored, key=lambda r: rank_key(r["best_eval_loss"], r["trainable_params"], r["name"]))["name"]


def sort_for_table(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Results in the order the terminal table shows them: by eval loss (as ``pick_best``)."""
    return sorted(results, key=lambda r: rank_key(r.get("best_eval_loss"), r.get("trainable_params", 0), r["name"]))


def lr_rank_fit(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """grid.fit_lr_rank_exponent over configs that ran to the end, when several LRs per rank were swept.

    Points with the same (r, lr) (other alphas, variants, seeds) are reduced to their best eval loss.
    """
    from loradial.sweeps.grid import fit_lr_rank_exponent

    best: dict[tuple[int, float], float] = {}
    for r in results:
        if r.get("stopped_at") is not None or not _finite(r.get("best_eval_loss")):
            continue
        key = (int(r["r"]), float(r["learning_rate"]))
        best[key] = min(best.get(key, math.inf), float(r["best_eval_loss"]))
    per_rank: dict[int, int] = {}
    for r, _ in best:
        per_rank[r] = per_rank.get(r, 0) + 1
    if sum(1 for n in per_rank.values() if n >= 2) < 2:
        return None
    return fit_lr_rank_exponent([(r, lr, loss) for (r, lr), loss in sorted(best.items())])


#: An adapter "matches" full fine-tuning when its eval loss is within this fraction of full FT's.
FULL_FT_TOLERANCE = 0.01


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if _finite(a) and _finite(b) and b > 0 else None


def full_ft_comparison(configs: list[dict[str, Any]], by_name: Mapping[str, Mapping[str, list]],
                       base_eval_loss: float | None = None) -> dict[str, Any] | None:
    """The adapters against full fine-tuning (the sweep's ``full`` configs; None when there are none).

    gain = base eval loss − eval loss (best eval losses); an adapter's ``full_ft_gain_fraction`` =
    its gain / full FT's gain (1: as good as full FT; None when full FT gained nothing or a loss is
    missing), set on every adapter config. The base eval loss is ``base_eval_loss`` (``tune`` measures it)
    or the full config's eval at step 0 (the untouched model). Per rank, the best config of that rank with
    its gain fraction and its trainable parameters, measured peak memory and training seconds relative to
    full FT (memory and time are those of the adapter's pack, which it shared with its pack mates);
    ``smallest_rank_within_1pct``: the smallest rank whose eval loss is within 1 % of full FT's, or None.
    Full FT's reference is its best learning rate (lowest best eval loss)."""
    fulls = [c for c in configs if c.get("variant") == "full"]
    if not fulls:
        return None
    scored = [c for c in fulls if _finite(c.get("best_eval_loss"))]
    ref = min(scored, key=lambda c: (c["best_eval_loss"], c["name"])) if scored else fulls[0]
    base = base_eval_loss
    if base is None:
        for c in fulls:
            ev = (by_name.get(c["name"]) or {}).get("eval") or []
            if ev and ev[0][0] == 0 and _finite(ev[0][1]):
                base = ev[0][1]
                break
    loss = ref.get("best_eval_loss")
    gain = base - loss if _finite(base) and _finite(loss) else None
    adapters = [c for c in configs if c.get("variant") != "full"]
    for c in adapters:
        own = base - c["best_eval_loss"] if _finite(base) and _finite(c.get("best_eval_loss")) else None
        c["full_ft_gain_fraction"] = own / gain if own is not None and gain is not None and gain > 0 else None
    per_rank = []
    for r in sorted({int(c["r"]) for c in adapters}):
        same = [c for c in adapters if int(c["r"]) == r]
        best = min(same, key=lambda c: rank_key(c.get("best_eval_loss"), c.get("trainable_params", 0), c["name"]))
        per_rank.append({
            "r": r, "config": best["name"], "eval_loss": best.get("best_eval_loss"),
            "full_ft_gain_fraction": best.get("full_ft_gain_fraction"),
            "trainable_params": best.get("trainable_params"),
            "params_vs_full": _ratio(best.get("trainable_params"), ref.get("trainable_params")),
            "peak_memory_bytes": best.get("peak_memory_bytes"),
            "memory_vs_full": _ratio(best.get("peak_memory_bytes"), ref.get("peak_memory_bytes")),
            "train_seconds": best.get("train_seconds"),
            "time_vs_full": _ratio(best.get("train_seconds"), ref.get("train_seconds")),
        })
    within = [p["r"] for p in per_rank if _finite(loss) and _finite(p["eval_loss"])
              and p["eval_loss"] <= loss + FULL_FT_TOLERANCE * abs(loss)]
    return {"config": ref["name"], "learning_rate": ref.get("learning_rate"), "base_eval_loss": base,
            "eval_loss": loss, "gain": gain, "trainable_params": ref.get("trainable_params"),
            "peak_memory_bytes": ref.get("peak_memory_bytes"), "train_seconds": ref.get("train_seconds"),
            "per_rank": per_rank, "smallest_rank_within_1pct": min(within) if within else None}
