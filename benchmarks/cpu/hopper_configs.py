"""Write the Hopper configs of the CPU benchmark (benchmarks/cpu/hopper_model_free.sh) from the D4RL ones by the
CPU benchmark's one rule (benchmarks/cpu/run.sh): each model-free script's per-dataset settings of
benchmarks/configs/<algo>/hopper-<kind>-v2.yaml (the paper's or its named reference's) with only
  - the budget changed: 100,000 updates, 10 evaluation episodes every 10,000, a checkpoint every 10,000, and a
    phase counted in updates scaled like num_updates (BEAR's and UWAC's warm-up 40,000 of 1M: 4,000 of 100,000;
    for SAC-N and EDAC, whose D4RL budget is 3M, the same 100,000); and
  - alike for every script, every hidden layer 64 units wide (hidden_dim, BCQ's second_hidden_dim, BCQ's, BEAR's
    and UWAC's vae_hidden_dim);
and two named exceptions: the Pendulum table's, UWAC's Monte Carlo dropout passes, 10 instead of 100; and CRR's
width, which stays its reference's 256 on Hopper (KEEP_WIDTH): at 64 its critic diverges on Hopper's raw
observations (Q to 2.4e8 against at most about 530 reachable; README, "Model-free on the shipped Hopper data"),
which would measure the CPU rule rather than CRR. The file says so in its header.
The D4RL name becomes the shipped file's (hopper-medium-v2 -> shipped/hopper-medium). Run from the project root:
    python benchmarks/cpu/hopper_configs.py          # writes benchmarks/cpu/configs/<algo>/shipped/hopper-*.yaml
    python benchmarks/cpu/hopper_configs.py --check  # exit 1 if a written file differs from the rule
"""

import os
import sys

import yaml

ALGOS = "bc td3_bc iql awac crr awr cql bcq bear uwac sac_n edac rebrac".split()
DATASETS = ("hopper-medium-replay", "hopper-medium")
BUDGET = dict(num_updates=100_000, eval_every=10_000, eval_episodes=10, checkpoint_every=10_000)
WIDTHS = ("hidden_dim", "second_hidden_dim", "vae_hidden_dim")
KEEP_WIDTH = {"crr"}  # the reference's width kept (256): CRR's 64-wide critic diverges on raw Hopper observations
HEADER = """# CPU-scale Hopper benchmark (benchmarks/cpu/hopper_model_free.sh), written by
# benchmarks/cpu/hopper_configs.py from {source}
# by the one rule of the CPU benchmark: the D4RL settings with only the budget (100,000 updates,
# an evaluation of 10 episodes every 10,000) and, alike for every script, the width (64) changed.
{exception}"""
EXCEPTIONS = {
    "uwac": "# Named exception: 10 Monte Carlo dropout passes instead of 100 (as in the Pendulum table).\n",
    "crr": "# Named exception: the width stays the reference's 256; at 64 CRR's critic diverges on Hopper's raw\n"
    '# observations (README, "Model-free on the shipped Hopper data").\n',
}


def config(algo: str, dataset: str) -> tuple[str, dict]:
    source = f"benchmarks/configs/{algo}/{dataset}-v2.yaml"
    with open(source) as f:
        settings = yaml.safe_load(f)
    scale = BUDGET["num_updates"] / 1_000_000  # the phases counted in updates follow the paper's 1M
    settings["dataset"] = f"shipped/{dataset}"
    settings.update(BUDGET)
    for key in WIDTHS:
        if key in settings and algo not in KEEP_WIDTH:
            settings[key] = 64
    if "warmup_updates" in settings:
        settings["warmup_updates"] = round(settings["warmup_updates"] * scale)
    if algo == "uwac":
        settings["dropout_samples"] = 10
    return source, settings


def main() -> None:
    check = "--check" in sys.argv[1:]
    stale = []
    for algo in ALGOS:
        for dataset in DATASETS:
            source, settings = config(algo, dataset)
            header = HEADER.format(source=source, exception=EXCEPTIONS.get(algo, ""))
            text = header + yaml.safe_dump(settings, sort_keys=False)
            path = f"benchmarks/cpu/configs/{algo}/shipped/{dataset}.yaml"
            if check:
                if not os.path.isfile(path) or open(path).read() != text:
                    stale.append(path)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if stale:
        sys.exit(
            f"error: {len(stale)} Hopper config(s) differ from the rule ({stale[0]}, ...); "
            "run python benchmarks/cpu/hopper_configs.py"
        )
    print("checked" if check else "written", 2 * len(ALGOS), "Hopper configs")


if __name__ == "__main__":
    main()
