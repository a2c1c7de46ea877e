"""Benchmark `loradial analyze` on a synthetic adapter with the shapes of a 70B Llama (CPU).

Shapes (Llama-2/3-70B): hidden 8192, intermediate 28672, 8 KV heads × 128 = 1024, 80 layers, the 7
linear modules q/k/v/o/gate/up/down, r = 64, bf16 → about 0.8 GB of adapter weights.

Measured side by side in one process:
  read     reading every byte of the adapter file (page cache warm; best of 4), and once after
           evicting the file from the page cache (posix_fadvise DONTNEED; "cold", best effort).
           (safetensors' load_file alone is not a read: it memory-maps and touches no data.)
  analyze  loradial.analyze(path): load + validate + exact factored SVD of all 560 modules + metrics
           + recommendation (the whole verb, as the CLI runs it)
  dense    form ΔW = s·B·A (float32) and torch.linalg.svdvals (float32, values only: the cheapest dense
           variant) for one module of each distinct shape (a×b and b×a counted as one), extrapolated
           to all modules; the factored SVD is timed on the same modules

Run: python benchmarks/analyze/bench_analyze.py [--smoke] [--workdir /tmp] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def module_shapes(hidden: int, inter: int, kv: int) -> dict[str, tuple[int, int]]:
    """name -> (d_out, d_in) for the 7 Llama linear modules."""
    return {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def make_adapter(path: Path, layers: int, rank: int, shapes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """A PEFT-format LoRA adapter with trained-looking factors (decaying column scales in B), bf16."""
    from loradial.adapters.format import Adapter, LoraModule, save_adapter

    g = torch.Generator().manual_seed(seed)
    decay = torch.exp(-torch.arange(rank, dtype=torch.float32) / (rank / 4))
    modules = {}
    for i in range(layers):
        for suffix, (d_out, d_in) in shapes.items():
            name = f"model.layers.{i}.{suffix}"
            A = (torch.randn(rank, d_in, generator=g) / d_in**0.5).to(torch.bfloat16)
            B = (torch.randn(d_out, rank, generator=g) * decay * 1e-2).to(torch.bfloat16)
            modules[name] = LoraModule(name, "linear", A, B, 2.0, rank, 2 * rank)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "use_rslora": False, "use_dora": False,
              "target_modules": sorted({s.rsplit(".", 1)[-1] for s in shapes}), "rank_pattern": {}, "alpha_pattern": {},
              "base_model_name_or_path": "synthetic-llama-70b-shape", "task_type": "CAUSAL_LM", "bias": "none",
              "fan_in_fan_out": False, "lora_dropout": 0.0}
    save_adapter(Adapter(config, modules, {}), path, overwrite=True)


def svd_flops(a: int, b: int) -> float:
    """LAPACK singular values of an m×n matrix (m ≥ n): min(direct bidiagonalization 4mn² − 4n³/3,
    QR first then bidiagonalization 2mn² + 2n³) (Golub & Van Loan, 4th ed., §8.6.3)."""
    m, n = max(a, b), min(a, b)
    return min(4 * m * n * n - 4 * n**3 / 3, 2 * m * n * n + 2 * n**3)


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache (best effort; True if the call was made)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (seconds), to check the script")
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--intermediate", type=int, default=28672)
    ap.add_argument("--kv", type=int, default=1024)
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"), help="where the synthetic adapter is written")
    ap.add_argument("--reuse", action="store_true", help="reuse an adapter already in --workdir")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for analyze (the 2 CPU cores)")
    ap.add_argument("--dense-direct-max", type=int, default=8192 * 8192,
                    help="time the dense SVD directly up to this many entries; larger shapes are flop-scaled")
    ap.add_argument("--dense-all", action="store_true", help="time every shape's dense SVD directly (hours on 2 cores)")
    ap.add_argument("--out", default=None, help="markdown result file (default: $OUT/bench_analyze.md if $OUT is set)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.layers, args.rank, args.hidden, args.intermediate, args.kv = 2, 8, 256, 512, 64
    from loradial.adapters.analysis import analyze
    from loradial.adapters.spectrum import factored_svd

    torch.set_num_threads(args.threads)

    shapes = module_shapes(args.hidden, args.intermediate, args.kv)
    tag = f"loradial_bench_L{args.layers}_r{args.rank}_h{args.hidden}_i{args.intermediate}_kv{args.kv}"
    path = Path(args.workdir) / tag
    weights = path / "adapter_model.safetensors"
    if not (args.reuse and weights.is_file()):
        t_gen, _ = timed(lambda: make_adapter(path, args.layers, args.rank, shapes))
        print(f"generated {weights} ({weights.stat().st_size / 1e9:.2f} GB) in {t_gen:.1f}s", file=sys.stderr)
    size_gb = weights.stat().st_size / 1e9

    def read_all() -> int:
        with open(weights, "rb", buffering=0) as f:
            n = 0
            while chunk := f.read(64 << 20):
                n += len(chunk)
        return n

    _ = torch.linalg.svdvals(torch.randn(64, 64)), torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))  # warm up LAPACK
    reads = [timed(read_all)[0] for _ in range(3)]
    t_read = min(reads)
    evicted = evict(weights)
    t_read_cold = timed(read_all)[0]
    t_an, res = timed(lambda: analyze(path))
    t_read_after = timed(read_all)[0]  # the file is warm again
    t_read = min(t_read, t_read_after)

    # dense reference: one module of each distinct shape, then extrapolated by the shape counts
    from loradial.adapters.format import load_adapter

    ad = load_adapter(path)
    first = {}  # one module per shape; (a, b) and (b, a) share a timing (svdvals of the transpose)
    for name, m in ad.modules.items():
        first.setdefault(tuple(sorted((m.d_out, m.d_in))), m)
    dense_t, ours_t, max_rel, scaled = {}, {}, 0.0, []
    torch.set_num_threads(1)  # dense: one LAPACK thread (OpenMP spin-waits badly on a shared machine)
    for shape in sorted(first, key=lambda sh: sh[0] * sh[1]):
        m = first[shape]
        direct = [sh for sh in dense_t if sh not in scaled]
        if not args.dense_all and shape[0] * shape[1] > args.dense_direct_max and direct:
            ref = max(direct, key=lambda sh: sh[0] * sh[1])  # flop-scaled from the largest measured shape
            dense_t[shape] = dense_t[ref] * svd_flops(*shape) / svd_flops(*ref)
            scaled.append(shape)
            print(f"dense {shape}: {dense_t[shape]:.1f}s (flop-scaled from {ref})", file=sys.stderr)
            continue

        def dense():
            dW = m.scale * (m.B.float() @ m.A.float())
            return torch.linalg.svdvals(dW)

        dense_t[shape], s_dense = timed(dense)
        ours_t[shape], s_ours = timed(lambda: factored_svd(m.A, m.B, m.scale))
        k = len(s_ours)
        rel = np.abs(s_ours - s_dense[:k].double().numpy()) / s_ours[0]
        max_rel = max(max_rel, float(rel.max()))
        print(f"dense {shape}: {dense_t[shape]:.2f}s, factored {ours_t[shape] * 1e3:.1f}ms", file=sys.stderr)
    torch.set_num_threads(args.threads)
    counts: dict[tuple[int, int], int] = {}
    for m in ad.modules.values():
        key = tuple(sorted((m.d_out, m.d_in)))
        counts[key] = counts.get(key, 0) + 1
    t_dense = sum(dense_t[s] * n for s, n in counts.items())

    n_mod = len(ad.modules)
    rows = [
        ("adapter", f"{n_mod} modules ({args.layers} layers × 7), r={args.rank}, bf16, {size_gb:.2f} GB"),
        ("read file (warm page cache, best of 4)", f"{t_read:.2f} s"),
        ("read file (after fadvise DONTNEED)" + ("" if evicted else " [no fadvise]"), f"{t_read_cold:.2f} s"),
        ("`analyze` (load + validate + spectra + recommendation)", f"{t_an:.2f} s"),
        ("analyze / read (warm)", f"{t_an / t_read:.1f}×"),
        ("analyze / read (cold)", f"{t_an / t_read_cold:.1f}×"),
        ("dense: form ΔW + svdvals fp32, 1 thread (per-shape times × counts)", f"{t_dense:.0f} s"),
        ("dense / analyze", f"{t_dense / t_an:.0f}× (≥ {t_dense / t_an / 2:.0f}× if dense used both cores perfectly)"),
        ("max abs(σ_factored − σ_dense) / σ_max on the sample", f"{max_rel:.1e}"),
        ("recommended rank (energy 0.90)", str(res.recommendation["rank"])),
    ]
    cmd = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "| measurement | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
        f"device: {_cpu_name()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
        f"command: `{cmd}`",
        "dense per shape (s): " + json.dumps({f"{a}x{b}" + (" (flop-scaled)" if (a, b) in scaled else ""): round(t, 2)
                                             for (a, b), t in dense_t.items()}),
        "factored SVD per module of that shape (ms): " + json.dumps({f"{a}x{b}": round(t * 1e3, 1) for (a, b), t in ours_t.items()}),
    ]
    table = "\n".join(lines)
    print(table)
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_analyze.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
