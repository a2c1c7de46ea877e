"""``loradial diagnose LOG``: read a training log and say underfitting / overfitting / memorizing /
unstable / too_few_steps / healthy, with the numbers behind it and the next config from the ladder.

Statistics are robust and relative, so one formula fits logs of any loss scale and noise level:

* smoothing: a centred rolling median over ``max(3, 5% of the points)`` (odd) train-loss points;
* levels: the start and end level are the medians of the first and last 10% of points (>= 3);
* slope: least squares on the smoothed loss over the last 25% of points; ``tail_change`` is that
  slope times the window's span, divided by the end level (-0.08 = "fell 8% over the last quarter");
* spikes: points more than 50% above the local rolling median, more than 6 robust sigmas
  (1.4826 x MAD of the residuals) above it, and 50% above the median level of the points just
  before and just after them (so a fast early drop is not a spike);
* gap: eval loss minus the smoothed train loss interpolated at the eval step.

Verdicts, in the order they are tested (thresholds are fields of ``Thresholds``):

1. ``unstable``       a NaN/inf loss or grad norm
2. ``too_few_steps``  fewer than ``min_points`` train-loss points: nothing can be judged
3. ``unstable``       divergence: the smoothed train loss ends >= 25% above its minimum; or the train
                      loss ends >= 5% above its start level; or it ends above where it started (the
                      first logged loss, or the start level) or above the base model's eval loss
                      (``base_eval_loss``, or an eval logged at step 0, where a LoRA is still the
                      base model) while the grad norm peaked at >= 10x its median anywhere in the run
                      (the issue-13 run at lr 0.3: loss 6.6 -> 7.2, grad norm 173 vs median 0.12).
                      Also unstable: >= 3 spikes, >= 2 grad-norm explosions (> 10x the local median)
                      or a grad norm whose last-quarter median is >= 5x its first-half median
4. ``overfitting``    eval loss ends >= 3% above its minimum while train loss kept falling, or eval
                      stalled (< 3% better than at its middle evaluation) while the gap is >= 15% of
                      eval loss and grew by >= 10% of eval loss from its smallest value
5. ``memorizing``     end train loss below 0.2 (nats)
6. ``too_few_steps``  train loss still falling: >= 8% over the last quarter with the raw tail slope at
                      least 1 standard error below zero (steep: the point estimate decides unless it
                      is noise), or >= 3% there while that quarter holds >= 20% of the run's total
                      drop (not flattening) and the slope is >= 2 standard errors below zero; and
                      eval, if logged, at its minimum and >= 2% lower than a quarter of the run
                      before the end. Or, whatever the noisy train slope says: eval at its minimum
                      and >= 5% lower than a quarter of the run before the end, train still falling
7. ``underfitting``   train loss fell less than 10% from start to end, and the run is not unstable
                      (a diverged run is never called underfitting: raising its LR is the wrong move)
8. ``healthy``        none of the above

"High" is relative: without a reference loss for the user's task, a plateau is only called
underfitting when the loss barely moved. Override thresholds with ``Thresholds(...)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from loradial.advice import rules as _rules
from loradial.errors import LoradialError
from loradial.advice.logs import Curve, read_log
from loradial.result import Result


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_points: int = 8
    smooth_frac: float = 0.05
    edge_frac: float = 0.10
    tail_frac: float = 0.25
    memorize_loss: float = 0.2
    underfit_rel_drop: float = 0.10
    still_falling: float = 0.08
    tail_share: float = 0.20
    tail_floor: float = 0.03
    tail_t: float = 2.0
    tail_t_steep: float = 1.0
    eval_still_falling: float = 0.02
    eval_steep: float = 0.05
    overfit_rise: float = 0.03
    gap_rel: float = 0.15
    gap_widen: float = 0.10
    spike_rel: float = 0.5
    spike_sigmas: float = 6.0
    spikes_unstable: int = 3
    diverge_rel: float = 0.25
    rise_rel: float = 0.05
    grad_explode: float = 10.0
    grad_explosions_unstable: int = 2
    grad_growth: float = 5.0


# --- robust statistics ---------------------------------------------------------------------------
def rolling_median(x: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median; the window shrinks at the edges."""
    half = window // 2
    return np.array([np.median(x[max(0, i - half): i + half + 1]) for i in range(len(x))])


def _edge(n: int, frac: float) -> int:
    return max(3, int(math.ceil(frac * n)))


def _stepv(x: float) -> int | float:
    """A step as an int when it is one (steps are logged as numbers, sometimes fractional)."""
    return int(x) if float(x).is_integer() else float(x)


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


@dataclasses.dataclass
class CurveStats:
    n: int
    window: int
    smooth: np.ndarray
    start: float
    end: float
    min: float
    min_step: float
    rel_drop: float
    tail_slope: float
    tail_change: float
    tail_t: float
    spikes: list[float]


def _slope_t(x: np.ndarray, y: np.ndarray) -> float:
    """t statistic of the least-squares slope of raw y on x (slope / its standard error)."""
    n = len(x)
    sxx = float(np.sum((x - x.mean()) ** 2))
    if n < 4 or sxx == 0:
        return 0.0
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    se = math.sqrt(float(np.sum(resid ** 2)) / (n - 2) / sxx)
    return float(b / se) if se > 0 else (math.copysign(math.inf, b) if b else 0.0)


def curve_stats(steps: np.ndarray, loss: np.ndarray, th: Thresholds) -> CurveStats:
    n = len(loss)
    window = max(3, int(th.smooth_frac * n) | 1)
    smooth = rolling_median(loss, window)
    k = _edge(n, th.edge_frac)
    start, end = float(np.median(loss[:k])), float(np.median(loss[-k:]))
    i_min = int(np.argmin(smooth))
    t = _edge(n, th.tail_frac)
    ts, ys = steps[-t:], smooth[-t:]
    slope = float(np.polyfit(ts, ys, 1)[0]) if len(set(ts.tolist())) > 1 else 0.0
    span = float(ts[-1] - ts[0])
    tail_t = _slope_t(ts, loss[-t:])
    resid = loss - smooth
    sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    # a spike stands above the level both before and after it (a fast early drop is not a spike)
    half = max(1, window // 2)
    around = np.array([max(np.median(loss[max(0, i - half):i]), np.median(loss[i + 1:i + 1 + half]))
                       if 0 < i < n - 1 else np.inf for i in range(n)])
    spike_mask = (resid > th.spike_rel * np.abs(smooth)) & (resid > th.spike_sigmas * sigma) \
        & (loss > (1 + th.spike_rel) * around)
    return CurveStats(
        n=n, window=window, smooth=smooth, start=start, end=end, min=float(smooth[i_min]),
        min_step=float(steps[i_min]), rel_drop=(start - end) / abs(start) if start else 0.0,
        tail_slope=slope, tail_change=slope * span / abs(end) if end else 0.0, tail_t=tail_t,
        spikes=[_stepv(s) for s in steps[spike_mask]],
    )


def grad_findings(steps: np.ndarray, grad: list[float | None], th: Thresholds) -> dict[str, Any]:
    pairs = [(s, g) for s, g in zip(steps.tolist(), grad) if g is not None and math.isfinite(g)]
    if len(pairs) < 8:
        return {}
    s = np.array([p[0] for p in pairs])
    g = np.array([p[1] for p in pairs])
    local = rolling_median(g, max(5, int(0.05 * len(g)) | 1))
    skip = _edge(len(g), 0.05)  # the first steps' large norms are normal
    exploded = [_stepv(x) for x in s[skip:][g[skip:] > th.grad_explode * local[skip:]]]
    first_half = float(np.median(g[: len(g) // 2]))
    last_quarter = float(np.median(g[-_edge(len(g), 0.25):]))
    median = float(np.median(g))
    return {
        "grad_norm_median": _round(median), "grad_norm_max": _round(float(np.max(g))),
        "grad_norm_max_step": _stepv(float(s[int(np.argmax(g))])),
        "grad_peak_ratio": _round(float(np.max(g)) / median) if median > 0 else None,
        "grad_explosions": exploded[:20],
        "grad_growth": _round(last_quarter / first_half) if first_half > 0 else None,
    }


# --- verdicts ------------------------------------------------------------------------------------
@dataclasses.dataclass
class AdapterDiagnosis:
    adapter: str
    verdict: str
    flags: list[str]
    """Every verdict whose test fired, most urgent first (the first is ``verdict``)."""
    summary: list[str]
    """The evidence as sentences."""
    evidence: dict[str, Any]
    next: list[dict[str, Any]]


def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    return float(np.interp(x, xs, ys))


def base_eval_from(curve: Curve) -> float | None:
    """The base model's eval loss when the log has it: an eval at step 0 (before the first update a
    LoRA adapter's B is zero, so the model is the base model)."""
    for step, value in zip(curve.eval_steps, curve.eval_loss):
        if step <= 0 and math.isfinite(value):
            return float(value)
    return None


def judge(curve: Curve, th: Thresholds = Thresholds(), base_eval_loss: float | None = None,
          ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(flags, summary sentences, evidence) for one adapter's curves. ``base_eval_loss``: the base
    model's eval loss, when known (else read from an eval at step 0, see ``base_eval_from``)."""
    steps = np.asarray(curve.steps, dtype=float)
    loss = np.asarray(curve.loss, dtype=float)
    ev: dict[str, Any] = {"train_points": int(len(loss)), "eval_points": len(curve.eval_loss)}
    if len(loss):
        ev.update(first_step=_stepv(steps[0]), last_step=_stepv(steps[-1]))
    flags: list[str] = []
    said: list[str] = []

    if curve.diverged_at is not None:
        ev["diverged_step"] = _stepv(curve.diverged_at)
        flags.append("unstable")
        said.append(f"the engine froze this adapter as diverged at step {curve.diverged_at:g} (non-finite loss or gradient)")
    bad = [i for i, v in enumerate(loss) if not math.isfinite(v)]
    bad_g = [i for i, v in enumerate(curve.grad_norm) if v is not None and not math.isfinite(v)]
    bad_e = [i for i, v in enumerate(curve.eval_loss) if not math.isfinite(v)]
    if bad or bad_g or bad_e:
        where = steps[bad[0]] if bad else (steps[bad_g[0]] if bad_g else curve.eval_steps[bad_e[0]])
        what = "loss" if bad else ("grad norm" if bad_g else "eval loss")
        ev["nonfinite_step"] = _stepv(where)
        if "unstable" not in flags:
            flags.append("unstable")
        said.append(f"{what} became NaN/inf at step {where:g}")
        keep = [i for i in range(len(loss)) if math.isfinite(loss[i])]
        steps, loss = steps[keep], loss[keep]
        if bad:
            first_bad = ev["nonfinite_step"]
            keep = steps < first_bad
            steps, loss = steps[keep], loss[keep]
    if len(loss) < th.min_points:
        if not flags:
            flags.append("too_few_steps")
            said.append(f"only {len(loss)} train-loss points (need {th.min_points}) - too short to judge")
        return flags, said, ev

    st = curve_stats(steps, loss, th)
    ev.update(loss_start=_round(st.start), loss_end=_round(st.end), loss_min=_round(st.min),
              loss_min_step=_stepv(st.min_step), rel_drop=_round(st.rel_drop, 3),
              tail_slope=_round(st.tail_slope), tail_change=_round(st.tail_change, 3),
              smoothing_window=st.window, spikes=st.spikes[:20], n_spikes=len(st.spikes))
    grad = grad_findings(np.asarray(curve.steps, dtype=float)[: len(curve.grad_norm)], curve.grad_norm, th) \
        if any(g is not None for g in curve.grad_norm) else {}
    ev.update(grad)
    base = base_eval_loss if base_eval_loss is not None else base_eval_from(curve)
    if base is not None:
        ev["base_eval_loss"] = _round(base)

    # 3. instability
    smooth_end = float(np.median(st.smooth[-_edge(st.n, th.edge_frac):]))
    diverged = st.min > 0 and smooth_end >= st.min * (1 + th.diverge_rel) and st.min_step < steps[-1]
    if diverged:
        said.append(f"train loss diverged: fell to {st.min:.4g} at step {st.min_step:g}, ends at {smooth_end:.4g} "
                    f"(+{(smooth_end / st.min - 1) * 100:.0f}%)")
    # ended worse than it began: never underfitting, whatever the start level's median says
    first = float(loss[0])
    start_ref = min(st.start, first)
    peak = grad.get("grad_peak_ratio")
    exploded = peak is not None and peak >= th.grad_explode
    e_finite = [v for s_, v in zip(curve.eval_steps, curve.eval_loss) if s_ > 0 and math.isfinite(v)]
    e_last = e_finite[-1] if e_finite else None
    worse_than_base = base is not None and (st.end > base or (e_last is not None and e_last > base))
    rose_clearly = st.start > 0 and st.end >= st.start * (1 + th.rise_rel)
    rose = st.end > start_ref
    ended_worse = rose_clearly or ((rose or worse_than_base) and exploded)
    if ended_worse:
        what = []
        if rose or rose_clearly:
            what.append(f"train loss ended above where it started ({start_ref:.4g} -> {st.end:.4g})")
        if worse_than_base:
            worse = [f"train {st.end:.4g}"] if st.end > base else []
            worse += [f"eval {e_last:.4g}"] if e_last is not None and e_last > base else []
            what.append(f"{' and '.join(worse)} above the base model's eval loss {base:.4g}")
        grad_txt = (f", with the grad norm peaking at {grad['grad_norm_max']:g} (step {grad['grad_norm_max_step']:g}), "
                    f"{peak:.0f}x its median {grad['grad_norm_median']:g}" if exploded else "")
        said.insert(0, f"diverged: {'; '.join(what)}{grad_txt} - the LR is too high, not too low")
    if diverged or ended_worse:
        ev["diverged"] = True
    if len(st.spikes) >= th.spikes_unstable:
        said.append(f"{len(st.spikes)} loss spikes (> {th.spike_rel:.0%} above the local median), first at step {st.spikes[0]:g}")
    elif st.spikes:
        said.append(f"{len(st.spikes)} isolated loss spike(s) at step {', '.join(f'{s:g}' for s in st.spikes)} (recovered)")
    explosions = grad.get("grad_explosions") or []
    growth = grad.get("grad_growth")
    if len(explosions) >= th.grad_explosions_unstable:
        said.append(f"{len(explosions)} grad-norm explosions (> {th.grad_explode:g}x the local median), first at step {explosions[0]:g}")
    if growth is not None and growth >= th.grad_growth:
        said.append(f"grad norm grew {growth:g}x from the first half to the last quarter")
    if diverged or ended_worse or len(st.spikes) >= th.spikes_unstable \
            or len(explosions) >= th.grad_explosions_unstable or (growth is not None and growth >= th.grad_growth):
        if "unstable" not in flags:
            flags.append("unstable")

    # 4. overfitting (needs eval)
    e_steps = np.asarray(curve.eval_steps, dtype=float)
    e_loss = np.asarray(curve.eval_loss, dtype=float)
    finite_e = np.isfinite(e_loss)
    e_steps, e_loss = e_steps[finite_e], e_loss[finite_e]
    if len(e_loss) >= 2:
        i_min = int(np.argmin(e_loss))
        e_min, e_min_step, e_end = float(e_loss[i_min]), float(e_steps[i_min]), float(e_loss[-1])
        if len(e_loss) >= 4:  # the last two evaluations, so one noisy eval cannot decide
            e_end = float(np.mean(e_loss[-2:]))
        tr_at = np.array([_interp(s, steps, st.smooth) for s in e_steps])
        gaps = e_loss - tr_at
        gap_end = float(np.mean(gaps[-2:])) if len(gaps) >= 4 else float(gaps[-1])
        gap_at_min = float(gaps[i_min])
        rise = (e_end - e_min) / e_min if e_min > 0 else 0.0
        train_fell = _interp(e_min_step, steps, st.smooth) - st.end
        ev.update(eval_start=_round(float(e_loss[0])), eval_min=_round(e_min), eval_min_step=_stepv(e_min_step),
                  eval_end=_round(e_end), eval_rise=_round(rise, 3), gap_at_eval_min=_round(gap_at_min),
                  gap_min=_round(float(np.min(gaps))), gap_end=_round(gap_end), train_drop_after_eval_min=_round(train_fell))
        # the eval minimum must come after training began: a run whose best eval is the base model's
        # (an eval at step 0) never improved, which is not overfitting
        rising = len(e_loss) >= 3 and rise >= th.overfit_rise and 0 < e_min_step < e_steps[-1] and train_fell > 0
        gap_min = float(np.min(gaps))
        e_mid = float(e_loss[len(e_loss) // 2])
        stalled = (e_mid - e_end) / e_end < th.overfit_rise if e_end > 0 else False
        widening = e_end > 0 and gap_end / e_end >= th.gap_rel and (gap_end - gap_min) / e_end >= th.gap_widen \
            and train_fell > 0 and stalled
        if rising:
            said.append(f"eval loss bottomed out at {e_min:.4g} (step {e_min_step:g}) and rose {rise:.1%} to {e_end:.4g} "
                        f"while train loss fell a further {train_fell:.3g}")
        if widening:
            said.append(f"eval loss stalled near {e_end:.4g} while the train/eval gap widened from {gap_min:.3g} to "
                        f"{gap_end:.3g} ({gap_end / e_end:.0%} of eval loss)")
        if rising or widening:
            flags.append("overfitting")
        ev["eval_still_at_min"] = bool(e_min_step == e_steps[-1] or rise < th.overfit_rise)

    # 5. memorizing
    if st.end < th.memorize_loss:
        flags.append("memorizing")
        said.append(f"train loss ends at {st.end:.3g} (< {th.memorize_loss:g}): the adapter is reproducing its training data")

    # 6. still falling
    eval_ok = ev.get("eval_still_at_min", True)
    drop = st.start - st.end
    tail_share = -st.tail_change * abs(st.end) / drop if drop > 0 else 0.0
    ev.update(tail_share=_round(tail_share, 3), tail_t=_round(st.tail_t, 3))
    falling = (st.tail_change <= -th.still_falling and st.tail_t <= -th.tail_t_steep) \
        or (tail_share >= th.tail_share and st.tail_change <= -th.tail_floor and st.tail_t <= -th.tail_t)
    if len(e_loss) >= 3:  # eval, less noisy than per-step train loss, must agree
        t0 = float(steps[-1] - th.tail_frac * (steps[-1] - steps[0]))
        e_then = _interp(t0, e_steps, e_loss)
        e_tail = (e_loss[-1] - e_then) / e_then if e_then > 0 and e_steps[0] <= t0 else 0.0
        ev["eval_tail_change"] = _round(e_tail, 3)
        # eval, averaged over many tokens, sees a steep fall that noisy per-step train losses blur
        falling = (falling and e_tail <= -th.eval_still_falling) or (e_tail <= -th.eval_steep and st.tail_change < 0)
    if falling and eval_ok:
        flags.append("too_few_steps")
        said.append(f"train loss still falling {-st.tail_change:.1%} over the last quarter of the run "
                    f"({tail_share:.0%} of its total drop; slope {st.tail_slope:.3g}/step)")

    # 7. underfitting
    if st.rel_drop < th.underfit_rel_drop and not falling and "unstable" not in flags:
        flags.append("underfitting")
        said.append(f"train loss barely fell: {st.start:.4g} -> {st.end:.4g} ({st.rel_drop:.1%}); "
                    f"last-quarter change {st.tail_change:+.1%}")
    if not flags:
        flags.append("healthy")
        gap_txt = f", eval {ev['eval_end']:.4g} (gap {ev['gap_end']:.3g})" if "eval_end" in ev else ""
        said.insert(0, f"train loss fell {st.rel_drop:.0%} ({st.start:.4g} -> {st.end:.4g}) and flattened "
                       f"(last-quarter change {st.tail_change:+.1%}){gap_txt}")
    return flags, said, ev


#: leaf-name sets that are every linear layer of common families (PEFT saves 'all-linear' expanded)
_ALL_LINEAR_SETS = (
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},  # Llama, Mistral, Qwen, Gemma
    {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},                              # Phi-3
    {"c_attn", "c_proj", "c_fc"},                                                     # GPT-2
    {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},                   # Falcon, GPT-NeoX
)


def _is_all_linear(targets: Any, base_model: str | None) -> bool:
    """Whether a saved target list is every linear layer: checked on the base model when it resolves
    offline (a local directory or a bundled name), else by the common families' name sets."""
    if isinstance(targets, str):
        return targets.lower() == "all-linear"
    if not isinstance(targets, list) or not targets:
        return False
    if base_model:
        from loradial.models.resolve import bundled_entry, inspect_model

        if Path(base_model).is_dir() or bundled_entry(base_model) is not None:
            try:
                info = inspect_model(base_model)
                leaves = {n.rsplit(".", 1)[-1] for n in info.linear_names}
                return leaves <= set(targets)
            except LoradialError:
                pass
    return any(names <= set(targets) for names in _ALL_LINEAR_SETS)


def _current_config(curve: Curve, config_path: Path | None) -> tuple[dict[str, Any], str | None]:
    config: dict[str, Any] = {}
    adapter_path = None
    if config_path is not None and config_path.is_file():
        try:
            cfg = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise LoradialError(f"adapter config {config_path} is not valid JSON", "pass a PEFT adapter_config.json") from None
        for key in ("r", "lora_alpha", "use_rslora", "use_dora", "lora_dropout", "target_modules"):
            if key in cfg:
                config[key] = cfg[key]
        if cfg.get("base_model_name_or_path"):
            config["base_model"] = cfg["base_model_name_or_path"]
        if _is_all_linear(cfg.get("target_modules"), cfg.get("base_model_name_or_path")):
            config["target_modules"] = "all-linear"
        adapter_path = str(config_path.parent)
    lrs = [x for x in curve.lr if x is not None and math.isfinite(x)]
    if lrs:
        config["learning_rate"] = max(lrs)
    return config, adapter_path


@dataclasses.dataclass
class Diagnosis(Result):
    log: str
    format: str
    adapter: str
    """The adapter the top-level verdict/evidence/next describe: the only one, or a sweep's best."""
    verdict: str
    evidence: dict[str, Any]
    next: list[dict[str, Any]]
    summary: list[str]
    adapters: list[AdapterDiagnosis]
    thresholds: dict[str, Any]


def diagnose(log: str | Path, config: str | Path | None = None, rules_file: str | Path | None = None,
             thresholds: Thresholds | None = None, base_eval_loss: float | None = None) -> Diagnosis:
    """Diagnose a training log (see the module docstring for formats, statistics and thresholds).

    ``config``: a PEFT adapter_config.json describing the run (default: ``adapters/<adapter>/`` next to
    a loradial metrics.jsonl, or the one next to the log), so that ``next`` holds concrete values
    (r, lora_alpha, learning_rate) instead of operations.

    ``base_eval_loss``: the base model's loss on the run's eval data, when known (an eval logged at
    step 0 serves too); a run ending above it with exploding gradients is diverged.
    """
    if base_eval_loss is not None and not (isinstance(base_eval_loss, (int, float)) and not isinstance(base_eval_loss, bool)
                                           and math.isfinite(base_eval_loss) and base_eval_loss > 0):
        raise LoradialError(f"base eval loss must be a positive number, got {base_eval_loss!r}",
                            "the base model's mean loss on the eval data, e.g. 2.31")
    th = thresholds or Thresholds()
    rules = _rules.load_rules(rules_file)
    data = read_log(log)
    run_dir = Path(data.path).parent
    if config is not None and not Path(config).is_file():
        raise LoradialError(f"adapter config not found: {config}", "pass the adapter_config.json of the run")
    results = []
    for name, curve in data.curves.items():
        if not curve.loss:
            continue
        flags, said, ev = judge(curve, th, base_eval_loss)
        if config is not None:
            cfg_path = Path(config)
        elif (run_dir / "adapters" / name / "adapter_config.json").is_file():  # loradial train / sweep
            cfg_path = run_dir / "adapters" / name / "adapter_config.json"
        else:  # HF Trainer checkpoint directories
            cfg_path = run_dir / "adapter_config.json"
        current, adapter_path = _current_config(curve, cfg_path)
        if current:
            ev["config"] = current
        nxt = _rules.ladder_for(flags[0], current, rules, ev, adapter_path)
        results.append(AdapterDiagnosis(name, flags[0], flags, said, ev, nxt))

    def full_model(name: str) -> bool:  # a sweep's full fine-tuning reference: never the best *adapter*
        d = run_dir / "adapters" / name
        return (d / "config.json").is_file() and not (d / "adapter_config.json").is_file()

    def score(d: AdapterDiagnosis) -> tuple[bool, int, float]:
        e = d.evidence
        if e.get("eval_min") is not None:
            return (full_model(d.adapter), 0, float(e["eval_min"]))
        return (full_model(d.adapter), 1, float(e.get("loss_end") if e.get("loss_end") is not None else math.inf))

    best = results[0] if len(results) == 1 else min(results, key=score)
    return Diagnosis(
        log=data.path, format=data.format, adapter=best.adapter, verdict=best.verdict, evidence=best.evidence,
        next=best.next, summary=best.summary, adapters=results, thresholds=dataclasses.asdict(th),
    )
