"""Training speed of every offline script in algorithms/ on this machine.

Each script that takes a `--dataset` argument is run as a subprocess, exactly as a user
runs it, for a few thousand updates on a SYNTHETIC hopper-shaped dataset (random data in
the D4RL layout, written once to a temporary folder), and its own `updates_per_second`
is read back from results.json (the scripts exclude evaluation time from it). No
download and no real data are needed, and the scores of these runs mean nothing.

To put the numbers in context the script also measures the machine's float32 matmul
throughput (2048x2048 @ 2048x2048, same thread count and device) and counts, per
algorithm, the multiply-adds of one update from the network shapes. Achieved GFLOP/s
over that peak says how much of the hardware the small 256-wide MLPs actually use.

Example (from the project root):
    python benchmarks/speed.py
    OMP_NUM_THREADS=1 python benchmarks/speed.py --algos bc td3_bc --updates 500 --threads 1 --out /tmp/speed.md
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

PROJECT = Path(__file__).resolve().parent.parent
ALGORITHMS = PROJECT / "algorithms"

# Shape of the synthetic data: Hopper-v4 (the dataset loader checks it against the env).
OBS_DIM, ACT_DIM = 11, 3
NUM_TRANSITIONS = 200_000
EPISODE_LENGTH = 1000
HIDDEN = 256  # 2x256 MLPs, the default of every script measured here


# ---------------------------------------------------------------- synthetic dataset
def write_synthetic_dataset(path: Path, seed: int = 0) -> None:
    """A D4RL-layout hdf5 file that every offline script accepts as `--dataset path`."""
    rng = np.random.default_rng(seed)
    n = NUM_TRANSITIONS
    timeouts = np.zeros(n, dtype=bool)
    timeouts[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = True  # a time-limit cut every 1000 steps
    terminals = (rng.random(n) < 1e-3) & ~timeouts  # rare true episode ends
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, OBS_DIM), dtype=np.float32)
        f["actions"] = np.clip(rng.standard_normal((n, ACT_DIM), dtype=np.float32), -1.0, 1.0)
        f["rewards"] = rng.standard_normal(n, dtype=np.float32)
        f["next_observations"] = rng.standard_normal((n, OBS_DIM), dtype=np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f.attrs["env_id"] = "Hopper-v4"
        f.attrs["ref_min_score"] = -20.272305  # D4RL's hopper reference returns
        f.attrs["ref_max_score"] = 3234.3


# ---------------------------------------------------------------- which scripts
def offline_scripts() -> dict[str, Path]:
    """Scripts of algorithms/ whose Args dataclass has a `dataset` field."""
    found = {}
    for path in sorted(ALGORITHMS.glob("*.py")):
        args_block = re.search(r"^class Args\b.*?(?=^\S)", path.read_text(), re.S | re.M)
        if args_block and re.search(r"^\s+dataset\s*:", args_block.group(0), re.M):
            found[path.stem] = path
    return found


# ---------------------------------------------------------------- analytic FLOP counts
# Multiply-adds (MACs) of the matrix multiplications of ONE update, for a minibatch of
# `batch`. Biases, activations, losses and the Adam step are ignored: they are O(params)
# or O(batch x width), small next to the matmuls. Conventions:
#   * a trained network costs forward + backward ~= 3x its forward (the backward computes
#     the gradients of the inputs and of the weights, each about one forward),
#   * a target network (no grad) costs 1x its forward,
#   * an ensemble of `members` networks costs `members` times one network.
# FLOPs = 2 x MACs.
def mlp_macs(sizes: list[int], batch: int) -> int:
    """MACs of one forward pass of an MLP with layer widths `sizes` (input first)."""
    return batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def bc_macs(obs_dim: int, act_dim: int, hidden: int, batch: int) -> int:
    """algorithms/bc.py: one MSE regression step of the actor obs -> 256 -> 256 -> action."""
    actor = mlp_macs([obs_dim, hidden, hidden, act_dim], batch)
    return 3 * actor  # actor forward + backward


def td3_bc_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, policy_freq: int = 2) -> int:
    """algorithms/td3_bc.py: critic step every update, actor step every `policy_freq` (TD3's d = 2)."""
    actor = mlp_macs([obs_dim, hidden, hidden, act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # DoubleCritic: 2 members, one batched pass
    critic_step = (
        1 * actor  # target actor forward on next_obs (no grad)
        + 1 * critic  # target critic forward, both members (no grad)
        + 3 * critic  # critic forward + backward, both members
    )
    actor_step = (
        3 * actor  # actor forward + backward
        + 2 * critic // 2  # critic.q1_frozen: member 0 only, forward + input gradients
        #                    (its weights are detached, so no weight gradients)
    )
    return critic_step + actor_step // policy_freq  # averaged per update


MACS_PER_UPDATE = {"bc": bc_macs, "td3_bc": td3_bc_macs}  # scripts not listed get "n/a"


# ---------------------------------------------------------------- measurements
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def matmul_gflops(device: torch.device, n: int = 2048, blocks: int = 5, block_seconds: float = 0.5) -> float:
    """Best sustained GFLOP/s of float32 n x n @ n x n matmuls (torch's default precision)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def run(reps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    per_call = max(run(2) / 2, 1e-6)  # the first calls also warm up the library
    per_call = max(run(2) / 2, 1e-6)
    reps = max(1, round(block_seconds / per_call))
    best = min(run(reps) for _ in range(blocks))  # least disturbed block
    return 2 * n**3 * reps / best / 1e9


def time_script(name: str, script: Path, dataset: Path, runs_dir: Path, updates: int, threads: int, device: str) -> dict:
    """Run one script for `updates` updates; returns its results.json, or {"error": ...}."""
    command = [sys.executable, str(script), "--dataset", str(dataset), "--num-updates", str(updates),
               "--eval-every", str(updates), "--eval-episodes", "1", "--checkpoint-every", str(updates),
               "--batch-size", "256", "--threads", str(threads), "--device", device, "--runs-dir", str(runs_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True)
    results = sorted(runs_dir.glob("*/results.json"))
    if done.returncode != 0 or not results:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    return json.loads(results[-1].read_text())


# ---------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(rows: list[dict], peak: float, threads: int, device: torch.device, updates: int, command: str) -> str:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Training speed (updates per second)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, python {platform.python_version()}, threads {threads}, device {device} ({device_name})",
        f"- float32 matmul peak (2048x2048 @ 2048x2048, best block): {peak:.1f} GFLOP/s",
        f"- data: synthetic hopper-shaped D4RL file, {NUM_TRANSITIONS:,} transitions, obs {OBS_DIM}-d, action {ACT_DIM}-d; "
        f"{updates} updates per script, batch 256, evaluation time excluded",
        "- GFLOP per update: analytic count of the matmuls (benchmarks/speed.py, `MACS_PER_UPDATE`)",
        f"- command: `{command}`",
        "",
        "| script | updates/s | GFLOP / update | achieved GFLOP/s | % of matmul peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            error = row["error"].replace("|", "\\|")  # keep the table intact
            lines.append(f"| {row['name']} | failed: {error} | | | |")
            continue
        ups = row["updates_per_second"]
        if row["gflop"] is None:
            lines.append(f"| {row['name']} | {ups:.1f} | n/a | n/a | n/a |")
            continue
        achieved = ups * row["gflop"]
        lines.append(f"| {row['name']} | {ups:.1f} | {row['gflop']:.4f} | {achieved:.2f} | {100 * achieved / peak:.1f} % |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", help="scripts to time, e.g. bc td3_bc (default: every offline script)")
    parser.add_argument("--updates", type=int, default=3000, help="updates per script (default: 3000)")
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=default_threads, help=f"torch CPU threads (default: all cores, {default_threads})")
    parser.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu" or "cuda" (default: auto)')
    parser.add_argument("--out", default=str(PROJECT / "benchmarks" / "results" / "speed.md"), help="markdown file to write")
    args = parser.parse_args()
    if args.updates < 1 or args.threads < 1:
        sys.exit("error: --updates and --threads must be positive")

    scripts = offline_scripts()
    if args.algos:
        unknown = [a for a in args.algos if a not in scripts]
        if unknown:
            sys.exit(f"error: {', '.join(unknown)}: not an offline script (Args without a `dataset` field) in "
                     f"{ALGORITHMS}; choose from {', '.join(sorted(scripts))}")
        scripts = {a: scripts[a] for a in args.algos}
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0], PROJECT)] + sys.argv[1:])
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)

    print(f"measuring float32 matmul throughput on {device} with {args.threads} thread(s) ...", file=sys.stderr)
    peak = matmul_gflops(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        dataset = Path(tmp) / "synthetic-hopper.hdf5"
        write_synthetic_dataset(dataset)
        for name, script in scripts.items():
            print(f"running {name} for {args.updates} updates ...", file=sys.stderr)
            result = time_script(name, script, dataset, Path(tmp) / "runs" / name, args.updates, args.threads, str(device))
            if "error" in result:
                print(f"  {name} failed: {result['error']}", file=sys.stderr)
                rows.append({"name": name, "error": result["error"]})
                continue
            counter = MACS_PER_UPDATE.get(name)
            gflop = 2 * counter(OBS_DIM, ACT_DIM, HIDDEN, 256) / 1e9 if counter else None
            rows.append({"name": name, "updates_per_second": result["updates_per_second"], "gflop": gflop})

    text = report(rows, peak, args.threads, device, args.updates, command)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    sys.exit(1 if any("error" in row for row in rows) else 0)


if __name__ == "__main__":
    main()
