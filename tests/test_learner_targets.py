"""TD(lambda) targets, the training mask and double Q, against hand-computed values and PyMARL2."""

from __future__ import annotations

import torch

from common.episode import training_mask
from learner.targets import double_q_max, one_step_targets, td_lambda_targets

GAMMA, LAM = 0.9, 0.5  # lambda * gamma = (1 - lambda) * gamma = 0.45


def column(*rows):
    """[B, len, 1] float tensor from per-episode lists."""
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(-1)


def reference_td_lambda(rewards, terminated, mask, target_qs, gamma, td_lambda):
    """SPEC-OVMSE.md's TD(lambda) recursion written out one episode and one step at a time:
    G_T = Qbar_T * (1 - any terminal);
    G_t = lam*gamma*G_{t+1} + mask_t*[r_t + (1-lam)*gamma*Qbar_{t+1}*(1-term_t)]."""
    B, rows = target_qs.shape[:2]
    out = torch.zeros(B, rows - 1, 1)
    for b in range(B):
        g = float(target_qs[b, -1, 0]) * (0.0 if float(terminated[b].sum()) > 0 else 1.0)
        for t in reversed(range(rows - 1)):
            one_step = float(rewards[b, t, 0]) + (1 - td_lambda) * gamma * float(target_qs[b, t + 1, 0]) * (
                1 - float(terminated[b, t, 0])
            )
            g = td_lambda * gamma * g + float(mask[b, t, 0]) * one_step
            out[b, t, 0] = g
    return out


def pymarl2_mask(filled, terminated):
    mask = filled[:, :-1].clone()
    mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1][:, :-1])
    return mask


# Two episodes padded to T = 4 steps (5 rows):
#  A: 2 steps, ends by a loss at step 1 (terminal), rows 3-4 are padding;
#  B: 4 steps, ends by the time limit (no terminal).
FILLED = column([1, 1, 1, 0, 0], [1, 1, 1, 1, 1])
TERMINATED = column([0, 1, 0, 0, 0], [0, 0, 0, 0, 0])
REWARD = column([1, 2, 0, 0], [1, 1, 1, 1])
QBAR = column([10, 20, 30, 40, 50], [5, 6, 7, 8, 9])  # target Q_tot per row (40, 50: padding garbage)


def test_mask_trains_on_steps_up_to_the_terminal_and_not_on_padding():
    mask = training_mask(FILLED, TERMINATED)
    assert mask.shape == (2, 4, 1)
    assert mask.squeeze(-1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert torch.equal(mask, pymarl2_mask(FILLED, TERMINATED))


def test_td_lambda_by_hand_with_a_terminal_and_padding():
    mask = training_mask(FILLED, TERMINATED)
    y = td_lambda_targets(REWARD, TERMINATED[:, :-1], mask, QBAR, GAMMA, LAM)
    # A: the terminal step is its reward; step 0 mixes it with the one-step bootstrap from row 1.
    a1 = 2.0
    a0 = 0.45 * a1 + 1 + 0.45 * 20  # 10.9
    # B: the time limit bootstraps from the last row: G_4 = Qbar_4 = 9.
    b3 = 0.45 * 9 + 1 + 0.45 * 9  # 9.1
    b2 = 0.45 * b3 + 1 + 0.45 * 8
    b1 = 0.45 * b2 + 1 + 0.45 * 7
    b0 = 0.45 * b1 + 1 + 0.45 * 6  # 7.3282375
    torch.testing.assert_close(y[0, :2, 0], torch.tensor([a0, a1]))
    torch.testing.assert_close(y[1, :, 0], torch.tensor([b0, b1, b2, b3]))
    assert abs(a0 - 10.9) < 1e-9 and abs(b0 - 7.3282375) < 1e-9


def test_td_lambda_equals_pymarl2_on_every_trained_step():
    torch.manual_seed(0)
    B, T = 16, 12
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    rows = torch.arange(T + 1)
    filled = (rows[None] <= lengths[:, None]).float().unsqueeze(-1)
    terminated = torch.zeros(B, T + 1, 1)
    ended = lengths < T  # PyMARL2 data: shorter episodes end with a terminal, the limit is T
    terminated[ended, lengths[ended] - 1] = 1
    reward = torch.randn(B, T, 1)
    qbar = torch.randn(B, T + 1, 1)
    mask = training_mask(filled, terminated)
    ours = td_lambda_targets(reward, terminated[:, :-1], mask, qbar, 0.99, 0.6)
    theirs = reference_td_lambda(
        reward, terminated[:, :-1], pymarl2_mask(filled, terminated), qbar, 0.99, 0.6
    )
    torch.testing.assert_close(ours * mask, theirs * mask)


def test_a_shorter_time_limit_episode_bootstraps_from_its_last_observation():
    # 2 steps, not terminated, padded to 4: row 2 is its last observation and is not trained on.
    filled = column([1, 1, 1, 0, 0])
    terminated = column([0, 0, 0, 0, 0])
    mask = training_mask(filled, terminated)
    assert mask.squeeze().tolist() == [1, 1, 0, 0]
    y = td_lambda_targets(
        column([1, 3, 0, 0]), terminated[:, :-1], mask, column([0, 4, 6, 99, 99]), GAMMA, LAM
    )
    last = 3 + 0.9 * 6  # G_1 = r_1 + gamma * Qbar_2 (the lambda-return of a one-step tail)
    torch.testing.assert_close(y[0, :2, 0], torch.tensor([0.45 * last + 1 + 0.45 * 4, last]))


def test_lambda_one_is_the_monte_carlo_return_and_lambda_zero_one_step_td():
    filled = column([1, 1, 1, 1])
    terminated = column([0, 0, 1, 0])
    mask = training_mask(filled, terminated)
    reward, qbar = column([1, 2, 3]), column([7, 7, 7, 7])
    mc = td_lambda_targets(reward, terminated[:, :-1], mask, qbar, 0.5, 1.0)
    torch.testing.assert_close(mc[0, :, 0], torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]))
    one_step = td_lambda_targets(reward, terminated[:, :-1], mask, qbar, 0.5, 0.0)
    torch.testing.assert_close(one_step[0, :, 0], torch.tensor([1 + 3.5, 2 + 3.5, 3.0]))


def test_one_step_target_is_reward_plus_discounted_next_value_unless_terminal():
    mask = training_mask(FILLED, TERMINATED)
    y = one_step_targets(REWARD, TERMINATED[:, :-1], QBAR, GAMMA)
    # y_t = r_t + gamma * (1 - term_t) * Qbar_{t+1}, on the trained steps.
    a = [1 + 0.9 * 20, 2 + 0.0]  # A's step 1 is terminal: no bootstrap
    b = [1 + 0.9 * 6, 1 + 0.9 * 7, 1 + 0.9 * 8, 1 + 0.9 * 9]  # B's time limit bootstraps from row 4
    torch.testing.assert_close(y[0, :2, 0], torch.tensor(a))
    torch.testing.assert_close(y[1, :, 0], torch.tensor(b))
    assert mask[0, 2:].sum() == 0  # A's remaining values are padding, not trained on


def test_double_q_takes_the_online_greedy_available_action_valued_by_the_target():
    online = torch.tensor([[[5.0, 1.0, 3.0, 2.0], [0.0, 9.0, 8.0, 7.0]]])  # [1, n=2, A=4]
    target = torch.tensor([[[100.0, 10.0, 30.0, 20.0], [1.0, 90.0, 80.0, 70.0]]])
    avail = torch.tensor([[[False, True, True, True], [True, False, False, True]]])
    # agent 0: action 0 (5.0) is unavailable -> action 2; agent 1: 9 and 8 unavailable -> action 3.
    assert double_q_max(online, target, avail).tolist() == [[30.0, 70.0]]
    everything = torch.ones_like(avail)
    assert double_q_max(online, target, everything).tolist() == [[100.0, 90.0]]


def test_double_q_on_padding_with_no_available_action_is_finite():
    online, target = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    value = double_q_max(online, target, torch.zeros(2, 3, 5, dtype=torch.bool))
    assert torch.isfinite(value).all()


def test_double_q_on_the_learners_layout_matches_masked_argmax_and_gather():
    """The learner's [B, T, n, A] values (strided views of the time-major unroll, bf16 targets) take
    the compiled one-pass path on CPU where it builds: it must give torch's answer exactly, ties to
    the first action and no-action rows to action 0 included."""
    torch.manual_seed(0)
    B, T, n, A = 6, 9, 3, 7
    online = torch.randint(-3, 4, (T, B, n, A)).float().transpose(0, 1)  # few values: many ties
    target = torch.randn(T, B, n, A).bfloat16().transpose(0, 1)
    avail = torch.rand(B, T, n, A) > 0.4
    avail[0, 0] = False  # rows with no available action
    greedy = online.masked_fill(~avail, float("-inf")).argmax(dim=-1, keepdim=True)
    expected = target.gather(-1, greedy).squeeze(-1).float()
    got = double_q_max(online, target, avail)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert torch.equal(double_q_max(online.bfloat16(), target, avail), expected)


def test_targets_refuse_bootstrap_values_without_the_extra_row():
    import pytest

    with pytest.raises(ValueError, match=r"target_qs needs T \+ 1 = 4 rows, got 3"):
        one_step_targets(REWARD[:, :3], TERMINATED[:, :3], QBAR[:, :3], GAMMA)
    with pytest.raises(ValueError, match=r"target_qs needs T \+ 1 = 4 rows, got 3"):
        td_lambda_targets(REWARD[:, :3], TERMINATED[:, :3], FILLED[:, :3], QBAR[:, :3], GAMMA, LAM)
