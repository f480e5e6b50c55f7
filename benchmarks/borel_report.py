"""The table and the plot of BOReL's relabelling comparison (benchmarks/cpu/borel.sh): runs with and without reward
relabelling on the same data, their trial returns per inner episode and success rates over the offline updates.

    python benchmarks/borel_report.py runs/cpu-borel --out benchmarks/results/cpu/borel

Reads every results.json (with its config.yaml) under the runs directory and writes
  report.md         per run: dataset, relabelling, seed, the last and the best evaluation (return of each inner
                    episode, success rate, normalised trial score), the VAE's and the offline phase's wall time
  comparison.png    per dataset: the return of each inner episode (first solid, later dashed) and the success rate
                    against offline updates, relabelling against none
"""

import argparse
import glob
import json
import os

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def load(runs: str) -> list[dict]:
    found = []
    for path in sorted(glob.glob(os.path.join(runs, "**", "results.json"), recursive=True)):
        folder = os.path.dirname(path)
        if not os.path.basename(folder).startswith("borel__"):
            continue
        results = json.load(open(path))
        config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
        found.append({**results, "relabel": config["relabel"], "folder": folder})
    return found


def episodes(evaluation: dict) -> str:
    return " / ".join(f"{r:.1f}" for r in evaluation["episode_returns"])


def table(runs: list[dict]) -> str:
    lines = [
        "| dataset | relabelling | seed | last: return per inner episode | last success | last score | best score "
        "(its episodes, success) | offline training (s) |",
        "|---|---|---:|---|---:|---:|---|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["dataset"], not r["relabel"], r["seed"])):
        last = r["evaluations"][-1]
        best = max(r["evaluations"], key=lambda e: e["return"])
        score = lambda e: f"{e['normalized_score']:.1f}" if e["normalized_score"] is not None else "-"  # noqa: E731
        lines.append(
            f"| {r['dataset']} | {'yes' if r['relabel'] else 'no'} | {r['seed']} | {episodes(last)} | "
            f"{last['success_rate']:.2f} | {score(last)} | {score(best)} ({episodes(best)}, "
            f"{best['success_rate']:.2f}) "
            f"| {r['train_time_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], out: str) -> None:
    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for r in (r for r in runs if r["dataset"] == dataset):
            color = "tab:blue" if r["relabel"] else "tab:red"
            label = f"{'relabelling' if r['relabel'] else 'no relabelling'}, seed {r['seed']}"
            steps = [e["step"] for e in r["evaluations"]]
            for k in range(len(r["evaluations"][0]["episode_returns"])):
                row[0].plot(
                    steps,
                    [e["episode_returns"][k] for e in r["evaluations"]],
                    color=color,
                    linestyle="-" if k == 0 else "--" if k == 1 else ":",
                    label=f"{label}: episode {k + 1}",
                )
            row[1].plot(steps, [e["success_rate"] for e in r["evaluations"]], color=color, label=label)
        row[0].set(title=f"{dataset}: return of each inner episode", xlabel="offline updates", ylabel="return")
        row[1].set(title=f"{dataset}: success rate (goal reached in the trial)", xlabel="offline updates")
        row[1].set_ylim(-0.02, 1.02)
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="folder holding the borel runs")
    parser.add_argument("--out", required=True, help="folder for report.md and comparison.png")
    args = parser.parse_args()
    runs = load(args.runs)
    if not runs:
        raise SystemExit(f"error: no borel run with a results.json under {args.runs}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(table(runs))
    plot(runs, os.path.join(args.out, "comparison.png"))
    print(table(runs))


if __name__ == "__main__":
    main()
