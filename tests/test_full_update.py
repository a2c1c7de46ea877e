"""Full fine-tunes: analyze FT --base BASE (spectrum of W_ft − W_base) and resize --from-full (LoRA extraction).

A tiny base model gets a planted update of known rank in every linear weight (one module is left unchanged),
both are saved with save_pretrained; the spectra must equal torch.linalg.svdvals of the planted ΔW, and the
extracted adapter, loaded by PEFT on the base, must reproduce the fine-tuned logits (k ≥ rank) or PEFT's ΔW
must equal the truncated SVD (k < rank)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from loradial.adapters.extraction import resize_from_full
from loradial.adapters.format import load_adapter
from loradial.adapters.full_update import analyze_full, delta_weight
from loradial.errors import LoradialError
from test_adapter_support import save_base, tiny_model, tokens

SIGMA = {3: [1.0, 0.6, 0.3], 1: [0.8]}  # planted rank -> singular values
UNCHANGED = {"llama": "model.layers.1.self_attn.k_proj", "gpt2": "transformer.h.1.attn.c_proj"}


def _planted_rank(arch: str, name: str) -> int:
    return 1 if name.endswith(("down_proj", "mlp.c_proj")) else 3


def _linears(model):
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)) and mod is not head:
            yield name, mod, isinstance(mod, Conv1D)


def _plant(arch: str, base):
    """A copy of ``base`` with ΔW = U diag(σ) Vᵀ (linear orientation) added to each linear weight but one;
    returns (fine-tuned model, {name: ΔW as stored − base, float64, linear orientation})."""
    ft = copy.deepcopy(base)
    g = torch.Generator().manual_seed(7)
    deltas = {}
    for name, mod, conv in _linears(ft):
        w = mod.weight
        d_out, d_in = (w.shape[1], w.shape[0]) if conv else tuple(w.shape)
        if name != UNCHANGED[arch]:
            s = torch.tensor(SIGMA[_planted_rank(arch, name)], dtype=torch.float64)
            U = torch.linalg.qr(torch.randn(d_out, len(s), generator=g, dtype=torch.float64))[0]
            V = torch.linalg.qr(torch.randn(d_in, len(s), generator=g, dtype=torch.float64))[0]
            D = U @ torch.diag(s) @ V.T
            with torch.no_grad():
                w += (D.T if conv else D).to(w.dtype)
        stored = (w.detach().double() - base.get_submodule(name).weight.detach().double())
        deltas[name] = stored.T if conv else stored
    return ft.eval(), deltas


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def made(request, tmp_path_factory):
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"full_{arch}")
    base = tiny_model(arch)
    ft, deltas = _plant(arch, base)
    return arch, tmp, save_base(base, tmp, "base"), save_base(ft, tmp, "ft"), ft, deltas


def _peft_logits(base_dir, adapter_dir, x):
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    pm = peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return pm(x).logits, pm


def test_spectra_equal_svdvals_of_the_planted_update(made):
    arch, tmp, base_dir, ft_dir, ft, deltas = made
    res = analyze_full(ft_dir, base_dir, device="cpu")
    assert res.n_modules == len(deltas) and res.n_unchanged == 1
    assert {s["name"] for s in res.skipped} >= {"lm_head"}
    for m in res.modules:
        D = deltas[m.name]
        assert (m.d_out, m.d_in) == tuple(D.shape)
        assert m.kind == ("conv1d" if arch == "gpt2" else "linear")
        np.testing.assert_allclose(m.singular_values, torch.linalg.svdvals(D).numpy(), rtol=1e-6, atol=1e-9)
        assert m.r == min(D.shape)
        if m.name == UNCHANGED[arch]:
            assert m.energy_rank_99 == 0 and m.spectral_norm == 0
        else:
            k = _planted_rank(arch, m.name)
            assert m.energy_rank_99 == k
            s = np.array(SIGMA[k])
            assert m.stable_rank == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-6)
    assert res.recommendation["rank"] in (1, 2, 4)
    assert res.to_dict()["modules"][0]["singular_values"]


def test_delta_orientation_conv1d():
    W_b = torch.randn(4, 6)  # Conv1D stores (d_in, d_out)
    W_f = W_b + torch.arange(24.0).reshape(4, 6)
    D = delta_weight(W_f, W_b, "conv1d")
    assert D.shape == (6, 4) and D.dtype == torch.float64
    torch.testing.assert_close(D, (W_f - W_b).double().T)
    assert delta_weight(W_f, W_b, "linear").shape == (4, 6)


@pytest.mark.parametrize("k,alpha", [(3, None), (5, 16.0)])
def test_extracted_adapter_reproduces_the_fine_tune(made, k, alpha):
    arch, tmp, base_dir, ft_dir, ft, deltas = made
    out = tmp / f"lora_{k}_{alpha}"
    res = resize_from_full(ft_dir, base_dir, out, rank=k, alpha=alpha, device="cpu")
    ad = load_adapter(out)  # a valid PEFT adapter by loradial's own reader too
    assert UNCHANGED[arch] not in ad.modules and len(ad.modules) == len(deltas) - 1
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] == (arch == "gpt2")
    assert cfg["r"] == k and not cfg["rank_pattern"] and cfg["lora_alpha"] == (alpha or k)
    assert res.retained_energy == pytest.approx(1.0, abs=1e-12)
    x = tokens()
    logits, pm = _peft_logits(base_dir, out, x)
    with torch.no_grad():
        ref = ft(x).logits
    assert (logits - ref).abs().max() <= 1e-5
    # PEFT wrapped exactly the extracted modules (target_modules selects no unchanged module)
    wrapped = {n.removeprefix("base_model.model.") for n, mod in pm.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == set(ad.modules)


def test_truncated_extraction_equals_truncated_svd(made):
    arch, tmp, base_dir, ft_dir, ft, deltas = made
    out = tmp / "lora_1"
    res = resize_from_full(ft_dir, base_dir, out, rank=1, device="cpu")
    _, pm = _peft_logits(base_dir, out, tokens())
    for name, D in deltas.items():
        if name == UNCHANGED[arch]:
            continue
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        trunc = S[0] * torch.outer(U[:, 0], Vh[0])
        got = pm.base_model.model.get_submodule(name).get_delta_weight("default").double()
        got = got.T if arch == "gpt2" else got  # PEFT returns the base weight's orientation
        torch.testing.assert_close(got, trunc, rtol=0, atol=1e-6)
        assert res.ranks[name] == 1
    kept = [float(S[0] ** 2 / (S**2).sum()) for D in deltas.values() if (S := torch.linalg.svdvals(D)).any()]
    assert 0 < res.retained_energy < 1 and min(kept) - 1e-9 <= res.retained_energy <= max(kept) + 1e-9


def test_energy_extraction_writes_a_rank_pattern(made):
    arch, tmp, base_dir, ft_dir, ft, deltas = made
    out = tmp / "lora_e"
    res = resize_from_full(ft_dir, base_dir, out, energy=0.999, device="cpu")
    assert {res.ranks[n] for n in res.ranks} == {1, 3}
    for n, k in res.ranks.items():
        assert k == _planted_rank(arch, n)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] and cfg["alpha_pattern"]  # alpha = r per module keeps the scale at 1
    x = tokens()
    logits, _ = _peft_logits(base_dir, out, x)
    with torch.no_grad():
        assert (logits - ft(x).logits).abs().max() <= 1e-5


def test_include_embeddings_and_changed_norms(tmp_path):
    base = tiny_model("llama")
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.model.embed_tokens.weight[:, :2] += 0.5  # rank ≤ 2 change of the embedding
        ft.model.norm.weight += 0.1
        ft.model.layers[0].self_attn.q_proj.weight += 0.01
    b, f = save_base(base, tmp_path, "b"), save_base(ft, tmp_path, "f")
    res = analyze_full(f, b, include_embeddings=True, device="cpu")
    emb = next(m for m in res.modules if m.name == "model.embed_tokens")
    assert (emb.d_in, emb.d_out, emb.kind) == (128, 32, "embedding") and 1 <= emb.energy_rank_99 <= 2
    assert "model.norm.weight" in res.other_changed and any("not carry" in n for n in res.notes)
    out = resize_from_full(f, b, tmp_path / "e", rank=2, include_embeddings=True, device="cpu").out
    ad = load_adapter(out)
    assert ad.modules["model.embed_tokens"].kind == "embedding"
    assert set(ad.modules) == {"model.embed_tokens", "model.layers.0.self_attn.q_proj"}


def test_mismatched_architectures(tmp_path, cli):
    b = save_base(tiny_model("llama"), tmp_path, "b")
    wider = save_base(tiny_model("llama", intermediate_size=48), tmp_path, "w")
    gpt = save_base(tiny_model("gpt2"), tmp_path, "g")
    with pytest.raises(LoradialError, match="architectures differ") as e:
        analyze_full(wider, b, device="cpu")
    assert "--base must be the model" in e.value.hint
    code, out, err = cli("analyze", gpt, "--base", b, "--json")
    assert code == 2 and out == "" and "'gpt2' model but --base is a 'llama'" in err and "hint:" in err
    code, _, err = cli("resize", wider, "--from-full", "--base", b, "--rank", "2", "--out", tmp_path / "x")
    assert code == 2 and "architectures differ" in err
    code, _, err = cli("analyze", b)  # a full model without --base
    assert code == 2 and "add --base" in err
    code, _, err = cli("resize", b, "--from-full", "--rank", "2", "--out", tmp_path / "y")
    assert code == 2 and "needs --base" in err
    code, _, err = cli("resize", wider, "--from-full", "--base", wider, "--rank", "2", "--out", wider, "--overwrite")
    assert code == 2 and "fine-tuned model itself" in err and (wider / "config.json").is_file()


def test_cli_json(made, cli):
    arch, tmp, base_dir, ft_dir, ft, deltas = made
    code, out, _ = cli("analyze", ft_dir, "--base", base_dir, "--json", "--device", "cpu")
    assert code == 0
    d = json.loads(out)
    assert {"schema_version", "model", "base", "device", "dtype", "n_modules", "n_unchanged", "modules", "skipped",
            "other_changed", "summary", "recommendation", "notes"} <= set(d)
    m = d["modules"][0]
    assert {"name", "type", "kind", "d_in", "d_out", "singular_values", "energy_rank_90", "energy_rank_95",
            "energy_rank_99", "stable_rank", "effective_rank", "relative_norm"} <= set(m)
    assert d["dtype"] == "float64" and d["n_modules"] == len(deltas)
    code, out, _ = cli("resize", ft_dir, "--from-full", "--base", base_dir, "--rank", "2", "--out", tmp / "cli_r2", "--json",
                       "--svd-dtype", "float32")
    assert code == 0
    r = json.loads(out)
    assert r["mode"] == "rank" and set(r["ranks"].values()) == {2} and (tmp / "cli_r2" / "adapter_model.safetensors").is_file()
