"""Does `loradial tune` find what an exhaustive grid finds, for a fraction of its compute?

For one task (train + eval files), it runs `loradial.tune` with a fixed step count S, then the
exhaustive reference: one sweep of every rank tune explored or refined × every learning rate it
explored or refined × LoRA and rsLoRA, each trained to the same S steps on the same data (no halving).
It prints one markdown row: tune's pick and eval loss, the grid's best and eval loss, the gap (%),
and tune's adapter-steps as a fraction of the grid's. With ``--metric exact_match`` both pick their
winner by greedy exact match of the eval completions, and both winners' scores are printed.

    python benchmarks/tune/validate.py --task domain-shift --model src/loradial/assets/demo-model \
        --train src/loradial/assets/demo-data/train.jsonl --eval src/loradial/assets/demo-data/eval.jsonl \
        --steps 64 --max-len 64 --out /tmp/tune-val

Results go to benchmarks/tune/RESULTS.md by hand, with the device and the command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rank", type=int, default=None, help="start rank (default: recommend's)")
    ap.add_argument("--lr", type=float, default=None, help="start learning rate (default: recommend's)")
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--metric", default="eval_loss", choices=["eval_loss", "exact_match"])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="auto", help="fp32, bf16, ... (default: loradial's)")
    ap.add_argument("--device", default=None, help="e.g. cuda:0 (default: every visible GPU, else the CPU)")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import loradial

    out = Path(args.out)
    common = dict(batch_size=args.batch_size, max_len=args.max_len, metric=args.metric,
                  max_new_tokens=args.max_new_tokens, devices=[args.device] if args.device else None)
    if args.dtype != "auto":
        common["dtype"] = args.dtype
    if args.eval_every:
        common["eval_every"] = args.eval_every
    t0 = time.time()
    tuned = loradial.tune(args.model, args.train, eval_data=args.eval, out=out / "tune", steps=args.steps,
                          rank=args.rank, lr=args.lr, targets=args.targets, rank_check=False, **common)
    t_tune = time.time() - t0
    ranks = sorted({c["r"] for c in tuned.configs})
    lrs = sorted({c["learning_rate"] for c in tuned.configs})
    t0 = time.time()
    grid = loradial.sweep(args.model, args.train, eval_data=args.eval, out=out / "grid", ranks=ranks,
                          alphas="ratio:1", variants=["lora", "rslora"], targets=[args.targets], lrs=lrs,
                          steps=args.steps, **common)
    t_grid = time.time() - t0
    best = next(c for c in grid.configs if c["name"] == grid.best)
    grid_steps = sum(c["steps"] for c in grid.configs)
    gap = 100 * (tuned.best_eval_loss - best["best_eval_loss"]) / best["best_eval_loss"]
    row = {"task": args.task, "tune_pick": tuned.best_config["name"], "tune_eval_loss": tuned.best_eval_loss,
           "grid_best": grid.best, "grid_eval_loss": best["best_eval_loss"], "gap_percent": gap,
           "tune_adapter_steps": tuned.adapter_steps_used, "grid_adapter_steps": grid_steps,
           "compute_fraction": tuned.adapter_steps_used / grid_steps, "grid_configs": len(grid.configs),
           "steps": args.steps, "base_eval_loss": tuned.base_eval_loss, "tune_wall_s": round(t_tune, 1),
           "grid_wall_s": round(t_grid, 1), "metric": args.metric,
           "tune_exact_match": tuned.best_config.get("exact_match"), "grid_exact_match": best.get("exact_match")}
    (out / "row.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))
    print(f"| {args.task} | {row['tune_pick']} | {row['tune_eval_loss']:.4f} | {row['grid_best']} | "
          f"{row['grid_eval_loss']:.4f} | {gap:+.2f} % | {row['tune_adapter_steps']:,} / {grid_steps:,} = "
          f"{100 * row['compute_fraction']:.0f} % |")


if __name__ == "__main__":
    main()
