"""Multi-adapter engine vs PEFT one after another, on random-init models of real shapes (one GPU).

For each model shape: the same 8 LoRA configurations (ranks 4-128, LoRA and rsLoRA mixed, one
DoRA; all-linear) trained (a) together by the loradial engine, K=8 slices of m sequences per step,
and (b) one after another with PEFT + a plain PyTorch loop (AdamW, schedule, clipping, bf16
autocast), same data, same steps, same micro-batch m. Then K=1 engine vs PEFT for one config.
Reported: tokens/s (tokens of all configs), speedup, MFU with 4·N FLOPs per token (6·N with
gradient checkpointing) plus the adapters' 6·r·(d_in+d_out) per module, peak GPU memory.
Warm-up steps are excluded; the clock stops after a device synchronisation.

    python benchmarks/engine/bench_engine.py                 # H100, full (≈5 min)
    python benchmarks/engine/bench_engine.py --smoke         # CPU, tiny shapes (seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s (NVIDIA H100 SXM datasheet)

# Shapes: the bundled config when loradial ships it, else these published fields.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1e6, max_position_embeddings=32768),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=5e5, max_position_embeddings=131072),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                       max_position_embeddings=4096),
}
# micro-batch m, sequence length T, gradient checkpointing, speedup target
SETTINGS = {"qwen2.5-0.5b": (4, 512, False, 2.5), "llama-3.2-1b": (4, 512, False, 1.8), "llama-2-7b": (2, 512, True, 1.4)}
SMOKE_SHAPE = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)
# name, r, alpha, rslora, dora, lr
CONFIGS = [("r4", 4, 8, False, False, 2e-4), ("r8-rs", 8, 16, True, False, 1e-4), ("r16", 16, 32, False, False, 2e-4),
           ("r16-rs", 16, 16, True, False, 5e-4), ("r32", 32, 64, False, False, 1e-4), ("r64-rs", 64, 64, True, False, 5e-5),
           ("r128", 128, 256, False, False, 5e-5), ("r16-dora", 16, 32, False, True, 2e-4)]
K1 = "r16"


def adapter_configs():
    from loradial.engine import AdapterConfig
    from loradial.spec import LoraSpec

    return [AdapterConfig(n, LoraSpec(r=r, lora_alpha=a, use_rslora=rs, use_dora=d, target_modules="all-linear"),
                          lr=lr, warmup_steps=2, seed=i) for i, (n, r, a, rs, d, lr) in enumerate(CONFIGS)]


def shape_config(name: str, smoke: bool) -> dict:
    if smoke:
        return dict(SMOKE_SHAPE)
    try:
        from loradial.models.resolve import load_config_dict

        cfg, _ = load_config_dict(name, allow_hub=False)
        return {k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype", "transformers_version", "_name_or_path")}
    except Exception:
        return dict(SHAPES[name])


def build_model(cfg: dict, device: torch.device, dtype: torch.dtype, gc_on: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    conf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(conf, dtype=dtype, attn_implementation="sdpa")
    model.requires_grad_(False)
    if gc_on:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def flops_per_token(model, configs, gc_on: bool) -> list[float]:
    """4·N (6·N with recompute) for the frozen base, N = parameters in matmuls; + 6·r·(d_in+d_out) per adapted module."""
    from loradial.models.resolve import list_modules

    mods = list_modules(model)
    n_matmul = sum(m.d_in * m.d_out for m in mods if m.kind != "embedding")
    linear = [m for m in mods if m.kind != "embedding" and not m.is_output_head]
    base = (6 if gc_on else 4) * n_matmul
    return [base + 6 * c.spec.r * sum(m.d_in + m.d_out for m in linear) for c in configs]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def run_engine(model, configs, examples, m, warm, steps, device, overhead):
    from loradial.engine import Engine

    e = Engine(model, configs, examples, batch_size=m, steps=warm + steps, pad_token_id=0, bucket_overhead=overhead)
    e.run(until=warm)
    sync(device)
    peak_reset(device)
    t0 = time.perf_counter()
    e.run(until=warm + steps)
    sync(device)
    dt = time.perf_counter() - t0
    nb = sum(len(layer.buckets) for layer in e.layers.values()) / max(1, len(e.layers))
    peak = peak_gib(device)
    losses = {r["adapter"]: r["loss"] for r in e.history if r["step"] == 1 and "loss" in r}
    e.unwrap()
    del e
    gc.collect()
    return dt, peak, nb, losses


def run_peft(model, c, batches, warm, steps, device):
    import peft
    from transformers import get_scheduler

    pm = peft.get_peft_model(model, c.spec.to_peft_config())
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    sched = get_scheduler(c.schedule, opt, num_warmup_steps=c.warmup(warm + steps), num_training_steps=warm + steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    pm.train()
    first = None
    for i, ids in enumerate(batches[:warm + steps]):
        if i == warm:
            sync(device)
            peak_reset(device)
            t0 = time.perf_counter()
        with amp:
            loss = pm(input_ids=ids, labels=ids).loss
        if i == 0:
            first = loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    dt = time.perf_counter() - t0
    peak = peak_gib(device)
    pm.unload()
    del pm, opt, sched, params
    gc.collect()
    return dt, peak, first


def bench_model(name, args, device):
    from loradial.engine.batching import DataStream

    m, T, gc_on, target = SETTINGS.get(name, (2, 32, False, 1.0))
    if args.smoke:
        m, T, gc_on = 2, 32, False
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(shape_config(name, args.smoke), device, dtype, gc_on)
    configs = adapter_configs()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    n_ex = m * (args.warmup + args.steps)
    examples = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, vocab, (n_ex, T), generator=g).tolist()]
    stream = DataStream(len(examples), m, 0)
    batches = [torch.tensor([examples[i]["input_ids"] for i in stream.next()], device=device)
               for _ in range(args.warmup + args.steps)]
    fpt = flops_per_token(model, configs, gc_on)
    tok = m * T * args.steps  # tokens per config over the timed steps
    rows = {}

    dt, peak, nb, first = run_engine(model, configs, examples, m, args.warmup, args.steps, device, args.bucket_overhead)
    rows["engine K=8"] = (len(configs) * tok / dt, dt / args.steps, sum(fpt) * tok / dt, peak)
    print(f"[{name}] engine K=8: {dt / args.steps * 1e3:.1f} ms/step, {nb:.1f} buckets/module", flush=True)
    seq_t, seq_peak, agree = 0.0, float("nan"), 0.0
    for c, f in zip(configs, fpt):
        dt1, pk, first_peft = run_peft(model, c, batches, args.warmup, args.steps, device)
        agree = max(agree, abs(first[c.name] - first_peft) / abs(first_peft))
        seq_t, seq_peak = seq_t + dt1, pk if math.isnan(seq_peak) else max(seq_peak, pk)
        print(f"[{name}] peft {c.name}: {dt1 / args.steps * 1e3:.1f} ms/step", flush=True)
    rows["PEFT x8 in sequence"] = (len(configs) * tok / seq_t, seq_t / args.steps, sum(fpt) * tok / seq_t, seq_peak)
    # K=1: engine and PEFT alternately, median over rounds (the host's speed drifts between runs)
    k1 = [c for c in configs if c.name == K1]
    f1 = fpt[configs.index(k1[0])]
    eng, ref = [], []
    for _ in range(args.rounds):
        dt, peak, _, _ = run_engine(model, k1, examples, m, 2, args.k1_steps, device, args.bucket_overhead)
        eng.append((m * T * args.k1_steps / dt, dt / args.k1_steps, f1 * m * T * args.k1_steps / dt, peak))
        dt1, pk, _ = run_peft(model, k1[0], batches, 2, args.k1_steps, device)
        ref.append((m * T * args.k1_steps / dt1, dt1 / args.k1_steps, f1 * m * T * args.k1_steps / dt1, pk))
    rows["engine K=1"] = sorted(eng)[len(eng) // 2]
    rows["PEFT K=1"] = sorted(ref)[len(ref) // 2]
    print(f"[{name}] K=1 rounds engine/PEFT tokens/s: " + ", ".join(f"{a[0]:,.0f}/{b[0]:,.0f}" for a, b in zip(eng, ref)), flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    speed = rows["engine K=8"][0] / rows["PEFT x8 in sequence"][0]
    k1_ratio = rows["engine K=1"][0] / rows["PEFT K=1"][0]
    return {"model": name, "m": m, "T": T, "gradient_checkpointing": gc_on, "rows": rows, "speedup": speed,
            "target": target, "k1_ratio": k1_ratio, "first_step_loss_rel_diff": agree}


def render(results, device, args) -> str:
    peak = H100_BF16_PEAK if device.type == "cuda" else float("nan")
    dev = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    lines = [f"# loradial engine benchmark ({'smoke, CPU' if args.smoke else dev})", "",
             f"- device: {dev}; torch {torch.__version__}; python {platform.python_version()}",
             f"- command: `{' '.join(['python'] + sys.argv)}`",
             f"- {args.warmup} warm-up + {args.steps} timed steps per run; 8 configs: "
             + ", ".join(n for n, *_ in CONFIGS) + f" (all-linear); K=1 config {K1}: median of {args.rounds} alternating rounds"
             f" of 2 warm-up + {args.k1_steps} timed steps", ""]
    lines += ["| model | m x T | run | tokens/s | ms/step | MFU | peak GiB |", "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        for run, (tps, step, flops, pk) in r["rows"].items():
            mfu = flops / peak if math.isfinite(peak) else float("nan")
            lines.append(f"| {r['model']} | {r['m']} x {r['T']}{' (GC)' if r['gradient_checkpointing'] else ''} | {run} "
                         f"| {tps:,.0f} | {step * 1e3:.1f} | {mfu:.1%} | {pk:.1f} |")
    lines += ["", "| model | K=8 together vs 8 in sequence | target | K=1 engine / PEFT | step-1 loss vs PEFT |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        ok = "ok" if r["speedup"] >= r["target"] else "below target"
        lines.append(f"| {r['model']} | {r['speedup']:.2f}x ({ok}) | {r['target']:.1f}x | {r['k1_ratio']:.2f}x "
                     f"| {r['first_step_loss_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 1+2 steps")
    ap.add_argument("--models", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 8; smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default 3; smoke 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating K=1 rounds (median reported)")
    ap.add_argument("--k1-steps", type=int, default=None, help="timed steps per K=1 round (default 6; smoke 2)")
    ap.add_argument("--bucket-overhead", default="auto", help="engine bucketing: 'auto' or a launch cost in rank units")
    ap.add_argument("--out", default=None, help="markdown output (default $OUT/bench_engine.md or benchmarks/engine/results.md)")
    args = ap.parse_args()
    args.bucket_overhead = args.bucket_overhead if args.bucket_overhead == "auto" else float(args.bucket_overhead)
    args.steps = args.steps or (2 if args.smoke else 8)
    args.k1_steps = args.k1_steps or (2 if args.smoke else 6)
    args.warmup = args.warmup or (1 if args.smoke else 3)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if not args.smoke and device.type != "cuda":
        sys.exit("no CUDA device: run with --smoke on a CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    names = ["smoke"] if args.smoke else [n.strip() for n in args.models.split(",") if n.strip()]
    results = []
    t0 = time.perf_counter()
    for name in names:
        results.append(bench_model(name, args, device))
        print(f"[{name}] done at {time.perf_counter() - t0:.0f} s", flush=True)
    text = render(results, device, args)
    out = Path(args.out or (Path(os.environ["OUT"]) / "bench_engine.md" if os.environ.get("OUT")
                            else Path(__file__).with_name("results.md")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps(results, indent=2, default=str))
    print(text)
    print(f"written to {out} ({time.perf_counter() - t0:.0f} s total)")


if __name__ == "__main__":
    main()
