#!/usr/bin/env bash
# The model-free scripts on the two shipped Hopper datasets (issue 20's table): 100,000 updates, seeds 0 1 2, an
# evaluation of 10 episodes every 10,000, with the settings of benchmarks/cpu/configs/<algo>/shipped/hopper-*.yaml
# (benchmarks/cpu/hopper_configs.py writes them from the D4RL configs by the CPU benchmark's one rule: only the
# budget and, for all alike, the width changed). The whole grid is 78 runs, far more than one session of this
# 2-core machine (the README gives each script's measured minutes per run), so it is made to be run in parts:
# every finished run's results.json and config.yaml are kept in benchmarks/results/cpu/hopper_model_free/finished_runs/
# (commit them), put back into the runs folder at the next call so that benchmarks/run.py skips those cells,
# and the report is written over everything finished so far. From the project root:
#     ALGOS="td3_bc iql" SEEDS="0" bash benchmarks/cpu/hopper_model_free.sh
#     bash benchmarks/cpu/hopper_model_free.sh --dry-run     # what every cell would do
# WORKERS=2 runs two cells at a time (one thread each); arguments go to benchmarks/run.py.
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu-hopper-mf}
out=${OUT_DIR:-benchmarks/results/cpu/hopper_model_free}
algos=${ALGOS:-"bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac"}
seeds=${SEEDS:-"0 1 2"}
datasets=${DATASETS:-"shipped/hopper-medium-replay shipped/hopper-medium"}
workers=${WORKERS:-1}
"$python" benchmarks/cpu/hopper_configs.py --check
mkdir -p "$runs" "$out/finished_runs"
for kept in "$out"/finished_runs/*/; do  # the finished runs of earlier calls: run.py skips their cells
    [[ -d $kept ]] || continue
    name=$(basename "$kept")
    [[ -f $runs/$name/results.json ]] || { mkdir -p "$runs/$name" && cp "$kept"/results.json "$kept"/config.yaml "$runs/$name/"; }
done
start=$(date +%s)
status=0
"$python" benchmarks/run.py --algos $algos --datasets $datasets --seeds $seeds --configs-dir benchmarks/cpu/configs \
    --runs-dir "$runs" --workers "$workers" --threads 1 --device cpu "$@" || status=$?
[[ " $* " == *" --dry-run "* ]] && exit $status
kept=$("$python" benchmarks/cpu/keep_finished.py "$runs" "$out/finished_runs") || exit 1
[[ -n $kept ]] && echo "$kept"
if [[ -z $kept && -f $out/report.md ]]; then  # an interrupted or failed call: the committed report stays as it was
    echo "no run finished in this call: $out/report.md and MACHINE.md left as they were"
    exit $status
fi
"$python" benchmarks/report.py "$out/finished_runs" --out "$out" --datasets $datasets --algos $(for a in bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac; do
    ls -d "$out"/finished_runs/"$a"__* >/dev/null 2>&1 && echo "$a"; done) || true
{
    echo "# How these tables were made"
    echo
    echo "- Command, last call: \`ALGOS=\"$algos\" SEEDS=\"$seeds\" WORKERS=$workers bash benchmarks/cpu/hopper_model_free.sh\`, $(( ($(date +%s) - start) / 60 )) min"
    echo "- The runs of every call so far are in \`finished_runs/\` (each results.json holds its train_time_s)"
    echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- . ":(exclude)$out" 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- Date: $(date -u +%Y-%m-%d)"
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores; $workers cell(s) at a time, one thread each"
    echo "- torch $("$python" -c 'import torch; print(torch.__version__)'), Python $("$python" -c 'import platform; print(platform.python_version())')"
} >"$out/MACHINE.md"
echo "report: $out/report.md"
exit $status
