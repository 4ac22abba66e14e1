"""A ring buffer of single transitions for the continuous worlds' online learners (MATD3).

Preallocated numpy arrays; `add` writes a batch of transitions with one vectorised copy per field,
overwriting the oldest once full; `sample` draws uniformly with replacement from a seeded
generator into a `TransitionBatch`. `arrays()` gives what it holds in insertion order, which is how
a medium-replay dataset is the buffer up to a snapshot.
"""

from __future__ import annotations

import numpy as np
import torch

from common.errors import InputError
from common.transitions import TRANSITION_FIELDS as FIELDS
from common.transitions import TransitionBatch


class TransitionBuffer:
    def __init__(
        self, capacity: int, n_agents: int, obs_size: int, state_size: int, action_size: int, seed: int = 0
    ) -> None:
        if capacity < 1:
            raise InputError(f"transition buffer capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._data = {
            "obs": np.zeros((capacity, n_agents, obs_size), np.float32),
            "state": np.zeros((capacity, state_size), np.float32),
            "actions": np.zeros((capacity, n_agents, action_size), np.float32),
            "reward": np.zeros((capacity,), np.float32),
            "next_obs": np.zeros((capacity, n_agents, obs_size), np.float32),
            "next_state": np.zeros((capacity, state_size), np.float32),
            "terminal": np.zeros((capacity,), bool),
        }
        self._next = 0  # where the next transition goes
        self.size = 0
        self.added = 0  # ever added, overwritten ones included
        self.rng = np.random.default_rng(seed)

    def add(self, **arrays: np.ndarray) -> None:
        """Append k transitions: every field with a leading axis of the same k."""
        if set(arrays) != set(FIELDS):
            raise InputError(f"TransitionBuffer.add: expected fields {list(FIELDS)}, got {sorted(arrays)}")
        k = len(arrays["reward"])
        for name, value in arrays.items():
            if value.shape != (k, *self._data[name].shape[1:]):
                raise InputError(
                    f"TransitionBuffer.add: {name} has shape {list(value.shape)}, "
                    f"expected {[k, *self._data[name].shape[1:]]}"
                )
        rows = (self._next + np.arange(k)) % self.capacity
        for name, value in arrays.items():
            self._data[name][rows] = value
        self._next = int((self._next + k) % self.capacity)
        self.size = min(self.capacity, self.size + k)
        self.added += k

    def sample(self, batch_size: int) -> TransitionBatch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty transition buffer")
        rows = self.rng.integers(self.size, size=batch_size)
        return TransitionBatch(**{name: torch.from_numpy(self._data[name][rows]) for name in FIELDS})

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of what the buffer holds, oldest first."""
        start = self._next if self.size == self.capacity else 0
        order = (start + np.arange(self.size)) % self.capacity
        return {name: self._data[name][order].copy() for name in FIELDS}
