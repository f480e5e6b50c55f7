#!/bin/bash
# BOReL at CPU scale (README, "BOReL"): the point robot with and without reward relabelling on the same reduced
# data, then the shipped gridworld; one thread, one run at a time. The table and plot: benchmarks/borel_report.py.
set -e
cd "$(dirname "$0")/../.."
data=data/borel/point-robot-24.hdf5
[[ -f $data ]] || OMP_NUM_THREADS=1 python datasets/borel_generate.py --family point_robot --num-tasks 24 \
  --iterations 20 --trials-per-iteration 6 --out $data
for seed in 0 1; do
  for relabel in --relabel --no-relabel; do
    OMP_NUM_THREADS=1 python algorithms/borel.py --dataset $data --config benchmarks/cpu/configs/borel/variants/point-robot.yaml \
      $relabel --seed $seed --threads 1 --device cpu --runs-dir runs/cpu-borel
  done
done
OMP_NUM_THREADS=1 python algorithms/borel.py --config benchmarks/cpu/configs/borel/shipped/borel-gridworld.yaml \
  --threads 1 --device cpu --runs-dir runs/cpu-borel
python benchmarks/borel_report.py runs/cpu-borel --out benchmarks/results/cpu/borel --final-tasks 200
