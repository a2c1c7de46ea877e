#!/usr/bin/env bash
# Issue 13's GPU measurements in one call on one H100/H200 (benchmarks/tune/RESULTS.md and
# benchmarks/recommend/RESULTS.md record what it printed).
#
# 1. Pretrains the project's two larger models on the Python-docs corpus (scripts/demo_model/,
#    corpus built by build_corpus.py into .corpus/): the 19M sibling (--size small) and a
#    Qwen2.5-0.5B-bodied model (hidden 896, 24 layers, 14 heads, 2 kv heads, MLP 4864; the demo
#    tokenizer's 4096-token vocabulary, so 0.36B parameters).
# 2. On the 19M model: benchmarks/tune/validate.py on the three tasks (domain shift, instruction chat,
#    procedural with exact match) and benchmarks/recommend/measure_lr.py; on the 0.36B model:
#    validate.py (domain shift) and measure_lr.py. All run at once on the one GPU.
# 3. Everything small (row.json, measure_lr.json, tune.json, results.json, logs) is packed into
#    $OUT/results13.tgz.
#
# Task data (b) and (c) are built here first and travel in .gpu/tasks (scripts/tune_tasks/):
#   PYTHONPATH=src python scripts/tune_tasks/build_instruct.py --out .gpu/tasks/instruct --eval-rows 200
#   python scripts/tune_tasks/build_procedural.py --out .gpu/tasks/procedural --eval-rows 200
# Run:  OUT=/some/dir bash benchmarks/tune/gpu_run.sh           (SMOKE=1 DEVICE=cpu: a tiny CPU check)
set -u
OUT=${OUT:-/tmp/out13}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-550} ))
W=${WORK:-/tmp/w13}
TASKS=${TASKS:-.gpu/tasks}
mkdir -p "$OUT" "$W"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python}
DATA=src/loradial/assets/demo-data
left() { echo $(( DEADLINE - $(date +%s) )); }
run() {  # run NAME CMD...: in the background, killed at the deadline, log in $W/NAME.log
  local name=$1; shift
  ( timeout $(left) "$@" > "$W/$name.log" 2>&1; echo "[$name] exit $? at $(date +%T)" >> "$W/status.log" ) &
}

if [ "$SMOKE" = 1 ]; then
  SMALL=(--hidden 64 --layers 2 --heads 2 --kv-heads 1 --intermediate 128 --steps 20 --batch-size 8 --log-every 10 --eval-every 20)
  HALF=(--hidden 64 --layers 2 --heads 2 --kv-heads 1 --intermediate 128 --steps 20 --batch-size 8 --log-every 10 --eval-every 20)
  S19=16; S19C=16; B19=4; L19=64; S36=16; B36=2; L36=64; RANKS=4,8; EXTRA=(--dtype fp32)
else
  SMALL=(--size small --steps 800 --lr 1e-3)
  HALF=(--hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --steps 500 --lr 6e-4 --max-minutes 2.5)
  S19=400; S19C=600; B19=16; L19=256; S36=200; B36=8; L36=256; RANKS=8,32,128; EXTRA=(--dtype bf16)
fi

echo "start $(date +%T), $(left) s left; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)" | tee "$W/status.log"
pretrain() {  # pretrain NAME ARGS...: skipped when the model is already there (a warm machine)
  local name=$1; shift
  [ -f "$W/$name/config.json" ] || $PY scripts/demo_model/pretrain.py "$@" --device "$DEVICE" --out "$W/$name" > "$W/pretrain_$name.log" 2>&1
}
pretrain small "${SMALL[@]}" &
P_SMALL=$!
pretrain half "${HALF[@]}" &
P_HALF=$!

wait $P_SMALL; echo "small pretrained: exit $? at $(date +%T)" >> "$W/status.log"
V="$PY benchmarks/tune/validate.py --model $W/small --batch-size $B19 ${EXTRA[*]}"
run v19a $V --task domain-shift --train $DATA/train.jsonl --eval $DATA/eval.jsonl --steps $S19 --max-len $L19 --out "$W/v19a"
run v19b $V --task instruct-chat --train $TASKS/instruct/train.jsonl --eval $TASKS/instruct/eval.jsonl --steps $S19 --max-len $L19 --out "$W/v19b"
run v19c $V --task procedural --train $TASKS/procedural/train.jsonl --eval $TASKS/procedural/eval.jsonl --steps $S19C --max-len 32 --metric exact_match --max-new-tokens 8 --out "$W/v19c"
run lr19 $PY benchmarks/recommend/measure_lr.py --model "$W/small" --device "$DEVICE" ${EXTRA[*]} --steps $S19 --batch-size $B19 \
    --max-len $L19 --ranks $RANKS --lrs 3e-4,6e-4,1.2e-3,2.5e-3,5e-3,1e-2 --eval-examples 0 --threads 1 --out "$W/lr19"

wait $P_HALF; echo "half pretrained: exit $? at $(date +%T)" >> "$W/status.log"
run lr36 $PY benchmarks/recommend/measure_lr.py --model "$W/half" --device "$DEVICE" ${EXTRA[*]} --steps $S36 --batch-size $B36 \
    --max-len $L36 --ranks $RANKS --lrs 2e-4,4e-4,8e-4,1.6e-3,3.2e-3,6.4e-3 --eval-examples 0 --threads 1 --out "$W/lr36"
run v36a $PY benchmarks/tune/validate.py --model "$W/half" --batch-size $B36 ${EXTRA[*]} --task domain-shift \
    --train $DATA/train.jsonl --eval $DATA/eval.jsonl --steps $S36 --max-len $L36 --out "$W/v36a"
wait
echo "done $(date +%T)" >> "$W/status.log"
cat "$W/status.log"
for f in "$W"/*.log; do echo "== $f"; tail -n 25 "$f"; done
(cd "$W" && find . -not -path '*/adapters/*' -not -name 'tokenizer*' \( -name '*.json' -o -name '*.log' -o -name '*.jsonl' -o -name '*.yaml' -o -name '*.md' \) \
   -size -4M -print0 | tar czf "$OUT/results13.tgz" --null -T -)
ls -la "$OUT"
