"""Offline-to-online curves: the evaluations of fine-tuning runs, against steps from the switch (offline updates
before 0, online environment steps after), one line per label, mean over its runs; the training episodes' scores
as dots.

    python benchmarks/finetune_curves.py --runs bred=runs/finetune/bred plain=runs/finetune/plain \
        --out benchmarks/results/finetune/curves.png
Each RUNS folder (a glob pattern is fine: runs/grid/bred__*) is searched for results.json files with an online phase.
"""

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load(folder: str) -> list[dict]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True))]
    return [r for r in runs if r.get("online")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="LABEL=FOLDER pairs")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, item in enumerate(args.runs):
        label, _, folder = item.rpartition("=")  # labels may hold "="
        runs = load(folder)
        if not runs:
            sys.exit(f"error: no fine-tuning run (results.json with an online phase) under {folder}")
        steps = sorted({e["step"] - r["online"]["offline_steps"] for r in runs for e in r["evaluations"]})
        curve = [
            np.mean(
                [
                    e["normalized_score"]
                    for r in runs
                    for e in r["evaluations"]
                    if e["step"] - r["online"]["offline_steps"] == s
                ]
            )
            for s in steps
        ]
        color = f"C{i}"
        ax.plot(steps, curve, color=color, label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
        train = [
            (e["step"] - r["online"]["offline_steps"], e["normalized_score"])
            for r in runs
            for e in r["online"]["train_episodes"]
        ]
        if train:
            ax.scatter(*zip(*train), color=color, s=8, alpha=0.5)
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("offline updates (< 0), then online environment steps (> 0)")
    ax.set_ylabel("normalised score")
    ax.set_title(args.title)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
