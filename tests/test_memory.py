"""The training-memory estimate: exact static pieces, monotonicity, bad flags, and the activation
accounting checked against the tensors autograd really saves (CPU, bf16 autocast, tiny models)."""

from __future__ import annotations

import gc
import math
import weakref

import pytest

from loradial.errors import LoradialError
from loradial.cost.memory import (
    WORKSPACE_BYTES,
    MemoryEstimate,
    estimate_training_memory,
    frozen_weight_bytes,
    int8_bytes,
    lora_param_count,
    model_shape,
    nf4_bytes,
    saved_activations,
)
from loradial.models.info import ModelInfo
from loradial.models.resolve import inspect_model, list_modules
from loradial.models.targets import matched_modules
from loradial.spec import LoraSpec

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
KEYS = {"frozen_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits", "overhead"}


def targeted(info, targets, r=8, **kw):
    spec = LoraSpec(r=r, target_modules=targets, **kw)
    return [(m, spec.rank_for(m.name)) for m in matched_modules(spec, info)]


@pytest.fixture(scope="module")
def llama8b():
    return inspect_model("llama-3.1-8b")


@pytest.fixture(scope="module")
def qwen():
    return inspect_model("qwen2.5-0.5b")


def test_result_shape_and_breakdown_sums(llama8b):
    est = estimate_training_memory(llama8b, targeted(llama8b, ["q_proj", "v_proj"]))
    assert isinstance(est, MemoryEstimate)
    assert set(est.breakdown) == KEYS
    assert sum(est.breakdown.values()) == est.total_bytes == max(est.phases.values())
    d = est.to_dict()
    assert d["schema_version"] == 1 and d["total_bytes"] == est.total_bytes and d["peak_phase"] in d["phases"]


def test_static_pieces_are_exact(llama8b):
    tg = targeted(llama8b, ["q_proj", "v_proj"], r=256)
    P = lora_param_count(tg)
    assert P == 256 * 32 * ((4096 + 4096) + (4096 + 1024)) == 109_051_904  # r·(d_in + d_out), q + v, 32 layers
    est = estimate_training_memory(llama8b, tg, n_adapters=3)
    b = est.breakdown
    assert b["frozen_weights"] == llama8b.total_params * 2 == 8_030_261_248 * 2
    assert b["adapter_weights"] == 4 * 3 * P and b["optimizer_states"] == 8 * 3 * P
    assert est.phases["optimizer_step"] == b["frozen_weights"] + 4 * 3 * P * 5 + WORKSPACE_BYTES  # + grads + sqrt buffer
    assert est.breakdown["overhead"] >= WORKSPACE_BYTES


def test_gradients_exact_at_optimizer_peak(llama8b):
    tg = targeted(llama8b, "all-linear", r=256)
    est = estimate_training_memory(llama8b, tg, batch_size=1, seq_len=16, gradient_checkpointing=True)
    assert est.peak_phase == "optimizer_step"
    assert est.breakdown["gradients"] == 4 * lora_param_count(tg) and est.breakdown["activations"] == 0


def test_lora_param_count_matches_peft():
    """DoRA adds d_out per module; the count equals PEFT's on a tiny model (PEFT is the oracle)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(TINY)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    info = ModelInfo("tiny", "local", cfg, list_modules(model), sum(p.numel() for p in model.parameters()), False)
    for dora in (False, True):
        peft_model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)),
                                    LoraConfig(r=4, target_modules="all-linear", use_dora=dora))
        n, _ = peft_model.get_nb_trainable_parameters()
        assert lora_param_count(targeted(info, "all-linear", r=4), use_dora=dora) == n
    assert frozen_weight_bytes(info, "fp32") == 4 * sum(p.numel() for p in model.parameters())


def test_frozen_bytes_by_dtype_and_quant(qwen):
    n = qwen.total_params
    assert frozen_weight_bytes(qwen, "fp32") == 4 * n
    assert frozen_weight_bytes(qwen, "bf16") == frozen_weight_bytes(qwen, "fp16") == 2 * n
    lin = [m for m in qwen.modules if m.kind == "linear" and not m.is_output_head]
    n_q = sum(m.d_in * m.d_out for m in lin)
    assert frozen_weight_bytes(qwen, "bf16", "4bit") == 2 * (n - n_q) + sum(nf4_bytes(m.d_in * m.d_out) for m in lin)
    assert frozen_weight_bytes(qwen, "bf16", "8bit") == 2 * (n - n_q) + sum(m.d_in * m.d_out + 4 * m.d_out for m in lin)
    assert frozen_weight_bytes(qwen, "bf16", "4bit") < frozen_weight_bytes(qwen, "bf16", "8bit") < 2 * n


def test_nf4_and_int8_formulas():
    # 4096x4096: 8 Mi packed bytes, 262144 uint8 absmax, 1024 fp32 second-level scales, offset, 16-entry code
    n = 4096 * 4096
    assert nf4_bytes(n) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 + 64
    assert nf4_bytes(n) / n == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), rel=1e-5)  # ~4.127 bits/param
    assert nf4_bytes(65) == 33 + 2 + 4 + 4 + 64  # odd sizes round up
    assert int8_bytes(4096, 1024) == 4096 * 1024 + 4 * 1024


def test_monotone_in_batch_seq_rank_and_adapters(llama8b):
    def total(**kw):
        r = kw.pop("r", 16)
        return estimate_training_memory(llama8b, targeted(llama8b, "all-linear", r=r), **kw).total_bytes

    assert total(batch_size=1) < total(batch_size=2) < total(batch_size=4)
    assert total(seq_len=256) < total(seq_len=512) < total(seq_len=2048)
    assert total(r=8) < total(r=64) < total(r=256)
    assert total(n_adapters=1) < total(n_adapters=2) < total(n_adapters=4)
    assert total(gradient_checkpointing=True) < total()
    assert total(seq_len=4096, attn_implementation="sdpa") < total(seq_len=4096, attn_implementation="eager")
    assert total(quant="4bit") < total(quant="8bit") < total() < total(dtype="fp32")
    q = estimate_training_memory(llama8b, targeted(llama8b, ["q_proj", "v_proj"]))
    assert q.total_bytes < total(r=8)


def test_n_adapters_scaling(llama8b):
    """K adapters: K× the adapter/optimizer bytes and K× the tokens (each adapter has its own slice)."""
    tg = targeted(llama8b, "all-linear", r=16)
    one = estimate_training_memory(llama8b, tg, batch_size=2)
    three = estimate_training_memory(llama8b, tg, batch_size=2, n_adapters=3)
    same_tokens = estimate_training_memory(llama8b, tg, batch_size=6)
    for key in ("adapter_weights", "optimizer_states"):
        assert three.breakdown[key] == 3 * one.breakdown[key]
    assert three.breakdown["logits"] == same_tokens.breakdown["logits"] == 3 * one.breakdown["logits"]
    cache = 2 * lora_param_count(tg)  # bf16 adapter copies, per extra adapter
    assert three.breakdown["activations"] == same_tokens.breakdown["activations"] + 2 * cache


def test_layers_to_transform_saves_less(llama8b):
    all_layers = estimate_training_memory(llama8b, targeted(llama8b, ["q_proj", "v_proj"]))
    last = estimate_training_memory(llama8b, targeted(llama8b, ["q_proj", "v_proj"], layers_to_transform=[31]))
    assert last.breakdown["activations"] < all_layers.breakdown["activations"] / 10


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=-1), dict(seq_len=0), dict(batch_size=1.5),
                                dict(batch_size=True), dict(n_adapters=0), dict(dtype="int4"), dict(quant="3bit"),
                                dict(quant="4bit", dtype="fp32"), dict(attn_implementation="flex")])
def test_bad_flags(qwen, kw):
    with pytest.raises(LoradialError) as e:
        estimate_training_memory(qwen, targeted(qwen, ["q_proj"]), **kw)
    assert e.value.hint and e.value.exit_code == 2


def test_bad_targets_and_config(qwen):
    with pytest.raises(LoradialError):
        estimate_training_memory(qwen, [])
    with pytest.raises(LoradialError):
        estimate_training_memory(qwen, [(qwen.modules[1], 0)])
    broken = ModelInfo("x", "local", {"model_type": "llama", "hidden_size": 0}, qwen.modules, 1, False)
    with pytest.raises(LoradialError):
        model_shape(broken)


def test_config_defaults_are_applied():
    """Qwen3's head_dim (128) is a transformers default missing from a minimal config."""
    cfg = dict(TINY, model_type="qwen3")
    info = ModelInfo("t", "local", cfg, [], 1, False)
    assert model_shape(info).head_dim == 128 and model_shape(info).qk_norm


def test_gpt2_and_moe_shapes():
    gpt2 = model_shape(inspect_model("gpt2"))
    assert (gpt2.hidden, gpt2.intermediate, gpt2.layers, gpt2.layer_norm, gpt2.gated, gpt2.act_saved) == \
        (768, 3072, 12, True, False, 4)
    mix = model_shape(inspect_model("mixtral-8x7b"))
    assert (mix.n_experts, mix.experts_per_tok, mix.moe_intermediate) == (8, 2, 14336)


# --- the activation term against autograd's saved tensors ---------------------------------------
def _autograd_saved_bytes(cfg, targets, r, B, T, attn, base_fp32=False, use_dora=False):
    """Sum of unique storages autograd still holds for backward after a bf16-autocast forward."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), attn_implementation=attn)
    info = ModelInfo("tiny", "local", dict(cfg), list_modules(model), sum(p.numel() for p in model.parameters()), False)
    if not base_fp32:
        model = model.to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=r, target_modules=targets, use_dora=use_dora)).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    refs = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            refs.append((weakref.ref(t), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    ids = torch.randint(0, cfg["vocab_size"], (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
    gc.collect()
    alive = {ptr: nb for w, ptr, nb in refs if w() is not None}
    del loss
    return info, sum(alive.values())


@pytest.mark.parametrize("model_type,targets,attn,base_fp32,dora", [
    ("llama", ["q_proj", "v_proj"], "sdpa", False, False),
    ("llama", "all-linear", "sdpa", False, False),
    ("llama", ["down_proj"], "sdpa", False, False),
    ("qwen2", "all-linear", "sdpa", False, False),
    ("qwen3", ["q_proj", "k_proj", "v_proj", "o_proj"], "sdpa", False, False),
    ("llama", "all-linear", "eager", False, False),
    ("llama", ["q_proj", "v_proj"], "sdpa", True, False),
    ("llama", "all-linear", "sdpa", False, True),
])
def test_saved_activations_match_autograd(model_type, targets, attn, base_fp32, dora):
    B, T, r, V = 2, 24, 4, TINY["vocab_size"]
    cfg = dict(TINY, model_type=model_type)
    info, oracle = _autograd_saved_bytes(cfg, targets, r, B, T, attn, base_fp32, dora)
    a = saved_activations(info, targeted(info, targets, r=r), batch_size=B, seq_len=T, attn_implementation=attn,
                          dtype="fp32" if base_fp32 else "bf16", use_dora=dora)
    M = B * T
    est = a.total + 4 * M * V + 8 * M  # + the loss's fp32 log-probs and int64 targets
    assert math.isclose(est, oracle, rel_tol=0.03), (est, oracle)


def test_dropout_adds_its_mask_per_linear_module(llama8b):
    pairs = targeted(llama8b, "all-linear", r=16)
    B, T = 2, 256
    a0 = saved_activations(llama8b, pairs, batch_size=B, seq_len=T)
    a1 = saved_activations(llama8b, pairs, batch_size=B, seq_len=T, lora_dropout=0.05)
    assert a1.total - a0.total == sum(B * T * m.d_in for m, _ in pairs)  # one bool mask per module
    e0 = estimate_training_memory(llama8b, pairs, batch_size=B, seq_len=T)
    e1 = estimate_training_memory(llama8b, pairs, batch_size=B, seq_len=T, lora_dropout=0.05)
    assert e1.total_bytes - e0.total_bytes == a1.total - a0.total


@pytest.mark.parametrize("kw", [dict(lora_dropout=1.0), dict(lora_dropout=-0.1), dict(lora_dropout=0.1, use_dora=True)])
def test_dropout_out_of_range_or_with_dora_is_refused(qwen, kw):
    with pytest.raises(LoradialError):
        estimate_training_memory(qwen, targeted(qwen, "all-linear"), **kw)


@pytest.mark.parametrize("attn,dropout,shared", [("sdpa", 0.0, "3h+q"), ("eager", 0.0, "3h"), ("sdpa", 0.1, "0")])
def test_quantized_base_shares_lora_inputs(llama8b, attn, dropout, shared):
    """bitsandbytes layers skip PEFT's fp32 cast: q/k/v (and gate/up) save one input between them and
    o_proj's input is SDPA's output (measured on an H200: benchmarks/memory/RESULTS.md)."""
    pairs = targeted(llama8b, "all-linear", r=16)
    B, T, c = 2, 128, 2
    kw = dict(batch_size=B, seq_len=T, attn_implementation=attn, lora_dropout=dropout)
    plain = saved_activations(llama8b, pairs, **kw).total
    quant = saved_activations(llama8b, pairs, quant="4bit", **kw).total
    h = q = 4096
    per_layer = {"3h+q": 3 * h + q, "3h": 3 * h, "0": 0}[shared]
    assert plain - quant == 32 * c * B * T * per_layer


def test_quantized_sharing_is_order_free_and_only_for_siblings():
    """Only q/k/v_proj (gate/up_proj) of one parent share an input; o_proj reuses SDPA's output only
    where attention needs a gradient; other families (GPT-NeoX dense_h_to_4h/dense_4h_to_h) never share."""
    from loradial.cost.activations import module_stage
    from loradial.models.info import ModuleInfo

    neox = [ModuleInfo("gpt_neox.layers.1.mlp.dense_h_to_4h", "linear", 64, 256),
            ModuleInfo("gpt_neox.layers.1.mlp.dense_4h_to_h", "linear", 256, 64)]
    assert [module_stage(m) for m in neox] == [3, 4]
    info = inspect_model("llama-3.1-8b")
    kw = dict(batch_size=1, seq_len=64)
    for targets in (["q_proj", "v_proj", "gate_proj"], ["o_proj"]):
        pairs = targeted(info, targets)
        a = saved_activations(info, pairs, quant="4bit", **kw).total
        assert a == saved_activations(info, list(reversed(pairs)), quant="4bit", **kw).total
    # o_proj alone: attention of its first layer needs no gradient, so SDPA saves nothing there
    pairs = targeted(info, ["o_proj"])
    diff = saved_activations(info, pairs, **kw).total - saved_activations(info, pairs, quant="4bit", **kw).total
    assert diff == 31 * 2 * 64 * 4096  # every layer but the first reuses SDPA's output
