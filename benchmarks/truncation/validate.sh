#!/usr/bin/env bash
# Issue 8 validation: does the truncation curve (or the spectrum) of one high-rank adapter predict
# the rank that a real sweep finds best at equal steps?
# One sweep (ranks x learning rates, equal steps for all), then `loradial analyze --data` on the
# highest-rank adapter of every learning rate, then summarize.py prints the tables.
# Usage: bash benchmarks/truncation/validate.sh OUTDIR
#   settings by environment: MODEL DATA STEPS BATCH MAXLEN RANKS LRS EVAL_EVERY, and SEEDS (e.g. 1,2:
#   a second sweep over SEED_RANKS x SEED_LRS with those init seeds and another data order, to show
#   how much of a rank-to-rank difference is run-to-run noise)
#   (defaults: the bundled demo model and data, 200 steps x batch 8 x 128 tokens, ranks 4..128,
#    lr 1e-3,3e-3: about 10-20 min on 2 CPU cores, under a minute on one H100/H200)
set -euo pipefail
OUT=${1:?output dir}
M=${MODEL:-src/loradial/assets/demo-model}
D=${DATA:-src/loradial/assets/demo-data}
STEPS=${STEPS:-200}; BATCH=${BATCH:-8}; MAXLEN=${MAXLEN:-128}
RANKS=${RANKS:-4,8,16,32,64,128}; LRS=${LRS:-1e-3,3e-3}; EVAL_EVERY=${EVAL_EVERY:-50}
mkdir -p "$OUT"
loradial sweep --model "$M" --data "$D/train.jsonl" --eval-data "$D/eval.jsonl" \
  --ranks "$RANKS" --alphas ratio:1 --lr "$LRS" --steps "$STEPS" --batch-size "$BATCH" --max-len "$MAXLEN" \
  --eval-every "$EVAL_EVERY" --out "$OUT/sweep" --json > "$OUT/sweep.json"
# the highest-rank adapter of each learning rate
for name in $(python - "$OUT/sweep/results.json" <<'PY'
import json, sys
cs = json.load(open(sys.argv[1]))["configs"]
top = max(c["r"] for c in cs)
print(" ".join(c["name"] for c in cs if c["r"] == top))
PY
); do
  loradial analyze "$OUT/sweep/adapters/$name" --model "$M" --data "$D/eval.jsonl" --max-len "$MAXLEN" \
    --json > "$OUT/analysis-$name.json"
done
if [ -n "${SEEDS:-}" ]; then
  loradial sweep --model "$M" --data "$D/train.jsonl" --eval-data "$D/eval.jsonl" \
    --ranks "${SEED_RANKS:-$RANKS}" --alphas ratio:1 --lr "${SEED_LRS:-$LRS}" --seeds "$SEEDS" --seed 1 \
    --steps "$STEPS" --batch-size "$BATCH" --max-len "$MAXLEN" --eval-every "$EVAL_EVERY" \
    --out "$OUT/sweep-seeds" --json > "$OUT/sweep-seeds.json"
fi
python "$(dirname "$0")/summarize.py" "$OUT"
