"""Print a markdown table of D4RL-layout datasets: the bar an offline algorithm has to clear.

    python datasets/describe.py datasets/shipped/*.hdf5

For each file: environment, transitions, episodes, mean episode return of the behaviour
data and its normalised score (with the file's reference returns), and the file size.
"""

import os
import sys

import h5py
import numpy as np


def describe(path: str) -> str:
    with h5py.File(path, "r") as f:
        rewards, terminals, timeouts = f["rewards"][()], f["terminals"][()], f["timeouts"][()]
        attrs = dict(f.attrs)
    ends = terminals | timeouts
    ends[-1] = True
    returns = np.bincount(np.concatenate([[0], np.cumsum(ends[:-1])]), weights=rewards.astype(np.float64))
    lo, hi = float(attrs["ref_min_score"]), float(attrs["ref_max_score"])
    score = 100 * (returns.mean() - lo) / (hi - lo)
    name = "shipped/" + os.path.splitext(os.path.basename(path))[0]
    return (
        f"| `{name}` | {attrs['env_id']} | {len(rewards):,} | {len(returns)} | {returns.mean():.1f} ± "
        f"{returns.std():.1f} "
        f"| {score:.1f} | {lo:.1f} / {hi:.1f} | {os.path.getsize(path) / 1e6:.1f} MB |"
    )


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: python datasets/describe.py FILE.hdf5 [...]")
    print(
        "| dataset | environment | transitions | episodes | behaviour return | normalised score | reference min / "
        "max | size |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in sys.argv[1:]:
        print(describe(path))


if __name__ == "__main__":
    main()
