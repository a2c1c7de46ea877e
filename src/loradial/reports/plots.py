"""The report's figures, built from the normalized data of :mod:`loradial.report.load`.

Each builder returns :class:`Figure` objects (an inline SVG chart, an HTML legend and a caption);
the template lays them out. Colors are CSS variables (``--c0`` ... ``--c7``: the Okabe–Ito
colorblind-safe palette, adjusted per light/dark theme) so the charts follow the page's theme.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from loradial.reports.load import AnalysisData, PlanData, SweepData, first, num
from loradial.reports.svg import Frame, Mark, Series, fmt_num, heatmap, line_chart, log_thin, stacked_bars, thin

#: categorical colors in the order ranks / variants / module types take them
PALETTE = [f"var(--c{i})" for i in range(8)]
DASHES = [None, "6 4", "2 3", "10 3 2 3"]
MEMORY_KEYS = ["frozen_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits", "overhead"]


@dataclass
class Figure:
    key: str
    title: str
    svg: str
    caption: str = ""
    legend: list[dict[str, Any]] = field(default_factory=list)  # {label, color, dash, marker}
    wide: bool = False
    sub: str = ""


def fmt_bytes(b: float | None) -> str:
    if b is None or not math.isfinite(b):
        return "–"
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(b) >= div:
            return f"{b / div:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_loss(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4f}"


def fmt_lr(v: float | None) -> str:
    return "–" if v is None else fmt_num(v, 2)


def ema(points: list[tuple[float, float | None]]) -> list[tuple[float, float | None]]:
    """Bias-corrected exponential moving average over a window of max(5, n/30) points (beta = 1 - 1/window)."""
    n = len(points)
    beta = min(0.98, 1 - 1 / max(5.0, n / 30)) if n else 0.0
    out, avg, wsum = [], 0.0, 0.0
    for x, y in points:
        if y is None:
            out.append((x, None))
            continue
        avg, wsum = beta * avg + (1 - beta) * y, beta * wsum + (1 - beta)
        out.append((x, avg / wsum))
    return out


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(q * (len(s) - 1) + 0.5)))]


# ---------------------------------------------------------------- sweep


def _sweep_configs(sw: SweepData) -> list[dict[str, Any]]:
    """results.json configs, plus configs that only appear in metrics.jsonl (rank parsed from the name)."""
    configs = [dict(c) for c in sw.configs]
    known = {c["name"] for c in configs}
    for name in sw.curves:
        if name not in known:
            m = re.search(r"(?:^|[-_])r(\d+)(?=$|[-_])", name)
            variant = "dora" if "dora" in name else "rslora" if "rslora" in name else "lora"
            configs.append({"name": name, "r": int(m.group(1)) if m else None, "lora_alpha": None,
                            "variant": variant, "learning_rate": None, "targets": None})
    return configs


def rank_colors(configs: list[dict[str, Any]]) -> dict[Any, str]:
    ranks = sorted({c["r"] for c in configs if c["r"] is not None})
    colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(ranks)}
    colors[None] = "var(--muted)"
    return colors


def _alpha_rule(c: dict[str, Any], by_ratio: bool) -> str:
    a, r = c.get("lora_alpha"), c.get("r")
    if a is None or r is None:
        return ""
    return f"α = {a / r:g}·r" if by_ratio else f"α = {a:g}"


def loss_curve_figures(sw: SweepData) -> list[Figure]:
    """Small multiples: one panel per (variant, alpha rule), one color per rank, train and eval."""
    everything = _sweep_configs(sw)
    configs = [c for c in everything if c["name"] in sw.curves]
    if not configs:
        return []
    colors = rank_colors(everything)
    n_ratio = len({(c["variant"], _alpha_rule(c, True)) for c in configs})
    n_fixed = len({(c["variant"], _alpha_rule(c, False)) for c in configs})
    by_ratio = n_ratio <= n_fixed
    by_targets = len({c.get("targets") for c in configs}) > 1
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in configs:
        parts = (c["variant"], _alpha_rule(c, by_ratio), (c.get("targets") or "?") if by_targets else "")
        groups[" · ".join(x for x in parts if x)].append(c)

    smoothed = {c["name"]: thin(ema(sw.curves[c["name"]]["train"])) for c in configs}
    train_vals = [y for pts in smoothed.values() for _, y in pts if y is not None]
    eval_vals = [y for c in configs for _, y in sw.curves[c["name"]]["eval"] if y is not None]
    all_vals = train_vals + eval_vals
    if not all_vals:
        return []
    lo = min(all_vals)
    hi = max(quantile(train_vals, 0.85) if train_vals else lo, quantile(eval_vals, 0.97) if eval_vals else lo)
    ydom = (lo - 0.06 * (hi - lo or 1), hi + 0.04 * (hi - lo or 1))
    steps = [x for c in configs for part in ("train", "eval") for x, _ in sw.curves[c["name"]][part]]
    xdom = (min(steps), max(steps)) if steps else (0, 1)

    def group_best(items: list[dict[str, Any]]) -> float:
        vals = [c.get("best_eval_loss") for c in items if c.get("best_eval_loss") is not None]
        return min(vals) if vals else math.inf

    figs = []
    for label, items in sorted(groups.items(), key=lambda kv: (group_best(kv[1]), kv[0])):
        series = []
        for c in sorted(items, key=lambda c: (c["r"] or 0, c.get("learning_rate") or 0, c["name"])):
            same = sorted({x.get("learning_rate") or 0 for x in items if x["r"] == c["r"]})
            dash = DASHES[same.index(c.get("learning_rate") or 0) % len(DASHES)] if len(same) > 1 else None
            color = colors.get(c["r"], "var(--muted)")
            star = " ★" if c["name"] == sw.best else ""
            tr = smoothed[c["name"]]
            ev = thin(sw.curves[c["name"]]["eval"])
            if tr:
                series.append(Series(f"{c['name']} train", tr, color, 1.4, dash, opacity=0.55,
                                     tip=f"{c['name']}{star}: train loss (smoothed)"))
            if ev:
                series.append(Series(f"{c['name']} eval", ev, color, 2.4, dash, markers=len(ev) <= 40,
                                     tip=f"{c['name']}{star}: eval loss", fmt_y=fmt_loss, fmt_x=lambda s: f"step {s:g}"))
        svg = line_chart(series, title=f"Loss curves: {label or 'all configs'}", xlabel="step", ylabel="loss",
                         xdomain=xdom, ydomain=ydom, frame=Frame(width=400, height=270, left=48, bottom=42))
        gb = group_best(items)
        figs.append(Figure("loss", label or "all configs", svg, sub=f"best eval {fmt_loss(gb)}" if math.isfinite(gb) else ""))
    return figs


def eval_vs_rank_figure(sw: SweepData) -> Figure | None:
    configs = [c for c in sw.configs if c["r"] is not None]
    metric, what = "best_eval_loss", "best eval loss"
    if not any(c[metric] is not None for c in configs):
        metric, what = "final_train_loss", "final train loss (no eval data)"
    configs = [c for c in configs if c[metric] is not None]
    if not configs:
        return None
    order = {"lora": 0, "rslora": 1, "dora": 2}
    variants = sorted({c["variant"] for c in configs}, key=lambda v: (order.get(v, 9), v))
    series, legend = [], []
    for i, v in enumerate(variants):
        color = PALETTE[i % len(PALETTE)]
        items = [c for c in configs if c["variant"] == v]
        best_at: dict[int, dict[str, Any]] = {}
        for c in items:
            if c["r"] not in best_at or c[metric] < best_at[c["r"]][metric]:
                best_at[c["r"]] = c
        pts = sorted((r, c[metric]) for r, c in best_at.items())
        tips = [f"{best_at[r]['name']}: {fmt_loss(y)}" for r, y in pts]
        series.append(Series(v, pts, color, 2.5, markers=True, fmt_y=fmt_loss, tip=f"{v}: best at each rank", tips=tips))
        others = [(c["r"], c[metric]) for c in items if best_at[c["r"]] is not c]
        if others:
            series.append(Series(f"{v} (other α / lr)", others, color, 0, markers=True, opacity=0.35,
                                 fmt_y=fmt_loss, fmt_x=lambda r: f"r={r:g}"))
        legend.append({"label": v, "color": color, "marker": True})
    marks = []
    if sw.base_eval_loss is not None and metric == "best_eval_loss":
        marks.append(Mark(sw.base_eval_loss, f"base model {fmt_loss(sw.base_eval_loss)}", "y"))
        legend.append({"label": f"base model (no adapter): {fmt_loss(sw.base_eval_loss)}", "color": "var(--muted)",
                       "dash": "4 4", "note": True})
    best = next((c for c in configs if c["name"] == sw.best), None)
    if best is not None:
        series.append(Series(f"best: {best['name']}", [(best["r"], best[metric])], "var(--best)", 0, markers=True,
                             fmt_y=fmt_loss, fmt_x=lambda r: f"r={r:g}", marker_size=7.5, ring=True))
        legend.append({"label": f"best: {best['name']}", "color": "var(--best)", "marker": True, "ring": True, "lw": 0})
    ranks = sorted({c["r"] for c in configs})
    svg = line_chart(series, title=f"{what} against rank", xlabel="rank r (log scale)", ylabel=what,
                     xscale="log2", xdomain=(ranks[0] / 1.4, ranks[-1] * 1.4), marks=marks,
                     frame=Frame(width=560, height=320), fmt_xtick=lambda v: f"{v:g}")
    caption = ("Each line is a variant at its best α and learning rate for that rank; faint dots are the other "
               "configs at the same rank. Lower is better; a curve that keeps falling at the largest rank "
               "says the task could use more.")
    return Figure("eval-vs-rank", f"{what.capitalize()} against rank", svg, caption, legend)


def lr_fit_figure(sw: SweepData) -> Figure | None:
    fit = sw.lr_fit or {}
    exponent, spread = num(fit.get("exponent")), num(fit.get("spread"))
    pts = []
    for p in fit.get("points") or []:
        if isinstance(p, dict):
            r, lr = num(first(p, "r", "rank")), num(first(p, "lr", "learning_rate", "best_lr"))
        elif isinstance(p, (list, tuple)) and len(p) >= 2:
            r, lr = num(p[0]), num(p[1])
        else:
            continue
        if r and lr and r > 0 and lr > 0:
            pts.append((r, lr))
    if exponent is None or len(pts) < 1:
        return None
    pts.sort()
    coef = num(first(fit, "coefficient", "intercept_lr", "lr_at_1"))
    if coef is None:  # least squares for log lr = log C - exponent log r, with the exponent given
        coef = math.exp(statistics.fmean(math.log(lr) + exponent * math.log(r) for r, lr in pts))
    r0, r1 = pts[0][0] / 1.5, pts[-1][0] * 1.5
    grid = [r0 * (r1 / r0) ** (i / 40) for i in range(41)]
    line = Series("fit", [(r, coef * r ** (-exponent)) for r in grid], "var(--c1)", 2, "6 4", tip="fitted lr(r)")
    dots = Series("best lr per rank", pts, "var(--c0)", 0, markers=True, fmt_x=lambda r: f"r={r:g}", fmt_y=fmt_lr)
    spread_txt = f" ± {spread:.2g}" if spread is not None else ""
    svg = line_chart([line, dots], title="Learning rate against rank", xlabel="rank r (log scale)",
                     ylabel="best learning rate (log scale)", xscale="log2", yscale="log10", xdomain=(r0, r1),
                     frame=Frame(width=560, height=320, left=64), fmt_xtick=lambda v: f"{v:g}", fmt_ytick=fmt_lr)
    caption = (f"Dots: the best learning rate found at each rank. Dashed: the fit lr(r) ∝ r^−{exponent:.2f}{spread_txt}; "
               "use it to set the learning rate of a rank that was not swept.")
    legend = [{"label": "best lr per rank", "color": "var(--c0)", "marker": True, "lw": 0},
              {"label": f"fit: exponent {exponent:.2f}{spread_txt}", "color": "var(--c1)", "dash": "6 4"}]
    return Figure("lr-fit", "Learning rate against rank", svg, caption, legend)


# ---------------------------------------------------------------- analysis


_ORDER = ["q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key", "value", "c_attn", "Wqkv", "o_proj", "out_proj",
          "dense", "c_proj", "gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "c_fc", "fc1", "down_proj", "w2", "fc2"]


def type_order(types: list[str]) -> list[str]:
    """Module types in reading order: attention before MLP, then q, k, v, o / gate, up, down; else by name."""
    def key(t: str) -> tuple:
        leaf = t.rsplit(".", 1)[-1]
        attn = any(a in t for a in ("attn", "attention"))
        return (0 if attn else 1, _ORDER.index(leaf) if leaf in _ORDER else len(_ORDER), t)
    return sorted(dict.fromkeys(types), key=key)


def short_types(types: list[str]) -> dict[str, str]:
    """'base_model.model.model.layers.*.self_attn.q_proj' -> 'self_attn.q_proj' when that stays unique."""
    short = {t: t.split("*.", 1)[1] if "*." in t else t for t in types}
    return short if len(set(short.values())) == len(short) else {t: t for t in types}


def cumulative_energy(sv: list[float]) -> list[float]:
    """Retained energy of the best rank-k approximation: Σσ²[:k] / Σσ² for k = 1..len(sv) (Eckart–Young)."""
    sq = [s * s for s in sv]
    total = sum(sq) or 1.0
    out, acc = [], 0.0
    for s in sq:
        acc += s
        out.append(acc / total)
    return out


def spectrum_figures(an: AnalysisData, threshold: float = 0.9) -> list[Figure]:
    mods = [m for m in an.modules if m["sv"]]
    if not mods:
        return []
    types = type_order([m["type"] for m in mods])
    short = short_types(types)
    layers = [m["layer"] for m in mods if m["layer"] is not None]
    lmin, lmax = (min(layers), max(layers)) if layers else (0, 0)
    rec = num(an.recommendation.get("rank"))
    figs = []
    rmax = max(len(m["sv"]) for m in mods)
    for t in types:
        items = sorted((m for m in mods if m["type"] == t), key=lambda m: (m["layer"] is None, m["layer"] or 0))
        series = []
        for m in items:
            depth = 0.5 if m["layer"] is None or lmax == lmin else (m["layer"] - lmin) / (lmax - lmin)
            color = f"color-mix(in oklab, var(--deep) {depth * 100:.0f}%, var(--shallow))"
            e90 = m["energy_rank_90"]
            tip = f"{m['name']}: 90% energy at rank {fmt_num(e90) if e90 is not None else '?'}, effective rank {fmt_num(m['effective_rank'] or float('nan'))}"
            pts = log_thin(list(zip(range(1, len(m["sv"]) + 1), cumulative_energy(m["sv"]))))
            series.append(Series(m["name"], pts, color, 1.3, opacity=0.85, tip=tip))
        curves = [cumulative_energy(m["sv"]) for m in items]
        n = min(len(c) for c in curves)
        med = log_thin([(k + 1, statistics.median(c[k] for c in curves)) for k in range(n)])
        series.append(Series("median", med, "var(--accent)", 3, tip=f"{short[t]}: median over {len(items)} modules",
                             fmt_x=lambda k: f"k={k:g}", fmt_y=lambda v: f"{v:.1%}"))
        marks = [Mark(threshold, f"{threshold:.0%} energy", "y", bottom=True)]
        if rec is not None:
            marks.append(Mark(rec, f"recommended r={rec:g}", "x", "var(--best)", anchor="end" if rec > 1 else "start", bottom=True))
        svg = line_chart(series, title=f"Cumulative energy: {short[t]}", xlabel="rank k (log scale)",
                         ylabel="energy kept by rank k", xscale="log2", xdomain=(1, max(rmax, 2)), ydomain=(0, 1.02),
                         marks=marks, frame=Frame(width=400, height=270, left=48, bottom=42), fmt_xtick=lambda v: f"{v:g}",
                         fmt_ytick=lambda v: f"{v:.0%}")
        e90 = statistics.median([m["energy_rank_90"] for m in items if m["energy_rank_90"] is not None] or [math.nan])
        sub = f"{len(items)} modules · median 90% rank {fmt_num(e90)}" if math.isfinite(e90) else f"{len(items)} modules"
        figs.append(Figure("spectrum", short[t], svg, legend=[], caption=t, sub=sub))
    return figs


def heatmap_figure(an: AnalysisData) -> Figure | None:
    mods = [m for m in an.modules if m["effective_rank"] is not None]
    if not mods:
        return None
    types = type_order([m["type"] for m in mods])
    short = short_types(types)
    layers = sorted({m["layer"] for m in mods if m["layer"] is not None})
    cols = layers + ([None] if any(m["layer"] is None for m in mods) else [])
    cells: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for m in mods:
        cells[(m["type"], m["layer"])].append(m)
    values = [[statistics.fmean(x["effective_rank"] for x in cells[(t, l)]) if cells.get((t, l)) else None for l in cols]
              for t in types]

    def tip(i: int, j: int, v: float) -> str:
        ms = cells[(types[i], cols[j])]
        r = ms[0]["r"]
        e90 = ms[0]["energy_rank_90"]
        layer = f"layer {cols[j]}" if cols[j] is not None else "no layer"
        extra = f", 90% energy rank {fmt_num(e90)}" if e90 is not None and len(ms) == 1 else ""
        return f"{short[types[i]]} · {layer}: effective rank {v:.1f} of r={r}{extra}"

    fmt = (lambda v: f"{v:.0f}") if max(v for row in values for v in row if v is not None) >= 10 else (lambda v: f"{v:.1f}")
    label_w = min(260, 16 + 7 * max(len(s) for s in short.values()))
    svg = heatmap(values, [short[t] for t in types], [str(c) if c is not None else "–" for c in cols],
                  title="Effective rank by layer and module type", xlabel="layer", fmt=fmt, tip=tip, label_width=label_w,
                  vmin=0.0)
    caption = ("Entropy effective rank (Roy & Vetterli, 2007) of each module's ΔW: exp of the entropy of σᵢ/Σσ. "
               "Brighter cells use more of their rank; a bright band says where extra rank helps most.")
    return Figure("heatmap", "Effective rank by layer and module type", svg, caption, wide=True)


def truncation_figure(an: AnalysisData) -> Figure | None:
    pts = [p for p in an.truncation if p["eval_loss"] is not None]
    ks = [p for p in pts if p["_x"] > 0]
    if not ks:
        return None
    base = next((p["eval_loss"] for p in pts if p["_x"] == 0), None)

    def tipf(p: dict[str, Any]) -> str:
        ret = num(p.get("retained"))
        return f"k={p['_x']:g}: eval loss {fmt_loss(p['eval_loss'])}" + (f", keeps {ret:.0%} of the gain" if ret is not None else "")

    uni = Series("uniform rank k", [(p["_x"], p["eval_loss"]) for p in ks], "var(--c0)", 2.5, markers=True,
                 fmt_y=fmt_loss, tips=[tipf(p) for p in ks])
    series, legend = [uni], [{"label": "every module truncated to rank k", "color": "var(--c0)", "marker": True}]
    budget_key = next((k for k in ("budgeted_eval_loss", "eval_loss_pattern", "eval_loss_budget", "budget_eval_loss", "eval_loss_allocated")
                       if any(num(p.get(k)) is not None for p in ks)), None)
    if budget_key:
        series.append(Series("rank_pattern, same parameters", [(p["_x"], num(p.get(budget_key))) for p in ks],
                             "var(--c1)", 2, "6 4", markers=True, fmt_y=fmt_loss))
        legend.append({"label": "per-module rank_pattern, same parameter count", "color": "var(--c1)", "dash": "6 4", "marker": True})
    marks = []
    if base is not None:
        marks.append(Mark(base, f"base model (k=0): {fmt_loss(base)}", "y", in_domain=True, bottom=True))
    if an.rank_data is not None:
        marks.append(Mark(an.rank_data, "", "x", "var(--best)"))
        legend.append({"label": f"recommended from eval data: r={an.rank_data}", "color": "var(--best)", "dash": "4 4", "lw": 1.5})
    if an.rank_spectrum is not None:
        marks.append(Mark(an.rank_spectrum, "", "x", "var(--c5)"))
        legend.append({"label": f"from the spectrum: r={an.rank_spectrum}", "color": "var(--c5)", "dash": "4 4", "lw": 1.5})
    kmax = max(p["_x"] for p in ks)
    svg = line_chart(series, title="Eval loss with the adapter truncated to rank k", xlabel="rank k (log scale)",
                     ylabel="eval loss", xscale="log2", xdomain=(min(p["_x"] for p in ks) / 1.3, kmax * 1.3),
                     marks=marks, frame=Frame(width=560, height=320), fmt_xtick=lambda v: f"{v:g}")
    caption = ("Eval loss of base + adapter with every module cut to its best rank-k approximation (no retraining). "
               "Where the curve flattens, more rank stopped paying; the data-driven recommendation is the smallest k "
               "that keeps most of the adapter's improvement over the base.")
    return Figure("truncation", "Truncation curve", svg, caption, legend)


def scale_figure(an: AnalysisData) -> Figure | None:
    pts = [p for p in an.scale_curve if p["eval_loss"] is not None]
    if len(pts) < 2:
        return None
    best = min(pts, key=lambda p: p["eval_loss"])
    tips = [f"scale {p['_x']:g}: eval loss {fmt_loss(p['eval_loss'])}" + (
        f", token accuracy {num(p.get('token_accuracy')):.1%}" if num(p.get("token_accuracy")) is not None else "") for p in pts]
    s = Series("eval loss", [(p["_x"], p["eval_loss"]) for p in pts], "var(--c2)", 2.5, markers=True, fmt_y=fmt_loss, tips=tips)
    below = best["_x"] < 1
    marks = [Mark(best["_x"], f"best × {best['_x']:g}", "x", "var(--best)", anchor="end" if below else "start")]
    if best["_x"] != 1 and any(p["_x"] == 1 for p in pts):
        marks.append(Mark(1.0, "as trained", "x", anchor="start" if below else "end"))
    svg = line_chart([s], title="Eval loss against adapter scale", xlabel="scale applied to ΔW (0 = base model)",
                     ylabel="eval loss", marks=marks, frame=Frame(width=560, height=320))
    caption = ("Eval loss of base + scale·ΔW, from one model load. A best scale below 1 says the adapter is too strong "
               "(lower lora_alpha, or `loradial rescale --scale`); above 1, too weak.")
    return Figure("scale", "Adapter scale curve", svg, caption, [{"label": "eval loss", "color": "var(--c2)", "marker": True}])


# ---------------------------------------------------------------- plan


def _row_label(row: dict[str, Any]) -> str:
    return f"r={row['rank']} · {row['targets']}" + (" · DoRA" if row.get("use_dora") else "")


def plan_figures(pl: PlanData) -> list[Figure]:
    figs = []
    names = list(dict.fromkeys(m["name"] for row in pl.rows for m in row["modules"] if m["params"] is not None))
    if names:
        short = short_types(names)
        keys = [(n, short[n], PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]
        bars = [(_row_label(r), {m["name"]: m["params"] for m in r["modules"] if m["params"] is not None}) for r in pl.rows]
        svg = stacked_bars(bars, keys, title="Trainable parameters by module type", xlabel="trainable parameters",
                           label_width=_label_w(pl))
        figs.append(Figure("params", "Trainable parameters", svg,
                           "Each bar is one (rank, targets) row; segments are module types. Parameters grow linearly "
                           "with r: each targeted linear layer adds r·(d_in + d_out).",
                           [{"label": n, "color": c, "box": True} for _, n, c in keys], wide=True))
    mem_rows = [r for r in pl.rows if any(v for v in r["memory_breakdown"].values())]
    if mem_rows:
        extra = [k for r in mem_rows for k in r["memory_breakdown"] if k not in MEMORY_KEYS]
        order = MEMORY_KEYS + list(dict.fromkeys(extra))
        keys = [(k, k.replace("_", " "), PALETTE[i % len(PALETTE)]) for i, k in enumerate(order)
                if any(r["memory_breakdown"].get(k) for r in mem_rows)]
        bars = [(_row_label(r), r["memory_breakdown"]) for r in mem_rows]
        top = max(sum(v for v in r["memory_breakdown"].values() if v) for r in mem_rows)
        unit = (2**30, "GiB") if top >= 2**30 else (2**20, "MiB")
        svg = stacked_bars(bars, keys, title="Estimated peak training memory", xlabel=f"memory ({unit[1]})",
                           fmt=fmt_bytes, label_width=_label_w(pl), unit=unit)
        figs.append(Figure("memory", "Estimated peak training memory", svg,
                           "Estimated peak GPU memory of one training step, by component. The frozen base usually "
                           "dominates; rank moves only the adapter, gradient and optimizer slices.",
                           [{"label": n, "color": c, "box": True} for _, n, c in keys], wide=True))
    return figs


def _label_w(pl: PlanData) -> int:
    return min(320, 20 + 7 * max(len(_row_label(r)) for r in pl.rows))
