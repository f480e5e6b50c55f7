"""Run a benchmark grid: algorithms x datasets x seeds, one run of algorithms/<algo>.py per cell.

Each cell runs its script exactly as a user would, with the per-dataset settings of
`benchmarks/configs/<algo>/<dataset>.yaml` when that file exists (else the script's own
defaults, the paper's), plus the overrides of `--set`, into `--runs-dir`. A cell's
stdout and stderr go to `<runs-dir>/logs/<algo>__<dataset>__<seed>.log`.

The grid can be run again at any time and only does what is missing:
  * a cell whose run directory holds a results.json whose last evaluation reached the
    configured num_updates is finished and skipped;
  * a cell with an unfinished run directory that saved a checkpoint is continued with
    `--resume RUN_DIR` (the scripts end with the same numbers as an uninterrupted run);
  * any other cell starts a new run.
A run directory made with other settings than the sweep asks for (say alpha 2.5 where
`--set td3_bc.alpha=3` now asks for 3) is never mixed in: that cell fails and says so.
Each cell holds a lock file while it runs, so two sweeps (or a sweep and a Slurm job
still running) never work on the same cell at once.

Cells run in a local pool of `--workers` processes, or as a Slurm job array through
submitit (`--slurm-partition ...`; jobs that reach their time limit are requeued and
resume from their checkpoint), or through submitit's local executor
(`--executor local-submitit`, for testing the submitit path without Slurm). The command
waits for every cell and exits non-zero with a one-line summary if any failed.

Examples (from the project root):
    python benchmarks/run.py --algos bc td3_bc iql --datasets hopper-medium-v2 walker2d-medium-v2 \
        --seeds 0 1 2 3 --workers 4
    python benchmarks/run.py --algos td3_bc --datasets hopper-medium-replay-v2 \
        --set num_updates=20000 eval_every=5000 --dry-run
    python benchmarks/run.py --algos iql --datasets hopper-medium-v2 --set iql.expectile=0.8 \
        --runs-dir runs/iql-expectile
    python benchmarks/run.py --algos awac iql cql sac_n bred --datasets shipped/pendulum-medium --seeds 0 1 2 \
        --set num_updates=4000 online_steps=2000 --runs-dir runs/finetune   # offline, then online fine-tuning
    python benchmarks/run.py --algos td3_bc --datasets hopper-medium-v2 \
        --slurm-partition gpu --slurm-time 24:00:00 --slurm-gpus-per-node 1
Then: python benchmarks/report.py runs/benchmark
"""

import argparse
import ast
import concurrent.futures
import datetime
import fcntl
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

PROJECT = Path(__file__).resolve().parent.parent
ALGORITHMS = PROJECT / "algorithms"
CONFIGS = PROJECT / "benchmarks" / "configs"

# Args fields that change neither what a run learns nor what it records: a run directory
# that differs from the sweep only in these is still the sweep's run of that cell.
# num_updates is not here for that reason: a shorter run is continued to the new budget.
RUNTIME_FIELDS = {
    "num_updates",
    "checkpoint_every",
    "log_every",
    "device",
    "threads",
    "compile",
    "track",
    "runs_dir",
    "resume",
    "config",
    "dataset",
    "seed",
}


class GridError(Exception):
    """Bad command-line input; main() prints it as one line and exits 2."""


# ---------------------------------------------------------------- the scripts' Args
def script_fields(algo: str) -> dict[str, tuple[str, object]]:
    """Fields of `class Args` in algorithms/<algo>.py as {name: (annotation, default)}, read without importing it."""
    tree = ast.parse((ALGORITHMS / f"{algo}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    try:
                        default = ast.literal_eval(item.value) if item.value is not None else None
                    except ValueError:  # a default that is not a literal (a field(...) call)
                        default = None
                    fields[item.target.id] = (ast.unparse(item.annotation), default)
            return fields
    return {}


def offline_algorithms() -> list[str]:
    """Scripts of algorithms/ that train from a dataset and can be resumed."""
    return [
        p.stem
        for p in sorted(ALGORITHMS.glob("*.py"))
        if {"dataset", "num_updates", "resume"} <= script_fields(p.stem).keys()
    ]


def parse_value(text: str, annotation: str):
    """A --set value as YAML (so `true`, `[1, 2]`, `null` work), with 3e-4 and 1e6 read as numbers."""
    value = yaml.safe_load(text)
    if annotation == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            return value
        if annotation == "int" and number.is_integer():
            return int(number)
        if "float" in annotation or "int" in annotation:
            return number
    return value


def parse_overrides(items: list[str], algos: list[str], fields: dict[str, dict]) -> dict[str, dict]:
    """`key=value` (every algorithm of the grid) and `algo.key=value` (one algorithm) -> {algo: {key: value}}."""
    overrides = {algo: {} for algo in algos}
    for item in items:
        if "=" not in item:
            raise GridError(
                f"--set {item!r}: write key=value or algo.key=value, e.g. num_updates=20000 or td3_bc.alpha=3"
            )
        key, text = item.split("=", 1)
        targets = algos
        if "." in key:
            algo, key = key.split(".", 1)
            if algo not in algos:
                raise GridError(f"--set {item!r}: {algo!r} is not one of the grid's --algos ({', '.join(algos)})")
            targets = [algo]
        key = key.replace("-", "_")
        if key in ("dataset", "seed", "resume", "runs_dir", "config", "threads", "device"):
            raise GridError(
                f"--set {item!r}: {key} is set by the grid itself; use --datasets, --seeds, --runs-dir, --threads or "
                "--device"
            )
        lacking = [algo for algo in targets if key not in fields[algo]]
        if lacking:
            raise GridError(
                f"--set {item!r}: {', '.join(lacking)} has no field {key!r} (see algorithms/{lacking[0]}.py --help); "
                f"set it for one algorithm only with ALGO.{key}=VALUE"
            )
        for algo in targets:
            overrides[algo][key] = parse_value(text, fields[algo][key][0])
    return overrides


# ---------------------------------------------------------------- cells
def safe_name(dataset: str) -> str:
    """The dataset as it appears in run directory names (the scripts' make_run_dir)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")


@dataclass
class Cell:
    algo: str
    dataset: str
    seed: int
    runs_dir: str  # absolute
    base_config: Optional[str]  # benchmarks/configs/<algo>/<dataset>.yaml, if it exists
    overrides: dict  # from --set
    settings: dict  # base config + overrides: what the sweep asks of this cell
    num_updates: int  # the budget a finished run has reached
    threads: int
    device: Optional[str]
    python: str
    cwd: str  # where the sweep was started: relative dataset paths mean the same in every cell
    online_steps: int = 0  # online fine-tuning after num_updates (--set online_steps=N): a finished run has both

    @property
    def name(self) -> str:
        return f"{self.algo}__{safe_name(self.dataset)}__{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.algo} {self.dataset} seed {self.seed}"

    def log_path(self) -> str:
        return os.path.join(self.runs_dir, "logs", self.name + ".log")

    def config_path(self) -> Optional[str]:
        """The file passed to --config: the base config itself, or the merged one when --set adds overrides."""
        if not self.overrides:
            return self.base_config
        return os.path.join(self.runs_dir, "logs", self.name + ".yaml")


def make_cells(args, fields: dict[str, dict], overrides: dict[str, dict]) -> list[Cell]:
    runs_dir = os.path.abspath(args.runs_dir)
    cells = []
    for algo in args.algos:
        for dataset in args.datasets:
            base = Path(args.configs_dir) / algo / f"{dataset}.yaml"
            settings = {}
            if base.is_file():
                settings = yaml.safe_load(base.read_text()) or {}
                if not isinstance(settings, dict):
                    raise GridError(f"{base}: not a mapping of Args fields to values")
            settings = {**settings, **overrides[algo]}
            settings.pop("dataset", None)  # the grid passes --dataset; a config's own name must not win
            num_updates = settings.get("num_updates", fields[algo]["num_updates"][1])
            online_steps = settings.get("online_steps", fields[algo].get("online_steps", (None, 0))[1])
            for seed in args.seeds:
                cells.append(
                    Cell(
                        algo=algo,
                        dataset=dataset,
                        seed=seed,
                        runs_dir=runs_dir,
                        base_config=str(base.resolve()) if base.is_file() else None,
                        overrides=overrides[algo],
                        settings=settings,
                        num_updates=int(num_updates),
                        threads=args.threads,
                        device=args.device,
                        python=sys.executable,
                        cwd=os.getcwd(),
                        online_steps=int(online_steps or 0),
                    )
                )
    return cells


# ---------------------------------------------------------------- a cell's state on disk
def read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
        return loaded if isinstance(loaded, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def last_step(run_dir: str) -> int:
    """Step of the last evaluation in results.json (0 when there is none yet)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            evaluations = json.load(f).get("evaluations") or []
        return int(evaluations[-1]["step"]) if evaluations else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def stopped(run_dir: str) -> bool:
    """Whether the run ended early by its own decision (results.json "stopped", e.g. a diverged critic)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return bool(json.load(f).get("stopped"))
    except (OSError, ValueError, AttributeError):
        return False


def same_value(a, b) -> bool:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def differences(cell: Cell, run_config: dict) -> list[str]:
    """Settings the sweep asks for that the run directory was made with other values of."""
    return [
        f"{key}={run_config.get(key)!r} (the sweep asks {value!r})"
        for key, value in cell.settings.items()
        if key not in RUNTIME_FIELDS and key in run_config and not same_value(run_config[key], value)
    ]


def inspect(cell: Cell) -> tuple[str, Optional[str], str]:
    """What to do with a cell: ("finished" | "resume" | "new" | "conflict", run directory, note)."""
    pattern = re.compile(re.escape(cell.name) + r"__\d+(-\d+)?")  # a run started in the same second gets -1, -2, ...
    try:
        run_dirs = sorted(os.path.join(cell.runs_dir, d) for d in os.listdir(cell.runs_dir) if pattern.fullmatch(d))
    except FileNotFoundError:
        run_dirs = []
    finished, resumable, leftover = [], [], []
    for run_dir in run_dirs:
        config = read_yaml(os.path.join(run_dir, "config.yaml"))
        changed = differences(cell, config)
        if changed:
            return (
                "conflict",
                run_dir,
                f"{run_dir} was made with {', '.join(changed)}; move it away or use another --runs-dir",
            )
        step = last_step(run_dir)
        if step >= cell.num_updates + cell.online_steps or stopped(
            run_dir
        ):  # a run its divergence check stopped is over
            finished.append((step, run_dir))
        elif config and os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
            resumable.append((step, os.path.getmtime(os.path.join(run_dir, "checkpoint.pt")), run_dir))
        else:
            leftover.append(run_dir)
    if finished:
        return "finished", max(finished)[1], f"{max(finished)[0]} updates"
    if resumable:
        step, _, run_dir = max(resumable)
        return (
            "resume",
            run_dir,
            f"unfinished: last evaluation at {step} of {cell.num_updates} updates"
            if step
            else "unfinished: no evaluation yet",
        )
    note = f"left as they are (no checkpoint to resume from): {', '.join(leftover)}" if leftover else ""
    return "new", None, note


def command(cell: Cell, action: str, run_dir: Optional[str]) -> list[str]:
    script = str(ALGORITHMS / f"{cell.algo}.py")
    if action == "resume":
        # the run's own config.yaml holds its settings; only the budget and the runtime may change
        argv = [cell.python, script, "--resume", run_dir, "--num-updates", str(cell.num_updates)]
        if cell.online_steps:
            argv += ["--online-steps", str(cell.online_steps)]
    else:
        argv = [cell.python, script]
        if cell.config_path():
            argv += ["--config", cell.config_path()]
        argv += ["--dataset", cell.dataset, "--seed", str(cell.seed), "--runs-dir", cell.runs_dir]
    argv += ["--threads", str(cell.threads)]
    if cell.device:
        argv += ["--device", cell.device]
    return argv


def write_merged_config(cell: Cell) -> None:
    path = cell.config_path()
    header = (
        f"# Written by benchmarks/run.py for {cell.label}: "
        f"{cell.base_config or 'the script defaults'} + --set "
        f"{' '.join(f'{k}={v}' for k, v in cell.overrides.items())}\n"
    )
    with open(path + ".tmp", "w") as f:
        f.write(header + yaml.safe_dump({**cell.settings, "dataset": cell.dataset}, sort_keys=False))
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- running one cell
_children: set = set()  # training processes of this process, ended when the sweep is interrupted (set.add is atomic)


def last_line(path: str) -> str:
    """The last informative line of a log (the scripts end a failure with one 'error: ...' line)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 20_000))
            lines = [line.strip() for line in re.split(r"[\r\n]+", f.read().decode(errors="replace")) if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith(("error:", "Error", "Traceback")) or "Error:" in line]
    return (errors or lines or [""])[-1][:300]


def execute_cell(cell: Cell) -> dict:
    """Run one cell to completion (or skip it); returns {"status": skipped | done | failed, ...}.

    Runs where the cell runs (a pool thread, a submitit job), so the decision to skip, resume
    or start reflects the run directories at that moment: a requeued Slurm job resumes.
    """
    os.makedirs(os.path.join(cell.runs_dir, "logs"), exist_ok=True)
    result = {"cell": cell.label, "run_dir": None}
    lock = open(os.path.join(cell.runs_dir, "logs", cell.name + ".lock"), "w")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {**result, "status": "failed", "message": f"another process is running this cell (lock {lock.name})"}
        action, run_dir, note = inspect(cell)
        if action == "finished":
            return {**result, "status": "skipped", "run_dir": run_dir, "message": f"finished ({note})"}
        if action == "conflict":
            return {**result, "status": "failed", "message": note}
        if action == "new" and cell.overrides:
            write_merged_config(cell)
        argv = command(cell, action, run_dir)
        env = {**os.environ, "OMP_NUM_THREADS": str(cell.threads), "MKL_NUM_THREADS": str(cell.threads)}
        started = time.time()
        with open(cell.log_path(), "a") as log:
            log.write(
                f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} on {socket.gethostname()}: "
                f"{'resume ' + run_dir + ' (' + note + ')' if action == 'resume' else 'new run'}\n# "
                f"{shlex.join(argv)}\n"
            )
            log.flush()
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cell.cwd, env=env)
            _children.add(process)
            try:
                code = process.wait()
            except BaseException:  # e.g. submitit's SystemExit after requeueing a timed-out job:
                process.terminate()  # the run must not outlive its job and race the requeued one
                process.wait()
                raise
            finally:
                _children.discard(process)
        after, run_dir, _ = inspect(cell)
        elapsed = f"{time.time() - started:.0f} s"
        if code != 0 and after == "finished" and stopped(run_dir):
            return {**result, "status": "stopped", "run_dir": run_dir, "message": last_line(cell.log_path())}
        if code != 0:
            return {
                **result,
                "status": "failed",
                "run_dir": run_dir,
                "message": f"exit {code} after {elapsed}: {last_line(cell.log_path())}",
            }
        if after != "finished":
            return {
                **result,
                "status": "failed",
                "run_dir": run_dir,
                "message": f"exited 0 but no results.json reached {cell.num_updates} updates; see {cell.log_path()}",
            }
        with open(os.path.join(run_dir, "results.json")) as f:
            scores = json.load(f)
        return {
            **result,
            "status": "done",
            "run_dir": run_dir,
            "message": f"{'resumed' if action == 'resume' else 'new run'}, {elapsed}: last "
            f"{scores['last_normalized_score']:.1f}, "
            f"best {scores['best_normalized_score']:.1f}",
        }
    finally:
        lock.close()


class CellJob:
    """One cell as a submitit job. On a Slurm time limit submitit calls `checkpoint`, which
    requeues the same cell: it then finds its run directory and resumes it."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def __call__(self) -> dict:
        return execute_cell(self.cell)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.cell))


def end_children() -> None:
    for process in list(_children):
        if process.poll() is None:
            process.terminate()
    for process in list(_children):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# ---------------------------------------------------------------- executors
def report_line(result: dict) -> str:
    where = f" -> {result['run_dir']}" if result.get("run_dir") else ""
    return f"{result['status']:8s} {result['cell']}: {result['message']}{where}"


def run_pool(cells: list[Cell], workers: int) -> list[dict]:
    results = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(execute_cell, cell): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):
            try:
                result = future.result()
            except Exception as e:  # a bug or an OS error in the runner itself, not in the script
                result = {"cell": futures[future].label, "status": "failed", "message": f"{type(e).__name__}: {e}"}
            print(report_line(result), flush=True)
            results.append(result)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        end_children()
        sys.exit("interrupted: running cells were stopped; run the same command again to resume them")
    pool.shutdown()
    return results


def slurm_minutes(text: str) -> int:
    """Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not match:
        raise GridError(f"--slurm-time {text!r}: use minutes (1440), HH:MM:SS (24:00:00) or D-HH:MM:SS (2-00:00:00)")
    days, rest = match.groups()
    parts = [int(p) for p in rest.split(":")]
    if days is None:  # M, M:S or H:M:S
        hours, minutes, seconds = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    else:  # D-H, D-H:M or D-H:M:S
        hours, minutes, seconds = (parts + [0, 0])[:3]
    return max(1, int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60))


def run_submitit(cells: list[Cell], args) -> list[dict]:
    try:
        import submitit
    except ImportError:
        raise GridError("the Slurm and local-submitit executors need submitit: pip install submitit")
    folder = os.path.join(os.path.abspath(args.runs_dir), "submitit")  # job files are named by job id
    cluster = "slurm" if args.executor == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=args.slurm_max_requeues)
    params = dict(name="offline-rl", timeout_min=slurm_minutes(args.slurm_time), cpus_per_task=args.slurm_cpus_per_task)
    if args.slurm_gpus_per_node:
        params["gpus_per_node"] = args.slurm_gpus_per_node
    if cluster == "slurm":
        extra = dict(item.split("=", 1) for item in args.slurm_extra)
        params.update(
            slurm_partition=args.slurm_partition,
            slurm_array_parallelism=args.slurm_array_parallelism,
            slurm_additional_parameters=extra,
        )
        if args.slurm_mem_gb:
            params["mem_gb"] = args.slurm_mem_gb
    executor.update_parameters(**params)
    jobs = []
    with executor.batch():
        for cell in cells:
            jobs.append(executor.submit(CellJob(cell)))
    print(f"submitted {len(jobs)} cells to {cluster} (job logs in {folder}); waiting for them", flush=True)
    results = []
    for cell, job in zip(cells, jobs):
        try:
            result = job.result()
        except Exception as e:  # the job itself failed: killed, out of memory, node failure
            message = " ".join(str(e).split())[-300:]
            result = {"cell": cell.label, "status": "failed", "message": f"job {job.job_id}: {message}"}
        print(report_line(result), flush=True)
        results.append(result)
    return results


# ---------------------------------------------------------------- command line
def display_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else as it is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The options saying where and how cells run (pool, Slurm); benchmarks/sweep.py takes the same."""
    run = parser.add_argument_group("where cells run")
    run.add_argument(
        "--executor",
        choices=["local", "local-submitit", "slurm"],
        help="local process pool (default), submitit's local executor, "
        "or Slurm (default when --slurm-partition is given)",
    )
    run.add_argument("--workers", type=int, default=1, help="cells at a time in the local pool (default: 1)")
    run.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per cell (default: cores / workers locally, --slurm-cpus-per-task on Slurm)",
    )
    run.add_argument("--device", help='passed to every script: "auto", "cpu" or "cuda" (default: the scripts\' auto)')
    slurm = parser.add_argument_group("Slurm (through submitit)")
    slurm.add_argument("--slurm-partition", help="partition to submit to (selects the Slurm executor)")
    slurm.add_argument(
        "--slurm-time",
        default="1440",
        help="time limit per job: minutes or HH:MM:SS; a job that reaches it is requeued and resumes (default: 1440)",
    )
    slurm.add_argument("--slurm-gpus-per-node", type=int, default=0, help="GPUs per job (default: 0)")
    slurm.add_argument(
        "--slurm-cpus-per-task", type=int, default=4, help="CPUs per job, also the cells' --threads (default: 4)"
    )
    slurm.add_argument("--slurm-mem-gb", type=int, help="memory per job in GB (default: the partition's)")
    slurm.add_argument(
        "--slurm-array-parallelism", type=int, default=64, help="jobs of the array running at once (default: 64)"
    )
    slurm.add_argument(
        "--slurm-max-requeues", type=int, default=10, help="requeues of a job that reaches its time limit (default: 10)"
    )
    slurm.add_argument(
        "--slurm-extra",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more sbatch options, e.g. account=myproj qos=normal constraint=a100",
    )


def check_runner_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Defaults that depend on other options, and the checks of add_runner_arguments' options."""
    if args.executor is None:
        args.executor = "slurm" if args.slurm_partition else "local"
    if args.executor == "slurm" and not args.slurm_partition:
        parser.error("--executor slurm needs --slurm-partition")
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--workers and --threads must be at least 1")
    if any("=" not in item for item in args.slurm_extra):
        parser.error("--slurm-extra takes KEY=VALUE items, e.g. account=myproj")
    if args.threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.threads = args.slurm_cpus_per_task if args.executor == "slurm" else max(1, cores // args.workers)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--algos", nargs="+", required=True, help="scripts of algorithms/ to run, e.g. bc td3_bc iql")
    grid.add_argument(
        "--datasets", nargs="+", required=True, help="dataset names as the scripts take them, e.g. hopper-medium-v2"
    )
    grid.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="seeds (default: 0 1 2 3)")
    grid.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override Args fields on top of the per-dataset config: num_updates=20000 for every "
        "algorithm, td3_bc.alpha=3 for one (values are YAML)",
    )
    grid.add_argument(
        "--runs-dir", default="runs/benchmark", help="where run directories and logs go (default: runs/benchmark)"
    )
    grid.add_argument(
        "--configs-dir",
        default=str(CONFIGS),
        help="per-dataset configs, <dir>/<algo>/<dataset>.yaml (default: benchmarks/configs)",
    )
    grid.add_argument(
        "--dry-run", action="store_true", help="print what every cell would do and its command; run nothing"
    )
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    check_runner_arguments(parser, args)
    return args


def print_dry_run(cells: list[Cell]) -> None:
    """What every cell would do (finished, resume, new, conflict) and the command it would run."""
    for cell in cells:
        action, run_dir, note = inspect(cell)
        source = display_path(cell.base_config) if cell.base_config else "script defaults"
        sets = " + " + " ".join(f"{k}={v}" for k, v in cell.overrides.items()) if cell.overrides else ""
        print(
            f"# {cell.label}: {action}"
            + (f" {run_dir}" if run_dir else "")
            + (f" ({note})" if note else "")
            + f"; config: {source}{sets}"
            + (f", written to {cell.config_path()} when it runs" if cell.overrides and action == "new" else "")
        )
        if action in ("new", "resume"):
            print(
                f"OMP_NUM_THREADS={cell.threads} "
                + shlex.join(command(cell, action, run_dir))
                + f" >> {shlex.quote(cell.log_path())} 2>&1"
            )


def main(argv=None):
    args = parse_args(argv)
    try:
        known = offline_algorithms()
        unknown = [a for a in args.algos if a not in known]
        if unknown:
            raise GridError(
                f"--algos {' '.join(unknown)}: not an offline script of {ALGORITHMS}; choose from {', '.join(known)}"
            )
        if len(set(args.seeds)) != len(args.seeds) or len(set(args.datasets)) != len(args.datasets):
            raise GridError("--seeds and --datasets must not repeat a value")
        fields = {algo: script_fields(algo) for algo in args.algos}
        cells = make_cells(args, fields, parse_overrides(args.overrides, args.algos, fields))
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        print_dry_run(cells)
        return 0

    print(
        f"{len(cells)} cells ({len(args.algos)} algorithms x {len(args.datasets)} datasets x {len(args.seeds)} seeds) "
        f"into {os.path.abspath(args.runs_dir)}, executor {args.executor}",
        flush=True,
    )
    try:
        results = run_pool(cells, args.workers) if args.executor == "local" else run_submitit(cells, args)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {s: sum(r["status"] == s for r in results) for s in ("skipped", "done", "stopped", "failed")}
    failed = [r for r in results if r["status"] == "failed"]
    summary = (
        f"{len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished, {counts['failed']} failed"
        + (f", {counts['stopped']} stopped by their divergence check" if counts["stopped"] else "")
    )
    if failed:
        details = "; ".join(f"{r['cell']} ({r['message']})" for r in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        print(
            f"error: {summary}: {details}; logs in {os.path.join(os.path.abspath(args.runs_dir), 'logs')}",
            file=sys.stderr,
        )
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
