"""Assemble the report: headline answers, one section per input found, and the HTML (jinja2, autoescaped).

Everything the template prints goes through jinja2's autoescape; the inline SVG charts are marked
safe only after :mod:`loradial.report.svg` has escaped every string inside them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from pathlib import Path
from typing import Any

from loradial.reports.load import AnalysisData, PlanData, SweepData, first, num
from loradial.reports.plots import fmt_bytes, fmt_loss, fmt_lr, eval_vs_rank_figure, heatmap_figure, loss_curve_figures, lr_fit_figure, plan_figures, _sweep_configs, rank_colors, scale_figure, short_types, type_order, spectrum_figures, truncation_figure
from loradial.reports.svg import fmt_num

TEMPLATES = Path(__file__).parent / "templates"


def fmt_int(v: float | None) -> str:
    return "–" if v is None else f"{int(round(v)):,}"


def fmt_params(v: float | None) -> str:
    return "–" if v is None else fmt_num(v, 3) if v >= 1e4 else f"{int(v):,}"


def _scalar(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_scalar(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False, default=str)
    if isinstance(v, float):
        return fmt_num(v, 4)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _clip(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _source(files: list[str]) -> str:
    """'dir/a.json, dir/b.jsonl' -> 'dir/ (a.json, b.jsonl)'."""
    if not files:
        return ""
    parents = {str(Path(f).parent) for f in files}
    if len(parents) > 1:
        return ", ".join(files)
    return f"{parents.pop()}/ ({', '.join(Path(f).name for f in files)})"


def _verdict_class(v: str | None) -> str:
    return {"healthy": "ok", "underfitting": "warn", "overfitting": "warn2", "diverged": "bad"}.get((v or "").lower(), "")


def short_model(name: str | None) -> str | None:
    """A local path's last component ('/x/y/tiny-llama' -> 'tiny-llama'); names and Hub ids unchanged."""
    if name and name.startswith(("/", "./", "../", "~")) and Path(name).name:
        return Path(name).name
    return name


def model_name(sw: SweepData | None, an: AnalysisData | None, pl: PlanData | None) -> str | None:
    if sw and sw.settings:
        m = first(sw.settings, "model", "base_model", "model_name_or_path")
        if m is not None:
            return str(m)
    if pl and pl.model:
        m = first(pl.model, "name", "name_or_path", "hub_id", "model_type")
        if m is not None:
            return str(m)
    if an:
        m = first(an.meta, "base_model", "base", "model")
        if m is None and isinstance(an.meta.get("config"), dict):
            m = an.meta["config"].get("base_model_name_or_path")
        if m is not None:
            return str(m)
    return None


# ---------------------------------------------------------------- sections


def sweep_section(sw: SweepData) -> dict[str, Any]:
    loss = loss_curve_figures(sw)
    single = [f for f in (eval_vs_rank_figure(sw), lr_fit_figure(sw)) if f]
    configs = [{**c, "gap": c["gap"] if c["gap"] is not None else _gap(c)} for c in sw.configs]
    configs = sorted(configs, key=lambda c: (c["best_eval_loss"] is None, c["best_eval_loss"] or 0,
                                                c["final_train_loss"] is None, c["final_train_loss"] or 0))
    cols = [
        ("config", "name", str), ("r", "r", lambda v: str(v)), ("alpha", "lora_alpha", lambda v: fmt_num(v, 4)),
        ("variant", "variant", str), ("targets", "targets", str), ("lr", "learning_rate", fmt_lr), ("seed", "seed", str),
        ("trainable", "trainable_params", fmt_params), ("train loss", "final_train_loss", fmt_loss),
        ("best eval", "best_eval_loss", fmt_loss), ("final eval", "final_eval_loss", fmt_loss),
        ("gap (train − eval)", "gap", lambda v: f"{v:+.3f}"), ("verdict", "verdict", str),
        ("tokens/s", "tokens_per_s", lambda v: fmt_num(v, 3)), ("peak memory", "peak_memory_bytes", fmt_bytes),
    ]
    varying = {k for k in ("seed", "targets") if len({x.get(k) for x in configs}) > 1}
    cols = [c for c in cols if any(x.get(c[1]) is not None for x in configs)
            and (c[1] not in ("seed", "targets") or c[1] in varying)]
    if any(c.get("status") for c in configs) and not any(c[1] == "verdict" for c in cols):
        cols.append(("verdict", "verdict", str))
    numeric = {"r", "lora_alpha", "learning_rate", "seed", "trainable_params", "final_train_loss", "best_eval_loss",
               "final_eval_loss", "gap", "tokens_per_s", "peak_memory_bytes"}
    colors = rank_colors(_sweep_configs(sw))
    rows = []
    for c in configs:
        cells = []
        for head, key, f in cols:
            v = c.get(key)
            cells.append({"text": "–" if v is None else f(v), "num": key in numeric,
                          "badge": _verdict_class(v) if key == "verdict" else None,
                          "note": "pruned" if key == "verdict" and c.get("status") else None,
                          "note_title": str(c["status"]) if key == "verdict" and c.get("status") else None,
                          "swatch": colors.get(c["r"]) if key == "name" else None,
                          "title": f"{v:,}" if key == "trainable_params" and v is not None else None})
        rows.append({"best": c["name"] == sw.best, "cells": cells})
    settings = [(str(k), _clip(_scalar(v))) for k, v in sw.settings.items()
                if v is not None and k not in ("configs", "costs")]
    with_curves = [c for c in _sweep_configs(sw) if c["name"] in sw.curves]
    rank_legend = [{"label": f"r = {r}", "color": colors[r], "box": True} for r in sorted(k for k in colors if k is not None)
                   if any(c["r"] == r for c in with_curves)]
    rank_legend += [{"label": "train (smoothed)", "color": "var(--muted)", "lw": 1.4},
                    {"label": "eval", "color": "var(--muted)", "marker": True}]
    n_curves = len(sw.curves)
    return {
        "id": "sweep", "title": "Sweep", "source": _source(sw.files),
        "loss_figures": loss, "figures": single,
        "table": {"head": [c[0] for c in cols], "num": [c[1] in numeric for c in cols], "rows": rows} if rows else None,
        "settings": settings, "rank_legend": rank_legend if loss else [], "n_configs": max(len(sw.configs), n_curves),
        "full_ft": full_ft_table(sw),
    }


def full_ft_table(sw: SweepData) -> dict[str, Any] | None:
    """Per rank, the best adapter against full fine-tuning (results.json's ``full_ft``): the fraction of
    full FT's eval-loss gain it reaches, and its parameters, measured peak memory and time relative to full FT."""
    f = sw.full_ft
    if not f or not f.get("per_rank"):
        return None
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    rows = [[str(p["r"]), p["config"], fmt_loss(p["eval_loss"]) if p.get("eval_loss") is not None else "–",
             pct(p.get("full_ft_gain_fraction")), fmt_params(p.get("trainable_params")), pct(p.get("params_vs_full")),
             pct(p.get("memory_vs_full")), pct(p.get("time_vs_full"))] for p in f["per_rank"]]
    within = f.get("smallest_rank_within_1pct")
    base, loss = f.get("base_eval_loss"), f.get("eval_loss")
    summary = (f"full fine-tuning ({f['config']}): eval loss {fmt_loss(loss) if loss is not None else '–'}, base "
               f"{fmt_loss(base) if base is not None else '–'}; "
               + (f"the smallest rank within 1 % of its loss: r = {within}." if within is not None
                  else "no rank came within 1 % of its loss."))
    return {"head": ["r", "best config", "eval loss", "of full FT's gain", "trainable", "params vs full",
                     "peak memory vs full", "time vs full"], "rows": rows, "summary": summary}


def _gap(c: dict[str, Any]) -> float | None:
    """results.json's gap: final train loss minus final eval loss (sweep_results.py)."""
    t, e = c["final_train_loss"], c["final_eval_loss"]
    return None if t is None or e is None else t - e


def _median(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def analysis_section(an: AnalysisData) -> dict[str, Any]:
    energy = num(first(an.recommendation, "energy", "threshold")) or num(an.meta.get("energy")) or 0.9
    spectra = spectrum_figures(an, energy if 0 < energy < 1 else 0.9)
    single = [f for f in (truncation_figure(an), scale_figure(an)) if f]
    types = type_order([m["type"] for m in an.modules])
    short = short_types(types)
    by_type = []
    for t in types:
        ms = [m for m in an.modules if m["type"] == t]
        rs = sorted({m["r"] for m in ms if m["r"] is not None})
        by_type.append({
            "type": short[t], "full": t, "count": len(ms), "r": ", ".join(str(r) for r in rs) or "–",
            **{k: _median([m[k] for m in ms]) for k in ("energy_rank_90", "energy_rank_95", "energy_rank_99",
                                                         "stable_rank", "effective_rank")},
        })
    metric_cols = [(k, h) for k, h in (("energy_rank_90", "energy rank 90%"), ("energy_rank_95", "95%"),
                                       ("energy_rank_99", "99%"), ("stable_rank", "stable rank"),
                                       ("effective_rank", "effective rank")) if any(t[k] is not None for t in by_type)]
    pattern = an.recommendation.get("rank_pattern")
    pattern = sorted(pattern.items(), key=lambda kv: str(kv[0])) if isinstance(pattern, dict) else []
    meta = []
    for label, key in (("adapter", "adapter"), ("adapter", "adapter_path"), ("adapter", "path"), ("base model", "base_model"), ("base model", "base")):
        if an.meta.get(key) is not None and label not in {m[0] for m in meta}:
            meta.append((label, str(an.meta[key])))
    cfg = an.meta.get("config")
    if isinstance(cfg, dict):
        parts = [f"{k}={_scalar(cfg[k])}" for k in ("r", "lora_alpha") if cfg.get(k) is not None]
        parts += [k for k in ("use_rslora", "use_dora") if cfg.get(k) is True]
        if cfg.get("target_modules") is not None:
            parts.append(f"target_modules={_scalar(cfg['target_modules'])}")
        if parts:
            meta.append(("config", " · ".join(parts)))
    return {
        "id": "analysis", "title": "Adapter analysis", "source": str(an.path),
        "spectra": spectra, "heatmap": heatmap_figure(an), "figures": single, "by_type": by_type,
        "metric_cols": metric_cols, "pattern": pattern, "meta": meta,
        "energy": energy, "fmt": lambda v: "–" if v is None else fmt_num(v, 3),
        "reason": first(an.recommendation, "reason", "explanation") or first(an.meta, "explanation", "rank_explanation"),
        "rec_lines": _rec_lines(an.recommendation),
    }


def _rec_lines(rec: dict[str, Any]) -> list[str]:
    """One-line readings of analyze's recommendation fields that are present."""
    out = []
    rank, kept = num(rec.get("rank")), num(rec.get("rank_retained_energy"))
    if rank is not None:
        line = f"Global rank r={rank:g}"
        met, energy = num(rec.get("modules_meeting_energy")), num(rec.get("energy"))
        if met is not None and energy is not None:
            line += f": {met:.0%} of the modules keep at least {energy:.0%} of their energy"
        if kept is not None:
            line += f"; {kept:.1%} of the total energy is kept"
        alpha = num(rec.get("alpha"))
        if alpha is not None:
            line += f"; use lora_alpha={fmt_num(alpha, 4)} to keep the trained scale"
        out.append(line + ".")
    pk, pp = num(rec.get("pattern_retained_energy")), num(rec.get("pattern_params"))
    if pk is not None:
        out.append(f"The per-module rank_pattern keeps {pk:.1%} of the energy"
                   + (f" with {fmt_int(pp)} parameters" if pp is not None else "") + " (same budget).")
    return out


def plan_section(pl: PlanData) -> dict[str, Any]:
    rows = []
    for r in pl.rows:
        ab = r["adapter_bytes"]
        if isinstance(ab, dict):
            ab = " · ".join(f"{k} {fmt_bytes(num(v))}" for k, v in ab.items())
        else:
            ab = fmt_bytes(num(ab))
        pct = r["trainable_percent"]
        rows.append([str(r["rank"]), r["targets"] + (" (DoRA)" if r["use_dora"] else ""), fmt_int(r["trainable_params"]),
                     "–" if pct is None else f"{pct:.3g}%", ab, fmt_bytes(r["peak_memory_bytes"])])
    info = [(str(k), _scalar(v)) for k, v in pl.model.items() if isinstance(v, (str, int, float, bool)) and v is not None]
    return {"id": "plan", "title": "Cost plan", "source": str(pl.path), "figures": plan_figures(pl), "rows": rows,
            "info": info[:12]}


# ---------------------------------------------------------------- headline


def headline(sw: SweepData | None, an: AnalysisData | None, pl: PlanData | None) -> list[dict[str, str]]:
    cards = []
    best = next((c for c in sw.configs if c["name"] == sw.best), None) if sw else None
    if best:
        parts = [f"r={best['r']}" if best["r"] is not None else None,
                 f"α={fmt_num(best['lora_alpha'], 4)}" if best["lora_alpha"] is not None else None,
                 best["variant"], f"lr {fmt_lr(best['learning_rate'])}" if best["learning_rate"] is not None else None]
        loss = best["best_eval_loss"]
        cards.append({"kicker": "Best config", "value": best["name"],
                      "sub": " · ".join(p for p in parts if p),
                      "foot": (f"eval loss {fmt_loss(loss)}" if loss is not None else "lowest loss")
                      + (f" · {fmt_params(best['trainable_params'])} trainable" if best["trainable_params"] else "")
                      + (f" · {best['verdict']}" if best["verdict"] else "")})
    if an:
        rank = num(an.recommendation.get("rank"))
        if an.rank_data is not None:
            sub = "smallest rank that keeps the adapter's gain on eval data"
            foot = f"the spectrum alone says r={an.rank_spectrum if an.rank_spectrum is not None else fmt_num(rank or math.nan)}"
            cards.append({"kicker": "Recommended rank", "value": f"r = {an.rank_data}", "sub": sub, "foot": foot})
        elif rank is not None:
            cards.append({"kicker": "Recommended rank", "value": f"r = {rank:g}",
                          "sub": "from the singular spectrum of the trained adapter",
                          "foot": "a per-module rank_pattern is listed below" if an.recommendation.get("rank_pattern") else ""})
        pts = [p for p in an.scale_curve if p["eval_loss"] is not None]
        if len(pts) >= 2:
            b = min(pts, key=lambda p: p["eval_loss"])
            at1 = next((p["eval_loss"] for p in pts if p["_x"] == 1), None)
            cards.append({"kicker": "Best adapter scale", "value": f"× {b['_x']:g}",
                          "sub": f"eval loss {fmt_loss(b['eval_loss'])}",
                          "foot": f"{fmt_loss(at1)} as trained (× 1)" if at1 is not None and b["_x"] != 1 else "the adapter as trained is best"})
    if pl:
        row = None
        if best:
            same = [r for r in pl.rows if str(r["rank"]) == str(best["r"])]
            targets = _scalar(first(sw.settings, "targets", "target_modules")) if sw and sw.settings else None
            row = next((r for r in same if targets and r["targets"] == targets), same[0] if same else None)
        if row is None and an is not None:
            want = an.rank_data if an.rank_data is not None else num(an.recommendation.get("rank"))
            row = next((r for r in pl.rows if want is not None and str(r["rank"]) == str(int(want))), None)
        row = row or pl.rows[0]
        cards.append({"kicker": "Cost", "value": fmt_bytes(row["peak_memory_bytes"]) if row["peak_memory_bytes"] else fmt_params(row["trainable_params"]),
                      "sub": ("estimated peak training memory" if row["peak_memory_bytes"] else "trainable parameters")
                      + f" at r={row['rank']} on {row['targets']}",
                      "foot": f"{fmt_int(row['trainable_params'])} trainable parameters"
                      + (f" ({row['trainable_percent']:.3g}% of the model)" if row["trainable_percent"] is not None else "")})
    return cards


def tune_section(tune: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """'Why this config': tune's answer, its reasons, the stages and every rung-end decision (tune.json)."""
    best = tune.get("best_config")
    if not isinstance(best, dict):
        return None
    used, grid = tune.get("adapter_steps_used"), tune.get("adapter_steps_grid")
    answer = (f"r = {best.get('r')}, lora_alpha = {_scalar(best.get('lora_alpha'))}, "
              f"{'rsLoRA' if best.get('use_rslora') else 'LoRA'}, learning rate {_scalar(best.get('learning_rate'))}"
              f" — eval loss {_scalar(tune.get('best_eval_loss'))}"
              + (f" (base model {_scalar(tune.get('base_eval_loss'))})" if tune.get("base_eval_loss") is not None else ""))
    compute = (f"{fmt_int(used)} adapter-steps, {100 * used / grid:.0f} % of the exhaustive grid ({fmt_int(grid)})"
               if isinstance(used, int) and isinstance(grid, int) and grid else None)
    stages = [[st.get("stage", ""), str(len(st.get("configs") or [])),
               "–".join(str(x) for x in st.get("steps") or []),
               f"{len(st.get('kept') or [])} kept, {len(st.get('stopped') or [])} stopped" if "kept" in st else
               str(st.get("from") or st.get("source") or "")] for st in tune.get("stages") or []]
    decisions = [[str(d.get("rung")), str(d.get("config")), str(d.get("action")), _scalar(d.get("eval_loss")),
                  _clip(str(d.get("reason") or ""))] for d in tune.get("decisions") or []]
    return {"id": "tune", "title": "Why this config", "source": path.name, "answer": answer, "compute": compute,
            "why": [str(w) for w in tune.get("why") or []], "adapter": tune.get("best_adapter"),
            "stages": stages, "decisions": decisions}


def render_html(root: Path, sw: SweepData | None, an: AnalysisData | None, pl: PlanData | None, notes: list[str],
                tune: dict[str, Any] | None = None) -> tuple[str, list[str], int]:
    """Return (html, rendered section ids, number of charts)."""
    import jinja2

    from loradial import __version__

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    sections = [s for s in (tune_section(tune, root / "tune.json") if tune else None,
                            sweep_section(sw) if sw else None, analysis_section(an) if an else None,
                            plan_section(pl) if pl else None) if s]
    n_charts = 0
    for s in sections:
        for key in ("loss_figures", "spectra", "figures"):
            n_charts += len(s.get(key) or [])
        n_charts += 1 if s.get("heatmap") else 0
    model = model_name(sw, an, pl)
    short = short_model(model)
    html = env.get_template("report.html.j2").render(
        title=f"loradial report — {short}" if short else "loradial report",
        model=short, model_full=model if model != short else None, root=str(root), version=__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cards=headline(sw, an, pl), sections=sections, notes=notes,
        markup=lambda svg: __import__("markupsafe").Markup(svg),
    )
    return html, [s["id"] for s in sections], n_charts
