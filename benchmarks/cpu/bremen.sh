#!/usr/bin/env bash
# BREMEN's two claims at a CPU scale (issue 16), on BRAC-style noise datasets this project makes:
#   offline     on halfcheetah-eps1 / hopper-eps1 (100,000 transitions, datasets/generate.py), BREMEN against
#               the behaviour data, against its own Gaussian clone (the start of TRPO), and against
#               algorithms/bc.py at the same number of cloning steps;
#   deployment  HalfCheetah-v4 from scratch in 5 deployments of 20,000 real steps.
# Settings: benchmarks/configs/bremen/variants/{halfcheetah,hopper}_cpu_{offline,deployment}.yaml (REDUCED, named
# as such in the files). One thread per run, two runs at a time. From the project root:
#     bash benchmarks/cpu/bremen.sh                 # seed 0; SEEDS="0 1" for more
# PARTS="offline" or "deployment" runs a part; finished runs are skipped when it is called again.
# The datasets (made once; their SAC runs and durations are in the README, section BREMEN):
#     python algorithms/sac.py --env-id HalfCheetah-v4 --total-timesteps 120000 --eval-every 10000 \
#         --eval-episodes 5 --threads 1 --runs-dir runs/gen      # stopped once a partial policy exists
#     python datasets/generate.py --sac-run runs/gen/sac__HalfCheetah-v4__0__... --medium-step STEP \
#         --level eps1 --num-steps 100000 --out datasets/shipped/halfcheetah-eps1.hdf5   # likewise hopper
# Tables and curves go to benchmarks/results/cpu/bremen/ (benchmarks/bremen_report.py).
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu-bremen}
out=${OUT_DIR:-benchmarks/results/cpu/bremen}
seeds=${SEEDS:-0}
parts=${PARTS:-offline deployment}
datasets=${DATASETS:-halfcheetah-eps1 hopper-eps1}
variants=benchmarks/configs/bremen/variants
mkdir -p "$runs/logs" "$out"
run() {  # $1: log name; the rest: the command (skipped when its run finished before)
    local log=$1
    shift
    if grep -q "^bremen on \|^bc on " "$runs/logs/$log.log" 2>/dev/null; then return; fi
    local t0
    t0=$(date +%s)
    OMP_NUM_THREADS=1 "$@" --threads 1 --device cpu --runs-dir "$runs" >"$runs/logs/$log.log" 2>&1 || true
    echo "$log: $(( ($(date +%s) - t0) / 60 )) min" >>"$runs/logs/durations.txt"
}
offline() {  # $1: dataset
    local task=${1%%-*}
    for seed in $seeds; do
        run "bremen-$1-$seed" "$python" algorithms/bremen.py --config "$variants/${task}_cpu_offline.yaml" \
            --dataset "shipped/$1" --seed "$seed"
        run "bc-$1-$seed" "$python" algorithms/bc.py --dataset "shipped/$1" --seed "$seed" --num-updates 30000 \
            --eval-every 5000 --eval-episodes 5
    done
}
deployment() {
    for seed in $seeds; do
        run "bremen-deployment-halfcheetah-$seed" "$python" algorithms/bremen.py \
            --config "$variants/halfcheetah_cpu_deployment.yaml" --dataset shipped/halfcheetah-eps1 --seed "$seed"
    done
}
start=$(date +%s)
pids=()
if [[ " $parts " == *" offline "* ]]; then
    for dataset in $datasets; do offline "$dataset" & pids+=($!); done
fi
if [[ " $parts " == *" deployment "* ]]; then
    for pid in "${pids[@]:0:1}"; do wait "$pid"; done  # two lanes at a time: after the first offline lane
    deployment
fi
wait
echo "runs took $(( ($(date +%s) - start) / 60 )) min"
"$python" benchmarks/bremen_report.py "$runs" --out "$out"
cp "$runs/logs/durations.txt" "$out/durations.txt"
