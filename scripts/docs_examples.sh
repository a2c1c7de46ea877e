#!/usr/bin/env bash
# The examples of docs/*.md that run offline on a CPU (bundled configs, the bundled demo model and
# data), exactly as the pages show them. They reuse what scripts/readme_examples.sh wrote in the
# same WORKDIR (runs/r8, runs/sweep, runs/demo); without those, that script runs first.
# tests/test_readme.py runs this script and checks that every `loradial ...` line below is in
# docs/*.md; every other `loradial` line of the docs is parsed against the CLI, not run.
#
# Usage: WORKDIR=DIR scripts/docs_examples.sh   (uses `python -m loradial`; PYTHON overrides python)
set -Eeuo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${WORKDIR:-$(mktemp -d)}"
if [ ! -d "$WORKDIR/runs/r8" ] || [ ! -d "$WORKDIR/runs/sweep" ] || [ ! -d "$WORKDIR/runs/demo" ]; then
    WORKDIR="$WORKDIR" bash "$REPO/scripts/readme_examples.sh"
fi
cd "$WORKDIR"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
loradial() { "${PYTHON:-python}" -m loradial "$@"; }
trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR
echo "running the docs examples in $WORKDIR" >&2

# docs/plan-and-memory.md
loradial plan --model llama-2-7b --rank 8,16,64,256 --targets q_proj,v_proj --targets all-linear
loradial plan --model llama-3.2-1b --rank 16 --targets all-linear --exclude k_proj --layers 0-7 --rank-pattern 'q_proj=4,v_proj=8' --dora
loradial plan --model llama-3.1-8b --rank 16 --targets all-linear --batch-size 4 --seq-len 1024 --gradient-checkpointing
loradial plan --model llama-3.1-8b --rank 16 --targets all-linear --quant 4bit --attn eager --seq-len 2048
# docs/advice.md
loradial recommend --model llama-3.1-8b --task standard --examples 20000 --gpu-memory 24 --export axolotl --out runs/lora.yaml
loradial diagnose runs/sweep
loradial export runs/sweep --format torchtune --out runs/torchtune.yaml
# docs/acting-on-adapters.md
loradial analyze runs/r8/adapters/default --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/eval.jsonl --ranks 1,2,4 --scales 0.5,1 --max-len 64 --max-examples 32 --json > runs/r8-analysis.json
loradial resize runs/r8/adapters/default --energy 0.95 --out runs/r8-e95
loradial resize runs/r8/adapters/default --budget 100000 --out runs/r8-100k
loradial analyze runs/r8-merged --base src/loradial/assets/demo-model --json > runs/r8-full.json
loradial resize runs/r8-merged --from-full --base src/loradial/assets/demo-model --rank 8 --out runs/r8-extracted
loradial rescale runs/r8/adapters/default --to rslora --out runs/r8-rs
loradial rescale runs/r8/adapters/default --scale 0.5 --fold --out runs/r8-half-b
# docs/full-finetuning.md
loradial plan --model qwen2.5-0.5b --rank 8,64 --targets all-linear --batch-size 2 --seq-len 512
loradial sweep --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/train.jsonl --eval-data src/loradial/assets/demo-data/eval.jsonl --ranks 4,16 --variants lora,full --lr 2e-3 --steps 10 --max-len 64 --out runs/sweep-full
# docs/report.md
loradial report runs/demo --out runs/demo-report.html

echo "docs examples: all commands exited 0" >&2
