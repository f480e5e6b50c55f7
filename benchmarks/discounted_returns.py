"""What a policy earns by the measure it is trained on (the discounted return) and by the one it is scored on.

The D4RL score is the undiscounted return of an episode of up to 1,000 steps; the critic and the actor maximise the
return discounted by γ (0.99: an effective horizon of about 100 steps). On Hopper the two can disagree: a policy
that hops fast and falls after 300 steps can be worth more, discounted, than one that hops slowly for 1,000. For
each checkpoint given (a run directory, whose checkpoint.pt is its last one, or a checkpoint file with the run's
config.yaml beside it or named by --config) of algorithms/cql.py, bear.py, awr.py or the model-based SAC learners
mopo.py, morel.py and mbpo.py (the script is read from the run folder's name, <algo>__<dataset>__..., or given by
--algo), the policy the script evaluates runs `--episodes` episodes in the real environment (evaluation seeds seed,
seed + 1, ...) and this prints

  score           the mean normalised score ± its standard error
  length          the mean episode length (1,000 = never fell)
  reward / step   the mean reward per step
  G0              the discounted return from the first state, as received
  critic0         what the script's critic thinks G0 is, at the first state: CQL's and SAC's min over the critics
                  and BEAR's Q1 of the action taken; AWR's V(s), which estimates the data's policy, not the actor's
                  (the model-based critics learn penalised model rewards, so theirs sits below G0 by the penalty)

The policies: CQL the tanh of its Gaussian's mean; BEAR the best of `num_eval_actions` actor samples by Q1 (torch
seeded with --seed, so a checkpoint's row is reproducible); AWR its clipped mean; SAC the tanh of its mean. (README,
"Model-free on the shipped Hopper data": CQL's seed 1 and BEAR on hopper-medium; "Model-based on the shipped Hopper
data": the pairwise MOPO's final policies.)

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


ALGOS = ("cql", "bear", "awr", "mopo", "morel", "mbpo")


def load_script(algo: str):
    spec = importlib.util.spec_from_file_location(algo, os.path.join(ROOT, "algorithms", algo + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def policy_of(algo: str, module, cfg: dict, objects: dict, obs_dim: int, act_dim: int, low, high):
    """The script's evaluated policy and its critic's value of the first state, as functions of a normalised
    observation batch [1, obs_dim]: act(o) -> action [1, act_dim], critic0(o, action) -> a number."""
    if algo == "cql":
        actor = module.Actor(obs_dim, act_dim, cfg["hidden_dim"], cfg["layers"], low, high)
        critic = module.DoubleCritic(obs_dim, act_dim, cfg["hidden_dim"], cfg["layers"])
        actor.load_state_dict(objects["actor"])
        critic.load_state_dict(objects["critic"])
        return actor.deterministic, lambda o, a: float(critic(o, a).min(0).values)
    if algo == "bear":
        actor = module.Actor(obs_dim, act_dim, cfg["hidden_dim"], low, high)
        critic = module.EnsembleCritic(obs_dim, act_dim, cfg["hidden_dim"], cfg["num_critics"])
        actor.load_state_dict(objects["actor"])
        critic.load_state_dict(objects["critic"])

        def act(o):
            candidates, _ = actor(o, cfg["num_eval_actions"])
            return module.best_of(candidates, critic.many(o, candidates)[0])

        return act, lambda o, a: float(critic(o, a)[0])
    if algo in ("mopo", "morel", "mbpo"):  # the shared SAC learner, on raw observations
        agent = module.SAC(
            obs_dim,
            act_dim,
            low,
            high,
            cfg["hidden_dim"],
            critic_members=cfg["critic_members"],
            critic_layer_norm=cfg["critic_layer_norm"],
        )
        agent.load_state_dict(objects["agent"])
        return lambda o: agent.actor(o, deterministic=True)[0], lambda o, a: float(agent.critic(o, a).min(0).values)
    actor = module.Actor(obs_dim, act_dim, cfg["hidden_dim"], low, high)
    value = module.ValueNet(obs_dim, cfg["hidden_dim"], cfg["gamma"])
    actor.load_state_dict(objects["actor"])
    value.load_state_dict(objects["value"])
    return actor.act, lambda o, a: float(value(o))


def discounted_from_start(rewards: list, gamma: float) -> float:
    """Σ_t γ^t r_t of one episode."""
    return float(np.sum(np.asarray(rewards) * gamma ** np.arange(len(rewards))))


def returns_of(algo: str, module, path: str, config: str, episodes: int, seed: int) -> tuple[int, dict]:
    """The checkpoint's step and the row of the module docstring."""
    with open(config) as f:
        cfg = yaml.safe_load(f)
    data = module.load_dataset(cfg["dataset"], torch.device("cpu"))
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    env = data.make_env()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    low, high = env.action_space.low, env.action_space.high
    act, critic0 = policy_of(algo, module, cfg, checkpoint["objects"], obs_dim, act_dim, low, high)
    mean, std = checkpoint["extra"].get("obs_mean", 0.0), checkpoint["extra"].get("obs_std", 1.0)
    torch.manual_seed(seed)
    returns, lengths, g0, q0 = [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        rewards, done, cut = [], False, False
        while not (done or cut):
            with torch.no_grad():
                o = ((torch.as_tensor(obs, dtype=torch.float32) - mean) / std)[None]
                action = act(o)
                if not rewards:
                    q0.append(critic0(o, action))
            obs, reward, done, cut, _ = env.step(action[0].numpy())
            rewards.append(float(reward))
        returns.append(sum(rewards))
        lengths.append(len(rewards))
        g0.append(discounted_from_start(rewards, cfg["gamma"]))
    env.close()
    scores = module.normalized_score(np.asarray(returns), data.ref_min_score, data.ref_max_score)
    return checkpoint["step"], {
        "score": f"{float(np.mean(scores)):.1f} ± {float(np.std(scores)) / episodes**0.5:.1f}",
        "length": round(float(np.mean(lengths))),
        "reward / step": round(sum(returns) / sum(lengths), 2),
        "G0": round(float(np.mean(g0)), 1),
        "critic0": round(float(np.mean(q0)), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run directories or checkpoint files of " + ", ".join(ALGOS))
    parser.add_argument("--config", help="config.yaml of the run the checkpoint files come from")
    parser.add_argument("--algo", choices=ALGOS, help="the script (default: from the run folder's name)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345, help="the first episode's evaluation seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modules = {}
    for given in args.checkpoints:
        path = os.path.join(given, "checkpoint.pt") if os.path.isdir(given) else given
        config = args.config or os.path.join(os.path.dirname(path), "config.yaml")
        for needed in (path, config):
            if not os.path.isfile(needed):
                raise SystemExit(f"{needed} not found: give run directories, or checkpoints and --config")
        algo = args.algo or os.path.basename(os.path.dirname(os.path.abspath(config))).split("__")[0]
        if algo not in ALGOS:
            raise SystemExit(f"{given}: cannot tell its script from the folder name: add --algo ({', '.join(ALGOS)})")
        modules.setdefault(algo, load_script(algo))
        step, row = returns_of(algo, modules[algo], path, config, args.episodes, args.seed)
        print(os.path.basename(given.rstrip("/")), f"step {step}:", row, flush=True)


if __name__ == "__main__":
    main()
