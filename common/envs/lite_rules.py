"""What the lite world's two engines share (SMAC's maps in `lite.py`, SMACv2's rules in
`smacv2_world.py`): the combat model's constants and the counter-based random numbers."""

from __future__ import annotations

import numpy as np

MOVE_DIRECTIONS = np.array([1j, -1j, 1, -1], dtype=np.complex64)  # N, S, E, W
ACQUIRE_MARGIN = 1.0  # enemy AI acquires targets this far beyond max(weapon range, 4)
CHASE_OVERSHOOT = 0.05  # a chasing unit steps this far inside its weapon range
GOAL_REACHED = 1.0
SEPARATION_PASSES = 3
SEPARATION_STRENGTH = 0.5  # share of an overlap each unit of the pair moves


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based hash: deterministic per-battle randomness without per-battle generators."""
    with np.errstate(over="ignore"):
        return _mix(x)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's arithmetic (wrapping uint64), for callers that already ignore overflow."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(seeds: np.ndarray, episodes: np.ndarray, n: int) -> np.ndarray:
    """Uniform [0, 1) numbers, [len(seeds), n], a pure function of (seed, episode, position)."""
    with np.errstate(over="ignore"):  # once for the four hashes
        key = _mix(_mix(seeds.astype(np.uint64)) ^ episodes.astype(np.uint64))
        z = _mix(key[:, None] ^ _mix(np.arange(n, dtype=np.uint64))[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
