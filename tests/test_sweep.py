"""benchmarks/sweep.py: the grid, the box filter, the dry run, the table and plot from fake runs,
a bad --param, and one tiny real sweep (2 points x 1 seed of MOPO, a few seconds of training)."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import ROOT, load_script

SWEEP = os.path.join(ROOT, "benchmarks", "sweep.py")
DATASET = "shipped/pendulum-medium-replay"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sweep():
    return load_script(SWEEP)


def run_sweep(*argv, timeout=120):
    return subprocess.run(
        [sys.executable, SWEEP, *argv], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT
    )


def test_grid_linspace_includes_both_bounds(sweep):
    assert sweep.make_grid(bounds=(0.0, 1.0), points=5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sweep.make_grid(bounds=(0.0, 3.0), points=7) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert sweep.make_grid(bounds=(2.0, 2.0), points=1) == [2.0]


def test_grid_log_and_values(sweep):
    assert sweep.make_grid(bounds=(0.1, 10.0), points=3, log=True) == pytest.approx([0.1, 1.0, 10.0])
    assert sweep.make_grid(bounds=(1.0, 8.0), points=4, log=True) == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert sweep.make_grid(values=[4, 0, 0.5]) == [0.0, 0.5, 4.0]  # sorted by value
    with pytest.raises(sweep.SweepError):
        sweep.make_grid(bounds=(0.0, 1.0), points=3, log=True)  # 0 has no log
    with pytest.raises(sweep.SweepError):
        sweep.make_grid(values=[1, 1.0])


def test_box_filter_by_hand(sweep):
    y = [1.0, 2.0, 3.0, 4.0, 10.0]
    # kernel 3: each point and its two neighbours; at the ends the window is cut to the points there are
    assert sweep.box_filter(y, 3) == pytest.approx([(1 + 2) / 2, (1 + 2 + 3) / 3, 3.0, (3 + 4 + 10) / 3, (4 + 10) / 2])
    # kernel 2 (even): the point and the one below it
    assert sweep.box_filter(y, 2) == pytest.approx([1.0, 1.5, 2.5, 3.5, 7.0])
    # kernel 5: two on each side
    assert sweep.box_filter(y, 5) == pytest.approx([2.0, 2.5, 4.0, 19 / 4, 17 / 3])
    assert sweep.box_filter(y, 1) == pytest.approx(y)
    # a missing point stays missing and is left out of its neighbours' windows
    out = sweep.box_filter([1.0, np.nan, 3.0, 5.0], 3)
    assert out[0] == pytest.approx(1.0) and np.isnan(out[1]) and out[2] == pytest.approx(4.0)
    assert out[3] == pytest.approx(4.0)


def test_dry_run_lists_every_point_and_seed(tmp_path):
    runs = tmp_path / "runs"
    result = run_sweep(
        "--algo", "mopo", "--dataset", DATASET, "--param", "penalty_coef", "--range", "0", "2", "--points", "3",
        "--rollout-lengths", "1", "5", "--seeds", "0", "1", "--set", "num_updates=500",
        "--runs-dir", str(runs), "--threads", "1", "--device", "cpu", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("OMP_NUM_THREADS")]
    assert len(commands) == 2 * 3 * 2
    for length in (1, 5):
        for value in ("0", "1", "2"):
            point = runs / f"rollout_length={length}__penalty_coef={value}"
            for seed in (0, 1):
                config = point / "logs" / f"mopo__shipped-pendulum-medium-replay__{seed}.yaml"
                assert any(
                    f"--runs-dir {point} " in c
                    and f"--config {config} " in c
                    and f"--seed {seed} " in c
                    and c.endswith("--threads 1 --device cpu >> " + str(config)[:-5] + ".log 2>&1")
                    for c in commands
                ), (point, seed)
    headers = [line for line in result.stdout.splitlines() if line.startswith("# mopo")]
    assert any("penalty_coef=1.0" in h and "rollout_length=5" in h and "num_updates=500" in h for h in headers)
    assert all(f"dynamics_cache_dir={runs}/dynamics" in h for h in headers)  # one ensemble per seed for all points
    assert not runs.exists() or not any(runs.rglob("*.yaml"))  # a dry run writes nothing


def test_bad_param_is_one_line(tmp_path):
    for param, word in [("no_such_field", "no field"), ("uncertainty", "not a number"), ("seed", "a runtime field")]:
        result = run_sweep(
            "--algo", "mopo", "--dataset", DATASET, "--param", param, "--values", "1", "2",
            "--runs-dir", str(tmp_path), "--dry-run",
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: --param " + param) and word in lines[0], lines[0]
        assert param == "seed" or "penalty_coef" in lines[0]  # the fields it could sweep
    # a value outside the script's LIMITS (MOReL's pessimism divides: it must be > 0)
    result = run_sweep("--algo", "morel", "--dataset", DATASET, "--param", "pessimism", "--values", "0", "1")
    assert result.returncode == 2 and "outside the script's limits (0, inf)" in result.stderr
    # any numeric field works, not only the known pessimism ones
    result = run_sweep("--algo", "mopo", "--dataset", DATASET, "--param", "real_ratio", "--values", "0.05", "0.5",
                       "--runs-dir", str(tmp_path), "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr


def fake_run(runs, value, seed, scores, stopped=None, num_updates=100):
    """A run directory as algorithms/mopo.py leaves it, with the evaluations given."""
    run_dir = runs / f"penalty_coef={value:g}" / f"mopo__fake-v0__{seed}__{1000 + seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"penalty_coef": float(value), "num_updates": num_updates}))
    step = num_updates // 2  # evaluations every half of the budget; a stopped run has fewer
    evaluations = [{"step": step * (i + 1), "normalized_score": s} for i, s in enumerate(scores)]
    results = {
        "algo": "mopo",
        "dataset": "fake-v0",
        "seed": seed,
        "evaluations": evaluations,
        "last_normalized_score": scores[-1],
        "best_normalized_score": max(scores),
        "behaviour_normalized_score": 5.0,
    }
    if stopped:
        results["stopped"] = stopped
    (run_dir / "results.json").write_text(json.dumps(results))


def test_table_and_plot_from_fake_runs(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    fake_run(runs, 0, 0, [10.0, 20.0])
    fake_run(runs, 0, 1, [10.0, 40.0])
    fake_run(runs, 1, 0, [50.0, 60.0])
    fake_run(runs, 1, 1, [70.0], stopped="the critic diverged: test")  # stopped at 50 of 100 updates
    fake_run(runs, 2, 0, [90.0, 0.0])  # the last evaluation counts, not the best
    # penalty_coef=2 seed 1 has no run: it is listed as missing
    result = run_sweep(
        "--algo", "mopo", "--dataset", "fake-v0", "--param", "penalty_coef", "--values", "0", "1", "2",
        "--seeds", "0", "1", "--set", "num_updates=100", "--runs-dir", str(runs), "--out", str(out), "--no-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "sweep.png").stat().st_size > 10_000
    table = (out / "sweep.md").read_text()
    assert "box filter, kernel 3 points" in table
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ("0", "1", "2")}  # fmt: skip
    # means: 30 (20, 40), 65 (60, 70), 0 (seed 0 only); smoothed with the window cut at the ends
    assert rows["0"][1:4] == ["2/2", "30.0 ± 10.0", f"{(30 + 65) / 2:.1f}"]
    assert rows["1"][1:4] == ["2/2", "65.0 ± 5.0", f"{(30 + 65 + 0) / 3:.1f}"]
    assert rows["2"][1:4] == ["1/2", "0.0", f"{(65 + 0) / 2:.1f}"]
    assert rows["1"][5] == "seed 1@50"  # the stopped run is counted and marked
    assert "seed 1: no run" in rows["2"][6]
    assert rows["2"][4] == "90.0"  # best evaluation, the aside
    assert "the critic diverged: test" in table and "behaviour data's normalised score: 5.0" in table
    with open(out / "sweep.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 6 and sum(bool(r["stopped"]) for r in csv_rows) == 1
    # kernel 1: no smoothing
    result = run_sweep(
        "--algo", "mopo", "--dataset", "fake-v0", "--param", "penalty_coef", "--values", "0", "1", "2",
        "--seeds", "0", "1", "--set", "num_updates=100", "--runs-dir", str(runs), "--out", str(out), "--no-run",
        "--kernel", "1",
    )  # fmt: skip
    assert result.returncode == 0 and "box filter, kernel 1 point)" in (out / "sweep.md").read_text()


def test_tiny_real_sweep(tmp_path):
    """Two points of MOPO's penalty coefficient, 1 seed, 100 updates: run, score, plot; then again, skipped."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = [
        "--algo", "mopo", "--dataset", DATASET, "--param", "penalty_coef", "--range", "0", "1", "--points", "2",
        "--runs-dir", str(runs), "--out", str(out), "--workers", "1", "--threads", "1", "--device", "cpu", "--set",
        "num_updates=100", "eval_every=50", "eval_episodes=1", "checkpoint_every=50", "log_every=25",
        "batch_size=32", "hidden_dim=64", "dynamics_max_epochs=2", "rollout_batch_size=100", "rollout_every=50",
    ]  # fmt: skip
    started = time.time()
    result = run_sweep(*argv, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    print(f"tiny sweep: {time.time() - started:.0f} s")
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows] == [0.0, 1.0]
    assert all(r["last_step"] == "100" and np.isfinite(float(r["last"])) for r in rows)
    for row in rows:  # each run was made with its point's coefficient
        config = yaml.safe_load(open(os.path.join(row["run_dir"], "config.yaml")))
        assert config["penalty_coef"] == float(row["value"])
    assert len(list((runs / "dynamics").glob("*.pt"))) == 1  # one ensemble shared by both points
    # again, through submitit's local executor (the Slurm path: cells pickled into jobs): both are finished
    again = run_sweep(*argv, "--executor", "local-submitit", timeout=180)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2, again.stdout + again.stderr
