"""Factored SVD against the dense SVD, metrics on known spectra, and the rank allocator against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from loradial.adapters.spectrum import (
    allocate_ranks,
    best_rank_k,
    effective_rank,
    energy_fraction,
    energy_rank,
    factored_svd,
    spectrum_metrics,
    stable_rank,
)


def _factors(d_out, d_in, r, seed=0, decay=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    if decay is not None:  # graded spectrum: scale B's columns
        B = B * torch.tensor([decay**i for i in range(r)], dtype=torch.float64)
    return A.to(dtype), B.to(dtype)


@pytest.mark.parametrize("d_out,d_in,r", [(40, 24, 8), (16, 64, 8), (6, 30, 10), (30, 5, 8), (48, 48, 1)])
def test_factored_svd_equals_dense(d_out, d_in, r):
    A, B = _factors(d_out, d_in, r, decay=0.3)
    s = 0.7
    dense = s * (B.double() @ A.double())
    ref = torch.linalg.svdvals(dense).numpy()
    got = factored_svd(A, B, s)
    k = min(d_out, d_in, r)
    assert got.shape[0] == k
    np.testing.assert_allclose(got, ref[:k], rtol=1e-10, atol=1e-12 * ref[0])
    assert np.all(ref[k:] < 1e-10 * ref[0])
    U, S, Vh = factored_svd(A, B, s, vectors=True)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, dense, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), rtol=0, atol=1e-10)


def test_small_singular_values_keep_relative_accuracy():
    # σ spanning 1e0..1e-7: a float64 Gram (BᵀB) would lose the smallest ones; thin QR does not
    r, d = 8, 50
    g = torch.Generator().manual_seed(1)
    Qo, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    Qi, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    sig = torch.logspace(0, -7, r, dtype=torch.float64)
    B = Qo * sig  # B = Qo diag(σ), A = Qiᵀ: ΔW has exactly these singular values
    got = factored_svd(Qi.T, B, 1.0)
    np.testing.assert_allclose(got, sig.numpy(), rtol=1e-8)


def test_best_rank_k_is_eckart_young():
    A, B = _factors(30, 20, 6, decay=0.5)
    s = 2.0
    dense = s * (B.double() @ A.double())
    U, S, Vh = torch.linalg.svd(dense)
    for k in (1, 3, 6, 8):
        Ak, Bk = best_rank_k(A, B, s, k, new_scale=0.5, dtype=torch.float64)
        assert Ak.shape == (k, 20) and Bk.shape == (30, k)
        kk = min(k, 6)
        ref = U[:, :kk] @ torch.diag(S[:kk]) @ Vh[:kk]
        torch.testing.assert_close(0.5 * Bk @ Ak, ref, rtol=1e-10, atol=1e-10)
        # the two factors carry √σ each (balanced): equal column/row norms
        np.testing.assert_allclose(Bk.norm(dim=0)[:kk].numpy(), Ak.norm(dim=1)[:kk].numpy(), rtol=1e-10)
        err = torch.linalg.matrix_norm(dense - 0.5 * Bk @ Ak) ** 2 / torch.linalg.matrix_norm(dense) ** 2
        assert float(err) == pytest.approx(1 - energy_fraction(S.numpy(), kk), abs=1e-12)


def test_metrics_on_known_spectra():
    flat = np.ones(8)
    assert effective_rank(flat) == pytest.approx(8)
    assert stable_rank(flat) == pytest.approx(8)
    assert energy_rank(flat, 0.9) == 8 and energy_rank(flat, 0.5) == 4
    one = np.array([3.0, 0, 0, 0])
    assert effective_rank(one) == pytest.approx(1) and stable_rank(one) == 1 and energy_rank(one, 0.99) == 1
    zero = np.zeros(4)
    m = spectrum_metrics(zero, 4)
    assert (m.energy_rank_90, m.stable_rank, m.effective_rank, m.frobenius_norm) == (0, 0, 0, 0)
    s = np.array([2.0, 1.0])
    m = spectrum_metrics(s, 4)
    assert m.energy_rank_90 == 2 and m.energy_rank_95 == 2 and m.frobenius_norm == pytest.approx(math.sqrt(5))
    p = np.array([2 / 3, 1 / 3])
    assert m.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert m.utilization == pytest.approx(m.effective_rank / 4)
    assert energy_rank(np.array([3.0, 1.0]), 0.9) == 1  # 9/10 exactly reaches 0.9


def _brute(spectra, costs, budget, min_rank, caps):
    best = -1.0
    for ks in itertools.product(*[range(min(min_rank, c), c + 1) for c in caps]):
        cost = sum(k * c for k, c in zip(ks, costs))
        if cost <= budget:
            best = max(best, sum(float((s[:k] ** 2).sum()) for s, k in zip(spectra, ks)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 3
    spectra = [np.sort(rng.random(rng.integers(2, 5)))[::-1] * rng.uniform(0.5, 3) for _ in range(n)]
    caps = [len(s) for s in spectra]
    equal = seed % 2 == 0
    costs = [7] * n if equal else [int(c) for c in rng.integers(3, 12, n)]
    lo = sum(costs)  # min_rank=1 everywhere
    for budget in range(lo, sum(c * k for c, k in zip(costs, caps)) + 2, 3):
        alloc = allocate_ranks(spectra, costs, budget, min_rank=1)
        assert alloc.cost <= budget and all(1 <= k <= c for k, c in zip(alloc.ranks, caps))
        opt = _brute(spectra, costs, budget, 1, caps)
        assert alloc.retained_energy <= opt + 1e-12
        assert opt <= alloc.upper_bound + 1e-12  # the LP bound really bounds the optimum
        if equal:
            assert alloc.retained_energy == pytest.approx(opt, abs=1e-12)
        if alloc.upper_bound == alloc.retained_energy:  # nothing skipped: greedy is the LP optimum, hence optimal
            assert alloc.retained_energy == pytest.approx(opt, abs=1e-12)


def test_allocation_errors_and_caps():
    with pytest.raises(ValueError):
        allocate_ranks([np.ones(3)], [10], budget=5)
    a = allocate_ranks([np.array([3.0, 2, 1]), np.array([1.0, 0.5])], [1, 1], budget=100, max_ranks=[2, 2])
    assert a.ranks == [2, 2] and a.retained_energy == pytest.approx(9 + 4 + 1 + 0.25)
