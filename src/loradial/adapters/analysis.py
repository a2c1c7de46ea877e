"""`loradial analyze`: which rank did a trained adapter actually use?

Per module the exact singular values of ΔW = s·B·A (``spectrum.factored_svd``: thin QRs of both
factors and an r × r SVD, float64, ΔW never formed) and their metrics; summaries per module type
(``models.type_key``) and per layer; optionally the size of ΔW relative to the base weight W; and a
recommendation:

* a global rank: the smallest power of two k (at most the trained rank) such that at least
  ``coverage`` (90 %) of the modules keep ≥ ``energy`` of their ΔW energy at rank k;
* a per-module ``rank_pattern`` maximizing the total kept energy Σσ² under a parameter budget
  (default: what that global rank costs), by ``spectrum.allocate_ranks``.

With ``model`` and ``data`` also the truncation curve on eval data (``truncation``: eval loss with every
module cut to its best rank-k approximation, one model load), the data-driven rank beside the
spectrum's, and optionally the scale curve (shared with ``evaluate.alpha_sweep``).

For DoRA adapters the spectrum is that of the directional update s·B·A; the magnitude vector is not
part of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from loradial.adapters import features
from loradial.adapters.format import Adapter, LoraModule, exact_pattern_key, load_adapter
from loradial.errors import LoradialError
from loradial.adapters.evaluate import check_scales, open_eval_session, saved_note
from loradial.models.info import type_key
from loradial.result import Result
from loradial.settings import EVAL
from loradial.adapters.spectrum import Spectrum, allocate_ranks, energy_fraction, energy_rank, factored_svd, spectrum_metrics
from loradial.spec import alpha_for_same_scale, layer_index

#: matrices up to this many entries get an exact σ_max (full svdvals); larger ones use power iteration
EXACT_SIGMA_MAX_NUMEL = 4_000_000


@dataclasses.dataclass
class ModuleReport(Spectrum):
    """One module of the adapter: where it sits, its shape and scale, and its ``Spectrum`` (the metrics
    are defined once, in spectrum.py)."""

    name: str
    type: str
    layer: int | None
    kind: str
    d_in: int
    d_out: int
    alpha: float
    scale: float
    relative_norm: float | None = None
    """‖ΔW‖_F / ‖W‖_F (with --base)."""
    relative_spectral_norm: float | None = None
    """σ_max(ΔW) / σ_max(W) (with --base)."""


@dataclasses.dataclass
class AnalyzeResult(Result):
    adapter: str
    use_rslora: bool
    use_dora: bool
    n_modules: int
    n_params: int
    base: str | None
    modules: list[ModuleReport]
    summary: dict[str, Any]
    recommendation: dict[str, Any]
    notes: list[str]
    truncation_curve: list[Any] | None = None
    """With --data: k = 0 (base), each k, the full adapter (``truncation.TruncationPoint``)."""
    recommended_rank_data: int | None = None
    recommended_rank_spectrum: int | None = None
    rank_explanation: str | None = None
    scale_curve: list[dict[str, float]] | None = None
    evaluation: dict[str, Any] | None = None
    """With --data: model, data, n_examples, n_tokens, retain, base_eval_loss, full_eval_loss."""

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for key in _EVAL_FIELDS:  # the eval-data fields appear only when evaluated
            if d.get(key) is None:
                d.pop(key, None)
        return d


_EVAL_FIELDS = ("truncation_curve", "recommended_rank_data", "recommended_rank_spectrum", "rank_explanation",
                "scale_curve", "evaluation")


# --- base weights, read lazily -----------------------------------------------------------------
class BaseWeights:
    """Tensors of a local safetensors model directory (single file or sharded with an index), one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._handles: dict[Path, Any] = {}
        if not self.path.is_dir():
            raise LoradialError(f"base model directory not found: {self.path}", "--base takes a local model directory")
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                self.where = {k: self.path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise LoradialError(f"{index} is not a safetensors index", "re-save the model with save_pretrained") from None
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise LoradialError(f"no safetensors weights in {self.path}",
                                    "save the base model with save_pretrained(safe_serialization=True)")
            self.where = {k: f for f in files for k in self._open(f).keys()}

    def _open(self, f: Path):
        from safetensors import safe_open

        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt")
            except Exception as e:
                raise LoradialError(f"cannot read {f} ({type(e).__name__})", "the base model file is corrupt") from None
        return self._handles[f]

    def key_for(self, module: str) -> str | None:
        for cand in (f"{module}.weight", f"{module.split('.', 1)[-1]}.weight", f"model.{module}.weight"):
            if cand in self.where:
                return cand
        return None

    def get(self, key: str):
        return self._open(self.where[key]).get_tensor(key)


def sigma_max(W: Any, iters: int = 200, tol: float = 1e-7) -> float:
    """Largest singular value of W: exact (svdvals) up to ``EXACT_SIGMA_MAX_NUMEL`` entries, else power
    iteration on WᵀW in float32 (stops when σ changes by < ``tol`` relatively; error ~ (σ₂/σ₁)^(2·its))."""
    import torch

    if W.numel() <= EXACT_SIGMA_MAX_NUMEL:
        return float(torch.linalg.svdvals(W.to(torch.float64))[0])
    W = W.to(torch.float32)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(W.shape[1], generator=g)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iters):
        u = W @ v
        new = float(u.norm())
        if new == 0:
            return 0.0
        v = W.T @ (u / new)
        v /= v.norm()
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


def replicated_source(name: str, layer_replication: list | None) -> str:
    """The base module a module of a PEFT ``layer_replication`` model repeats: the layers of the replicated model are
    the base layers ``range(start, end)`` of each [start, end) in order (peft ``replicate_layers``), so layer j of it
    is base layer ``sources[j]``. Other names are returned unchanged."""
    if not layer_replication:
        return name
    sources = [i for start, end in layer_replication for i in range(int(start), int(end))]
    parts = name.split(".")
    for i, part in enumerate(parts[1:], 1):  # the first numbered segment after a named one (PEFT's layer index)
        if part.isdigit():
            j = int(part)
            if j < len(sources):
                parts[i] = str(sources[j])
            break
    return ".".join(parts)


# --- analysis ----------------------------------------------------------------------------------
def _module_spectra(adapter: Adapter, progress: bool) -> Iterator[tuple[LoraModule, np.ndarray]]:
    """(module, singular values) in order. With several torch threads, modules run in parallel (one
    LAPACK thread each: tall-skinny QRs scale better across modules than inside one)."""
    import torch

    mods = list(adapter.modules.values())
    n_threads = torch.get_num_threads()
    parallel = n_threads > 1 and len(mods) >= 8
    bar = None
    if progress and len(mods) >= 20:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("spectra", total=len(mods))
    try:
        if parallel:
            from concurrent.futures import ThreadPoolExecutor

            torch.set_num_threads(1)
            pool = ThreadPoolExecutor(n_threads)
            results = pool.map(lambda m: factored_svd(m.A, m.B, m.scale), mods)
        else:
            results = (factored_svd(m.A, m.B, m.scale) for m in mods)
        for m, sigma in zip(mods, results):
            yield m, sigma
            if bar is not None:
                bar.advance(task)
    finally:
        if parallel:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(n_threads)
        if bar is not None:
            bar.stop()


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _group_summary(reports: list[ModuleReport]) -> dict[str, Any]:
    out = {
        "n_modules": len(reports),
        "r": sorted({m.r for m in reports}),
        "shape": sorted({(m.d_out, m.d_in) for m in reports}),
        "mean_energy_rank_90": _mean([m.energy_rank_90 for m in reports]),
        "mean_energy_rank_95": _mean([m.energy_rank_95 for m in reports]),
        "mean_energy_rank_99": _mean([m.energy_rank_99 for m in reports]),
        "max_energy_rank_90": max(m.energy_rank_90 for m in reports),
        "mean_stable_rank": _mean([m.stable_rank for m in reports]),
        "mean_effective_rank": _mean([m.effective_rank for m in reports]),
        "mean_utilization": _mean([m.utilization for m in reports]),
        "frobenius_norm": float(math.sqrt(sum(m.frobenius_norm**2 for m in reports))),
        "mean_frobenius_norm": _mean([m.frobenius_norm for m in reports]),
    }
    if any(m.relative_norm is not None for m in reports):
        out["mean_relative_norm"] = _mean([m.relative_norm for m in reports])
        out["mean_relative_spectral_norm"] = _mean([m.relative_spectral_norm for m in reports])
    return out


def summarize(reports: list[ModuleReport]) -> dict[str, Any]:
    """Overall, per module type and per layer depth."""
    by_type: dict[str, list[ModuleReport]] = {}
    by_layer: dict[int, list[ModuleReport]] = {}
    for m in reports:
        by_type.setdefault(m.type, []).append(m)
        if m.layer is not None:
            by_layer.setdefault(m.layer, []).append(m)
    return {
        "overall": _group_summary(reports),
        "per_type": {t: _group_summary(ms) for t, ms in by_type.items()},
        "per_layer": [{"layer": i, **_group_summary(by_layer[i])} for i in sorted(by_layer)],
    }


def recommend_ranks(
    reports: list[ModuleReport], energy: float = 0.90, coverage: float = 0.90, budget: int | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Global power-of-two rank and a budgeted per-module rank_pattern (see the module docstring)."""
    if not 0 < energy <= 1:
        raise LoradialError(f"--energy must be in (0, 1], got {energy}", "e.g. --energy 0.9")
    if not 0 < coverage <= 1:
        raise LoradialError(f"--coverage must be in (0, 1], got {coverage}", "e.g. --coverage 0.9")
    spectra = [np.asarray(m.singular_values) for m in reports]
    needed = sorted(max(1, energy_rank(s, energy)) for s in spectra)
    k_needed = needed[max(0, math.ceil(coverage * len(needed)) - 1)]
    r_max = max(m.r for m in reports)
    rank = min(1 << (k_needed - 1).bit_length(), r_max)
    costs = [m.d_in + m.d_out for m in reports]
    rank_budget = sum(min(rank, m.r) * c for m, c in zip(reports, costs))
    if budget is None:
        budget = rank_budget
    floor = sum(costs)
    if budget < floor:
        raise LoradialError(f"budget {budget:,} parameters is below one rank per module ({floor:,})",
                            f"give at least {floor:,}")
    alloc = allocate_ranks(spectra, costs, budget, min_rank=1, max_ranks=[m.r for m in reports])
    total = alloc.total_energy
    kept_rank = sum(float((s[: min(rank, m.r)] ** 2).sum()) for s, m in zip(spectra, reports))
    met = sum(energy_fraction(s, min(rank, m.r)) >= energy - 1e-12 for s, m in zip(spectra, reports))
    names = [m.name for m in reports]
    out = {
        "rank": rank,
        "energy": energy,
        "coverage": coverage,
        "modules_meeting_energy": met / len(reports),
        "rank_retained_energy": 1.0 if total == 0 else min(1.0, kept_rank / total),
        "rank_params": rank_budget,
        "budget": int(budget),
        "rank_pattern": {exact_pattern_key(m.name, names): k for m, k in zip(reports, alloc.ranks)},
        "pattern_params": alloc.cost,
        "pattern_retained_energy": 1.0 if total == 0 else min(1.0, alloc.retained_energy / total),
        "pattern_energy_upper_bound": 1.0 if total == 0 else min(1.0, alloc.upper_bound / total),
        # the recommended rank is not below any module's r: resizing to it would cut nothing
        "already_at_rank": all(rank >= m.r for m in reports),
    }
    if config and "r" in config and "lora_alpha" in config:  # alpha keeping the trained scale s at the new rank
        rslora = bool(config.get("use_rslora", False))
        out["alpha"] = alpha_for_same_scale(config["lora_alpha"], config["r"], rank, rslora)
        out["use_rslora"] = rslora
    return out


def already_at_rank_note(reports: list[ModuleReport], energy: float, coverage: float) -> str:
    """The advice when the recommended rank is the adapter's own: nothing to resize."""
    rs = sorted({m.r for m in reports})
    r_text = f"rank {rs[0]}" if len(rs) == 1 else f"ranks up to {rs[-1]}"
    return (f"the adapter already uses its {r_text} (below it, fewer than {coverage:.0%} of modules keep "
            f"{energy:.0%} of their energy): keep it as it is; a resize to this rank would change nothing")


def analyze(
    adapter: str | Path | Adapter,
    base: str | Path | None = None,
    energy: float = 0.90,
    budget: int | None = None,
    coverage: float = 0.90,
    allow_pickle: bool = False,
    progress: bool = False,
    model: str | Path | None = None,
    data: str | Path | None = None,
    ranks: Sequence[int] | None = None,
    retain: float = 0.98,
    scales: Sequence[float] | None = None,
    max_len: int = EVAL.max_len,
    batch_size: int = EVAL.batch_size,
    max_examples: int | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> AnalyzeResult:
    """Exact per-module singular spectra of a PEFT LoRA adapter, summaries and a rank recommendation.

    With ``model`` and ``data``: also the truncation curve on eval data (``truncation.truncation_curve``,
    one model load), the data-driven rank beside the spectrum's, and with ``scales`` the scale curve.
    ``trust_remote_code`` (off unless asked) lets that model load run the model directory's own code."""
    from loradial.adapters import truncation as tr

    if not 0 < energy <= 1:
        raise LoradialError(f"--energy must be in (0, 1], got {energy}", "e.g. --energy 0.9")
    if (model is None) != (data is None):
        raise LoradialError("--model and --data go together", "give both to get the truncation curve on eval data")
    if data is None and (ranks or scales):
        raise LoradialError("--ranks and --scales need --model and --data", "e.g. --model ./base --data eval.jsonl")
    if data is not None:
        tr.check_retain(retain)
        if scales:
            scales = check_scales(scales)
    verb = features.DATA if data is not None else features.ANALYZE
    if isinstance(adapter, Adapter):
        features.check(adapter.config, verb)
        ad = adapter
    else:
        ad = load_adapter(adapter, allow_pickle=allow_pickle, verb=verb)
    if data is not None:
        tr.check_ranks(ranks, max(m.r for m in ad.modules.values()))
    weights = BaseWeights(base) if base is not None else None
    notes: list[str] = []
    missing: list[str] = []
    reports: list[ModuleReport] = []
    for m, sigma in _module_spectra(ad, progress):
        met = spectrum_metrics(sigma, m.r)
        rep = ModuleReport(name=m.name, type=type_key(m.name), layer=layer_index(m.name), kind=m.kind, d_in=m.d_in,
                           d_out=m.d_out, alpha=m.alpha, scale=m.scale, **dataclasses.asdict(met))
        if weights is not None:
            key = weights.key_for(replicated_source(m.name, ad.config.get("layer_replication")))
            if key is None:
                missing.append(m.name)
            else:
                W = weights.get(key)
                if W.numel() != m.d_in * m.d_out:
                    raise LoradialError(f"base weight {key} has shape {tuple(W.shape)} but the adapter's {m.name} is "
                                        f"{m.d_out}x{m.d_in}", "is --base the model this adapter was trained on?")
                w_f = float(W.double().norm())
                w_2 = sigma_max(W)
                rep.relative_norm = met.frobenius_norm / w_f if w_f else None
                rep.relative_spectral_norm = met.spectral_norm / w_2 if w_2 else None
        reports.append(rep)
    if weights is not None:
        if len(missing) == len(reports):
            raise LoradialError(f"none of the adapter's modules has a weight in {weights.path}",
                                "is --base the model this adapter was trained on?")
        if missing:
            notes.append(f"{len(missing)} module(s) have no base weight (e.g. {missing[0]}); no relative norms for them")
        notes.append("σ_max(W) is exact up to 4M entries and by power iteration (float32) above")
    if ad.use_dora:
        notes.append("DoRA: the spectrum is that of the directional update s·B·A; the magnitude vector is not included")
    if ad.saved:
        notes.append(f"the adapter also saves {ad.saved.describe()}: not LoRA factors, so not part of the spectra")
    recommendation = recommend_ranks(reports, energy, coverage, budget, ad.config)
    if recommendation["already_at_rank"]:
        notes.append(already_at_rank_note(reports, energy, coverage))
    extra: dict[str, Any] = {}
    if data is not None:
        session = open_eval_session(model, data, max_len, batch_size, max_examples, device, trust_remote_code=trust_remote_code)
        out = tr.truncation_curve(ad, session, ranks, retain, scales, progress)
        notes.extend(out.notes + saved_note(ad))
        extra = dict(
            truncation_curve=out.curve, recommended_rank_data=out.recommended_rank_data,
            recommended_rank_spectrum=recommendation["rank"], scale_curve=out.scale_curve,
            rank_explanation=tr.explain(out.recommended_rank_data, recommendation["rank"], retain, energy, coverage),
            evaluation=dict(model=str(model), data=str(data), n_examples=out.n_examples, n_tokens=out.n_tokens,
                            retain=retain, base_eval_loss=out.base_eval_loss, full_eval_loss=out.full_eval_loss),
        )
    return AnalyzeResult(
        adapter=str(ad.source) if ad.source else "<in memory>",
        use_rslora=ad.use_rslora,
        use_dora=ad.use_dora,
        n_modules=len(reports),
        n_params=ad.n_params,
        base=str(base) if base is not None else None,
        modules=reports,
        summary=summarize(reports),
        recommendation=recommendation,
        notes=notes,
        **extra,
    )
