#!/usr/bin/env bash
# The CPU-scale benchmark: every offline algorithm on the two shipped Pendulum datasets,
# 3 seeds, 10,000 updates each, with the settings of benchmarks/cpu/configs/, two cells at a
# time on one thread each. From the project root:
#     bash benchmarks/cpu/run.sh            # runs into runs/cpu, report into benchmarks/results/cpu
# Run it again after an interruption: finished cells are skipped, unfinished ones resumed.
# Arguments go to benchmarks/run.py (e.g. --dry-run to list the cells and their commands).
#
# The rule of benchmarks/cpu/configs/, one for every model-free script (bc td3_bc iql awac crr awr
# cql bcq bear uwac sac_n edac rebrac), so that the table compares equal efforts: the script's defaults,
# which are its paper's or named reference's settings (the Args docstrings say which), with only
#   - the budget changed: num_updates 10,000, an evaluation of 10 episodes every 1,000 updates, a
#     checkpoint every 2,500, and a phase the script counts in updates scaled like num_updates
#     (BEAR's and UWAC's warm-up: 40,000 of 1M becomes 400 of 10,000); and
#   - alike for every script, every hidden layer 64 units wide (hidden_dim, and BCQ's
#     second_hidden_dim and BCQ's and BEAR's vae_hidden_dim).
# One named exception, a budget as well: UWAC's Monte Carlo dropout passes, 10 instead of 100
# (at 100 an update takes 0.92 s against 0.078 s, 2.6 h a cell on one thread; its config files say more).
# Nothing else: learning rates, batch sizes, ensemble sizes, λ, β, α stay the defaults. The
# model-based scripts (mopo mobile combo rambo morel mbpo) keep their defaults with the budget and the smaller
# rollout batch and dynamics epochs named in their files.
set -euo pipefail
python=${PYTHON:-python}
runs=${RUNS_DIR:-runs/cpu}
out=${OUT_DIR:-benchmarks/results/cpu}
# ALGOS: a subset (e.g. the model-free scripts only); the report keeps the table's order
algos=${ALGOS:-"cql bcq bear uwac mopo mobile combo rambo morel mbpo sac_n awac iql edac td3_bc rebrac crr awr bc"}
datasets="shipped/pendulum-medium-replay shipped/pendulum-medium"
workers=${WORKERS:-2}  # cells at a time (1 leaves a core free for other work)
start=$(date +%s)
"$python" benchmarks/run.py --algos $algos --datasets $datasets --seeds 0 1 2 \
    --configs-dir benchmarks/cpu/configs --runs-dir "$runs" --workers "$workers" --threads 1 --device cpu "$@"
[[ " $* " == *" --dry-run "* ]] && exit 0
minutes=$(( ($(date +%s) - start) / 60 ))
"$python" benchmarks/report.py "$runs" --out "$out" --algos $(for a in bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac mopo mobile combo rambo morel mbpo; do
    [[ " $algos " == *" $a "* ]] && echo "$a"; done) --datasets $datasets
mkdir -p "$out"
{
    echo "# How these tables were made"
    echo
    echo "- Command: \`${WORKERS:+WORKERS=$workers }${ALGOS:+ALGOS=\"$algos\" }bash benchmarks/cpu/run.sh\` (settings: \`benchmarks/cpu/configs/\`), last call took $minutes min"
    echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- Date: $(date -u +%Y-%m-%d)"
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores; $workers cell(s) at a time, one thread each"
    echo "- torch $("$python" -c 'import torch; print(torch.__version__)'), Python $("$python" -c 'import platform; print(platform.python_version())')"
} > "$out/MACHINE.md"
echo "report: $out/report.md"
