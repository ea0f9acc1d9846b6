#!/bin/bash
# Single-positive labels with the frozen defaults of a394782 (method.weak_negative_withhold=0.5), on split seed 4,
# which no earlier run used; run once. Two kinds of model selection for every method: the validation images'
# single-positive labels (positives-only criterion, what a user has) and their full labels (a small fully
# labelled validation set). Then one cell of the split-3 table again, which the change must leave as it was.
set -x
cd "$(dirname "$0")/../../.."
out=bench/voc2007-split4
mkdir -p $out
start=$(date +%s)
for val in partial full; do
  for seed in 0 1 2; do
    for method in hst assume_negative partial_bce; do
      .venv/bin/hst train --config configs/voc2007-benchmark.yaml data.split_seed=4 data.scheme=single-positive \
        data.proportion=1.0 data.partial_seed=$seed method.name=$method optim.weight_decay=0.01 data.val_labels=$val \
        trainer.output_dir=$out/single-positive-val-$val trainer.run_name=$method-s$seed \
        > $out/single-positive-val-$val-$method-s$seed.log 2>&1
    done
  done
done
echo "single positive $(( $(date +%s) - start )) s"
.venv/bin/hst train --config bench/voc2007-split3/runs/hst-p0.1-s0-t0/config.yaml \
  trainer.output_dir=$out/split3-again trainer.run_name=hst-p0.1-s0-t0 > $out/split3-again.log 2>&1
echo "all $(( $(date +%s) - start )) s"
