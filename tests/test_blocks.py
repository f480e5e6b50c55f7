"""Shared blocks: every copy of a block is byte-identical, and the sync tool mends a stray copy."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT
from scripts import args_fields, script_names


def run_tool(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(cwd, "tools", "sync_blocks.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_blocks_identical():
    result = run_tool("--check")
    assert result.returncode == 0, result.stdout


def test_every_offline_script_has_the_common_blocks():
    """A script that reads a dataset carries the dataset, run, config and evaluation blocks."""
    for name in script_names():
        text = open(os.path.join(ROOT, "algorithms", name + ".py")).read()
        if "dataset" in args_fields(name):
            for block in ("config", "run", "dataset", "evaluation"):
                assert f"# ---- shared: {block} ----" in text, f"{name} lacks the {block} block"


def test_check_detects_and_sync_repairs(tmp_path):
    """Edit one copy in a scratch tree: --check must fail, --from must restore agreement."""
    shutil.copytree(os.path.join(ROOT, "algorithms"), tmp_path / "algorithms")
    shutil.copytree(os.path.join(ROOT, "tools"), tmp_path / "tools")
    target = tmp_path / "algorithms" / "td3_bc.py"
    text = target.read_text()
    assert "def normalized_score(" in text
    target.write_text(text.replace("return 100.0 * (np.asarray(returns) - ref_min)", "return 99.0 * (np.asarray(returns) - ref_min)"))
    broken = run_tool("--check", cwd=tmp_path)
    assert broken.returncode == 1 and "evaluation" in broken.stdout
    repaired = run_tool("--from", str(tmp_path / "algorithms" / "bc.py"), cwd=tmp_path)
    assert repaired.returncode == 0 and "td3_bc.py" in repaired.stdout
    assert run_tool("--check", cwd=tmp_path).returncode == 0
    assert target.read_text() == text
