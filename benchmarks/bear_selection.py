"""What BEAR's action selection does: checkpoints of algorithms/bear.py evaluated with four ways of choosing the action.

BEAR acts with the best of 100 actor samples by Q1. Each checkpoint given (a run directory, whose checkpoint.pt is
its last one, or a checkpoint file with the run's config.yaml in the same folder or named by --config) is evaluated
on the same episodes (one evaluation seed for every variant and checkpoint) with
  n100_q1   the script's rule: the best of 100 actor samples by Q1
  n10_q1    the best of 10 by Q1
  n1        one actor sample, no choice by Q1
  mean      tanh of the actor Gaussian's mean
and the mean normalised score ± its standard error is printed, beside how far the selection climbs Q1 above a
typical sample (`q1_gain`, the best of 100 minus their mean, on 2,000 of the data's states) and Q1 of the data's
own actions there (README, "Model-free on the shipped Hopper data": BEAR's rise and fall on hopper-medium).

    python benchmarks/bear_selection.py runs/cpu-hopper-mf/bear__shipped-hopper-medium__*[0-9]
    python benchmarks/bear_selection.py ckpts/step_*.pt --config RUN_DIR/config.yaml --episodes 30 --ways n100_q1 mean

For a series over training, keep a copy of a run's checkpoint.pt each time it is rewritten (every
`--checkpoint-every` updates); the scripts are deterministic on CPU at a fixed thread count, so a rerun with the same
config and seed reproduces the original run's evaluations exactly.
"""

import argparse
import importlib.util
import os

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS = ("n100_q1", "n10_q1", "n1", "mean")


def load_bear():
    spec = importlib.util.spec_from_file_location("bear", os.path.join(ROOT, "algorithms", "bear.py"))
    bear = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bear)
    return bear


def selection_scores(bear, path: str, config: str, ways: tuple, episodes: int, seed: int) -> tuple[int, dict]:
    """The checkpoint's step and, per way of acting, its mean normalised score and standard error (docstring)."""
    with open(config) as f:
        cfg = yaml.safe_load(f)
    data = bear.load_dataset(cfg["dataset"], torch.device("cpu"))
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    env = data.make_env()
    low, high = env.action_space.low, env.action_space.high
    env.close()
    actor = bear.Actor(obs_dim, act_dim, cfg["hidden_dim"], low, high)
    critic = bear.EnsembleCritic(obs_dim, act_dim, cfg["hidden_dim"], cfg["num_critics"])
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    actor.load_state_dict(checkpoint["objects"]["actor"])
    critic.load_state_dict(checkpoint["objects"]["critic"])
    mean, std = checkpoint["extra"]["obs_mean"], checkpoint["extra"]["obs_std"]

    def policy(n):
        @torch.no_grad()
        def act(obs):
            obs = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
            if n == 0:
                loc, _ = actor.net(obs).chunk(2, -1)
                return (torch.tanh(loc) * actor.action_scale + actor.action_bias).numpy()
            candidates, _ = actor(obs, n)
            return bear.best_of(candidates, critic.many(obs, candidates)[0]).numpy()

        return act

    samples = {"n100_q1": 100, "n10_q1": 10, "n1": 1, "mean": 0}
    row = {}
    for way in ways:
        torch.manual_seed(0)
        returns = bear.evaluate(data.make_env, policy(samples[way]), episodes, seed=seed)
        scores = bear.normalized_score(returns, data.ref_min_score, data.ref_max_score)
        row[way] = f"{float(scores.mean()):.1f} ± {float(scores.std()) / episodes**0.5:.1f}"
    with torch.no_grad():
        states = torch.randint(0, len(data.observations), (2000,), generator=torch.Generator().manual_seed(1))
        obs = (data.observations[states] - mean) / std
        candidates, _ = actor(obs, 100)
        q1 = critic.many(obs, candidates)[0]
        row["q1_gain"] = round(float((q1.max(1).values - q1.mean(1)).mean()), 2)
        row["q1_data"] = round(float(critic(obs, data.actions[states])[0].mean()), 1)
    return checkpoint["step"], row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run directories of bear.py or checkpoint files")
    parser.add_argument("--config", help="config.yaml of the run the checkpoint files come from")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345, help="the evaluation seed, the same for every variant")
    args = parser.parse_args(argv)
    bear = load_bear()
    torch.set_num_threads(1)
    for given in args.checkpoints:
        path = os.path.join(given, "checkpoint.pt") if os.path.isdir(given) else given
        config = args.config or os.path.join(os.path.dirname(path), "config.yaml")
        for needed in (path, config):
            if not os.path.isfile(needed):
                raise SystemExit(f"{needed} not found: give bear.py run directories, or checkpoints and --config")
        step, row = selection_scores(bear, path, config, tuple(args.ways), args.episodes, args.seed)
        print(os.path.basename(given.rstrip("/")), f"step {step}:", row, flush=True)


if __name__ == "__main__":
    main()
