"""Full fine-tuning vs LoRA ranks 4-256 on the bundled demo model (4M Llama), at equal steps.

One ``loradial.sweep`` with ``--variants lora,full``: every LoRA rank (all-linear, alpha = r) with a small
learning-rate grid, and full fine-tuning with its own grid (the LoRA grid / 10), all on the same data
order, steps, schedule and eval set. ``--pack-size 1`` trains each config alone, so its training time is
its own. The table: per rank, the best learning rate's eval loss, the fraction of full FT's eval-loss
gain it reaches (gain = base loss - loss; the base loss is full FT's eval at step 0), trainable parameters,
estimated peak training memory (``loradial plan``'s memory model for a GPU step of the same shapes, bf16)
and measured training time, each relative to full FT.

    PYTHONPATH=src python benchmarks/full_ft/bench_full.py --out benchmarks/full_ft/RESULTS.md    # CPU, < 15 min
    PYTHONPATH=src python benchmarks/full_ft/bench_full.py --quick --out /tmp/full_quick.md       # plumbing, < 1 min
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import loradial
from loradial.cost.planning import plan
from loradial.flows.demo import DEMO_DATA, DEMO_MODEL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ranks", default="4,8,16,32,64,128,256")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--full-lrs", default=None, help="default: each of --lrs / 10")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--train-examples", type=int, default=600)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 ranks, 6 steps: check the plumbing")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.ranks, args.lrs, args.train_examples, args.eval_examples = 6, "4,16", "3e-3", 48, 16
    torch.set_num_threads(args.threads)
    ranks = [int(r) for r in args.ranks.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    full_lrs = [float(x) for x in args.full_lrs.split(",")] if args.full_lrs else None
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = (DEMO_DATA / "train.jsonl").read_text().splitlines()[:args.train_examples]
        ev = (DEMO_DATA / "eval.jsonl").read_text().splitlines()[:args.eval_examples]
        (tmp / "train.jsonl").write_text("\n".join(train) + "\n")
        (tmp / "eval.jsonl").write_text("\n".join(ev) + "\n")
        res = loradial.sweep(str(DEMO_MODEL), str(tmp / "train.jsonl"), out=tmp / "sweep", ranks=ranks,
                             variants=["lora", "full"], lrs=lrs, full_lrs=full_lrs, targets=["all-linear"],
                             steps=args.steps, batch_size=args.batch_size, max_len=args.max_len,
                             eval_data=str(tmp / "eval.jsonl"), eval_fraction=0.0, pack_size=1, devices=["cpu"])
    wall = time.time() - t0
    f = res.full_ft
    pl = plan(str(DEMO_MODEL), ranks, ["all-linear"], batch_size=args.batch_size, seq_len=args.max_len)
    est = {row.rank: row.peak_memory_bytes for row in pl.rows}
    full_est = pl.full["peak_memory_bytes"]
    by_name = {c["name"]: c for c in res.configs}
    fulls = sorted((c for c in res.configs if c["variant"] == "full"), key=lambda c: c["learning_rate"])
    cmd = "PYTHONPATH=src python benchmarks/full_ft/bench_full.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Full fine-tuning vs LoRA ranks on the demo model (CPU)",
        "",
        f"- device: CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s); torch {torch.__version__}",
        f"- command: `{cmd}`",
        f"- setup: bundled demo model ({pl.model['total_params']:,} parameters), {args.train_examples} training / "
        f"{args.eval_examples} eval records of the bundled data, {args.steps} steps of batch {args.batch_size} x "
        f"{args.max_len} tokens, cosine schedule, all-linear LoRA with alpha = r at lr {lrs}, full fine-tuning "
        f"(fp32 AdamW) at lr {[c['learning_rate'] for c in fulls]}; each config trained alone (`--pack-size 1`).",
        f"- wall time: {wall:.0f} s",
        "",
        f"Base eval loss {f['base_eval_loss']:.4f}. Full fine-tuning: "
        + ", ".join(f"lr {c['learning_rate']:g} -> {c['best_eval_loss']:.4f}" for c in fulls)
        + f"; the reference is {f['config']} (gain {f['gain']:.4f}).",
        "",
        "| rank | best LoRA lr | eval loss | fraction of full FT's gain | trainable params | params / full | "
        "est. peak memory / full | time / full |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in f["per_rank"]:
        c = by_name[p["config"]]
        mem = est.get(p["r"]) / full_est if est.get(p["r"]) else float("nan")
        frac = p["full_ft_gain_fraction"]
        lines.append(f"| {p['r']} | {c['learning_rate']:g} | {p['eval_loss']:.4f} | "
                     f"{'-' if frac is None else f'{100 * frac:.1f} %'} | {p['trainable_params']:,} | "
                     f"{100 * p['params_vs_full']:.2f} % | {100 * mem:.0f} % | "
                     f"{'-' if p['time_vs_full'] is None else format(p['time_vs_full'], '.2f')} |")
    within = f["smallest_rank_within_1pct"]
    lines += ["", f"Smallest rank within 1 % of full fine-tuning's eval loss: {within if within is not None else 'none'}.",
              f"Estimated peak memory (bf16 GPU step, `loradial plan`): full fine-tuning {full_est / 2**20:.0f} MiB."
              " Times are CPU seconds of each config's own training segment (eval included), as ratios."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
