"""What a CQL policy earns by the measure it is trained on (the discounted return) and by the one it is scored on.

The D4RL score is the undiscounted return of an episode of up to 1,000 steps; the critic and the actor maximise the
return discounted by γ (0.99: an effective horizon of about 100 steps). On Hopper the two can disagree: a policy
that hops fast and falls after 300 steps can be worth more, discounted, than one that hops slowly for 1,000. For
each checkpoint of algorithms/cql.py given (a run directory, whose checkpoint.pt is its last one, or a checkpoint
file with the run's config.yaml beside it or named by --config), the deterministic policy runs `--episodes`
episodes (evaluation seeds seed, seed + 1, ...) and this prints

  score           the mean normalised score ± its standard error
  length          the mean episode length (1,000 = never fell)
  reward / step   the mean reward per step
  G0              the discounted return from the first state, as received
  Q0              min(Q1, Q2) of the first state and the policy's action: what the critic thinks G0 is

(README, "Model-free on the shipped Hopper data": CQL's seed 1 on hopper-medium).

    python benchmarks/discounted_returns.py runs/cpu-hopper-mf/cql__shipped-hopper-medium__*[0-9]
    python benchmarks/discounted_returns.py ckpts/step_*.pt --config RUN_DIR/config.yaml
"""

import argparse
import importlib.util
import os

import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_cql():
    spec = importlib.util.spec_from_file_location("cql", os.path.join(ROOT, "algorithms", "cql.py"))
    cql = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cql)
    return cql


def discounted_from_start(rewards: list, gamma: float) -> float:
    """Σ_t γ^t r_t of one episode."""
    return float(np.sum(np.asarray(rewards) * gamma ** np.arange(len(rewards))))


def returns_of(cql, path: str, config: str, episodes: int, seed: int) -> tuple[int, dict]:
    """The checkpoint's step and the row of the module docstring."""
    with open(config) as f:
        cfg = yaml.safe_load(f)
    data = cql.load_dataset(cfg["dataset"], torch.device("cpu"))
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    env = data.make_env()
    actor = cql.Actor(obs_dim, act_dim, cfg["hidden_dim"], cfg["layers"], env.action_space.low, env.action_space.high)
    critic = cql.DoubleCritic(obs_dim, act_dim, cfg["hidden_dim"], cfg["layers"])
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    actor.load_state_dict(checkpoint["objects"]["actor"])
    critic.load_state_dict(checkpoint["objects"]["critic"])
    mean, std = checkpoint["extra"]["obs_mean"], checkpoint["extra"]["obs_std"]
    returns, lengths, g0, q0 = [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        rewards, done, cut = [], False, False
        while not (done or cut):
            with torch.no_grad():
                o = ((torch.as_tensor(obs, dtype=torch.float32) - mean) / std)[None]
                action = actor.deterministic(o)
                if not rewards:
                    q0.append(float(critic(o, action).min(0).values))
            obs, reward, done, cut, _ = env.step(action[0].numpy())
            rewards.append(float(reward))
        returns.append(sum(rewards))
        lengths.append(len(rewards))
        g0.append(discounted_from_start(rewards, cfg["gamma"]))
    env.close()
    scores = cql.normalized_score(np.asarray(returns), data.ref_min_score, data.ref_max_score)
    return checkpoint["step"], {
        "score": f"{float(np.mean(scores)):.1f} ± {float(np.std(scores)) / episodes**0.5:.1f}",
        "length": round(float(np.mean(lengths))),
        "reward / step": round(sum(returns) / sum(lengths), 2),
        "G0": round(float(np.mean(g0)), 1),
        "Q0": round(float(np.mean(q0)), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run directories of cql.py or checkpoint files")
    parser.add_argument("--config", help="config.yaml of the run the checkpoint files come from")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345, help="the first episode's evaluation seed")
    args = parser.parse_args(argv)
    cql = load_cql()
    torch.set_num_threads(1)
    for given in args.checkpoints:
        path = os.path.join(given, "checkpoint.pt") if os.path.isdir(given) else given
        config = args.config or os.path.join(os.path.dirname(path), "config.yaml")
        for needed in (path, config):
            if not os.path.isfile(needed):
                raise SystemExit(f"{needed} not found: give cql.py run directories, or checkpoints and --config")
        step, row = returns_of(cql, path, config, args.episodes, args.seed)
        print(os.path.basename(given.rstrip("/")), f"step {step}:", row, flush=True)


if __name__ == "__main__":
    main()
