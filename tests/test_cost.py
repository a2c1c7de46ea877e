"""cost.py formulas on hand-made modules (PEFT agreement is tested in test_plan_peft.py)."""

from __future__ import annotations

import pytest

from loradial.cost import params as cost
from loradial.errors import LoradialError
from loradial.models.info import ModuleInfo

Q = ModuleInfo("model.layers.0.self_attn.q_proj", "linear", 4096, 4096)
Q1 = ModuleInfo("model.layers.1.self_attn.q_proj", "linear", 4096, 4096)
V = ModuleInfo("model.layers.0.self_attn.v_proj", "linear", 4096, 1024)
EMB = ModuleInfo("model.embed_tokens", "embedding", 32000, 4096)
C1D = ModuleInfo("transformer.h.0.attn.c_attn", "conv1d", 768, 2304, True)
CONV = ModuleInfo("encoder.conv.conv", "conv", 1536 * 3, 1536, True)
EXP = ModuleInfo("model.layers.0.mlp.experts.gate_up_proj", "param", 4096, 28672, experts=8)


@pytest.mark.parametrize("m,r,expected", [
    (Q, 8, 8 * (4096 + 4096)), (V, 16, 16 * (4096 + 1024)), (EMB, 4, 4 * (32000 + 4096)),
    (C1D, 8, 8 * (768 + 2304)), (CONV, 2, 2 * (1536 * 3 + 1536)), (EXP, 16, 16 * 8 * (4096 + 28672)),
])
def test_module_params(m, r, expected):
    assert cost.module_params(m, r) == expected


def test_dora_and_lora_bias_add_d_out():
    assert cost.module_params(V, 8, use_dora=True) == 8 * 5120 + 1024
    assert cost.module_params(EMB, 8, use_dora=True) == 8 * 36096 + 4096  # magnitude of embedding_dim
    assert cost.module_params(C1D, 8, lora_bias=True) == 8 * 3072 + 2304
    for m, kw in ((EMB, dict(lora_bias=True)), (Q, dict(use_dora=True, lora_bias=True)), (EXP, dict(use_dora=True))):
        with pytest.raises(LoradialError):
            cost.module_params(m, 8, **kw)


def test_trainable_params_and_breakdown():
    pairs = [(Q, 8), (V, 8), (Q1, 4)]
    assert cost.trainable_params(pairs) == 8 * 8192 + 8 * 5120 + 4 * 8192
    types = cost.per_type_breakdown(pairs, use_dora=True)
    assert [t["type"] for t in types] == ["model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.v_proj"]
    q = types[0]
    assert (q["count"], q["rank"], q["ranks"], q["params"]) == (2, None, [4, 8], 12 * 8192 + 2 * 4096)
    assert types[1]["rank"] == 8 and types[1]["ranks"] == [8]
    assert sum(t["params"] for t in types) == cost.trainable_params(pairs, use_dora=True)


def test_adapter_bytes():
    assert cost.adapter_bytes_by_dtype(1000) == {"fp32": 4000, "bf16": 2000, "fp16": 2000}
    with pytest.raises(LoradialError, match="unknown adapter dtype"):
        cost.adapter_bytes(10, "int3")


def test_flops():
    assert cost.extra_flops_per_token([(Q, 8), (EMB, 4), (EXP, 2)]) == 2 * 8 * 8192 + 2 * 4 * 4096
    assert cost.weight_side_flops([(Q, 8), (EXP, 2)]) == 2 * 8 * 2 * 4096 * 28672
    assert cost.weight_side_flops([(Q, 8)], use_dora=True) == 2 * 8 * 4096 * 4096
