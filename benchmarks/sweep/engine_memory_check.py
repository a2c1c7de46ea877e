"""The engine's measured peak memory against ``loradial.cost.engine_memory`` (the sweep packer's model).

For each pack (vocabulary, K adapters of mixed ranks with DoRA among them, gradient checkpointing
on or off) this builds a Qwen2.5-like model from its config with random weights, runs real engine
steps (``loradial.engine.Engine``) on sequences of exactly ``--max-len`` tokens, and compares

* CUDA: ``torch.cuda.max_memory_allocated()`` over one step (after a warm-up step), minus what was
  allocated before the model was built;
* CPU:  the bytes of every storage alive at the step's start (base, adapters, AdamW moments) plus
  the peak of the storage the step allocates, tracked by a ``TorchDispatchMode`` that counts each
  new storage an operator returns and subtracts it when that storage is freed (a weakref finalizer)

with ``estimate_engine_memory`` for the same pack (with the ranks the engine really stored, padded
inside its buckets). Writes a markdown table to ``--out``.

    PYTHONPATH=src python benchmarks/sweep/engine_memory_check.py --out ENGINE_MEMORY_GPU.md          # H100: < 3 min
    PYTHONPATH=src python benchmarks/sweep/engine_memory_check.py --device cpu --quick --out cpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# --- shapes -------------------------------------------------------------------------------------------
#: Qwen2.5-0.5B's body (24 layers, hidden 896, GQA 14/2, tied head); the vocabulary is set per pack.
QWEN05 = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)
TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


@dataclasses.dataclass(frozen=True)
class Pack:
    label: str
    vocab: int
    ranks: tuple[int, ...]
    dora: tuple[bool, ...]
    checkpointing: bool
    dropout: float = 0.0
    chunk: int | None = None  # the loss's chunk (None: the engine's default)


def gpu_packs() -> list[Pack]:
    mixed4, dora4 = (8, 16, 32, 64), (False, False, False, True)
    mixed8, dora8 = (8, 8, 16, 16, 32, 64, 16, 32), (False,) * 6 + (True, True)
    out = []
    for v in (32000, 151936):
        out += [Pack(f"V{v // 1000}k K1 r16", v, (16,), (False,), False),
                Pack(f"V{v // 1000}k K4 mixed", v, mixed4, dora4, False),
                Pack(f"V{v // 1000}k K4 mixed ckpt", v, mixed4, dora4, True),
                Pack(f"V{v // 1000}k K8 mixed ckpt", v, mixed8, dora8, True)]
    out.append(Pack("V32k K8 mixed", 32000, mixed8, dora8, False))
    return out


def cpu_packs(quick: bool) -> list[Pack]:
    mixed4, dora4 = (4, 8, 16, 8), (False, False, False, True)
    out = []
    for v in (128, 2048):
        out += [Pack(f"V{v} K1 r8", v, (8,), (False,), False),
                Pack(f"V{v} K1 DoRA r8", v, (8,), (True,), False),
                Pack(f"V{v} K4 mixed", v, mixed4, dora4, False),
                Pack(f"V{v} K4 mixed ckpt", v, mixed4, dora4, True)]
    out += [Pack("V2048 K4 mixed dropout", 2048, mixed4, dora4, False, dropout=0.1),
            Pack("V2048 K4 equal ckpt", 2048, (8, 8, 8, 8), (False,) * 4, True),
            Pack("V2048 K4 mixed chunk 32", 2048, mixed4, dora4, False, chunk=32)]
    return out[:4] if quick else out


# --- CPU measurement ----------------------------------------------------------------------------------
class StorageTracker(TorchDispatchMode):
    """Live bytes of the storages operators return while active (each counted once, freed by finalizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: dict[int, int] = {}

    def _free(self, ptr: int, n: int) -> None:
        if self._seen.pop(ptr, None) is not None:
            self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            ptr, n = st.data_ptr(), st.nbytes()
            if n == 0 or ptr in inputs or ptr in self._seen:  # a view, an in-place result, or known
                continue
            self._seen[ptr] = n
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(st, self._free, ptr, n)
        return out


def live_bytes(engine) -> int:
    """Bytes of the distinct storages alive before a step: the model (with the engine's buckets), AdamW state."""
    tensors = [*engine.model.parameters(), *engine.model.buffers()]
    opt = engine.opt
    state = [getattr(opt, n) for n in ("flat", "grad", "exp_avg", "exp_avg_sq", "steps", "frozen", "max_norm", "owner")
             if hasattr(opt, n)]  # the flat optimizer holds one tensor per name, the per-adapter one lists
    tensors += [t for s in state for t in ([s] if isinstance(s, torch.Tensor) else s)]
    tensors += [p.grad for p in engine.model.parameters() if p.grad is not None]
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


# --- one pack -----------------------------------------------------------------------------------------
def build_model(shape: dict, vocab: int, dtype: torch.dtype, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen2", vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return model.train(), cfg


def examples(n: int, length: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (n, length), generator=g).tolist()
    return [{"input_ids": x, "labels": x} for x in ids]


def run_pack(pack: Pack, shape: dict, *, batch: int, max_len: int, device: str, dtype: torch.dtype,
             optimizer: str = "flat") -> dict:
    from loradial.cost.engine_memory import AdapterShape, estimate_engine_memory
    from loradial.engine import AdapterConfig, Engine
    from loradial.models.resolve import model_info_from_config
    from loradial.spec import LoraSpec

    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):  # the estimate counts them: start without
            torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    model, cfg = build_model(shape, pack.vocab, dtype, device)
    configs = [AdapterConfig(f"a{i}", LoraSpec(r=r, lora_alpha=2 * r, target_modules="all-linear", use_dora=d,
                                               lora_dropout=pack.dropout), lr=1e-4, seed=i)
               for i, (r, d) in enumerate(zip(pack.ranks, pack.dora))]
    engine = Engine(model, configs, examples(4 * batch, max_len, pack.vocab), batch_size=batch, steps=4,
                    pad_token_id=0, gradient_checkpointing=pack.checkpointing, check_head=False,
                    loss_chunk_tokens=pack.chunk, optimizer=optimizer)
    engine.train_step()  # warm-up (lazy state, allocator)
    engine.flush()
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        engine.train_step()
        engine.flush()
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - before
    else:
        static = live_bytes(engine)
        with StorageTracker() as tracker:
            engine.train_step()
            engine.flush()
        measured = static + tracker.peak
    step_s = time.perf_counter() - t0
    # the estimate, with the ranks as the engine stored them (padded inside its buckets)
    info = model_info_from_config(cfg.to_dict(), "bench")
    mods = {m.name: m for m in info.modules}
    shapes = [AdapterShape(tuple((mods[mod], b.r) for mod, (b, _) in engine._where[c.name].items()),
                           c.spec.use_dora, c.spec.lora_dropout) for c in configs]
    dt = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    est = estimate_engine_memory(info, shapes, batch_size=batch, max_len=max_len, dtype=dt,
                                 device="cuda" if cuda else "cpu", gradient_checkpointing=pack.checkpointing,
                                 loss_chunk_tokens=pack.chunk, optimizer=optimizer)
    del engine, model
    gc.collect()
    return {"pack": pack.label, "K": len(pack.ranks), "ranks": "/".join(f"{r}{'D' if d else ''}" for r, d in
                                                                        zip(pack.ranks, pack.dora)),
            "checkpointing": pack.checkpointing, "measured": measured, "estimate": est.total_bytes,
            "phase": est.peak_phase, "error_pct": 100.0 * (est.total_bytes - measured) / measured,
            "breakdown": est.breakdown, "step_s": step_s}


def fmt(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**28 else f"{n / 2**20:.2f} MiB"


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| pack | K | ranks (D = DoRA) | ckpt | measured | estimate | error | peak phase | largest terms |",
             "|---|---:|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        top = sorted(((v, k) for k, v in r["breakdown"].items() if v), reverse=True)[:3]
        terms = ", ".join(f"{k} {fmt(v)}" for v, k in top)
        lines.append(f"| {r['pack']} | {r['K']} | {r['ranks']} | {'yes' if r['checkpointing'] else 'no'} | "
                     f"{fmt(r['measured'])} | {fmt(r['estimate'])} | {r['error_pct']:+.1f} % | {r['phase']} | {terms} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="a tiny model and four packs (a CPU smoke run)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="base dtype (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=None)
    ap.add_argument("--optimizer", choices=("flat", "per-adapter"), default="flat",
                    help="the engine's optimizer (default: flat, the engine's default)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --quick", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype or ("bf16" if cuda else "fp32")]
    if cuda and not a.quick:
        shape, packs, batch, max_len = QWEN05, gpu_packs(), a.batch_size or 4, a.max_len or 512
    else:
        shape, packs, batch, max_len = TINY, cpu_packs(a.quick), a.batch_size or 2, a.max_len or 48
    rows = []
    t0 = time.perf_counter()
    for p in packs:
        r = run_pack(p, shape, batch=batch, max_len=max_len, device=a.device, dtype=dtype, optimizer=a.optimizer)
        rows.append(r)
        print(f"{r['pack']:28s} measured {fmt(r['measured']):>12s}  estimate {fmt(r['estimate']):>12s}  "
              f"{r['error_pct']:+6.1f} %  ({r['phase']})", flush=True)
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    import transformers

    header = (f"Device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}; "
              f"{'Qwen2.5-0.5B body' if shape is QWEN05 else 'tiny Qwen2 body (hidden 64, 2 layers)'}, "
              f"random {str(dtype).split('.')[-1]} weights, batch {batch} per adapter x {max_len} tokens, "
              f"all-linear, {a.optimizer} optimizer; wall {time.perf_counter() - t0:.0f} s.")
    text = table(rows, header)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
