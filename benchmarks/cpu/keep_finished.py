"""Keep the light files of every finished run: copy results.json and config.yaml of each run in RUNS whose last
evaluation reached its config's num_updates, or which its divergence rule stopped (a result too), into KEPT/<run>/.
The Hopper runners call it after each part and put KEPT back into RUNS at their next call, so a later session
reruns nothing. --algos / --datasets limit it to runs named <algo>__<dataset>__... with those names.

    python benchmarks/cpu/keep_finished.py RUNS KEPT [--algos mopo morel] [--datasets shipped-hopper-medium]
"""

import argparse
import json
import os
import shutil

import yaml

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("runs")
parser.add_argument("kept")
parser.add_argument("--algos", nargs="*")
parser.add_argument("--datasets", nargs="*", help="as in the run folders' names, e.g. shipped-hopper-medium")
args = parser.parse_args()
for name in sorted(os.listdir(args.runs)):
    parts = name.split("__")
    wanted = len(parts) >= 3 and (not args.algos or parts[0] in args.algos)
    if not wanted or (args.datasets and parts[1] not in args.datasets):
        continue
    folder = os.path.join(args.runs, name)
    try:
        results = json.load(open(os.path.join(folder, "results.json")))
        config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
    except (OSError, ValueError, yaml.YAMLError):
        continue
    steps = [e["step"] for e in results.get("evaluations", [])]
    done = (steps and max(steps) >= config["num_updates"]) or results.get("stopped")
    if done and not os.path.isdir(os.path.join(args.kept, name)):
        os.makedirs(os.path.join(args.kept, name))
        for file in ("results.json", "config.yaml"):
            shutil.copy(os.path.join(folder, file), os.path.join(args.kept, name, file))
        print(f"kept {name}")
