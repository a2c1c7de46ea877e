"""Tables for benchmarks/truncation/RESULTS.md from one validate.sh output directory.

For each learning rate: the eval loss a config *trained* at rank r reaches (best eval over the run,
the sweep's own number) beside the eval loss of the highest-rank adapter *truncated* to k = r; then
the ranks each method recommends and how far (in doublings) they land from the sweep's best rank.
Also the smallest rank whose trained loss is within 1 % of the sweep's best: a "good enough" rank
that a user would accept, so a miss can be read against it too.

Usage: python benchmarks/truncation/summarize.py OUTDIR
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def doublings(a: int | None, b: int | None) -> str:
    if not a or not b:
        return "-"
    d = math.log2(a / b)
    return "0 (same)" if d == 0 else f"{abs(d):g} {'below' if d < 0 else 'above'}"


RETAINS = (0.95, 0.98, 0.99, 0.995)


def best_over_lr(cfgs: list[dict], lrs: set[float] | None = None) -> dict[tuple[int, int], float]:
    """{(seed, r): lowest best_eval_loss over the learning rates (of ``lrs`` when given)}."""
    out: dict[tuple[int, int], float] = {}
    for c in cfgs:
        if c.get("best_eval_loss") is None or (lrs is not None and c["learning_rate"] not in lrs):
            continue
        key = (c["seed"], c["r"])
        out[key] = min(out.get(key, math.inf), c["best_eval_loss"])
    return out


def seeds_table(main_cfgs: list[dict], seed_res: dict) -> None:
    """Run-to-run noise: best-over-lr eval loss per rank for seed 0 (the main sweep) and the replicates."""
    cfgs = seed_res["configs"]
    lrs = {c["learning_rate"] for c in cfgs}
    ranks = sorted({c["r"] for c in cfgs})
    table = {**best_over_lr(main_cfgs, lrs), **best_over_lr(cfgs)}
    seeds = sorted({s for s, _ in table})
    print(f"\nRun-to-run noise: best eval loss over lr {', '.join(f'{x:g}' for x in sorted(lrs))} per rank; "
          "seed 0 is the main sweep, the others change the adapter init and the data order:\n")
    print("| r | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread (max - min) |")
    print("|---:|" + "---:|" * (len(seeds) + 2))
    mean = {}
    for r in ranks:
        vals = [table[(s, r)] for s in seeds if (s, r) in table]
        mean[r] = sum(vals) / len(vals)
        print(f"| {r} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean[r]:.4f} | {max(vals) - min(vals):.4f} |")
    for s in seeds:
        per_r = {r: table[(s, r)] for r in ranks if (s, r) in table}
        b = min(per_r, key=lambda r: (per_r[r], r))
        print(f"\nseed {s}: best rank {b}, smallest rank within 1 % of it "
              f"{min(r for r in per_r if per_r[r] <= per_r[b] * 1.01)}", end="")
    b = min(mean, key=lambda r: (mean[r], r))
    print(f"\nmean over seeds: best rank {b}, smallest rank within 1 % of it "
          f"{min(r for r in mean if mean[r] <= mean[b] * 1.01)}")


def main(out: Path) -> None:
    res = json.loads((out / "sweep" / "results.json").read_text())
    cfgs = [c for c in res["configs"] if c.get("best_eval_loss") is not None]
    lrs = sorted({c["learning_rate"] for c in cfgs})
    ranks = sorted({c["r"] for c in cfgs})
    loss = {(c["r"], c["learning_rate"]): c["best_eval_loss"] for c in cfgs}
    names = {(c["r"], c["learning_rate"]): c["name"] for c in cfgs}
    best_per_r = {r: min(loss[(r, lr)] for lr in lrs if (r, lr) in loss) for r in ranks}
    best_r = min(ranks, key=lambda r: (best_per_r[r], r))
    good_r = min(r for r in ranks if best_per_r[r] <= best_per_r[best_r] * 1.01)
    print(f"sweep: {len(cfgs)} configs, best {res.get('best')} (rank {best_r}, eval loss "
          f"{best_per_r[best_r]:.4f}); smallest rank within 1 % of it: {good_r}\n")
    print("| r | " + " | ".join(f"trained, lr {lr:g}" for lr in lrs) + " | best over lr |")
    print("|---:|" + "---:|" * (len(lrs) + 1))
    for r in ranks:
        cells = [f"{loss[(r, lr)]:.4f}" if (r, lr) in loss else "" for lr in lrs]
        print(f"| {r} | " + " | ".join(cells) + f" | {best_per_r[r]:.4f} |")
    rows = []
    for lr in lrs:
        name = names.get((ranks[-1], lr))
        path = out / f"analysis-{name}.json"
        if not path.exists():
            continue
        an = json.loads(path.read_text())
        print(f"\nTruncation curve of {name} (trained at r={ranks[-1]}, lr {lr:g}) on the eval data:\n")
        print("| k | truncated to k | retained | budgeted, same params | trained at r=k, same lr | trained at r=k, best lr |")
        print("|---:|---:|---:|---:|---:|---:|")
        for p in an["truncation_curve"]:
            k, b = p["k"], p.get("budgeted_eval_loss")
            tr = loss.get((k, lr))
            print(f"| {k} | {p['eval_loss']:.4f} | {p['retained']:.3f} | {'' if b is None else f'{b:.4f}'} | "
                  f"{'' if tr is None else f'{tr:.4f}'} | {'' if k not in best_per_r else f'{best_per_r[k]:.4f}'} |")
        curve = an["truncation_curve"]
        by_retain = [min((p["k"] for p in curve if p["retained"] >= t), default=None) for t in RETAINS]
        print("\ndata-driven rank at --retain " + ", ".join(f"{t:g}: {k}" for t, k in zip(RETAINS, by_retain)))
        rows.append((lr, an["recommended_rank_data"], an["recommended_rank_spectrum"], an.get("rank_explanation")))
    print("\n| adapter read (lr) | data-driven rank (98 %) | spectrum rank | sweep's best rank | "
          "miss, data | miss, spectrum | within-1 % rank |")
    print("|---:|---:|---:|---:|---|---|---:|")
    for lr, rd, rs, _ in rows:
        print(f"| {lr:g} | {rd} | {rs} | {best_r} | {doublings(rd, best_r)} | {doublings(rs, best_r)} | {good_r} |")
    for lr, _, _, why in rows:
        if why:
            print(f"\nlr {lr:g}: {why}")
    if (out / "sweep-seeds" / "results.json").exists():
        seeds_table(cfgs, json.loads((out / "sweep-seeds" / "results.json").read_text()))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Summarize a truncation validation run (validate.sh OUT) into tables.")
    ap.add_argument("out", type=Path, help="the OUT directory validate.sh wrote")
    main(ap.parse_args().out)
