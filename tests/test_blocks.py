"""Shared blocks: every copy of a block is byte-identical, and the sync tool mends a stray copy."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_script
from scripts import args_fields, script_names


def run_tool(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(cwd, "tools", "sync_blocks.py"), *args], capture_output=True, text=True, cwd=cwd
    )


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
    target.write_text(
        text.replace("return 100.0 * (np.asarray(returns) - ref_min)", "return 99.0 * (np.asarray(returns) - ref_min)")
    )
    broken = run_tool("--check", cwd=tmp_path)
    assert broken.returncode == 1 and "evaluation" in broken.stdout
    repaired = run_tool("--from", str(tmp_path / "algorithms" / "bc.py"), cwd=tmp_path)
    assert repaired.returncode == 0 and "td3_bc.py" in repaired.stdout
    assert run_tool("--check", cwd=tmp_path).returncode == 0
    assert target.read_text() == text


@pytest.mark.parametrize("out_dim", [1, 5])
@pytest.mark.parametrize("shared_input", [True, False])
def test_ensemble_linear_is_a_matmul_per_member(out_dim, shared_input):
    """The ensemble_linear block against one torch.nn.functional.linear per member, values and
    gradients, for a one-column head and a wider layer, with a shared or a per-member input."""
    m = load_script(os.path.join(ROOT, "algorithms", "td3_bc.py"))
    torch.manual_seed(0)
    layer = m.EnsembleLinear(7, out_dim, members=3)
    x = torch.randn(11, 7) if shared_input else torch.randn(3, 11, 7)
    x.requires_grad_(True)
    y = layer(x)
    assert y.shape == (3, 11, out_dim)
    xs = [x] * 3 if shared_input else list(x)
    expected = torch.stack([torch.nn.functional.linear(xs[i], layer.weight[i].T, layer.bias[i, 0]) for i in range(3)])
    assert torch.allclose(y, expected, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(expected, (x, layer.weight, layer.bias), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def test_cpu_device_keeps_freed_memory(monkeypatch):
    """pick_device("cpu") asks glibc (mallopt) to serve blocks up to 32 MB from the heap and keep up to
    1 GB of free heap, so activations are not page-faulted in anew each update; a libc that cannot be
    loaded (macOS, musl) is no error."""
    m = load_script(os.path.join(ROOT, "algorithms", "td3_bc.py"))
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(m.ctypes, "CDLL", lambda name: FakeLibc())
    assert m.pick_device("cpu").type == "cpu"
    assert calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    def no_libc(name):
        raise OSError("no such library")

    monkeypatch.setattr(m.ctypes, "CDLL", no_libc)
    assert m.pick_device("cpu").type == "cpu"
