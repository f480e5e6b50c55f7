"""The house layout of every script (../shared/STYLE.md): the method first, one banner, then the
shared blocks and nothing else; the code is formatted and linted by ruff."""

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ALGORITHMS, ROOT
from scripts import args_fields, script_names

BANNER = re.compile(r"^# =+ shared blocks below: .* =+$", re.M)
BLOCK = re.compile(r"^# ---- shared: (?P<name>[\w-]+) ----\n.*?^# ---- end shared: (?P=name) ----\n", re.S | re.M)
TAIL = 'if __name__ == "__main__":\n    main()\n'
MODEL_BASED = {"mopo", "mobile", "combo", "rambo", "morel", "mbpo", "bremen", "lion"}
# LION carries two model families, as its paper has them (per-variable recurrent models for the Industrial
# Benchmark, an MLP ensemble elsewhere), each with its own training, and the paper's settings per environment
# BOReL is three learners in one (a VAE over trials with its relabelling, then DQN or SAC on hyper-states) and
# evaluates whole trials with a running belief
OWN_LIMIT = {"lion": 550, "borel": 630}


def layout_problems(text: str) -> list[str]:
    """What breaks the method-first layout of one script's text (an empty list when none)."""
    banners = BANNER.findall(text)
    if len(banners) != 1:
        return [f"{len(banners)} banner lines (one is expected, between main() and the shared blocks)"]
    head, below = BANNER.split(text)
    problems = []
    if "# ---- shared:" in head:
        problems.append("a shared block stands above the banner")
    if "\ndef main(" not in head:
        problems.append("main() is not above the banner")
    if not text.endswith(TAIL):
        problems.append('the last lines are not `if __name__ == "__main__": main()`')
    leftover = BLOCK.sub("", below)
    leftover = leftover[: -len(TAIL)] if leftover.endswith(TAIL) else leftover
    if leftover.strip():
        problems.append(f"code below the banner outside the shared blocks: {leftover.strip().splitlines()[0]!r}")
    return problems


def method_lines(text: str) -> int:
    """Lines of the method's own part: from `class Args` to the banner."""
    head = BANNER.split(text)[0]
    return head.count("\n") - head[: head.index("class Args")].count("\n")


@pytest.mark.parametrize("name", script_names())
def test_method_first(name):
    text = open(os.path.join(ALGORITHMS, name + ".py")).read()
    assert layout_problems(text) == []
    limit = OWN_LIMIT.get(name, 450 if name in MODEL_BASED else 350)
    if "online_steps" in args_fields(name) and name != "bred":  # online fine-tuning: its rule and its phase
        limit += 45
    assert method_lines(text) <= limit, f"{name}: the method part is {method_lines(text)} lines, over {limit}"


def test_layout_check_catches_misplaced_code():
    """The check itself: a block moved above main(), or method code appended below the banner, is caught."""
    text = open(os.path.join(ALGORITHMS, "td3_bc.py")).read()
    assert layout_problems(text) == []
    block = BLOCK.search(text).group(0)
    moved = text.replace(block, "").replace("\ndef main(", "\n" + block + "\n\ndef main(", 1)
    assert "a shared block stands above the banner" in layout_problems(moved)
    appended = text[: -len(TAIL)] + "def my_loss(x):\n    return x\n\n\n" + TAIL
    assert any("below the banner outside" in p for p in layout_problems(appended))


@pytest.mark.parametrize("name", script_names())
def test_no_script_writes_its_own_name(name):
    """The run name comes from the file name, so a fork (td3_bc_myloss.py) reports itself as such."""
    text = open(os.path.join(ALGORITHMS, name + ".py")).read()
    strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert name not in strings, f'{name}.py writes "{name}" as a string; use SCRIPT_NAME'


def test_a_fork_keeps_its_own_name(tmp_path):
    """algorithms/bc.py copied to bc_myloss.py writes runs/bc_myloss__... and says so."""
    from scripts import tiny_args

    fork = tmp_path / "bc_myloss.py"
    shutil.copy(os.path.join(ALGORITHMS, "bc.py"), fork)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(fork), *tiny_args("bc", runs_dir=str(tmp_path / "runs"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = os.listdir(tmp_path / "runs")
    assert run_dir.startswith("bc_myloss__")
    assert result.stdout.strip().splitlines()[-1].startswith("bc_myloss on ")


def test_ruff_format_and_lint():
    """`ruff format --check` and `ruff check` pass on the whole project (settings in ruff.toml)."""
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "."], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
