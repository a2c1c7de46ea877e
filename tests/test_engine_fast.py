"""The flat-buffer fused optimizer (default) against the per-adapter path, PEFT and itself; CUDA-graph refusals.

CPU, fp32, tiny models built from config. The two optimizer paths run the same AdamW kernel; only
the order of the squared-gradient-norm sum differs, so they agree to ≤ 1e-6 relative.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from loradial.data import collate, tokenize_records
from loradial.engine import Engine
from loradial.engine.batching import make_batch
from loradial.engine.flat import FlatAdamW
from loradial.engine.graphs import GraphedStep, graphed_train_step, static_batch, static_losses
from loradial.engine.optim import AdapterOptimizer
from loradial.errors import LoradialError
from test_engine import cfg, check_k1_against_peft, losses, rel, run_engine
from test_engine_fixtures import pc_records, save_tiny_model, tiny_llama, tiny_tokenizer, write_jsonl

TOL = 1e-6


@pytest.fixture(scope="module")
def examples():
    return tokenize_records(pc_records(16), tiny_tokenizer(), 64)


CASES = {
    "lora": [cfg("a", r=4, alpha=8, seed=1), cfg("b", r=4, alpha=16, seed=2, lr=3e-3, weight_decay=0.1)],
    "rslora": [cfg("a", r=8, alpha=4, use_rslora=True, seed=1, schedule="linear")],
    "dora": [cfg("a", r=4, alpha=8, use_dora=True, seed=1), cfg("b", r=2, alpha=4, seed=2)],
    "mixed-ranks": [cfg("big", r=8, alpha=16, seed=1), cfg("small", r=2, alpha=4, seed=2, targets=["q_proj", "v_proj"]),
                    cfg("pat", r=4, alpha=8, rank_pattern={"down_proj": 6}, seed=3),
                    cfg("emb", r=4, alpha=8, targets=["embed_tokens", "o_proj"], seed=4),
                    cfg("dora", r=3, alpha=6, use_dora=True, seed=5)],
    "clip": [cfg("a", r=4, alpha=8, seed=1, max_grad_norm=0.01), cfg("b", r=8, alpha=8, seed=2, max_grad_norm=None),
             cfg("c", r=4, alpha=8, use_dora=True, seed=3, max_grad_norm=0.02)],
}


def grad_norm_rows(e: Engine, name: str) -> list[float]:
    return [r["grad_norm"] for r in e.history if r["adapter"] == name and "grad_norm" in r]


def assert_same(a: Engine, b: Engine, tol: float = TOL) -> None:
    assert a.active == b.active
    for name in a.configs:
        la, lb = torch.tensor(losses(a, name)), torch.tensor(losses(b, name))
        assert len(la) == len(lb) > 0 and rel(la, lb) <= tol, (name, la, lb)
        assert rel(torch.tensor(grad_norm_rows(a, name)), torch.tensor(grad_norm_rows(b, name))) <= tol, name
        sa, sb = a.export_state(name), b.export_state(name)
        assert sa.keys() == sb.keys()
        for key in sa:  # factors, magnitudes and both AdamW moments
            assert rel(sa[key], sb[key]) <= tol or (sb[key].norm() == 0 and sa[key].norm() == 0), (name, key)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("accum", [1, 2])
def test_flat_equals_per_adapter(examples, case, accum):
    flat = run_engine(CASES[case], examples, steps=3, grad_accum=accum)
    old = run_engine(CASES[case], examples, steps=3, grad_accum=accum, optimizer="per-adapter")
    assert isinstance(flat.opt, FlatAdamW) and isinstance(old.opt, AdapterOptimizer)
    assert_same(flat, old)


def test_flat_buffers_are_what_the_model_trains(examples):
    """Every bucket tensor and its gradient are views of the two flat buffers (no copies), one row per adapter."""
    e = run_engine(CASES["lora"], examples, steps=1)
    flat, grad = e.opt.flat, e.opt.grad
    for layer in e.layers.values():
        for b in layer.buckets:
            for p in (b.A, b.B):
                assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
                assert p.grad.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr()
    assert all(len(rows) == 1 for rows in e.opt.adapter_rows)  # equal ranks: one contiguous row each
    assert sum(r.numel() for r in e.opt.rows["P"]) == flat.numel()
    with torch.no_grad():
        flat.add_(1.0)  # the model sees a change of the buffer
    b = next(iter(e.layers.values())).buckets[0]
    assert float(b.A.detach().abs().min()) > 0


def test_fused_backward_writes_grads_in_place(examples, monkeypatch):
    """Mixed ranks use fused.MultiLoraFunction; with flat buffers it returns no parameter gradient (it wrote them)."""
    from loradial.engine import fused

    returned = []
    real = fused.MultiLoraFunction.backward

    def spy(ctx, gy):
        out = real(ctx, gy)
        returned.append(out[4:])
        return out

    monkeypatch.setattr(fused.MultiLoraFunction, "backward", staticmethod(spy))
    e = run_engine(CASES["mixed-ranks"], examples, steps=1)
    assert returned and all(g is None for grads in returned for g in grads)
    assert all(float(n) > 0 for n in grad_norm_rows(e, "big"))


def test_k_together_equal_each_alone(examples):
    configs = CASES["mixed-ranks"] + [cfg("clipped", r=4, alpha=8, seed=9, max_grad_norm=0.01)]
    together = run_engine(configs, examples, grad_accum=2)
    for c in configs:
        alone = run_engine([c], examples, grad_accum=2)
        assert rel(torch.tensor(losses(together, c.name)), torch.tensor(losses(alone, c.name))) < 1e-5, c.name
        st, sa = together.export_state(c.name, optimizer=False), alone.export_state(c.name, optimizer=False)
        for key in sa:
            assert rel(st[key], sa[key]) < 1e-5, (c.name, key)


@pytest.mark.parametrize("kw", [dict(r=4, alpha=8, max_grad_norm=0.05, weight_decay=0.1, warmup_steps=1),
                                dict(r=4, alpha=8, use_dora=True), dict(r=8, alpha=4, use_rslora=True)],
                         ids=["lora-clip", "dora", "rslora"])
def test_k1_flat_equals_peft(examples, kw):
    c = cfg("x", seed=3, **kw)
    e = run_engine([c], examples)
    assert isinstance(e.opt, FlatAdamW)
    check_k1_against_peft(e, c, examples)


@pytest.mark.parametrize("saved_with", ["flat", "per-adapter"])
def test_resume_equals_uninterrupted(examples, saved_with):
    """A checkpoint after 2 of 4 steps (written by either optimizer: same format) resumes to the same run."""
    configs = CASES["clip"] + [cfg("mix", r=2, alpha=4, seed=7)]
    full = run_engine(configs, examples, steps=4, grad_accum=2)
    first = Engine(tiny_llama(), configs, examples, batch_size=4, steps=4, pad_token_id=0, grad_accum=2,
                   optimizer=saved_with)
    first.run(until=2)
    tensors, meta = first.state_dict()
    resumed = Engine(tiny_llama(), configs, examples, batch_size=4, steps=4, pad_token_id=0, grad_accum=2)
    resumed.load_state_dict(tensors, meta)
    resumed.history = list(first.history)
    resumed.run()
    assert_same(resumed, full)


def test_static_losses_equal_slice_losses(examples):
    """The CUDA-graph step's static-shape loss (padded rows and positions, 0/1 label weights) is the eager loss."""
    e = Engine(tiny_llama(), CASES["mixed-ranks"], examples, batch_size=4, steps=1, pad_token_id=0)
    exs = examples[:3]  # a short batch: one padding row
    T = -(-max(len(x["input_ids"]) for x in examples) // 8) * 8
    sb = static_batch(exs, 4, T, 0)
    K = len(e.active)
    got = static_losses(e, sb["ids"], sb["mask"], sb["targets"], sb["weight"], K)
    b = make_batch(exs, 0, torch.device("cpu"))
    want = e._slice_losses(b, K)
    assert sb["n_labels"] == b.n_labels and sb["n_tokens"] == b.n_tokens
    assert rel(got.detach(), want.detach()) < 1e-6
    assert collate(exs, 0)["input_ids"].shape[1] <= T


def test_cuda_graphs_refused_on_cpu(examples, tmp_path, cli):
    with pytest.raises(LoradialError, match="CUDA"):
        Engine(tiny_llama(), CASES["rslora"], examples, batch_size=4, steps=1, pad_token_id=0, cuda_graphs=True)
    with pytest.raises(LoradialError, match="optimizer"):
        Engine(tiny_llama(), CASES["rslora"], examples, batch_size=4, steps=1, pad_token_id=0, optimizer="sgd")
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "d.jsonl", pc_records(8))
    code, _, stderr = cli("train", "--model", model, "--data", data, "--rank", "4", "--alpha", "8", "--steps", "2",
                          "--out", tmp_path / "out", "--cuda-graphs")
    assert code == 2 and "CUDA" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
    code, _, stderr = cli("sweep", "--model", model, "--data", data, "--ranks", "4", "--steps", "2",
                          "--out", tmp_path / "sweep", "--cuda-graphs", "--devices", "cpu")
    assert code == 2 and "CUDA" in stderr, stderr


def test_graph_refusals_name_the_option():
    from loradial.engine.graphs import check_graphable

    cuda = torch.device("cuda")
    ok = dict(gradient_checkpointing=False, load_in_4bit=False, dropout=0.0, optimizer="flat")
    for bad, word in ((dict(gradient_checkpointing=True), "gradient-checkpointing"), (dict(load_in_4bit=True), "4bit"),
                      (dict(dropout=0.1), "dropout"), (dict(optimizer="per-adapter"), "flat")):
        with pytest.raises(LoradialError, match=word):
            check_graphable(cuda, **{**ok, **bad})


@pytest.mark.parametrize("case", ["mixed-ranks", "clip"])
def test_graph_step_body_equals_eager(examples, case):
    """The captured step's code (static padded batches, device lrs and label count, flat AdamW with tensor lr),
    run eagerly on the CPU, trains exactly like the engine's own step; 16 examples / batch 3: a short last batch."""
    configs = [dataclasses.replace(c, lr=2e-3 * (i + 1)) for i, c in enumerate(CASES[case])]  # distinct lrs
    eager = Engine(tiny_llama(), configs, examples, batch_size=3, steps=7, pad_token_id=0, grad_accum=2)
    eager.run()
    static = Engine(tiny_llama(), configs, examples, batch_size=3, steps=7, pad_token_id=0, grad_accum=2)
    static._graph = GraphedStep(static, warmup=10 ** 6)  # never captures
    while static.step < static.total_steps:
        graphed_train_step(static)
    static.flush()
    assert static._graph.T % 8 == 0 and static._graph.calls == 7
    assert_same(static, eager, tol=1e-5)
    assert static.tokens_seen == eager.tokens_seen
