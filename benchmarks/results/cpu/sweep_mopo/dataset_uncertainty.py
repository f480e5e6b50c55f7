"""One-off (benchmarks/results/cpu/sweep_mopo/RUN.md): MOPO's aleatoric u(s, a) on every (s, a) of the dataset,
from the sweep's cached ensembles: the statistic the authors' sweep normalises its x-axis by.
Run from the project root after the sweep: python benchmarks/results/cpu/sweep_mopo/dataset_uncertainty.py"""

import sys

import torch
import yaml

sys.path.insert(0, "tests")
from conftest import load_script  # noqa: E402

mopo = load_script("mopo")
torch.set_num_threads(1)
config = yaml.safe_load(open("benchmarks/cpu/configs/mopo/shipped/pendulum-medium-replay.yaml"))
for seed in (0, 1):
    args = mopo.Args(**config, seed=seed)
    data = mopo.load_dataset(args.dataset, torch.device("cpu"))
    model = mopo.load_or_train_dynamics(
        data, mopo.dynamics_settings(args), seed, "runs/sweep_mopo/dynamics", None, torch.device("cpu")
    )
    chunks = []
    with torch.no_grad():
        for i in range(0, len(data.rewards), 4096):
            _, _, mean, std = model.step(data.observations[i : i + 4096], data.actions[i : i + 4096], all_members=True)
            chunks.append(mopo.uncertainty_of(mean, std, "aleatoric"))
    u, r = torch.cat(chunks), data.rewards
    print(
        f"seed {seed}: n {len(u)} u max {u.max():.3f} mean {u.mean():.3f} std {u.std():.3f} min {u.min():.3f}; "
        f"reward range [{r.min():.2f}, {r.max():.2f}] std {r.std():.2f}"
    )
