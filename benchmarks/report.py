"""Benchmark report: our normalised scores beside the published ones, aggregated with rliable.

Reads every results.json under a runs directory (the run directories that algorithms/*.py
write, for example through benchmarks/run.py) and writes, into --out (default
<runs-dir>/report/):

  report.md                per dataset and algorithm: the behaviour data's normalised score,
                           mean ± std over seeds of the last and of the best evaluation, and
                           the published numbers of benchmarks/published_scores.yaml, each
                           with its source ("—" where no source has one); then the
                           aggregate over datasets from rliable: interquartile mean (IQM)
                           and mean with stratified-bootstrap 95 % confidence intervals
  performance_profile.png  rliable's performance profile of the last-evaluation scores
  learning_curves.png      normalised score against updates, mean ± std over seeds, one
                           panel per dataset

A run whose last evaluation is short of the num_updates in its config.yaml is still
running or was interrupted: it is left out (and listed) unless --include-unfinished.
When one (algorithm, dataset, seed) has several finished runs, the newest counts.

Example (from the project root):
    python benchmarks/report.py runs/benchmark
    python benchmarks/report.py runs/benchmark --algos bc td3_bc iql --out docs/benchmark
"""

import argparse
import datetime
import json
import math
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics, plot_utils  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
PUBLISHED = PROJECT / "benchmarks" / "published_scores.yaml"
DASH = "—"


# ---------------------------------------------------------------- reading runs
def load_runs(runs_dir: Path) -> tuple[list[dict], list[str]]:
    """Every offline run under `runs_dir`: its results.json plus whether it reached its num_updates."""
    runs, skipped = [], []
    for path in sorted(runs_dir.rglob("results.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            skipped.append(f"`{path}`: unreadable ({e})")
            continue
        if (
            not all(results.get(k) is not None for k in ("algo", "dataset", "seed", "evaluations"))
            or not results["evaluations"]
        ):
            skipped.append(f"`{path}`: not an offline run with evaluations")
            continue
        try:
            config = yaml.safe_load((path.parent / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):  # no config.yaml: count the run as it is
            config = {}
        last_step = results["evaluations"][-1]["step"]
        target = config.get("num_updates", last_step) + (config.get("online_steps") or 0)  # offline, then online
        runs.append(
            {
                **results,
                "run_dir": str(path.parent),
                "last_step": last_step,
                "target": target,
                # a run stopped by its divergence check is over: it counts with the evaluations it made
                "finished": last_step >= target or bool(results.get("stopped")),
                "mtime": path.stat().st_mtime,
            }
        )
    return runs, skipped


def select_runs(runs: list[dict], include_unfinished: bool) -> tuple[list[dict], list[str]]:
    """One run per (algorithm, dataset, seed): finished before unfinished, then the newest."""
    notes = []
    if not include_unfinished:
        for run in runs:
            if not run["finished"]:
                notes.append(f"`{run['run_dir']}`: unfinished ({run['last_step']} of {run['target']} updates)")
        runs = [run for run in runs if run["finished"]]
    chosen = {}
    for run in sorted(runs, key=lambda r: (r["finished"], r["mtime"])):
        key = (run["algo"], run["dataset"], run["seed"])
        if key in chosen:
            notes.append(
                f"`{chosen[key]['run_dir']}`: same algorithm, dataset and seed as the newer `{run['run_dir']}`"
            )
        chosen[key] = run
    return list(chosen.values()), notes


# ---------------------------------------------------------------- published numbers
def load_published(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)["sources"]


def task_of(dataset: str) -> str:
    """hopper-medium-v2 -> hopper-medium: the task and data quality without the D4RL version."""
    return re.sub(r"-v\d+$", "", dataset)


def published_for(sources: dict, algo: str, dataset: str) -> list[str]:
    """Published numbers of `algo` on `dataset`, each followed by its source's label.

    The same dataset name matches; a source on another D4RL version of the same task and
    quality (MOReL's Table 2, v0) matches our run too, with that version named."""
    found = []
    for source in sources.values():
        scores = source["scores"].get(algo, {})
        names = (
            [dataset] if dataset in scores else [name for name in scores if task_of(name) == task_of(dataset) != name]
        )
        for name in names:
            mean, std = scores[name]
            number = f"{mean:.{source['decimals']}f}" + (f" ± {std:.{source['decimals']}f}" if std is not None else "")
            version = f", D4RL {name.rsplit('-', 1)[1]}" if name != dataset else ""
            found.append(f"{number} ({source['label']}{version})")
    return found


# ---------------------------------------------------------------- tables
def mean_std(values: list[float]) -> str:
    """mean ± std over seeds (numpy's std, ddof=0, as CORL's tables); just the mean for one seed."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        return DASH
    return f"{values.mean():.1f}" if len(values) == 1 else f"{values.mean():.1f} ± {values.std():.1f}"


def last_three(run: dict) -> float:
    """The mean normalised score of a run's last three evaluations, less noisy than the last alone."""
    return float(np.mean([e["normalized_score"] for e in run["evaluations"][-3:]]))


def score_table(groups: dict, datasets: list[str], algos: list[str], sources: dict) -> list[str]:
    lines = [
        "| dataset | behaviour data | algorithm | seeds | updates | last | best | last 3 | published (source) "
        "| minutes / run |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for dataset in datasets:
        behaviour = [
            r.get("behaviour_normalized_score", math.nan) for algo in algos for r in groups.get((dataset, algo), [])
        ]
        behaviour = f"{np.mean(behaviour):.1f}" if behaviour and np.isfinite(behaviour).all() else DASH
        for algo in algos:
            runs = groups.get((dataset, algo))
            if not runs:
                continue
            steps = sorted({r["last_step"] for r in runs})
            updates = str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
            published = "<br>".join(published_for(sources, algo, dataset)) or DASH
            times = [r.get("train_time_s", math.nan) for r in runs]  # training only, evaluations excluded
            minutes = f"{np.mean(times) / 60:.1f}" if np.isfinite(times).all() else DASH
            lines.append(
                f"| {dataset} | {behaviour} | {algo} | {len(runs)} | {updates} | "
                f"{mean_std([r['last_normalized_score'] for r in runs])} | "
                f"{mean_std([r['best_normalized_score'] for r in runs])} | {mean_std([last_three(r) for r in runs])} | "
                f"{published} | {minutes} |"
            )
    return lines


def finetune_table(groups: dict, datasets: list[str], algos: list[str]) -> list[str]:
    """Runs with an online phase (--online-steps): the score at the switch, after the online steps, the dip (the
    lowest online evaluation below the switch's score) and the training episodes' mean score (the train regret's
    complement), mean ± std over seeds. Empty when no run fine-tuned."""
    lines = []
    for dataset in datasets:
        for algo in algos:
            runs = [r for r in groups.get((dataset, algo), []) if r.get("online")]
            if runs:
                steps = sorted({r["last_step"] - r["online"]["offline_steps"] for r in runs})
                cells = [mean_std([r["online"][k] for r in runs]) for k in ("offline_score", "online_score", "dip")]
                trained = [r["online"]["train_score"] for r in runs if r["online"]["train_score"] is not None]
                train = mean_std(trained) if trained else DASH
                lines.append(f"| {dataset} | {algo} | {len(runs)} | {steps[-1]} | {' | '.join(cells)} | {train} |")
    if not lines:
        return []
    return [
        "## Online fine-tuning",
        "",
        "| dataset | algorithm | seeds | online steps | offline score | online score | dip | training episodes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
    ]


# ---------------------------------------------------------------- rliable aggregates
def score_matrix(groups: dict, algo: str, tasks: list[str], key: str):
    """rliable's input: runs x tasks when every task has as many runs, else one array per task
    (rliable then resamples each task's runs on their own: the same stratified bootstrap)."""
    per_task = [
        np.array([r[key] for r in sorted(groups[(task, algo)], key=lambda r: r["seed"])], dtype=float) for task in tasks
    ]
    if len({len(scores) for scores in per_task}) == 1:
        return np.stack(per_task, axis=1)
    return per_task


def pooled(*scores) -> np.ndarray:
    """Every score of a score_matrix (rliable passes a matrix as one argument, a list as several)."""
    return np.concatenate([np.ravel(s) for s in scores])


def as_args(matrix) -> list:
    return matrix if isinstance(matrix, list) else [matrix]


def iqm(*scores) -> np.ndarray:
    return np.array([metrics.aggregate_iqm(pooled(*scores))])


def mean_of_task_means(*scores) -> np.ndarray:
    if len(scores) == 1 and np.ndim(scores[0]) == 2:
        return np.array([metrics.aggregate_mean(scores[0])])
    return np.array([np.mean([np.mean(s) for s in scores])])


def interval_estimates(score_dict: dict, func, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap CIs, seeded so that the same runs give the same report."""
    with warnings.catch_warnings():  # arch (under rliable) deprecates random_state, rliable's only way to seed
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(seed))


def aggregate_section(groups: dict, algos: list[str], datasets: list[str], args, out: Path, colors: dict) -> list[str]:
    tasks = [
        d
        for d in datasets
        if all((d, a) in groups for a in algos)
        and all(np.isfinite(r["last_normalized_score"]) for a in algos for r in groups[(d, a)])
    ]
    lines = ["## Aggregate over datasets (rliable)", ""]
    if not tasks:
        return lines + [
            f"No dataset has finite scores of every algorithm ({', '.join(algos)}); choose algorithms that "
            "share datasets with --algos to compare them.",
            "",
        ]
    left_out = [d for d in datasets if d not in tasks]
    lines += [
        f"Over the {len(tasks)} dataset(s) every algorithm has runs on: {', '.join(tasks)}"
        + (f" (left out: {', '.join(left_out)})" if left_out else "")
        + ". "
        f"Interquartile mean (IQM) of all runs x datasets, and mean of the per-dataset means, with 95 % "
        f"stratified-bootstrap confidence intervals ({args.reps} resamples of the seeds within each dataset, "
        f"percentile method), from `rliable` (Agarwal et al., NeurIPS 2021).",
        "",
        "| algorithm | runs | IQM last | 95 % CI | mean last | 95 % CI | IQM best | 95 % CI |",
        "|---|---:|---:|---|---:|---|---:|---|",
    ]
    last = {a: score_matrix(groups, a, tasks, "last_normalized_score") for a in algos}
    best = {a: score_matrix(groups, a, tasks, "best_normalized_score") for a in algos}
    iqm_last, iqm_last_ci = interval_estimates(last, iqm, args.reps, args.seed)
    mean_last, mean_last_ci = interval_estimates(last, mean_of_task_means, args.reps, args.seed)
    iqm_best, iqm_best_ci = interval_estimates(best, iqm, args.reps, args.seed)
    ci = lambda c: f"[{c[0][0]:.1f}, {c[1][0]:.1f}]"  # noqa: E731
    for a in algos:
        lines.append(
            f"| {a} | {pooled(*as_args(last[a])).size} | "
            f"{iqm_last[a][0]:.1f} | {ci(iqm_last_ci[a])} | {mean_last[a][0]:.1f} | {ci(mean_last_ci[a])} | "
            f"{iqm_best[a][0]:.1f} | {ci(iqm_best_ci[a])} |"
        )

    # Performance profile: fraction of runs whose last score exceeds tau (rliable's score distribution)
    all_scores = np.concatenate([pooled(*as_args(s)) for s in last.values()])
    tau = np.linspace(min(0.0, math.floor(all_scores.min())), max(100.0, math.ceil(all_scores.max())), 101)
    profile = lambda *scores: rly.score_distributions(pooled(*scores), tau)  # noqa: E731
    profiles, profile_cis = interval_estimates(last, profile, args.profile_reps, args.seed)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        profiles,
        tau,
        performance_profile_cis=profile_cis,
        colors=colors,
        ax=ax,
        xlabel=r"normalised score $\tau$ (last evaluation)",
        ylabel=r"fraction of runs with score $> \tau$",
    )
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"Performance profile over {len(tasks)} dataset(s), 95 % CIs", fontsize="medium")
    fig.tight_layout()
    fig.savefig(out / "performance_profile.png", dpi=120)
    plt.close(fig)
    return lines + ["", "![performance profile](performance_profile.png)", ""]


# ---------------------------------------------------------------- learning curves
def learning_curves(groups: dict, algos: list[str], datasets: list[str], path: Path, colors: dict) -> None:
    """One panel per dataset: mean ± std over seeds at the evaluation steps every seed has."""
    cols = min(3, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        behaviour = []
        for algo in algos:
            runs = groups.get((dataset, algo))
            if not runs:
                continue
            histories = [{e["step"]: e["normalized_score"] for e in r["evaluations"]} for r in runs]
            steps = sorted(set.intersection(*(set(h) for h in histories)))
            scores = np.array([[h[s] for s in steps] for h in histories])
            mean, std = scores.mean(0), scores.std(0)
            ax.plot(steps, mean, color=colors[algo], label=f"{algo} ({len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, color=colors[algo], alpha=0.2, linewidth=0)
            behaviour += [r.get("behaviour_normalized_score", math.nan) for r in runs]
        if behaviour and np.isfinite(behaviour).all():
            ax.axhline(np.mean(behaviour), color="grey", linestyle="--", linewidth=1, label="behaviour data")
        ax.set_title(dataset, fontsize="medium")
        ax.set_xlabel("updates")
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    legend = {}  # one legend beside the panels, so that no curve hides under it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label.split(" (")[0], handle)
    fig.legend(legend.values(), legend.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "runs_dir",
        nargs="?",
        default="runs/benchmark",
        help="folder searched for results.json (default: runs/benchmark)",
    )
    parser.add_argument("--out", help="folder for report.md and the figures (default: <runs_dir>/report)")
    parser.add_argument(
        "--published", default=str(PUBLISHED), help="published scores (default: benchmarks/published_scores.yaml)"
    )
    parser.add_argument("--algos", nargs="+", help="only these algorithms, in this order (default: all found)")
    parser.add_argument("--datasets", nargs="+", help="only these datasets, in this order (default: all found)")
    parser.add_argument("--include-unfinished", action="store_true", help="also count runs short of their num_updates")
    parser.add_argument(
        "--reps", type=int, default=10_000, help="bootstrap resamples of the aggregate CIs (default: 10000)"
    )
    parser.add_argument(
        "--profile-reps", type=int, default=2_000, help="bootstrap resamples of the performance profile (default: 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        sys.exit(
            f"error: {runs_dir} is not a folder; pass the --runs-dir of benchmarks/run.py (default runs/benchmark)"
        )
    try:
        sources = load_published(Path(args.published))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        sys.exit(f"error: {args.published}: cannot read the published scores ({' '.join(str(e).split())})")
    found, skipped = load_runs(runs_dir)
    # --algos / --datasets select before anything is listed: another algorithm's stopped or unfinished run
    # sharing the runs folder is not this report's
    asked = [
        r
        for r in found
        if (not args.algos or r["algo"] in args.algos) and (not args.datasets or r["dataset"] in args.datasets)
    ]
    runs, notes = select_runs(asked, args.include_unfinished)
    stopped = [
        f"`{r['run_dir']}` stopped at update {r['last_step']} of {r['target']}: {r['stopped']}"
        for r in runs
        if r.get("stopped")
    ]
    if not runs:
        sys.exit(
            f"error: no finished run under {runs_dir} ({len(found)} results.json found"
            + (", none matching --algos/--datasets" if args.algos or args.datasets else "")
            + ")"
        )
    algos = (
        [a for a in args.algos if any(r["algo"] == a for r in runs)]
        if args.algos
        else sorted({r["algo"] for r in runs})
    )
    datasets = (
        [d for d in args.datasets if any(r["dataset"] == d for r in runs)]
        if args.datasets
        else sorted({r["dataset"] for r in runs})
    )
    groups = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run["algo"])].append(run)
    palette = plt.get_cmap("tab10" if len(algos) <= 10 else "tab20")  # one colour per algorithm
    colors = {algo: palette(i % palette.N) for i, algo in enumerate(algos)}

    out = Path(args.out) if args.out else runs_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmark report",
        "",
        f"- runs: {len(runs)} from `{runs_dir}` ({len(algos)} algorithm(s), {len(datasets)} dataset(s)); "
        f"written {datetime.datetime.now().isoformat(timespec='seconds')} by `benchmarks/report.py`",
        "- scores: D4RL normalised score, 100 (R - R_random) / (R_expert - R_random), of the deterministic policy; "
        "**last** = the final evaluation, **best** = the best evaluation of the run (optimistic: chosen on the test "
        "metric itself), **last 3** = the mean of the run's last three evaluations",
        "- mean ± std over seeds (numpy std, ddof = 0); *seeds* = runs; *updates* = the step of the last evaluation",
        "- *behaviour data* = the normalised score of the dataset's own episodes, the bar an offline algorithm has "
        "to clear",
        f"- *published*: from `{Path(args.published).name}`, each number with its source (listed below); {DASH} = no "
        "published number",
        "",
        "## Scores per dataset",
        "",
        *score_table(groups, datasets, algos, sources),
        "",
        *finetune_table(groups, datasets, algos),
        *aggregate_section(groups, algos, datasets, args, out, colors),
        "## Learning curves",
        "",
        "Normalised score against updates, mean ± std over seeds; dashed: the behaviour data.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Sources of the published numbers",
        "",
        *[f"- **{s['label']}**: {s['title']}, <{s['url']}>" for s in sources.values()],
        "",
    ]
    learning_curves(groups, algos, datasets, out / "learning_curves.png", colors)
    if stopped:
        lines += [
            "## Runs stopped early (counted with the evaluations they made)",
            "",
            *[f"- {n}" for n in stopped],
            "",
        ]
    if notes or skipped:
        lines += ["## Runs not counted", "", *[f"- {n}" for n in notes + skipped], ""]
    (out / "report.md").write_text("\n".join(lines))
    print(
        f"{out / 'report.md'}: {len(runs)} runs, {len(algos)} algorithm(s) x {len(datasets)} dataset(s)"
        + (
            f"; {len(notes) + len(skipped)} result file(s) not counted (listed in the report)"
            if notes or skipped
            else ""
        )
    )


if __name__ == "__main__":
    main()
