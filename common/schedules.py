"""Linear annealing schedules, shared by actors (epsilon) and the learner (OVM memory coefficient).

Both of the paper's schedules have the same shape (Eqs. 6 and 7):
    value_t = max(end, start - (start - end) * t / steps)
with t counted in environment steps since the online phase began. `linear_anneal` is that formula,
written as a clamped interpolation so that it also works when end > start (it then rises to `end`).

`steps <= 0` means "already annealed": the value is `end` from t = 0 on (the limit of the formula
as steps -> 0). Every preset with no annealing (the memory coefficient on 2s3z and 3s5z, anneal
steps 0) has start == end, so its value stays at start, as the paper's constant lambda = 1.
"""

from __future__ import annotations

from common.config.sections import ActorConfig, LearnerConfig


def linear_anneal(start: float, end: float, steps: int, t: float) -> float:
    """`start` at t <= 0, `end` at t >= steps, linear in between; `end` throughout when steps <= 0."""
    if steps <= 0:
        return float(end)
    fraction = min(max(float(t) / float(steps), 0.0), 1.0)
    return float(start + (end - start) * fraction)


def epsilon_at(actor: ActorConfig, online_env_steps: int) -> float:
    """Exploration rate epsilon_t (Eq. 7) after `online_env_steps` environment steps of the online
    phase (all actors together). For decentralized SE each agent explores with epsilon_t / n."""
    return linear_anneal(actor.epsilon_start, actor.epsilon_end, actor.epsilon_anneal_steps, online_env_steps)


def memory_coefficient_at(learner: LearnerConfig, online_env_steps: int) -> float:
    """OVM's memory coefficient lambda_t (Eq. 6) after `online_env_steps` environment steps of the
    online phase."""
    return linear_anneal(
        learner.memory_coef_start, learner.memory_coef_end, learner.memory_anneal_steps, online_env_steps
    )
