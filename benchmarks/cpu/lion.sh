#!/bin/bash
# LION and λ-TD3+BC on the shipped IB datasets at CPU scale (configs in benchmarks/cpu/configs/{lion,lambda_td3_bc}),
# one thread, one run at a time; wall times of these runs are in the README's LION section.
set -e
cd "$(dirname "$0")/../.."
for dataset in ib-bad-0.2 ib-global-1.0; do
  for algo in lion lambda_td3_bc; do
    OMP_NUM_THREADS=1 python algorithms/$algo.py --config benchmarks/cpu/configs/$algo/shipped/$dataset.yaml \
      --threads 1 --device cpu --runs-dir runs/cpu_lion
  done
done
