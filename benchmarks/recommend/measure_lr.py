"""Is ``loradial recommend``'s learning rate near the best one measured on the model?

Issue 13 item 2. For one model and one data set: ask ``loradial.recommend`` for its learning rate,
then train an equal-steps grid with ``loradial.sweep`` (learning rates x ranks x LoRA / rsLoRA,
alpha = r, all-linear, one seed) and, per (rank, variant), find the learning rate with the lowest
eval loss. Reported per (rank, variant):

* ``best_lr``        the grid point with the lowest best eval loss;
* ``best_lr_fit``    the vertex of a parabola through log(lr) -> eval loss at the best grid point and
                     its two neighbours (None at the edge of the grid: then the best is only known to
                     lie beyond it);
* ``ratio``          recommended / best_lr (the issue's bar: between 1/3 and 3).

Writes ``OUT/measure_lr.json`` (every number, the command, the device) and prints a Markdown table.
The sweep itself stays in ``OUT/sweep`` (results.json, adapters, metrics.jsonl).

Defaults are the bundled 4M-parameter demo model on the bundled demo data (Python docs -> Python
source, the 'domain-shift' task, 3000 training examples), sized for a 2-core CPU:

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/recommend/measure_lr.py --out /tmp/lr-demo

A GPU run of the 19M sibling (``scripts/demo_model/pretrain.py --size small``) or a 0.5B shape:

    python benchmarks/recommend/measure_lr.py --model /tmp/small --device cuda --dtype bf16 \\
        --steps 600 --batch-size 16 --max-len 256 --ranks 8,32,128 --out /tmp/lr-small
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "loradial" / "assets"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ASSETS / "demo-model"))
    ap.add_argument("--data", default=str(ASSETS / "demo-data" / "train.jsonl"))
    ap.add_argument("--eval-data", default=str(ASSETS / "demo-data" / "eval.jsonl"))
    ap.add_argument("--eval-examples", type=int, default=96, help="first N eval records (0 = all)")
    ap.add_argument("--task", default="domain-shift")
    ap.add_argument("--examples", type=int, default=None, help="data size for recommend (default: lines in --data)")
    ap.add_argument("--ranks", default="8,32")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2")
    ap.add_argument("--variants", default="lora,rslora")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=None, help="default: steps // 5")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def parabola_vertex(lrs: list[float], losses: list[float], i: int) -> float | None:
    """exp of the vertex of the parabola through (log lr, loss) at i-1, i, i+1; None at an edge or
    when the three points do not curve upwards."""
    if i <= 0 or i >= len(lrs) - 1:
        return None
    x = [math.log(lrs[j]) for j in (i - 1, i, i + 1)]
    y = [losses[j] for j in (i - 1, i, i + 1)]
    if not all(math.isfinite(v) for v in y):
        return None
    d1 = (y[1] - y[0]) / (x[1] - x[0])
    d2 = (y[2] - y[1]) / (x[2] - x[1])
    a = (d2 - d1) / (x[2] - x[0])
    if a <= 0:
        return None
    b = d1 - a * (x[0] + x[1])
    xv = -b / (2 * a)
    return math.exp(min(max(xv, x[0]), x[2]))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import loradial
    from loradial.io import atomic_write_json

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = [int(x) for x in args.ranks.split(",")]
    lrs = sorted(float(x) for x in args.lrs.split(","))
    variants = [v.strip() for v in args.variants.split(",")]
    n_train = args.examples or sum(1 for ln in Path(args.data).read_text(encoding="utf-8").splitlines() if ln.strip())

    rec = loradial.recommend(args.model, args.task, examples=n_train)
    from loradial.advice.rules import model_width
    from loradial.models.resolve import inspect_model

    info = inspect_model(args.model)
    width = model_width(info.full_config())

    eval_path = Path(args.eval_data)
    if args.eval_examples:
        lines = [ln for ln in eval_path.read_text(encoding="utf-8").splitlines() if ln.strip()][: args.eval_examples]
        eval_path = out / "eval_subset.jsonl"
        eval_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    t0 = time.time()
    sw_dir = out / "sweep"
    kwargs = dict(out=sw_dir, ranks=ranks, alphas="ratio:1", variants=variants, targets=["all-linear"], lrs=lrs,
                  steps=args.steps, batch_size=args.batch_size, max_len=args.max_len, eval_data=str(eval_path),
                  eval_every=args.eval_every or max(1, args.steps // 5), devices=[args.device], dtype=args.dtype,
                  seed=args.seed, progress=True)
    if (sw_dir / "sweep.yaml").exists():
        res = loradial.sweep(out=sw_dir, resume=True, devices=[args.device])
    else:
        res = loradial.sweep(args.model, args.data, **kwargs)
    wall = time.time() - t0

    rows = []
    for variant in variants:
        for r in ranks:
            entries = {float(c["learning_rate"]): c for c in res.configs if c["r"] == r and c["variant"] == variant}
            losses = [float(entries[lr]["best_eval_loss"]) if entries.get(lr) and entries[lr]["best_eval_loss"] is not None
                      else math.inf for lr in lrs]
            i = min(range(len(lrs)), key=lambda j: losses[j])
            fit = parabola_vertex(lrs, losses, i)
            rows.append({
                "variant": variant, "r": r, "lora_alpha": r, "losses": dict(zip((f"{x:g}" for x in lrs), losses)),
                "verdicts": {f"{lr:g}": entries[lr].get("verdict") for lr in lrs if lr in entries},
                "best_lr": lrs[i], "best_eval_loss": losses[i], "best_lr_fit": fit,
                "at_edge": i in (0, len(lrs) - 1),
                "ratio": rec.learning_rate / lrs[i], "ratio_fit": rec.learning_rate / fit if fit else None,
                "loss_at_nearest_grid_lr": losses[min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j] / rec.learning_rate)))],
            })
    doc = {
        "model": args.model, "total_params": info.total_params, "hidden_size": width, "task": args.task,
        "examples": n_train, "recommended": {"learning_rate": rec.learning_rate, "r": rec.r, "lora_alpha": rec.lora_alpha,
                                             "reason": rec.reasons["learning_rate"]},
        "grid": {"ranks": ranks, "lrs": lrs, "variants": variants, "alpha": "r", "targets": "all-linear",
                 "steps": args.steps, "batch_size": args.batch_size, "max_len": args.max_len,
                 "eval_examples": args.eval_examples, "seed": args.seed, "schedule": "sweep default"},
        "rows": rows, "sweep_best": res.best, "sweep_wall_seconds": round(wall, 1),
        "device": f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"torch": torch.__version__, "loradial": getattr(loradial, "__version__", "?")},
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + (argv or sys.argv[1:])),
    }
    atomic_write_json(out / "measure_lr.json", doc)

    print(f"\nmodel {args.model}: {info.total_params / 1e6:.1f}M params, hidden {width}; recommended lr "
          f"{rec.learning_rate:g} ({args.task}, {n_train} examples); sweep {wall:.0f} s\n")
    head = "| variant | r | " + " | ".join(f"lr {x:g}" for x in lrs) + " | best lr | parabola fit | recommended / best |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        cells = [f"{row['losses'][f'{x:g}']:.4f}" if math.isfinite(row['losses'][f'{x:g}']) else "diverged" for x in lrs]
        fit = f"{row['best_lr_fit']:.2g}" if row["best_lr_fit"] else "edge"
        print(f"| {row['variant']} | {row['r']} | " + " | ".join(cells) +
              f" | {row['best_lr']:g} | {fit} | {row['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
