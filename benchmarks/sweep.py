"""Pessimism sweep: run one method over a grid of its pessimism and plot score against it.

One command runs algorithms/<algo>.py on one dataset for every value of one numeric Args
field (`--param`: MOPO's and MOBILE's `penalty_coef`, MOReL's `pessimism`, COMBO's
`cql_weight`; mbpo.py has no pessimism; any numeric field of the script's Args is accepted, checked
against the script's Args and LIMITS before anything runs), optionally crossed with
several `--rollout-lengths` (one curve per length), for each of `--seeds`. The cells run
through benchmarks/run.py (imported): its local pool or Slurm via submitit, per-dataset
configs of `--configs-dir`, `--set` overrides, locks, per-cell logs, and skipping finished
cells / resuming unfinished ones when the same command runs again. Each grid point gets its
own runs directory, `<runs-dir>/<param>=<value>` (`<runs-dir>/rollout_length=<L>__<param>=<value>`
with a second axis); the model-based scripts share one dynamics cache, `<runs-dir>/dynamics`,
so an ensemble is trained once per seed and not once per point.

The procedure follows the pessimism sweep of Mr-Pepe/offline-model-based-rl
(benchmark/evaluation/pessimism_sweep.py and analyze_pessimism_sweep.py):
  * the grid is plain: `--range LO HI --points N` is np.linspace(LO, HI, N), both bounds
    included (their `--bounds`, `--n_trials`), or `--log` for N log-spaced points; or
    `--values` lists the points;
  * every point is a full offline run, scored by its **last evaluation's** normalised score
    (their last epoch's test return, D4RL-normalised x 100); with several seeds, the mean
    and std over seeds (numpy std, ddof = 0, as benchmarks/report.py);
  * points are sorted by the swept value and the curve is smoothed across neighbouring points
    with a **box filter** of `--kernel` points (theirs: 50, 60 and 30 points on 50-point
    sweeps; here default 3, a point and its two neighbours, for sweeps of a handful of
    points; 1 turns it off). A window of K points covers K//2 points on either side (for an
    even K, K//2 below and K//2 - 1 above); it counts points, not distance, so on an uneven
    `--values` grid the neighbours are the next values in order. At the ends the window is cut to the points that
    exist and the mean is taken over those (no zero padding, which would pull the ends
    towards 0); a point without a finished run is left out of the smoothing. The filter
    and kernel are named in the table and the legend;
  * the plot is score against the swept value. Their x-axis is normalised by the largest
    uncertainty the model gives on the dataset (coefficient x max u for penalties, threshold
    / max u for partitioning); that needs the trained ensemble run over the whole dataset, which
    our scripts do not record in results.json, so **this tool plots the raw swept value only**.
    (MOReL's `pessimism` is already relative: its threshold is max disagreement / pessimism.)

Also reported: the best evaluation of each run (mean over seeds), as an aside, since it is
chosen on the test metric; the behaviour data's normalised score (the results.json field
benchmarks/report.py uses) as a horizontal line; and runs that their divergence check stopped
early (results.json "stopped"), which count with their last evaluation as in report.py but are
marked: "stopped@STEP" in the table, red crosses in the plot. Missing or unfinished runs are
listed, never silently dropped.

Outputs in `--out` (default <runs-dir>/sweep): sweep.png, sweep.md (the table, with the
command, date, commit and this call's duration) and sweep.csv (one row per run).

Examples (from the project root):
    python benchmarks/sweep.py --algo mopo --dataset shipped/pendulum-medium-replay \
        --param penalty_coef --values 0 0.5 1 2 4 --configs-dir benchmarks/cpu/configs \
        --runs-dir runs/sweep_mopo --workers 1 --threads 1 --device cpu
    python benchmarks/sweep.py --algo morel --dataset hopper-medium-v2 --param pessimism \
        --range 0.5 8 --points 16 --log --rollout-lengths 1 5 --seeds 0 1 --kernel 5 \
        --slurm-partition gpu --slurm-gpus-per-node 1
    python benchmarks/sweep.py --algo combo --dataset hopper-medium-v2 --param cql_weight \
        --range 0 5 --points 11 --set num_updates=200000 --dry-run
    python benchmarks/sweep.py ... --no-run     # only the table and plot from the runs there are
"""

import argparse
import ast
import csv
import datetime
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as runner  # noqa: E402  benchmarks/run.py

DEFAULT_KERNEL = 3


class SweepError(Exception):
    """Bad command-line input; main() prints it as one line and exits 2."""


# ---------------------------------------------------------------- the grid
def make_grid(values=None, bounds=None, points=None, log=False) -> list[float]:
    """The swept values, ascending: `values` as given, or np.linspace / np.geomspace over `bounds`, both included."""
    if values is not None:
        grid = [float(v) for v in values]
    else:
        lo, hi = bounds
        if points is None or points < 1:
            raise SweepError("--range needs --points N (N >= 1)")
        if log:
            if lo <= 0 or hi <= 0:
                raise SweepError(
                    f"--log needs positive bounds (got {lo:g} {hi:g}); list 0 with --values if you need it"
                )
            grid = np.geomspace(lo, hi, points).tolist()
        else:
            grid = np.linspace(lo, hi, points).tolist()
    grid = sorted(float(f"{v:.6g}") for v in grid)  # the value as it is named and passed: 6 significant digits
    if len(set(grid)) != len(grid):
        raise SweepError(f"the grid repeats a value (to 6 significant digits): {' '.join(f'{v:g}' for v in grid)}")
    return grid


def box_filter(y, kernel: int) -> np.ndarray:
    """Moving average over `kernel` neighbouring points (NaN points left out; the window is cut at the ends).

    Point i averages y[i - kernel//2 : i + kernel - kernel//2] (clipped to the array), over the finite values
    there; a NaN point stays NaN.
    """
    y = np.asarray(y, dtype=float)
    if kernel < 1:
        raise SweepError(f"--kernel {kernel}: must be at least 1")
    below, above = kernel // 2, kernel - kernel // 2
    out = np.full_like(y, np.nan)
    for i in range(len(y)):
        if not np.isfinite(y[i]):
            continue
        window = y[max(0, i - below) : i + above]
        out[i] = window[np.isfinite(window)].mean()
    return out


# ---------------------------------------------------------------- the script's Args
def limits(algo: str) -> dict[str, str]:
    """The script's LIMITS ({field: "[0, inf)"}), read without importing it."""
    tree = ast.parse((runner.ALGORITHMS / f"{algo}.py").read_text())
    found = {}
    for node in tree.body:
        targets = [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "LIMITS" for t in targets) and node.value is not None:
            try:
                found.update(ast.literal_eval(node.value))
            except ValueError:
                pass
    return found


def within(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written like "[0, inf)" or "(0, 1]"."""
    low, high = (part.strip() for part in interval.strip()[1:-1].split(","))
    low, high = float(low), float(high)
    above = value >= low if interval.strip()[0] == "[" else value > low
    below = value <= high if interval.strip()[-1] == "]" else value < high
    return above and below


def check_param(algo: str, fields: dict, param: str, grid: list[float]) -> str:
    """The field's annotation ("float" or "int"), or SweepError naming what is wrong."""
    numeric = [k for k, (annotation, _) in fields.items() if annotation in ("float", "int")]
    numeric = [k for k in numeric if k not in runner.RUNTIME_FIELDS]
    if param not in fields or fields[param][0] not in ("float", "int"):
        what = "has no field" if param not in fields else f"has {param!r} as {fields[param][0]}, not a number; no"
        raise SweepError(
            f"--param {param}: algorithms/{algo}.py {what} numeric field {param!r} to sweep; "
            f"its numeric fields: {', '.join(numeric)}"
        )
    if param in runner.RUNTIME_FIELDS:
        raise SweepError(f"--param {param}: a runtime field, not something to sweep")
    annotation = fields[param][0]
    if annotation == "int" and any(not v.is_integer() for v in grid):
        raise SweepError(f"--param {param} is an int field; the grid has {' '.join(f'{v:g}' for v in grid)}")
    interval = limits(algo).get(param)
    outside = [v for v in grid if interval and not within(v, interval)]
    if outside:
        raise SweepError(
            f"--param {param}: {' '.join(f'{v:g}' for v in outside)} outside the script's limits {interval}"
        )
    return annotation


# ---------------------------------------------------------------- points and cells
def point_name(param: str, value: float, rollout_length=None) -> str:
    name = f"{param}={value:g}"
    return name if rollout_length is None else f"rollout_length={rollout_length}__{name}"


def make_points(args, fields: dict) -> list[dict]:
    """One entry per (rollout length, value): its runs directory and its cells (one per seed), built by run.py."""
    annotation = check_param(args.algo, fields, args.param, args.grid)
    overrides = runner.parse_overrides(args.overrides, [args.algo], {args.algo: fields})[args.algo]
    for key in [args.param] + (["rollout_length"] if args.rollout_lengths else []):
        if key in overrides:
            raise SweepError(f"--set {key}=...: {key} is what the sweep varies")
    if args.rollout_lengths:
        if "rollout_length" not in fields:
            raise SweepError(f"--rollout-lengths: algorithms/{args.algo}.py has no field rollout_length")
        if args.param == "rollout_length":
            raise SweepError("--rollout-lengths with --param rollout_length: sweep it one way only")
    if "dynamics_cache_dir" in fields and "dynamics_cache_dir" not in overrides:
        # one ensemble per seed for the whole sweep, not one per point (the cache key leaves the pessimism out)
        overrides["dynamics_cache_dir"] = os.path.join(os.path.abspath(args.runs_dir), "dynamics")
    points = []
    for length in args.rollout_lengths or [None]:
        for value in args.grid:
            name = point_name(args.param, value, length)
            point_overrides = {**overrides, args.param: int(value) if annotation == "int" else value}
            if length is not None:
                point_overrides["rollout_length"] = length
            grid_args = SimpleNamespace(
                algos=[args.algo],
                datasets=[args.dataset],
                seeds=args.seeds,
                runs_dir=os.path.join(args.runs_dir, name),
                configs_dir=args.configs_dir,
                threads=args.threads,
                device=args.device,
            )
            cells = runner.make_cells(grid_args, {args.algo: fields}, {args.algo: point_overrides})
            points.append({"name": name, "value": value, "rollout_length": length, "cells": cells})
    return points


# ---------------------------------------------------------------- scores
def read_point(point: dict) -> list[dict]:
    """One row per seed of a point: its finished run's last and best normalised score, or why there is none."""
    import json

    rows = []
    for cell in point["cells"]:
        row = {
            "rollout_length": point["rollout_length"],
            "value": point["value"],
            "seed": cell.seed,
            "last": math.nan,
            "best": math.nan,
            "behaviour": math.nan,
            "last_step": None,
            "stopped": "",
            "run_dir": "",
            "missing": "",
        }
        action, run_dir, note = runner.inspect(cell)
        if action != "finished":
            row["missing"] = {"new": "no run", "resume": note, "conflict": note}[action]
            rows.append(row)
            continue
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
        evaluations = results.get("evaluations") or []
        number = lambda x: math.nan if x is None else float(x)  # noqa: E731  (no reference returns: null)
        row.update(
            run_dir=run_dir,
            last=number(evaluations[-1]["normalized_score"]) if evaluations else math.nan,
            best=number(
                max((e["normalized_score"] for e in evaluations if e["normalized_score"] is not None), default=None)
            ),
            behaviour=number(results.get("behaviour_normalized_score")),
            last_step=int(evaluations[-1]["step"]) if evaluations else 0,
            stopped=str(results.get("stopped") or ""),
        )
        if not evaluations:
            row["missing"] = "stopped before its first evaluation"
        rows.append(row)
    return rows


def summarise(points: list[dict], rows: list[dict], kernel: int) -> list[dict]:
    """Per point: seeds counted, mean and std of the last score, the box-filtered mean, the best (aside)."""
    summary = []
    for point in points:
        mine = [r for r in rows if r["value"] == point["value"] and r["rollout_length"] == point["rollout_length"]]
        last = np.array([r["last"] for r in mine if np.isfinite(r["last"])])
        best = np.array([r["best"] for r in mine if np.isfinite(r["best"])])
        summary.append(
            {
                "rollout_length": point["rollout_length"],
                "value": point["value"],
                "n": len(last),
                "seeds": len(mine),
                "mean": last.mean() if len(last) else math.nan,
                "std": last.std() if len(last) else math.nan,
                "best": best.mean() if len(best) else math.nan,
                "stopped": [f"seed {r['seed']}@{r['last_step']}" for r in mine if r["stopped"]],
                "missing": [f"seed {r['seed']}: {r['missing']}" for r in mine if r["missing"]],
            }
        )
    for length in {s["rollout_length"] for s in summary}:
        curve = [s for s in summary if s["rollout_length"] == length]  # ascending values
        for s, smooth in zip(curve, box_filter([s["mean"] for s in curve], kernel)):
            s["smoothed"] = smooth
    return summary


# ---------------------------------------------------------------- outputs
def fmt(x: float, decimals: int = 1) -> str:
    return "—" if not np.isfinite(x) else f"{x:.{decimals}f}"


def filter_name(kernel: int) -> str:
    return f"box filter, kernel {kernel} point{'s' if kernel != 1 else ''}"


def write_csv(rows: list[dict], path: Path) -> None:
    keys = [
        "rollout_length",
        "value",
        "seed",
        "last",
        "best",
        "behaviour",
        "last_step",
        "stopped",
        "missing",
        "run_dir",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in keys})


def table_lines(args, summary: list[dict], rows: list[dict], behaviour: float) -> list[str]:
    axis = bool(args.rollout_lengths)
    head = (
        ("| rollout length " if axis else "")
        + f"| {args.param} | seeds | last (mean ± std) | smoothed ({filter_name(args.kernel)}) | "
        + "best eval (aside) | stopped early | missing |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        last = fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if s["n"] > 1 else "")
        lines.append(
            (f"| {s['rollout_length']} " if axis else "")
            + f"| {s['value']:g} | {s['n']}/{s['seeds']} | {last} | {fmt(s.get('smoothed', math.nan))} | "
            f"{fmt(s['best'])} | {', '.join(s['stopped']) or '—'} | {'; '.join(s['missing']) or '—'} |"
        )
    lines.append("")
    for length in dict.fromkeys(s["rollout_length"] for s in summary):
        curve = [s for s in summary if s["rollout_length"] == length and np.isfinite(s.get("smoothed", math.nan))]
        if not curve:
            continue
        where = f"rollout length {length}: " if axis else ""
        top = max(curve, key=lambda s: s["smoothed"])
        raw = max(curve, key=lambda s: s["mean"])
        lines.append(
            f"- {where}highest smoothed score {fmt(top['smoothed'])} at {args.param} = {top['value']:g}; "
            f"highest unsmoothed mean {fmt(raw['mean'])} at {args.param} = {raw['value']:g}"
        )
    lines.append(f"- behaviour data's normalised score: {fmt(behaviour)}")
    stopped = [r for r in rows if r["stopped"]]
    if stopped:
        lines += ["", "Runs stopped early by their divergence check (counted with their last evaluation):", ""]
        lines += [
            f"- {args.param}={r['value']:g} seed {r['seed']} at update {r['last_step']}: {r['stopped']}"
            for r in stopped
        ]
    return lines


def plot(args, summary: list[dict], rows: list[dict], behaviour: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lengths = list(dict.fromkeys(s["rollout_length"] for s in summary))
    palette = plt.get_cmap("tab10")
    stopped_drawn = False
    # each seed's point is drawn a little beside its value (seed order), so that points and error bars stay apart
    rank = {seed: j - (len(args.seeds) - 1) / 2 for j, seed in enumerate(args.seeds)}
    lo, hi = min(args.grid), max(args.grid)
    if args.log:
        beside = lambda r: r["value"] * (hi / lo) ** (0.012 * rank[r["seed"]])  # noqa: E731
    else:
        beside = lambda r: r["value"] + 0.012 * (hi - lo or 1.0) * rank[r["seed"]]  # noqa: E731
    for i, length in enumerate(lengths):
        color = palette(i % 10)
        label = f"rollout length {length}: " if length is not None else ""
        curve = [s for s in summary if s["rollout_length"] == length]
        mine = [r for r in rows if r["rollout_length"] == length and np.isfinite(r["last"])]
        ok = [r for r in mine if not r["stopped"]]
        ax.scatter(
            [beside(r) for r in ok], [r["last"] for r in ok], s=14, color=color, alpha=0.45, label=f"{label}each seed"
        )
        bad = [r for r in mine if r["stopped"]]
        if bad:
            ax.scatter(
                [beside(r) for r in bad],
                [r["last"] for r in bad],
                s=40,
                marker="x",
                color="red",
                label=None if stopped_drawn else "stopped early (divergence check)",
                zorder=4,
            )
            stopped_drawn = True
        x = np.array([s["value"] for s in curve])
        mean = np.array([s["mean"] for s in curve])
        std = np.array([s["std"] for s in curve])
        finite = np.isfinite(mean)
        ax.errorbar(
            x[finite],
            mean[finite],
            yerr=std[finite],
            fmt="o",
            color=color,
            capsize=3,
            markersize=5,
            label=f"{label}mean ± std over seeds",
        )
        smooth = np.array([s["smoothed"] for s in curve])
        ax.plot(
            x[np.isfinite(smooth)],
            smooth[np.isfinite(smooth)],
            color=color,
            linewidth=2,
            label=f"{label}smoothed ({filter_name(args.kernel)})",
        )
    if np.isfinite(behaviour):
        ax.axhline(behaviour, color="grey", linestyle="--", linewidth=1, label="behaviour data")
    if args.log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{args.param} (swept value)")
    ax.set_ylabel("normalised score, last evaluation")
    ax.set_title(f"{args.algo} on {args.dataset}: {len(args.seeds)} seed(s) per point", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=runner.PROJECT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=runner.PROJECT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report(args, points: list[dict], out: Path, started: float, argv: list[str]) -> list[dict]:
    rows = [row for point in points for row in read_point(point)]
    summary = summarise(points, rows, args.kernel)
    behaviours = [r["behaviour"] for r in rows if np.isfinite(r["behaviour"])]
    behaviour = float(np.mean(behaviours)) if behaviours else math.nan
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "sweep.csv")
    plot(args, summary, rows, behaviour, out / "sweep.png")
    lines = [
        f"# Pessimism sweep: {args.algo} `{args.param}` on {args.dataset}",
        "",
        f"- command: `python benchmarks/sweep.py {shlex.join(argv)}`",
        f"- written {datetime.datetime.now().isoformat(timespec='seconds')} at commit {git_commit()}; "
        f"this call took {time.time() - started:.0f} s",
        f"- runs: `{os.path.abspath(args.runs_dir)}`, one folder per point; seeds {' '.join(map(str, args.seeds))}",
        "- score: the **last** evaluation's normalised score of each run (as the authors' analysis), mean ± std over "
        "seeds (ddof 0); *smoothed*: the means, sorted by the swept value, averaged over neighbouring points with a "
        f"{filter_name(args.kernel)} (window cut at the ends); *best eval*: the best evaluation of each run, mean "
        "over seeds, an optimistic aside",
        "",
        *table_lines(args, summary, rows, behaviour),
        "",
        "![sweep](sweep.png)",
        "",
    ]
    (out / "sweep.md").write_text("\n".join(lines))
    return summary


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--algo", required=True, help="a script of algorithms/, e.g. mopo")
    sweep.add_argument("--dataset", required=True, help="dataset name as the script takes it")
    sweep.add_argument("--param", required=True, help="numeric Args field to sweep, e.g. penalty_coef")
    grid = sweep.add_mutually_exclusive_group(required=True)
    grid.add_argument("--values", nargs="+", type=float, help="the points of the grid")
    grid.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"), help="bounds of the grid, both included")
    sweep.add_argument("--points", type=int, help="points of --range (np.linspace, or np.geomspace with --log)")
    sweep.add_argument("--log", action="store_true", help="log-spaced points over --range (and a log x-axis)")
    sweep.add_argument("--rollout-lengths", nargs="+", type=int, help="a second axis: one curve per rollout length")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per point (default: 0)")
    sweep.add_argument(
        "--kernel",
        type=int,
        default=DEFAULT_KERNEL,
        help=f"box-filter width in points across neighbouring values (default: {DEFAULT_KERNEL}; 1: no smoothing)",
    )
    sweep.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="other Args overrides on top of the per-dataset config (values are YAML)",
    )
    sweep.add_argument("--runs-dir", default="runs/sweep", help="where the points' runs go (default: runs/sweep)")
    sweep.add_argument(
        "--configs-dir",
        default=str(runner.CONFIGS),
        help="per-dataset configs, <dir>/<algo>/<dataset>.yaml (default: benchmarks/configs)",
    )
    sweep.add_argument("--out", help="folder for sweep.png, sweep.md, sweep.csv (default: <runs-dir>/sweep)")
    sweep.add_argument("--dry-run", action="store_true", help="print every cell's command; run nothing")
    sweep.add_argument("--no-run", action="store_true", help="run nothing; table and plot from the runs there are")
    runner.add_runner_arguments(parser)
    args = parser.parse_args(argv)
    runner.check_runner_arguments(parser, args)
    if args.range is not None and args.points is None:
        parser.error("--range needs --points")
    if args.values is not None and (args.points is not None or args.log):
        parser.error("--points and --log go with --range, not --values")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must not repeat a value")
    if args.rollout_lengths and (
        len(set(args.rollout_lengths)) != len(args.rollout_lengths) or min(args.rollout_lengths) < 1
    ):
        parser.error("--rollout-lengths: distinct lengths of at least 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    started = time.time()
    args = parse_args(argv)
    try:
        if args.algo not in runner.offline_algorithms():
            raise SweepError(f"--algo {args.algo}: not an offline script of {runner.ALGORITHMS}")
        if args.kernel < 1:
            raise SweepError(f"--kernel {args.kernel}: must be at least 1")
        args.grid = make_grid(args.values, args.range, args.points, args.log)
        points = make_points(args, runner.script_fields(args.algo))
    except (SweepError, runner.GridError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells = [cell for point in points for cell in point["cells"]]
    if args.dry_run:
        print(
            f"# {len(points)} points x {len(args.seeds)} seeds = {len(cells)} cells; "
            f"{args.param}: {' '.join(f'{v:g}' for v in args.grid)}"
        )
        runner.print_dry_run(cells)
        return 0
    failed = []
    if not args.no_run:
        # every point's first seed before any second seed: a sweep cut short still covers the whole grid
        order = {seed: i for i, seed in enumerate(args.seeds)}
        cells = sorted(cells, key=lambda cell: order[cell.seed])
        print(
            f"{len(cells)} cells ({len(points)} points x {len(args.seeds)} seeds) into "
            f"{os.path.abspath(args.runs_dir)}, executor {args.executor}",
            flush=True,
        )
        if args.executor != "local":
            # submitit pickles the cells with cloudpickle; run.py is imported here (not __main__), so its
            # classes must travel by value: a Slurm job cannot import benchmarks/run.py as `run`
            import cloudpickle

            cloudpickle.register_pickle_by_value(runner)
        try:
            results = (
                runner.run_pool(cells, args.workers) if args.executor == "local" else runner.run_submitit(cells, args)
            )
        except runner.GridError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        failed = [r for r in results if r["status"] == "failed"]
    out = Path(args.out) if args.out else Path(args.runs_dir) / "sweep"
    summary = report(args, points, out, started, argv)
    scored = sum(s["n"] for s in summary)
    print(
        f"{out / 'sweep.md'}, sweep.png, sweep.csv: {scored} of {len(cells)} runs scored"
        + (f", {sum(len(s['stopped']) for s in summary)} stopped early" if any(s["stopped"] for s in summary) else "")
    )
    if failed:
        print(
            f"error: {len(failed)} of {len(cells)} cells failed: "
            + "; ".join(f"{r['cell']} ({r['message']})" for r in failed[:3]),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
