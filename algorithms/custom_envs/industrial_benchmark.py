"""The Industrial Benchmark (Hein et al., "A Benchmark Environment Motivated by Industrial Control Problems",
IEEE SSCI 2017) as a Gymnasium environment, written from the reference Python implementation
`industrial-benchmark-python` 2.0 (classes IDS and IBGym) and checked against it step for step
(tests/test_lion_envs.py): the same random draws give the same trajectory.

State of one frame: setpoint p, velocity v, gain g, shift h, fatigue f, consumption c. The observation is the
last `history` frames (30 by default) flattened newest first, 6 * 30 = 180 values; at reset the first frame is
repeated. Actions: 3 deltas in [-1, 1]: v += a0, g += 10 a1, h += 5.75 a2, each clipped to [0, 100]. Reward
-(3 f + c) * reward_scale (LION's datasets store it divided by 100). An episode is `episode_length` steps (1000);
it never terminates.

Randomness comes from the environment's own np.random.Generator (seeded by reset(seed=...)); unlike the
reference, nothing touches numpy's global state. The draws are made in the reference's order, including the
three that its setpoint schedule consumes at construction although a stationary setpoint never uses them.
"""

import math

import gymnasium as gym
import numpy as np

FRAME = ("p", "v", "g", "h", "f", "c")
MAX_REQUIRED_STEP = math.sin(15.0 / 180.0 * math.pi)
SAFE_ZONE = MAX_REQUIRED_STEP / 2.0
GS_BOUND, GS_SETPOINT_DEPENDENCY = 1.5, 0.02
GS_SCALE = 2.0 * GS_BOUND + 100.0 * GS_SETPOINT_DEPENDENCY
SHIFT_STEP = (MAX_REQUIRED_STEP / 0.9) * 100.0 / GS_SCALE  # ≈ 5.75
K = 6  # the goldstone landscape has 24 angle steps; the strongest penalty sits at a quarter turn
CONVOLUTION = np.array([0.11111, 0.22222, 0.33333, 0.22222, 0.11111, 0.0, 0.0, 0.0, 0.0, 0.0])


# ---- the mis-calibration ("goldstone") sub-system: a linearly biased Goldstone potential per angle ----
def _potential_constants():
    u0 = np.cbrt(1 + np.sqrt(2)) / np.sqrt(3)
    r0 = u0 + 1 / (3 * u0)
    lam = 2 * r0**2 - r0**4 + 8 * np.sqrt(2 / 27.0) * r0
    return 2 / lam, 1 / lam, -8 * np.sqrt(2 / 27.0) / lam


ALPHA, BETA, KAPPA = _potential_constants()


def _potential(r: float, phi: float) -> float:
    return -ALPHA * r * r + BETA * (r * r) ** 2 + KAPPA * np.sin(phi) * r


def _minimum_radius(phi: float) -> float:
    """Radius of the potential's global minimum along the angle phi."""
    qh = KAPPA * abs(np.sin(phi)) / (8 * BETA)
    sign = np.sign(np.sin(phi)) or 1.0
    if qh <= -np.sqrt(1 / 27.0):
        u = np.cbrt(-sign * qh + np.sqrt(qh * qh - 1 / 27))
        return u + 1 / (3 * u)
    return sign * np.sqrt(4 / 3) * np.cos(1 / 3 * np.arccos(-qh * np.sqrt(27)))


def _penalty_table():
    """For every angle index -K..K: (phi, radius where the penalty is lowest, the potential's own minimum radius)."""
    table = []
    for idx in range(-K, K + 1):
        phi = np.mod(idx * 2 * np.pi / (4 * K), 2 * np.pi)
        opt = max(abs(np.sin(phi)), MAX_REQUIRED_STEP) * (-1 if phi >= np.pi else 1)
        table.append((phi, opt, _minimum_radius(phi)))
    return table


PENALTY_TABLE = _penalty_table()


def goldstone_reward(phi_idx: int, position: float) -> float:
    """The potential at the effective shift, with the radius stretched so that its minimum lies at `opt`."""
    phi, opt, low = PENALTY_TABLE[phi_idx + K]
    if abs(position) <= abs(opt):
        r = position * abs(low) / abs(opt)
    else:
        exponent = (2 - abs(opt)) / (2 - abs(low))
        scaling = (2 - abs(low)) / (2 - abs(opt)) ** exponent
        r = np.sign(position) * (abs(low) + scaling * (abs(position) - abs(opt)) ** exponent)
    return _potential(r, phi)


def goldstone_transition(domain: int, phi_idx: int, response: int, position: float) -> tuple[int, int, int]:
    """One step of the mis-calibration's hidden state: domain ±1, angle index, system response ±1."""
    old_domain = domain
    if abs(position) > SAFE_ZONE:
        domain = int(np.sign(position))
    if domain != old_domain:
        response = 1
    if abs(position) <= SAFE_ZONE:
        phi_idx -= int(np.sign(phi_idx))  # cool down toward 0
    elif phi_idx != -domain * K:
        phi_idx += response * int(np.sign(position))
    if abs(phi_idx) >= K:
        response = -1
        phi_idx = 2 * K - (phi_idx + 4 * K) % (4 * K)
    if phi_idx == 0 and abs(position) <= SAFE_ZONE:
        domain, phi_idx, response = 1, 0, 1
    return domain, phi_idx, response


def effective_velocity_gain(v: float, g: float, p: float) -> tuple[float, float]:
    """The effective action (α, β) in [0, 1] that drives fatigue."""
    velocity = lambda a, b: (b + 1 + p + 1.0) / (a + 101.0 - p)  # noqa: E731
    gain = lambda b: 1.0 / (b + 1.0 + p)  # noqa: E731
    alpha = (velocity(v, g) - velocity(100, 0)) / (velocity(0, 100) - velocity(100, 0))
    beta = (gain(g) - gain(100)) / (gain(0) - gain(100))
    return alpha, beta


class IndustrialBenchmarkCore:
    """The simulator (the reference's IDS class with a stationary setpoint), drawing from `rng`: a
    np.random.Generator, or anything with its methods integers, random, exponential, binomial, normal and
    standard_normal."""

    def __init__(self, setpoint: float, rng):
        self.rng = rng
        rng.integers(1, 100), rng.random(), rng.random()  # the reference's setpoint schedule, unused when stationary
        self.p, self.v, self.g, self.h = float(setpoint), 50.0, 50.0, 50.0
        self.f = self.c = 0.0
        self.hidden_velocity = self.hidden_gain = 0.0
        self.domain, self.phi_idx, self.response = 1, 0, 1
        self.costs = np.zeros(10)  # operational cost buffer, newest last
        self.first = True
        self.step(np.zeros(3))

    def frame(self) -> np.ndarray:
        return np.array([self.p, self.v, self.g, self.h, self.f, self.c])

    @property
    def cost(self) -> float:
        return 3.0 * self.f + self.c

    def step(self, action: np.ndarray) -> None:
        a = np.clip(action, -1, 1)
        self.v = float(np.clip(self.v + a[0], 0.0, 100.0))
        self.g = float(np.clip(self.g + 10 * a[1], 0.0, 100.0))
        self.h = float(np.clip(self.h + SHIFT_STEP * a[2], 0.0, 100.0))
        shift = float(np.clip(GS_SCALE * self.h / 100.0 - GS_SETPOINT_DEPENDENCY * self.p - GS_BOUND, -1.5, 1.5))
        self._fatigue()
        o = math.exp((2.0 * self.p + 2.5 * self.g + 4.0 * self.v) / 100.0)
        if self.first:
            self.costs += o
            self.first = False
        else:
            self.costs[:-1] = self.costs[1:]
            self.costs[-1] = o
        self.domain, self.phi_idx, self.response = goldstone_transition(self.domain, self.phi_idx, self.response, shift)
        miscalibration = -goldstone_reward(self.phi_idx, shift)
        hidden = np.dot(self.costs, CONVOLUTION) - 25.0 * (miscalibration - 1.0)
        self.c = float(hidden - self.rng.standard_normal() * (1 + 0.005 * hidden))

    def _fatigue(self) -> None:
        rng = self.rng
        alpha, beta = effective_velocity_gain(self.v, self.g, self.p)
        e_g, e_v = rng.exponential(0.1), rng.exponential(0.1)
        u_g, u_v = rng.random(), rng.random()
        b_g = float(rng.binomial(1, np.clip(beta, 0.001, 0.999)))
        b_v = float(rng.binomial(1, np.clip(alpha, 0.001, 0.999)))
        noise_g = 2.0 * (1.0 / (1.0 + np.exp(-e_g)) - 0.5)
        noise_v = 2.0 * (1.0 / (1.0 + np.exp(-e_v)) - 0.5)
        noise_g += (1 - noise_g) * u_g * b_g * beta
        noise_v += (1 - noise_v) * u_v * b_v * alpha
        # hidden gain and velocity: decay, or amplify once past 1.2 (up to 5)
        if beta <= 0.05:
            self.hidden_gain = beta
        elif self.hidden_gain >= 1.2:
            self.hidden_gain = min(5.0, 1.1 * self.hidden_gain)
        else:
            self.hidden_gain = 0.9 * self.hidden_gain + noise_g / 3.0
        if alpha <= 0.05:
            self.hidden_velocity = alpha
        elif self.hidden_velocity >= 1.2:
            self.hidden_velocity = min(5.0, 1.1 * self.hidden_velocity)
        else:
            self.hidden_velocity = 0.9 * self.hidden_velocity + noise_v / 3.0
        if max(self.hidden_velocity, self.hidden_gain) == 5.0:
            amplification = 1.0 / (1.0 + np.exp(-rng.normal(2.4, 0.4)))
        else:
            amplification = max(noise_v, noise_g)
        basic = max(0.0, 30000.0 / (5 * self.v + 100) - 0.01 * self.g**2)
        self.f = float(basic * (1 + 2 * amplification) / 3.0)


class IndustrialBenchmark(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, setpoint: float = 70.0, episode_length: int = 1000, history: int = 30, reward_scale=1.0):
        self.setpoint, self.episode_length, self.history, self.reward_scale = (
            setpoint,
            episode_length,
            history,
            reward_scale,
        )
        high = np.tile([100.0, 100.0, 100.0, 100.0, np.inf, np.inf], history)
        self.observation_space = gym.spaces.Box(np.zeros(6 * history), high, dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.core = None
        self.frames = None
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.core = IndustrialBenchmarkCore(self.setpoint, self.np_random)
        self.frames = np.tile(self.core.frame(), (self.history, 1))
        self.t = 0
        return self.frames.ravel().copy(), {}

    def step(self, action):
        self.core.step(np.asarray(action, dtype=np.float64))
        self.frames = np.concatenate([self.core.frame()[None], self.frames[:-1]])
        self.t += 1
        reward = -self.core.cost * self.reward_scale
        return self.frames.ravel().copy(), reward, False, self.t >= self.episode_length, {}


gym.register("IndustrialBenchmark-v0", entry_point=IndustrialBenchmark)
