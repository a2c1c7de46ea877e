"""analyze: spectra equal the dense SVD of PEFT's ΔW, --base ratios, the recommendation rule, CLI JSON."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from loradial.adapters.analysis import analyze, recommend_ranks, sigma_max
from loradial.errors import LoradialError
from test_adapter_support import peft_adapter, peft_delta, save_base, tiny_model

LORA = dict(arch="llama", r=6, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
            rank_pattern={"down_proj": 4}, use_rslora=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyze")
    pm, path = peft_adapter(tmp, name="a", **LORA)
    return tmp, pm, path


def test_spectra_equal_dense_svd(made):
    tmp, pm, path = made
    res = analyze(path)
    assert res.n_modules == 7 and res.use_rslora
    for m in res.modules:
        dense = torch.linalg.svdvals(peft_delta(pm, m.name)).numpy()
        np.testing.assert_allclose(m.singular_values, dense[: m.r], rtol=1e-5, atol=1e-6 * dense[0])
        e = np.cumsum(dense**2) / (dense**2).sum()
        assert m.energy_rank_90 == int(np.searchsorted(e, 0.9 - 1e-12) + 1)
        assert m.frobenius_norm == pytest.approx(float(np.sqrt((dense**2).sum())), rel=1e-5)
        assert m.stable_rank == pytest.approx(float((dense**2).sum() / dense[0] ** 2), rel=1e-5)
        assert 0 < m.utilization <= 1
    assert {m.r for m in res.modules if "down_proj" in m.name} == {4}
    summ = res.summary
    assert set(summ["per_type"]) == {"model.embed_tokens", "model.layers.*.self_attn.q_proj",
                                     "model.layers.*.self_attn.v_proj", "model.layers.*.mlp.down_proj"}
    assert [g["layer"] for g in summ["per_layer"]] == [0, 1]
    assert summ["per_layer"][0]["n_modules"] == 3


def test_base_ratios(made):
    tmp, pm, path = made
    base = tiny_model("llama")
    res = analyze(path, base=save_base(base, tmp))
    for m in res.modules:
        W = base.get_submodule(m.name).weight.detach().double()
        D = peft_delta(pm, m.name)
        assert m.relative_norm == pytest.approx(float(D.norm() / W.norm()), rel=1e-5)
        assert m.relative_spectral_norm == pytest.approx(float(torch.linalg.matrix_norm(D, 2) / torch.linalg.matrix_norm(W, 2)), rel=1e-5)
    with pytest.raises(LoradialError, match="not found"):
        analyze(path, base=tmp / "missing")


def test_sigma_max_power_iteration(monkeypatch):
    an = importlib.import_module("loradial.adapters.analysis")

    g = torch.Generator().manual_seed(0)
    W = torch.randn(60, 40, generator=g) @ torch.diag(torch.linspace(3, 0.1, 40))
    exact = float(torch.linalg.matrix_norm(W.double(), 2))
    assert sigma_max(W) == pytest.approx(exact, rel=1e-10)
    monkeypatch.setattr(an, "EXACT_SIGMA_MAX_NUMEL", 0)
    assert sigma_max(W) == pytest.approx(exact, rel=1e-4)


def _rep(name, sig, r, d=10):
    from loradial.adapters.analysis import ModuleReport
    from loradial.adapters.spectrum import spectrum_metrics

    import dataclasses

    met = spectrum_metrics(np.asarray(sig, dtype=float), r)
    return ModuleReport(name=name, type="t", layer=0, kind="linear", d_in=d, d_out=d, alpha=r, scale=1.0,
                        **dataclasses.asdict(met))


def test_recommendation_rule():
    # 10 modules: nine need 3 ranks for 90 % energy, one needs 7 → 90 % coverage at rank 4 (power of two ≥ 3)
    flat3 = [1, 1, 1, 0.01, 0, 0, 0, 0]
    flat7 = [1, 1, 1, 1, 1, 1, 1, 0.01]
    reps = [_rep(f"m.{i}", flat3, 8) for i in range(9)] + [_rep("m.9", flat7, 8)]
    rec = recommend_ranks(reps, energy=0.9, coverage=0.9)
    assert rec["rank"] == 4 and rec["modules_meeting_energy"] == pytest.approx(0.9)
    assert rec["rank_params"] == 10 * 4 * 20 and rec["budget"] == rec["rank_params"]
    assert rec["pattern_params"] <= rec["budget"]
    assert rec["pattern_retained_energy"] >= rec["rank_retained_energy"] - 1e-12
    assert rec["rank_pattern"]["m.9"] > rec["rank_pattern"]["m.0"]  # the budget goes where the energy is
    assert recommend_ranks(reps, energy=0.9, coverage=1.0)["rank"] == 8
    # never above the trained rank, even when the power of two would be
    reps6 = [_rep(f"m.{i}", [1] * 6, 6) for i in range(3)]
    assert recommend_ranks(reps6, energy=0.99)["rank"] == 6
    with pytest.raises(LoradialError):
        recommend_ranks(reps, energy=1.5)
    with pytest.raises(LoradialError, match="below one rank"):
        recommend_ranks(reps, budget=5)


def test_cli_json_fields(made, cli):
    tmp, pm, path = made
    code, out, err = cli("analyze", path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1
    for m in doc["modules"]:
        for k in ("name", "r", "singular_values", "energy_rank_90", "energy_rank_95", "energy_rank_99",
                  "stable_rank", "effective_rank"):
            assert k in m
    assert {"rank", "rank_pattern"} <= set(doc["recommendation"]) and "summary" in doc
    code, out, err = cli("analyze", path, "--per-module")
    assert code == 0 and out == "" and "recommended rank" in err
    code, out, err = cli("analyze", tmp / "nope")
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_parallel_spectra_equal_serial(made):
    tmp, pm, path = made
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = analyze(path)
        torch.set_num_threads(2)  # 7 modules < 8: force the pool by lowering the threshold through a bigger adapter
        from loradial.adapters.format import load_adapter
        an = importlib.import_module("loradial.adapters.analysis")

        ad = load_adapter(path)
        big = dict(ad.modules)
        for n, m in ad.modules.items():
            big[n + "_copy"] = m
        ad.modules = big
        got = [sig for _, sig in an._module_spectra(ad, progress=False)]
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    ref = {m.name: m.singular_values for m in serial.modules}
    for (name, m), sig in zip(big.items(), got):
        np.testing.assert_array_equal(sig, ref[name.removesuffix("_copy")])
