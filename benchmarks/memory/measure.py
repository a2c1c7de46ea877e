"""Measure the peak GPU memory of one LoRA training step and compare it with loradial's estimate.

For each configuration: build the model from its bundled config in bf16 on the GPU (random weights,
``attn_implementation="sdpa"``), apply PEFT LoRA with defaults, run a plain AdamW loop under
``torch.autocast("cuda", dtype=torch.bfloat16)`` with the model's own loss, and record
``torch.cuda.max_memory_allocated()`` over the last step (peak stats reset just before it). Every
configuration gets a fresh model; memory is freed in between.

    python benchmarks/memory/measure.py --out $OUT/memory.md       # H100: ~16 configs, a few minutes
    python benchmarks/memory/measure.py --smoke                     # CPU plumbing check, tiny shapes

Needs torch, transformers, peft and loradial (``pip install --no-deps -e .``); no network, no datasets.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import torch

from loradial.cost.memory import estimate_training_memory
from loradial.models.info import ModelInfo
from loradial.models.resolve import inspect_model, list_modules, to_pretrained_config
from loradial.models.targets import matched_modules
from loradial.spec import LoraSpec

QV = ["q_proj", "v_proj"]
SMALL, LARGE = (2, 512), (4, 1024)  # (batch size, sequence length)

#: (bundled model, targets, rank, (batch, seq_len), gradient checkpointing, attention[, LoRA options])
CONFIGS = [
    ("qwen2.5-0.5b", QV, 8, SMALL, False, "sdpa"),
    ("qwen2.5-0.5b", QV, 16, SMALL, True, "sdpa"),
    ("qwen2.5-0.5b", "all-linear", 64, LARGE, False, "sdpa"),
    ("qwen2.5-0.5b", "all-linear", 256, LARGE, True, "sdpa"),
    ("qwen2.5-0.5b", QV, 8, SMALL, False, "eager"),
    ("llama-3.2-1b", QV, 8, LARGE, False, "sdpa"),
    ("llama-3.2-1b", "all-linear", 32, SMALL, True, "sdpa"),
    ("llama-3.2-1b", "all-linear", 128, SMALL, False, "sdpa"),
    ("llama-3.2-3b", QV, 64, LARGE, True, "sdpa"),
    ("llama-3.2-3b", "all-linear", 16, SMALL, False, "sdpa"),
    ("llama-3.2-3b", "all-linear", 256, LARGE, False, "sdpa"),
    ("llama-3.1-8b", QV, 8, LARGE, True, "sdpa"),
    ("llama-3.1-8b", QV, 256, SMALL, False, "sdpa"),
    ("llama-3.1-8b", "all-linear", 16, SMALL, True, "sdpa"),
    ("llama-3.1-8b", "all-linear", 64, LARGE, False, "sdpa"),
    ("llama-3.1-8b", "all-linear", 256, SMALL, True, "sdpa"),
    # LoRA options (labels carry "+"): lora_dropout > 0 (its mask), DoRA (fast path, dropout 0)
    ("qwen2.5-0.5b", QV, 8, SMALL, False, "sdpa", {"lora_dropout": 0.1}),
    ("llama-3.2-1b", "all-linear", 32, SMALL, False, "sdpa", {"lora_dropout": 0.05}),
    ("llama-3.2-1b", "all-linear", 32, SMALL, True, "sdpa", {"lora_dropout": 0.05}),
    ("llama-3.2-3b", "all-linear", 16, LARGE, False, "sdpa", {"lora_dropout": 0.1}),
    ("qwen2.5-0.5b", QV, 8, SMALL, False, "sdpa", {"use_dora": True}),
    ("llama-3.2-1b", "all-linear", 32, SMALL, False, "sdpa", {"use_dora": True}),
    ("llama-3.2-1b", "all-linear", 32, SMALL, True, "sdpa", {"use_dora": True}),
    ("llama-3.1-8b", QV, 16, LARGE, True, "sdpa", {"use_dora": True}),
    # a 4-bit NF4 base (bitsandbytes, double quantization, bf16 compute), plain loop (no kbit preparation)
    ("qwen2.5-0.5b", QV, 8, SMALL, False, "sdpa", {"quant": "4bit"}),
    ("llama-3.2-1b", "all-linear", 32, SMALL, True, "sdpa", {"quant": "4bit"}),
    ("llama-3.2-1b", "all-linear", 64, LARGE, False, "sdpa", {"quant": "4bit"}),
    ("llama-3.2-3b", "all-linear", 16, LARGE, True, "sdpa", {"quant": "4bit"}),
]

TINY = {
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
}
SMOKE_CONFIGS = [
    ("tiny-llama", QV, 8, (2, 32), False, "sdpa"),
    ("tiny-llama", "all-linear", 16, (2, 32), True, "sdpa"),
    ("tiny-qwen2", "all-linear", 4, (1, 64), False, "eager"),
    ("tiny-llama", "all-linear", 4, (2, 32), False, "sdpa", {"lora_dropout": 0.1}),
    ("tiny-llama", QV, 4, (2, 32), True, "sdpa", {"use_dora": True}),
]


def model_info(name: str) -> ModelInfo:
    if name in TINY:
        from transformers import AutoModelForCausalLM

        cfg = TINY[name]
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(to_pretrained_config(cfg))
        return ModelInfo(name, "local", dict(cfg), list_modules(meta), sum(p.numel() for p in meta.parameters()), False)
    return inspect_model(name)


def one_step_peak(info: ModelInfo, targets, rank: int, batch: int, seq_len: int, ckpt: bool, attn: str,
                  device: str, steps: int, opts: dict) -> tuple[float, float]:
    """(peak bytes of the last step, allocated bytes just before it); (nan, nan) on CPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = to_pretrained_config(info.config)
    config.use_cache = False
    opts = dict(opts)
    if opts.pop("quant", "none") == "4bit":
        model = _load_4bit(config, attn)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    if ckpt:
        model.gradient_checkpointing_enable()  # transformers 5: use_reentrant=False
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, task_type="CAUSAL_LM",
                                             **opts))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    cuda = device == "cuda"
    peak = base = float("nan")
    for step in range(steps):
        if cuda and step == steps - 1:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    del model, opt, ids
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return peak, base


def _load_4bit(config, attn: str):
    """The model with random bf16 weights, saved and reloaded as a bitsandbytes NF4 base on cuda:0."""
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=torch.bfloat16,
                                                    device_map={"": 0}, attn_implementation=attn)


def estimate(info: ModelInfo, targets, rank: int, batch: int, seq_len: int, ckpt: bool, attn: str, opts: dict):
    spec = LoraSpec(r=rank, lora_alpha=rank, target_modules=targets)
    targeted = [(m, spec.rank_for(m.name)) for m in matched_modules(spec, info)]
    return estimate_training_memory(info, targeted, batch_size=batch, seq_len=seq_len, dtype="bf16",
                                    gradient_checkpointing=ckpt, attn_implementation=attn, **opts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown output (default: $OUT/memory.md or benchmarks/memory/RESULTS.md)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: check the plumbing, measure nothing")
    ap.add_argument("--steps", type=int, default=3, help="training steps per config; the last one is measured")
    ap.add_argument("--only", default=None, help="run only configs whose label contains this text")
    args = ap.parse_args(argv)
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if not args.smoke and device == "cpu":
        print("no CUDA device: use --smoke for the CPU plumbing check", file=sys.stderr)
        return 2
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    out = Path(args.out or (Path(os.environ["OUT"]) / "memory.md" if os.environ.get("OUT") else
                            Path(__file__).with_name("RESULTS.md")))
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    rows, t0 = [], time.time()
    for name, targets, rank, (batch, seq_len), ckpt, attn, *rest in configs:
        opts = rest[0] if rest else {}
        tname = "q,v" if targets == QV else targets
        label = f"{name} {tname} r={rank} b={batch}x{seq_len} {'ckpt' if ckpt else 'no-ckpt'} {attn}"
        label += "".join(f" +{'dora' if k == 'use_dora' else v if k == 'quant' else f'dropout {v:g}'}"
                         for k, v in opts.items())
        if args.only and args.only not in label:
            continue
        info = model_info(name)
        est = estimate(info, targets, rank, batch, seq_len, ckpt, attn, opts)
        t = time.time()
        try:
            peak, base = one_step_peak(info, targets, rank, batch, seq_len, ckpt, attn, device, args.steps, opts)
        except torch.cuda.OutOfMemoryError:
            peak = base = float("nan")
            gc.collect()
            torch.cuda.empty_cache()
        static = sum(est.breakdown[k] for k in ("frozen_weights", "adapter_weights", "optimizer_states"))
        err = 100 * (est.total_bytes - peak) / peak if peak == peak else float("nan")
        rows.append((label, peak / 2**30, est.total_bytes / 2**30, err, est.peak_phase, base / 2**30, static / 2**30))
        print(f"{label:<58} measured {peak / 2**30:7.2f} GiB  estimated {est.total_bytes / 2**30:7.2f} GiB "
              f"({err:+.1f}%, {est.peak_phase}; before step {base / 2**30:.2f} vs static {static / 2**30:.2f}) "
              f"{time.time() - t:.1f}s", flush=True)

    import peft
    import transformers

    lines = [
        "# LoRA training-step peak memory: measured vs `loradial.cost.memory.estimate_training_memory`",
        "",
        f"- device: {dev_name}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        f"- command: `python benchmarks/memory/measure.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "- setup: base built from config in bf16 (random weights), PEFT LoRA defaults (fp32 adapters, lora_alpha=r),"
        " `torch.optim.AdamW`, `torch.autocast('cuda', torch.bfloat16)`, loss from `labels`; peak of"
        f" `torch.cuda.max_memory_allocated()` over step {args.steps} of {args.steps}.",
        f"- wall time: {time.time() - t0:.0f} s",
        "",
        "| config | measured GiB | estimated GiB | error % | estimated peak phase | allocated before step GiB | static estimate GiB |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for label, m, e, err, phase, base, static in rows:
        lines.append(f"| {label} | {m:.2f} | {e:.2f} | {err:+.1f} | {phase} | {base:.2f} | {static:.2f} |")
    errs = [abs(r[3]) for r in rows if r[3] == r[3]]
    if errs:
        lines += ["", f"Max |error|: {max(errs):.1f}% over {len(errs)} configurations; mean {sum(errs) / len(errs):.1f}%."]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
