"""`loradial analyze`: exact singular spectra of a trained adapter and a rank recommendation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.settings import DEFAULT, EVAL
from loradial.cli.common import app, console, run, short_types, split_list


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


@app.command("analyze")
def analyze_cmd(
    adapter: opt.AdapterArg,
    base: Optional[Path] = typer.Option(None, "--base", help="Local base model directory (safetensors): adds ‖ΔW‖/‖W‖ and σ_max(ΔW)/σ_max(W)."),
    energy: float = typer.Option(0.90, "--energy", help="Energy a recommended rank must keep (fraction of Σσ²)."),
    coverage: float = typer.Option(0.90, "--coverage", help="Fraction of modules that must keep --energy at the global rank."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Parameter budget of the rank_pattern (default: that of the global rank)."),
    per_module: bool = typer.Option(False, "--per-module", help="Also print one row per module."),
    allow_pickle: opt.AllowPickle = False,
    model: Optional[Path] = typer.Option(None, "--model", help="Base model to evaluate on --data: a local directory (weights + tokenizer) or a Hub id."),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluation data (jsonl/json/csv/parquet/txt): adds the truncation curve."),
    ranks: Optional[str] = typer.Option(None, "--ranks", help="Ranks k of the truncation curve (default: powers of two below the adapter's r, plus r)."),
    retain: float = typer.Option(0.98, "--retain", help="Fraction of the adapter's eval-loss improvement the data-driven rank must keep."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Also the eval loss of base + c·adapter for these c (e.g. 0.5,0.75,1,1.25)."),
    max_len: opt.EvalMaxLen = EVAL.max_len,
    batch_size: opt.EvalBatchSize = EVAL.batch_size,
    max_examples: opt.MaxExamples = None,
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    include_embeddings: bool = typer.Option(False, "--include-embeddings", help="Full model + --base: also the embeddings and the output head."),
    device: Optional[str] = typer.Option(None, "--device", help="Full model + --base: where the dense SVDs run (default: cuda if available, else cpu)."),
    svd_dtype: str = typer.Option("float64", "--svd-dtype", help="Full model + --base: float64 (exact) or float32 (faster on GPUs)."),
    as_json: opt.Json = False,
) -> None:
    """Which rank did the adapter use? Exact singular values of s·B·A per module (never forming ΔW),
    energy ranks, effective ranks, and a recommended global rank and per-module rank_pattern. With
    --model and --data: eval loss with every module truncated to rank k (one model load), the share of
    the adapter's improvement each k keeps, and the data-driven rank beside the spectrum's.

    With a fully fine-tuned model directory and --base: the dense spectrum of W_ft − W_base per module, i.e.
    which rank full fine-tuning used, and the LoRA rank that would have kept --energy of it.

    Example: loradial analyze ./my-adapter --model ./Llama-3.2-1B --data eval.jsonl --scales 0.5,1,1.25
    """
    from loradial.adapters.analysis import AnalyzeResult, analyze
    from loradial.adapters.full_update import is_full_model_dir

    if is_full_model_dir(adapter):
        return _analyze_full(adapter, base, energy, coverage, budget, per_module, include_embeddings, device, svd_dtype,
                             as_json, adapter_only=dict(model=model, data=data, ranks=ranks, scales=scales))

    def render(res: AnalyzeResult) -> None:
        kind = "DoRA" if res.use_dora else ("rsLoRA" if res.use_rslora else "LoRA")
        console.print(f"[bold]{res.adapter}[/]: {kind}, {res.n_modules} modules, {res.n_params:,} parameters")
        has_rel = res.base is not None
        t = Table(title="per module type (means)")
        short = short_types(list(res.summary["per_type"]))
        cols = ["type", "n", "r", "E90", "E95", "E99", "stable", "eff", "util", "‖ΔW‖_F"]
        cols += ["‖ΔW‖/‖W‖", "σ/σ_W"] if has_rel else []
        width = max(len(v) for v in short.values())
        for c in cols:
            t.add_column(c, justify="left" if c == "type" else "right", no_wrap=c == "type", min_width=width if c == "type" else None)
        for name, g in res.summary["per_type"].items():
            row = [short[name], str(g["n_modules"]), ",".join(map(str, g["r"])), _f(g["mean_energy_rank_90"], "{:.1f}"),
                   _f(g["mean_energy_rank_95"], "{:.1f}"), _f(g["mean_energy_rank_99"], "{:.1f}"),
                   _f(g["mean_stable_rank"]), _f(g["mean_effective_rank"]), _f(g["mean_utilization"], "{:.0%}"),
                   _f(g["mean_frobenius_norm"], "{:.3g}")]
            if has_rel:
                row += [_f(g.get("mean_relative_norm"), "{:.2e}"), _f(g.get("mean_relative_spectral_norm"), "{:.2e}")]
            t.add_row(*row)
        console.print(t)
        layers = res.summary["per_layer"]
        if layers:
            console.print("utilization by layer: " + "  ".join(f"{g['layer']}:{g['mean_utilization']:.0%}" for g in layers))
        if per_module:
            mt = Table(title="per module")
            for c in ("module", "r", "E90", "E95", "E99", "effective", "σ_max", "‖ΔW‖_F"):
                mt.add_column(c, justify="left" if c == "module" else "right")
            for m in res.modules:
                mt.add_row(m.name, str(m.r), str(m.energy_rank_90), str(m.energy_rank_95), str(m.energy_rank_99),
                           f"{m.effective_rank:.2f}", f"{m.spectral_norm:.3g}", f"{m.frobenius_norm:.3g}")
            console.print(mt)
        rec = res.recommendation
        console.print(
            f"[bold]recommended rank {rec['rank']}[/]: keeps ≥{rec['energy']:.0%} energy in "
            f"{rec['modules_meeting_energy']:.0%} of modules, {rec['rank_retained_energy']:.1%} of all energy, "
            f"{rec['rank_params']:,} parameters" + (f" (lora_alpha {rec['alpha']:g} keeps the scale)" if "alpha" in rec else "")
        )
        console.print(
            f"per-module rank_pattern: {rec['pattern_retained_energy']:.1%} of all energy for {rec['pattern_params']:,} "
            f"parameters (budget {rec['budget']:,}; no allocation keeps more than {rec['pattern_energy_upper_bound']:.1%}); "
            "see --json for the pattern"
        )
        if not rec.get("already_at_rank"):
            console.print(f"resize with: loradial resize {res.adapter} --rank {rec['rank']} --out DIR  "
                          f"(or --budget {rec['budget']})")
        if res.truncation_curve is not None:
            _render_truncation(res)
        for n in res.notes:
            console.print(f"[dim]note: {n}[/]")

    def call() -> AnalyzeResult:
        return analyze(adapter, base=base, energy=energy, budget=budget, coverage=coverage, allow_pickle=allow_pickle,
                       progress=True, model=model, data=data, ranks=split_list(ranks, int, "rank") if ranks else None,
                       retain=retain, scales=split_list(scales, float, "scale") if scales else None, max_len=max_len,
                       batch_size=batch_size, max_examples=max_examples, trust_remote_code=trust_remote_code)

    run(call, as_json, render)


def _analyze_full(ft: Path, base: Optional[Path], energy: float, coverage: float, budget: Optional[int], per_module: bool,
                  include_embeddings: bool, device: Optional[str], svd_dtype: str, as_json: bool, adapter_only: dict) -> None:
    from loradial.adapters.full_update import FullAnalyzeResult, analyze_full
    from loradial.errors import LoradialError

    def call() -> FullAnalyzeResult:
        if base is None:
            raise LoradialError(f"{ft} is a full model, not a PEFT adapter",
                                f"add --base BASE_DIR (the model it was fine-tuned from) to see the spectrum of W_ft − W_base")
        given = [f"--{k}" for k, v in adapter_only.items() if v is not None]
        if given:
            raise LoradialError(f"{', '.join(given)} apply to adapters, not to a full model with --base",
                                "drop them, or extract an adapter first: loradial resize FT --from-full --base BASE --rank K --out DIR")
        return analyze_full(ft, base, energy=energy, coverage=coverage, budget=budget, include_embeddings=include_embeddings,
                            device=device, dtype=svd_dtype, progress=True)

    def render(res: FullAnalyzeResult) -> None:
        console.print(f"[bold]{res.model}[/] − [bold]{res.base}[/]: full update of {res.n_modules} modules "
                      f"({res.dtype} SVD on {res.device})")
        t = Table(title="ΔW = W_ft − W_base per module type (means; r = min(d_in, d_out))")
        short = short_types(list(res.summary["per_type"]))
        width = max(len(v) for v in short.values())
        for c in ("type", "n", "r", "E90", "E95", "E99", "max E90", "stable", "eff", "‖ΔW‖/‖W‖"):
            t.add_column(c, justify="left" if c == "type" else "right", no_wrap=c == "type", min_width=width if c == "type" else None)
        for name, g in res.summary["per_type"].items():
            t.add_row(short[name], str(g["n_modules"]), ",".join(map(str, g["r"])), _f(g["mean_energy_rank_90"], "{:.1f}"),
                      _f(g["mean_energy_rank_95"], "{:.1f}"), _f(g["mean_energy_rank_99"], "{:.1f}"), str(g["max_energy_rank_90"]),
                      _f(g["mean_stable_rank"]), _f(g["mean_effective_rank"]), _f(g.get("mean_relative_norm"), "{:.2e}"))
        console.print(t)
        if per_module:
            mt = Table(title="per module")
            for c in ("module", "d_out×d_in", "E90", "E95", "E99", "stable", "σ_max", "‖ΔW‖_F"):
                mt.add_column(c, justify="left" if c == "module" else "right")
            for m in res.modules:
                mt.add_row(m.name, f"{m.d_out}×{m.d_in}", str(m.energy_rank_90), str(m.energy_rank_95), str(m.energy_rank_99),
                           f"{m.stable_rank:.2f}", f"{m.spectral_norm:.3g}", f"{m.frobenius_norm:.3g}")
            console.print(mt)
        rec = res.recommendation
        console.print(f"[bold]a LoRA of rank {rec['rank']}[/] keeps ≥{rec['energy']:.0%} of ΔW's energy in "
                      f"{rec['modules_meeting_energy']:.0%} of modules ({rec['rank_retained_energy']:.1%} of all energy, "
                      f"{rec['rank_params']:,} parameters); the budgeted rank_pattern keeps {rec['pattern_retained_energy']:.1%}")
        console.print(f"extract it with: loradial resize {res.model} --from-full --base {res.base} --rank {rec['rank']} --out DIR")
        for n in res.notes:
            console.print(f"[dim]note: {n}[/]")

    run(call, as_json, render)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _render_truncation(res) -> None:
    ev = res.evaluation
    t = Table(title=f"truncation curve: {ev['n_examples']} examples, {ev['n_tokens']:,} label tokens")
    for c in ("k", "params", "eval loss", "token acc", "retained", "budgeted loss", "budgeted retained"):
        t.add_column(c, justify="right")
    for p in res.truncation_curve:
        name = "0 (base)" if p.k == 0 else (f"{p.k} (full)" if p is res.truncation_curve[-1] else str(p.k))
        mark = " ←" if p.k == res.recommended_rank_data else ""
        t.add_row(name + mark, f"{p.params:,}", f"{p.eval_loss:.4f}", f"{p.token_accuracy:.2%}", _pct(p.retained),
                  _f(p.budgeted_eval_loss, "{:.4f}"), _pct(p.budgeted_retained))
    console.print(t)
    if res.scale_curve:
        st = Table(title="scale curve (full adapter)")
        for c in ("scale", "eval loss", "token acc"):
            st.add_column(c, justify="right")
        best = min(res.scale_curve, key=lambda p: p["eval_loss"])
        for p in res.scale_curve:
            st.add_row(f"{p['scale']:g}" + (" ← best" if p is best else ""), f"{p['eval_loss']:.4f}", f"{p['token_accuracy']:.2%}")
        console.print(st)
    rd = res.recommended_rank_data
    console.print(f"[bold]recommended rank from eval data: {rd if rd is not None else '-'}[/] (keeps ≥{ev['retain']:.0%} of the "
                  f"improvement {ev['base_eval_loss']:.4f} → {ev['full_eval_loss']:.4f}); from the spectrum: "
                  f"{res.recommended_rank_spectrum}")
    if res.rank_explanation:
        console.print(f"why they differ: {res.rank_explanation}")
    if rd:
        console.print(f"next: train at r={rd} and r={2 * rd} — in sweeps this rank was a floor, never above the rank "
                      "within 1 % of the best (docs/acting-on-adapters.md: how far to trust it)")
