"""analyze --data: the truncation curve against PEFT's resized adapters, a planted-rank adapter, one model
load, DoRA, the JSON fields the report reads, CLI errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from loradial.adapters import evaluate as ev
from loradial.adapters import truncation as tr
from loradial.adapters.format import load_adapter
from loradial.adapters.analysis import analyze
from loradial.errors import LoradialError
from loradial.adapters.surgery import resize
from test_adapter_support import tokens
from test_engine_fixtures import pc_records, save_tiny_model, tiny_llama, tiny_tokenizer, write_jsonl

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _batch(data_path, model_dir):
    from loradial import data as d

    tok = tiny_tokenizer()
    exs = d.tokenize_records(d.load_records(data_path), tok, 512)
    return d.collate(exs, tok.pad_token_id)


def _peft_loss(model_dir, adapter_dir, batch) -> float:
    pm = peft.PeftModel.from_pretrained(tiny_llama(), str(adapter_dir)).eval()
    with torch.no_grad():
        return float(pm(**batch).loss)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A rank-2 LoRA trained briefly on the eval data, planted in r=8 factors (B8·A8 = B2·A2 exactly, s equal)."""
    tmp = tmp_path_factory.mktemp("trunc")
    model_dir = save_tiny_model(tmp / "model")
    data = write_jsonl(tmp / "eval.jsonl", pc_records(8))
    batch = _batch(data, model_dir)
    torch.manual_seed(0)
    pm2 = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS))
    opt = torch.optim.Adam([p for p in pm2.parameters() if p.requires_grad], lr=3e-2)
    pm2.train()
    for _ in range(25):
        opt.zero_grad()
        pm2(**batch).loss.backward()
        opt.step()
    pm8 = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mod in pm2.base_model.model.named_modules():
            if not hasattr(mod, "lora_A"):
                continue
            A2, B2 = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            M = torch.randn(8, 8, generator=g, dtype=torch.float64) + 3 * torch.eye(8, dtype=torch.float64)
            A8 = M @ torch.cat([A2.double(), torch.randn(6, A2.shape[1], generator=g, dtype=torch.float64)])
            B8 = torch.cat([B2.double(), torch.zeros(B2.shape[0], 6, dtype=torch.float64)], 1) @ torch.linalg.inv(M)
            tgt = pm8.base_model.model.get_submodule(name)
            tgt.lora_A["default"].weight.copy_(A8.float())
            tgt.lora_B["default"].weight.copy_(B8.float())
    pm8.save_pretrained(str(tmp / "planted"))
    return tmp, model_dir, data, batch


def test_planted_rank_curve_is_flat(planted, monkeypatch):
    tmp, model_dir, data, batch = planted
    calls = []
    from transformers import AutoModelForCausalLM

    orig = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", staticmethod(lambda *a, **k: calls.append(1) or orig(*a, **k)))
    res = analyze(tmp / "planted", model=model_dir, data=data, scales=[0.5, 1], device="cpu")
    assert len(calls) == 1  # one model load for the whole curve, budgeted points and scales
    curve = {p.k: p for p in res.truncation_curve}
    assert sorted(curve) == [0, 1, 2, 4, 8]
    base, full = curve[0].eval_loss, curve[8].eval_loss
    assert full < base - 1e-3  # the trained adapter helps
    for k in (2, 4):
        assert abs(curve[k].eval_loss - full) <= 1e-6
        assert curve[k].retained == pytest.approx(1.0, abs=1e-4)
    assert curve[1].retained < 0.999 and curve[0].retained == 0.0 and curve[8].retained == 1.0
    assert res.recommended_rank_data == 2
    assert res.recommended_rank_spectrum == res.recommendation["rank"]
    assert curve[2].params == 2 * sum(m.d_in + m.d_out for m in load_adapter(tmp / "planted").modules.values())
    assert all(p.budgeted_params <= p.params for p in curve.values() if p.k > 0)
    # full adapter = PEFT's own loss; scale 1 = the full adapter
    assert full == pytest.approx(_peft_loss(model_dir, tmp / "planted", batch), rel=1e-5)
    assert [p["scale"] for p in res.scale_curve] == [0.5, 1.0]
    assert res.scale_curve[1]["eval_loss"] == pytest.approx(full, rel=1e-6)
    assert res.evaluation["base_eval_loss"] == base


@pytest.mark.parametrize("k", [1, 3])
def test_truncated_loss_equals_peft_resized(planted, tmp_path, k):
    tmp, model_dir, data, batch = planted
    res = analyze(tmp / "planted", model=model_dir, data=data, ranks=[k], device="cpu")
    resize(tmp / "planted", tmp_path / "small", rank=k)
    ref = _peft_loss(model_dir, tmp_path / "small", batch)
    got = next(p for p in res.truncation_curve if p.k == k).eval_loss
    assert abs(got - ref) <= 1e-5


@pytest.mark.parametrize("lora", [dict(r=6, lora_alpha=12, rank_pattern={"down_proj": 3}, use_rslora=True),
                                  dict(r=4, lora_alpha=8, use_dora=True)])
def test_truncated_forward_equals_peft(tmp_path, lora):
    """Cached-SVD truncation in the hooks = PEFT's forward of `loradial resize` (LoRA, rank_pattern, DoRA)."""
    torch.manual_seed(2)
    pm = peft.get_peft_model(tiny_llama(), peft.LoraConfig(target_modules=TARGETS, init_lora_weights=False, **lora))
    pm.save_pretrained(str(tmp_path / "ad"))
    ad = load_adapter(tmp_path / "ad")
    svds = tr._svd_cache(list(ad.modules.values()))
    x = tokens()
    base = tiny_llama()
    with torch.no_grad(), ev.AdapterHooks(base, ad) as hooks:
        for k in (1, 2):
            hooks.set_modules(tr.truncated_modules(ad, [k] * len(ad.modules), svds))
            resize(tmp_path / "ad", tmp_path / f"k{k}", rank=k)
            ref = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / f"k{k}")).eval()
            torch.testing.assert_close(base(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)


def test_dora_curve_is_marked_approximate(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "eval.jsonl", pc_records(4))
    torch.manual_seed(3)
    pm = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True,
                                                           init_lora_weights=False))
    pm.save_pretrained(str(tmp_path / "dora"))
    res = analyze(tmp_path / "dora", model=model_dir, data=data, device="cpu")
    assert [p.k for p in res.truncation_curve] == [0, 1, 2, 4]
    assert any("DoRA" in n and "approximat" in n for n in res.notes)
    full = res.truncation_curve[-1].eval_loss
    assert full == pytest.approx(_peft_loss(model_dir, tmp_path / "dora", _batch(data, model_dir)), rel=1e-5)


def test_pure_pieces():
    assert tr.check_ranks(None, 8) == [1, 2, 4, 8]
    assert tr.check_ranks(None, 12) == [1, 2, 4, 8, 12]
    assert tr.check_ranks([3, 1, 3], 6) == [1, 3, 6]
    for bad in ([0], [9], [1.5]):
        with pytest.raises(LoradialError):
            tr.check_ranks(bad, 8)
    assert tr.retained(3.0, 2.5, 2.0) == 0.5 and tr.retained(3.0, 2.5, 3.1) is None
    pts = [tr.TruncationPoint(k, 0, 0, r, 0) for k, r in ((0, 0.0), (1, 0.5), (2, 0.985), (4, 1.0))]
    assert tr.recommend_rank(pts, 0.98) == 2 and tr.recommend_rank(pts, 0.99) == 4
    assert tr.explain(4, 4, 0.98, 0.9, 0.9) is None
    assert "little eval loss" in tr.explain(2, 8, 0.98, 0.9, 0.9)
    assert "still matter" in tr.explain(16, 8, 0.98, 0.9, 0.9)


def test_cli_json_report_and_errors(planted, cli, tmp_path):
    tmp, model_dir, data, batch = planted
    ad = tmp / "planted"
    code, out, err = cli("analyze", ad, "--model", model_dir, "--data", data, "--ranks", "1,2", "--scales", "0.5,1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [p["k"] for p in doc["truncation_curve"]] == [0, 1, 2, 8]
    assert {"k", "eval_loss", "token_accuracy", "retained", "params", "budgeted_eval_loss",
            "budgeted_retained"} <= set(doc["truncation_curve"][1])
    assert doc["recommended_rank_data"] == 2 and "recommended_rank_spectrum" in doc and len(doc["scale_curve"]) == 2
    # the report package reads these names
    from loradial.reports.load import load_analysis
    from loradial.reports.plots import truncation_figure

    (tmp_path / "analysis.json").write_text(out)
    an = load_analysis(tmp_path, [])
    assert an.rank_data == 2 and an.rank_spectrum == doc["recommended_rank_spectrum"]
    assert len(an.truncation) == 4 and len(an.scale_curve) == 2 and truncation_figure(an) is not None
    code, out, err = cli("analyze", ad, "--json")  # without --data: no eval fields in the JSON
    assert code == 0 and "truncation_curve" not in json.loads(out)
    code, out, err = cli("analyze", ad, "--model", model_dir, "--data", data, "--ranks", "1,2")  # human output
    assert code == 0 and "recommended rank from eval data: 2" in err and "train at r=2 and r=4" in err
    for args, msg in [
        (("--model", model_dir, "--data", tmp_path / "missing.jsonl"), ""),
        (("--model", model_dir, "--data", data, "--ranks", "0"), "invalid rank"),
        (("--model", model_dir, "--data", data, "--ranks", "1,x"), "invalid rank"),
        (("--model", model_dir, "--data", data, "--ranks", "64"), "exceeds"),
        (("--model", model_dir, "--data", data, "--retain", "1.5"), "--retain"),
        (("--data", data), "go together"),
        (("--ranks", "2",), "need --model"),
        (("--model", tmp_path, "--data", data), "no model"),
    ]:
        code, out, err = cli("analyze", ad, *args)
        assert code == 2 and out == "" and msg in err, (args, err)
