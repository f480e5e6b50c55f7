"""Steer a trained LION (or λ-TD3+BC) policy: move λ with a slider while the policy acts, no retraining.

    python tools/steer_lion.py runs/lion__shipped-lion2d__0__...            # a window with a slider
    python tools/steer_lion.py RUN_DIR --lam 0.7 --save steer.png           # headless: draw λ = 0.7 to a file

The run directory's config.yaml and checkpoint.pt give the policy; the dataset file's env_id gives the real
environment. One episode from a fixed start (--seed) is replayed at the slider's λ on every move:
  2D task (2-d observations)  the policy map at that λ (colour: action angle, arrows) and the trajectory on it
  Industrial Benchmark        the next --steps steps' reward, and velocity, gain, shift, fatigue, consumption
Each move reruns the episode (25 steps on 2D, 100 on IB), in well under a second on a CPU.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import gymnasium as gym
import h5py
import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "algorithms"))  # custom_envs, for gym.make("custom_envs....")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"steer_{name}", os.path.join(ROOT, "algorithms", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Steering:
    """A trained run's policy π(s, λ) and its real environment; `episode(λ)` replays one episode at λ."""

    def __init__(self, run_dir: str, seed: int = 0, steps: int = 0):
        config = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
        state = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
        script = os.path.basename(os.path.normpath(run_dir)).split("__")[0]
        module = load_script("lion" if "lion" in script and "td3" not in script else "lambda_td3_bc")
        dataset = config["dataset"]
        path = module.shipped_path(dataset[len("shipped/") :]) if dataset.startswith("shipped/") else dataset
        with h5py.File(path, "r") as f:
            env_id, env_kwargs = f.attrs["env_id"], json.loads(f.attrs.get("env_kwargs", "{}"))
        self.make_env = lambda: gym.make(env_id, **env_kwargs)  # noqa: E731
        env = self.make_env()
        low, high = (torch.as_tensor(x, dtype=torch.float32) for x in (env.action_space.low, env.action_space.high))
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        weights = state["objects"]
        if hasattr(module, "RecurrentModels"):  # lion.py: π(s, λ) and β(s), both on [-1, 1], then to the box
            policy = module.Policy(
                torch.zeros(obs_dim), torch.ones(obs_dim), act_dim, (config["hidden_dim"],) * 2, True
            )
            behaviour = module.Policy(
                torch.zeros(obs_dim), torch.ones(obs_dim), act_dim, tuple(config["behaviour_hidden"]), False
            )
            policy.load_state_dict(weights["policy"]), behaviour.load_state_dict(weights["behaviour"])
            to_env = lambda a: low + (a + 1) * (high - low) / 2  # noqa: E731
            self.policy = lambda o, lam: to_env(policy(o, lam))  # noqa: E731
            self.behaviour = lambda o: to_env(behaviour(o))  # noqa: E731
        else:  # lambda_td3_bc.py: the actor on standardised (or raw) observations; β is its λ = 0 end
            actor = module.Actor(obs_dim, act_dim, config["hidden_dim"], low.numpy(), high.numpy())
            actor.load_state_dict(weights["actor"])
            mean, std = state["extra"]["obs_mean"], state["extra"]["obs_std"]
            self.policy = lambda o, lam: actor((o - mean) / std, lam)  # noqa: E731
            self.behaviour = lambda o: self.policy(o, torch.zeros(1))  # noqa: E731
        self.kind = "2d" if obs_dim == 2 else "ib" if "industrial_benchmark" in env_id else "other"
        self.steps = steps or (100 if self.kind == "ib" else 0)
        self.seed = seed
        self.run_dir, self.module = run_dir, module

    @torch.no_grad()
    def episode(self, lam: float) -> dict:
        """One episode from the fixed start at λ: observations [T + 1, D], actions [T, A], rewards [T]."""
        env = self.make_env()
        obs, _ = env.reset(seed=self.seed)
        observations, actions, rewards = [obs], [], []
        lam_t = torch.tensor([float(lam)])
        while not self.steps or len(rewards) < self.steps:
            action = self.policy(torch.as_tensor(obs, dtype=torch.float32)[None], lam_t)[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs), actions.append(action), rewards.append(reward)
            if terminated or truncated:
                break
        env.close()
        return dict(observations=np.array(observations), actions=np.array(actions), rewards=np.array(rewards))


class SteeringWindow:
    """The matplotlib figure: panels for the task and a λ slider; `set_lambda` is what a slider move calls."""

    def __init__(self, steering: Steering, lam: float = 0.0):
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Slider

        self.steering, self.plt = steering, plt
        if steering.kind == "2d":
            self.fig, ax = plt.subplots(figsize=(6, 6.6))
            self.axes = [ax]
            grid = np.arange(0, 10.0001, 0.5)
            self.grid = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
            self.image = ax.imshow(np.zeros((len(grid), len(grid))), origin="lower", extent=(0, 10, 0, 10), cmap="jet",
                                   vmin=0, vmax=2 * np.pi)  # fmt: skip
            self.arrows = ax.quiver(self.grid[:, 0], self.grid[:, 1], *np.zeros((2, len(self.grid))), scale=30)
            (self.line,) = ax.plot([], [], "w-o", ms=3, lw=2)
            ax.set_xlim(-1, 11), ax.set_ylim(-1, 11)
        else:
            self.fig, self.axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
            (self.line,) = self.axes[0].plot([], [], color="k")
            self.axes[0].set_ylabel("reward")
            self.traces = [self.axes[1].plot([], [], label=n)[0] for n in ("velocity", "gain", "shift")]
            self.traces += [self.axes[2].plot([], [], label=n)[0] for n in ("fatigue", "consumption")]
            for ax in self.axes[1:]:
                ax.legend(loc="upper right", fontsize=8)
            self.axes[2].set_xlabel("step")
        self.fig.subplots_adjust(bottom=0.14)
        slider_ax = self.fig.add_axes([0.15, 0.03, 0.7, 0.03])
        self.slider = Slider(slider_ax, "λ", 0.0, 1.0, valinit=lam, valstep=0.01)
        self.slider.on_changed(self.set_lambda)
        self.last_seconds = 0.0
        self.set_lambda(lam)

    def set_lambda(self, lam: float) -> dict:
        start = time.perf_counter()
        episode = self.steering.episode(lam)
        ret = episode["rewards"].sum()
        if self.steering.kind == "2d":
            with torch.no_grad():
                obs = torch.as_tensor(self.grid, dtype=torch.float32)
                a = self.steering.policy(obs, torch.full((len(obs),), float(lam))).numpy()
            n = int(np.sqrt(len(self.grid)))
            self.image.set_data(np.mod(np.arctan2(a[:, 1], a[:, 0]), 2 * np.pi).reshape(n, n))
            self.arrows.set_UVC(a[:, 0], a[:, 1])
            self.line.set_data(episode["observations"][:, 0], episode["observations"][:, 1])
            self.axes[0].set_title(f"λ = {lam:.2f}: return {ret:.2f} over {len(episode['rewards'])} steps")
        else:
            t = np.arange(1, len(episode["rewards"]) + 1)
            self.line.set_data(t, episode["rewards"])
            frames = episode["observations"][1:, :6]
            for trace, column in zip(self.traces, (1, 2, 3, 4, 5)):
                trace.set_data(t, frames[:, column])
            for ax in self.axes:
                ax.relim(), ax.autoscale_view()
            self.axes[0].set_title(f"λ = {lam:.2f}: return {ret:.2f} over {len(t)} steps (undiscounted)")
        self.fig.canvas.draw_idle()
        self.last_seconds = time.perf_counter() - start
        return episode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="run directory of algorithms/lion.py or algorithms/lambda_td3_bc.py")
    parser.add_argument("--lam", type=float, default=0.0, help="λ to start from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode's start")
    parser.add_argument("--steps", type=int, default=0, help="steps shown (0: 100 on IB, the whole episode otherwise)")
    parser.add_argument("--save", help="draw --lam into this PNG and exit (no window)")
    args = parser.parse_args()
    for name in ("config.yaml", "checkpoint.pt"):
        if not os.path.isfile(os.path.join(args.run_dir, name)):
            sys.exit(
                f"error: {args.run_dir} has no {name}; pass the run directory of a lion.py or lambda_td3_bc.py run"
            )
    if not 0 <= args.lam <= 1:
        sys.exit(f"error: --lam {args.lam} is not in [0, 1]")
    if args.save:
        import matplotlib

        matplotlib.use("Agg")
    window = SteeringWindow(Steering(args.run_dir, args.seed, args.steps), args.lam)
    if args.save:
        window.fig.savefig(args.save, dpi=110)
        print(f"wrote {args.save} (λ = {args.lam}, drawn in {window.last_seconds:.3f} s)")
    else:
        window.plt.show()


if __name__ == "__main__":
    main()
