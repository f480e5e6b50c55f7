"""How BRED's critics rank actions, before and after the online phase: the diagnosis of its drop at the switch.

For each run directory given (runs of algorithms/bred.py, their final checkpoint), on 512 states of the dataset:
the ensemble's Q (each member's twin minimum, averaged over members) on the data's action, on the policy's
deterministic action and on a grid of actions across the action box (1-D action spaces, e.g. Pendulum); it prints
the mean of each, the spread of Q over the grid, and how far from the data's action the grid's best action and the
policy's action are.

    python benchmarks/bred_q_landscape.py --dataset shipped/pendulum-medium --hidden-dim 64 \
        runs/diag/off5/bred__* runs/diag/bred/bred__* runs/diag/frozen_critic/bred__*
"""

import argparse
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories of bred.py")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument("--states", type=int, default=512)
    parser.add_argument("--grid", type=int, default=41, help="actions on the grid across the box")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("bred", os.path.join(ROOT, "algorithms", "bred.py"))
    bred = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bred)
    data = bred.load_dataset(args.dataset, torch.device("cpu"))
    box = data.make_env().action_space
    if box.shape != (1,):
        sys.exit(f"error: {args.dataset}: the action grid needs a 1-D action space, not {box.shape}")
    obs_dim, n, k = data.observations.shape[1], args.ensemble_size, args.grid
    idx = torch.randint(0, len(data.rewards), (args.states,), generator=torch.Generator().manual_seed(0))
    obs, act = data.observations[idx], data.actions[idx]
    grid = torch.linspace(float(box.low[0]), float(box.high[0]), k)
    print("run | step | Q(data a) | Q(policy a) | max_a Q | max - min over a | |argmax a - data a| | |policy - data a|")
    for run in args.runs:
        state = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)
        critic = bred.EnsembleCritic(obs_dim, 1, args.hidden_dim, n)
        actor = bred.EnsembleActor(obs_dim, 1, args.hidden_dim, n, box)
        critic.load_state_dict(state["objects"]["critic"])
        actor.load_state_dict(state["objects"]["actor"])

        def q(o, a, critic=critic):  # the members' twin minimum, averaged over the members
            return critic(o.expand(n, *o.shape), a.expand(n, *a.shape)).min(1).values.mean(0)

        with torch.no_grad():
            q_grid = q(obs.repeat_interleave(k, 0), grid.repeat(args.states)[:, None]).view(args.states, k)
            mean, std = bred.moment_matched(*actor(obs))
            policy = actor.squash(mean, mean, std)[0]
            q_data, q_policy = q(obs, act), q(obs, policy)
        best = grid[q_grid.argmax(1)][:, None]
        print(
            f"{run} | {state['step']} | {q_data.mean():.1f} | {q_policy.mean():.1f} | {q_grid.max(1).values.mean():.1f}"
            f" | {(q_grid.max(1).values - q_grid.min(1).values).mean():.1f} | {(best - act).abs().mean():.2f}"
            f" | {(policy - act).abs().mean():.2f}"
        )


if __name__ == "__main__":
    main()
