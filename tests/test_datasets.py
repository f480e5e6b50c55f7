"""The dataset layer of the algorithms (the `# ---- shared: dataset ----` block of bc.py).

Every test runs on small files written here in the exact layout of the real datasets
(D4RL hdf5, Minari), since the test machines have no network.
"""

import glob
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, SHIPPED, load_script

bc = load_script("bc")

OBS_DIM, ACT_DIM = 3, 1  # Pendulum-v1
HOPPER_OBS, HOPPER_ACT = 11, 3  # Hopper-v4


# ---------------------------------------------------------------------------- helpers
def make_episodes(episodes, obs_dim=OBS_DIM, act_dim=ACT_DIM, next_observations=True, timeouts=True):
    """D4RL-layout arrays for `episodes`, a list of (length, end) with end in
    "terminal", "timeout", "both" (terminal and timeout on the same step) or "none"
    (the data stops mid-episode; last episode only).

    Observation row = [episode id, step in episode, 0.5, ...], so where every
    next observation came from can be read off it. Reward = 100 * episode + step.
    """
    obs, nxt, act, rew, term, tout = [], [], [], [], [], []
    for ep, (length, end) in enumerate(episodes):
        for t in range(length):
            o = np.full(obs_dim, 0.5, np.float32)
            o[0], o[1] = ep, t
            n = o.copy()
            n[1] = t + 1
            obs.append(o)
            nxt.append(n)
            act.append(np.full(act_dim, (ep + t) / 100, np.float32))
            rew.append(100.0 * ep + t)
            last = t == length - 1
            term.append(last and end in ("terminal", "both"))
            tout.append(last and end in ("timeout", "both"))
    arrays = dict(
        observations=np.array(obs, np.float32),
        actions=np.array(act, np.float32),
        rewards=np.array(rew, np.float32),
        terminals=np.array(term, bool),
    )
    if timeouts:
        arrays["timeouts"] = np.array(tout, bool)
    if next_observations:
        arrays["next_observations"] = np.array(nxt, np.float32)
    return arrays


def expected_transitions(episodes, next_observations):
    """(episode, step, terminal) of every transition the loader must keep, in order."""
    kept = []
    for ep, (length, end) in enumerate(episodes):
        for t in range(length):
            last = t == length - 1
            terminal = last and end in ("terminal", "both")
            if last and not terminal and not next_observations:
                continue  # cut by a timeout or the end of the data: no successor in its episode
            kept.append((ep, t, terminal))
    return kept


def expected_returns(episodes):
    returns = [sum(100.0 * ep + t for t in range(length)) for ep, (length, _) in enumerate(episodes)]
    if episodes[-1][1] == "none" and len(episodes) > 1:
        returns = returns[:-1]
    return np.array(returns)


def write_hdf5(path, arrays, attrs=None, **dataset_kwargs):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, **dataset_kwargs)
        for key, value in (attrs if attrs is not None else {"env_id": "Pendulum-v1"}).items():
            f.attrs[key] = value
    return str(path)


def pendulum_file(path, episodes=((3, "timeout"), (2, "terminal")), attrs=None, **kwargs):
    return write_hdf5(path, make_episodes(list(episodes), **kwargs), attrs)


def hopper_arrays(n_episodes=2, length=5, seed=0):
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    return dict(
        observations=rng.standard_normal((n, HOPPER_OBS)).astype(np.float32),
        next_observations=rng.standard_normal((n, HOPPER_OBS)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, HOPPER_ACT)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
    )


def no_network(monkeypatch, calls=None):
    def urlopen(url, *args, **kwargs):
        if calls is not None:
            calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


class FakeResponse:
    """What urllib.request.urlopen returns, serving `payload` (or a part of it, as a dropped connection)."""

    def __init__(self, payload, content_length=None):
        self.stream = io.BytesIO(payload)
        self.headers = {"Content-Length": str(len(payload) if content_length is None else content_length)}

    def read(self, n=-1):
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check_rows(data, episodes, next_observations):
    """The loaded transitions are exactly the expected ones, with in-episode successors."""
    kept = expected_transitions(episodes, next_observations)
    obs, nxt = data["observations"], data["next_observations"]
    assert [(int(o[0]), int(o[1])) for o in obs] == [(ep, t) for ep, t, _ in kept]
    assert data["terminals"].tolist() == [float(term) for _, _, term in kept]
    assert data["rewards"].tolist() == [100.0 * ep + t for ep, t, _ in kept]
    np.testing.assert_allclose(data["actions"][:, 0], [(ep + t) / 100 for ep, t, _ in kept], rtol=1e-6)
    # never the first observation of the following episode (D4RL issue #145)
    assert (nxt[:, 0] == obs[:, 0]).all()
    for o, n, (_, _, term) in zip(obs, nxt, kept):
        if term and not next_observations:
            assert (n == o).all()  # stand-in; the target does not bootstrap
        else:
            assert n[1] == o[1] + 1
            assert (n[2:] == o[2:]).all()


EPISODE_LAYOUTS = {
    "timeout-terminal": [(3, "timeout"), (2, "terminal")],
    "terminal-first": [(4, "terminal"), (3, "timeout"), (5, "timeout")],
    "one-step-episodes": [(1, "terminal"), (1, "timeout"), (2, "timeout"), (1, "terminal")],
    "terminal-and-timeout": [(2, "both"), (3, "timeout"), (2, "terminal")],
    "ends-mid-episode": [(3, "terminal"), (2, "timeout"), (4, "none")],
    "single-unfinished": [(6, "none")],
    "single-timeout": [(5, "timeout")],
}


# ---------------------------------------------------------------------------- 1, 2: episode boundaries
@pytest.mark.parametrize("next_observations", [True, False], ids=["next_obs", "no_next_obs"])
@pytest.mark.parametrize("layout", list(EPISODE_LAYOUTS))
def test_transitions_from_arrays_boundaries(layout, next_observations):
    episodes = EPISODE_LAYOUTS[layout]
    data = bc.transitions_from_arrays(make_episodes(episodes, next_observations=next_observations), "test")
    check_rows(data, episodes, next_observations)
    np.testing.assert_allclose(data["episode_returns"], expected_returns(episodes))
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        assert data[key].dtype == np.float32, key


@pytest.mark.parametrize("next_observations", [True, False], ids=["next_obs", "no_next_obs"])
@pytest.mark.parametrize("layout", ["terminal-first", "ends-mid-episode", "terminal-and-timeout"])
def test_load_file_boundaries(tmp_path, layout, next_observations):
    """The same through a file on disk and load_dataset (path form), tensors on the device."""
    episodes = EPISODE_LAYOUTS[layout]
    path = pendulum_file(
        tmp_path / "data.hdf5",
        episodes,
        next_observations=next_observations,
        attrs={"env_id": "Pendulum-v1", "ref_min_score": -1500.0, "ref_max_score": -150.0},
    )
    data = bc.load_dataset(path, torch.device("cpu"))
    check_rows(
        {k: getattr(data, k).numpy() for k in ("observations", "actions", "rewards", "next_observations", "terminals")},
        episodes,
        next_observations,
    )
    np.testing.assert_allclose(data.episode_returns, expected_returns(episodes))
    assert (data.ref_min_score, data.ref_max_score) == (-1500.0, -150.0)
    assert data.name == path
    env = data.make_env()
    assert env.spec.id == "Pendulum-v1"
    env.close()


def test_timeout_step_kept_only_with_next_observations():
    """Spelled out: the step cut by a timeout is kept (terminal 0) with next_observations, dropped without."""
    episodes = [(2, "timeout"), (2, "terminal")]
    with_next = bc.transitions_from_arrays(make_episodes(episodes), "test")
    without = bc.transitions_from_arrays(make_episodes(episodes, next_observations=False), "test")
    assert len(with_next["rewards"]) == 4 and len(without["rewards"]) == 3
    assert with_next["terminals"].tolist() == [0, 0, 0, 1]
    np.testing.assert_array_equal(with_next["next_observations"][1], [0, 2, 0.5])  # its own episode's next obs
    assert without["terminals"].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(without["observations"][:, :2], [[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(without["next_observations"][0], [0, 1, 0.5])


def test_next_observations_without_timeouts():
    """next_observations alone suffices (timeouts then default to none)."""
    episodes = [(3, "terminal"), (2, "terminal")]
    data = bc.transitions_from_arrays(make_episodes(episodes, timeouts=False), "test")
    check_rows(data, episodes, True)
    np.testing.assert_allclose(data["episode_returns"], expected_returns(episodes))


def test_float_terminals_and_column_rewards():
    """Terminals stored as 0/1 floats and rewards as [N, 1] columns read the same as bool and [N]."""
    episodes = [(3, "timeout"), (2, "terminal")]
    arrays = make_episodes(episodes, next_observations=False)
    arrays["terminals"] = arrays["terminals"].astype(np.float32)
    arrays["timeouts"] = arrays["timeouts"].astype(np.float64)
    arrays["rewards"] = arrays["rewards"][:, None]
    check_rows(bc.transitions_from_arrays(arrays, "test"), episodes, False)


# ---------------------------------------------------------------------------- 7: sampling
def test_sample_shapes_and_device(tmp_path):
    path = pendulum_file(tmp_path / "data.hdf5", [(4, "timeout"), (3, "terminal")])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        data = bc.load_dataset(path, device)
        batch = data.sample(32)
        assert len(batch) == 5
        shapes = [(32, OBS_DIM), (32, ACT_DIM), (32,), (32, OBS_DIM), (32,)]
        for tensor, shape in zip(batch, shapes):
            assert tuple(tensor.shape) == shape
            assert tensor.device.type == device.type
            assert tensor.dtype == torch.float32
        obs, _, reward, next_obs, _ = batch
        # rows stay aligned: reward and next observation belong to the sampled observation
        torch.testing.assert_close(reward, 100 * obs[:, 0] + obs[:, 1])
        torch.testing.assert_close(next_obs[:, :2], obs[:, :2] + torch.tensor([0.0, 1.0], device=device))


# ---------------------------------------------------------------------------- 3: bad input
def assert_dataset_error(phrase, name, device="cpu"):
    with pytest.raises(bc.DatasetError) as info:
        bc.load_dataset(name, torch.device(device))
    message = str(info.value)
    assert phrase in message, message
    assert "\n" not in message  # main() prints it as one line
    return message


@pytest.mark.parametrize(
    "name", ["nonexistent-name", "hopper-medium", "hopper-medium-v0", "hopper-superb-v2", "mujoco/hopper"]
)
def test_unknown_name(name):
    message = assert_dataset_error("unknown dataset", name)
    assert repr(name) in message


def test_missing_file_path(tmp_path):
    assert_dataset_error("does not exist", str(tmp_path / "nothing.hdf5"))


@pytest.mark.parametrize(
    "name,file_name",
    [
        ("hopper-medium-replay-v2", "hopper_medium_replay-v2.hdf5"),
        ("halfcheetah-medium-expert-v2", "halfcheetah_medium_expert-v2.hdf5"),
        ("walker2d-full-replay-v2", "walker2d_full_replay-v2.hdf5"),
        ("ant-random-v2", "ant_random-v2.hdf5"),
    ],
)
def test_missing_d4rl_file_without_network(tmp_path, monkeypatch, name, file_name):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    calls = []
    no_network(monkeypatch, calls)
    message = assert_dataset_error("could not download", name)
    target = os.path.join(str(tmp_path), file_name)
    assert f"put it at {target}" in message  # where to put the file by hand
    assert "D4RL_DATASET_DIR" in message
    assert calls == [bc.D4RL_URL.format(file_name)]
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_download_dropped_mid_transfer_raises(tmp_path, monkeypatch):
    """A transfer that fails part-way gives DatasetError and no file under the final name."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))

    class Broken(FakeResponse):
        def read(self, n=-1):
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: Broken(b"x" * 100))
    assert_dataset_error("could not download", "hopper-medium-v2")
    assert not os.path.exists(tmp_path / "hopper_medium-v2.hdf5")


def test_download_short_read_does_not_take_final_name(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    payload = open(write_hdf5(tmp_path / "src.h5", hopper_arrays(), {}), "rb").read()
    os.remove(tmp_path / "src.h5")
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda url, *a, **k: FakeResponse(payload[: len(payload) // 2], content_length=len(payload)),
    )
    with pytest.raises(bc.DatasetError, match="could not download"):
        bc.load_dataset("hopper-medium-v2", torch.device("cpu"))
    assert not os.path.exists(tmp_path / "hopper_medium-v2.hdf5")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.hdf5"
    path.write_bytes(b"this is not an hdf5 file\x00\x01\x02" * 50)
    assert_dataset_error("not a readable HDF5 file", str(path))


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.95])
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_truncated_file(tmp_path, fraction, compression):
    path = tmp_path / "data.hdf5"
    arrays = make_episodes([(200, "timeout"), (100, "terminal")])
    write_hdf5(path, arrays, {"env_id": "Pendulum-v1"}, compression=compression)
    assert len(bc.load_dataset(str(path), torch.device("cpu")).rewards) == 300  # intact, it loads
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    message = assert_dataset_error("not a readable HDF5 file", str(path))
    assert "truncated or corrupt" in message


def test_corrupt_d4rl_file_says_delete(tmp_path, monkeypatch):
    """A broken file in the D4RL folder (e.g. an interrupted copy) is reported, not re-downloaded."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    no_network(monkeypatch)
    (tmp_path / "hopper_medium-v2.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 10)
    message = assert_dataset_error("not a readable HDF5 file", "hopper-medium-v2")
    assert "delete it" in message and str(tmp_path) in message


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals"])
def test_missing_key(tmp_path, key):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    del arrays[key]
    assert_dataset_error(f"has no '{key}' array", pendulum_file_from(tmp_path, arrays))


def pendulum_file_from(tmp_path, arrays, attrs=None):
    return write_hdf5(tmp_path / "data.hdf5", arrays, attrs)


def test_missing_timeouts_and_next_observations(tmp_path):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")], next_observations=False, timeouts=False)
    assert_dataset_error("neither 'timeouts' nor 'next_observations'", pendulum_file_from(tmp_path, arrays))


def test_observations_as_group_is_missing(tmp_path):
    """Only top-level datasets count: a group of the same name is no array."""
    arrays = make_episodes([(3, "timeout")])
    obs = arrays.pop("observations")
    path = pendulum_file_from(tmp_path, arrays)
    with h5py.File(path, "a") as f:
        f.create_group("observations").create_dataset("x", data=obs)
    assert_dataset_error("has no 'observations' array", path)


def test_inconsistent_rows(tmp_path):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    arrays["actions"] = arrays["actions"][:-1]
    assert_dataset_error("'actions' has 4 rows but 'observations' has 5", pendulum_file_from(tmp_path, arrays))


def test_empty_dataset(tmp_path):
    arrays = {k: v[:0] for k, v in make_episodes([(3, "timeout")]).items()}
    assert_dataset_error("holds no transitions", pendulum_file_from(tmp_path, arrays))


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "next_observations"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values(tmp_path, key, value):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    arrays[key] = arrays[key].copy()
    arrays[key][1] = value
    arrays[key][3] = value
    assert_dataset_error(f"'{key}' holds NaN or inf in 2 rows", pendulum_file_from(tmp_path, arrays))


@pytest.mark.parametrize("obs_dim,act_dim", [(4, 1), (3, 2), (11, 3), (2, 1)])
def test_dimensions_differ_from_environment(tmp_path, obs_dim, act_dim):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")], obs_dim=obs_dim, act_dim=act_dim)
    message = assert_dataset_error("belongs to another environment", pendulum_file_from(tmp_path, arrays))
    assert f"observations of dim {obs_dim} and actions of dim {act_dim}" in message
    assert f"environment has {OBS_DIM} and {ACT_DIM}" in message


def test_d4rl_dimensions_differ(tmp_path, monkeypatch):
    """A D4RL name whose file holds another environment's data (Pendulum data under a hopper name)."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    no_network(monkeypatch)
    write_hdf5(tmp_path / "hopper_random-v2.hdf5", make_episodes([(3, "timeout")]), {})
    assert_dataset_error("but its environment has 11 and 3", "hopper-random-v2")


def test_next_observations_dimension_differs(tmp_path):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    arrays["next_observations"] = np.zeros((5, OBS_DIM + 2), np.float32)
    assert_dataset_error("dim", pendulum_file_from(tmp_path, arrays))


def test_file_without_env_id(tmp_path):
    path = pendulum_file(tmp_path / "data.hdf5", attrs={"ref_min_score": 0.0, "ref_max_score": 1.0})
    message = assert_dataset_error("does not name its environment", path)
    assert "env_id" in message


def test_file_with_unknown_env_id(tmp_path):
    path = pendulum_file(tmp_path / "data.hdf5", attrs={"env_id": "NoSuchEnv-v0"})
    assert_dataset_error("cannot make the evaluation environment", path)


def test_file_attributes_as_bytes_and_env_kwargs(tmp_path):
    """env_id stored as bytes (as some h5py writers do) and env_kwargs as JSON both work."""
    path = pendulum_file(
        tmp_path / "data.hdf5", attrs={"env_id": np.bytes_(b"Pendulum-v1"), "env_kwargs": json.dumps({"g": 9.0})}
    )
    data = bc.load_dataset(path, torch.device("cpu"))
    env = data.make_env()
    assert env.spec.id == "Pendulum-v1" and env.unwrapped.g == 9.0
    env.close()
    assert data.ref_min_score is None and data.ref_max_score is None  # no reference returns: raw returns only


def test_file_reward_scaling_attribute(tmp_path):
    """A file may name the reward scaling it wants (read by scripts with --reward-scaling auto); env_id is kept."""
    path = pendulum_file(tmp_path / "data.hdf5", attrs={"env_id": "Pendulum-v1", "reward_scaling": "return_range"})
    data = bc.load_dataset(path, torch.device("cpu"))
    assert (data.env_id, data.reward_scaling) == ("Pendulum-v1", "return_range")
    plain = bc.load_dataset(pendulum_file(tmp_path / "plain.hdf5"), torch.device("cpu"))
    assert (plain.env_id, plain.reward_scaling) == ("Pendulum-v1", None)


def test_file_with_unknown_reward_scaling(tmp_path):
    path = pendulum_file(tmp_path / "data.hdf5", attrs={"env_id": "Pendulum-v1", "reward_scaling": "times_ten"})
    message = assert_dataset_error("reward_scaling", path)
    assert "'times_ten'" in message and "none, return_range, minus_one" in message


def test_no_usable_transitions(tmp_path):
    arrays = make_episodes([(1, "timeout"), (1, "timeout"), (1, "none")], next_observations=False)
    assert_dataset_error("transitions", pendulum_file_from(tmp_path, arrays))


@pytest.mark.parametrize("case", ["rewards_2_columns", "terminals_2_columns", "env_kwargs_not_json", "ref_score_text"])
def test_malformed_input_is_dataset_error(tmp_path, case):
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    attrs = {"env_id": "Pendulum-v1"}
    if case == "rewards_2_columns":
        arrays["rewards"] = np.zeros((5, 2), np.float32)
    elif case == "terminals_2_columns":
        arrays["terminals"] = np.zeros((5, 2), bool)
    elif case == "env_kwargs_not_json":
        attrs["env_kwargs"] = "g=9"
    else:
        attrs["ref_min_score"] = "random"
    with pytest.raises(bc.DatasetError):
        bc.load_dataset(pendulum_file_from(tmp_path, arrays, attrs), torch.device("cpu"))


def test_scalar_dataset_is_ignored(tmp_path):
    """A scalar top-level entry is metadata, not a column: it is skipped, the data loads."""
    arrays = make_episodes([(3, "timeout"), (2, "terminal")])
    arrays["version"] = np.float32(2.0)
    data = bc.load_dataset(pendulum_file_from(tmp_path, arrays, {"env_id": "Pendulum-v1"}), torch.device("cpu"))
    assert len(data.rewards) == 5


# ---------------------------------------------------------------------------- 4: D4RL names
def test_d4rl_name_from_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    calls = []
    no_network(monkeypatch, calls)
    arrays = hopper_arrays()
    # a real D4RL file: no env_id attribute, infos/ and metadata/ groups beside the arrays
    path = write_hdf5(tmp_path / "hopper_medium_replay-v2.hdf5", arrays, {})
    with h5py.File(path, "a") as f:
        f.create_dataset("infos/qpos", data=np.zeros((10, 6), np.float32))
        f.create_dataset("metadata/algorithm", data="SAC")
    data = bc.load_dataset("hopper-medium-replay-v2", torch.device("cpu"))
    assert calls == []  # the local file is used, nothing is downloaded
    assert data.ref_min_score == pytest.approx(-20.272305) and data.ref_max_score == pytest.approx(3234.3)
    env = data.make_env()
    assert env.spec.id == "Hopper-v4"
    assert env.observation_space.shape == (HOPPER_OBS,) and env.action_space.shape == (HOPPER_ACT,)
    env.close()
    np.testing.assert_array_equal(data.observations.numpy(), arrays["observations"])
    np.testing.assert_array_equal(data.next_observations.numpy(), arrays["next_observations"])
    assert data.terminals.sum() == 0 and len(data.rewards) == 10
    assert (data.env_id, data.reward_scaling) == ("Hopper-v4", None)
    np.testing.assert_allclose(data.episode_returns, arrays["rewards"].reshape(2, 5).sum(1), rtol=1e-5)


def test_d4rl_tables():
    assert set(bc.D4RL_ENVS) == {"halfcheetah", "hopper", "walker2d", "ant"}
    refs = {k: v[2:] for k, v in bc.D4RL_ENVS.items()}
    assert refs == {
        "halfcheetah": (-280.178953, 12135.0),
        "hopper": (-20.272305, 3234.3),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }
    assert {k: v[0] for k, v in bc.D4RL_ENVS.items()} == {
        "halfcheetah": "HalfCheetah-v4",
        "hopper": "Hopper-v4",
        "walker2d": "Walker2d-v4",
        "ant": "Ant-v4",
    }
    for env in bc.D4RL_ENVS:
        for level in ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay"):
            assert bc.D4RL_NAME.match(f"{env}-{level}-v2")
    for bad in (
        "hopper-medium-v0",
        "hopper-medium-v2.hdf5",
        "humanoid-medium-v2",
        "hopper-medium_replay-v2",
        "Hopper-medium-v2",
    ):
        assert not bc.D4RL_NAME.match(bad)


def test_d4rl_download(tmp_path, monkeypatch):
    folder = tmp_path / "d4rl"  # does not exist yet: the download creates it
    monkeypatch.setenv("D4RL_DATASET_DIR", str(folder))
    arrays = hopper_arrays(n_episodes=3, length=4, seed=1)
    payload = open(write_hdf5(tmp_path / "served.hdf5", arrays, {}), "rb").read()
    calls = []

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    data = bc.load_dataset("hopper-medium-replay-v2", torch.device("cpu"))
    assert calls == ["http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5"]
    assert sorted(os.listdir(folder)) == ["hopper_medium_replay-v2.hdf5"]  # right name, no .part left
    assert (folder / "hopper_medium_replay-v2.hdf5").read_bytes() == payload
    np.testing.assert_array_equal(data.actions.numpy(), arrays["actions"])
    assert data.ref_max_score == pytest.approx(3234.3)
    # a second load uses the downloaded file
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    assert len(bc.load_dataset("hopper-medium-replay-v2", torch.device("cpu")).rewards) == 12


# ---------------------------------------------------------------------------- 5: Minari
MINARI_ID = "test/pendulum/tiny-v0"
# (length, terminated at the end, truncated at the end)
MINARI_EPISODES = [(3, True, False), (4, False, True), (2, False, True), (1, True, False)]


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory):
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    folder = tmp_path_factory.mktemp("minari")
    buffers = []
    for ep, (length, terminated, truncated) in enumerate(MINARI_EPISODES):
        obs = np.array([[ep / 10, t / 10, 0.5] for t in range(length + 1)], np.float32)
        end = [False] * (length - 1)
        buffers.append(
            EpisodeBuffer(
                id=ep,
                observations=obs,
                actions=np.full((length, 1), ep / 10, np.float32),
                rewards=np.array([100.0 * ep + t for t in range(length)]),
                terminations=np.array(end + [terminated]),
                truncations=np.array(end + [truncated]),
            )
        )
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setenv("MINARI_DATASETS_PATH", str(folder))
        env = gym.make("Pendulum-v1")
        minari.create_dataset_from_buffers(
            dataset_id=MINARI_ID, buffer=buffers, env=env, ref_min_score=-1234.5, ref_max_score=-150.25
        )
        env.close()
    return folder


def test_minari_dataset(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    data = bc.load_dataset(MINARI_ID, torch.device("cpu"))
    obs, nxt = data.observations.numpy(), data.next_observations.numpy()
    rows = [(ep, t) for ep, (length, _, _) in enumerate(MINARI_EPISODES) for t in range(length)]
    np.testing.assert_allclose(obs[:, :2], np.array(rows) / 10, rtol=1e-6)
    # next observation: the following one of the same episode, also at a truncation and a termination
    np.testing.assert_allclose(nxt[:, 0], obs[:, 0])
    np.testing.assert_allclose(nxt[:, 1], obs[:, 1] + 0.1, rtol=1e-5)
    terminals = [float(t == length - 1 and term) for length, term, _ in MINARI_EPISODES for t in range(length)]
    assert data.terminals.tolist() == terminals
    assert data.rewards.tolist() == [100.0 * ep + t for ep, t in rows]
    np.testing.assert_allclose(data.actions.numpy()[:, 0], [ep / 10 for ep, _ in rows], rtol=1e-6)
    np.testing.assert_allclose(
        data.episode_returns,
        [sum(100.0 * ep + t for t in range(length)) for ep, (length, _, _) in enumerate(MINARI_EPISODES)],
    )
    assert (data.ref_min_score, data.ref_max_score) == (-1234.5, -150.25)
    for tensor in (data.observations, data.actions, data.rewards, data.next_observations, data.terminals):
        assert tensor.dtype == torch.float32
    env = data.make_env()
    assert env.spec.id == "Pendulum-v1"
    env.close()


def test_minari_unknown_id_without_network(minari_dir, monkeypatch):
    import minari.storage.hosting as hosting

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))

    def offline(dataset_id, *args, **kwargs):
        raise ConnectionError(f"cannot reach the Minari server for {dataset_id}")

    monkeypatch.setattr(hosting, "download_dataset", offline)
    message = assert_dataset_error("cannot load Minari dataset", "test/pendulum/missing-v0")
    assert str(minari_dir) in message  # where to copy it by hand


# ---------------------------------------------------------------------------- 6: main()
def run_bc(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "algorithms", "bc.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_main_unknown_dataset_one_line_error():
    result = run_bc("--dataset", "nonexistent-name", "--num-updates", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "unknown dataset 'nonexistent-name'" in lines[0]


def test_main_corrupt_file_one_line_error(tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_bytes(b"not hdf5")
    result = run_bc("--dataset", str(path), "--num-updates", "1", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a readable HDF5 file" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # no run directory for a run that never started


# ---------------------------------------------------------------------------- 8: shipped datasets
def test_shipped_prefix_from_env_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPPED_DATASETS_DIR", str(tmp_path))
    episodes = [(3, "timeout"), (2, "terminal")]
    path = pendulum_file(
        tmp_path / "pendulum-tiny.hdf5",
        episodes,
        attrs={"env_id": "Pendulum-v1", "ref_min_score": -1.0, "ref_max_score": 1.0},
    )
    assert bc.shipped_path("pendulum-tiny") == path
    data = bc.load_dataset("shipped/pendulum-tiny", torch.device("cpu"))
    assert len(data.rewards) == 5 and data.name == "shipped/pendulum-tiny"
    message = assert_dataset_error("shipped dataset 'absent' not found", "shipped/absent")
    assert str(tmp_path) in message


SHIPPED_FILES = sorted(glob.glob(os.path.join(SHIPPED, "*.hdf5")))


def test_shipped_datasets_stay_small():
    """Every clone carries datasets/shipped/: the folder stays well under 60 MB (51.7 MB with the BOReL point robot)."""
    assert sum(os.path.getsize(p) for p in glob.glob(os.path.join(SHIPPED, "*"))) < 55_000_000


@pytest.mark.skipif(not SHIPPED_FILES, reason="no datasets/shipped/*.hdf5 yet")
@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[os.path.basename(p) for p in SHIPPED_FILES])
def test_shipped_dataset_loads(path, monkeypatch):
    monkeypatch.delenv("SHIPPED_DATASETS_DIR", raising=False)
    name = os.path.splitext(os.path.basename(path))[0]
    with h5py.File(path, "r") as f:
        assert {"observations", "actions", "rewards", "terminals", "timeouts"} <= set(f.keys())
        for key in ("observations", "actions", "rewards") + (
            ("next_observations",) if "next_observations" in f else ()
        ):
            assert f[key].dtype == np.float32, key
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        assert f["terminals"][-1] or f["timeouts"][-1], "a shipped dataset ends at an episode boundary"
        attrs = dict(f.attrs)
    assert "env_id" in attrs and attrs["ref_min_score"] < attrs["ref_max_score"]
    by_name = bc.load_dataset("shipped/" + name, torch.device("cpu"))
    by_path = bc.load_dataset(path, torch.device("cpu"))
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        assert torch.equal(getattr(by_name, key), getattr(by_path, key)), key
    assert len(by_name.rewards) > 0 and len(by_name.episode_returns) > 0
    assert (by_name.ref_min_score, by_name.ref_max_score) == (
        float(attrs["ref_min_score"]),
        float(attrs["ref_max_score"]),
    )
    env = by_name.make_env()
    assert env.spec.id == str(attrs["env_id"]).split(":")[-1]  # "module:EnvId" registers EnvId
    env.close()
