"""Which scripts exist and the tiny command line that exercises each of them.

The tiny budget is built from the fields a script's Args has, so a new script in
algorithms/ is covered by the smoke, self-containment and resume tests without new code.
"""

import ast
import glob
import os

from conftest import ROOT, SHIPPED

SMOKE_DATASET = os.path.join(SHIPPED, "pendulum-medium-replay.hdf5")
# scripts that need another kind of data (BOReL: many tasks' trials) run on their own; their environments are this
# project's custom_envs, which a script copied alone needs beside it (CUSTOM_ENVS)
SMOKE_DATASETS = {"borel": os.path.join(SHIPPED, "borel-gridworld.hdf5")}
CUSTOM_ENVS = os.path.join(ROOT, "algorithms", "custom_envs")
# a tiny value for every budget-like field a script may have
TINY = {
    "num_updates": 40,
    "total_timesteps": 300,
    "learning_starts": 100,
    "eval_every": 20,
    "eval_episodes": 2,
    "checkpoint_every": 20,
    "log_every": 10,
    "batch_size": 32,
    "threads": 1,
    # small networks: these tests check the plumbing, the learning checks use real sizes
    "hidden_dim": 64,
    "num_critics": 3,
    "vae_hidden_dim": 64,  # bcq, bear, uwac: the behaviour VAE (750 wide by default)
    "dropout_samples": 10,  # uwac: Monte Carlo dropout passes
    "warmup_updates": 10,  # bear, uwac: the MMD-only warm-up ends inside every tiny run
    # model-based scripts: a couple of dynamics epochs, small rollout batches
    "dynamics_max_epochs": 2,
    "rollout_batch_size": 100,
    "rollout_every": 20,
    "adversary_steps": 10,  # rambo: its adversary's turn after every epoch (1000 steps by default)
    "bc_updates": 20,  # rambo: BC pretraining (50 passes over the data by default)
    # bremen: a few cloning steps, short imagined paths, small deployments
    "bc_steps": 20,
    "horizon": 5,
    "deploy_every": 20,
    "deployment_steps": 200,
    # bred: short online epochs, so that tests/test_online.py's online phase (--online-steps) updates
    "epoch_steps": 20,
    "first_epoch_multiplier": 2,
    # model-based online fine-tuning: refits of the ensemble inside test_online.py's 210 online steps
    "online_model_every": 100,
    "online_model_batches": 20,
}
# tiny values for one script only, where the field's name is shared with scripts that keep their own
TINY_PER_SCRIPT = {
    "bremen": {"dynamics_hidden_dim": 32},
    "bred": {"online_steps": 0},  # offline only here (its default is 250,000): test_online.py runs its online phase
    # borel: one VAE epoch, meta-batches of 4 tasks redrawn every 10 updates, trials of 2 tasks per evaluation
    "borel": {"vae_epochs": 1, "meta_batch": 4, "updates_per_iteration": 10},
}


def script_names() -> list[str]:
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "algorithms", "*.py")))


def args_fields(name: str) -> set[str]:
    """Field names of `class Args` in algorithms/<name>.py, read without importing it."""
    tree = ast.parse(open(os.path.join(ROOT, "algorithms", name + ".py")).read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError(f"{name}.py has no Args dataclass")


def smoke_dataset(name: str) -> str:
    """The dataset of a script's tiny runs."""
    return SMOKE_DATASETS.get(name, SMOKE_DATASET)


def tiny_args(name: str, dataset: str = "", runs_dir: str = "runs") -> list[str]:
    fields = args_fields(name)
    dataset = dataset or smoke_dataset(name)
    argv = ["--runs-dir", runs_dir, "--device", "cpu"]
    if "dataset" in fields:
        argv += ["--dataset", dataset]
    elif "env_id" in fields:
        argv += ["--env-id", "Pendulum-v1"]
    for field, value in (TINY | TINY_PER_SCRIPT.get(name, {})).items():
        if field in fields:
            argv += ["--" + field.replace("_", "-"), str(value)]
    return argv
