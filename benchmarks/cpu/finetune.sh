#!/usr/bin/env bash
# Offline-to-online at a CPU scale (issue 19): the fine-tuning grid (awac iql cql sac_n bred) on
# shipped/pendulum-medium, and BRED's ablation "plain" (one CQL agent, SAC online, uniform replay), seeds 0-2.
# REDUCED settings, named here: 64-wide networks, batch 64, 4,000 offline updates, then 2,000 online steps,
# evaluations every 200 steps of 5 episodes; BRED's epochs of 200 steps, 5 times the updates in the first.
# One thread per run, one run at a time (WORKERS=2 for two). From the project root:
#     bash benchmarks/cpu/finetune.sh
# NUM_UPDATES, ONLINE_STEPS and ALGOS change the budget and the grid (the longer-offline rows of the README:
#     NUM_UPDATES=20000 ONLINE_STEPS=4000 ALGOS="cql bred" RUNS_DIR=runs/cpu-finetune-20k \
#         OUT_DIR=benchmarks/results/finetune/offline_20k bash benchmarks/cpu/finetune.sh
# Finished cells are skipped when it is called again. Tables and curves go to benchmarks/results/finetune/.
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu-finetune}
out=${OUT_DIR:-benchmarks/results/finetune}
seeds=${SEEDS:-0 1 2}
workers=${WORKERS:-1}
algos=${ALGOS:-awac iql cql sac_n bred}
common="num_updates=${NUM_UPDATES:-4000} online_steps=${ONLINE_STEPS:-2000} hidden_dim=64 batch_size=64 eval_every=200 eval_episodes=5"
bred="bred.epoch_steps=200 bred.first_epoch_multiplier=5"
mkdir -p "$out"
start=$(date +%s)
# shellcheck disable=SC2086
"$python" benchmarks/run.py --algos $algos --datasets shipped/pendulum-medium --seeds $seeds \
    --set $common $bred --runs-dir "$runs/grid" --workers "$workers" --threads 1 --device cpu
# shellcheck disable=SC2086
"$python" benchmarks/run.py --algos bred --datasets shipped/pendulum-medium --seeds $seeds \
    --set $common $bred bred.ensemble_size=1 bred.balanced_replay=false --runs-dir "$runs/plain" \
    --workers "$workers" --threads 1 --device cpu
echo "runs took $(( ($(date +%s) - start) / 60 )) min" | tee "$out/durations.txt"
"$python" benchmarks/report.py "$runs/grid" --out "$out"
"$python" benchmarks/finetune_curves.py --runs "BRED=$runs/grid/bred__*" "plain (N = 1, uniform)=$runs/plain/bred__*" \
    --out "$out/pendulum_medium_bred_seeds.png" --title "shipped/pendulum-medium, seeds $seeds"
curves=()
for algo in $algos; do [[ $algo != bred ]] && curves+=("${algo}=$runs/grid/${algo}__*"); done
"$python" benchmarks/finetune_curves.py --runs "${curves[@]}" --out "$out/pendulum_medium_grid.png" \
    --title "shipped/pendulum-medium, seeds $seeds"
