#!/usr/bin/env bash
# The review-loop measurement of docs/review-loop.md: every question policy on VOC 2007, split seed 2, 10% known,
# 2% of the training entries answered, partial seeds 0-2, the cheap model (the probe); the exchange-rate curve of
# the same model at random 10/12/15/20/30% known; then HST trained on 10% alone, 10% + the default policy's answers
# and 10% + random answers. Two processes at a time, one thread each (the 2-core machine).
#   bash benchmarks/review_loop.sh [OUT]        (default runs/review-loop; hst on the PATH)
# HST_SEEDS="0" trains HST for those partial seeds only (default 0 1 2); HST_CURVE="0.12 0.15 0.2 0.3" also trains
# HST at those random known proportions (its own exchange-rate curve; default none) for CURVE_SEEDS (default
# HST_SEEDS); SIMULATE=0 reuses the simulations already in OUT.
set -euo pipefail
out=${1:-runs/review-loop}
config=configs/voc2007-benchmark.yaml
split=(data.split_seed=2 data.proportion=0.1)
export OMP_NUM_THREADS=1
mkdir -p "$out"
start=$(date +%s)
if [ "${SIMULATE:-1}" != 0 ]; then
hst simulate-review --config $config --policies rarest,random,uncertain --seeds 0,1,2 \
  --curve 0.1,0.12,0.15,0.2,0.3 --out "$out/probe-a" "${split[@]}" > "$out/probe-a.log" 2>&1 &
hst simulate-review --config $config --policies positive,image,mix --seeds 0,1,2 \
  --out "$out/probe-b" "${split[@]}" > "$out/probe-b.log" 2>&1 &
wait || true
echo "simulations: $(( $(date +%s) - start )) s"
fi

start=$(date +%s)
train() {  # name seed overrides...
  local name=$1 seed=$2
  shift 2
  hst train --config $config data.split_seed=2 data.partial_seed="$seed" trainer.seed="$seed" \
    optim.weight_decay=0.01 trainer.output_dir="$out/hst" trainer.run_name="$name-s$seed" "$@" \
    > "$out/hst-$name-s$seed.log" 2>&1
}
for seed in ${HST_SEEDS:-0 1 2}; do  # the three trainings of a seed at once
  train p10 "$seed" data.proportion=0.1 &
  for name in rarest random; do
    train "$name" "$seed" data.partial_labels="$out/probe-a/$name-s$seed/labels.csv" \
      data.calibration_labels="$out/probe-a/$name-s$seed/before.csv" &
  done
  wait || true
done
echo "HST trainings: $(( $(date +%s) - start )) s"

start=$(date +%s)
for proportion in ${HST_CURVE:-}; do  # the seeds of a proportion at once
  for seed in ${CURVE_SEEDS:-${HST_SEEDS:-0 1 2}}; do
    train "p$proportion" "$seed" data.proportion="$proportion" &
  done
  wait || true
done
[ -z "${HST_CURVE:-}" ] || echo "HST curve: $(( $(date +%s) - start )) s"
grep -H "^test mAP" "$out"/hst-*.log
