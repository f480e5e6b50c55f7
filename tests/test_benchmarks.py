"""benchmarks/run.py (grid runner) and benchmarks/report.py on a tiny grid of real runs.

One grid (bc and td3_bc x the shipped Pendulum data x 2 seeds, 30 updates each) is run
once for the module; the other tests reuse it, so the whole file takes well under a minute.
"""

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import ROOT, load_script

RUN = os.path.join(ROOT, "benchmarks", "run.py")
DATASET = "shipped/pendulum-medium-replay"
TINY = ["num_updates=30", "eval_every=15", "eval_episodes=1", "checkpoint_every=15"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def run_grid(runs_dir, *extra, algos=("bc", "td3_bc"), seeds=(0, 1), budget=TINY, datasets=(DATASET,)):
    command = [
        sys.executable,
        RUN,
        "--algos",
        *algos,
        "--datasets",
        *datasets,
        "--seeds",
        *map(str, seeds),
        "--runs-dir",
        str(runs_dir),
        "--threads",
        "1",
        "--device",
        "cpu",
        *extra,
        "--set",
        *budget,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)


def run_dirs(runs_dir, pattern="*__*__*__*"):
    return sorted(d for d in glob.glob(os.path.join(str(runs_dir), pattern)) if os.path.isdir(d))


def evaluations(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)["evaluations"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("grid")
    done = run_grid(runs_dir, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    return runs_dir, done


def test_grid_runs_every_cell(grid):
    runs_dir, done = grid
    dirs = run_dirs(runs_dir)
    assert len(dirs) == 4
    for algo in ("bc", "td3_bc"):
        for seed in (0, 1):
            (run_dir,) = run_dirs(runs_dir, f"{algo}__shipped-pendulum-medium-replay__{seed}__*")
            assert [e["step"] for e in evaluations(run_dir)] == [15, 30]
            config = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
            assert (config["num_updates"], config["eval_episodes"], config["seed"]) == (30, 1, seed)
            log = os.path.join(runs_dir, "logs", f"{algo}__shipped-pendulum-medium-replay__{seed}.log")
            assert (
                f"{algo} on {DATASET}: last normalised score" in open(log).read()
            )  # the script's output went to its log
    assert "4 cells: 4 run, 0 already finished, 0 failed" in done.stdout


def test_second_invocation_skips_finished_cells(grid):
    runs_dir, _ = grid
    before = {d: os.path.getmtime(os.path.join(d, "results.json")) for d in run_dirs(runs_dir)}
    start = time.time()
    again = run_grid(runs_dir, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert time.time() - start < 20  # no script started (one takes seconds just to import torch)
    assert "4 cells: 0 run, 4 already finished, 0 failed" in again.stdout
    assert sum(line.startswith("skipped") for line in again.stdout.splitlines()) == 4
    assert {d: os.path.getmtime(os.path.join(d, "results.json")) for d in run_dirs(runs_dir)} == before


def test_dry_run_prints_only_the_missing_cells(grid):
    runs_dir, _ = grid
    dry = run_grid(runs_dir, "--dry-run", seeds=(0, 1, 2))
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all("--seed 2" in c and "--config" in c for c in commands)
    assert sum(": finished " in line for line in dry.stdout.splitlines()) == 4
    assert len(run_dirs(runs_dir)) == 4  # nothing ran


def test_other_settings_are_not_mixed_in(grid):
    runs_dir, _ = grid
    conflict = run_grid(runs_dir, algos=("td3_bc",), seeds=(0,), budget=TINY + ["td3_bc.alpha=3"])
    assert conflict.returncode == 1
    assert "was made with alpha=2.5" in conflict.stderr and len(conflict.stderr.strip().splitlines()) == 1
    bad_key = run_grid(runs_dir, budget=TINY + ["alpha=3"])  # bc has no alpha
    assert bad_key.returncode == 2 and "bc has no field 'alpha'" in bad_key.stderr


def test_failed_cell_ends_with_a_one_line_summary(tmp_path):
    failed = run_grid(tmp_path, algos=("bc",), seeds=(0,), datasets=("shipped/no-such-data",))
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert "1 failed" in line and "shipped dataset 'no-such-data' not found" in line


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """td3_bc seed 1 run through submitit's local executor for 15 of its 30 updates, left as a
    run killed after its checkpoint at update 15 leaves it: config.yaml asks for 30 updates,
    checkpoint.pt and results.json stop at 15."""
    pytest.importorskip("submitit")
    runs_dir = tmp_path_factory.mktemp("partial")
    done = run_grid(
        runs_dir,
        "--executor",
        "local-submitit",
        algos=("td3_bc",),
        seeds=(1,),
        budget=["num_updates=15", "eval_every=15", "eval_episodes=1", "checkpoint_every=15"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = run_dirs(runs_dir)
    config_path = os.path.join(run_dir, "config.yaml")
    with open(config_path) as f:
        config = yaml.safe_load(f)
    with open(config_path, "w") as f:
        yaml.safe_dump({**config, "num_updates": 30}, f)
    return runs_dir, run_dir, done


def test_submitit_local_executor_runs_a_cell(partial_run):
    runs_dir, run_dir, done = partial_run
    assert "submitted 1 cells to local" in done.stdout and "1 cells: 1 run" in done.stdout
    assert glob.glob(str(runs_dir / "submitit" / "*_result.pkl"))
    assert os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
    assert [e["step"] for e in evaluations(run_dir)] == [15]


def test_interrupted_cell_is_resumed(grid, partial_run):
    runs_dir, run_dir, _ = partial_run
    dry = run_grid(runs_dir, "--dry-run", algos=("td3_bc",), seeds=(1,))
    assert f"--resume {run_dir} --num-updates 30" in dry.stdout
    resumed = run_grid(runs_dir, algos=("td3_bc",), seeds=(1,))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert run_dirs(runs_dir) == [run_dir]  # continued in place, not started anew
    # and it ends with the numbers of the uninterrupted run of the same cell in the grid
    (whole,) = run_dirs(grid[0], "td3_bc__shipped-pendulum-medium-replay__1__*")
    assert evaluations(run_dir) == evaluations(whole)


def test_report_on_the_grid(grid):
    pytest.importorskip("rliable")
    runs_dir, _ = grid
    report = load_script(os.path.join(ROOT, "benchmarks", "report.py"))
    out = runs_dir / "report"
    report.main([str(runs_dir), "--out", str(out), "--reps", "200", "--profile-reps", "50"])
    text = (out / "report.md").read_text()
    for algo in ("bc", "td3_bc"):
        results = [json.load(open(os.path.join(d, "results.json"))) for d in run_dirs(runs_dir, f"{algo}__*")]
        last = np.array([r["last_normalized_score"] for r in results])
        best = np.array([r["best_normalized_score"] for r in results])
        behaviour = results[0]["behaviour_normalized_score"]
        minutes = np.mean([r["train_time_s"] for r in results]) / 60
        three = np.array([np.mean([e["normalized_score"] for e in r["evaluations"][-3:]]) for r in results])
        row = (
            f"| {DATASET} | {behaviour:.1f} | {algo} | 2 | 30 | {last.mean():.1f} ± {last.std():.1f} | "
            f"{best.mean():.1f} ± {best.std():.1f} | {three.mean():.1f} ± {three.std():.1f} | — | {minutes:.1f} |"
        )
        assert row in text, f"missing row {row}\n{text}"
        assert f"| {algo} | 2 | " in text  # the rliable aggregate row
    for png in ("learning_curves.png", "performance_profile.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text


def write_fake_run(runs_dir, algo, dataset, seed, final, num_updates=1000, reached=1000):
    run_dir = os.path.join(runs_dir, f"{algo}__{dataset}__{seed}__1700000000")
    os.makedirs(run_dir)
    history = [
        {"step": s, "return": 0.0, "normalized_score": final * s / num_updates} for s in range(250, reached + 1, 250)
    ]
    json.dump(
        {
            "algo": algo,
            "dataset": dataset,
            "seed": seed,
            "evaluations": history,
            "last_normalized_score": history[-1]["normalized_score"],
            "best_normalized_score": max(h["normalized_score"] for h in history),
            "behaviour_normalized_score": 44.3,
        },
        open(os.path.join(run_dir, "results.json"), "w"),
    )
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump({"num_updates": num_updates, "seed": seed}, f)


def test_report_puts_published_numbers_with_their_source(tmp_path):
    pytest.importorskip("rliable")
    report = load_script(os.path.join(ROOT, "benchmarks", "report.py"))
    for seed, final in enumerate((50.0, 54.0)):
        write_fake_run(tmp_path, "bc", "hopper-medium-v2", seed, final)
        write_fake_run(tmp_path, "mopo", "hopper-medium-v2", seed, final + 20)
    write_fake_run(tmp_path, "bc", "hopper-medium-v2", 2, 0.0, reached=500)  # unfinished: not counted
    report.main([str(tmp_path), "--reps", "100", "--profile-reps", "20"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| hopper-medium-v2 | 44.3 | bc | 2 | 1000 | 52.0 ± 2.0 | 52.0 ± 2.0 | 39.0 ± 1.5 | 53.51 ± 1.76 (CORL) | — |"
        in text
    )  # no train time; the last three evaluations (500, 750, 1000 updates) of 50 and 54: 37.5 and 40.5
    assert "| 62.8 ± 38.1 (OfflineRL-Kit)<br>28.0 (MOReL Tab. 2, D4RL v0) |" in text  # MOPO: both sources, v0 named
    assert "bc__hopper-medium-v2__2__1700000000`: unfinished (500 of 1000 updates)" in text


def test_report_for_some_algorithms_lists_only_their_runs(tmp_path):
    """A report restricted by --algos does not list another algorithm's unfinished run in the same folder."""
    pytest.importorskip("rliable")
    report = load_script(os.path.join(ROOT, "benchmarks", "report.py"))
    for seed in (0, 1):
        write_fake_run(tmp_path, "bc", "hopper-medium-v2", seed, 50.0)
    write_fake_run(tmp_path, "mopo", "hopper-medium-v2", 0, 0.0, reached=500)
    report.main([str(tmp_path), "--algos", "bc", "--reps", "100", "--profile-reps", "20"])
    assert "mopo" not in (tmp_path / "report" / "report.md").read_text()
    report.main([str(tmp_path), "--reps", "100", "--profile-reps", "20"])
    assert "mopo__hopper-medium-v2__0__1700000000`: unfinished" in (tmp_path / "report" / "report.md").read_text()


def test_published_scores_file():
    sources = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "published_scores.yaml")))["sources"]
    counts = {name: sum(len(v) for v in source["scores"].values()) for name, source in sources.items()}
    assert counts == {"corl": 72, "offlinerl_kit": 36, "morel_table2": 24}
    for source in sources.values():
        assert source["label"] and source["title"] and source["url"].startswith("https://")
        for scores in source["scores"].values():
            for mean, std in scores.values():
                assert isinstance(mean, float) and (std is None or isinstance(std, float))


@pytest.mark.parametrize(
    "folder", ["benchmarks/configs", "benchmarks/cpu/configs", "benchmarks/variants/mopo_pairwise"]
)
def test_every_config_names_its_dataset_and_only_fields_the_script_has(folder):
    """A typo in a config key would make its script exit (pyrallis refuses unknown keys) only when
    the sweep reaches that cell; this finds it now. benchmarks/configs/check.sh goes further (it
    parses each file with its script) but takes minutes."""
    run = load_script(RUN)
    root = os.path.join(ROOT, folder)
    files = sorted(glob.glob(os.path.join(root, "*", "**", "*.yaml"), recursive=True))
    algos = {os.path.relpath(f, root).split(os.sep)[0] for f in files}
    if folder == "benchmarks/cpu/configs":  # the CPU benchmark covers every offline script
        # but BRED, an offline-to-online method measured by its fine-tuning runs (README, "Online fine-tuning")
        assert algos == set(run.offline_algorithms()) - {"bred"}
    for algo in algos:
        assert os.path.isfile(os.path.join(ROOT, "algorithms", f"{algo}.py")), f"{folder}/{algo}: no such script"
    fields_of = {algo: run.script_fields(algo) for algo in algos}  # each script parsed once, not once per file
    choices_of = {algo: script_choices(algo) for algo in algos}
    for path in files:
        algo, *rest = os.path.relpath(path, root).split(os.sep)
        fields = fields_of[algo]
        config = yaml.safe_load(open(path))
        if rest[0] == "variants":  # another reference's whole setting, for any dataset (--dataset with it)
            assert "dataset" not in config, path
        else:
            assert config["dataset"] == "/".join(rest)[: -len(".yaml")], path
        unknown = set(config) - set(fields)
        assert not unknown, f"{path}: {sorted(unknown)} are not fields of algorithms/{algo}.py"
        # a str option with a fixed set of values (the script's CHOICES, checked only once main() runs)
        for field, allowed in choices_of[algo].items():
            if field in config:
                assert config[field] in allowed, f"{path}: {field}: {config[field]!r} is not one of {allowed}"


def script_choices(algo: str) -> dict:
    """CHOICES of algorithms/<algo>.py, read from the source."""
    tree = ast.parse(open(os.path.join(ROOT, "algorithms", f"{algo}.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CHOICES"]:
            return ast.literal_eval(node.value)
    return {}


def test_configs_follow_their_references():
    """Spot checks of the per-dataset values against the files the configs cite (see each file's comment)."""
    configs = os.path.join(ROOT, "benchmarks", "configs")

    def read(algo, dataset):
        return yaml.safe_load(open(os.path.join(configs, algo, f"{dataset}.yaml")))

    datasets = [f"{e}-{q}-v2" for e in ("halfcheetah", "hopper", "walker2d") for q in LEVELS]
    for dataset in datasets:
        awac, cql, iql = read("awac", dataset), read("cql", dataset), read("iql", dataset)
        # CORL: λ 0.3333 and batch 256 on all 15; CQL α 10, actor lr 3e-5, reward scaling on hopper-medium only
        assert (awac["awac_lambda"], awac["batch_size"], awac["weight_form"]) == (0.3333, 256, "exp")
        assert (cql["cql_alpha"], cql["actor_lr"], cql["bc_steps"]) == (10.0, 3e-5, 0)
        assert cql["reward_scaling"] == ("return_range" if dataset == "hopper-medium-v2" else "none")
        assert iql["reward_scaling"] == "return_range"  # the official IQL code's rule for these three tasks
        assert read("edac", dataset)["diversity_members"] == 0
    # ReBRAC's (β₁, β₂) on all 15, as in the authors' configs/rebrac/ (tinkoff-ai/ReBRAC, commit 694385b) and their
    # port in CORL's configs/offline/rebrac/ (commit eeeeef2), which agree
    rebrac = {
        "halfcheetah-random-v2": (0.001, 0.1),
        "halfcheetah-medium-v2": (0.001, 0.01),
        "halfcheetah-expert-v2": (0.01, 0.01),
        "halfcheetah-medium-replay-v2": (0.01, 0.001),
        "halfcheetah-medium-expert-v2": (0.01, 0.1),
        "hopper-random-v2": (0.001, 0.01),
        "hopper-medium-v2": (0.01, 0.01),
        "hopper-expert-v2": (0.1, 0.1),
        "hopper-medium-replay-v2": (0.05, 0.5),
        "hopper-medium-expert-v2": (0.1, 0.01),
        "walker2d-random-v2": (0.01, 0.0),
        "walker2d-medium-v2": (0.05, 0.1),
        "walker2d-expert-v2": (0.01, 0.5),
        "walker2d-medium-replay-v2": (0.05, 0.01),
        "walker2d-medium-expert-v2": (0.01, 0.01),
    }
    for dataset, betas in rebrac.items():
        config = read("rebrac", dataset)
        assert (config["actor_bc_coef"], config["critic_bc_coef"]) == betas, dataset
    # SAC-N's N and EDAC's (N, η): CORL on the medium sets, LAMDA-RL/OfflineRL-Lib on random and expert
    sac_n = {"halfcheetah": [10] * 5, "hopper": [500, 500, 500, 200, 200], "walker2d": [20, 20, 100, 20, 20]}
    edac_n = {"halfcheetah": 10, "hopper": 50, "walker2d": 10}
    for env in sac_n:
        for q, n in zip(LEVELS, sac_n[env]):
            assert read("sac_n", f"{env}-{q}-v2")["num_critics"] == n, (env, q)
            edac = read("edac", f"{env}-{q}-v2")
            eta = 5.0 if q == "medium-expert" and env != "hopper" else 1.0
            assert (edac["num_critics"], edac["eta"]) == (edac_n[env], eta), (env, q)
    # MOBILE's (h, λ): the authors' configs/gym/ (yihaosun1124/mobile); expert: their medium-expert value
    mobile = {
        "halfcheetah": [(5, 0.5), (5, 0.5), (5, 1.0), (5, 0.1), (5, 1.0)],
        "hopper": [(5, 5.0), (5, 1.5), (5, 1.5), (5, 0.1), (5, 1.5)],
        "walker2d": [(5, 2.0), (5, 0.5), (1, 1.5), (1, 0.5), (1, 1.5)],
    }
    for env, values in mobile.items():
        for q, (h, lam) in zip(LEVELS, values):
            config = read("mobile", f"{env}-{q}-v2")
            assert (config["rollout_length"], config["penalty_coef"], config["q_target_min"]) == (h, lam, 0.0), (env, q)
            assert config.get("autotune_alpha", True) == (env != "hopper" or q not in ("medium", "medium-replay"))
    # COMBO's (h, β): OfflineRL-Kit's run_example/run_combo.py on the medium sets; random: the medium-replay value,
    # expert: the medium-expert value (both marked untuned in their files)
    combo = {
        "halfcheetah": [(5, 0.5), (5, 0.5), (5, 5.0), (5, 0.5), (5, 5.0)],
        "hopper": [(5, 0.5), (5, 5.0), (5, 5.0), (5, 0.5), (5, 5.0)],
        "walker2d": [(1, 0.5), (1, 5.0), (1, 5.0), (1, 0.5), (1, 5.0)],
    }
    for env, values in combo.items():
        for q, (h, beta) in zip(LEVELS, values):
            config = read("combo", f"{env}-{q}-v2")
            assert (config["rollout_length"], config["cql_weight"], config["real_ratio"]) == (h, beta, 0.5), (env, q)
            assert ("untuned" in open(os.path.join(configs, "combo", f"{env}-{q}-v2.yaml")).read()) == (
                q in ("random", "expert")
            )
    # RAMBO's (h, λ): the authors' examples/config/rambo/mujoco/ (marc-rigter/rambo); expert: their medium-expert value
    rambo = {
        "halfcheetah": [(5, 0.0), (5, 3e-4), (5, 3e-4), (5, 3e-4), (5, 3e-4)],
        "hopper": [(2, 3e-4), (5, 3e-4), (5, 3e-4), (2, 3e-4), (5, 3e-4)],
        "walker2d": [(5, 0.0), (5, 0.0), (2, 3e-4), (5, 0.0), (2, 3e-4)],
    }
    for env, values in rambo.items():
        for q, (h, lam) in zip(LEVELS, values):
            config = read("rambo", f"{env}-{q}-v2")
            assert (config["rollout_length"], config["adv_weight"], config["real_ratio"]) == (h, lam, 0.5), (env, q)
            assert ("untuned" in open(os.path.join(configs, "rambo", f"{env}-{q}-v2.yaml")).read()) == (q == "expert")
    # every file says where its values come from
    for path in glob.glob(os.path.join(configs, "*", "**", "*.yaml"), recursive=True):
        text = open(path).read()
        assert "Source" in text or "as the authors" in text, path


LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")


def test_cpu_configs_follow_the_one_rule():
    """benchmarks/cpu/run.sh's rule for every model-free script: its defaults, with only the budget changed (phases
    counted in updates scaled like num_updates) and every hidden layer 64 wide; UWAC's 10 dropout passes the one
    exception, named in its files."""
    run = load_script(RUN)
    budget = {"dataset", "num_updates", "eval_every", "eval_episodes", "checkpoint_every"}
    widths = {"hidden_dim", "second_hidden_dim", "vae_hidden_dim"}
    phases = {"warmup_updates"}
    # the one named exception, a budget too: UWAC's Monte Carlo dropout passes (100 -> 10), said in its files
    exceptions = {"uwac": {"dropout_samples": 10}}
    root = os.path.join(ROOT, "benchmarks", "cpu", "configs")
    # outside the rule: λ-TD3+BC (LION's baseline) runs at its authors' settings, which fit a CPU, and is evaluated by
    # LION's λ sweep (benchmarks/cpu/lion.sh); BRED is measured by its fine-tuning runs; BOReL (meta-RL, meta_batch)
    # learns from many tasks' trials, not the Pendulum data, at the reduced settings its files name
    outside = {"dynamics_members", "lambda_beta", "meta_batch"}
    model_free = [a for a in run.offline_algorithms() if not outside & set(run.script_fields(a)) and a != "bred"]
    assert len(model_free) == 13, model_free
    for algo in model_free:
        defaults = load_script(algo).Args()
        for path in glob.glob(os.path.join(root, algo, "**", "*.yaml"), recursive=True):
            config = yaml.safe_load(open(path))
            if os.path.basename(path).startswith("hopper-"):
                continue  # the Hopper table's rule, from the D4RL configs: the test below
            allowed = budget | widths | phases | set(exceptions.get(algo, {}))
            assert set(config) <= allowed, f"{path}: {sorted(set(config) - allowed)}"
            for field, value in exceptions.get(algo, {}).items():
                assert config[field] == value and "exception" in open(path).read(), (path, field)
            assert (config["num_updates"], config["eval_every"], config["eval_episodes"]) == (10000, 1000, 10), path
            for field in widths & set(vars(defaults)):
                assert config.get(field) == 64, (path, field)
            for field in phases & set(vars(defaults)):
                assert config[field] == getattr(defaults, field) * 10000 // defaults.num_updates, (path, field)


def test_hopper_configs_are_the_d4rl_ones_by_the_one_rule():
    """benchmarks/cpu/configs/<algo>/shipped/hopper-*.yaml (issue 20's Hopper table): every field of the script's D4RL
    config for that dataset kept, except the budget (100,000 updates, 10 episodes every 10,000), the widths (64), the
    phases counted in updates (scaled by 100,000 / 1M) and two named exceptions, each said in its files: UWAC's 10
    dropout passes and CRR's width kept at its reference's 256; and the files are what
    benchmarks/cpu/hopper_configs.py writes."""
    algos = "bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac".split()
    changed = {"dataset", "num_updates", "eval_every", "eval_episodes", "checkpoint_every", "warmup_updates"}
    changed |= {"hidden_dim", "second_hidden_dim", "vae_hidden_dim"}
    for algo in algos:
        for dataset in ("hopper-medium-replay", "hopper-medium"):
            path = os.path.join(ROOT, "benchmarks", "cpu", "configs", algo, "shipped", dataset + ".yaml")
            config = yaml.safe_load(open(path))
            d4rl = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "configs", algo, dataset + "-v2.yaml")))
            exceptions = {"dropout_samples": 10} if algo == "uwac" else {}
            assert set(config) == set(d4rl) | {"checkpoint_every"}, path
            for field in set(d4rl) - changed - set(exceptions):
                assert config[field] == d4rl[field], (path, field)
            assert config["dataset"] == "shipped/" + dataset and config["num_updates"] == 100_000, path
            assert (config["eval_every"], config["eval_episodes"]) == (10_000, 10), path
            width = d4rl["hidden_dim"] if algo == "crr" else 64
            assert all(config[w] == width for w in ("hidden_dim", "second_hidden_dim", "vae_hidden_dim") if w in d4rl)
            if algo in ("crr", "uwac"):
                assert "Named exception" in open(path).read(), path
            if "warmup_updates" in d4rl:
                assert config["warmup_updates"] == d4rl["warmup_updates"] // 10, path
            assert all(config[k] == v for k, v in exceptions.items()), path
    done = subprocess.run(
        [sys.executable, "benchmarks/cpu/hopper_configs.py", "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_speed_table(tmp_path):
    """benchmarks/speed.py times the scripts as subprocesses and writes the table, with the matmul-only
    bound and the reference column where a reference exists. (The model-based phases take ~40 s and
    are left to the benchmark.)"""
    out = tmp_path / "speed.md"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "speed.py"),
            "--algos",
            "bc",
            "td3_bc",
            "--updates",
            "30",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--no-phases",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.read_text().splitlines()
        if line.startswith("| bc ") or line.startswith("| td3_bc ")
    }
    assert set(rows) == {"bc", "td3_bc"}
    for cells in rows.values():
        assert float(cells[0]) > 0 and float(cells[1]) > 0 and cells[3].endswith("%")
        # the matmul-only bound is an upper limit: a real update (with everything else) is slower
        assert float(cells[4]) > 0.8 * float(cells[0]), cells
    assert rows["td3_bc"][6] == "250" and rows["td3_bc"][7].endswith("x") and rows["bc"][6] == "—"
    speed = load_script(os.path.join(ROOT, "benchmarks", "speed.py"))
    # one 2x256 MLP on hopper shapes, by hand: 256 rows x (11*256 + 256*256 + 256*3) multiply-adds
    assert speed.mlp_macs([11, 256, 256, 3], 256) == 256 * (11 * 256 + 256 * 256 + 256 * 3)
    # AWR is timed over whole iterations (200 value + 1000 policy steps and V over the data), the rest as asked
    assert [speed.timed_updates("awr", n) for n in (1, 1200, 1201)] == [1200, 1200, 2400]
    assert speed.timed_updates("bc", 30) == 30


@pytest.mark.parametrize(
    "script, algos, cells",
    [
        ("benchmarks/cpu/run.sh", None, 114),
        ("benchmarks/cpu/run.sh", "bc td3_bc", 12),
        ("benchmarks/d4rl.sh", "bc td3_bc", 120),
        ("benchmarks/cpu/hopper_model_free.sh", None, 78),
        ("benchmarks/cpu/hopper_model_free.sh", "td3_bc", 6),
    ],
)
def test_one_command_benchmarks_list_their_grid(tmp_path, script, algos, cells):
    """The one-command benchmarks (CPU tables, full D4RL tables) expand to the grid they promise:
    CPU: 19 algorithms x 2 shipped datasets x 3 seeds, or the ALGOS subset; the Hopper table: 13 x 2 x 3; D4RL
    (bc and td3_bc here): 15 datasets x 4 seeds x 2 algorithms with every cell's per-dataset config found."""
    env = {k: v for k, v in ENV.items() if k != "ALGOS"} | {
        "PYTHON": sys.executable,
        "RUNS_DIR": str(tmp_path / "runs"),
    }
    env |= {"ALGOS": algos} if algos else {}
    done = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    # every cell new, except the Hopper table's, which is run in parts and keeps its finished runs
    status = ": " if "hopper" in script else ": new"
    planned = [
        line for line in done.stdout.splitlines() if line.startswith("# ") and " seed " in line and status in line
    ]
    assert len(planned) == cells, done.stdout[-2000:]
    assert all("config: benchmarks/" in line or ": finished" in line for line in planned)
    if "hopper" in script:  # the committed runs are put back, so their cells count as finished
        folder = os.path.join(ROOT, "benchmarks", "results", "cpu", "hopper_model_free", "finished_runs")
        kept = glob.glob(os.path.join(folder, "*__*"))
        kept = [k for k in kept if algos is None or os.path.basename(k).split("__")[0] in algos.split()]
        assert kept and sum(": finished" in line for line in planned) == len(kept), done.stdout[-2000:]


def test_hopper_model_based_runner_keeps_its_finished_runs(tmp_path):
    """benchmarks/cpu/hopper_model_based.sh at a tiny budget: the finished run's results.json and config.yaml are
    kept in OUT_DIR/finished_runs/ and reported; a later call with an empty runs folder (a new session) puts them
    back and runs nothing again."""
    out = tmp_path / "out"
    tiny = "--dynamics-max-epochs 1 --dynamics-hidden-dim 8 --rollout-batch-size 50 --eval-every 20 --eval-episodes 1"
    env = ENV | {"PYTHON": sys.executable, "OUT_DIR": str(out), "ALGOS": "mbpo", "DATASETS": "hopper-medium-replay"}
    env |= {"NUM_UPDATES": "20", "EXTRA_ARGS": tiny + " --checkpoint-every 20 --batch-size 8"}
    for call in ("first", "second"):
        runs = tmp_path / f"runs-{call}"
        env |= {"RUNS_DIR": str(runs), "DYNAMICS_DIR": str(runs / "dynamics")}
        done = subprocess.run(
            ["bash", "benchmarks/cpu/hopper_model_based.sh"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        kept = list((out / "finished_runs").glob("mbpo__shipped-hopper-medium-replay__0__*"))
        assert len(kept) == 1 and {p.name for p in kept[0].iterdir()} == {"results.json", "config.yaml"}
        assert "| shipped/hopper-medium-replay |" in (out / "report.md").read_text()
    assert not list((tmp_path / "runs-second" / "dynamics").glob("*.pt"))  # nothing trained the second time
    assert len((out / "durations.txt").read_text().splitlines()) == 1


def test_hopper_model_free_runner_leaves_the_report_alone_when_nothing_new_finished(tmp_path):
    """benchmarks/cpu/hopper_model_free.sh at a tiny budget: the first call keeps its finished run and writes the
    report and MACHINE.md; a call that finishes nothing new (here: every cell already kept, then a cell that fails, as
    an interrupted cell does) leaves both files as they were and passes the failure on in its exit status."""
    out = tmp_path / "out"
    env = ENV | {"PYTHON": sys.executable, "OUT_DIR": str(out), "ALGOS": "bc", "SEEDS": "0"}
    env |= {"DATASETS": "shipped/hopper-medium-replay"}
    tiny = ["--set", "num_updates=20", "eval_every=10", "eval_episodes=1", "batch_size=8"]

    def call(runs, *extra):
        command = ["bash", "benchmarks/cpu/hopper_model_free.sh", *tiny, *extra]
        env_call = env | {"RUNS_DIR": str(tmp_path / runs)}
        return subprocess.run(command, capture_output=True, text=True, env=env_call, timeout=300, cwd=ROOT)

    first = call("runs-first")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    kept = list((out / "finished_runs").glob("bc__shipped-hopper-medium-replay__0__*"))
    assert len(kept) == 1 and "| shipped/hopper-medium-replay |" in (out / "report.md").read_text()
    assert "bc" in (out / "MACHINE.md").read_text()
    for name in ("report.md", "MACHINE.md"):
        (out / name).write_text(f"the committed {name}\n")
    again = call("runs-second")  # a new session: the kept run is put back, nothing runs
    assert again.returncode == 0 and "no run finished in this call" in again.stdout, again.stdout[-2000:]
    env["SEEDS"] = "1"
    failed = call("runs-third", "bc.batch_size=-1")  # the new cell stops at once with its one-line error
    assert failed.returncode != 0 and "no run finished in this call" in failed.stdout, failed.stdout[-2000:]
    for name in ("report.md", "MACHINE.md"):
        assert (out / name).read_text() == f"the committed {name}\n"
    assert len(list((out / "finished_runs").iterdir())) == 1


def test_dynamics_time_reports_when_each_target_was_reached_and_reuses_the_cache(tmp_path):
    """benchmarks/dynamics_time.py: one row per call with epochs, minutes and the first epoch at each target;
    the ensemble it trains is the cache file the model-based scripts read, so a second call trains nothing."""
    out, cache = tmp_path / "time.md", tmp_path / "dynamics"
    command = [sys.executable, "benchmarks/dynamics_time.py", "--dataset", "shipped/pendulum-medium-replay"]
    command += ["--max-epochs", "4", "--cache-dir", str(cache), "--out", str(out), "--targets", "1e9", "1e-12"]
    first = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "dynamics: trained 4 epochs" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert second.returncode == 0 and "dynamics: reusing" in second.stdout
    rows = [line for line in out.read_text().splitlines() if line.startswith("| shipped/")]
    assert len(rows) == 2 and rows[0].split("|")[5].strip() == "4"  # epochs
    assert rows[0].split("|")[-3].strip() == "1 ep / 0.0 min"  # a target every epoch meets: the first
    assert rows[0].split("|")[-2].strip() == "not reached"
    assert len(list(cache.glob("*.pt"))) == 1


def test_bremen_report_tables_and_curves(tmp_path):
    """benchmarks/bremen_report.py on tiny real runs: an offline BREMEN run with bc.py beside it, and a deployment
    run; each row comes from its results.json and both plots are written."""
    from scripts import tiny_args

    runs = tmp_path / "runs"
    dataset = os.path.join(ROOT, "datasets", "shipped", "pendulum-eps1.hdf5")
    for name, extra in (("bremen", []), ("bremen", ["--mode", "deployment"]), ("bc", [])):
        command = [sys.executable, os.path.join(ROOT, "algorithms", name + ".py")]
        command += tiny_args(name, dataset=dataset, runs_dir=str(runs)) + extra
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "benchmarks/bremen_report.py", str(runs), "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = {
        (r["algo"], r.get("mode")): r for r in map(json.load, map(open, glob.glob(str(runs / "*" / "results.json"))))
    }
    report = (out / "report.md").read_text()
    offline, deployment, bc = results["bremen", "offline"], results["bremen", "deployment"], results["bc", None]
    row = next(line for line in report.splitlines() if line.startswith(f"| {offline['dataset']} | 0 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2:7] == [
        f"{offline['behaviour_normalized_score']:.1f}",
        f"{offline['bc_normalized_score']:.1f}",
        f"{bc['last_normalized_score']:.1f}",
        f"{offline['last_normalized_score']:.1f}",
        f"{offline['best_normalized_score']:.1f}",
    ]
    rows = [line for line in report.splitlines() if line.startswith("| 0 | ")]  # the deployment table
    assert len(rows) == len(deployment["deployments"]) >= 2
    for line, record in zip(rows, deployment["deployments"]):
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[2:4] == [str(record["real_steps"]), f"{record['data_return']:.1f}"]
    assert (out / "offline.png").stat().st_size > 10_000 and (out / "deployment.png").stat().st_size > 10_000


def test_finetuning_grid_and_its_report(tmp_path):
    """A cell with --set online_steps is finished only after its online phase; the report's fine-tuning table gives
    the score at the switch, after the online steps, the dip and the training episodes' score from results.json."""
    pytest.importorskip("rliable")
    budget = [*TINY, "online_steps=200", "hidden_dim=32", "num_critics=2"]
    done = run_grid(tmp_path, algos=("sac_n",), seeds=(0,), budget=budget)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert evaluations(run_dir)[-1]["step"] == 230
    again = run_grid(tmp_path, "--dry-run", algos=("sac_n",), seeds=(0,), budget=budget)
    assert again.returncode == 0 and "resume" not in again.stdout and "new" not in again.stdout, again.stdout
    report = load_script(os.path.join(ROOT, "benchmarks", "report.py"))
    report.main([str(tmp_path), "--out", str(tmp_path / "report"), "--reps", "50", "--profile-reps", "20"])
    online = json.load(open(os.path.join(run_dir, "results.json")))["online"]
    row = (
        f"| {DATASET} | sac_n | 1 | 200 | {online['offline_score']:.1f} | {online['online_score']:.1f} | "
        f"{online['dip']:.1f} | {online['train_score']:.1f} |"
    )
    assert row in (tmp_path / "report" / "report.md").read_text()


def test_bcq_selection_scores_a_checkpoint_five_ways(tmp_path):
    """benchmarks/bcq_selection.py (the diagnosis of BCQ's fall on medium-replay in the README) on a tiny real
    run: it rebuilds the networks from config.yaml, loads the checkpoint and scores every way of acting."""
    from scripts import tiny_args

    runs = tmp_path / "runs"
    command = [sys.executable, os.path.join(ROOT, "algorithms", "bcq.py")]
    command += tiny_args("bcq", dataset="shipped/pendulum-medium-replay", runs_dir=str(runs))
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs.glob("bcq__*")
    step = json.loads((run / "results.json").read_text())["evaluations"][-1]["step"]
    done = subprocess.run(
        [sys.executable, "benchmarks/bcq_selection.py", str(run), "--episodes", "2"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{run.name} step {step}:"), line
    scores = ast.literal_eval(line.split(":", 1)[1].strip())
    assert set(scores) == {"n10", "n1", "n10_unperturbed", "vae_mean", "mean_perturbed"}
    assert all(np.isfinite(v) for v in scores.values())


def test_best_of_evaluations_separates_a_flat_plateau_from_a_fall(tmp_path, capsys):
    """benchmarks/best_of_evaluations.py (the README's reading of the Hopper table's best column): a run whose
    evaluations alternate around a plateau has early == late, a run that falls has late < early, and the
    expected maximum of normals is the textbook value."""
    best = load_script(os.path.join(ROOT, "benchmarks", "best_of_evaluations.py"))
    assert best.expected_max_of_normals(7) == pytest.approx(1.352, abs=0.01)
    assert best.expected_max_of_normals(1) == pytest.approx(0.0, abs=0.01)
    flat = [10.0, 20.0, 40.0, 30.0, 50.0, 30.0, 50.0, 30.0, 50.0, 30.0]  # 40k on: 30, 50, 30, 50, 30, 50, 30
    falls = [10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 20.0, 20.0, 20.0, 20.0]
    for name, scores in (("flat", flat), ("falls", falls)):
        for seed in (0, 1):
            run = tmp_path / f"{name}__shipped-x__{seed}"
            run.mkdir()
            evaluations = [{"step": 10_000 * (i + 1), "normalized_score": s} for i, s in enumerate(scores)]
            results = {"algo": name, "dataset": "shipped/x", "evaluations": evaluations}
            (run / "results.json").write_text(json.dumps(results))
    cells = best.runs_by_cell(str(tmp_path))
    row = best.summary(cells[("flat", "shipped/x")], 40_000)
    assert row["runs"] == 2 and row["plateau"] == pytest.approx(38.571, abs=1e-3)
    assert row["early"] == pytest.approx(36.667, abs=1e-3) and row["late"] == pytest.approx(40.0)
    assert row["best"] == 50.0 and row["last 3"] == pytest.approx(110 / 3)
    assert row["flat best"] == pytest.approx(38.571 + 1.352 * np.std([30, 50, 30, 50, 30, 50, 30], ddof=1), abs=0.1)
    row = best.summary(cells[("falls", "shipped/x")], 40_000)
    assert row["early"] == 60.0 and row["late"] == 20.0
    assert row["±"] == pytest.approx(np.std([60, 60, 60, 20, 20, 20, 20], ddof=1) * (1 / 6 + 1 / 8) ** 0.5)
    best.main([str(tmp_path)])
    assert "| shipped/x | falls | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no results.json"):
        best.main([str(tmp_path / "missing")])


def test_bear_selection_scores_checkpoints_four_ways(tmp_path):
    """benchmarks/bear_selection.py (the README's reading of BEAR's hopper-medium curve) on a tiny real run, given
    as a run directory and as a checkpoint file with --config: every way of acting is scored, the same way twice."""
    from scripts import tiny_args

    runs = tmp_path / "runs"
    command = [sys.executable, os.path.join(ROOT, "algorithms", "bear.py")]
    command += tiny_args("bear", dataset="shipped/pendulum-medium-replay", runs_dir=str(runs))
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs.glob("bear__*")
    step = json.loads((run / "results.json").read_text())["evaluations"][-1]["step"]
    copy = tmp_path / "step.pt"
    copy.write_bytes((run / "checkpoint.pt").read_bytes())
    command = [sys.executable, "benchmarks/bear_selection.py", str(run), str(copy), "--episodes", "2"]
    done = subprocess.run(
        command + ["--config", str(run / "config.yaml")], capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()[-2:]
    assert lines[0].startswith(f"{run.name} step {step}:") and lines[1].startswith(f"step.pt step {step}:"), lines
    rows = [ast.literal_eval(line.split(":", 1)[1].strip()) for line in lines]
    assert rows[0] == rows[1]
    assert set(rows[0]) == {"n100_q1", "n10_q1", "n1", "mean", "q1_gain", "q1_data"}
    assert all(np.isfinite(float(v.split(" ± ")[0])) for k, v in rows[0].items() if k in ("n1", "mean"))
    assert rows[0]["q1_gain"] >= 0
    done = subprocess.run(command[:2] + [str(copy)], capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode != 0 and "config.yaml not found" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("algo", ["cql", "bear", "awr", "mopo"])
def test_discounted_returns_of_a_checkpoint(tmp_path, algo):
    """benchmarks/discounted_returns.py (the README's reading of CQL's seed 1 and BEAR's seed 0 on hopper-medium): the
    discounted sum is Σ γ^t r_t, and on a tiny real run of each kind of script it takes (MOPO for the model-based
    SAC learners) every field is there; for CQL at
    γ = 1, G0 is the return itself; BEAR's sampled choice gives the same row twice (torch seeded per checkpoint); a
    folder whose name does not say the script is refused with one line."""
    from scripts import tiny_args

    returns = load_script(os.path.join(ROOT, "benchmarks", "discounted_returns.py"))
    assert returns.discounted_from_start([1.0, 2.0, 4.0], 0.5) == pytest.approx(1.0 + 1.0 + 1.0)
    assert returns.discounted_from_start([3.0], 0.99) == 3.0
    runs = tmp_path / "runs"
    command = [sys.executable, os.path.join(ROOT, "algorithms", algo + ".py")]
    command += ["--gamma", "1.0"] if algo == "cql" else []
    command += tiny_args(algo, dataset="shipped/pendulum-medium-replay", runs_dir=str(runs))
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs.glob(f"{algo}__*")
    command = [sys.executable, "benchmarks/discounted_returns.py", str(run), str(run), "--episodes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [ast.literal_eval(line.split(":", 1)[1].strip()) for line in done.stdout.strip().splitlines()[-2:]]
    row = rows[0]
    assert rows[1] == row and set(row) == {"score", "length", "reward / step", "G0", "critic0"}
    assert row["length"] == 200  # Pendulum never terminates: every episode runs to its time limit
    if algo == "cql":
        assert row["G0"] == pytest.approx(row["reward / step"] * 200, rel=0.01)  # γ = 1: G0 is the return
    else:  # Pendulum's rewards are all ≤ 0, so the discounted sum lies between the return and 0
        assert row["reward / step"] * 200 <= row["G0"] <= 0
    moved = tmp_path / "elsewhere"  # a folder whose name does not say the script: --algo must
    shutil.copytree(run, moved)
    command = [sys.executable, "benchmarks/discounted_returns.py", str(moved)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode != 0 and "add --algo" in done.stderr and "Traceback" not in done.stderr
