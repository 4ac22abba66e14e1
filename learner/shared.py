"""What every learner family shares: the sizes read from SMAC's env info, the device, frozen
copies of networks, and the episode lengths of a batch."""

from __future__ import annotations

import copy

import torch

from common.episode import TrainingBatch, training_mask


def env_sizes(env_info: dict) -> tuple[int, int, int, int]:
    """(n_agents, n_actions, obs_size, state_size) from SMAC's get_env_info()."""
    return (
        int(env_info["n_agents"]),
        int(env_info["n_actions"]),
        int(env_info["obs_shape"]),
        int(env_info["state_shape"]),
    )


def resolve_device(name: str) -> torch.device:
    """Device "auto" -> cuda when available, else cpu; any other name as torch reads it. A CUDA
    device gets its index (cuda -> cuda:0), so it compares equal to its tensors' device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def episode_lengths(batch: TrainingBatch) -> torch.Tensor:
    """Rows of each episode [B] that the update reads: its steps and its final observation."""
    return batch.filled[:, :, 0].sum(dim=1).to(torch.int64)


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy that takes no gradients: a target network, or a memory of the offline phase."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def value_diagnostics(
    batch: TrainingBatch, greedy: torch.Tensor, q_greedy: torch.Tensor, q_data: torch.Tensor, gamma: float
) -> dict[str, float]:
    """How a learner's values and greedy policy sit against a batch of dataset episodes, over their
    trained steps: `greedy` [B, T, n, 1] its greedy joint actions, `q_greedy` and `q_data` [B, T, 1]
    its joint values of those and of the data's actions.

    greedy_agreement    fraction of steps where the greedy joint action is the data's
    q_greedy_minus_data mean Q(greedy) - Q(data): how far the policy prefers actions the data did
                        not take (large: over-estimated out-of-data actions; CQL pushes it down)
    q_data, mc_return   mean Q(data) and the Monte-Carlo return-to-go of the same steps: their gap is
                        the value error on the data itself (over- or under-conservative)"""
    from learner.losses import mc_returns

    mask = training_mask(batch.filled, batch.terminated)
    steps = mask.sum().clamp(min=1)
    same = (greedy == batch.actions[:, :-1]).all(dim=2).to(mask.dtype)  # [B, T, 1]
    returns = mc_returns(batch.reward[:, :-1].to(mask.dtype), mask, gamma)

    def mean(x: torch.Tensor) -> float:
        return float((x.float() * mask).sum() / steps)

    return {
        "greedy_agreement": mean(same),
        "q_greedy_minus_data": mean(q_greedy - q_data),
        "q_data": mean(q_data),
        "mc_return": mean(returns),
    }
