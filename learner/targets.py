"""TD targets for QMIX, as pure functions of tensors (PyMARL2's `build_td_lambda_targets` & co.).

Layout (see `common.episode.TrainingBatch`): a batch has T + 1 rows per episode; rows 0..T-1 are
the steps the learner trains on ("[:, :-1]"), row t + 1 is what step t led to. Shapes:
reward, terminated, mask [B, T, 1]; Q values for bootstrapping [B, T + 1, 1].
"""

from __future__ import annotations

import torch

from common import kernels


def td_lambda_targets(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    target_qs: torch.Tensor,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """TD(lambda) returns [B, T, 1] (PyMARL2's recursion).

    target_qs [B, T + 1, 1] is Qbar_t, the target network's value of row t (double Q, mixed).
    G_T = Qbar_T * (1 - any terminal), and for t < T:
        G_t = lambda * gamma * G_{t+1} + mask_t * [r_t + (1 - lambda) * gamma * Qbar_{t+1} * (1 - term_t)].

    At the last trained step of an episode that ends before row T, G_{t+1} is taken as the bootstrap
    value Qbar_{t+1} * (1 - term_t) instead of the recursion's value from the padding. This is
    exactly PyMARL2's value wherever PyMARL2's data can occur (after a terminal both are 0; a
    time-limit end is at row T, where G_T is PyMARL2's initial value), and it is the right
    lambda-return for a shorter time-limit episode. Values on untrained steps (mask 0) are not
    meaningful."""
    T = reward.shape[1]
    if target_qs.shape[1] != T + 1:
        raise ValueError(f"target_qs needs T + 1 = {T + 1} rows, got {target_qs.shape[1]}")
    bootstrap = target_qs[:, 1:] * (1.0 - terminated)  # Qbar_{t+1} * (1 - term_t), [B, T, 1]
    one_step = mask * (reward + (1.0 - td_lambda) * gamma * bootstrap)
    returns = torch.empty_like(one_step)
    following = bootstrap[:, T - 1]  # G_T (equal to PyMARL2's initial value on every trained row)
    for t in range(T - 1, -1, -1):
        if t < T - 1:  # continue the recursion while step t + 1 is trained, else bootstrap at t + 1
            following = torch.where(mask[:, t + 1] > 0, returns[:, t + 1], bootstrap[:, t])
        returns[:, t] = td_lambda * gamma * following + one_step[:, t]
    return returns


def double_q_max(online_qs: torch.Tensor, target_qs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Double Q: the target network's value [..., n] of the online network's greedy *available*
    action (unavailable = -inf), for per-agent values [..., n, A] and availability [..., n, A].
    Rows with no available action (padding) pick action 0. fp32, whatever the values' dtype.

    On CPU, [B, T, n, A] values go through the compiled kernel's one pass where it builds (same
    result: the values are compared as they are, ties go to the first action)."""
    compiled_dtypes = (torch.float32, torch.bfloat16)
    if (
        online_qs.dim() == 4
        and online_qs.device.type == "cpu"
        and avail.dtype == torch.bool
        and online_qs.dtype in compiled_dtypes
        and target_qs.dtype in compiled_dtypes
    ):
        kernel = kernels.kernel()
        if kernel is not None:
            return kernel.double_q_values(online_qs, target_qs, avail)
    greedy = online_qs.masked_fill(~avail.bool(), float("-inf")).argmax(dim=-1, keepdim=True)
    return target_qs.gather(-1, greedy).squeeze(-1).float()


def one_step_targets(
    reward: torch.Tensor, terminated: torch.Tensor, target_qs: torch.Tensor, gamma: float
) -> torch.Tensor:
    """One-step targets [B, T, 1] (the paper's Eq. 4 and 8): y_t = r_t + gamma * (1 - term_t) * Qbar_{t+1},
    with target_qs [B, T + 1, 1] as for `td_lambda_targets` (double Q, mixed). A time-limit end
    bootstraps from its last row; values on untrained steps are not meaningful."""
    T = reward.shape[1]
    if target_qs.shape[1] != T + 1:
        raise ValueError(f"target_qs needs T + 1 = {T + 1} rows, got {target_qs.shape[1]}")
    return reward + gamma * (1.0 - terminated) * target_qs[:, 1:]
