"""The exact singular spectrum of a LoRA update ΔW = s·B·A without forming ΔW, and what follows from it.

Factored SVD (e.g. Golub & Van Loan, *Matrix Computations*, 4th ed., §5.4 / §8.6: the SVD of a
product through QR factorizations of its factors). With B (d_out × r) and A (r × d_in):

    B = Q_B R_B,   Aᵀ = Q_A R_A        (thin Householder QR, Q orthonormal columns)
    s·B·A = Q_B (s R_B R_Aᵀ) Q_Aᵀ = (Q_B U) Σ (Q_A V)ᵀ   where  s R_B R_Aᵀ = U Σ Vᵀ   (r × r SVD)

so Σ are exactly the singular values of ΔW, Q_B U and Q_A V its singular vectors. Cost
O((d_in + d_out) r²), memory O((d_in + d_out) r); everything in float64. Unlike a Gram matrix
(ΔWᵀΔW or BᵀB), no condition number is squared, so small singular values keep their accuracy.

Metrics of a spectrum σ₁ ≥ … ≥ σ_r ≥ 0 (energy = σ², Frobenius² = Σσ²):

* energy rank at p: the smallest k with Σ_{i≤k} σᵢ² ≥ p·Σσᵢ²  (0 for ΔW = 0);
* stable rank: ‖ΔW‖_F² / ‖ΔW‖₂² = Σσ² / σ₁² (Rudelson & Vershynin 2007);
* effective rank: exp(H(p)), pᵢ = σᵢ / Σσⱼ, H the Shannon entropy (Roy & Vetterli 2007,
  "The effective rank: a measure of effective dimensionality", EUSIPCO);
* utilization: effective rank / r.

Best rank-k approximation: Σ truncated to its k largest values (Eckart & Young 1936); its relative
squared Frobenius error is 1 − retained energy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

ENERGY_LEVELS = (0.90, 0.95, 0.99)


# --- factored SVD ------------------------------------------------------------------------------
def factored_svd(A: Any, B: Any, scale: float = 1.0, vectors: bool = False):
    """Singular values (descending, float64 numpy) of ``scale · B @ A``; with ``vectors`` also
    (U, S, Vh) as float64 torch tensors with ``scale·B@A = U diag(S) Vh`` (U: d_out×k, Vh: k×d_in).

    A: (r, d_in), B: (d_out, r), any float dtype. ΔW is never formed.
    """
    import torch

    A64 = A.detach().to(torch.float64)
    B64 = B.detach().to(torch.float64)
    if not vectors:
        R_B = torch.linalg.qr(B64, mode="r")[1]  # (min(d_out, r), r)
        R_A = torch.linalg.qr(A64.T, mode="r")[1]  # (min(d_in, r), r)
        core = (R_B @ R_A.T) * float(scale)
        return torch.linalg.svdvals(core).numpy()
    Q_B, R_B = torch.linalg.qr(B64, mode="reduced")
    Q_A, R_A = torch.linalg.qr(A64.T, mode="reduced")
    U_c, S, Vh_c = torch.linalg.svd((R_B @ R_A.T) * float(scale), full_matrices=False)
    return Q_B @ U_c, S, (Q_A @ Vh_c.T).T


def best_rank_k(A: Any, B: Any, scale: float, k: int, new_scale: float | None = None, dtype: Any = None):
    """Factors (A_k (k × d_in), B_k (d_out × k)) with ``new_scale · B_k @ A_k`` the best rank-k
    approximation of ``scale · B @ A`` (Eckart–Young). √σ is split evenly between the factors:
    B_k = U_k diag(√(σ/new_scale)), A_k = diag(√(σ/new_scale)) V_kᵀ. ``new_scale`` defaults to
    ``scale``; the factors are returned in ``dtype`` (default: A's dtype)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    new_scale = scale if new_scale is None else new_scale
    U, S, Vh = factored_svd(A, B, scale, vectors=True)
    return rank_k_factors(U, S, Vh, k, new_scale, dtype or A.dtype)


def rank_k_factors(U: Any, S: Any, Vh: Any, k: int, new_scale: float, dtype: Any):
    """(A_k, B_k) of ``best_rank_k`` from a precomputed ``factored_svd(..., vectors=True)`` (U, S, Vh),
    so several k reuse one SVD: B_k = U_k diag(√(σ/new_scale)), A_k = diag(√(σ/new_scale)) V_kᵀ,
    zero-padded when k exceeds the rank available."""
    import torch

    if k < 1:
        raise ValueError("k must be at least 1")
    k_avail = S.shape[0]
    root = torch.sqrt(S[:k] / float(new_scale))
    B_k = U[:, :k] * root
    A_k = root[:, None] * Vh[:k]
    if k > k_avail:  # asked for more rank than ΔW has: pad with zero directions
        B_k = torch.cat([B_k, B_k.new_zeros(B_k.shape[0], k - k_avail)], 1)
        A_k = torch.cat([A_k, A_k.new_zeros(k - k_avail, A_k.shape[1])], 0)
    return A_k.to(dtype).contiguous(), B_k.to(dtype).contiguous()


# --- metrics -----------------------------------------------------------------------------------
def energy_fraction(sigma: np.ndarray, k: int) -> float:
    """Σ_{i≤k} σᵢ² / Σσᵢ² (1.0 for ΔW = 0): the energy a rank-k truncation keeps."""
    e = np.asarray(sigma, dtype=np.float64) ** 2
    total = e.sum()
    return 1.0 if total == 0 else float(e[:k].sum() / total)


def energy_rank(sigma: np.ndarray, p: float) -> int:
    """Smallest k with Σ_{i≤k} σᵢ² ≥ p·Σσᵢ² (0 when ΔW = 0)."""
    e = np.asarray(sigma, dtype=np.float64) ** 2
    total = e.sum()
    if total == 0:
        return 0
    cum = np.cumsum(e) / total
    return int(min(np.searchsorted(cum, p - 1e-12) + 1, len(e)))


def stable_rank(sigma: np.ndarray) -> float:
    """‖ΔW‖_F² / ‖ΔW‖₂² = Σσ²/σ₁² (0 when ΔW = 0)."""
    s = np.asarray(sigma, dtype=np.float64)
    return 0.0 if s.size == 0 or s[0] == 0 else float((s**2).sum() / s[0] ** 2)


def effective_rank(sigma: np.ndarray) -> float:
    """Roy & Vetterli (2007): exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ/Σσⱼ (0 when ΔW = 0)."""
    s = np.asarray(sigma, dtype=np.float64)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


@dataclasses.dataclass
class Spectrum:
    """Spectrum metrics of one module's ΔW."""

    r: int
    singular_values: list[float]
    energy_rank_90: int
    energy_rank_95: int
    energy_rank_99: int
    stable_rank: float
    effective_rank: float
    utilization: float
    frobenius_norm: float
    spectral_norm: float


def spectrum_metrics(sigma: np.ndarray, r: int) -> Spectrum:
    s = np.asarray(sigma, dtype=np.float64)
    eff = effective_rank(s)
    return Spectrum(
        r=int(r),
        singular_values=[float(x) for x in s],
        energy_rank_90=energy_rank(s, 0.90),
        energy_rank_95=energy_rank(s, 0.95),
        energy_rank_99=energy_rank(s, 0.99),
        stable_rank=stable_rank(s),
        effective_rank=eff,
        utilization=eff / r if r else 0.0,
        frobenius_norm=float(math.sqrt((s**2).sum())),
        spectral_norm=float(s[0]) if s.size else 0.0,
    )


# --- rank allocation ---------------------------------------------------------------------------
@dataclasses.dataclass
class Allocation:
    ranks: list[int]
    cost: int
    retained_energy: float
    """Σ over modules of the kept σ² (absolute)."""
    total_energy: float
    upper_bound: float
    """No allocation within the budget keeps more than this (the LP relaxation's value)."""


def allocate_ranks(
    spectra: Sequence[np.ndarray],
    costs: Sequence[int],
    budget: int,
    min_rank: int = 1,
    max_ranks: Sequence[int] | None = None,
) -> Allocation:
    """Ranks kᵢ (min_rank ≤ kᵢ ≤ max_rankᵢ) maximizing Σᵢ Σ_{j≤kᵢ} σᵢⱼ² subject to Σᵢ kᵢ·costᵢ ≤ budget.

    The j-th rank of module i costs costᵢ = d_in + d_out parameters and keeps σᵢⱼ² of energy.
    Greedy: take units in decreasing σᵢⱼ²/costᵢ (within a module that order is j = 1, 2, …
    because σ is sorted), skipping a module once its next unit no longer fits.

    Optimality. The ratios are non-increasing within each module, so the greedy order is the
    order of the fractional (LP) relaxation of this knapsack. Hence (i) while no unit has been
    skipped, the greedy allocation is optimal for the budget it has spent (an LP optimum that is
    integral); (ii) when all costs are equal it is optimal for the budget (the LP optimum is
    integral); (iii) in general OPT ≤ ``upper_bound`` = greedy prefix + the fractional part of
    the first unit that did not fit, so the greedy is within one unit's energy of the optimum.
    """
    n = len(spectra)
    spectra = [np.asarray(s, dtype=np.float64) for s in spectra]
    caps = [len(s) for s in spectra] if max_ranks is None else [min(int(m), len(s)) for m, s in zip(max_ranks, spectra)]
    floor = [min(min_rank, c) for c in caps]
    ranks = list(floor)
    cost = sum(k * c for k, c in zip(ranks, costs))
    if cost > budget:
        raise ValueError(f"budget {budget} is below the minimum allocation cost {cost}")
    units = [(-(spectra[i][j] ** 2) / costs[i], i, j) for i in range(n) for j in range(floor[i], caps[i])]
    units.sort()
    blocked = [False] * n
    upper = None
    kept = sum(float((spectra[i][: ranks[i]] ** 2).sum()) for i in range(n))
    for neg_ratio, i, j in units:
        if blocked[i]:
            continue
        if cost + costs[i] > budget:
            blocked[i] = True
            if upper is None:  # LP bound: prefix + fraction of the first unit that does not fit
                upper = kept + (budget - cost) * (-neg_ratio)
            continue
        ranks[i] += 1
        cost += costs[i]
        kept += float(spectra[i][j] ** 2)
    total = sum(float((s**2).sum()) for s in spectra)
    return Allocation(ranks, int(cost), kept, total, kept if upper is None else max(upper, kept))
