"""Full fine-tuning: the engine against a plain PyTorch loop, plan's parameter count against the model's,
and the saved model loading with from_pretrained. CPU, fp32, tiny models built from config."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from loradial.data import collate, tokenize_records
from loradial.engine.batching import DataStream
from loradial.engine.full import FullEngine
from test_engine_fixtures import pc_records, tiny_llama, tiny_tokenizer

STEPS, BS = 5, 4


@pytest.fixture(scope="module")
def examples():
    return tokenize_records(pc_records(16), tiny_tokenizer(), 64)


def reference(examples, steps, lr, wd, clip, schedule="cosine", warmup=1, tie=False):
    """Plain PyTorch: the model's own loss, AdamW over every parameter, HF's schedule, clip_grad_norm_."""
    model = tiny_llama(tie_word_embeddings=tie)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    sched = transformers.get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=steps)
    stream, out = DataStream(len(examples), BS, 0), []
    model.train()
    for _ in range(steps):
        loss = model(**collate([examples[i] for i in stream.next()], 0)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        opt.zero_grad()
        out.append(loss.item())
    return model, out


@pytest.mark.parametrize("tie", [False, True])
def test_full_engine_equals_plain_loop(examples, tie):
    ref, ref_losses = reference(examples, STEPS, 3e-3, 0.01, 0.5, tie=tie)
    e = FullEngine(tiny_llama(tie_word_embeddings=tie), "full", examples, batch_size=BS, steps=STEPS, lr=3e-3,
                   weight_decay=0.01, max_grad_norm=0.5, warmup_steps=1, pad_token_id=0, loss_chunk_tokens=17)
    e.run()
    got = [r["loss"] for r in e.history if "loss" in r]
    assert len(got) == STEPS
    for a, b in zip(got, ref_losses):
        assert abs(a - b) <= 1e-5 * abs(b)
    assert got[-1] < got[0]  # it trains
    ref_sd = ref.state_dict()
    for k, v in e.model.state_dict().items():
        err = float((v - ref_sd[k]).norm() / ref_sd[k].norm().clamp_min(1e-12))
        assert err <= 1e-5, k


def test_full_engine_resume_is_exact(examples, tmp_path):
    kw = dict(batch_size=BS, steps=STEPS, lr=3e-3, pad_token_id=0)
    whole = FullEngine(tiny_llama(), "full", examples, **kw)
    whole.run()
    first = FullEngine(tiny_llama(), "full", examples, **kw)
    first.run(2)
    first.save_state(tmp_path / "state")
    second = FullEngine(tiny_llama(seed=5), "full", examples, **kw)  # other weights: the state must replace them
    second.load_state(tmp_path / "state")
    second.run()
    a, b = whole.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_model_loads_with_from_pretrained(examples, tmp_path):
    e = FullEngine(tiny_llama(), "full", examples, batch_size=BS, steps=2, lr=3e-3, pad_token_id=0)
    e.run()
    e.save_model(tmp_path / "model", tokenizer=tiny_tokenizer())
    assert (tmp_path / "model" / "model.safetensors").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    sd = e.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "model") is not None


@pytest.mark.parametrize("tie", [False, True])
def test_plan_full_params_equal_the_model(tie):
    from loradial.cost.planning import plan
    from loradial.models.info import ModelInfo
    from loradial.models.resolve import list_modules

    model = tiny_llama(tie_word_embeddings=tie)
    n = sum(p.numel() for p in model.parameters())
    info = ModelInfo("tiny", "local", model.config.to_dict(), list_modules(model), n, tie)
    res = plan(info, [4], ["all-linear"], seq_len=32)
    full = res.to_dict()["full"]
    assert full["variant"] == "full" and full["trainable_params"] == n
    assert full["peak_memory_bytes_checkpointing"] <= full["peak_memory_bytes_no_checkpointing"]
    assert full["peak_memory_bytes"] > res.rows[0].peak_memory_bytes
    assert not math.isnan(full["trainable_percent"])


@pytest.mark.parametrize("model_type,attn,tol", [("llama", "sdpa", 0.03), ("llama", "eager", 0.03),
                                                 ("qwen3", "sdpa", 0.06)])
def test_full_saved_activations_match_autograd(model_type, attn, tol):
    """The full-FT activation model against the tensors autograd really saves (fp32 weights, bf16 autocast, CPU)."""
    import gc
    import weakref

    from loradial.cost.memory import full_saved_activations
    from loradial.models.info import ModelInfo
    from loradial.models.resolve import list_modules

    cfg = dict(model_type=model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg),
                                                          attn_implementation=attn).train()
    info = ModelInfo("tiny", "local", dict(cfg), list_modules(model), sum(p.numel() for p in model.parameters()), False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    refs = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            refs.append((weakref.ref(t), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    B, T = 2, 24
    ids = torch.randint(0, 256, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
    gc.collect()
    oracle = sum({ptr: nb for w, ptr, nb in refs if w() is not None}.values())
    del loss
    layer, outside, _, _ = full_saved_activations(info, batch_size=B, seq_len=T, attn_implementation=attn)
    est = sum(layer) + outside + 4 * B * T * 256 + 8 * B * T  # + the loss's fp32 log-probs and int64 targets
    assert math.isclose(est, oracle, rel_tol=tol), (est, oracle)


def test_plan_json_has_the_full_row_beside_the_lora_rows():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "loradial", "plan", "--model", "qwen2.5-0.5b", "--rank", "8,64",
                          "--targets", "all-linear", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert len(d["rows"]) == 2 and d["full"]["variant"] == "full"
    assert d["full"]["trainable_params"] == d["model"]["total_params"] == 494_032_768
    assert d["full"]["peak_memory_bytes"] > max(r["peak_memory_bytes"] for r in d["rows"])
    assert {"peak_memory_bytes_no_checkpointing", "peak_memory_bytes_checkpointing"} <= set(d["full"])
