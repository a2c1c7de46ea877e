"""Tolerant readers of what `sweep`, `analyze`, `alpha-sweep` and `plan` write, for the report.

Each reader returns ``None`` (with a note saying why) when its file is absent or unreadable, and
otherwise a small normalized view in which every optional field may be ``None``. Files are looked
for in the report directory itself and then in its immediate subdirectories (sorted by name), so a
sweep directory, an analysis directory, and a demo directory holding ``sweep/``, ``analysis/`` and
``plan.json`` all work. The exact files and fields read are listed in docs/report.md ("Files and fields read").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradial.models.info import type_key
from loradial.spec import layer_index


def find(root: Path, *names: str) -> Path | None:
    """First existing ``root/name``, else ``root/<subdir>/name`` over sorted subdirectories."""
    for name in names:
        if (root / name).is_file():
            return root / name
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in names:
            if (sub / name).is_file():
                return sub / name
    return None


def num(v: Any) -> float | None:
    """A finite float or None (accepts ints, floats and numeric strings)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def first(d: dict, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.append(f"{path.name} could not be read ({type(e).__name__}: {e}); skipped.")
        return None


# ---------------------------------------------------------------- sweep


@dataclass
class SweepData:
    dir: Path
    settings: dict[str, Any]
    configs: list[dict[str, Any]]  # normalized results.json entries, in file order
    best: str | None
    curves: dict[str, dict[str, list[tuple[float, float | None]]]]  # name -> {"train": [...], "eval": [...]}
    lr_fit: dict[str, Any] | None
    base_eval_loss: float | None
    files: list[str] = field(default_factory=list)
    full_ft: dict[str, Any] | None = None  # results.json's full_ft (the adapters against full fine-tuning)
    full_configs: list[dict[str, Any]] = field(default_factory=list)  # the full variant's entries, kept out of the plots


def _variant(e: dict) -> str:
    v = e.get("variant")
    if isinstance(v, str) and v:
        return v
    if e.get("use_dora"):
        return "dora"
    return "rslora" if e.get("use_rslora") else "lora"


def _norm_config(e: dict, fallback_name: str) -> dict[str, Any]:
    r = num(first(e, "r", "rank"))
    alpha = num(first(e, "lora_alpha", "alpha"))
    status = e.get("status") if isinstance(e.get("status"), str) and e.get("status") not in ("done", "alive") else None
    if status is None and num(e.get("stopped_at")) is not None:
        status = f"stopped by halving at step {int(num(e['stopped_at']))}"
    targets = e.get("targets", e.get("target_modules"))
    return {
        "name": str(first(e, "name", "config", "adapter") or fallback_name),
        "r": int(r) if r is not None else None,
        "lora_alpha": alpha,
        "variant": _variant(e),
        "targets": ",".join(map(str, targets)) if isinstance(targets, list) else (str(targets) if targets is not None else None),
        "learning_rate": num(first(e, "learning_rate", "lr")),
        "seed": first(e, "seed"),
        "trainable_params": num(e.get("trainable_params")),
        "final_train_loss": num(e.get("final_train_loss")),
        "best_eval_loss": num(e.get("best_eval_loss")),
        "final_eval_loss": num(e.get("final_eval_loss")),
        "gap": num(e.get("gap")),
        "verdict": e.get("verdict") if isinstance(e.get("verdict"), str) else None,
        "tokens_per_s": num(e.get("tokens_per_s")),
        "peak_memory_bytes": num(e.get("peak_memory_bytes")),
        "status": status,
    }


def _results_entries(raw: Any) -> list[dict]:
    if isinstance(raw, list):
        return [e for e in raw if isinstance(e, dict)]
    if not isinstance(raw, dict):
        return []
    for key in ("configs", "results", "runs"):
        val = raw.get(key)
        if isinstance(val, list):
            return [e for e in val if isinstance(e, dict)]
        if isinstance(val, dict):
            return [{"name": k, **v} for k, v in val.items() if isinstance(v, dict)]
    return []


def read_metrics(path: Path, notes: list[str]) -> dict[str, dict[str, list]]:
    """metrics.jsonl -> {config: {"train": [(step, loss)], "eval": [(step, eval_loss)]}}; bad lines skipped."""
    curves: dict[str, dict[str, list]] = {}
    bad = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        notes.append(f"{path.name} could not be read ({e}); loss curves skipped.")
        return curves
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
            continue
        name, step = first(rec, "adapter", "config", "name"), num(rec.get("step"))
        if name is None or step is None:
            continue
        c = curves.setdefault(str(name), {"train": [], "eval": []})
        if "eval_loss" in rec:
            c["eval"].append((step, num(rec["eval_loss"])))
        elif "loss" in rec or "train_loss" in rec:
            c["train"].append((step, num(first(rec, "loss", "train_loss"))))
    for c in curves.values():
        c["train"].sort(key=lambda p: p[0])
        c["eval"].sort(key=lambda p: p[0])
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped.")
    return curves


def load_sweep(root: Path, notes: list[str]) -> SweepData | None:
    results = find(root, "results.json")
    metrics = find(root, "metrics.jsonl")
    if results is None and metrics is None:
        notes.append("Sweep: no results.json or metrics.jsonl found; section skipped.")
        return None
    sdir = (results or metrics).parent
    if metrics is None and (sdir / "metrics.jsonl").is_file():
        metrics = sdir / "metrics.jsonl"
    if results is None and (sdir / "results.json").is_file():
        results = sdir / "results.json"
    files: list[str] = []
    raw = _read_json(results, notes) if results else None
    if results is not None and raw is not None:
        files.append(str(results))
    elif results is None:
        notes.append("Sweep: no results.json yet (a sweep still running?); showing loss curves only.")
    entries = _results_entries(raw)
    configs = [_norm_config(e, f"config-{i}") for i, e in enumerate(entries)]
    best = first(raw, "best") if isinstance(raw, dict) else None
    if isinstance(best, dict):
        best = first(best, "name", "config")
    if best is None and configs:
        ranked = [c for c in configs if c["best_eval_loss"] is not None]
        if ranked:
            best = min(ranked, key=lambda c: (c["best_eval_loss"], c["trainable_params"] or 0))["name"]
    curves = read_metrics(metrics, notes) if metrics else {}
    if metrics is not None and curves:
        files.append(str(metrics))
    settings: dict[str, Any] = dict(raw["settings"]) if isinstance(raw, dict) and isinstance(raw.get("settings"), dict) else {}
    yml = sdir / "sweep.yaml"
    if yml.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(yml.read_text(encoding="utf-8"))
            settings = loaded if isinstance(loaded, dict) else settings
            files.append(str(yml))
        except Exception as e:  # noqa: BLE001 - any YAML problem only costs the settings table
            notes.append(f"sweep.yaml could not be read ({type(e).__name__}); settings not shown.")
    fit = raw.get("lr_rank_fit") if isinstance(raw, dict) else None
    if not configs and not curves:
        notes.append("Sweep: results.json and metrics.jsonl hold no configs; section skipped.")
        return None
    base = num(first(raw, "base_eval_loss")) if isinstance(raw, dict) else None
    full_ft = raw.get("full_ft") if isinstance(raw, dict) and isinstance(raw.get("full_ft"), dict) else None
    full = [c for c in configs if c["variant"] == "full"]
    configs = [c for c in configs if c["variant"] != "full"]
    for c in full:  # full fine-tuning has no rank: the plots and the results table are the adapters'
        curves.pop(c["name"], None)
    if base is None and full_ft is not None:
        base = num(full_ft.get("base_eval_loss"))
    return SweepData(sdir, settings, configs, str(best) if best is not None else None, curves,
                     fit if isinstance(fit, dict) else None, base, files, full_ft, full)


# ---------------------------------------------------------------- analysis


@dataclass
class AnalysisData:
    path: Path
    meta: dict[str, Any]
    modules: list[dict[str, Any]]  # name, type, layer, r, sv (list), energy ranks, stable/effective rank
    recommendation: dict[str, Any]
    truncation: list[dict[str, Any]]  # k, eval_loss, retained, [eval_loss_pattern]
    rank_data: int | None
    rank_spectrum: int | None
    scale_curve: list[dict[str, Any]]  # scale, eval_loss, [token_accuracy]
    scale_source: str | None


def _curve(raw: Any, xkey: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(raw, dict):
        raw = first(raw, "points", "curve", "results")
    out = []
    for p in raw if isinstance(raw, list) else []:
        if isinstance(p, dict):
            x = num(first(p, *xkey))
            if x is not None:
                out.append({**p, "_x": x, "eval_loss": num(p.get("eval_loss"))})
    return sorted(out, key=lambda p: p["_x"])


def _scale_points(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, dict):
        return _curve(raw, ("scale",))
    scales, losses = raw.get("scales"), first(raw, "losses", "eval_losses")
    if isinstance(scales, list) and isinstance(losses, list) and scales and not isinstance(scales[0], dict):
        accs = raw.get("accuracies") if isinstance(raw.get("accuracies"), list) else []
        rows = [{"scale": sc, "eval_loss": lo, **({"token_accuracy": accs[i]} if i < len(accs) else {})}
                for i, (sc, lo) in enumerate(zip(scales, losses))]
        return _curve(rows, ("scale",))
    for key in ("scale_curve", "scales", "curve", "points", "results"):
        pts = _curve(raw.get(key), ("scale",))
        if pts:
            return pts
    return []


def _norm_module(m: dict) -> dict[str, Any] | None:
    name = m.get("name")
    if not isinstance(name, str):
        return None
    sv = [v for v in (num(x) for x in m.get("singular_values") or []) if v is not None]
    r = num(m.get("r"))
    layer = num(m.get("layer"))
    out = {
        "name": name,
        "type": m["type"] if isinstance(m.get("type"), str) and m["type"] else type_key(name),
        "layer": int(layer) if layer is not None else layer_index(name),
        "r": int(r) if r is not None else (len(sv) or None),
        "sv": sv,
    }
    for k in ("energy_rank_90", "energy_rank_95", "energy_rank_99", "stable_rank", "effective_rank", "utilization"):
        out[k] = num(m.get(k))
    return out


def load_analysis(root: Path, notes: list[str]) -> AnalysisData | None:
    path = find(root, "analysis.json")
    alpha = find(root, "alpha_sweep.json", "alpha-sweep.json")
    if path is None and alpha is None:
        notes.append("Analysis: no analysis.json found; section skipped.")
        return None
    raw = _read_json(path, notes) if path else {}
    if not isinstance(raw, dict):
        if raw is not None:
            notes.append("analysis.json is not a JSON object; section skipped.")
        raw = {}
    modules = [m for m in (_norm_module(x) for x in raw.get("modules") or [] if isinstance(x, dict)) if m]
    rec = raw.get("recommendation") if isinstance(raw.get("recommendation"), dict) else {}
    scale_curve, scale_source = _scale_points(raw), (str(path) if path else None)
    if not scale_curve and alpha is not None:
        scale_curve, scale_source = _scale_points(_read_json(alpha, notes)), str(alpha)
    trunc = _curve(raw.get("truncation_curve"), ("k", "rank"))
    if not modules and not trunc and not scale_curve:
        if path is not None:
            notes.append("Analysis: analysis.json holds no modules or curves; section skipped.")
        return None
    meta = {k: raw.get(k) for k in ("adapter", "adapter_path", "path", "base_model", "base", "model", "config", "energy", "summary",
                                 "explanation", "rank_explanation")}
    rdata, rspec = num(raw.get("recommended_rank_data")), num(raw.get("recommended_rank_spectrum"))
    return AnalysisData(
        path or alpha, meta, modules, rec, trunc,
        int(rdata) if rdata is not None else None, int(rspec) if rspec is not None else None,
        scale_curve, scale_source,
    )


# ---------------------------------------------------------------- plan


@dataclass
class PlanData:
    path: Path
    model: dict[str, Any]
    rows: list[dict[str, Any]]


def _targets_label(t: Any) -> str:
    if isinstance(t, (list, tuple)):
        return ",".join(str(x) for x in t)
    return str(t) if t is not None else "?"


def load_plan(root: Path, notes: list[str]) -> PlanData | None:
    path = find(root, "plan.json")
    if path is None:
        notes.append("Plan: no plan.json found; section skipped.")
        return None
    raw = _read_json(path, notes)
    if raw is None:
        return None
    rows_raw = raw.get("rows") if isinstance(raw, dict) else raw
    rows = []
    for row in rows_raw if isinstance(rows_raw, list) else []:
        if not isinstance(row, dict):
            continue
        mods = []
        for m in row.get("modules") or []:
            if isinstance(m, dict):
                p = num(first(m, "params", "trainable_params", "parameters", "n_params"))
                mods.append({"name": str(first(m, "name", "type", "type_key", "module") or "?"), "params": p, "raw": m})
        mem = row.get("memory_breakdown")
        rows.append({
            "rank": first(row, "rank", "r"),
            "targets": _targets_label(row.get("targets")),
            "trainable_params": num(row.get("trainable_params")),
            "trainable_percent": num(row.get("trainable_percent")),
            "modules": mods,
            "adapter_bytes": row.get("adapter_bytes"),
            "peak_memory_bytes": num(row.get("peak_memory_bytes")),
            "memory_breakdown": {k: num(v) for k, v in mem.items()} if isinstance(mem, dict) else {},
            "use_dora": bool(row.get("use_dora")),
        })
    if not rows:
        notes.append("Plan: plan.json holds no rows; section skipped.")
        return None
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, str):
        model = {"name": model}
    return PlanData(path, model if isinstance(model, dict) else {}, rows)
