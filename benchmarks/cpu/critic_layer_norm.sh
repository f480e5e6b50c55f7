#!/usr/bin/env bash
# MOPO's critic divergence on shipped/pendulum-medium and its remedy: the CPU-benchmark settings
# (benchmarks/cpu/configs/mopo/shipped/pendulum-medium.yaml), seeds 0 1 2, with and without
# --critic-layer-norm, the divergence check logging only (--no-stop-on-divergence) so that the
# whole curve is seen. Two runs at a time, one thread each; from the project root:
#     bash benchmarks/cpu/critic_layer_norm.sh     # runs into runs/cpu-critic-ln, tables into benchmarks/results/cpu/
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu-critic-ln}
out=${OUT_DIR:-benchmarks/results/cpu}
config=benchmarks/cpu/configs/mopo/shipped/pendulum-medium.yaml
lane() {  # $1: variant (without | with), then the seeds
    variant=$1
    shift
    flag=$([[ $variant == with ]] && echo --critic-layer-norm || true)
    for seed in "$@"; do
        if ! ls "$runs/$variant"/mopo__*__"$seed"__*/results.json >/dev/null 2>&1; then
            OMP_NUM_THREADS=1 "$python" algorithms/mopo.py --config "$config" --seed "$seed" --threads 1 --device cpu \
                --no-stop-on-divergence --runs-dir "$runs/$variant" --dynamics-cache-dir "$runs/dynamics" $flag >/dev/null
        fi
    done
}
start=$(date +%s)
lane without 0 1 2 &
lane with 0 1 2 &
wait
echo "runs took $(( ($(date +%s) - start) / 60 )) min"
for variant in without with; do
    "$python" benchmarks/report.py "$runs/$variant" --out "$out/mopo_critic_layer_norm_$variant" --algos mopo \
        --datasets shipped/pendulum-medium
done
