"""Learning checks of the reference and model-based scripts on the shipped data.

Every threshold comes from our own runs (seed 0, one CPU thread: the same seed on the same
machine gives the same numbers), written in each test's docstring. The checks of the other
model-free scripts live beside their loss tests (tests/test_<algo>.py).
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, print_scores

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def train(algo: str, runs_dir, *argv: str, timeout: int = 900) -> dict:
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", algo + ".py"),
        "--seed",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--runs-dir",
        str(runs_dir),
        *argv,
    ]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = glob.glob(str(runs_dir / f"{algo}__*" / "results.json"))
    return json.load(open(path))


@pytest.mark.learning
def test_td3_bc_beats_bc_and_the_data(tmp_path):
    """TD3+BC and BC on shipped/hopper-medium-replay (behaviour data 11.1) for 7,500 updates.

    Our run (seed 0, current code), normalised score at 2.5k/5k/7.5k/10k updates: TD3+BC 16.3,
    13.6, 18.6, 13.7; BC 12.6, 13.9, 14.4, 14.2 (before fused Adam: TD3+BC 16.5, 13.6, 18.5, 13.6;
    BC 12.8, 14.0, 14.1, 7.5). The paper's 1M updates are far beyond a CI budget; this
    checks that the Q-learning term lifts the policy above both the data and plain cloning. The budget was 10,000
    until 2026-12-07: neither script's best came after 7,500 (neither has a schedule that follows the budget), so
    the check stops there, 30 s less of CI. At 7,500 (seed 0, 2026-12-07, 105 s on the busy machine): TD3+BC
    16.8, 13.6, 18.9; BC 13.5, 13.9, 14.2.
    """
    budget = ["--dataset", "shipped/hopper-medium-replay", "--num-updates", "7500", "--eval-every", "2500"]
    td3_bc = train("td3_bc", tmp_path, *budget)
    bc = train("bc", tmp_path, *budget)
    print_scores("td3_bc", td3_bc)
    print_scores("bc", bc)
    assert td3_bc["best_normalized_score"] > 16.0, td3_bc["evaluations"]
    assert td3_bc["best_normalized_score"] > bc["best_normalized_score"] + 2.0, (
        td3_bc["evaluations"],
        bc["evaluations"],
    )
    assert td3_bc["best_normalized_score"] > td3_bc["behaviour_normalized_score"] + 4.0


@pytest.fixture(scope="session")
def dynamics_cache(tmp_path_factory):
    """One folder for the whole session: the first model-based check trains the ensemble, the
    others reuse it (the cache key is the data, the dynamics settings and the seed)."""
    return str(tmp_path_factory.mktemp("dynamics"))


MODEL_BASED_BUDGET = [
    "--dataset",
    "shipped/pendulum-medium-replay",
    "--num-updates",
    "5000",
    "--eval-every",
    "1000",
    "--rollout-batch-size",
    "5000",
    "--dynamics-max-epochs",
    "50",
]


@pytest.mark.learning
def test_mopo_beats_the_data(tmp_path, dynamics_cache):
    """MOPO on shipped/pendulum-medium-replay (3,000 mostly random transitions, behaviour data 2.2).

    Our run (seed 0; the ensemble stopped after 23 epochs, 10 s), normalised score at
    1k/2k/3k/4k/5k updates: -22.5, -4.5, 11.6, 35.7, 33.0; with fused Adam and the weight decay in
    the optimiser -22.6, -3.3, 10.1, 38.3, 31.6; with the penalty over all members, the cosine actor
    learning rate (decayed to 0 over these 5k updates) and α capped at 1: -22.7, -6.9, 11.8, 31.0,
    29.2. Threshold 20 on the best.
    """
    results = train("mopo", tmp_path, *MODEL_BASED_BUDGET, "--dynamics-cache-dir", dynamics_cache)
    print_scores("mopo", results)
    assert results["best_normalized_score"] > 20.0, results["evaluations"]
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 15.0


@pytest.mark.learning
def test_mobile_beats_the_data(tmp_path, dynamics_cache):
    """MOBILE on shipped/pendulum-medium-replay (behaviour data 2.2), the same ensemble as MOPO, its
    defaults (λ 1, N 10, deterministic backup, target bounded below at min(0, r_min) / (1 - γ) = -1603) but
    every hidden layer 64 wide, as in its CPU configs, for 7,000 updates.

    Our run (seed 0, one thread, Intel Xeon, 2026-12-07; 227 s beside a 2-thread ensemble fit on 2 cores),
    normalised score at 1k..7k updates: -19.2, -8.6, -6.5, 17.1, 14.4, 23.3, 23.8. Threshold 15 on the best.
    At 10,000 updates (the budget until 2026-12-07, 366 s contended; 193 s of the last clean CI run, its slowest
    test): -19.3, -8.6, -5.2, 17.1, 15.1, 24.1, 24.7, 14.9, 22.9, 24.1, no higher after 7k, so the check was cut
    to 7k to keep CI under 30 minutes (the actor's cosine schedule follows the budget, hence the small
    differences). Before that it ran the default 256 wide for 5,000 updates (seed 0: -19.6, -1.9, 11.3, 23.3,
    22.0; seed 1 would not have passed, peaking at 5.8), 403 s of a clean CI run: the penalty passes 10 x 5 next
    states per model transition through the actor and both critics, about 8 times the cost of the SAC update.
    """
    argv = [*MODEL_BASED_BUDGET, "--hidden-dim", "64"]
    argv[argv.index("--num-updates") + 1] = "7000"
    results = train("mobile", tmp_path, *argv, "--dynamics-cache-dir", dynamics_cache, timeout=1500)
    print_scores("mobile", results)
    assert results["best_normalized_score"] > 15.0, results["evaluations"]
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 10.0


@pytest.mark.learning
def test_combo_beats_the_data(tmp_path, dynamics_cache):
    """COMBO on shipped/pendulum-medium-replay (behaviour data 2.2), the same ensemble as MOPO, its networks
    64 wide as in its CPU configs (3x256 critics over 31 actions a state run 2.9 updates/s on one thread).

    Our runs (one thread), normalised score at 1k/2k/3k/4k/5k updates: seed 0 (the ensemble stopped
    after 23 epochs, 10 s) -9.5, -5.8, 7.4, 27.9, 28.1; seed 1 (21 epochs) -14.8, -6.7, 6.5, 28.2, 30.0.
    At the default 3x256 (seed 0, 20 min at 4.1 updates/s): -17.9, 5.1, 19.2, 33.3, 34.5. Threshold 15 on
    the best: the 64-wide runs cross it only in their last 2k updates.
    """
    results = train(
        "combo", tmp_path, *MODEL_BASED_BUDGET, "--hidden-dim", "64", "--dynamics-cache-dir", dynamics_cache
    )
    print_scores("combo", results)
    assert results["best_normalized_score"] > 15.0, results["evaluations"]
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 10.0


@pytest.mark.learning
@pytest.mark.parametrize("mode", ["survival", "exploration-penalty", "exploration-partitioning"])
def test_offline_mbrl_modes_learn_their_objective(tmp_path, dynamics_cache, mode):
    """Mr-Pepe's modes in morel.py on shipped/pendulum-medium-replay, 3,000 updates, MOReL's threshold
    (the largest normalised disagreement on the data / 3: 0.185 here, 58 % of the data's own (s, a) inside).

    Each agent learns what its mode pays, measured where its deterministic policy goes in the real
    environment (the mean over the evaluations at 1k/2k/3k): survival (paid to stay where the model is sure)
    and exploration-penalty (paid the disagreement, but the imagined episode ends beyond the threshold, so
    staying inside is worth more) keep more of their steps in the known region than the data does;
    exploration-partitioning (paid 1 between the data's mean disagreement and the threshold, 0 beyond, and
    the task's negative rewards below) goes where the model is less sure than on the data.
    Our run (seed 0, data: 0.579 known, mean disagreement 0.191), known fraction / mean disagreement at
    1k/2k/3k: survival 0.80/0.163, 0.68/0.184, 0.88/0.162; exploration-penalty 0.75/0.170, 0.67/0.182,
    0.90/0.157; exploration-partitioning 0.43/0.239, 0.17/0.265, 0.19/0.251 (8 min for the three with the
    ensemble's training, on a machine busy with two other runs). Thresholds: 0.1 on the known fraction,
    0.02 on the disagreement, half or less of the margins seen.
    """
    results = train(
        "morel",
        tmp_path,
        *MODEL_BASED_BUDGET,
        "--num-updates",
        "3000",
        "--mode",
        mode,
        "--dynamics-cache-dir",
        dynamics_cache,
    )
    evaluations = results["evaluations"]
    known = np.mean([e["known_fraction"] for e in evaluations])
    disagreement = np.mean([e["disagreement"] for e in evaluations])
    print(
        mode,
        [(e["known_fraction"], e["disagreement"]) for e in evaluations],
        results["data_known_fraction"],
        results["data_disagreement"],
    )
    if mode == "exploration-partitioning":
        assert known < results["data_known_fraction"] - 0.1, evaluations
        assert disagreement > results["data_disagreement"] + 0.02, evaluations
    else:
        assert known > results["data_known_fraction"] + 0.1, evaluations


@pytest.mark.learning
def test_rambo_beats_the_data(tmp_path, dynamics_cache):
    """RAMBO on shipped/pendulum-medium-replay (behaviour data 2.2), the same ensemble as MOPO, its defaults (λ 3e-4,
    h 5, 1000 adversary steps after every 1000 updates) at 3,000 updates (two adversary turns) and BC scaled like
    5k updates (500 steps: the authors' 195k beside 2M updates, at 5k).

    Our runs (one thread, on a machine busy with other jobs), normalised score at each 1k updates: at this 3k
    budget seed 0 -18.7, 27.4, 18.5 (this test, 153 s with the ensemble's training) and seed 2 -24.3, 25.1, 38.8
    (214 s, its own ensemble); at 5k seed 0 -23.4, 29.0, 15.2, 0.2, -8.9 (481 s) and seed 1 -29.7, 30.5, 9.8,
    -2.0, 1.6 (732 s). (Seed 0's 5k run is not bit-identical to its 3k one over the first 3k, though no setting
    depends on the budget: not explained yet.) The score peaks after the first adversary turn and falls by 5k at
    this budget, hence 3k. Each adversary turn (1000 steps, 7 members forward and backward on 256 + 256 rows
    each) takes about a minute on one thread. Threshold 15 on the best.
    """
    budget = [a if a != "5000" else "3000" for a in MODEL_BASED_BUDGET]
    results = train("rambo", tmp_path, *budget, "--bc-updates", "500", "--dynamics-cache-dir", dynamics_cache)
    print_scores("rambo", results)
    assert results["best_normalized_score"] > 15.0, results["evaluations"]
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 10.0


@pytest.mark.learning
def test_morel_beats_the_data(tmp_path, dynamics_cache):
    """MOReL on shipped/pendulum-medium-replay (behaviour data 2.2), the same ensemble as MOPO.

    Our run (seed 0), normalised score at 1k/2k/3k/4k/5k updates: -4.0, 6.5, 5.5, 13.4, 12.0
    (USAD threshold 1.06, HALT reward -16.0); with fused Adam -11.8, 7.2, 5.6, 19.1, 7.3; with the
    next-state disagreement, HALT worth the lowest reward forever (-1603 here) and the SAC settings of
    mopo.py: -3.6, 13.7, -6.6, 0.1, -9.8. Threshold 8 on the best: MOReL learns more slowly and less
    steadily than MOPO here, as HALT ends many short rollouts of a policy still far from the data.
    """
    results = train("morel", tmp_path, *MODEL_BASED_BUDGET, "--dynamics-cache-dir", dynamics_cache)
    print_scores("morel", results)
    assert results["best_normalized_score"] > 8.0, results["evaluations"]
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 5.0
