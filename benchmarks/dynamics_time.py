"""Time to a trained dynamics ensemble: epochs, minutes and holdout MSE, epoch by epoch.

Trains the shared ensemble of algorithms/mopo.py (the same block mbpo.py and morel.py carry) once,
with the authors' early stopping, and reports when the mean holdout MSE of the elites (the five
members with the lowest best-so-far error, as OfflineRL-Kit reports it) first reached each target.
The ensemble is written to the cache folder the model-based scripts read, so a later MOPO, MOReL or
MBPO run with the same dynamics settings, dataset and seed reuses it.

    python benchmarks/dynamics_time.py --dataset shipped/hopper-medium --threads 2 --bf16
    python benchmarks/dynamics_time.py --dataset shipped/hopper-medium-replay --threads 1

A finished ensemble in the cache is not trained again: its saved log (with the time of every
epoch) is reported instead. Appends one row per call to --out (markdown).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_mopo():
    spec = importlib.util.spec_from_file_location("mopo", os.path.join(ROOT, "algorithms", "mopo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def elite_curve(log: dict, elites: int) -> np.ndarray:
    """Mean over the `elites` lowest best-so-far member errors, after every epoch."""
    best = np.minimum.accumulate(np.array(log["history"]), axis=0)
    return np.sort(best, axis=1)[:, :elites].mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shipped/hopper-medium-replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="--dynamics-bf16")
    parser.add_argument("--lr", type=float, default=1e-3, help="--dynamics-lr")
    parser.add_argument("--max-epochs", type=int, default=0, help="--dynamics-max-epochs (0: the authors' stop)")
    parser.add_argument("--cosine-epochs", type=int, default=0, help="--dynamics-cosine-epochs")
    parser.add_argument("--cache-dir", default="runs/cpu-hopper/dynamics")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.003, 0.0025, 0.0019])
    parser.add_argument("--out", default="benchmarks/results/cpu/dynamics_time.md")
    a = parser.parse_args()

    mopo = load_mopo()
    args = mopo.Args(
        dataset=a.dataset,
        seed=a.seed,
        dynamics_bf16=a.bf16,
        dynamics_lr=a.lr,
        dynamics_cosine_epochs=a.cosine_epochs,
        dynamics_max_epochs=a.max_epochs,
        threads=a.threads,
        device="cpu",
    )
    mopo.set_seed(a.seed)
    device = mopo.pick_device("cpu", a.threads)
    try:
        data = mopo.load_dataset(a.dataset, device)
    except mopo.DatasetError as e:
        sys.exit(f"error: {e}")
    settings = mopo.dynamics_settings(args)
    model = mopo.load_or_train_dynamics(data, settings, a.seed, a.cache_dir, None, device)
    fingerprint = mopo.dynamics_fingerprint(data, settings, a.seed)
    key = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.name).strip("-")
    path = os.path.join(a.cache_dir, f"{safe}__seed{a.seed}__{key}.pt")  # as load_or_train_dynamics names it
    log = torch.load(path, map_location="cpu", weights_only=False)["log"]
    if "seconds" not in log:
        sys.exit(f"error: {path} was trained before epoch times were logged; delete it to time a new one")
    curve, seconds = elite_curve(log, model.num_elites), np.array(log["seconds"])
    print("epoch  minutes  elite holdout MSE")
    for e in sorted({*range(0, len(curve), 10), len(curve) - 1}):
        print(f"{e + 1:5d}  {seconds[e] / 60:7.1f}  {curve[e]:.5f}")
    reached = []
    for target in a.targets:
        hit = np.flatnonzero(curve <= target)
        reached.append(f"{hit[0] + 1} ep / {seconds[hit[0]] / 60:.1f} min" if len(hit) else "not reached")
    per_epoch = seconds[-1] / len(seconds)
    recipe = f"{a.lr:g}" + (f", cosine {a.cosine_epochs}" if a.cosine_epochs else "")
    recipe += f", cap {a.max_epochs}" if a.max_epochs else ""
    row = (
        f"| {a.dataset} | {a.threads} | {'bf16' if a.bf16 else 'fp32'} | {recipe} | {len(curve)} | "
        f"{seconds[-1] / 60:.1f} | {per_epoch:.2f} | {curve[-1]:.4f} | " + " | ".join(reached) + " |"
    )
    header = (
        "| dataset | threads | precision | lr | epochs | minutes | s / epoch | final elite MSE | "
        + " | ".join(f"≤ {t:g}" for t in a.targets)
        + " |\n|"
        + "---|" * (8 + len(a.targets))
    )
    print(header + "\n" + row)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    new = not os.path.exists(a.out)
    with open(a.out, "a") as f:
        if new:
            cpu = platform.machine()
            if os.path.exists("/proc/cpuinfo"):
                names = [
                    line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
                ]
                cpu = f"{names[0]}, {len(names)} logical CPUs" if names else cpu
            f.write(f"# Time to a trained ensemble (benchmarks/dynamics_time.py; torch {torch.__version__}, {cpu})\n\n")
            f.write(header + "\n")
        f.write(row + "\n")
    print(f"appended to {a.out}")


if __name__ == "__main__":
    main()
