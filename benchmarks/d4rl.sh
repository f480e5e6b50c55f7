#!/usr/bin/env bash
# The full D4RL v2 locomotion tables: every offline algorithm with a per-dataset config
# (benchmarks/configs/<algo>/) on the 15 hopper/halfcheetah/walker2d datasets, 4 seeds, the papers'
# budgets (1M updates model-free, 3M model-based), then the report beside the published numbers.
# Meant for a GPU machine or a Slurm cluster; on one GPU a model-free cell takes hours, so run it
# on several. From the project root:
#     WORKERS=4 bash benchmarks/d4rl.sh                       # a local pool, 4 cells at a time
#     SLURM="--slurm-partition gpu --slurm-gpus-per-node 1 --slurm-time 24:00:00" bash benchmarks/d4rl.sh
# Datasets download on first use into $D4RL_DATASET_DIR (default ~/.d4rl/datasets).
# Run it again after an interruption: finished cells are skipped, unfinished ones resumed.
# Arguments go to benchmarks/run.py (e.g. --dry-run to list the cells and their commands).
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/d4rl}
algos=${ALGOS:-"bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac mopo mobile combo rambo mbpo"}
datasets=""
for env in halfcheetah hopper walker2d; do
    for level in random medium medium-replay medium-expert expert; do
        datasets="$datasets $env-$level-v2"
    done
done
# shellcheck disable=SC2086  # word splitting of the lists is intended
"$python" benchmarks/run.py --algos $algos --datasets $datasets --seeds ${SEEDS:-0 1 2 3} \
    --runs-dir "$runs" --workers "${WORKERS:-1}" --device "${DEVICE:-auto}" ${SLURM:-} "$@"
[[ " $* " == *" --dry-run "* ]] && exit 0
"$python" benchmarks/report.py "$runs" --algos $algos --datasets $datasets
echo "report: $runs/report/report.md"
