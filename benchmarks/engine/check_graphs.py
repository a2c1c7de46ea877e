"""CUDA graphs vs eager: the same engine run both ways must give the same losses and weights (prints PASS/FAIL).

A small random-init Llama (bf16 base on the GPU), 4 adapters (ranks 4/8/8/16, LoRA, rsLoRA, one DoRA;
mixed ranks so both the single-bucket and the fused multi-bucket paths run), examples of varied
length (so padding to the static length and a short last batch are exercised), grad_accum 2, N
steps with gradient clipping; the engine with ``cuda_graphs=True`` against the same engine eager.
Differences come only from floating-point summation order and the padded shape, so the tolerance
is that of a bf16 run: per-step loss within 1e-2 relative, final factors within 5e-2 relative.
Takes well under a minute on an H100.

    python benchmarks/engine/check_graphs.py                 # CUDA
    python benchmarks/engine/check_graphs.py --device cpu    # CPU: checks that graphs are refused and
                                                            # that flat == per-adapter eager (no graph run)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def model(device):
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                                num_key_value_heads=4, vocab_size=1024, max_position_embeddings=512,
                                tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                             attn_implementation="sdpa")
    return m


def configs():
    from loradial.engine import AdapterConfig
    from loradial.spec import LoraSpec

    rows = [("r4", 4, 8, False, False), ("r8-rs", 8, 8, True, False), ("r8", 8, 16, False, False), ("r16-dora", 16, 32, False, True)]
    return [AdapterConfig(n, LoraSpec(r=r, lora_alpha=a, use_rslora=rs, use_dora=d, target_modules="all-linear"),
                          lr=1e-3 * (i + 1), warmup_steps=2, max_grad_norm=0.5, seed=i)
            for i, (n, r, a, rs, d) in enumerate(rows)]


def examples(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = int(torch.randint(24, 97, (1,), generator=g))
        ids = torch.randint(4, 1024, (L,), generator=g).tolist()
        labels = [-100] * (L // 3) + ids[L // 3:]  # a prompt part without labels
        out.append({"input_ids": ids, "labels": labels})
    return out


def run(device, steps, **kw):
    from loradial.engine import Engine

    e = Engine(model(device), configs(), examples(37), batch_size=4, steps=steps, grad_accum=2, pad_token_id=0, **kw)
    e.run()
    losses = {n: [r["loss"] for r in e.history if r["adapter"] == n and "loss" in r] for n in e.configs}
    return losses, {n: e.export_state(n, optimizer=False) for n in e.configs}


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def compare(a, b, loss_tol, weight_tol) -> tuple[bool, str]:
    (la, wa), (lb, wb) = a, b
    worst_loss = max(max(abs(x - y) / abs(y) for x, y in zip(la[n], lb[n])) for n in la)
    worst_w = max(rel(wa[n][k], wb[n][k]) for n in wa for k in wa[n] if wb[n][k].norm() > 0)
    ok = all(len(la[n]) == len(lb[n]) for n in la) and worst_loss <= loss_tol and worst_w <= weight_tol
    return ok, f"max per-step loss rel. diff {worst_loss:.2e} (tol {loss_tol:g}), max factor rel. diff {worst_w:.2e} (tol {weight_tol:g})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps (>= 5: 3 eager warm-up, capture, replays)")
    args = ap.parse_args()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    if device.type != "cuda":
        from loradial.errors import LoradialError

        try:
            run(device, 1, cuda_graphs=True)
            print("FAIL: cuda_graphs=True was accepted on a CPU")
            return 1
        except LoradialError as err:
            print(f"cpu: graphs refused as they must be: {err.message}")
        ok, msg = compare(run(device, args.steps), run(device, args.steps, optimizer="per-adapter"), 1e-5, 5e-5)
        print(f"{'PASS' if ok else 'FAIL'} (cpu, no graph run: eager flat vs per-adapter) {msg} "
              f"[{time.perf_counter() - t0:.0f} s]")
        return 0 if ok else 1
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = run(device, args.steps)
    graphed = run(device, args.steps, cuda_graphs=True)
    ok, msg = compare(graphed, eager, 1e-2, 5e-2)
    print(f"{'PASS' if ok else 'FAIL'} ({torch.cuda.get_device_name()}, {args.steps} steps: cuda graphs vs eager) {msg} "
          f"[{time.perf_counter() - t0:.0f} s]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
