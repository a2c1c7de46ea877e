"""Does the sweep's memory packer (plan's memory model) hold for the engine, with and without
--gradient-checkpointing? One GPU; a random-init model of a bundled shape; the demo data.

For each setting: one `loradial sweep` (4 ranks, one pack if it fits), then per pack the packer's
estimate (sweep.yaml costs: max shared + sum of marginal) beside the engine's measured
`torch.cuda.max_memory_allocated` (results.json peak_memory_bytes), and the wall time.

    python benchmarks/sweep/packing_check.py --model llama-3.2-3b --out $OUT/packing.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "loradial" / "assets" / "demo-data"
TOKENIZER = ROOT / "src" / "loradial" / "assets" / "demo-model"


def make_model(name: str, where: Path, device: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradial.models.resolve import inspect_model, to_pretrained_config

    config = to_pretrained_config(inspect_model(name).config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(where)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(where)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.2-3b")
    ap.add_argument("--ranks", default="8,16,32,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a plumbing check)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    make_model(args.model, tmp / "model", args.device)
    lines = [f"# Sweep packer vs engine peak memory ({args.model}, random init, demo data)", "",
             f"- command: `python benchmarks/sweep/packing_check.py {' '.join(sys.argv[1:])}`",
             f"- per config {args.steps} steps x batch {args.batch_size} x max {args.max_len} tokens, ranks {args.ranks}, "
             "all-linear, lr 2e-4", "",
             "| setting | packs | pack | configs | packer estimate GiB | measured peak GiB | estimate / measured | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for extra in ([], ["--gradient-checkpointing"]):
        out = tmp / ("sweep" + "".join(extra))
        cmd = ["loradial", "sweep", "--model", str(tmp / "model"), "--data", str(DATA / "train.jsonl"),
               "--eval-data", str(DATA / "eval.jsonl"), "--ranks", args.ranks, "--lr", "2e-4", "--steps",
               str(args.steps), "--batch-size", str(args.batch_size), "--max-len", str(args.max_len),
               "--out", str(out), "--json", "--devices", args.device, *extra]
        t = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t
        res = json.loads((out / "results.json").read_text())
        settings = yaml.safe_load((out / "sweep.yaml").read_text())
        costs = {c["name"]: c for c in settings["costs"]}
        peak = {c["name"]: c["peak_memory_bytes"] for c in res["configs"]}
        packs = res["packs"][0]
        for i, pack in enumerate(packs):
            est = max(costs[n]["shared"] for n in pack) + sum(costs[n]["marginal"] for n in pack)
            meas = max(peak[n] or 0 for n in pack) or float("nan")
            lines.append(f"| {' '.join(extra) or 'default'} | {len(packs)} | {i + 1} | {len(pack)} | {est / 2**30:.2f} | "
                         f"{meas / 2**30:.2f} | {est / meas:.2f} | {wall:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
