"""Shared test helpers: scripts are loaded by path, since they are standalone files."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = os.path.join(ROOT, "algorithms")
SHIPPED = os.path.join(ROOT, "datasets", "shipped")
# a script run as a file has its own folder on sys.path, which is how gym.make("custom_envs.<module>:<EnvId>") finds
# this project's environments (algorithms/custom_envs/); scripts loaded in-process by the tests see the same
sys.path.append(ALGORITHMS)


def load_script(name: str):
    """Import algorithms/<name>.py (or a path) as a module without running main()."""
    path = name if name.endswith(".py") else os.path.join(ALGORITHMS, name + ".py")
    module_name = "script_" + os.path.splitext(os.path.basename(path))[0]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# The slowest checks, longest first (minutes on one thread); see pytest_collection_modifyitems.
SLOWEST = ("test_mobile_beats_the_data",)


def pytest_collection_modifyitems(items):
    """The learning checks run first, the slowest of them first, and the many short tests after them: with
    `-n 2` (pytest.ini asks xdist for work stealing) the short tests then fill the other worker while the long
    checks run, instead of one long check running alone at the end."""

    def rank(item):
        if item.originalname in SLOWEST:
            return 0
        return 1 if item.get_closest_marker("learning") else 2

    items[:] = sorted(items, key=rank)  # stable: the order within each rank is kept


@pytest.fixture(scope="session")
def root():
    return ROOT


def print_scores(label: str, results: dict) -> None:
    """The normalised-score curve of a learning check; `pytest -m learning -rP` shows it, which is
    how the runs quoted in the tests' docstrings are re-made after a change."""
    curve = ", ".join(f"{e['normalized_score']:.1f}" for e in results["evaluations"])
    print(
        f"{label}: normalised score at each evaluation: {curve} (behaviour data "
        f"{results['behaviour_normalized_score']:.1f})"
    )
