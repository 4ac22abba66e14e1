"""How a joint policy coordinates on simple_spread: which landmark each agent ends up at.

The assignment signature of a batch of episodes is each agent's nearest landmark at the episode's
last step, [episodes, n] landmark indices. When every landmark is some agent's nearest, a row is a
permutation: the landmarks are all covered (no distance threshold: "covered" means claimed). Two
joint policies played from the same seeded starts coordinate alike when their signatures agree;
`assignment_disagreement` is the fraction of starts where they do not. Experts whose signatures
disagree often make multimodal data (the mixed dataset, deploy/studies/particle_datasets.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.envs.particles import SpreadBatchEnv

LANDMARKS_START = 4  # an observation: own velocity (2), own position (2), then each landmark (2 each)


def rotate_landmarks(obs: np.ndarray, n_landmarks: int, shift: int) -> np.ndarray:
    """A copy of observations [..., O] with the landmarks listed `shift` places later (cyclically).
    A policy that learned fixed roles ("go to the second landmark listed") then holds other roles,
    equally good, since the world draws its landmarks alike."""
    obs = np.array(obs, copy=True)
    end = LANDMARKS_START + 2 * n_landmarks
    block = obs[..., LANDMARKS_START:end].reshape(*obs.shape[:-1], n_landmarks, 2)
    obs[..., LANDMARKS_START:end] = np.roll(block, shift, axis=-2).reshape(*obs.shape[:-1], 2 * n_landmarks)
    return obs


def nearest_landmarks(agent_pos: np.ndarray, landmark_pos: np.ndarray) -> np.ndarray:
    """Each agent's nearest landmark [B, n] (int64) from agent positions [B, n, 2] and landmark
    positions [B, m, 2]; a tie goes to the lower landmark index."""
    agent_pos, landmark_pos = np.asarray(agent_pos, float), np.asarray(landmark_pos, float)
    offsets = landmark_pos[:, None, :, :] - agent_pos[:, :, None, :]  # [B, agent, landmark, 2]
    return np.linalg.norm(offsets, axis=-1).argmin(axis=2)


def covers_all(assignment: np.ndarray, n_landmarks: int | None = None) -> np.ndarray:
    """[B] bool: every one of the `n_landmarks` (default: one per agent) is some agent's nearest."""
    assignment = np.asarray(assignment)
    m = assignment.shape[1] if n_landmarks is None else n_landmarks
    claimed = np.zeros((assignment.shape[0], m), dtype=bool)
    claimed[np.arange(assignment.shape[0])[:, None], assignment] = True
    return claimed.all(axis=1)


def coverage(assignment: np.ndarray, n_landmarks: int | None = None) -> float:
    """The fraction of episodes whose landmarks are all covered."""
    return float(covers_all(assignment, n_landmarks).mean())


def usual_assignment(assignment: np.ndarray, n_landmarks: int | None = None) -> tuple[list[int], float]:
    """The permutation a policy ends in most often among its all-covered episodes, and the share of
    those episodes it covers ([], 0.0 when none is covered): a policy that holds to fixed roles
    (agent i always at landmark p[i]) shows a share near 1."""
    assignment = np.asarray(assignment)
    covered = assignment[covers_all(assignment, n_landmarks)]
    if not len(covered):
        return [], 0.0
    rows, counts = np.unique(covered, axis=0, return_counts=True)
    best = int(counts.argmax())
    return [int(i) for i in rows[best]], float(counts[best] / len(covered))


def shared_roles(usuals: list[tuple[list[int], float]], min_share: float = 0.5) -> list[int] | None:
    """The fixed roles every policy holds to, when they all hold to the same ones: each policy's
    `usual_assignment` is one permutation, in at least `min_share` of its covered episodes; else
    None. Policies that share their roles coordinate alike however often their ends differ."""
    if not usuals or any(share < min_share or not roles for roles, share in usuals):
        return None
    first = list(usuals[0][0])
    return first if all(list(roles) == first for roles, _ in usuals) else None


def assignment_disagreement(first: np.ndarray, second: np.ndarray) -> float:
    """The fraction of episodes (the same starts, row for row) where two signatures differ in any
    agent's landmark."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(
            f"signatures must be [episodes, agents] of one shape, got {first.shape} and {second.shape}"
        )
    return float((first != second).any(axis=1).mean())


def disagreement_matrix(signatures: list[np.ndarray]) -> list[list[float]]:
    """Every pair's `assignment_disagreement`, as a symmetric matrix with a zero diagonal."""
    k = len(signatures)
    return [[assignment_disagreement(signatures[i], signatures[j]) for j in range(k)] for i in range(k)]


def assignment_signature(
    act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int, n_agents: int = 3
) -> np.ndarray:
    """The signature of `act` (observations [B, n, O] -> actions [B, n, 5]) over `episodes` whole
    episodes from the starts `SpreadBatchEnv(episodes, seed)` draws: the same starts for every policy
    given the same seed."""
    env = SpreadBatchEnv(episodes, seed=seed, n_agents=n_agents, auto_reset=False)
    obs = env.reset()
    for _ in range(env.episode_limit):
        obs = env.step(act(obs.obs)).next
    return nearest_landmarks(env.agent_pos, env.landmark_pos)
