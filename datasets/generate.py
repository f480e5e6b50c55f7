"""Write D4RL-layout offline datasets for any Gymnasium continuous-control environment.

It follows the recipe D4RL used for its Gym-MuJoCo datasets, on the output of an online
SAC run of this project (`python algorithms/sac.py --env-id ENV`), which saves a policy
checkpoint with its evaluation return every `--eval-every` steps and, at the end, its
whole replay buffer in environment order:

  random          a uniformly random policy
  medium          the checkpoint whose return is closest to a third of the expert's
                  (a third of the way from the random policy's return to the expert's, so
                  that it means the same for negative returns)
  expert          the final policy of the run
  medium-replay   the replay buffer up to the medium checkpoint (to the end of that episode)
  medium-expert   medium followed by expert (each `--num-steps`)
and the BRAC-style noise datasets that BREMEN uses (BRAC's `collect_data.py` recipe, with the
medium checkpoint as BRAC's "partially trained" policy), all from samples of the stochastic policy:
  pure            100% policy samples
  eps1, eps3      2 : 4 : 4 in whole-episode parts: 20% uniformly random actions (the random
                  walk), 40% policy samples, 40% policy samples replaced by a uniformly random
                  action with probability 0.1 / 0.3
  gaussian1/3     as eps, with N(0, 0.1²) / N(0, 0.3²) added to the noisy part's samples, clipped
                  to [low + 1e-3, high - 1e-3] as BRAC does

medium and expert sample the stochastic SAC policy, as D4RL's generation did. Every file
ends at an episode boundary: collection runs past `--num-steps` to finish its last episode.

Each file records, as HDF5 attributes: env_id, env_kwargs, level, seed, the command that
made it, the source run and policy steps, and the reference returns of the normalised
score (for the MuJoCo tasks D4RL covers, D4RL's; otherwise the mean return of the random
policy and of the expert policy over `--ref-episodes` episodes) and, with `--reward-scaling`,
the reward scaling that the scripts' `--reward-scaling auto` (IQL) applies to it. The same
arguments and seed give the same arrays.

Example (the shipped hopper datasets):
    python datasets/generate.py --sac-run runs/sac__Hopper-v4__0__... --level medium \
        --num-steps 100000 --out datasets/shipped/hopper-medium.hdf5
"""

import functools
import glob
import importlib.util
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import gymnasium as gym
import h5py
import numpy as np
import torch
import tyro
from tqdm import tqdm

LEVELS = (
    "random",
    "medium",
    "expert",
    "medium-replay",
    "medium-expert",
    "pure",
    "eps1",
    "eps3",
    "gaussian1",
    "gaussian3",
)
NOISE = {"eps1": ("eps", 0.1), "eps3": ("eps", 0.3), "gaussian1": ("gaussian", 0.1), "gaussian3": ("gaussian", 0.3)}
# D4RL's reference returns (random, expert) for the environments its Gym-MuJoCo datasets cover
D4RL_REFERENCE = {
    "Hopper": (-20.272305, 3234.3),
    "HalfCheetah": (-280.178953, 12135.0),
    "Walker2d": (1.629008, 4592.3),
    "Ant": (-325.6, 3879.7),
}


@dataclass
class Args:
    level: Literal[
        "random", "medium", "expert", "medium-replay", "medium-expert", "pure", "eps1", "eps3", "gaussian1", "gaussian3"
    ]
    """which dataset to write"""
    out: str
    """output .hdf5 path"""
    sac_run: Optional[str] = None
    """run directory of algorithms/sac.py (checkpoints/ and replay_buffer.npz); every level but random needs it"""
    env_id: Optional[str] = None
    """Gymnasium environment id; defaults to the SAC run's"""
    num_steps: int = 1_000_000
    """transitions to collect (at least; the last episode is finished); medium-expert holds twice this"""
    seed: int = 0
    """seed of the environment, the policy's sampling and the noise"""
    medium_step: Optional[int] = None
    """use the checkpoint of this step as the medium policy instead of the one nearest a third of the expert return"""
    expert_step: Optional[int] = None
    """use the checkpoint of this step as the expert policy instead of the final one"""
    ref_episodes: int = 20
    """episodes to measure the random and expert reference returns (environments D4RL does not cover)"""
    reward_scaling: Optional[Literal["none", "return_range", "minus_one"]] = None
    """written as the file attribute reward_scaling: the rule scripts with `--reward-scaling auto` (IQL) apply to
    its rewards (return_range: times 1000 / (max - min episode return); minus_one: r - 1); unset, they decide by the
    task its env_id names (return_range on halfcheetah, hopper, walker2d; none elsewhere)"""


@functools.cache
def load_sac_actor_class():
    """The Actor of algorithms/sac.py: the checkpoints hold its weights."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "algorithms", "sac.py")
    spec = importlib.util.spec_from_file_location("sac", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Actor


CHECKPOINT_KEYS = ("actor", "step", "eval_return", "env_id", "hidden_dim")
BUFFER_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def one_line(error: Exception, first_sentence: bool = False) -> str:
    """An exception's message on one line (its first sentence only: the loaders' advice after it does not apply)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".") if first_sentence else text


def checkpoints(sac_run: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(sac_run, "checkpoints", "actor_*.pt")))
    if not files:
        sys.exit(f"error: {sac_run} holds no checkpoints/actor_*.pt; pass the run directory of algorithms/sac.py")
    ckpts = []
    for f in files:
        try:
            ckpt = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or foreign file fails in many ways (pickle, zip, EOF)
            reason = one_line(e, first_sentence=True)
            sys.exit(
                f"error: {f} is not a readable torch checkpoint ({reason}); it may be truncated: delete it, or re-run "
                "algorithms/sac.py"
            )
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
        if missing:
            sys.exit(
                f"error: {f} is not an actor checkpoint of algorithms/sac.py (it lacks {', '.join(missing)}); "
                "remove it from checkpoints/ or pass the run directory of algorithms/sac.py"
            )
        ckpts.append(dict(ckpt, path=f))
    return ckpts


def load_buffer(sac_run: str) -> dict:
    path = os.path.join(sac_run, "replay_buffer.npz")
    if not os.path.isfile(path):
        sys.exit(f"error: {path} is missing; the SAC run must finish with --save-replay-buffer (the default)")
    try:
        with np.load(path) as f:
            buffer = {k: f[k] for k in f.files}
    except Exception as e:  # a truncated npz is a bad zip, garbage is refused as a pickle, ...
        reason = one_line(e, first_sentence=True)
        sys.exit(
            f"error: {path} is not a readable replay buffer ({reason}); it may be truncated: re-run algorithms/sac.py "
            "(it saves the buffer at the end)"
        )
    missing = [k for k in BUFFER_KEYS if k not in buffer]
    if missing:
        sys.exit(f"error: {path} lacks {', '.join(missing)}; it must be the replay_buffer.npz of algorithms/sac.py")
    return buffer


def make_env(env_id: str) -> gym.Env:
    """The environment, refused unless its observations and actions fit the SAC actor (flat, bounded Box actions)."""
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:
        sys.exit(
            f"error: cannot make the environment {env_id!r} ({one_line(e)}); pass as --env-id a registered "
            "Gymnasium id (e.g. Pendulum-v1) or module:EnvId with a module that can be imported"
        )
    act, obs = env.action_space, env.observation_space
    if not isinstance(act, gym.spaces.Box) or len(act.shape) != 1:
        sys.exit(
            f"error: {env_id} has a {act} action space; datasets/generate.py needs a continuous Box action "
            "space of one dimension (e.g. Pendulum-v1, Hopper-v4): pass such an --env-id"
        )
    if not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
        sys.exit(f"error: {env_id}'s action space {act} is unbounded; the policies need finite action bounds")
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        sys.exit(f"error: {env_id} has a {obs} observation space; datasets/generate.py needs a flat Box one")
    return env


def check_dims(ckpts: list[dict], buffer: Optional[dict], env: gym.Env, env_id: str) -> None:
    """Every checkpoint (and the replay buffer) must be of an environment with env's observation and action sizes."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    here = f"{env_id} has {obs_dim}-dim observations and {act_dim}-dim actions"
    for c in ckpts:
        actor = load_sac_actor_class()(obs_dim, act_dim, c["hidden_dim"], env.action_space.low, env.action_space.high)
        try:
            actor.load_state_dict(c["actor"])
        except (RuntimeError, TypeError, AttributeError) as e:  # other sizes, other keys, not a state dict
            shapes = {k: tuple(v.shape) for k, v in c["actor"].items()} if isinstance(c["actor"], dict) else {}
            if "trunk.0.weight" in shapes and "mean.weight" in shapes:
                theirs = f"{shapes['trunk.0.weight'][1]}-dim observations and {shapes['mean.weight'][0]}-dim actions"
                sys.exit(
                    f"error: {c['path']} is a policy of {c['env_id']} ({theirs}) but {here}; pass the --env-id of "
                    f"that SAC run ({c['env_id']}) or a SAC run of {env_id}"
                )
            sys.exit(f"error: {c['path']} does not load into the actor of algorithms/sac.py ({one_line(e)})")
    if buffer is not None:
        shapes = (buffer["observations"].shape[1:], buffer["actions"].shape[1:])
        if shapes != ((obs_dim,), (act_dim,)):
            sys.exit(
                f"error: the replay buffer holds observations of shape {shapes[0]} and actions of shape {shapes[1]} "
                f"but {here}; pass the --env-id of that SAC run"
            )


def check_out(out: str) -> None:
    """Refuse, before any collection, an --out that could not be written: a directory, or a folder that cannot be
    made or written to (missing folders are made at the end)."""
    for path in (out, out + ".tmp"):
        if os.path.isdir(path):
            sys.exit(f"error: {path} is a directory, so --out {out} cannot be written; pass the path of an .hdf5 file")
    folder = os.path.dirname(os.path.abspath(out))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        sys.exit(f"error: cannot make the folder of --out {out}: {existing} is not a directory; pass another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        sys.exit(
            f"error: cannot write to {existing}, so --out {out} cannot be written; pass an --out in a folder "
            "you can write to"
        )


def write(out: str, data: dict, attrs: dict) -> None:
    """Write to out + '.tmp', then rename: a failed write leaves neither a half-written file nor the .tmp one."""
    tmp = out + ".tmp"
    dtypes = {"terminals": bool, "timeouts": bool}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                f.create_dataset(
                    key,
                    data=value.astype(dtypes.get(key, np.float32)),
                    compression="gzip",
                    compression_opts=9,
                    shuffle=True,
                )
            for key, value in attrs.items():
                f.attrs[key] = value
        os.replace(tmp, out)
    except BaseException as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        if not isinstance(e, OSError):
            raise
        sys.exit(f"error: could not write {out} ({one_line(e)}); free space or pass another --out")


def pick(ckpts: list[dict], step: Optional[int], what: str) -> dict:
    for c in ckpts:
        if c["step"] == step:
            return c
    sys.exit(f"error: no checkpoint at step {step} for the {what} policy; available: {[c['step'] for c in ckpts]}")


def make_policy(ckpt: dict, env: gym.Env, mode: str, noise: float, rng: np.random.Generator):
    """A function obs -> action: 'mean' (the deterministic action), 'sample' (the stochastic SAC policy), or a
    sample made noisy: 'eps' (a uniformly random action with probability `noise`) or 'gaussian' (plus N(0, noise²),
    clipped 1e-3 inside the bounds)."""
    actor = load_sac_actor_class()(
        env.observation_space.shape[0],
        env.action_space.shape[0],
        ckpt["hidden_dim"],
        env.action_space.low,
        env.action_space.high,
    )
    actor.load_state_dict(ckpt["actor"])
    low, high = env.action_space.low, env.action_space.high

    @torch.no_grad()
    def act(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
        action = actor(obs, deterministic=(mode == "mean"))[0][0].numpy()
        if mode == "eps" and rng.random() < noise:
            action = rng.uniform(low, high).astype(np.float32)
        elif mode == "gaussian":
            noisy = action + noise * rng.standard_normal(action.shape)
            action = np.clip(noisy, low + 1e-3, high - 1e-3).astype(np.float32)
        return action

    return act


def random_policy(env: gym.Env, rng: np.random.Generator):
    low, high = env.action_space.low, env.action_space.high
    return lambda obs: rng.uniform(low, high).astype(np.float32)


def collect(env: gym.Env, policy, num_steps: int, seed: int, desc: str) -> dict:
    """Roll `policy` for at least `num_steps` steps, finishing the last episode."""
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    data = {k: [] for k in keys}
    obs, _ = env.reset(seed=seed)
    bar = tqdm(total=num_steps, desc=desc, mininterval=2)
    while True:
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in zip(keys, (obs, action, reward, next_obs, terminated, truncated)):
            data[k].append(v)
        bar.update(1)
        obs = next_obs
        if terminated or truncated:
            if len(data["rewards"]) >= num_steps:
                break
            obs, _ = env.reset()
    bar.close()
    return {k: np.asarray(v) for k, v in data.items()}


def mix(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def mean_return(env: gym.Env, policy, episodes: int, seed: int) -> float:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main():
    args = tyro.cli(Args)
    # every check of the inputs comes before the collection, which can take hours
    if args.level != "random" and args.sac_run is None:
        sys.exit(f"error: --level {args.level} needs --sac-run, the run directory of algorithms/sac.py")
    for flag, value in (("--num-steps", args.num_steps), ("--ref-episodes", args.ref_episodes)):
        if value < 1:
            sys.exit(f"error: {flag} must be at least 1, not {value}; pass a positive number")
    check_out(args.out)
    env_id = args.env_id
    ckpts = checkpoints(args.sac_run) if args.sac_run else []
    if env_id is None:
        if not ckpts:
            sys.exit("error: pass --env-id (or --sac-run, whose environment is then used)")
        env_id = ckpts[-1]["env_id"]
    buffer = load_buffer(args.sac_run) if args.level == "medium-replay" else None
    env = make_env(env_id)
    check_dims(ckpts, buffer, env, env_id)
    family = env_id.split(":")[-1].split("-")[0]
    if family not in D4RL_REFERENCE and not ckpts:
        sys.exit(f"error: {env_id} has no D4RL reference returns, so the expert's return is needed: pass --sac-run")
    expert = medium = None
    if ckpts:
        expert = pick(ckpts, args.expert_step, "expert") if args.expert_step is not None else ckpts[-1]
        if args.medium_step is not None:
            medium = pick(ckpts, args.medium_step, "medium")
    rng = np.random.default_rng(args.seed)
    env.action_space.seed(args.seed)

    attrs = {
        "env_id": env_id,
        "env_kwargs": "{}",
        "level": args.level,
        "seed": args.seed,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "generator": "datasets/generate.py",
    }
    if args.reward_scaling is not None:
        attrs["reward_scaling"] = args.reward_scaling
    # the random policy's return: the floor of the reference returns and of "a third of the way"
    # (its own generator, so it is the same number whatever level is written)
    random_return = mean_return(
        env, random_policy(env, np.random.default_rng(args.seed + 100)), args.ref_episodes, args.seed + 100
    )
    if ckpts:
        if medium is None:  # D4RL: a policy at about a third of the expert's return, counted from the random policy's
            target = random_return + (expert["eval_return"] - random_return) / 3
            medium = min(ckpts, key=lambda c: abs(c["eval_return"] - target))
        attrs.update(
            source_run=os.path.basename(os.path.normpath(args.sac_run)),
            expert_step=expert["step"],
            expert_eval_return=expert["eval_return"],
            medium_step=medium["step"],
            medium_eval_return=medium["eval_return"],
        )
    # the reference returns before the collection too (the mean policy and the episodes' own seeds leave the
    # collection's random numbers as they are), so that an expert no better than random stops the run at once
    if family in D4RL_REFERENCE:
        attrs["ref_min_score"], attrs["ref_max_score"] = D4RL_REFERENCE[family]
        attrs["ref_source"] = "D4RL reference returns"
    else:
        attrs["ref_min_score"] = random_return
        attrs["ref_max_score"] = mean_return(
            env, make_policy(expert, env, "mean", 0.0, rng), args.ref_episodes, args.seed + 200
        )
        if attrs["ref_max_score"] <= random_return:
            sys.exit(
                f"error: the expert policy's return {attrs['ref_max_score']:.1f} is not above the random policy's "
                f"{random_return:.1f}; train SAC longer or pick --expert-step"
            )
        attrs["ref_source"] = f"mean return of the random and the expert policy over {args.ref_episodes} episodes"

    # seeded only now: building the actors above drew initial weights from it, which the collection must not see
    torch.manual_seed(args.seed)
    if args.level == "random":
        data = collect(env, random_policy(env, rng), args.num_steps, args.seed, "random")
    elif args.level in ("medium", "expert"):
        ckpt = medium if args.level == "medium" else expert
        data = collect(env, make_policy(ckpt, env, "sample", 0.0, rng), args.num_steps, args.seed, args.level)
    elif args.level == "medium-expert":
        data = mix(
            [
                collect(env, make_policy(medium, env, "sample", 0.0, rng), args.num_steps, args.seed, "medium"),
                collect(env, make_policy(expert, env, "sample", 0.0, rng), args.num_steps, args.seed + 1, "expert"),
            ]
        )
    elif args.level == "medium-replay":
        buffer["terminals"], buffer["timeouts"] = buffer["terminals"] > 0, buffer["timeouts"] > 0
        ends = np.flatnonzero((buffer["terminals"] > 0) | (buffer["timeouts"] > 0))
        ends = ends[ends >= medium["step"] - 1]  # the buffer's first `step` transitions, to the end of that episode
        if len(ends) == 0:
            sys.exit(f"error: the replay buffer ends before step {medium['step']}")
        data = {k: v[: ends[0] + 1] for k, v in buffer.items()}
    elif args.level == "pure":
        data = collect(env, make_policy(medium, env, "sample", 0.0, rng), args.num_steps, args.seed, "pure")
    else:
        mode, noise = NOISE[args.level]
        sizes = [int(0.2 * args.num_steps), int(0.4 * args.num_steps)]
        sizes.append(args.num_steps - sum(sizes))
        data = mix(
            [
                collect(env, random_policy(env, rng), sizes[0], args.seed, "random walk"),
                collect(env, make_policy(medium, env, "sample", 0.0, rng), sizes[1], args.seed + 1, "pure"),
                collect(env, make_policy(medium, env, mode, noise, rng), sizes[2], args.seed + 2, args.level),
            ]
        )

    write(args.out, data, attrs)
    ends = data["terminals"] | data["timeouts"]
    returns = np.bincount(np.concatenate([[0], np.cumsum(ends[:-1])]), weights=data["rewards"])
    score = 100 * (returns.mean() - attrs["ref_min_score"]) / (attrs["ref_max_score"] - attrs["ref_min_score"])
    print(
        json.dumps(
            {
                "out": args.out,
                "transitions": len(data["rewards"]),
                "episodes": int(ends.sum()),
                "mean_return": round(float(returns.mean()), 1),
                "normalized_score": round(float(score), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
