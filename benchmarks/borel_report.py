"""The table and the plot of BOReL's relabelling comparison (benchmarks/cpu/borel.sh): runs with and without reward
relabelling on the same data, their trial returns per inner episode and success rates over the offline updates.

    python benchmarks/borel_report.py runs/cpu-borel --out benchmarks/results/cpu/borel --final-tasks 200

Reads every results.json (with its config.yaml) under the runs directory and writes
  report.md         per run: dataset, relabelling, seed, the last and the best evaluation (return of each inner
                    episode, success rate, normalised trial score), the offline phase's training time; and with
                    --final-tasks N the final policy of every run evaluated again on N trials (the same tasks for
                    every run of a dataset: fresh goals, or the gridworld's goals in turn), with standard errors
  comparison.png    per dataset: the return of each inner episode (first solid, later dashed) and the success rate
                    against offline updates, relabelling against none
"""

import argparse
import glob
import importlib.util
import json
import os
import sys

import gymnasium as gym
import matplotlib
import numpy as np
import torch
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


def final_evaluation(run: dict, trials: int) -> dict:
    """The final checkpoint of a run (its VAE from the cache) on `trials` trials, seeded apart from its evaluations."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "algorithms"))  # custom_envs, as the script itself sees them
    spec = importlib.util.spec_from_file_location("borel", os.path.join(here, "..", "algorithms", "borel.py"))
    borel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(borel)
    args = borel.Args(**yaml.safe_load(open(os.path.join(run["folder"], "config.yaml"))))
    device = torch.device("cpu")
    data = borel.load_dataset(args.dataset, device)
    path = borel.shipped_path(args.dataset[8:]) if args.dataset.startswith("shipped/") else args.dataset
    arrays, attrs = borel.read_hdf5(path)
    data_trials = borel.trials_by_task(arrays, attrs, args.dataset)
    family = borel.FAMILIES[attrs["family"]]
    obs_dim, act_dim = data_trials["observations"].shape[-1], data_trials["actions"].shape[-1]
    sizes = (args.latent_dim, args.encoder_hidden_dim, args.action_embed_dim, args.state_embed_dim)
    encoder = borel.BeliefEncoder(obs_dim, act_dim, *sizes, args.reward_embed_dim)
    decoder = borel.RewardDecoder(
        obs_dim, args.latent_dim, args.decoder_hidden_dim, args.state_embed_dim, family["decoder"]
    )
    episode = data_trials["rewards"].shape[-1] // int(attrs["episodes_per_trial"])
    segments = [(e * episode, (e + 1) * episode) for e in family["segments"]]
    borel.load_or_train_vae(encoder, decoder, data_trials, segments, family["reward"], args, device)
    make_env = lambda: gym.make(data.env_id)  # noqa: E731
    probe = make_env()
    hyper = obs_dim + 2 * args.latent_dim
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    learner = borel.DQN(hyper, probe.action_space.n, args) if discrete else borel.SAC(hyper, act_dim, args)
    state = torch.load(os.path.join(run["folder"], "checkpoint.pt"), map_location=device, weights_only=False)
    learner.load_state_dict(state["objects"]["learner"])
    goals = data_trials["goals"].numpy()
    tasks = [goals[i % len(goals)] if family["eval_on_data_tasks"] else None for i in range(trials)]
    teleport = bool(attrs.get("teleport", False))
    result = borel.evaluate_trials(make_env, encoder, learner, tasks, 10**7, teleport, device)
    returns = result["episode_returns"]
    return {
        "step": state["step"],
        "episode_returns": returns.mean(0).tolist(),
        "episode_se": (returns.std(0) / np.sqrt(len(returns))).tolist(),
        "success_rate": float(result["success"].mean()),
        "success_se": float(result["success"].std() / np.sqrt(len(returns))),
    }


def final_table(runs: list[dict], trials: int) -> str:
    lines = [
        f"Final policies on {trials} trials each (the same tasks for every run of a dataset), mean ± standard error:",
        "",
        "| dataset | relabelling | seed | updates | return per inner episode | success rate |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["dataset"], not r["relabel"], r["seed"])):
        f = final_evaluation(r, trials)
        per_episode = " / ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(f["episode_returns"], f["episode_se"]))
        lines.append(
            f"| {r['dataset']} | {'yes' if r['relabel'] else 'no'} | {r['seed']} | {f['step']} | {per_episode} | "
            f"{f['success_rate']:.2f} ± {f['success_se']:.2f} |"
        )
    return "\n".join(lines) + "\n"


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
                    marker="os^v"[r["seed"] % 4],
                    markersize=3,
                    label=f"{label}: episode {k + 1}",
                )
            success = [e["success_rate"] for e in r["evaluations"]]
            row[1].plot(steps, success, color=color, marker="os^v"[r["seed"] % 4], markersize=3, label=label)
        row[0].set(title=f"{dataset}\nreturn of each inner episode", xlabel="offline updates", ylabel="return")
        row[1].set(title=f"{dataset}\nsuccess rate (goal reached in the trial)", xlabel="offline updates")
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
    parser.add_argument("--final-tasks", type=int, default=0, help="re-evaluate every final policy on this many trials")
    args = parser.parse_args()
    runs = load(args.runs)
    if not runs:
        raise SystemExit(f"error: no borel run with a results.json under {args.runs}")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    text = "Evaluations during training (20 or 21 trials each):\n\n" + table(runs)
    if args.final_tasks:
        text += "\n" + final_table(runs, args.final_tasks)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    plot(runs, os.path.join(args.out, "comparison.png"))
    print(text)


if __name__ == "__main__":
    main()
