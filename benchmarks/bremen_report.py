"""Tables and curves of BREMEN's CPU runs (benchmarks/cpu/bremen.sh): offline against the behaviour data and
cloning, and deployment-efficient learning over deployments.

    python benchmarks/bremen_report.py runs/cpu-bremen --out benchmarks/results/cpu/bremen

Reads every results.json under the runs directory (bremen.py's, and bc.py's on the same datasets) and writes
  report.md         the offline table (behaviour, BREMEN's Gaussian clone, bc.py, BREMEN last and best, the
                    largest KL to the clone) and the deployment table (per deployment: real steps, the data's
                    return, the clone's and the final policy's return)
  offline.png       BREMEN's normalised score against TRPO iterations, one panel per dataset, with the
                    behaviour data, the clone and bc.py as lines
  deployment.png    return against real environment steps, one line per seed
"""

import argparse
import glob
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load(runs: str) -> list[dict]:
    found = []
    for path in sorted(glob.glob(os.path.join(runs, "**", "results.json"), recursive=True)):
        with open(path) as f:
            result = json.load(f)
        if result.get("evaluations"):
            found.append(result | {"run_dir": os.path.dirname(path)})
    return found


def fmt(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def offline_section(results: list[dict], out: str) -> list[str]:
    bremen = [r for r in results if r["algo"] == "bremen" and r.get("mode") == "offline"]
    bc = {(r["dataset"], r["seed"]): r for r in results if r["algo"] == "bc"}
    if not bremen:
        return []
    lines = [
        "## Offline",
        "",
        "Normalised scores (D4RL's reference returns). *clone*: BREMEN's Gaussian behaviour clone, the start of TRPO; "
        "*bc.py*: the project's BC script, last evaluation; *KL*: the largest mean KL(π ‖ clone) on imagined states "
        "at any evaluation.",
        "",
        "| dataset | seed | behaviour | clone | bc.py | BREMEN last | BREMEN best | KL | TRPO iterations | time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_dataset = defaultdict(list)
    for r in sorted(bremen, key=lambda r: (r["dataset"], r["seed"])):
        by_dataset[r["dataset"]].append(r)
        other = bc.get((r["dataset"], r["seed"]))
        kl = max(e.get("kl_to_bc", 0.0) for e in r["evaluations"])
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {fmt(r['behaviour_normalized_score'])} | "
            f"{fmt(r['bc_normalized_score'])} | {fmt(other and other['last_normalized_score'])} | "
            f"{fmt(r['last_normalized_score'])} | {fmt(r['best_normalized_score'])} | {fmt(kl, 2)} | "
            f"{r['evaluations'][-1]['step']} | {fmt(r.get('train_time_s', 0) / 60)} min |"
        )
    fig, axes = plt.subplots(1, len(by_dataset), figsize=(5 * len(by_dataset), 3.6), squeeze=False)
    for ax, (dataset, runs) in zip(axes[0], by_dataset.items()):
        for r in runs:
            steps = [0] + [e["step"] for e in r["evaluations"]]
            scores = [r["bc_normalized_score"]] + [e["normalized_score"] for e in r["evaluations"]]
            ax.plot(steps, scores, marker="o", ms=3, label=f"BREMEN seed {r['seed']}")
        ax.axhline(np.mean([r["behaviour_normalized_score"] for r in runs]), color="k", ls="--", label="behaviour")
        ax.axhline(np.mean([r["bc_normalized_score"] for r in runs]), color="grey", ls=":", label="clone (iteration 0)")
        bcs = [bc[(dataset, r["seed"])]["last_normalized_score"] for r in runs if (dataset, r["seed"]) in bc]
        if bcs:
            ax.axhline(np.mean(bcs), color="tab:red", ls="-.", label="bc.py")
        ax.set(title=dataset, xlabel="TRPO iterations", ylabel="normalised score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "offline.png"), dpi=110)
    plt.close(fig)
    return lines + ["", "![offline](offline.png)", ""]


def deployment_section(results: list[dict], out: str) -> list[str]:
    runs = sorted((r for r in results if r.get("mode") == "deployment"), key=lambda r: r["seed"])
    if not runs:
        return []
    lines = [
        "## Deployment-efficient",
        "",
        "Per deployment: the real steps collected so far, the mean episode return of that deployment's data (the "
        "first: uniformly random actions; then the current policy with N(0, 0.1²) action noise), the return of the "
        "clone TRPO restarts from, and the deterministic policy's return at the end of that deployment's TRPO "
        "iterations.",
        "",
        "| seed | deployment | real steps | data return | clone return | policy return after |",
        "|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in runs:
        evals = r["evaluations"]
        deployments = r["deployments"]
        after = []
        for i, d in enumerate(deployments):
            end = deployments[i + 1]["step"] if i + 1 < len(deployments) else float("inf")
            inside = [e for e in evals if d["step"] < e["step"] <= end]
            after.append(inside[-1]["return"] if inside else None)
            lines.append(
                f"| {r['seed']} | {d['deployment']} | {d['real_steps']} | {fmt(d['data_return'])} | "
                f"{fmt(d.get('bc_return'))} | {fmt(after[-1])} |"
            )
        x = [d["real_steps"] for d in deployments]
        ax.plot(x, after, marker="o", label=f"policy after the deployment's TRPO, seed {r['seed']}")
        ax.plot(
            x, [d["data_return"] for d in deployments], marker="x", ls="--", label=f"deployment data, seed {r['seed']}"
        )
    title = f"from scratch, the task of {runs[0]['dataset']}"
    ax.set(xlabel="real environment steps collected", ylabel="return", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "deployment.png"), dpi=110)
    plt.close(fig)
    return lines + ["", "![deployment](deployment.png)", ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="runs directory of benchmarks/cpu/bremen.sh")
    parser.add_argument("--out", default="benchmarks/results/cpu/bremen")
    args = parser.parse_args()
    results = load(args.runs)
    if not results:
        raise SystemExit(f"error: no results.json with evaluations under {args.runs}; run benchmarks/cpu/bremen.sh")
    os.makedirs(args.out, exist_ok=True)
    lines = ["# BREMEN at a CPU scale (benchmarks/cpu/bremen.sh)", ""]
    lines += offline_section(results, args.out) + deployment_section(results, args.out)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
