"""What BCQ's action selection costs: a run's final checkpoint evaluated with five ways of choosing its action.

BCQ acts with the best of n perturbed VAE samples by Q1. For each run directory of algorithms/bcq.py given, its
checkpoint (the last one saved) is evaluated on the same episodes (one evaluation seed for every variant) with
  n10            the script's rule: the best of 10 perturbed samples by Q1
  n1             one perturbed sample, no choice by Q1
  n10_unperturbed the best of 10 raw VAE samples by Q1
  vae_mean       the VAE's decoder at z = 0, no perturbation
  mean_perturbed the same, perturbed
and the mean normalised score of each is printed (README, "Model-free on the shipped Hopper data": the diagnosis of
BCQ's fall on hopper-medium-replay).

    python benchmarks/bcq_selection.py runs/cpu-hopper-mf/bcq__shipped-hopper-medium-replay__*[0-9]
"""

import argparse
import importlib.util
import os

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def selection_scores(bcq, run: str, episodes: int, seed: int) -> tuple[int, dict]:
    """The checkpoint's step and the mean normalised score of each way of acting (module docstring)."""
    with open(os.path.join(run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    data = bcq.load_dataset(cfg["dataset"], torch.device("cpu"))
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    env = data.make_env()
    low, high = env.action_space.low, env.action_space.high
    env.close()
    widths = (cfg["hidden_dim"], cfg["second_hidden_dim"])
    latent = cfg["latent_dim"] or 2 * act_dim
    vae = bcq.VAE(obs_dim, act_dim, latent, cfg["vae_hidden_dim"], cfg["latent_clip"], low, high)
    actor = bcq.Perturbation(obs_dim, act_dim, widths, cfg["phi"], low, high)
    critic = bcq.DoubleCritic(obs_dim, act_dim, widths)
    checkpoint = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)
    for name, net in (("vae", vae), ("actor", actor), ("critic", critic)):
        net.load_state_dict(checkpoint["objects"][name])
    mean, std = checkpoint["extra"]["obs_mean"], checkpoint["extra"]["obs_std"]
    rng = torch.Generator().manual_seed(0)

    def policy(n: int, perturb: bool = True, at_mean: bool = False):
        @torch.no_grad()
        def act(obs):
            obs = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
            if at_mean:
                action = vae.decode(obs, torch.zeros(obs.shape[0], latent))
                return (actor(obs, action) if perturb else action).numpy()
            batch, rows = obs.shape[0], obs.repeat_interleave(n, 0)
            candidates = vae.sample(rows, rng)
            candidates = actor(rows, candidates) if perturb else candidates
            best = critic.q1_frozen(rows, candidates).view(batch, n).argmax(1)
            return candidates.view(batch, n, -1)[torch.arange(batch), best].numpy()

        return act

    variants = {
        "n10": policy(10),
        "n1": policy(1),
        "n10_unperturbed": policy(10, perturb=False),
        "vae_mean": policy(1, perturb=False, at_mean=True),
        "mean_perturbed": policy(1, at_mean=True),
    }
    scores = {}
    for label, act in variants.items():
        returns = bcq.evaluate(data.make_env, act, episodes, seed=seed)
        score = bcq.normalized_score(returns, data.ref_min_score, data.ref_max_score).mean()
        scores[label] = round(float(score), 1)
    return checkpoint["step"], scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories of bcq.py (each with checkpoint.pt, config.yaml)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345, help="the evaluation seed, the same for every variant")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("bcq", os.path.join(ROOT, "algorithms", "bcq.py"))
    bcq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bcq)
    torch.set_num_threads(1)
    for run in args.runs:
        step, scores = selection_scores(bcq, run, args.episodes, args.seed)
        print(os.path.basename(run.rstrip("/")), f"step {step}:", scores, flush=True)


if __name__ == "__main__":
    main()
