"""resize / rescale / merge against PEFT 0.21 and the dense reference."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft.helpers import rescale_adapter_scale
from transformers import AutoModelForCausalLM

from loradial.adapters.format import delta_weight, load_adapter
from loradial.errors import LoradialError
from loradial.adapters.surgery import merge, rescale, resize
from test_adapter_support import made_adapters, peft_delta, save_base, tiny_model, tokens
from test_engine_fixtures import tiny_tokenizer

CASES = {
    "lora": dict(arch="llama", r=6, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                 rank_pattern={"down_proj": 4}, modules_to_save=["lm_head"]),
    "rslora": dict(arch="llama", r=6, lora_alpha=5, target_modules="all-linear", use_rslora=True,
                   alpha_pattern={"o_proj": 3}),
    "gpt2": dict(arch="gpt2", r=5, lora_alpha=7, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, lora_bias=True),
    "gpt2emb": dict(arch="gpt2", r=4, lora_alpha=4, target_modules=["c_fc", "wte"], fan_in_fan_out=True),
    "dora": dict(arch="llama", r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj"], use_dora=True),
    "doraemb": dict(arch="gpt2", r=3, lora_alpha=6, target_modules=["c_attn", "wte"], fan_in_fan_out=True, use_dora=True),
}


made = made_adapters(CASES)


def _load_peft(case, path):
    return peft.PeftModel.from_pretrained(tiny_model(CASES[case]["arch"]), str(path)).eval()


def _truncated_reference(pm, name, k):
    D = peft_delta(pm, name)
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    return U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]


@pytest.mark.parametrize("case", ["lora", "rslora", "gpt2", "gpt2emb"])
def test_resize_rank_equals_truncated_reference(made, case, tmp_path):
    pm, path = made[case]
    res = resize(path, tmp_path / "r3", rank=3)
    assert not res.approximate and 0 < res.retained_energy < 1
    out = _load_peft(case, tmp_path / "r3")  # PEFT loads what we wrote
    for name in load_adapter(path).modules:
        ref = _truncated_reference(pm, name, 3)
        torch.testing.assert_close(peft_delta(out, name), ref, rtol=1e-4, atol=1e-5)
        assert out.base_model.model.get_submodule(name).r["default"] == 3
    cfg = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert cfg["r"] == 3


def test_resize_energy_and_budget(made, tmp_path):
    pm, path = made["lora"]
    ad = load_adapter(path)
    res = resize(path, tmp_path / "e", energy=0.8)
    out = _load_peft("lora", tmp_path / "e")
    for name, k in res.ranks.items():
        torch.testing.assert_close(peft_delta(out, name), _truncated_reference(pm, name, k), rtol=1e-4, atol=1e-5)
    assert all(per["retained_energy"] >= 0.8 - 1e-9 for per in res.per_type.values())
    budget = sum((m.d_in + m.d_out) * 2 for m in ad.modules.values())
    res = resize(path, tmp_path / "b", budget=budget)
    assert res.params_after <= budget and len(set(res.ranks.values())) >= 1
    out = _load_peft("lora", tmp_path / "b")
    for name, k in res.ranks.items():
        assert out.base_model.model.get_submodule(name).r["default"] == k
        torch.testing.assert_close(peft_delta(out, name), _truncated_reference(pm, name, k), rtol=1e-4, atol=1e-5)
    with pytest.raises(LoradialError, match="exactly one"):
        resize(path, tmp_path / "x", rank=2, energy=0.9)
    with pytest.raises(LoradialError, match="below one rank"):
        resize(path, tmp_path / "x", budget=10)
    assert not (tmp_path / "x").exists()


def test_resize_dora_is_flagged(made, tmp_path):
    res = resize(made["dora"][1], tmp_path / "d", rank=2)
    assert res.approximate and res.notes
    ad = load_adapter(tmp_path / "d")
    assert all(m.magnitude is not None and m.r == 2 for m in ad.modules.values())
    _load_peft("dora", tmp_path / "d")


@pytest.mark.parametrize("case,fold", [("lora", False), ("rslora", True), ("gpt2", False), ("gpt2", True)])
def test_rescale_equals_peft_rescale_adapter_scale(made, case, fold, tmp_path):
    pm, path = made[case]
    rescale(path, tmp_path / "s", scale=0.4, fold=fold)
    out = _load_peft(case, tmp_path / "s")
    x = tokens()
    with torch.no_grad(), rescale_adapter_scale(pm, 0.4):
        ref = pm(x).logits
    with torch.no_grad():
        torch.testing.assert_close(out(x).logits, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["lora", "rslora", "gpt2", "dora"])
@pytest.mark.parametrize("fold", [False, True])
def test_switch_rule_keeps_logits(made, case, fold, tmp_path):
    pm, path = made[case]
    target = "lora" if load_adapter(path).use_rslora else "rslora"
    res = rescale(path, tmp_path / "t", to=target, fold=fold)
    assert res.outputs_identical and res.use_rslora == (target == "rslora")
    out = _load_peft(case, tmp_path / "t")
    assert out.peft_config["default"].use_rslora == (target == "rslora")
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(out(x).logits, pm(x).logits, rtol=1e-5, atol=1e-5)
    back = rescale(tmp_path / "t", tmp_path / "back", to="lora" if target == "rslora" else "rslora")
    assert back.outputs_identical
    a, b = load_adapter(path), load_adapter(tmp_path / "back")
    for name in a.modules:
        torch.testing.assert_close(delta_weight(b.modules[name]), delta_weight(a.modules[name]), rtol=1e-5, atol=1e-6)


def test_rescale_alpha_and_dora_refusal(made, tmp_path):
    pm, path = made["lora"]
    ad = load_adapter(path)
    res = rescale(path, tmp_path / "a", alpha=3)
    new = load_adapter(tmp_path / "a")
    for name, m in ad.modules.items():
        assert new.modules[name].alpha == 3
        assert res.factors[name] == pytest.approx(3 / m.alpha)
        torch.testing.assert_close(delta_weight(new.modules[name]), delta_weight(m) * 3 / m.alpha)
    with pytest.raises(LoradialError, match="not linear in s"):
        rescale(made["dora"][1], tmp_path / "d", scale=0.5)
    assert not (tmp_path / "d").exists()
    res = rescale(made["dora"][1], tmp_path / "d", scale=0.5, force=True)
    assert res.notes
    with pytest.raises(LoradialError):
        rescale(path, tmp_path / "z", scale=-1)


@pytest.mark.parametrize("case", ["lora", "rslora", "gpt2", "gpt2emb", "dora", "doraemb"])
def test_merge_equals_merge_and_unload(made, case, tmp_path):
    pm, path = made[case]
    base_dir = save_base(tiny_model(CASES[case]["arch"]), tmp_path)
    tiny_tokenizer().save_pretrained(str(base_dir))
    res = merge(path, base_dir, tmp_path / "m")
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(res.files)
    assert ("lm_head" in res.replaced_modules) == (case == "lora")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    ref = _load_peft(case, path)
    x = tokens()
    with torch.no_grad():
        logits_adapter = ref(x).logits
        tied_before = ref.base_model.model.get_input_embeddings().weight is ref.base_model.model.get_output_embeddings().weight
        ref_merged = ref.merge_and_unload()
        torch.testing.assert_close(merged(x).logits, logits_adapter, rtol=1e-4, atol=1e-5)
        if not res.untied_embeddings:
            sd_ref = ref_merged.state_dict()
            for k, v in merged.state_dict().items():
                torch.testing.assert_close(v, sd_ref[k], rtol=1e-5, atol=1e-6)
    assert res.untied_embeddings == (tied_before and case in ("gpt2emb", "doraemb"))


def test_merge_tied_embeddings_untied(made, tmp_path):
    # GPT-2 ties wte and lm_head; the adapter targets wte: the head must keep the base weights
    pm, path = made["gpt2emb"]
    base = tiny_model("gpt2")
    assert base.get_input_embeddings().weight is base.get_output_embeddings().weight
    res = merge(path, save_base(base, tmp_path), tmp_path / "m")
    assert res.untied_embeddings and any("untied" in n for n in res.notes)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    assert merged.config.tie_word_embeddings is False
    torch.testing.assert_close(merged.get_output_embeddings().weight, base.get_output_embeddings().weight)
    assert not torch.allclose(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_merge_errors(made, tmp_path):
    path = made["lora"][1]
    with pytest.raises(LoradialError, match="no model"):
        merge(path, tmp_path / "nomodel", tmp_path / "m")
    other = save_base(tiny_model("llama", hidden_size=64), tmp_path, "other")
    with pytest.raises(LoradialError, match="does not fit"):
        merge(path, other, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli_verbs(made, tmp_path, cli):
    path = made["lora"][1]
    code, out, err = cli("resize", path, "--rank", "2", "--out", tmp_path / "r", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and set(doc["ranks"].values()) == {2} and 0 < doc["retained_energy"] < 1
    code, out, err = cli("resize", path, "--energy", "0.9", "--out", tmp_path / "e")
    assert code == 0 and "overall" in err and out == ""
    code, out, err = cli("rescale", path, "--to", "rslora", "--out", tmp_path / "s")
    assert code == 0 and "outputs identical" in err
    code, out, err = cli("rescale", made["dora"][1], "--scale", "0.5", "--out", tmp_path / "d")
    assert code == 2 and "not linear" in err and "--force" in err and not (tmp_path / "d").exists()
    code, out, err = cli("resize", path, "--out", tmp_path / "x")
    assert code == 2 and "exactly one" in err
    base_dir = save_base(tiny_model("llama"), tmp_path)
    code, out, err = cli("merge", path, "--model", base_dir, "--out", tmp_path / "m", "--json")
    assert code == 0, err
    assert json.loads(out)["n_modules"] == 7 and (tmp_path / "m" / "config.json").is_file()
    code, out, err = cli("merge", path, "--model", base_dir, "--out", tmp_path / "m")
    assert code == 2 and "not empty" in err
