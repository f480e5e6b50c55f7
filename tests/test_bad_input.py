"""Bad input ends a run with one line, and nothing a run wrote is lost (STYLE.md: "Errors a user
can act on", "Runs, logs, results").

Every bad-input case checks: a non-zero exit, exactly one line on stderr (tqdm's bars and `note:`
lines aside) that starts with "error:" and names the problem, no traceback, and that nothing was
made or changed that the case must leave alone.

Most cases call the script's main() in this process, with sys.argv set (`call`), to save the 2 s
of imports a fresh interpreter costs per case on a small machine: every case that ends before
training, and the resumed runs. test_in_process_matches_command_line shows both report the same
line. Runs that are started fresh, killed, or compared with another are commands (`run`).

ALGORITHMS_DIR points these tests at another copy of the scripts (by default algorithms/), e.g.
an older commit's: `git worktree add /tmp/old <commit>` and
`ALGORITHMS_DIR=/tmp/old/algorithms python -m pytest tests/test_bad_input.py -n 2`.
"""

import ast
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import typing
import warnings
from typing import Optional

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ALGORITHMS, SHIPPED, load_script
from filelock import FileLock
from scripts import SMOKE_DATASET, args_fields, script_names, smoke_dataset, tiny_args

ALGORITHMS_DIR = os.environ.get("ALGORITHMS_DIR", ALGORITHMS)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
OTHER_DATASET = os.path.join(SHIPPED, "pendulum-medium.hdf5")
OFFLINE = [n for n in script_names() if "dataset" in args_fields(n)]
RESUMABLE = [n for n in script_names() if "resume" in args_fields(n)]
MODEL_BASED = [n for n in script_names() if "dynamics_members" in args_fields(n)]
# tqdm's progress bars go to stderr: "50%|####  | ...", "12it/s", "dynamics: 2epoch [00:01, ...]"
PROGRESS = re.compile(r"it/s|s/it|%\||\[\d+:\d\d")


# ---------------------------------------------------------------------------- helpers
def script_path(name: str) -> str:
    return os.path.join(ALGORITHMS_DIR, name + ".py")


def with_flags(argv: list, flags: dict) -> list:
    """`argv` with each --flag set to its value: replaced where present, appended where not."""
    argv = list(argv)
    for flag, value in flags.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return argv


def without_flag(argv: list, flag: str) -> list:
    if flag not in argv:
        return list(argv)
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def run(name: str, argv: list, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """The script as a command, on one thread."""
    return subprocess.run(
        [sys.executable, script_path(name), *map(str, argv)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
    )


def call(name: str, argv: list, capsys, monkeypatch) -> tuple[int, str]:
    """main() of the script in this process; returns the exit code and stderr as the interpreter
    would give them: sys.exit("msg") prints msg and exits 1, any other exception is a traceback, and
    warnings are shown under Python's default filters (as the command would print them)."""
    module = load_script(script_path(name))
    monkeypatch.setattr(sys, "argv", [script_path(name), *map(str, argv)])
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module=module.__name__)
        try:
            module.main()
            code, tail = 0, ""
        except SystemExit as e:
            code, tail = e.code, ""
            if isinstance(code, str):
                code, tail = 1, code + "\n"
            code = code or 0
        except Exception:
            code, tail = 1, traceback.format_exc()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return code, capsys.readouterr().err + shown + tail


def problem_lines(stderr: str) -> list[str]:
    """stderr less blank lines, progress bars and `note:` lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not PROGRESS.search(line) and not line.startswith("note:")
    ]


def one_error_line(code: int, stderr: str, *names: str) -> str:
    """The check every bad input passes: exit != 0, no traceback, one line "error: ..." naming `names`."""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code != 0, f"exit code 0 for bad input; stderr:\n{stderr[-3000:]}"
    lines = problem_lines(stderr)
    assert len(lines) == 1, "expected one error line, got:\n" + "\n".join(lines[-40:])
    assert lines[0].startswith("error:"), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def run_dirs(runs_dir, name: str) -> list[str]:
    return sorted(glob.glob(os.path.join(str(runs_dir), f"{name}__*")))


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes."""
    files = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def truncate_to_half(path) -> None:
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def results_of(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def same(a, b) -> bool:
    """Equal, down to every tensor of a (nested) state dict."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def write_dataset(path, arrays: dict, attrs: dict) -> None:
    """A D4RL-layout hdf5 file."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """finished_run(name): the run directory of a finished tiny run of the script, made once per test
    session (shared by the xdist workers through a lock); tests copy it before they touch it."""
    root = tmp_path_factory.getbasetemp()
    root = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "finished_runs"
    root.mkdir(exist_ok=True)

    def get(name: str) -> str:
        runs = root / name
        with FileLock(str(root / f"{name}.lock")):
            if not (root / f"{name}.done").exists():
                shutil.rmtree(runs, ignore_errors=True)
                # a constant learning rate, so that a resume may extend the budget (see the cosine test below)
                constant_lr = ["--no-cosine-actor-lr"] if "cosine_actor_lr" in args_fields(name) else []
                result = run(name, [*tiny_args(name, runs_dir=str(runs)), *constant_lr], cwd=root)
                assert result.returncode == 0, result.stderr[-3000:]
                (root / f"{name}.done").touch()
        (run_dir,) = run_dirs(runs, name)
        return run_dir

    return get


def copy_run(run_dir: str, tmp_path) -> str:
    copy = tmp_path / "runs" / os.path.basename(run_dir)
    shutil.copytree(run_dir, copy)
    return str(copy)


# ---------------------------------------------------------------------------- 1. bad numbers
def bad_number_cases():
    for name in script_names():
        fields = args_fields(name)
        budget = "num_updates" if "num_updates" in fields else "total_timesteps"
        cases = [
            (budget, "0"),
            (budget, "-5"),
            ("batch_size", "0"),
            ("batch_size", "-1"),
            ("gamma", "2"),
            ("threads", "-1"),
            ("eval_every", "0"),
            ("checkpoint_every", "0"),
            ("eval_episodes", "0"),
            ("hidden_dim", "0"),
            ("real_ratio", "1.5"),
            ("device", "tpu"),
        ]
        for field, value in cases:
            if field in fields:
                yield pytest.param(name, field, value, id=f"{name}-{field}={value}")


@pytest.mark.parametrize("name, field, value", list(bad_number_cases()))
def test_bad_number_is_one_line_before_anything(name, field, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    flag = "--" + field.replace("_", "-")
    argv = with_flags(tiny_args(name, runs_dir=str(runs)), {flag: value})
    code, stderr = call(name, argv, capsys, monkeypatch)
    one_error_line(code, stderr, flag, value)
    assert not run_dirs(runs, name), "a run directory was made before the bad value was refused"
    assert not os.path.exists(runs) or not os.listdir(runs), os.listdir(runs)


def bad_choice_cases():
    """Every field a script lists in its CHOICES (a str option with a fixed set of values), given a value off it
    (read from the source: the scripts are not imported at collection)."""
    for name in script_names():
        tree = ast.parse(open(script_path(name)).read())
        for node in tree.body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CHOICES"]:
                for field in ast.literal_eval(node.value):
                    yield pytest.param(name, field, id=f"{name}-{field}")


@pytest.mark.parametrize("name, field", list(bad_choice_cases()))
def test_bad_choice_is_one_line_before_anything(name, field, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    flag = "--" + field.replace("_", "-")
    code, stderr = call(
        name, with_flags(tiny_args(name, runs_dir=str(runs)), {flag: "no-such-choice"}), capsys, monkeypatch
    )
    one_error_line(code, stderr, flag, "no-such-choice")
    assert not run_dirs(runs, name), "a run directory was made before the bad value was refused"


# ---------------------------------------------------------------------------- 2. YAML values of the wrong type
def yaml_cases():
    cases = [
        ("normalize_observations", '"false"'),
        ("normalize_observations", '"no"'),
        ("batch_size", "64.9"),
        ("batch_size", "true"),
    ]
    for name in script_names():
        for field, text in cases:
            if field in args_fields(name):
                yield pytest.param(name, field, text, id=f"{name}-{field}={text}")


@pytest.mark.parametrize("name, field, text", list(yaml_cases()))
def test_yaml_value_of_wrong_type_is_one_line(name, field, text, tmp_path, capsys, monkeypatch):
    """No silent cast: "false" is not False, 64.9 is not 64, true is not 1."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"{field}: {text}\n")
    runs = tmp_path / "runs"
    argv = without_flag(tiny_args(name, runs_dir=str(runs)), "--" + field.replace("_", "-")) + ["--config", config]
    code, stderr = call(name, argv, capsys, monkeypatch)
    one_error_line(code, stderr, field)
    assert not run_dirs(runs, name)


@pytest.mark.parametrize("name", script_names())
def test_unknown_yaml_key_is_one_line(name, tmp_path, capsys, monkeypatch):
    """A YAML override naming no Args field ends the run with one line that names it, before any work (in this
    process, as every check here; test_in_process_matches_command_line ties that to the command line)."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text("no_such_field: 1\n")
    runs = tmp_path / "runs"
    code, stderr = call(name, [*tiny_args(name, runs_dir=str(runs)), "--config", config], capsys, monkeypatch)
    one_error_line(code, stderr, "no_such_field")
    assert not run_dirs(runs, name)


# ---------------------------------------------------------------------------- 3. runs started in the same second
@pytest.mark.parametrize("name", ["bc", "td3_bc"])
def test_runs_started_together_get_their_own_directories(name, tmp_path):
    """Two runs of one script, dataset and seed started at once, with different settings, each get
    their own directory, config.yaml and results.json. The directory names of the next two minutes
    are taken beforehand by "another run", so both collide with a name in use whatever second they
    reach it, and that run's files must stay as they are."""
    runs = tmp_path / "runs"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", SMOKE_DATASET).strip("-")
    now = int(time.time())
    taken = [runs / f"{name}__{safe}__0__{t}" for t in range(now - 2, now + 120)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("another run's config\n")
    settings = [{"--hidden-dim": 64, "--batch-size": 32}, {"--hidden-dim": 48, "--batch-size": 40}]
    processes = [
        subprocess.Popen(
            [sys.executable, script_path(name), *map(str, with_flags(tiny_args(name, runs_dir=str(runs)), s))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=tmp_path,
        )
        for s in settings
    ]
    for p in processes:
        _, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    for folder in taken:
        assert snapshot(folder) == {"config.yaml": b"another run's config\n"}, f"{folder} was written into"
    made = sorted(set(run_dirs(runs, name)) - {str(t) for t in taken})
    assert len(made) == 2, made
    configs = [yaml.safe_load(open(os.path.join(d, "config.yaml"))) for d in made]
    got = sorted((c["hidden_dim"], c["batch_size"]) for c in configs)
    assert got == sorted((s["--hidden-dim"], s["--batch-size"]) for s in settings)
    for d in made:
        assert results_of(d)["evaluations"], d


# ---------------------------------------------------------------------------- 4. a refused resume writes nothing
@pytest.mark.parametrize("name", RESUMABLE)
def test_refused_resume_writes_nothing(name, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_run(finished_run(name), tmp_path)
    before = snapshot(run_dir)
    for flags, named in ((["--hidden-dim", "32"], "--hidden-dim"), (["--dataset", OTHER_DATASET], "--dataset")):
        code, stderr = call(name, ["--resume", run_dir, *flags], capsys, monkeypatch)
        one_error_line(code, stderr, named)
        assert snapshot(run_dir) == before, f"a refused resume ({' '.join(flags)}) changed the run directory"

    # the run still continues, and settings of how long and how often may change
    code, stderr = call(name, ["--resume", run_dir, "--num-updates", 60], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    assert results_of(run_dir)["evaluations"][-1]["step"] == 60
    allowed = ["--num-updates", 80, "--eval-every", 30, "--checkpoint-every", 30, "--log-every", 15]
    allowed += ["--threads", 0, "--device", "cpu"]
    code, stderr = call(name, ["--resume", run_dir, *allowed], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    assert [e["step"] for e in results_of(run_dir)["evaluations"]][-2:] == [60, 80]
    config = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    assert config["num_updates"] == 80 and config["hidden_dim"] == 64


@pytest.mark.parametrize("name", [n for n in RESUMABLE if "cosine_actor_lr" in args_fields(n)])
def test_resume_refuses_a_new_budget_under_a_cosine_schedule(name, tmp_path, capsys, monkeypatch):
    """Where the actor's learning rate follows a cosine over --num-updates, the budget is part of what
    is learned: a resume that changes it is refused in one line that says why, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    # the schedule switched on (rambo's default is the authors' constant rate)
    result = run(name, tiny_args(name, runs_dir=str(tmp_path / "runs")) + ["--cosine-actor-lr"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "runs", name)
    before = snapshot(run_dir)
    code, stderr = call(name, ["--resume", run_dir, "--num-updates", 60], capsys, monkeypatch)
    one_error_line(code, stderr, "--num-updates")
    assert "cosine" in stderr and snapshot(run_dir) == before


# ---------------------------------------------------------------------------- 5. resume off every interval boundary
def kill_at_second_checkpoint(argv: list, name: str, runs_dir, log) -> str:
    """Start the run, SIGKILL it as soon as its checkpoint.pt is replaced for the first time (the
    second checkpoint is written), and return its run directory."""
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, script_path(name), *map(str, argv)], stdout=subprocess.DEVNULL, stderr=err, env=ENV
        )
        seen, deadline = set(), time.time() + 300
        while process.poll() is None and time.time() < deadline and len(seen) < 2:
            for run_dir in run_dirs(runs_dir, name):
                with contextlib.suppress(FileNotFoundError):
                    seen.add(os.stat(os.path.join(run_dir, "checkpoint.pt")).st_ino)  # a new file each time
            time.sleep(0.005)
        process.kill()
        process.wait()
    assert len(seen) == 2, "the run ended before its second checkpoint: " + open(log).read()[-3000:]
    (run_dir,) = run_dirs(runs_dir, name)
    return run_dir


@pytest.mark.parametrize("name", RESUMABLE)
def test_resume_off_interval_boundaries(name, tmp_path, capsys, monkeypatch):
    """Checkpoints every 175 updates, evaluations every 150, logs every 75, rollouts every 100: a
    run killed after its checkpoint of step 350 resumes there, between every other interval, and
    finishes; td3_bc, mopo and mobile (a model-free and two model-based ones, to keep the time down) end with
    the evaluations and weights of the same run never killed. (Half the budget of the first version, 1000
    updates, which made this the slowest group of CI: 377 s over all scripts.)"""
    intervals = {"--num-updates": 500, "--checkpoint-every": 175, "--eval-every": 150, "--log-every": 75}
    if "rollout_every" in args_fields(name):
        intervals["--rollout-every"] = 100
    if "dynamics_cache_dir" in args_fields(name):  # one dynamics ensemble trained for both runs
        intervals["--dynamics-cache-dir"] = tmp_path / "dynamics"

    def argv(runs_dir):
        return with_flags(tiny_args(name, runs_dir=str(runs_dir)), intervals)

    run_dir = kill_at_second_checkpoint(argv(tmp_path / "killed"), name, tmp_path / "killed", tmp_path / "killed.log")
    killed_at = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)["step"]
    assert killed_at == 350
    monkeypatch.chdir(tmp_path)
    code, stderr = call(name, ["--resume", run_dir], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    assert [e["step"] for e in results_of(run_dir)["evaluations"]] == [150, 300, 450, 500]
    if name not in ("td3_bc", "mopo", "mobile"):
        return

    whole = run(name, argv(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    (whole_dir,) = run_dirs(tmp_path / "whole", name)
    expected = results_of(whole_dir)["evaluations"]
    assert [e["step"] for e in expected] == [150, 300, 450, 500]
    assert results_of(run_dir)["evaluations"] == expected
    final = [
        torch.load(os.path.join(d, "checkpoint.pt"), map_location="cpu", weights_only=False)
        for d in (run_dir, whole_dir)
    ]
    assert final[0]["step"] == final[1]["step"] == 500
    for key, state in final[1]["objects"].items():
        for part, value in state.items():
            assert same(value, final[0]["objects"][key][part]), f"{key}.{part} differs after the resume"


# ---------------------------------------------------------------------------- 6. a truncated checkpoint
@pytest.mark.parametrize("name", RESUMABLE)
def test_truncated_checkpoint_is_one_line(name, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_run(finished_run(name), tmp_path)
    truncate_to_half(os.path.join(run_dir, "checkpoint.pt"))
    before = snapshot(run_dir)
    code, stderr = call(name, ["--resume", run_dir, "--num-updates", 60], capsys, monkeypatch)
    one_error_line(code, stderr, os.path.join(run_dir, "checkpoint.pt"))
    assert snapshot(run_dir) == before, "a failed resume changed the run directory"


# ---------------------------------------------------------------------------- 7. a truncated dynamics cache
@pytest.mark.parametrize("name", MODEL_BASED)
def test_truncated_dynamics_cache_is_moved_aside_and_retrained(name, tmp_path, finished_run):
    cached_runs = os.path.dirname(finished_run(name))
    runs = tmp_path / "runs"
    shutil.copytree(os.path.join(cached_runs, "dynamics"), runs / "dynamics")
    (cache,) = glob.glob(str(runs / "dynamics" / "*.pt"))
    truncate_to_half(cache)
    truncated = open(cache, "rb").read()
    result = run(name, tiny_args(name, runs_dir=str(runs)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if "unreadable" in line]
    assert said and cache + ".corrupt" in said[0], result.stdout[-3000:]
    assert open(cache + ".corrupt", "rb").read() == truncated
    assert "dynamics: trained" in result.stdout
    saved = torch.load(cache, map_location="cpu", weights_only=False)
    assert {"fingerprint", "model", "log"} <= set(saved)
    assert not glob.glob(str(runs / "dynamics" / "*.tmp"))


# ---------------------------------------------------------------------------- 8. a runs folder that cannot be made
@pytest.mark.parametrize("name", script_names())
def test_unusable_runs_dir_is_one_line_before_the_data(name, tmp_path, capsys, monkeypatch):
    """--runs-dir below a regular file. The dataset (or environment) given does not exist either: the
    line must be about --runs-dir, which shows the folder is checked before the data is loaded."""
    monkeypatch.chdir(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    argv = tiny_args(name, dataset=str(tmp_path / "missing.hdf5"), runs_dir=str(afile / "runs"))
    if "dataset" not in args_fields(name):
        argv = with_flags(argv, {"--env-id": "NoSuchEnvironment-v0"})
    code, stderr = call(name, argv, capsys, monkeypatch)
    one_error_line(code, stderr, "--runs-dir")
    assert afile.read_text() == "not a folder\n"


# ---------------------------------------------------------------------------- 9. datasets
@pytest.mark.parametrize("name", OFFLINE)
def test_one_transition_dataset_is_one_line(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "one_row.hdf5"
    arrays = dict(
        observations=np.array([[1.0, 0.0, 0.1]], np.float32),
        actions=np.array([[0.5]], np.float32),
        rewards=np.array([-1.0], np.float32),
        next_observations=np.array([[0.99, 0.1, 0.2]], np.float32),
        terminals=np.array([True]),
        timeouts=np.array([False]),
    )
    write_dataset(path, arrays, {"env_id": "Pendulum-v1", "ref_min_score": -1379.5, "ref_max_score": -160.9})
    code, stderr = call(name, tiny_args(name, dataset=str(path), runs_dir=str(tmp_path / "runs")), capsys, monkeypatch)
    one_error_line(code, stderr, str(path))
    assert not run_dirs(tmp_path / "runs", name)


@pytest.mark.parametrize("name", OFFLINE)
def test_dataset_without_reference_returns_reports_raw_returns(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "no_reference.hdf5"
    shutil.copy(smoke_dataset(name), path)
    with h5py.File(path, "a") as f:
        del f.attrs["ref_min_score"], f.attrs["ref_max_score"]
    code, stderr = call(name, tiny_args(name, dataset=str(path), runs_dir=str(tmp_path / "runs")), capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    notes = [line for line in stderr.splitlines() if line.startswith("note:")]
    assert any("normalis" in line for line in notes), stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "runs", name)
    text = open(os.path.join(run_dir, "results.json")).read()
    assert "NaN" not in text and "Infinity" not in text, text
    results = json.loads(text)
    assert results["last_normalized_score"] is None and results["best_normalized_score"] is None
    assert all(e["normalized_score"] is None for e in results["evaluations"])
    assert isinstance(results["last_return"], float) and np.isfinite(results["last_return"])
    if smoke_dataset(name) == SMOKE_DATASET:
        assert -2000 < results["last_return"] <= 0  # a Pendulum return


# ---------------------------------------------------------------------------- 10. a write that fails (full disk)
FULL_DISK = [OSError(28, "No space left on device"), RuntimeError("[enforce fail] file write failed")]


@pytest.mark.parametrize("error", FULL_DISK, ids=["OSError", "RuntimeError"])
@pytest.mark.parametrize("name", script_names())
def test_failed_checkpoint_write_keeps_the_previous_one(name, error, tmp_path, monkeypatch):
    module = load_script(script_path(name))
    path = str(tmp_path / "checkpoint.pt")
    torch.save({"step": 1, "note": "the previous checkpoint"}, path)
    previous = open(path, "rb").read()

    def full_disk(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoi")
        raise error

    monkeypatch.setattr(module.torch, "save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        module.save_checkpoint(path, 2, {"net": torch.nn.Linear(2, 2)}, {"history": []})
    message = str(exit_info.value.code)
    assert message.startswith("error:") and path in message and "\n" not in message, message
    assert open(path, "rb").read() == previous
    assert not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("name", script_names())
def test_failed_results_write_keeps_the_previous_file(name, tmp_path, monkeypatch):
    module = load_script(script_path(name))
    path = tmp_path / "results.json"
    path.write_text('{"evaluations": [1]}')

    def full_disk(obj, f, **kwargs):
        f.write('{"evaluat')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.json, "dump", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        module.write_results(str(tmp_path), {"evaluations": [1, 2]})
    message = str(exit_info.value.code)
    assert message.startswith("error:") and str(path) in message and "\n" not in message, message
    assert path.read_text() == '{"evaluations": [1]}'
    assert not os.path.exists(str(path) + ".tmp")


# ---------------------------------------------------------------------------- the config and run blocks' pieces
def test_value_fits():
    value_fits = load_script(script_path("td3_bc")).value_fits
    assert value_fits(True, bool) and value_fits(False, bool)
    assert not value_fits("false", bool) and not value_fits("no", bool) and not value_fits(0, bool)
    assert value_fits(64, int)
    assert not value_fits(64.9, int) and not value_fits(64.0, int) and not value_fits(True, int)
    assert not value_fits("64", int)
    assert value_fits(3, float) and value_fits(3.5, float) and not value_fits(False, float)
    assert value_fits(None, Optional[float]) and value_fits(0.5, Optional[float])
    assert not value_fits("0.5", Optional[float])
    assert value_fits("runs", str) and value_fits(None, Optional[str]) and not value_fits(3, str)
    assert value_fits([1, 2, 3, 4], tuple[int, int, int, int]) and value_fits((1, 2, 3, 4), tuple[int, int, int, int])
    assert not value_fits([1, 2, 3], tuple[int, int, int, int]) and not value_fits(5, tuple[int, int, int, int])
    assert value_fits([1, 2], tuple[int, ...]) and not value_fits([1, 2, 3, 4.5], tuple[int, ...])


def test_check_args():
    module = load_script(script_path("td3_bc"))
    Args, hints = module.Args, typing.get_type_hints(module.Args)

    def problem(limits=None, **values):
        return module.check_args(Args(**values), hints, module.LIMITS if limits is None else limits)

    assert problem() is None
    for values, flag in (
        ({"num_updates": 0}, "--num-updates 0"),
        ({"batch_size": -1}, "--batch-size -1"),
        ({"gamma": 0.0}, "--gamma 0.0"),
        ({"gamma": 1.01}, "--gamma 1.01"),
        ({"tau": -0.1}, "--tau -0.1"),
        ({"tau": 1.5}, "--tau 1.5"),
        ({"actor_lr": 0.0}, "--actor-lr 0.0"),
        ({"threads": -1}, "--threads -1"),
        ({"alpha": -1.0}, "--alpha -1.0"),  # the script's LIMITS
    ):
        found = problem(**values)
        assert found is not None and found.startswith(flag) and "out of range" in found, (values, found)
    # the edges of closed ranges, 0 where the default is 0, any seed
    for values in ({"gamma": 1.0}, {"tau": 0.0}, {"tau": 1.0}, {"threads": 0}, {"seed": -3}, {"alpha": 0.0}):
        assert problem(**values) is None, values
    assert problem(limits={}, alpha=-1.0) is None  # a float without a rule or limit is not checked
    assert "(0, 1)" in problem(limits={"alpha": "(0, 1)"}, alpha=1.0)
    assert problem(limits={"alpha": "(0, 1)"}, alpha=0.5) is None


def test_train_clock(monkeypatch):
    module = load_script(script_path("td3_bc"))
    now = [100.0]
    monkeypatch.setattr(module, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: now[0])}))
    clock = module.TrainClock(warmup=1)
    now[0] += 5.0  # the first update (torch.compile's warm-up) takes 5 s: not timed, not counted
    clock.tick()
    assert clock.state_dict() == {"seconds": 0.0, "updates": 0}
    for _ in range(4):
        now[0] += 0.5
        clock.tick()
    with clock.paused():  # an evaluation: its 30 s are not training time
        now[0] += 30.0
        assert clock.state_dict() == {"seconds": 2.0, "updates": 4}
        assert clock.rate() == 2.0
    now[0] += 1.0
    clock.tick()
    assert clock.state_dict() == {"seconds": 3.0, "updates": 5}

    resumed = module.TrainClock(clock.state_dict(), warmup=1)  # a resume: its first update is not counted either
    now[0] += 7.0
    resumed.tick()
    now[0] += 1.0
    resumed.tick()
    with resumed.paused():
        assert resumed.state_dict() == {"seconds": 4.0, "updates": 6}
        assert resumed.rate() == 1.5
    assert module.TrainClock().rate() == 0.0
    # by default the first three updates are left out: TD3's two compiled variants (with and
    # without the delayed actor step) are both compiled within them
    default = module.TrainClock()
    for _ in range(3):
        now[0] += 8.0
        default.tick()
    now[0] += 1.0
    default.tick()
    assert default.state_dict() == {"seconds": 1.0, "updates": 1}


# ---------------------------------------------------------------------------- the in-process shortcut
def test_in_process_matches_command_line(tmp_path, capsys, monkeypatch):
    """call() (main() in this process) reports what the command reports."""
    monkeypatch.chdir(tmp_path)
    argv = with_flags(tiny_args("td3_bc", runs_dir=str(tmp_path / "runs")), {"--num-updates": 0})
    result = run("td3_bc", argv, cwd=tmp_path)
    code, stderr = call("td3_bc", argv, capsys, monkeypatch)
    assert (code != 0, problem_lines(stderr)[-1:]) == (result.returncode != 0, problem_lines(result.stderr)[-1:])
    one_error_line(result.returncode, result.stderr, "--num-updates")
