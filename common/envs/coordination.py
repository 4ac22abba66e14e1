"""A one-step continuous coordination game with several equally good joint modes: the setting of
OMSD's Proposition 3.1 (arXiv 2505.05968, "combinatorial mode shift").

Two agents each observe the same context x ~ U[-1, 1]^d (each gets its own copy) and each picks an
action in [-1, 1]^2. There are K well-separated points p_0 .. p_{K-1} on a circle; the team does well
when both agents go to the same point. The episode ends after the one step (a true terminal).

- `reward` is smooth (our choice, so that a critic learns a slope, not a plateau): max over k of
  exp(-(|a_1 - p_k|^2 + |a_2 - p_k|^2) / (2 w^2)), 1 exactly at a joint mode.
- `coordinated` is the game's success: both actions within `success_radius` of the same p_k.

The dataset (`dataset`) mixes the K joint modes evenly and independently of x: each transition
picks k uniformly, both actions are p_k plus small Gaussian noise (clipped to the box). Each agent's
own actions are then an even mixture of the K points, whatever x is, so two agents who each follow
their own marginal behaviour pick the same point only 1/K of the time: the mass the product of
marginals puts on unrewarded combinations is 1 - 1/K (1 - 2^(1-n) for two modes and n agents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_AGENTS = 2
ACTION_SIZE = 2


@dataclass(frozen=True)
class CoordinationGame:
    context_size: int = 2
    n_modes: int = 2
    mode_distance: float = 0.7  # |p_k|: the points' distance from the origin
    angle: float = math.pi / 4  # p_0's angle; p_k at angle + 2 pi k / K
    reward_width: float = 0.25  # w of the smooth reward
    success_radius: float = 0.25

    def __post_init__(self) -> None:
        if self.n_modes < 2:
            raise ValueError(f"CoordinationGame.n_modes: need at least 2 modes, got {self.n_modes}")
        if self.context_size < 1:
            raise ValueError(f"CoordinationGame.context_size: must be >= 1, got {self.context_size}")
        if self.mode_distance <= 0.0:
            raise ValueError(f"CoordinationGame.mode_distance: {self.mode_distance} must be > 0")
        # up to sqrt(2) on a diagonal (the box's corners); the tolerance absorbs sqrt(2) cos(pi/4)'s rounding
        if np.abs(self._points()).max() > 1.0 + 1e-6:
            raise ValueError(
                f"CoordinationGame.mode_distance: {self.mode_distance} at angle {self.angle:.3f} puts a mode "
                "outside the action box [-1, 1]^2"
            )
        gap = 2 * self.mode_distance * math.sin(math.pi / self.n_modes)
        if self.success_radius <= 0 or 2 * self.success_radius >= gap:
            raise ValueError(
                f"CoordinationGame.success_radius: {self.success_radius} must be > 0 and under half the "
                f"gap between modes ({gap / 2:.3f})"
            )

    @property
    def state_size(self) -> int:
        return self.context_size

    @property
    def obs_size(self) -> int:
        return self.context_size

    def _points(self) -> np.ndarray:
        angles = self.angle + 2 * np.pi * np.arange(self.n_modes) / self.n_modes
        return self.mode_distance * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def modes(self) -> np.ndarray:
        """The K mode points [K, 2]."""
        return self._points().astype(np.float32)

    def contexts(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """x ~ U[-1, 1]^d [count, d]."""
        return rng.uniform(-1.0, 1.0, size=(count, self.context_size)).astype(np.float32)

    def observe(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(obs [B, 2, d]: each agent's copy of x, state [B, d]: x)."""
        return np.repeat(contexts[:, None, :], N_AGENTS, axis=1), contexts.copy()

    def _squared_distances(self, actions: np.ndarray) -> np.ndarray:
        """|a_i - p_k|^2 [B, 2, K] for actions [B, 2, 2]."""
        return ((actions[:, :, None, :] - self.modes()[None, None]) ** 2).sum(-1)

    def reward(self, actions: np.ndarray) -> np.ndarray:
        """The team's smooth reward [B] for joint actions [B, 2, 2]."""
        joint = self._squared_distances(actions).sum(1)  # [B, K]
        return np.exp(-joint.min(-1) / (2 * self.reward_width**2)).astype(np.float32)

    def coordinated(self, actions: np.ndarray) -> np.ndarray:
        """[B] bool: both agents within `success_radius` of the same mode point."""
        near = self._squared_distances(actions) <= self.success_radius**2  # [B, 2, K]
        return near.all(axis=1).any(axis=1)

    def dataset(self, count: int, seed: int, noise: float = 0.05) -> dict[str, np.ndarray]:
        """`count` one-step transitions, the modes mixed evenly and independently of x: the fields
        of `common.transitions.TransitionBatch` as numpy arrays, plus `mode` [B] (which p_k)."""
        rng = np.random.default_rng(seed)
        x = self.contexts(count, rng)
        mode = rng.integers(self.n_modes, size=count)
        actions = self.modes()[mode][:, None, :] + noise * rng.standard_normal((count, N_AGENTS, ACTION_SIZE))
        actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
        obs, state = self.observe(x)
        return {
            "obs": obs,
            "state": state,
            "actions": actions,
            "reward": self.reward(actions),
            "next_obs": np.zeros_like(obs),  # one step: nothing follows the terminal
            "next_state": np.zeros_like(state),
            "terminal": np.ones(count, dtype=bool),
            "mode": mode,
        }
