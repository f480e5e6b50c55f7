#!/usr/bin/env bash
# MOPO, MOReL and MBPO on the two shipped Hopper datasets: a fully trained dynamics ensemble (no
# epoch cap, early stopping as the authors) and 100,000 SAC updates per run, with the D4RL
# per-dataset settings of benchmarks/configs/ (MOReL: its defaults, which are the hopper ones).
# One lane per dataset, one thread each, the runs of a lane one after another: MOPO first, then
# MOReL, then MBPO, all three on the lane's one ensemble per seed (same dynamics settings, so the
# cache is shared). The ensemble trains with --dynamics-bf16 (README: "Training the ensemble").
# From the project root:
#     bash benchmarks/cpu/hopper_model_based.sh          # seed 0; SEEDS="0 1 2" for three
# ALGOS, DATASETS pick a part; a variant runs into its own folders, on the same ensembles:
#     RUNS_DIR=runs/cpu-hopper-pairwise OUT_DIR=benchmarks/results/cpu/hopper_mopo_pairwise ALGOS=mopo \
#         CONFIGS_DIR=benchmarks/variants/mopo_pairwise bash benchmarks/cpu/hopper_model_based.sh
# (EXTRA_ARGS="..." adds options to every run.)
# Finished runs are skipped when it is called again, also in a later session: every finished run's results.json
# and config.yaml are kept in <OUT_DIR>/finished_runs/ (commit them) and put back into the runs folder at the next
# call. Tables and curves are written over all kept runs; they, the durations and the ensembles' training logs go
# to OUT_DIR (benchmarks/results/cpu/hopper_model_based/).
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu-hopper}
out=${OUT_DIR:-benchmarks/results/cpu/hopper_model_based}
seeds=${SEEDS:-0}
updates=${NUM_UPDATES:-100000}
algos=${ALGOS:-mopo morel mbpo}
dynamics=${DYNAMICS_DIR:-runs/cpu-hopper/dynamics}  # one ensemble per dataset and seed, shared by every run
read -r -a extra <<<"${EXTRA_ARGS:-}"  # more options for every run (a variant: its own RUNS_DIR and OUT_DIR)
datasets=${DATASETS:-hopper-medium-replay hopper-medium}
configs=${CONFIGS_DIR:-benchmarks/configs}  # per-dataset settings: <configs>/<algo>/<dataset>-v2.yaml
lane() {  # $1: dataset name (hopper-medium-replay | hopper-medium)
    for seed in $seeds; do
        for algo in $algos; do
            if ls "$runs/$algo"__shipped-"$1"__"$seed"__*/results.json >/dev/null 2>&1; then
                continue  # finished earlier
            fi
            config=()
            [[ -f $configs/$algo/$1-v2.yaml ]] && config=(--config "$configs/$algo/$1-v2.yaml")
            t0=$(date +%s)
            OMP_NUM_THREADS=1 "$python" algorithms/$algo.py "${config[@]}" --dataset "shipped/$1" --seed "$seed" \
                --num-updates "$updates" --dynamics-bf16 --threads 1 --device cpu --runs-dir "$runs" \
                --dynamics-cache-dir "$dynamics" "${extra[@]}" >"$runs/logs/$algo-$1-$seed.log" 2>&1 || true
            echo "$algo shipped/$1 seed $seed: $(( ($(date +%s) - t0) / 60 )) min ($(date -u +%F))" >>"$out/durations.txt"
        done
    done
}
mkdir -p "$runs/logs" "$out/finished_runs"
for kept in "$out"/finished_runs/*/; do  # the finished runs of earlier calls: their lanes skip them
    [[ -d $kept ]] || continue
    name=$(basename "$kept")
    [[ -f $runs/$name/results.json ]] || { mkdir -p "$runs/$name" && cp "$kept"/results.json "$kept"/config.yaml "$runs/$name/"; }
done
start=$(date +%s)
for dataset in $datasets; do lane "$dataset" & done
wait
echo "runs took $(( ($(date +%s) - start) / 60 )) min"
kept=$("$python" benchmarks/cpu/keep_finished.py "$runs" "$out/finished_runs" --algos $algos --datasets $(printf 'shipped-%s ' $datasets)) || exit 1
[[ -n $kept ]] && echo "$kept"
if [[ -z $kept && -f $out/report.md ]]; then  # an interrupted or failed call: the committed report stays as it was
    echo "no run finished in this call: $out/report.md, dynamics.md and MACHINE.md left as they were"
    exit 0
fi
"$python" benchmarks/report.py "$out/finished_runs" --out "$out" --algos $(for a in mopo morel mbpo; do
    ls -d "$out"/finished_runs/"$a"__* >/dev/null 2>&1 && echo "$a"; done) || true
"$python" - "$dynamics" "$out/dynamics.md" <<'EOF'
# the ensembles' training logs: epochs, minutes, holdout MSE (mean over the elites, as OfflineRL-Kit reports it)
import glob, sys
import numpy as np, torch
rows = ["| ensemble | epochs | minutes | holdout MSE, elites | holdout MSE, all members |", "|---|---|---|---|---|"]
for path in sorted(glob.glob(f"{sys.argv[1]}/*.pt")):
    log = torch.load(path, map_location="cpu", weights_only=False)["log"]
    mse = np.array(log["holdout_mse"])
    rows.append(f"| {path.split('/')[-1]} | {log['epochs']} | {log['train_time_s'] / 60:.1f} | "
                f"{mse[log['elites']].mean():.4f} | {mse.mean():.4f} |")
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
{
    echo "# How these tables were made"
    echo
    echo "- Command: \`SEEDS=\"$seeds\" ALGOS=\"$algos\" DATASETS=\"$datasets\" CONFIGS_DIR=\"$configs\" EXTRA_ARGS=\"${EXTRA_ARGS:-}\" bash benchmarks/cpu/hopper_model_based.sh\`, last call took $(( ($(date +%s) - start) / 60 )) min"
    echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- . ":(exclude)$out" 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- Date: $(date -u +%Y-%m-%d)"
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores; two lanes, one thread each"
    echo "- torch $("$python" -c 'import torch; print(torch.__version__)'), Python $("$python" -c 'import platform; print(platform.python_version())')"
} >"$out/MACHINE.md"
echo "report: $out/report.md"
