"""Online fine-tuning of the model-based SAC learners (--online-steps, Lu et al. 2022's model-based fine-tuning): the
ensemble's refit on the real buffer (refit_dynamics, one function in the shared dynamics block, so testing mopo.py's
copy covers all six), a resume across the switch and inside the online phase, and --from-run. The smoke run of every
script with --online-steps is tests/test_online.py's test_online_smoke."""

import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHIPPED, load_script
from scripts import TINY, tiny_args

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
mopo = load_script("mopo")


def tiny_ensemble(data, cache_dir):
    settings = {
        "members": 3,
        "elites": 2,
        "hidden_dim": 32,
        "hidden_layers": 2,
        "batch_size": 64,
        "lr": 1e-3,
        "holdout_size": 200,
        "patience": 5,
        "max_epochs": 3,
    }
    return mopo.load_or_train_dynamics(data, settings, 0, str(cache_dir), None, torch.device("cpu"))


def rows_of(data, lo, hi, reward_shift=0.0):
    return (
        data.observations[lo:hi],
        data.actions[lo:hi],
        data.rewards[lo:hi] + reward_shift,
        data.next_observations[lo:hi],
        data.terminals[lo:hi],
    )


def holdout_error(model, rows):
    obs, actions, rewards, next_obs, _ = rows
    with torch.no_grad():
        mean, _ = model(obs, actions)
    return ((mean - torch.cat([next_obs - obs, rewards[:, None]], -1)) ** 2).mean().item()


@pytest.fixture
def one_thread():
    """Small matrices: one torch thread (measured: 2.7 s, against 43 s with torch's default threads on the loaded
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_refit_learns_new_data_within_its_batch_cap_and_leaves_the_cache_file(tmp_path, one_thread):
    """Warm-started from an ensemble fitted offline (3 epochs on 5,000 transitions), a refit on data whose rewards moved
    by +2 lowers the error on rows of that data it did not see (to about half); it makes at most max_batches gradient
    batches, never ends worse on its holdout than it started, re-chooses the elites, and does not write to the cached
    ensemble's file."""
    torch.manual_seed(0)
    data = mopo.load_dataset(os.path.join(SHIPPED, "pendulum-medium.hdf5"), torch.device("cpu"))
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "next_observed"):  # fast
        setattr(data, key, getattr(data, key)[:5000])
    model = tiny_ensemble(data, tmp_path)
    (cache_file,) = glob.glob(str(tmp_path / "*.pt"))
    cached = (hashlib.sha1(open(cache_file, "rb").read()).hexdigest(), os.stat(cache_file).st_mtime_ns)
    new, unseen = rows_of(data, 0, 3000, reward_shift=2.0), rows_of(data, 3000, 4000, reward_shift=2.0)
    before = holdout_error(model, unseen)
    calls, loss = [], model.loss
    model.loss = lambda *a: calls.append(1) or loss(*a)
    settings = {"batch_size": 64, "lr": 1e-3, "holdout_size": 300, "patience": 5}
    fit = mopo.refit_dynamics(model, new, settings, max_batches=400, check_every=50)
    assert fit["batches"] == len(calls) <= 400
    assert (fit["holdout_mse"] <= fit["holdout_before"]).all()
    assert holdout_error(model, unseen) < 0.6 * before, (before, holdout_error(model, unseen))  # measured: 0.45-0.52x
    assert sorted(fit["elites"].tolist()) == sorted(torch.argsort(fit["holdout_mse"])[:2].tolist())
    assert model.reward_range[1] >= new[2].max()  # imagined rewards may reach the new data's
    few = mopo.refit_dynamics(model, new, settings, max_batches=7, check_every=3)
    assert few["batches"] == 7
    # the dataset block's stand-in rows (terminal, s' = s, no real successor) are left out of the fit
    obs, actions, rewards, next_obs, terminals = (x.clone() for x in new)
    terminals[:100], next_obs[:100], rewards[:100] = 1.0, obs[:100], 1e3
    mopo.refit_dynamics(model, (obs, actions, rewards, next_obs, terminals), settings, max_batches=7)
    assert model.reward_range[1] < 1e3
    assert (hashlib.sha1(open(cache_file, "rb").read()).hexdigest(), os.stat(cache_file).st_mtime_ns) == cached


def run(name, *argv):
    script = os.path.join(ROOT, "algorithms", name + ".py")
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_mopo_resumed_across_the_switch_and_from_run(tmp_path):
    """MOPO cut inside its online phase (after one refit of the ensemble, before the next) and resumed ends with the
    evaluations, training episodes, agent and refitted ensemble of a run never cut; --from-run starts the online
    phase from an offline run's agent and keeps its offline curve."""
    online = ["--online-model-every", "60", "--online-model-batches", "20"]
    dyn = ["--dynamics-cache-dir", str(tmp_path / "dynamics")]  # one ensemble for the four runs
    tiny = lambda d: [*tiny_args("mopo", runs_dir=str(tmp_path / d)), *dyn, *online]
    run("mopo", *tiny("whole"), "--online-steps", "150")
    run("mopo", *tiny("cut"), "--online-steps", "70")
    (cut_dir,) = glob.glob(str(tmp_path / "cut" / "mopo__*"))
    run("mopo", "--resume", cut_dir, "--online-steps", "150")
    (whole_dir,) = glob.glob(str(tmp_path / "whole" / "mopo__*"))
    whole, resumed = (json.load(open(os.path.join(d, "results.json"))) for d in (whole_dir, cut_dir))
    cut_at = TINY["num_updates"] + 70
    assert [e for e in resumed["evaluations"] if e["step"] != cut_at] == whole["evaluations"]
    assert resumed["online"]["train_episodes"] == whole["online"]["train_episodes"]
    final = [torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (whole_dir, cut_dir)]
    for name, value in final[0]["objects"]["agent"].items():
        assert torch.equal(value, final[1]["objects"]["agent"][name]), name
    for name, value in final[0]["extra"]["dynamics"].items():
        assert torch.equal(value, final[1]["extra"]["dynamics"][name]), name
    cached = torch.load(glob.glob(str(tmp_path / "dynamics" / "*.pt"))[0], weights_only=False)["model"]
    assert not torch.equal(cached["layers.0.weight"], final[0]["extra"]["dynamics"]["layers.0.weight"])

    run("mopo", *tiny("offline"))
    (offline_dir,) = glob.glob(str(tmp_path / "offline" / "mopo__*"))
    run("mopo", *tiny("from"), "--from-run", offline_dir, "--online-steps", "60")
    offline = json.load(open(os.path.join(offline_dir, "results.json")))
    (from_dir,) = glob.glob(str(tmp_path / "from" / "mopo__*"))
    started = json.load(open(os.path.join(from_dir, "results.json")))
    n = len(offline["evaluations"])
    assert started["evaluations"][:n] == [e | {"phase": "offline"} for e in offline["evaluations"]]
    assert started["online"]["offline_score"] == offline["last_normalized_score"]
    assert started["evaluations"][-1]["step"] == TINY["num_updates"] + 60
