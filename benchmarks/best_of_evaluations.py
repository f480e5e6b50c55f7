"""How much of a table's *best* column is the maximum of noisy evaluations rather than a peak that was lost.

A run's best score is the largest of its evaluations. When a run's evaluations scatter around a plateau (10 noisy
episodes each, a policy that changes between checkpoints), their maximum sits above the plateau even if nothing
rises and falls: for k independent normal draws the expected maximum is the mean plus about 1.35 standard
deviations at k = 7 (1.54 at k = 10). For every (algorithm, dataset) of the finished runs given, this prints

  plateau     the mean of the evaluations from `--from-step` on, over runs
  spread      the standard deviation of those evaluations within a run, averaged over runs
  best        the mean over runs of the best evaluation (any step, as in the report)
  flat best   what `best` would be if each run's plateau evaluations were independent draws: plateau + e_k spread
  early, late the mean of the plateau's first and second half (a fall shows as late < early)
  ± the standard error of late - early if the evaluations were independent draws (spread x the root of
              1 / early evaluations + 1 / late ones, over all runs)

and the table's *last 3* for comparison. A best far above `flat best` is a real early peak; late below early by
more than about twice `±` is a fall, above it by as much a rise.

    python benchmarks/best_of_evaluations.py benchmarks/results/cpu/hopper_model_free/finished_runs
"""

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

import numpy as np


def expected_max_of_normals(k: int, draws: int = 200_000, seed: int = 0) -> float:
    """E[max of k independent standard normals], by Monte Carlo (1.352 at k = 7)."""
    return float(np.random.default_rng(seed).standard_normal((draws, k)).max(1).mean())


def runs_by_cell(folder: str) -> dict:
    """(algo, dataset) -> list of runs, each a list of (step, normalised score)."""
    cells = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*", "results.json"))):
        with open(path) as f:
            results = json.load(f)
        scores = [(e["step"], e["normalized_score"]) for e in results.get("evaluations", [])]
        if scores:
            cells[(results["algo"], results["dataset"])].append(scores)
    return cells


def summary(runs: list, from_step: int) -> dict:
    plateaus = [[s for step, s in run if step >= from_step] for run in runs]
    if min(len(p) for p in plateaus) < 4:
        return {}
    k = len(plateaus[0])
    spread = statistics.mean(statistics.stdev(p) for p in plateaus)
    plateau = statistics.mean(s for p in plateaus for s in p)
    half = k // 2
    return {
        "runs": len(runs),
        "plateau": plateau,
        "spread": spread,
        "best": statistics.mean(max(s for _, s in run) for run in runs),
        "flat best": plateau + expected_max_of_normals(k) * spread,
        "early": statistics.mean(s for p in plateaus for s in p[:half]),
        "late": statistics.mean(s for p in plateaus for s in p[half:]),
        "±": spread * (1 / (half * len(runs)) + 1 / ((k - half) * len(runs))) ** 0.5,
        "last 3": statistics.mean(statistics.mean(s for _, s in run[-3:]) for run in runs),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a finished_runs folder: one directory per run, each with results.json")
    parser.add_argument("--from-step", type=int, default=40_000, help="first step of the plateau (default: 40000)")
    args = parser.parse_args(argv)
    cells = runs_by_cell(args.folder)
    if not cells:
        raise SystemExit(f"no results.json with evaluations under {args.folder}: give a finished_runs folder")
    print(f"# best against the largest of noisy evaluations: {args.folder}, plateau from step {args.from_step}\n")
    print("(columns: `python benchmarks/best_of_evaluations.py --help`)\n")
    columns = ["runs", "plateau", "spread", "best", "flat best", "early", "late", "±", "last 3"]
    print("| dataset | algorithm | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for (algo, dataset), runs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = summary(runs, args.from_step)
        if row:
            values = [str(row["runs"])] + [f"{row[c]:.1f}" for c in columns[1:]]
            print(f"| {dataset} | {algo} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
