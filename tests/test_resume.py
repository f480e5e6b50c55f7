"""A run killed part way and resumed ends with the same numbers as one that was not killed."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from scripts import args_fields, script_names, tiny_args

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
# killed at its first checkpoint, so the resumed part crosses three checkpoints and evaluations (800 updates until
# 2026-12-07: half of that keeps every crossing and saves about 250 s of a CI run)
BUDGET = ["--num-updates", "400", "--eval-every", "100", "--checkpoint-every", "100", "--log-every", "50"]


def command(name, runs_dir):
    return [
        sys.executable,
        os.path.join(ROOT, "algorithms", name + ".py"),
        *tiny_args(name, runs_dir=runs_dir),
        *BUDGET,
    ]


def checkpoint_step(run_dir):
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        return 0
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["step"]
    except Exception:  # being replaced right now
        return 0


@pytest.mark.parametrize("name", [n for n in script_names() if "resume" in args_fields(n)])
def test_kill_and_resume(name, tmp_path):
    whole = subprocess.run(command(name, str(tmp_path / "whole")), capture_output=True, text=True, env=ENV, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    process = subprocess.Popen(
        command(name, str(tmp_path / "killed")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline and process.poll() is None:
        run_dirs = glob.glob(str(tmp_path / "killed" / f"{name}__*"))
        if run_dirs and checkpoint_step(run_dirs[0]) >= 100:
            run_dir = run_dirs[0]
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert run_dir is not None, "the run finished (or timed out) before it could be killed"
    killed_at = checkpoint_step(run_dir)
    assert killed_at < 400

    resumed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "algorithms", name + ".py"), "--resume", run_dir],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    (whole_dir,) = glob.glob(str(tmp_path / "whole" / f"{name}__*"))
    expected = json.load(open(os.path.join(whole_dir, "results.json")))
    got = json.load(open(os.path.join(run_dir, "results.json")))
    assert got["evaluations"] == expected["evaluations"]
    assert got["last_normalized_score"] == expected["last_normalized_score"]
    final_whole = torch.load(os.path.join(whole_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)[
        "objects"
    ]
    final_resumed = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)[
        "objects"
    ]
    for key, state in final_whole.items():
        if key.endswith("opt") or key == "optimizer":
            continue
        for param, value in state.items():
            same = (
                torch.equal(value, final_resumed[key][param])
                if torch.is_tensor(value)
                else value == final_resumed[key][param]
            )
            assert same, f"{key}.{param} differs after resume"
