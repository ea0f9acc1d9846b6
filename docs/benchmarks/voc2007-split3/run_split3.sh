#!/bin/bash
# The frozen defaults (commit 1080260) on split seed 3, run once.
set -x
cd "$(dirname "$0")/.."
start=$(date +%s)
.venv/bin/python benchmarks/calibration_check.py --config configs/voc2007-benchmark.yaml --split-seed 3 \
  --proportions 0.1,0.3,0.5,0.7,0.9 --seeds 0,1,2 --targets 0.9,0.95 > bench/voc2007-split3/calibration_check.md
echo "calibration check $(( $(date +%s) - start )) s"
for seed in 0 1 2; do
  for method in hst assume_negative partial_bce; do
    .venv/bin/hst train --config configs/voc2007-benchmark.yaml data.split_seed=3 data.scheme=single-positive \
      data.proportion=1.0 data.partial_seed=$seed method.name=$method optim.weight_decay=0.01 \
      trainer.output_dir=bench/voc2007-split3/single-positive trainer.run_name=$method-s$seed > bench/voc2007-split3/single-positive-$method-s$seed.log 2>&1
  done
done
echo "single positive $(( $(date +%s) - start )) s"
t0=$(date +%s)
.venv/bin/hst benchmark --config configs/voc2007-benchmark.yaml \
  --methods hst,partial_bce,assume_negative,large_loss_rejection,sst,linear_assume_negative,linear_partial_bce \
  --proportions 0.1,0.3,0.5,0.7,0.9 --seeds 0,1,2 --workers 2 \
  --tune "all:optim.weight_decay=0.01,0.1+linear_assume_negative:optim.lr=1e-4,3e-3;optim.weight_decay=0.01,0.1,0.3+linear_partial_bce:optim.lr=1e-4,3e-3;optim.weight_decay=0.01,0.1,0.3" \
  --tune-seeds 0 --out bench/voc2007-split3 data.split_seed=3
echo "benchmark $(( $(date +%s) - t0 )) s"
