"""The multi-adapter engine against PEFT (the oracle) and against itself (K together == each alone).

CPU, fp32, tiny models built from config. Tolerances: 1e-5 relative.
"""

from __future__ import annotations

import math

import peft
import pytest
import torch
import transformers

from loradial.data import collate, tokenize_records
from loradial.engine import AdapterConfig, Engine
from loradial.engine.layers import SliceLora, plan_buckets
from loradial.engine.batching import DataStream
from loradial.errors import LoradialError
from loradial.spec import LoraSpec
from test_engine_fixtures import pc_records, tiny_llama, tiny_tokenizer

STEPS, BS = 4, 4


@pytest.fixture(scope="module")
def examples():
    return tokenize_records(pc_records(16), tiny_tokenizer(), 64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def cfg(name, r=4, alpha=8, targets="all-linear", **kw) -> AdapterConfig:
    spec_kw = {k: kw.pop(k) for k in ("use_rslora", "use_dora", "rank_pattern", "lora_dropout") if k in kw}
    kw.setdefault("lr", 1e-2)
    return AdapterConfig(name, LoraSpec(r=r, lora_alpha=alpha, target_modules=targets, **spec_kw), **kw)


def run_engine(configs, examples, model=None, steps=STEPS, **kw) -> Engine:
    e = Engine(model or tiny_llama(), configs, examples, batch_size=BS, steps=steps, pad_token_id=0, **kw)
    e.run()
    return e


def losses(e: Engine, name: str) -> list[float]:
    return [r["loss"] for r in e.history if r["adapter"] == name and "loss" in r]


def peft_reference(c: AdapterConfig, examples, steps=STEPS, model=None, grad_norms: list | None = None):
    """PEFT + a plain PyTorch loop: torch.manual_seed(seed) before get_peft_model, AdamW, HF schedule, clipping.
    ``grad_norms`` collects clip_grad_norm_'s total norm before clipping (max_norm=inf when not clipping)."""
    model = model or tiny_llama()
    torch.manual_seed(c.seed)
    pm = peft.get_peft_model(model, c.spec.to_peft_config())
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    sched = transformers.get_scheduler(c.schedule if c.schedule != "constant" else "constant_with_warmup", opt,
                                       num_warmup_steps=c.warmup(steps), num_training_steps=steps)
    stream, out = DataStream(len(examples), BS, 0), []
    pm.train()
    for _ in range(steps):
        batch = collate([examples[i] for i in stream.next()], 0)
        loss = pm(**batch).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm is not None else math.inf)
        if grad_norms is not None:
            grad_norms.append(float(norm))
        opt.step()
        sched.step()
        opt.zero_grad()
        out.append(loss.item())
    return pm, out


def peft_tensors(pm, name_map=lambda k: k):
    sd = peft.get_peft_model_state_dict(pm)
    return {k.removeprefix("base_model.model."): v for k, v in sd.items()}


def assert_matches_peft(e: Engine, name: str, pm) -> None:
    ref = peft_tensors(pm)
    st = e.export_state(name, optimizer=False)
    assert st, "no tensors"
    for key, t in st.items():
        mod, field = key.rsplit(".", 1)
        kind = e.module_info[mod].kind
        pkey = {"A": "lora_embedding_A" if kind == "embedding" else "lora_A.weight",
                "B": "lora_embedding_B" if kind == "embedding" else "lora_B.weight",
                "magnitude": "lora_magnitude_vector"}[field]
        # B starts at zero and AdamW normalises each step, so float32 rounding in the GEMM order
        # shows up at ~1e-5 of B's norm after a few steps (1.05e-5 measured on one 2-core x86 host);
        # the losses above are held to 1e-5, the factors to 3e-5.
        assert rel(t, ref[f"{mod}.{pkey}"]) < 3e-5, key


def grad_norms(e: Engine, name: str) -> list[float]:
    return [r["grad_norm"] for r in e.history if r["adapter"] == name and "loss" in r]


def check_k1_against_peft(e: Engine, c: AdapterConfig, examples, model=None) -> None:
    """The engine's run of ``c`` against PEFT's: per-step losses, per-step gradient norms (before clipping;
    AdamW cancels a constant gradient scale, so only the norms see a wrong one) and the final factors."""
    norms: list[float] = []
    pm, ref_losses = peft_reference(c, examples, model=model, grad_norms=norms)
    got = losses(e, c.name)
    assert max(abs(a - b) / abs(b) for a, b in zip(got, ref_losses)) < 1e-5, "losses"
    g = grad_norms(e, c.name)
    assert len(g) == len(norms) == STEPS
    assert max(abs(a - b) / b for a, b in zip(g, norms)) < 1e-4, f"grad_norm {g} vs PEFT's clip_grad_norm_ {norms}"
    assert_matches_peft(e, c.name, pm)


# --- bucketing ----------------------------------------------------------------------------------
def test_plan_buckets():
    s = lambda r, d=False: SliceLora(r, 1.0, 0.0, d)  # noqa: E731
    assert plan_buckets([s(8), s(8), s(4)], 0) == [(0, 2, 8), (2, 3, 4)]
    assert plan_buckets([s(8), s(8), s(4)], 100) == [(0, 3, 8)]
    assert plan_buckets([s(128), s(64), s(8), s(8), s(4)], 40) == [(0, 1, 128), (1, 2, 64), (2, 5, 8)]
    assert plan_buckets([s(8), None, s(8), s(8, True)], 100) == [(0, 1, 8), (2, 3, 8), (3, 4, 8)]
    assert plan_buckets([None, None], 1) == []


def test_choose_overhead_respects_the_padding_budget():
    from loradial.engine.layers import choose_overhead

    s = lambda r: SliceLora(r, 1.0)  # noqa: E731
    mods = [([s(128), s(64), s(8), s(4)], 100)]  # exact 204 ranks -> 20,400 params
    assert choose_overhead(mods, budget=1e9) == 4096.0  # one bucket padded to 128: +30,800
    assert plan_buckets(mods[0][0], choose_overhead(mods, budget=10_000)) == [(0, 2, 128), (2, 4, 8)]  # +6,800
    assert choose_overhead(mods, budget=0) == 0.0


# --- PEFT equivalence ---------------------------------------------------------------------------
def test_init_matches_peft_for_seed(examples):
    c = cfg("x", r=4, targets=["q_proj", "down_proj", "embed_tokens"], seed=7, use_dora=False)
    e = Engine(tiny_llama(), [c], examples, batch_size=BS, steps=1, pad_token_id=0)
    base = tiny_llama()
    torch.manual_seed(7)
    pm = peft.get_peft_model(base, c.spec.to_peft_config())
    assert_matches_peft(e, "x", pm)


@pytest.mark.parametrize("kw", [
    dict(r=4, alpha=8, weight_decay=0.1, warmup_steps=1, max_grad_norm=0.05, schedule="cosine"),
    dict(r=8, alpha=4, use_rslora=True, targets=["q_proj", "v_proj", "embed_tokens"], schedule="linear"),
    dict(r=4, alpha=16, use_dora=True, schedule="constant", max_grad_norm=None, weight_decay=0.01),
], ids=["lora-clip-wd", "rslora-embed", "dora"])
def test_k1_equals_peft_plain_loop(examples, kw):
    c = cfg("x", seed=3, **kw)
    e = run_engine([c], examples)
    check_k1_against_peft(e, c, examples)


@pytest.mark.parametrize("kw", [
    dict(r=4, alpha=8, weight_decay=0.1, warmup_steps=1, max_grad_norm=0.05, schedule="cosine"),
    dict(r=8, alpha=4, use_rslora=True, targets=["q_proj", "v_proj", "embed_tokens"], schedule="linear"),
], ids=["lora-clip-wd", "rslora-embed"])
def test_a_doubled_gradient_fails_the_peft_check(examples, kw, monkeypatch):
    """The mutation the check exists for: every gradient doubled once by hand. AdamW normalises it away
    (and clipping to 0.05 too), so losses and factors still match PEFT; the gradient norms do not."""
    from loradial.engine.flat import FlatAdamW
    from loradial.engine.optim import AdapterOptimizer

    def doubling(real):
        def doubled(self, lrs, losses_):
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(2.0)
            return real(self, lrs, losses_)
        return doubled

    for opt in (AdapterOptimizer, FlatAdamW):  # whichever the engine uses
        monkeypatch.setattr(opt, "step", doubling(opt.step))
    c = cfg("x", seed=3, **kw)
    e = run_engine([c], examples)
    monkeypatch.undo()
    pm, ref_losses = peft_reference(c, examples)
    assert max(abs(a - b) / abs(b) for a, b in zip(losses(e, "x"), ref_losses)) < 1e-4  # blind to the scale
    assert_matches_peft(e, "x", pm)  # blind too
    with pytest.raises(AssertionError, match="grad_norm"):
        check_k1_against_peft(e, c, examples)


def test_k_together_equal_each_alone(examples):
    configs = [
        cfg("big", r=8, alpha=16, seed=1),
        cfg("small", r=2, alpha=4, use_rslora=True, seed=2, lr=5e-3, targets=["q_proj", "v_proj"]),
        cfg("pattern", r=4, alpha=8, rank_pattern={"down_proj": 6}, seed=3, weight_decay=0.1, max_grad_norm=0.1),
        cfg("dora", r=4, alpha=8, use_dora=True, seed=4, schedule="linear"),
        cfg("embed", r=4, alpha=8, targets=["embed_tokens", "o_proj"], seed=5),
    ]
    for overhead in (0.0, 1e6):  # exact ranks / everything padded into one bucket per run
        e = run_engine(configs, examples, bucket_overhead=overhead)
        for c in configs:
            alone = run_engine([c], examples)
            assert max(abs(a - b) / abs(b) for a, b in zip(losses(e, c.name), losses(alone, c.name))) < 1e-5
            st, ref = e.export_state(c.name), alone.export_state(c.name)
            assert st.keys() == ref.keys()
            for key in st:
                assert rel(st[key], ref[key]) < 1e-5, (overhead, c.name, key)


def test_gpt2_conv1d_matches_peft(examples):
    conf = transformers.AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=128,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)

    def gpt2():
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(conf, attn_implementation="eager").float()

    for extra in ({}, {"use_dora": True}):
        c = cfg("g", r=4, alpha=8, targets=["c_attn", "c_fc"], seed=2, **extra)
        e = run_engine([c], examples, model=gpt2())
        check_k1_against_peft(e, c, examples, model=gpt2())


def test_saved_adapters_load_in_peft_and_reproduce_logits(examples, tmp_path):
    from loradial.adapters.format import save_adapter

    configs = [cfg("a", r=4, seed=1), cfg("d", r=2, use_dora=True, seed=2, targets=["q_proj", "up_proj"])]
    model = tiny_llama()
    e = run_engine(configs, examples, model=model)
    batch = collate(examples[:3], 0)
    K = len(e.active)
    with torch.no_grad():
        e.model.eval()
        ids = batch["input_ids"].repeat(K, 1)
        logits = e.model(input_ids=ids, attention_mask=batch["attention_mask"].repeat(K, 1)).logits
    for k, name in enumerate(e.active):
        path = save_adapter(e.export_adapter(name), tmp_path / name)
        pm = peft.PeftModel.from_pretrained(tiny_llama(), path).eval()
        with torch.no_grad():
            ref = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = logits[k * 3:(k + 1) * 3]
        assert rel(got, ref) < 1e-5, name


# --- engine behaviour ---------------------------------------------------------------------------
def test_chunked_loss_and_checkpointing_change_nothing(examples):
    c = cfg("x", r=4, seed=1)
    ref = run_engine([c], examples)
    for kw in (dict(loss_chunk_tokens=3), dict(gradient_checkpointing=True)):
        e = run_engine([c], examples, **kw)
        assert max(abs(a - b) / abs(b) for a, b in zip(losses(e, "x"), losses(ref, "x"))) < 1e-5
        st, st0 = e.export_state("x"), ref.export_state("x")
        assert all(rel(st[k], st0[k]) < 1e-5 for k in st)


def test_grad_accum_equals_bigger_batch(examples):
    c = cfg("x", r=4, seed=1)
    big = Engine(tiny_llama(), [c], examples, batch_size=8, steps=2, pad_token_id=0)
    acc = Engine(tiny_llama(), [c], examples, batch_size=4, grad_accum=2, steps=2, pad_token_id=0)
    big.run()
    acc.run()  # same seeded order: micro-batches 4+4 are the batch of 8; the loss is the mean over all its label tokens
    assert losses(acc, "x") == pytest.approx(losses(big, "x"), rel=1e-5)
    st, ref = acc.export_state("x"), big.export_state("x")
    assert all(rel(st[k], ref[k]) < 1e-5 for k in st)


def test_nan_adapter_is_frozen_and_others_go_on(examples):
    good = cfg("good", r=4, seed=1)
    init = {}
    probe = Engine(tiny_llama(), [cfg("bad", r=4, seed=2, targets=["q_proj"])], examples, batch_size=BS, steps=1, pad_token_id=0)
    st = probe.export_state("bad", optimizer=False)
    for key in st:
        mod, field = key.rsplit(".", 1)
        init.setdefault(mod, [None, None])[0 if field == "A" else 1] = st[key]
    first = next(iter(init))
    init[first][1] = torch.full_like(init[first][1], float("inf"))  # B = inf: every output non-finite
    bad = cfg("bad", r=4, seed=2, targets=["q_proj"], init={k: tuple(v) for k, v in init.items()})
    e = run_engine([good, bad], examples)
    alone = run_engine([good], examples)
    assert e.status == {"good": "training", "bad": "diverged"}
    assert e.frozen_at == {"bad": 1}
    bad_rows = [r for r in e.history if r["adapter"] == "bad"]
    assert len(bad_rows) == 1 and bad_rows[0]["diverged"] and not math.isfinite(bad_rows[0]["loss"])
    assert losses(e, "good") == pytest.approx(losses(alone, "good"), rel=1e-5)
    assert e.active == ["good"]
    kept = e.export_state("bad", optimizer=False)
    assert torch.equal(kept[f"{first}.A"], init[first][0])  # never updated


def test_drop_mid_run_leaves_the_others_unchanged(examples):
    a, b = cfg("a", r=8, seed=1), cfg("b", r=4, seed=2, use_rslora=True)
    e = Engine(tiny_llama(), [a, b], examples, batch_size=BS, steps=STEPS, pad_token_id=0, eval=examples[:5])
    e.run(until=2)
    ev = e.evaluate()
    assert set(ev) == {"a", "b"} and all(math.isfinite(v) for v in ev.values())
    e.drop(["a"])
    e.run()
    alone = run_engine([b], examples)
    assert e.status["a"] == "dropped" and e.active == ["b"]
    assert losses(e, "b") == pytest.approx(losses(alone, "b"), rel=1e-5)
    assert len(losses(e, "a")) == 2
    st = e.export_state("b")
    ref = alone.export_state("b")
    assert all(rel(st[k], ref[k]) < 1e-5 for k in st)


def test_state_dict_roundtrip_resumes_exactly(examples):
    configs = [cfg("a", r=8, seed=1, lora_dropout=0.1), cfg("b", r=4, seed=2, use_dora=True)]
    torch.manual_seed(123)
    full = run_engine(configs, examples, steps=5)
    torch.manual_seed(123)
    first = Engine(tiny_llama(), configs, examples, batch_size=BS, steps=5, pad_token_id=0)
    first.run(until=2)
    tensors, meta = first.state_dict()
    second = Engine(tiny_llama(), configs, examples, batch_size=BS, steps=5, pad_token_id=0)
    second.load_state_dict(tensors, meta)
    second.run()
    for n in ("a", "b"):
        assert losses(first, n) + losses(second, n) == losses(full, n)
        st, ref = second.export_state(n), full.export_state(n)
        assert all(torch.equal(st[k], ref[k]) for k in st)


def test_bad_configs(examples):
    with pytest.raises(LoradialError, match="match no module"):
        Engine(tiny_llama(), [cfg("x", targets=["nope"])], examples, batch_size=2, steps=1)
    with pytest.raises(LoradialError, match="output head"):
        Engine(tiny_llama(), [cfg("x", targets=["lm_head"])], examples, batch_size=2, steps=1)
    with pytest.raises(LoradialError, match="unique"):
        Engine(tiny_llama(), [cfg("x"), cfg("x")], examples, batch_size=2, steps=1)
    with pytest.raises(LoradialError, match="exactly one of steps and epochs"):
        Engine(tiny_llama(), [cfg("x")], examples, batch_size=2)
    with pytest.raises(LoradialError, match="safe name"):
        cfg("a/b")
    with pytest.raises(LoradialError, match="schedule"):
        cfg("x", schedule="step")
    e = Engine(tiny_llama(), [cfg("x")], examples, batch_size=4, epochs=2)
    assert e.total_steps == 8


@pytest.mark.parametrize("case", ["lora-mixed-dropout", "lora-gap-bias", "dora", "dora-dropout", "conv1d-dora"])
def test_fused_layer_backward_equals_autograd(case):
    """The hand-written backward of fused.MultiLoraFunction against the same math through autograd."""
    from transformers.pytorch_utils import Conv1D

    from loradial.engine.layers import Bucket, MultiLoraLayer

    torch.manual_seed(0)
    d_in, d_out, K, rows = 12, 10, 4, 6
    dora = "dora" in case
    if case.startswith("conv1d"):
        base, kind = Conv1D(d_out, d_in), "conv1d"
    else:
        base, kind = torch.nn.Linear(d_in, d_out, bias="bias" in case or dora), "linear"
    base.requires_grad_(False)
    p = {"lora-mixed-dropout": [0.1, 0.3, 0.0], "dora-dropout": [0.2, 0.2]}.get(case, [0.0, 0.0, 0.0])
    sl = [SliceLora(r, 0.5 + r / 4, q, dora) for r, q in zip((4, 2, 3), p)]
    start = 1 if "gap" in case else 0
    b = Bucket(start, start + len(sl), 4, d_in, d_out, sl)
    with torch.no_grad():
        for t in (b.A, b.B) + ((b.magnitude,) if dora else ()):
            t.normal_()
    layer = MultiLoraLayer(base, kind)
    layer.set_buckets([b], K)
    layer.train()
    x0 = torch.randn(K * 2, rows, d_in)
    out = {}
    for name, fn in (("fused", layer.forward), ("reference", layer.forward_reference)):
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)
        y = fn(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out[name] = [y.detach(), x.grad] + [t.grad.clone() for t in (b.A, b.B, b.magnitude) if t is not None]
        for t in (b.A, b.B, b.magnitude):
            if t is not None:
                t.grad = None
    for got, ref in zip(out["fused"], out["reference"]):
        assert rel(got, ref) < 1e-5


def test_checkpointing_with_fused_buckets_and_dropout(examples):
    configs = [cfg("a", r=8, seed=1, lora_dropout=0.1), cfg("b", r=2, seed=2, lora_dropout=0.2, use_rslora=True),
               cfg("d", r=4, seed=3, use_dora=True, lora_dropout=0.1, targets=["q_proj", "up_proj"])]
    runs = []
    for gc_on in (False, True):
        torch.manual_seed(5)
        runs.append(run_engine(configs, examples, bucket_overhead=0.0, gradient_checkpointing=gc_on))
    assert len(runs[0].layers["model.layers.0.self_attn.q_proj"].buckets) == 3  # several segments: fused node
    for c in configs:
        assert losses(runs[1], c.name) == pytest.approx(losses(runs[0], c.name), rel=1e-5)
        st, ref = runs[1].export_state(c.name), runs[0].export_state(c.name)
        assert all(rel(st[k], ref[k]) < 1e-5 for k in st)
