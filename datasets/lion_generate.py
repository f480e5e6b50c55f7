"""Write LION's offline datasets (Swazinna, Udluft, Runkler, ICLR 2023) in the D4RL layout.

  ib-<policy>-<ε>   the Industrial Benchmark at setpoint 70: 100 trajectories x 1000 steps of a behaviour policy
                    (bad, mediocre or optimized) that takes a uniformly random action in [-1, 1]³ with probability
                    ε ∈ {0.0, 0.2, 0.4, 0.6, 0.8} at every step; observations are the 30-frame histories (180
                    values, newest first), rewards -(3 f + c) / 100 as in LION's files
  ib-global-1.0     the same with uniformly random actions only
  lion2d            the 2D task: 400 trajectories x 25 steps toward the nearer of (2.5, 2.5) and (7.5, 7.5), a
                    random action with probability 0.1

The IB files of the authors are Git LFS objects that cannot be fetched, so these are regenerated with this
project's simulator (algorithms/custom_envs/industrial_benchmark.py). Which parts of the behaviour policies are
reconstructions is written into each file's attributes (`behaviour_policy`, `reconstructed`):
  optimized   the linear rule of the authors' generate_data.IB_opt, as published
  bad         a_i = clip(100 - x_i, -1, 1) on raw v, g, h: the published code standardises the state first, which
              makes it the constant +1; the raw reading reproduces the returns reported for it (-326.7 per 100
              steps here, MOReL's row in the authors' baseline table -326.8)
  mediocre    a_i = clip(25 - x_i, -1, 1) on raw values (the published one is the same constant +1 as bad)
  ε-mixing    per step with probability ε (the authors' readme says only "mixed with uniform random exploration")

IB files leave next_observations out (each one repeats 29 of the next row's 30 frames; the loader pairs a row with
the following row of its episode, so each trajectory's last step is not a transition) and are gzip-compressed
without byte shuffling, so that the shifted frames compress against each other. Reference returns for the
normalised score: the uniformly random policy (0) and, on IB, the optimized policy without noise / on the 2D task
the policy that walks straight to the reward's peak (100), mean undiscounted episode returns over 20 episodes.

    python datasets/lion_generate.py --dataset ib-bad-0.2 --out datasets/shipped/ib-bad-0.2.hdf5
    python datasets/lion_generate.py --dataset all --out-dir data/lion   # all 16 IB files and the 2D one
"""

import json
import os
import shlex
import sys
from dataclasses import dataclass

import h5py
import numpy as np
import tyro
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "algorithms"))
from custom_envs import lion2d  # noqa: E402
from custom_envs.industrial_benchmark import IndustrialBenchmark  # noqa: E402

IB_ENV_ID = "custom_envs.industrial_benchmark:IndustrialBenchmark-v0"
LION2D_ENV_ID = "custom_envs.lion2d:Lion2D-v0"
IB_KWARGS = {"setpoint": 70.0, "episode_length": 1000, "history": 30, "reward_scale": 0.01}
POLICIES = ("bad", "mediocre", "optimized")
EPSILONS = ("0.0", "0.2", "0.4", "0.6", "0.8")
NAMES = tuple(f"ib-{p}-{e}" for p in POLICIES for e in EPSILONS) + ("ib-global-1.0", "lion2d")
# the standardisation of the authors' optimized rule (generate_data.IB_MEANS / IB_STDDEVS)
OPT_MEAN = np.array([55.0, 48.75, 50.53, 49.45, 37.51, 166.33])
OPT_STD = np.array([28.72, 12.31, 29.91, 29.22, 31.17, 139.44])
DESCRIPTIONS = {
    "bad": "a_i = clip(100 - x_i, -1, 1) for x = (v, g, h) of the newest frame, raw units",
    "mediocre": "a_i = clip(25 - x_i, -1, 1) for x = (v, g, h) of the newest frame, raw units",
    "optimized": "the linear rule generate_data.IB_opt of siemens/lion on the standardised history",
    "global": "uniformly random actions in [-1, 1]^3",
}
RECONSTRUCTED = {
    "bad": "the raw-unit reading (the published code standardises first, which makes it constant); per-step "
    "epsilon mixing",
    "mediocre": "the raw-unit reading (the published code standardises first, which makes it constant); per-step "
    "epsilon mixing",
    "optimized": "per-step epsilon mixing (the rule itself is the published one)",
    "global": "nothing",
}


@dataclass
class Args:
    dataset: str = "ib-bad-0.2"
    """one of ib-{bad,mediocre,optimized}-{0.0,0.2,0.4,0.6,0.8}, ib-global-1.0, lion2d, or all"""
    out: str = ""
    """output .hdf5 file (one dataset)"""
    out_dir: str = ""
    """output folder (with --dataset all: <out-dir>/<name>.hdf5)"""
    seed: int = 0
    """seed of the behaviour's random actions and of the environments"""
    trajectories: int = 0
    """trajectories (0: the paper's 100 on IB, 400 on the 2D task)"""
    ref_episodes: int = 20
    """episodes of the reference policies' returns"""


def ib_policy(name: str):
    """The behaviour policy on a batch of histories [n, 30, 6] (row 0 the newest frame)."""
    if name == "bad":
        return lambda frames: np.clip(100.0 - frames[:, 0, 1:4], -1, 1)
    if name == "mediocre":
        return lambda frames: np.clip(25.0 - frames[:, 0, 1:4], -1, 1)
    if name == "optimized":

        def optimized(frames):
            z = (frames - OPT_MEAN) / OPT_STD
            a = [
                -z[:, 5, 1] - 0.91,
                2 * z[:, 3, 4] - z[:, 0, 0] + 1.43,
                -3.48 * z[:, 3, 3] - z[:, 4, 3] + 2 * z[:, 0, 0],
            ]
            return np.clip(np.stack(a, -1) + [0, 0, 0.81], -1, 1)

        return optimized
    return lambda frames: np.zeros((len(frames), 3))  # global: every action is random (ε = 1)


def rollout(make_env, policy, epsilon: float, episodes: int, rng: np.random.Generator, desc: str) -> dict:
    """Run `episodes` full episodes one after another; each step takes a uniform random action with probability ε."""
    columns = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "timeouts")}
    env = make_env()
    for _ in tqdm(range(episodes), desc=desc, mininterval=2):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        done = False
        while not done:
            action = policy(obs[None])[0]
            if rng.random() < epsilon:
                action = rng.uniform(-1, 1, action.shape)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            for key, value in zip(columns, (obs, action, reward, next_obs, done)):
                columns[key].append(value)
            obs = next_obs
    return {k: np.array(v) for k, v in columns.items()}


def write(out: str, data: dict, attrs: dict) -> None:
    """gzip without shuffling (shifted frames compress against each other); write to .tmp, then rename."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                dtype = bool if key in ("terminals", "timeouts") else np.float32
                chunks = (min(len(value), 4096),) + value.shape[1:]
                f.create_dataset(key, data=value.astype(dtype), compression="gzip", compression_opts=9, chunks=chunks)
            f.attrs.update(attrs)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        sys.exit(f"error: could not write {out} ({e}); free space or pass another --out")


def generate(name: str, out: str, seed: int, trajectories: int, ref_episodes: int) -> None:
    rng = np.random.default_rng(seed)
    if name == "lion2d":
        make_env = lambda: lion2d.Lion2D()  # noqa: E731
        data = rollout(make_env, lion2d.nearer_goal_action, 0.1, trajectories or 400, rng, name)
        env_id, env_kwargs, policy_name, eps = LION2D_ENV_ID, {}, "nearer goal", 0.1
        expert = lambda s: np.clip(lion2d.GOAL - s, -1, 1)  # noqa: E731
        extra = {
            "behaviour_policy": "toward the nearer of (2.5, 2.5) and (7.5, 7.5) with step (g - s) / max(ceil|g - s|)",
            "reconstructed": "nothing (siemens/lion generate_data.go_either with augment_controller, epsilon 0.1)",
            "ref_source": f"mean return of uniformly random actions and of walking straight to (3, 6), {ref_episodes} "
            "episodes",
        }
    else:
        _, policy_name, eps_text = name.split("-")
        eps = float(eps_text)
        make_env = lambda: IndustrialBenchmark(**IB_KWARGS)  # noqa: E731
        policy = ib_policy(policy_name)
        data = rollout(make_env, lambda o: policy(o.reshape(-1, 30, 6)), eps, trajectories or 100, rng, name)
        del data["next_observations"]
        env_id, env_kwargs = IB_ENV_ID, IB_KWARGS
        expert = lambda o: ib_policy("optimized")(o.reshape(-1, 30, 6))  # noqa: E731
        extra = {
            "behaviour_policy": DESCRIPTIONS[policy_name],
            "reconstructed": RECONSTRUCTED[policy_name],
            "setpoint": 70.0,
            "reward": "-(3 fatigue + consumption) / 100",
            "ref_source": f"mean return of uniformly random actions and of the optimized policy (epsilon 0), "
            f"{ref_episodes} episodes",
        }
    data["terminals"] = np.zeros(len(data["rewards"]), dtype=bool)
    ref_rng = np.random.default_rng(seed + 1)
    random_policy = lambda o: ref_rng.uniform(-1, 1, (1, 3 if name != "lion2d" else 2))  # noqa: E731
    ref_min = rollout(make_env, random_policy, 0.0, ref_episodes, ref_rng, "reference: random")
    ref_max = rollout(make_env, expert, 0.0, ref_episodes, ref_rng, "reference: expert")
    episode_return = lambda d: d["rewards"].sum() / d["timeouts"].sum()  # noqa: E731
    attrs = {
        "env_id": env_id,
        "env_kwargs": json.dumps(env_kwargs),
        "epsilon": eps,
        "seed": seed,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "ref_min_score": float(episode_return(ref_min)),
        "ref_max_score": float(episode_return(ref_max)),
        **extra,
    }
    write(out, data, attrs)
    print(
        f"{name}: {len(data['rewards'])} steps, behaviour return {episode_return(data):.2f} per episode "
        f"(reference {attrs['ref_min_score']:.2f} / {attrs['ref_max_score']:.2f}) -> {out}"
    )


def main():
    args = tyro.cli(Args)
    names = NAMES if args.dataset == "all" else (args.dataset,)
    if args.dataset != "all" and args.dataset not in NAMES:
        sys.exit(f"error: unknown dataset {args.dataset!r}; use one of {', '.join(NAMES)} or all")
    if args.dataset == "all" and not args.out_dir:
        sys.exit("error: --dataset all needs --out-dir")
    if args.dataset != "all" and not (args.out or args.out_dir):
        sys.exit("error: pass --out FILE.hdf5 (or --out-dir DIR)")
    for name in names:
        out = args.out if args.out and args.dataset != "all" else os.path.join(args.out_dir, name + ".hdf5")
        generate(name, out, args.seed, args.trajectories, args.ref_episodes)


if __name__ == "__main__":
    main()
