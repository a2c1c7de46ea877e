"""The truncation curve: eval loss of base + adapter with every module cut to its best rank-k approximation.

For each k, every module's ΔW = s·B·A is replaced by its best rank-k approximation (Eckart & Young
1936) from the factored SVD (``spectrum.factored_svd``, computed once per module and sliced per k;
ΔW is never formed), swapped into ``evaluate.AdapterHooks`` on ONE loaded base model, and scored by
``evaluate.eval_loss``. k = 0 is the base model alone; the largest k is the full adapter. The
fraction of the adapter's improvement kept at k is

    retained(k) = (loss_base − loss_k) / (loss_base − loss_full)

and the data-driven rank is the smallest evaluated k with retained(k) ≥ ``retain``.

Budgeted: at the parameter count of each uniform k, P_k = Σᵢ min(k, rᵢ)·(d_inᵢ + d_outᵢ), the
per-module ranks of ``spectrum.allocate_ranks`` (greedy on σ²/cost; what ``loradial resize
--budget P_k`` writes) are evaluated too, to show whether a non-uniform rank_pattern keeps more.

DoRA: the truncated s·B·A goes into PEFT's DoRA forward with the magnitude vector kept (what the
resized adapter does in PEFT); since DoRA renormalizes W + s·B·A per row, this truncation is an
approximation of the adapter, not its optimal rank-k version.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from loradial.adapters.format import Adapter, LoraModule
from loradial.errors import LoradialError
from loradial.adapters.evaluate import AdapterHooks, EvalSession, scale_curve
from loradial.adapters.spectrum import allocate_ranks, factored_svd
from loradial.adapters.surgery import truncate_module

DEFAULT_RETAIN = 0.98


@dataclasses.dataclass
class TruncationPoint:
    k: int
    eval_loss: float
    token_accuracy: float
    retained: float | None
    params: int
    """LoRA factor parameters Σ min(k, rᵢ)·(d_in + d_out) (magnitudes and biases not counted)."""
    budgeted_eval_loss: float | None = None
    budgeted_token_accuracy: float | None = None
    budgeted_retained: float | None = None
    budgeted_params: int | None = None


@dataclasses.dataclass
class TruncationOutcome:
    curve: list[TruncationPoint]
    scale_curve: list[dict[str, float]] | None
    n_examples: int
    n_tokens: int
    base_eval_loss: float
    full_eval_loss: float
    recommended_rank_data: int | None
    notes: list[str]


# --- options -----------------------------------------------------------------------------------
def check_ranks(ranks: Sequence[int] | None, r_max: int) -> list[int]:
    """Sorted distinct ks ≥ 1 always ending at the full adapter ``r_max``; default: powers of two below r_max."""
    if ranks is None or len(ranks) == 0:
        ks = [1 << i for i in range(r_max.bit_length()) if (1 << i) < r_max]
    else:
        ks = []
        for k in ranks:
            if isinstance(k, bool) or int(k) != k or k < 1:
                raise LoradialError(f"invalid rank {k!r} in --ranks", "ranks are integers ≥ 1, e.g. --ranks 1,2,4,8")
            if k > r_max:
                raise LoradialError(f"--ranks {int(k)} exceeds the adapter's largest rank {r_max}",
                                    f"give ranks up to {r_max} (the full adapter is always evaluated)")
            ks.append(int(k))
    return sorted(set(ks) | {r_max})


def check_retain(retain: float) -> float:
    if not 0 < retain <= 1:
        raise LoradialError(f"--retain must be in (0, 1], got {retain}", "e.g. --retain 0.98")
    return float(retain)


# --- pure pieces -------------------------------------------------------------------------------
def rank_params(mods: Sequence[LoraModule], ranks: Sequence[int]) -> int:
    """Σᵢ kᵢ·(d_inᵢ + d_outᵢ) with kᵢ capped at the module's trained rank."""
    return int(sum(min(k, m.r) * (m.d_in + m.d_out) for m, k in zip(mods, ranks)))


def retained(loss_base: float, loss_k: float, loss_full: float) -> float | None:
    """(loss_base − loss_k) / (loss_base − loss_full); None when the adapter does not improve on the base."""
    gain = loss_base - loss_full
    return None if not gain > 0 else (loss_base - loss_k) / gain


def recommend_rank(curve: Sequence[TruncationPoint], retain: float) -> int | None:
    """Smallest evaluated k ≥ 1 keeping at least ``retain`` of the improvement (None without improvement)."""
    for p in sorted(curve, key=lambda p: p.k):
        if p.k >= 1 and p.retained is not None and p.retained >= retain - 1e-12:
            return p.k
    return None


def explain(rank_data: int | None, rank_spectrum: int, retain: float, energy: float, coverage: float) -> str | None:
    """One line when the data-driven and spectrum-only recommendations disagree."""
    if rank_data is None:
        return ("the adapter does not lower eval loss below the base model's, so no rank keeps its improvement; "
                f"the spectrum-only rank {rank_spectrum} says nothing about quality here")
    if rank_data == rank_spectrum:
        return None
    head = (f"rank {rank_data} keeps {retain:.0%} of the adapter's eval-loss improvement, while keeping "
            f"{energy:.0%} of ΔW's energy in {coverage:.0%} of modules takes rank {rank_spectrum}: ")
    if rank_data < rank_spectrum:
        return head + "the weaker singular directions carry energy but little eval loss"
    return head + "directions the energy rule discards still matter on this data"


# --- the curve ---------------------------------------------------------------------------------
def _svd_cache(mods: Sequence[LoraModule]) -> list[tuple[Any, Any, Any]]:
    """(U, S, Vh) per module from the factored SVD, kept in float32 (float64 for float64 factors)."""
    import torch

    out = []
    for m in mods:
        U, S, Vh = factored_svd(m.A, m.B, m.scale, vectors=True)
        dt = torch.float64 if m.A.dtype == torch.float64 else torch.float32
        out.append((U.to(dt), S, Vh.to(dt)))
    return out


def truncated_modules(ad: Adapter, ranks: Sequence[int], svds: Sequence[tuple[Any, Any, Any]] | None = None) -> dict[str, LoraModule]:
    """Every module of ``ad`` (in order) cut to its rank in ``ranks`` (same scale s; k ≥ r keeps the module),
    from cached SVDs when given."""
    mods = list(ad.modules.values())
    svds = svds if svds is not None else [None] * len(mods)
    return {m.name: truncate_module(m, k, ad.use_rslora, svd=svd) for m, k, svd in zip(mods, ranks, svds)}


def truncation_curve(
    ad: Adapter,
    session: EvalSession,
    ranks: Sequence[int] | None = None,
    retain: float = DEFAULT_RETAIN,
    scales: Sequence[float] | None = None,
    progress: bool = False,
) -> TruncationOutcome:
    """Evaluate base (k = 0), every uniform k of ``check_ranks(ranks)``, the budgeted allocation at each
    uniform k's parameter count, and optionally the scale curve of the full adapter, on one loaded model."""
    mods = list(ad.modules.values())
    r_max = max(m.r for m in mods)
    ks = check_ranks(ranks, r_max)
    retain = check_retain(retain)
    svds = _svd_cache(mods)
    spectra = [S.numpy() for _, S, _ in svds]
    costs = [m.d_in + m.d_out for m in mods]
    uniform = {k: [min(k, m.r) for m in mods] for k in ks}
    budgeted: dict[int, list[int]] = {}
    for k in ks:
        alloc = allocate_ranks(spectra, costs, rank_params(mods, uniform[k]), min_rank=1, max_ranks=[m.r for m in mods])
        if alloc.ranks != uniform[k]:
            budgeted[k] = alloc.ranks

    def modules_at(ranks_: list[int]) -> dict[str, LoraModule]:
        return truncated_modules(ad, ranks_, svds)

    n_evals = 1 + len(ks) + len(budgeted) + len(scales or [])
    bar, task = None, None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("truncation curve", total=n_evals)

    def step() -> None:
        if bar is not None:
            bar.advance(task)

    raw: dict[int, tuple[float, float]] = {}
    raw_budget: dict[int, tuple[float, float]] = {}
    scale_pts = None
    n_tok = 0
    try:
        with AdapterHooks(session.model, ad) as hooks:
            hooks.enabled = False
            loss0, acc0, n_tok = session.evaluate()
            hooks.enabled = True
            step()
            for k in ks:
                hooks.set_modules(modules_at(uniform[k]))
                raw[k] = session.evaluate()[:2]
                step()
            for k, alloc_ranks in budgeted.items():
                hooks.set_modules(modules_at(alloc_ranks))
                raw_budget[k] = session.evaluate()[:2]
                step()
            if scales:
                hooks.set_modules(ad.modules)
                losses, accs, _ = scale_curve(session, hooks, scales, step)
                scale_pts = [{"scale": c, "eval_loss": lo, "token_accuracy": a} for c, lo, a in zip(scales, losses, accs)]
    finally:
        if bar is not None:
            bar.stop()
    loss_full = raw[r_max][0]
    curve = [TruncationPoint(0, loss0, acc0, retained(loss0, loss0, loss_full), 0)]
    for k in ks:
        p = TruncationPoint(k, raw[k][0], raw[k][1], retained(loss0, raw[k][0], loss_full), rank_params(mods, uniform[k]))
        bl, ba = raw_budget.get(k, raw[k])
        p.budgeted_eval_loss, p.budgeted_token_accuracy = bl, ba
        p.budgeted_retained = retained(loss0, bl, loss_full)
        p.budgeted_params = rank_params(mods, budgeted.get(k, uniform[k]))
        curve.append(p)
    notes = []
    if not loss0 - loss_full > 0:
        notes.append(f"the full adapter does not improve eval loss over the base ({loss_full:.4f} vs {loss0:.4f}); "
                     "retained fractions are undefined")
    if ad.use_dora:
        notes.append("DoRA: each truncated s·B·A is evaluated with the magnitude vector kept (as PEFT runs the resized "
                     "adapter); DoRA renormalizes per row, so this approximates the adapter's rank-k behaviour")
    notes.append("budgeted: per-module ranks from the greedy σ²/cost allocation at each uniform k's parameter count "
                 "(reproduce with loradial resize --budget PARAMS); equal to uniform where the allocation is uniform")
    return TruncationOutcome(curve, scale_pts, len(session.examples), n_tok, loss0, loss_full,
                             recommend_rank(curve, retain), notes)
