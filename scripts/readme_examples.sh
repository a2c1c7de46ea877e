#!/usr/bin/env bash
# Every verb's example exactly as README.md shows it ("Verbs"), run offline on CPU against the
# bundled demo model and data, chained: train/sweep outputs feed analyze, resize, rescale, merge...
# The README runs these from the repository root; this script runs them in a temporary directory
# (WORKDIR, default: a new mktemp -d) that links the repository's src/, so paths read the same.
# tests/test_readme.py runs it and checks that every `loradial ...` line below is in README.md.
#
# Usage: scripts/readme_examples.sh            (uses `python -m loradial`; PYTHON overrides python)
set -Eeuo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${WORKDIR:-$(mktemp -d)}"
mkdir -p "$WORKDIR" && cd "$WORKDIR"
ln -sfn "$REPO/src" src
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
loradial() { "${PYTHON:-python}" -m loradial "$@"; }
trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR
echo "running the README examples in $WORKDIR" >&2

loradial demo --steps 10 --out runs/demo
loradial models
loradial plan --model src/loradial/assets/demo-model --rank 4,8,16 --targets all-linear --targets q_proj,v_proj
loradial recommend --model src/loradial/assets/demo-model --task standard --examples 3000 --export peft --out runs/recommended.json
loradial train --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/train.jsonl --rank 8 --alpha 16 --targets all-linear --lr 2e-3 --steps 20 --max-len 64 --out runs/r8
loradial sweep --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/train.jsonl --eval-data src/loradial/assets/demo-data/eval.jsonl --ranks 4,16 --alphas ratio:1,2 --lr 2e-3 --steps 20 --max-len 64 --out runs/sweep
loradial tune --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/train.jsonl --eval-fraction 0.02 --steps 8 --max-len 64 --out runs/tune
loradial analyze runs/r8/adapters/default --base src/loradial/assets/demo-model
loradial resize runs/r8/adapters/default --rank 4 --out runs/r8-rank4
loradial rescale runs/r8/adapters/default --scale 0.5 --out runs/r8-half
loradial alpha-sweep runs/r8/adapters/default --model src/loradial/assets/demo-model --data src/loradial/assets/demo-data/eval.jsonl --scales 0,0.5,1,1.5 --max-len 64
loradial merge runs/r8/adapters/default --model src/loradial/assets/demo-model --out runs/r8-merged
loradial diagnose runs/r8
loradial export runs/sweep --format axolotl --out runs/axolotl.yaml
loradial report runs/sweep --out runs/sweep-report.html

echo "README examples: all commands exited 0" >&2
