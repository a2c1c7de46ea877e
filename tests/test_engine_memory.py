"""The engine's memory model (``loradial.cost.engine_memory``) against the storage the engine really
allocates on a CPU, and the sweep packer that plans with it (--max-len sizing, --memory-fraction).

The measurement is ``benchmarks/sweep/engine_memory_check.py``'s: the bytes of every storage alive at
a step's start plus the peak of what the step allocates, tracked operator by operator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from loradial.cost.engine_memory import TERMS, AdapterShape, estimate_engine_memory, loss_chunk
from loradial.errors import LoradialError
from loradial.models.resolve import model_info_from_config
from loradial.models.targets import matched_modules
from loradial.spec import LoraSpec

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep" / "engine_memory_check.py"
#: The estimate may exceed the measured peak by this much (the backward transients are upper bounds) ...
OVER = 1.20
#: ... and may fall below it by at most this much (small tensors the model leaves out).
UNDER = 0.98


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engine_memory_check", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


# --- the measurement measures ---------------------------------------------------------------------------
def test_storage_tracker_counts_allocations_and_frees(bench):
    x = torch.randn(1000, 1000, requires_grad=True)  # 4 MB, allocated before: not counted
    with bench.StorageTracker() as t:
        a = x * 2          # +4 MB
        b = a.exp()        # +4 MB (exp saves its output)
        del a              # -4 MB
        c = torch.empty(3_000_000)  # +12 MB: peak 16 MB
        del c
        v = b.t()          # a view: nothing new
        b.sum().backward()  # x.grad: +4 MB; b freed with the graph
        del b, v
    assert t.peak == 16_000_000
    assert t.live == 4_000_000  # x.grad


# --- estimate vs measured -------------------------------------------------------------------------------
def _packs(bench):
    P = bench.Pack
    mixed, dora = (4, 8, 16, 8), (False, False, False, True)
    out = []
    for v in (128, 2048):
        out += [P(f"V{v} K1 r8", v, (8,), (False,), False), P(f"V{v} K1 DoRA", v, (8,), (True,), False),
                P(f"V{v} K4 mixed", v, mixed, dora, False), P(f"V{v} K4 mixed ckpt", v, mixed, dora, True)]
    out += [P("V2048 K4 dropout", 2048, mixed, dora, False, dropout=0.1),
            P("V2048 K4 chunk 32", 2048, mixed, dora, False, chunk=32)]
    return out


CASES = ([(p, "fp32", "flat") for p in range(10)] + [(p, "bf16", "flat") for p in (1, 3, 7)]
         + [(p, "fp32", "per-adapter") for p in (1, 3, 6)])


@pytest.mark.parametrize("index, dtype, optimizer", CASES, ids=[f"{i}-{d}-{o}" for i, d, o in CASES])
def test_estimate_brackets_the_measured_cpu_peak(bench, index, dtype, optimizer):
    pack = _packs(bench)[index]
    r = bench.run_pack(pack, bench.TINY, batch=2, max_len=48, device="cpu",
                       dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], optimizer=optimizer)
    assert UNDER * r["measured"] <= r["estimate"] <= OVER * r["measured"], (pack.label, r["measured"], r["estimate"])
    if pack.vocab == 2048 and not pack.checkpointing:  # the vocabulary moves the peak into the loss's forward
        assert r["phase"] == "forward_end"


def test_a_missing_term_fails_the_check(bench, monkeypatch):
    """Drop the LoRA saves from the model: the estimate falls below the measurement."""
    import loradial.cost.engine_memory as em

    real = em.estimate_engine_memory

    def without_lora(*a, **k):
        e = real(*a, **k)
        e.total_bytes -= e.breakdown["lora_activations"]
        return e

    monkeypatch.setattr(em, "estimate_engine_memory", without_lora)
    p = bench.Pack("K4", 128, (4, 8, 16, 8), (False, False, False, True), False)
    r = bench.run_pack(p, bench.TINY, batch=2, max_len=48, device="cpu", dtype=torch.float32)
    assert r["estimate"] < UNDER * r["measured"]


# --- the model's shape --------------------------------------------------------------------------------
QWEN = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def qwen(vocab: int):
    return model_info_from_config({**QWEN, "vocab_size": vocab}, f"qwen-{vocab}")


def adapter(info, r=16, dora=False, dropout=0.0, targets="all-linear"):
    spec = LoraSpec(r=r, target_modules=targets, use_dora=dora)
    return AdapterShape(tuple((m, r) for m in matched_modules(spec, info)), dora, dropout)


def test_breakdown_terms_sum_and_the_optimizers_gradients():
    info = qwen(32000)
    a = adapter(info)
    est = estimate_engine_memory(info, [a, a], batch_size=4, max_len=512)
    assert tuple(est.breakdown) == TERMS and sum(est.breakdown.values()) == est.total_bytes == max(est.phases.values())
    P = 2 * a.params
    assert est.breakdown["adapter_weights"] == 4 * P and est.breakdown["optimizer_states"] == 8 * P
    # the flat optimizer's grad buffer is alive all step; the fused AdamW needs no temporary
    assert est.breakdown["gradients"] == 4 * P and est.breakdown["optimizer_temporaries"] == 0
    per = estimate_engine_memory(info, [a, a], batch_size=4, max_len=512, optimizer="per-adapter")
    assert per.breakdown["gradients"] == 0 and per.peak_phase == est.peak_phase != "optimizer_step"
    assert {k: est.phases[k] - per.phases[k] for k in est.phases} == {k: 0 if k == "optimizer_step" else 4 * P
                                                                      for k in est.phases}
    tiny = estimate_engine_memory(info, [a, a], batch_size=1, max_len=8, optimizer="per-adapter")
    assert tiny.peak_phase == "optimizer_step"  # tiny batch: the per-adapter optimizer's step peaks
    assert tiny.breakdown["gradients"] == 4 * P and tiny.breakdown["optimizer_temporaries"] == 0
    assert est.to_dict()["tokens"] == 2 * 4 * 512


def test_loss_is_chunked_not_full_logits():
    """With a 151k vocabulary the loss term stops growing once the label tokens exceed one chunk."""
    info = qwen(151936)
    a = adapter(info)
    C = loss_chunk(151936)
    small = estimate_engine_memory(info, [a] * 4, batch_size=4, max_len=512).breakdown["loss"]
    big = estimate_engine_memory(info, [a] * 4, batch_size=8, max_len=512).breakdown["loss"]
    hf_logits = 12 * (4 * 4 * 512) * 151936  # what plan's PEFT model counts (memory.logits_bytes)
    assert small < hf_logits / 5
    assert big - small < 8 * (4 * 4 * 512) * 896  # only the hidden-sized terms grow (~6 bytes/token/hidden), not C·V
    assert C == (1 << 28) // 151936


def test_checkpointing_and_padding_to_max_len():
    info = qwen(32000)
    a = adapter(info)
    plain = estimate_engine_memory(info, [a] * 4, batch_size=4, max_len=1024)
    ckpt = estimate_engine_memory(info, [a] * 4, batch_size=4, max_len=1024, gradient_checkpointing=True)
    assert ckpt.total_bytes < plain.total_bytes
    # CUDA rounds the length up to a multiple of 8, as the engine's collation does
    assert estimate_engine_memory(info, [a], batch_size=1, max_len=1001).tokens == 1008
    assert estimate_engine_memory(info, [a], batch_size=1, max_len=1001, device="cpu", dtype="fp32").tokens == 1001


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), "--batch-size"), (dict(max_len=-1), "--max-len"), (dict(dtype="int3"), "dtype"),
    (dict(device="tpu"), "device"), (dict(optimizer="adam"), "optimizer"),
])
def test_bad_arguments(kw, message):
    info = qwen(32000)
    args = dict(batch_size=1, max_len=64) | kw
    with pytest.raises(LoradialError, match=message):
        estimate_engine_memory(info, [adapter(info)], **args)
    with pytest.raises(LoradialError, match="no adapter"):
        estimate_engine_memory(info, [], batch_size=1, max_len=8)


# --- the packer -----------------------------------------------------------------------------------------
def _costs(info, ranks, *, max_len=512, records=None, gib=40.0, fraction=0.9, device="cpu"):
    from loradial.settings import SweepConfigEntry, SweepSettings, TrainSettings
    from loradial.sweeps.pack import ConfigCost
    from loradial.sweeps.setup import memory_costs

    spec = {r: LoraSpec(r=r, target_modules="all-linear") for r in ranks}
    targeted = {f"r{r}": [(m, r) for m in matched_modules(spec[r], info)] for r in ranks}
    train = TrainSettings(max_len=max_len, dtype="bf16", batch_size=4)
    settings = SweepSettings.model_construct(train=train, memory_fraction=fraction, configs=[
        SweepConfigEntry.model_construct(name=f"r{r}", r=r, use_dora=False) for r in ranks])
    records = records or [{"input_ids": [0] * 16}]
    budget, costs = memory_costs(settings, info, targeted, records, [device], gib)
    return budget, [ConfigCost(**c.model_dump()) for c in costs]


def test_packs_are_sized_by_max_len_not_the_longest_record():
    info = qwen(32000)
    _, short = _costs(info, [16], records=[{"input_ids": [0] * 16}])
    _, long = _costs(info, [16], records=[{"input_ids": [0] * 512}])
    assert short == long  # the records do not matter ...
    _, longer = _costs(info, [16], max_len=1024)
    fixed = 16 * adapter(info).params  # weights, gradients, AdamW moments: whatever the length
    assert longer[0].marginal - fixed > 1.9 * (short[0].marginal - fixed)  # ... --max-len does


def test_memory_fraction_scales_the_budget(monkeypatch):
    from loradial.sweeps import pack

    monkeypatch.setattr(pack.os, "sysconf", lambda key: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[key])
    assert pack.device_budget("cpu") == int(1000 * 4096 * 0.85) == int(1000 * 4096 * pack.MEMORY_FRACTION)
    assert pack.device_budget("cpu", memory_fraction=0.5) == 1000 * 4096 // 2
    assert pack.device_budget("cpu", 2.0, memory_fraction=0.5) == 2 * pack.GiB  # --gpu-memory is the budget itself
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(LoradialError, match="--memory-fraction"):
            pack.device_budget("cpu", memory_fraction=bad)
    info = qwen(32000)
    b9, _ = _costs(info, [16], fraction=0.9, gib=None)
    b5, _ = _costs(info, [16], fraction=0.5, gib=None)
    assert b5 == 1000 * 4096 // 2 and b9 == int(1000 * 4096 * 0.9)


def test_packs_honour_the_budget_and_the_vocabulary_changes_them():
    from loradial.sweeps.pack import GiB, make_packs, pack_bytes

    ranks = [8, 8, 16, 16, 32, 32, 64, 64]
    packs = {}
    for vocab in (32000, 151936):
        info = qwen(vocab)
        _, costs = _costs(info, ranks)
        by = {c.name: c for c in costs}
        budget = 8 * GiB
        packs[vocab] = make_packs(costs, budget)
        for p in packs[vocab]:
            shapes = [adapter(info, r=int(n[1:])) for n in p]
            assert pack_bytes([by[n] for n in p]) <= budget
            # the pack's own estimate (mixed ranks, padding allowance aside) fits what was planned
            est = estimate_engine_memory(info, shapes, batch_size=4, max_len=512, device="cpu").total_bytes
            assert est <= pack_bytes([by[n] for n in p])
    # 32k: the loss grows with each adapter's tokens; 151k: one ~2.5 GiB chunk whatever K, plus a bigger base
    assert [len(p) for p in packs[32000]] == [2, 2, 2, 2] and [len(p) for p in packs[151936]] == [1] * 8


def test_cli_rejects_a_bad_memory_fraction(cli, tmp_path):
    code, _, err = cli("sweep", "--model", str(tmp_path / "model"), "--data", "x.jsonl", "--ranks", "4", "--steps", "1",
                       "--memory-fraction", "1.5", "--out", str(tmp_path / "o"))
    assert code == 2 and "--memory-fraction" in err and not (tmp_path / "o").exists()
