"""Adapter I/O against PEFT 0.21 (the oracle): ΔW equals get_delta_weight, what we write loads in PEFT
and gives the same logits, and bad inputs give one clean LoradialError."""

from __future__ import annotations

import json
import shutil

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from loradial.adapters.format import (
    SAFETENSORS_NAME,
    delta_weight,
    load_adapter,
    replace_modules,
    save_adapter,
)
from loradial.errors import LoradialError
from test_adapter_support import made_adapters, peft_delta, tiny_model, tokens

CASES = {
    "llama_patterns_emb": dict(arch="llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                               rank_pattern={"v_proj": 2}, alpha_pattern={"embed_tokens": 3}),
    "llama_rslora_dora": dict(arch="llama", r=4, lora_alpha=6, target_modules="all-linear", use_rslora=True, use_dora=True),
    "llama_bias_mts": dict(arch="llama", r=3, lora_alpha=5, target_modules=["o_proj", "down_proj"], lora_bias=True,
                           modules_to_save=["lm_head"], rank_pattern={r"layers\.1\.mlp\.down_proj": 5}),
    "gpt2_conv1d_emb": dict(arch="gpt2", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "wte"], fan_in_fan_out=True),
    "gpt2_rslora_dora": dict(arch="gpt2", r=2, lora_alpha=3, target_modules=["c_fc"], fan_in_fan_out=True, use_rslora=True,
                             use_dora=True),
}


made = made_adapters(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_delta_equals_peft(made, case):
    pm, path = made[case]
    ad = load_adapter(path)
    peft_modules = {n for n, m in pm.base_model.model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert set(ad.modules) == peft_modules
    for name, mod in ad.modules.items():
        ours = delta_weight(mod, base_orientation=True)
        if ad.use_dora:  # PEFT's get_delta_weight is the LoRA part s·B·A for DoRA as well
            assert mod.magnitude is not None
        torch.testing.assert_close(ours, peft_delta(pm, name), rtol=1e-5, atol=1e-6)
        layer = pm.base_model.model.get_submodule(name)
        assert mod.scale == pytest.approx(layer.scaling["default"])
        assert mod.r == layer.r["default"]


def test_kinds_and_extras(made):
    ad = load_adapter(made["gpt2_conv1d_emb"][1])
    kinds = {n: m.kind for n, m in ad.modules.items()}
    assert kinds["transformer.wte"] == "embedding" and kinds["transformer.h.0.attn.c_attn"] == "conv1d"
    ad = load_adapter(made["llama_bias_mts"][1])
    assert "base_model.model.lm_head.weight" in ad.extra_tensors
    assert all(m.bias is not None for m in ad.modules.values())
    assert ad.modules["model.layers.1.mlp.down_proj"].r == 5


@pytest.mark.parametrize("case", list(CASES))
def test_roundtrip_loads_in_peft_with_same_logits(made, case, tmp_path):
    pm, path = made[case]
    ad = load_adapter(path)
    ad.config["some_future_key"] = {"kept": True}
    # rewrite through replace_modules (exact-name patterns) and save
    out = save_adapter(replace_modules(ad, ad.modules), tmp_path / "out")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["some_future_key"] == {"kept": True}
    again = load_adapter(out)
    for name, mod in ad.modules.items():
        assert torch.equal(again.modules[name].A, mod.A) and torch.equal(again.modules[name].B, mod.B)
    arch = CASES[case]["arch"]
    base = tiny_model(arch)  # same seed: same base weights as the adapter was trained on
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, pm(x).logits, rtol=1e-5, atol=1e-5)


def test_overwrite_and_atomic(made, tmp_path):
    ad = load_adapter(made["llama_patterns_emb"][1])
    out = tmp_path / "o"
    save_adapter(ad, out)
    with pytest.raises(LoradialError, match="not empty"):
        save_adapter(ad, out)
    save_adapter(ad, out, overwrite=True)
    with pytest.raises(LoradialError, match="input adapter"):
        save_adapter(ad, made["llama_patterns_emb"][1], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary leftovers


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _mutate_tensors(path, fn):
    f = path / SAFETENSORS_NAME
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f))


def test_clean_errors(made, tmp_path):
    src = made["llama_patterns_emb"][1]
    key_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    key_b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    cases = {
        "nan": lambda t: t[key_a].__setitem__((0, 0), float("nan")),
        "int": lambda t: t.__setitem__(key_a, t[key_a].to(torch.int32)),
        "shape": lambda t: t.__setitem__(key_b, t[key_b][:, :3].contiguous()),
        "rank": lambda t: (t.__setitem__(key_a, t[key_a][:3].contiguous()), t.__setitem__(key_b, t[key_b][:, :3].contiguous())),
        "missing": lambda t: t.pop(key_b),
    }
    for i, (what, fn) in enumerate(cases.items()):
        p = _copy(src, tmp_path / f"c{i}")
        _mutate_tensors(p, fn)
        with pytest.raises(LoradialError):
            load_adapter(p)
    p = _copy(src, tmp_path / "trunc")
    data = (p / SAFETENSORS_NAME).read_bytes()
    (p / SAFETENSORS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(LoradialError, match="truncated or corrupt"):
        load_adapter(p)
    p = _copy(src, tmp_path / "badjson")
    (p / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoradialError, match="not valid JSON"):
        load_adapter(p)
    with pytest.raises(LoradialError, match="not found"):
        load_adapter(tmp_path / "nope")


def test_bin_needs_allow_pickle(made, tmp_path):
    src = made["llama_bias_mts"][1]
    p = _copy(src, tmp_path / "bin")
    torch.save(load_file(str(p / SAFETENSORS_NAME)), str(p / "adapter_model.bin"))
    (p / SAFETENSORS_NAME).unlink()
    with pytest.raises(LoradialError, match="allow-pickle"):
        load_adapter(p)
    ad = load_adapter(p, allow_pickle=True)
    ref = load_adapter(src)
    assert set(ad.modules) == set(ref.modules)
    out = save_adapter(ad, tmp_path / "converted")
    assert (out / SAFETENSORS_NAME).is_file() and not (out / "adapter_model.bin").exists()
