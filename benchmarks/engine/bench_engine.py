"""Multi-adapter engine, three step paths side by side, vs PEFT one after another (random-init real shapes, one GPU).

For each model shape, in ONE run: the engine with the per-adapter optimizer (the earlier path:
``optimizer="per-adapter"``), with flat buffers + one fused AdamW launch per adapter (``"flat"``,
the default) and with flat + CUDA graphs (``cuda_graphs=True``), each at K = 1, 8 and 16 adapters;
then 8 PEFT runs one after another (PEFT + a plain PyTorch loop: AdamW, schedule, clipping, bf16
autocast; same data, steps and micro-batch m) and PEFT K=1. The 8 configurations are ranks 4-128,
LoRA and rsLoRA mixed, one DoRA, all-linear; K=16 is them twice (other seeds and learning rates),
K=1 is r16. Reported per row: tokens/s (tokens of all adapters), ms/step, MFU with 4·N FLOPs per
token (6·N with gradient checkpointing) plus the adapters' 6·r·(d_in+d_out) per module, peak GPU
memory, CUDA kernels per training step and kernel-launch calls per step (torch.profiler over one
step after the timed ones), and launch calls of the optimizer step alone (eager paths). Warm-up
steps are excluded; the clock stops after a device synchronisation. CUDA graphs are refused under
gradient checkpointing (the 7B shape): that row says so instead of a number.

    python benchmarks/engine/bench_engine.py --out benchmarks/engine/results.md   # H100, all shapes
    python benchmarks/engine/bench_engine.py --quick --out quick.md               # H100: meant to take < 6 min (not yet timed)
    python benchmarks/engine/bench_engine.py --device cpu --out /tmp/cpu.md       # CPU, tiny shape (seconds)
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


def adapter_configs(K: int = 8):
    """K configs: the 8 of CONFIGS (K=16: twice, other seeds and learning rates; K=1: r16)."""
    from loradial.engine import AdapterConfig
    from loradial.spec import LoraSpec

    rows = [(n, r, a, rs, d, lr) for n, r, a, rs, d, lr in CONFIGS if K != 1 or n == K1]
    out = []
    for rep in range(max(1, K // len(rows))):
        for i, (n, r, a, rs, d, lr) in enumerate(rows):
            out.append(AdapterConfig(n if rep == 0 else f"{n}-{rep}", LoraSpec(r=r, lora_alpha=a, use_rslora=rs, use_dora=d,
                                     target_modules="all-linear"), lr=lr * (1.5 ** rep), warmup_steps=2, seed=i + 100 * rep))
    return out[:K]


def shape_config(name: str, tiny: bool) -> dict:
    if tiny:
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


def count_launches(fn, device) -> tuple[float, float]:
    """(CUDA kernels run, kernel/graph launch calls made by the host) during ``fn()``, from torch.profiler."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    kernels = calls = 0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and not ev.name.startswith(("Memcpy", "Memset")):
            kernels += 1
        elif ev.name in LAUNCH_CALLS:
            calls += 1
    return float(kernels), float(calls)


LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                "cudaLaunchCooperativeKernel")


def run_engine(model, configs, examples, m, warm, steps, device, overhead, optimizer="flat", graphs=False):
    """Timed steps of one engine; (seconds, peak GiB, buckets/module, step-1 losses, kernels/step, launch calls/step,
    launch calls of opt.step alone)."""
    from loradial.engine import Engine

    e = Engine(model, configs, examples, batch_size=m, steps=warm + steps + 2, pad_token_id=0, bucket_overhead=overhead,
               optimizer=optimizer, cuda_graphs=graphs)
    try:
        e.run(until=warm)
        sync(device)
        peak_reset(device)
        t0 = time.perf_counter()
        e.run(until=warm + steps)
        sync(device)
        dt = time.perf_counter() - t0
        peak = peak_gib(device)
        kernels, calls = count_launches(lambda: e.run(until=warm + steps + 1), device)
        opt_calls = float("nan")
        if not graphs:  # one more optimizer step on the last gradients, alone
            lrs = [c.lr for c in configs]
            opt_calls = count_launches(lambda: e.opt.step(lrs, torch.zeros(len(configs), device=device)), device)[1]
        nb = sum(len(layer.buckets) for layer in e.layers.values()) / max(1, len(e.layers))
        losses = {r["adapter"]: r["loss"] for r in e.history if r["step"] == 1 and "loss" in r}
    finally:
        e.unwrap()
        del e
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return dt, peak, nb, losses, kernels, calls, opt_calls


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


PATHS = (("per-adapter", "per-adapter", False), ("flat", "flat", False), ("flat+graphs", "flat", True))


def bench_model(name, args, device):
    from loradial.engine.batching import DataStream
    from loradial.errors import LoradialError

    m, T, gc_on, target = SETTINGS.get(name, (2, 32, False, 1.0))
    if args.tiny:
        m, T, gc_on = 2, 32, False
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(shape_config(name, args.tiny), device, dtype, gc_on)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    n_ex = m * (args.warmup + args.steps + 2)
    examples = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, vocab, (n_ex, T), generator=g).tolist()]
    stream = DataStream(len(examples), m, 0)
    batches = [torch.tensor([examples[i]["input_ids"] for i in stream.next()], device=device)
               for _ in range(args.warmup + args.steps)]
    tok = m * T * args.steps  # tokens per adapter over the timed steps
    rows, first8, notes = {}, {}, []
    for K in args.ks:
        configs = adapter_configs(K)
        fl = sum(flops_per_token(model, configs, gc_on))
        for label, optimizer, graphs in PATHS:
            run = f"engine K={K} {label}"
            try:
                dt, peak, nb, first, kern, calls, opt_calls = run_engine(
                    model, configs, examples, m, args.warmup, args.steps, device, args.bucket_overhead, optimizer, graphs)
            except LoradialError as err:  # graphs refused (CPU, gradient checkpointing): said, not measured
                rows[run] = None
                notes.append(f"{name} {run}: refused — {err.message}")
                print(f"[{name}] {run}: refused ({err.message})", flush=True)
                continue
            rows[run] = (K * tok / dt, dt / args.steps, fl * tok / dt, peak, kern, calls, opt_calls)
            if K == 8 and not graphs:
                first8[label] = first
            print(f"[{name}] {run}: {dt / args.steps * 1e3:.1f} ms/step, {nb:.1f} buckets/module, "
                  f"{kern:.0f} kernels, {calls:.0f} launch calls, optimizer {opt_calls:.0f}", flush=True)
    configs = adapter_configs(8)
    fpt = flops_per_token(model, configs, gc_on)
    seq_t, seq_peak, agree = 0.0, float("nan"), 0.0
    ref_first = first8.get("flat") or {}
    for c in configs[:args.peft_runs]:
        dt1, pk, first_peft = run_peft(model, c, batches, args.warmup, args.steps, device)
        if c.name in ref_first:
            agree = max(agree, abs(ref_first[c.name] - first_peft) / abs(first_peft))
        seq_t, seq_peak = seq_t + dt1, pk if math.isnan(seq_peak) else max(seq_peak, pk)
        print(f"[{name}] peft {c.name}: {dt1 / args.steps * 1e3:.1f} ms/step", flush=True)
    n_seq = min(args.peft_runs, len(configs))
    seq_t *= len(configs) / n_seq  # --quick times fewer PEFT runs and scales to 8
    nan = float("nan")
    rows["PEFT x8 in sequence"] = (len(configs) * tok / seq_t, seq_t / args.steps, sum(fpt) * tok / seq_t, seq_peak,
                                   nan, nan, nan)
    k1 = adapter_configs(1)
    dt1, pk, _ = run_peft(model, k1[0], batches, args.warmup, args.steps, device)
    f1 = flops_per_token(model, k1, gc_on)[0]
    rows["PEFT K=1"] = (tok / dt1, dt1 / args.steps, f1 * tok / dt1, pk, nan, nan, nan)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seq = rows["PEFT x8 in sequence"][0]
    ratios = {run: (r[0] / seq if r else None) for run, r in rows.items() if run.startswith("engine K=8")}
    return {"model": name, "m": m, "T": T, "gradient_checkpointing": gc_on, "rows": rows, "k8_vs_sequence": ratios,
            "target": target, "first_step_loss_rel_diff": agree, "peft_runs_timed": n_seq, "notes": notes}


def render(results, device, args) -> str:
    peak = H100_BF16_PEAK if device.type == "cuda" else float("nan")
    dev = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or "cpu") + " (CPU: no MFU)"
    lines = [f"# loradial engine benchmark ({dev}{', quick' if args.quick else ''})", "",
             f"- device: {dev}; torch {torch.__version__}; python {platform.python_version()}",
             f"- command: `{' '.join(['python'] + sys.argv)}`",
             f"- {args.warmup} warm-up + {args.steps} timed steps per run; 8 configs: "
             + ", ".join(n for n, *_ in CONFIGS) + f" (all-linear); K=16: them twice; K=1: {K1}",
             "- kernels/step and launch calls/step: torch.profiler over one training step after the timed ones; "
             "opt launches: the optimizer step alone (eager paths)", ""]
    lines += ["| model | m x T | run | tokens/s | ms/step | MFU | peak GiB | kernels/step | launch calls/step | opt launches |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def num(x, fmt):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)

    for r in results:
        shape = f"{r['m']} x {r['T']}{' (GC)' if r['gradient_checkpointing'] else ''}"
        for run, row in r["rows"].items():
            if row is None:
                lines.append(f"| {r['model']} | {shape} | {run} | refused | | | | | | |")
                continue
            tps, step, flops, pk, kern, calls, opt_calls = row
            mfu = flops / peak if math.isfinite(peak) else float("nan")
            lines.append(f"| {r['model']} | {shape} | {run} | {tps:,.0f} | {step * 1e3:.1f} | {num(mfu, '.1%')} "
                         f"| {num(pk, '.1f')} | {num(kern, ',.0f')} | {num(calls, ',.0f')} | {num(opt_calls, ',.0f')} |")
    lines += ["", "| model | K=8 vs 8 PEFT in sequence: per-adapter | flat | flat+graphs | target | step-1 loss vs PEFT |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        q = r["k8_vs_sequence"]
        cells = [num(q.get(f"engine K=8 {p}"), ".2f") + ("x" if q.get(f"engine K=8 {p}") else "") for p, _, _ in PATHS]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['target']:.1f}x | {r['first_step_loss_rel_diff']:.1e} |")
    notes = [n for r in results for n in r["notes"]]
    quick = [r for r in results if r["peft_runs_timed"] < 8]
    if notes or quick:
        lines.append("")
    lines += [f"- {n}" for n in notes]
    lines += [f"- {r['model']}: PEFT x8 timed on {r['peft_runs_timed']} of the 8 configs, scaled to 8" for r in quick]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu (tiny shape, seconds)")
    ap.add_argument("--smoke", action="store_true", help="same as --device cpu")
    ap.add_argument("--quick", action="store_true", help="0.5B and 1B shapes, fewer steps, 2 timed PEFT runs (meant to take < 6 min on an H100; not yet timed)")
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--ks", default="1,8,16", help="adapter counts (default 1,8,16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 8; quick 4; cpu 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default 4; cpu 1); >= 4 so that "
                    "CUDA graphs are captured before the clock starts")
    ap.add_argument("--bucket-overhead", default="auto", help="engine bucketing: 'auto' or a launch cost in rank units")
    ap.add_argument("--out", default=None, help="markdown output (default $OUT/bench_engine.md, else benchmarks/engine/results.md)")
    args = ap.parse_args()
    args.bucket_overhead = args.bucket_overhead if args.bucket_overhead == "auto" else float(args.bucket_overhead)
    want = "cpu" if args.smoke else (args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(want)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu")
    args.tiny = device.type == "cpu"
    args.ks = [int(k) for k in args.ks.split(",")]
    args.steps = args.steps or (2 if args.tiny else 4 if args.quick else 8)
    args.warmup = args.warmup or (1 if args.tiny else 4)
    args.peft_runs = 2 if args.quick or args.tiny else 8
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.tiny:
        names = ["tiny"]
    else:
        names = [n.strip() for n in (args.models or ("qwen2.5-0.5b,llama-3.2-1b" if args.quick else ",".join(SHAPES))).split(",")]
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
