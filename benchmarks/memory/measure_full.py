"""Measure the peak GPU memory of one full fine-tuning step and compare it with `loradial plan`'s full row.

For each configuration: build the model from config in fp32 on the device (random weights, sdpa), every
parameter trainable, a plain ``torch.optim.AdamW`` (foreach) loop under ``torch.autocast(bf16)`` with the
model's own loss, and record ``torch.cuda.max_memory_allocated()`` over the last step (peak stats reset
just before it; AdamW's states exist from step 1 on). The estimate is ``plan``'s full row
(``loradial.cost.planning.full_row`` -> ``cost.memory.estimate_full_memory``).

    PYTHONPATH=src python benchmarks/memory/measure_full.py --out $OUT/memory_full.md   # H100: < 2 minutes
    PYTHONPATH=src python benchmarks/memory/measure_full.py --device cpu --out /tmp/full.md   # tiny plumbing check

Needs torch, transformers and loradial; no network, no datasets.
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

from loradial.cost.planning import full_row
from loradial.models.info import ModelInfo
from loradial.models.resolve import inspect_model, list_modules, to_pretrained_config

#: a ~0.13B Llama shape (GPT-2-small width and depth with Llama's blocks)
SHAPES = {
    "llama-0.13b": dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=12, vocab_size=32000, max_position_embeddings=2048,
                        tie_word_embeddings=False),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
}
#: (model, (batch, seq_len), gradient checkpointing)
CONFIGS = [
    ("llama-0.13b", (4, 512), False),
    ("llama-0.13b", (4, 512), True),
    ("llama-0.13b", (8, 1024), False),
    ("qwen2.5-0.5b", (2, 512), False),
    ("qwen2.5-0.5b", (2, 512), True),
    ("qwen2.5-0.5b", (4, 1024), False),
    ("qwen2.5-0.5b", (4, 1024), True),
]
CPU_CONFIGS = [("tiny-llama", (2, 32), False), ("tiny-llama", (2, 32), True)]


def model_info(name: str) -> ModelInfo:
    if name in SHAPES:
        from transformers import AutoModelForCausalLM

        cfg = SHAPES[name]
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(to_pretrained_config(cfg))
        n = sum(p.numel() for p in meta.parameters())
        return ModelInfo(name, "local", dict(cfg), list_modules(meta), n, bool(cfg.get("tie_word_embeddings", True)))
    return inspect_model(name)


def one_step_peak(info: ModelInfo, batch: int, seq_len: int, ckpt: bool, device: str, steps: int):
    """(peak bytes of the last step, allocated bytes just before it, trainable params); peaks nan on CPU."""
    from transformers import AutoModelForCausalLM

    config = to_pretrained_config(info.config)
    config.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if ckpt:
        model.gradient_checkpointing_enable()  # transformers 5: use_reentrant=False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
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
    n = sum(p.numel() for p in params)
    del model, opt, ids, params
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return peak, base, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown output (default: $OUT/memory_full.md or RESULTS_full.md here)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu (tiny shapes, plumbing only)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per config; the last one is measured")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = CPU_CONFIGS if device == "cpu" else CONFIGS
    out = Path(args.out or (Path(os.environ["OUT"]) / "memory_full.md" if os.environ.get("OUT") else
                            Path(__file__).with_name("RESULTS_full.md")))
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    rows, t0 = [], time.time()
    for name, (batch, seq_len), ckpt in configs:
        info = model_info(name)
        row = full_row(info, batch_size=batch, seq_len=seq_len, dtype="bf16", gradient_checkpointing=ckpt)
        t = time.time()
        try:
            peak, base, n = one_step_peak(info, batch, seq_len, ckpt, device, args.steps)
        except torch.cuda.OutOfMemoryError:
            peak = base = float("nan")
            n = -1
            gc.collect()
            torch.cuda.empty_cache()
        if n >= 0 and n != row["trainable_params"]:
            print(f"parameter count differs: model {n:,} vs plan {row['trainable_params']:,}", file=sys.stderr)
            return 1
        est = row["peak_memory_bytes"]
        err = 100 * (est - peak) / peak if peak == peak else float("nan")
        label = f"{name} ({row['trainable_params'] / 1e9:.2f}B) b={batch}x{seq_len} {'ckpt' if ckpt else 'no-ckpt'}"
        rows.append((label, peak / 2**30, est / 2**30, err, row["peak_phase"], base / 2**30))
        print(f"{label:<44} measured {peak / 2**30:7.2f} GiB  estimated {est / 2**30:7.2f} GiB ({err:+.1f}%, "
              f"{row['peak_phase']}; before step {base / 2**30:.2f}) {time.time() - t:.1f}s", flush=True)

    import transformers

    lines = [
        "# Full fine-tuning step peak memory: measured vs `loradial plan`'s full row",
        "",
        f"- device: {dev_name}; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `PYTHONPATH=src python benchmarks/memory/measure_full.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "- setup: model built from config in fp32 (random weights, sdpa), every parameter trainable, `torch.optim.AdamW`"
        f" (foreach), `torch.autocast(bf16)`, loss from `labels`; peak of `torch.cuda.max_memory_allocated()` over step"
        f" {args.steps} of {args.steps}. Parameter counts: plan's equals the model's for every row.",
        f"- wall time: {time.time() - t0:.0f} s",
        "",
        "| config | measured GiB | estimated GiB | error % | estimated peak phase | allocated before step GiB |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for label, m, e, err, phase, base in rows:
        lines.append(f"| {label} | {m:.2f} | {e:.2f} | {err:+.1f} | {phase} | {base:.2f} |")
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
