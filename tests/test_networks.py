"""The QMIX networks: the agent gives the same numbers stepping (actors) and unrolling whole
sequences (learner); the mixer is PyMARL2's monotonic mixer."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
import torch

from common import kernels
from common.kernels import batch_passes, fused_gru
from common.networks import (
    QMixer,
    RNNAgent,
    agent_input_size,
    build_agent_inputs,
    episode_agent_inputs,
    length_groups,
    mix,
    mix_samples,
    previous_actions_onehot,
)


def test_agent_input_is_observation_previous_action_and_agent_id():
    obs = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # [E, n, O]
    prev = torch.nn.functional.one_hot(torch.tensor([[1, 0, 2], [0, 0, 0]]), 5).float()
    x = build_agent_inputs(obs, prev, n_agents=3)
    assert x.shape == (2, 3, agent_input_size(4, 5, 3)) == (2, 3, 12)
    assert torch.equal(x[..., :4], obs)
    assert torch.equal(x[..., 4:9], prev)
    assert torch.equal(x[1, :, 9:], torch.eye(3))


def test_previous_action_is_zero_at_the_start_and_shifted_by_one_step():
    actions = torch.tensor([[2, 0], [1, 1], [0, 2]]).view(1, 3, 2, 1)  # [B, T, n, 1]
    prev = previous_actions_onehot(actions, n_actions=3)
    assert not prev[0, 0].any()
    assert torch.equal(prev[0, 1], torch.nn.functional.one_hot(torch.tensor([2, 0]), 3).float())
    assert torch.equal(prev[0, 2], torch.nn.functional.one_hot(torch.tensor([1, 1]), 3).float())
    time_major = previous_actions_onehot(actions.transpose(0, 1), 3, time_dim=0)
    assert torch.equal(time_major.transpose(0, 1), prev)


def test_stepping_equals_unrolling_the_whole_sequence():
    torch.manual_seed(0)
    B, T, n, d, A = 3, 9, 4, 11, 6
    agent = RNNAgent(d, A, hidden_size=16)
    inputs = torch.randn(B, T, n, d)
    unrolled = agent.forward_sequence(inputs)  # one fused call
    hidden = agent.init_hidden(B * n)
    stepped = []
    for t in range(T):
        q, hidden = agent.forward_step(inputs[:, t].reshape(B * n, d), hidden)
        stepped.append(q.view(B, n, A))
    assert unrolled.shape == (B, T, n, A)
    torch.testing.assert_close(torch.stack(stepped, dim=1), unrolled, rtol=1e-5, atol=1e-6)
    # The same from a time-major tensor viewed as [B, T, ...] (the learner's layout).
    time_major = inputs.transpose(0, 1).contiguous()
    torch.testing.assert_close(agent.forward_sequence(time_major.transpose(0, 1)), unrolled)


def test_unrolling_continues_from_a_given_hidden_state():
    torch.manual_seed(1)
    agent = RNNAgent(5, 3, hidden_size=8)
    inputs = torch.randn(2, 6, 2, 5)
    full = agent.forward_sequence(inputs)
    hidden = agent.init_hidden(4)
    for t in range(3):
        _, hidden = agent.forward_step(inputs[:, t].reshape(4, 5), hidden)
    torch.testing.assert_close(
        agent.forward_sequence(inputs[:, 3:], hidden), full[:, 3:], rtol=1e-5, atol=1e-6
    )


def test_unrolling_by_length_gives_the_same_values_and_gradients_and_zeros_on_padding():
    torch.manual_seed(2)
    B, T, n, d, A = 9, 12, 3, 7, 5
    agent = RNNAgent(d, A, hidden_size=8)
    inputs = torch.randn(B, T, n, d)
    hidden = torch.randn(B * n, 8)
    lengths = torch.tensor([12, 3, 5, 2, 12, 7, 4, 3, 6])
    valid = (torch.arange(T)[None, :] < lengths[:, None])[..., None, None]  # [B, T, 1, 1]
    assert length_groups(lengths, T) is not None  # uneven enough to be grouped

    def masked_loss_and_grads(**kw):
        agent.zero_grad()
        q = agent.forward_sequence(inputs, hidden, **kw)
        (q * valid).square().sum().backward()
        return q, [p.grad.clone() for p in agent.parameters()]

    plain, plain_grads = masked_loss_and_grads()
    grouped, grouped_grads = masked_loss_and_grads(lengths=lengths)
    torch.testing.assert_close(grouped * valid, plain * valid, rtol=1e-5, atol=1e-6)
    assert not (grouped * ~valid).any()  # rows past an episode's length are 0
    for g, p in zip(grouped_grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p, rtol=1e-4, atol=1e-6)


def test_episodes_of_one_length_are_unrolled_in_one_call():
    assert length_groups(torch.full((8,), 10), rows=10) is None
    assert length_groups(torch.tensor([10, 10, 10, 9]), rows=10) is None  # too little to skip
    groups = length_groups(torch.tensor([2, 10, 3, 9]), rows=10)
    assert [(idx.tolist(), longest) for idx, longest in groups] == [([0], 2), ([2], 3), ([3], 9), ([1], 10)]


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_learners_inputs_are_observation_previous_action_and_agent_id(dtype, path, monkeypatch, request):
    if path == "torch":
        monkeypatch.setattr(batch_passes, "agent_inputs_compiled", lambda *args: None)
    else:  # the compiled library must build wherever a C++ compiler is (see the `kernel` fixture)
        request.getfixturevalue("kernel")
    torch.manual_seed(8)
    B, T, n, O, A = 3, 6, 4, 5, 7
    actions = torch.randint(0, A, (B, T + 1, n, 1))
    obs = torch.randn(T + 1, B, n, O).transpose(0, 1)  # strided, as a time-major buffer's view
    batch = types.SimpleNamespace(obs=obs, actions=actions)
    previous = previous_actions_onehot(batch.actions, A)
    expected = build_agent_inputs(batch.obs, previous, n)
    got = episode_agent_inputs(batch, A, dtype)
    assert got.dtype == (dtype or torch.float32)
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=0, atol=0)


def test_mixer_weights_are_non_negative_so_q_tot_is_monotone_in_every_agent():
    torch.manual_seed(2)
    mixer = QMixer(n_agents=3, state_size=7, embed_dim=8, hypernet_embed=16)
    state = torch.randn(4, 5, 7) * 3
    w = mixer.mixing_weights(state)
    assert w.w1.shape == (4, 5, 3, 8) and w.w2.shape == (4, 5, 8) and w.b2.shape == (4, 5, 1)
    assert (w.w1 >= 0).all() and (w.w2 >= 0).all()
    q = torch.randn(4, 5, 3, requires_grad=True)
    q_tot = mixer(q, state)
    assert q_tot.shape == (4, 5, 1)
    (grad,) = torch.autograd.grad(q_tot.sum(), q)
    assert (grad >= 0).all()


def test_mixer_matches_the_qmix_formula_and_mixes_many_joint_actions_alike():
    torch.manual_seed(3)
    mixer = QMixer(n_agents=2, state_size=4, embed_dim=5, hypernet_embed=6)
    state = torch.randn(3, 4)
    q = torch.randn(3, 2)
    w1 = mixer.hyper_w1(state).abs().view(3, 2, 5)
    b1 = mixer.hyper_b1(state)
    w2 = mixer.hyper_w2(state).abs()
    b2 = mixer.hyper_b2(state)
    expected = (torch.nn.functional.elu(torch.einsum("bn,bne->be", q, w1) + b1) * w2).sum(
        -1, keepdim=True
    ) + b2
    torch.testing.assert_close(mixer(q, state), expected)
    weights = mixer.mixing_weights(state)
    many = torch.randn(3, 7, 2)  # 7 joint actions per state
    one_by_one = torch.stack([mix(many[:, k], weights).squeeze(-1) for k in range(7)], dim=1)
    torch.testing.assert_close(mix_samples(many, weights), one_by_one)


def _assert_compiled_equals_formula(compiled, formula, q, upstream, weights_dtype) -> torch.Tensor:
    """`compiled(q, weights)` against `formula(q, weights)` on a seeded mixer's own (strided) weights,
    in values and in the gradients of q and of every hypernetwork parameter; returns the values."""
    torch.manual_seed(4)
    mixer = QMixer(n_agents=5, state_size=9, embed_dim=32, hypernet_embed=16)
    state = torch.randn(6, 7, 9) * 2

    def values_and_gradients(mixing):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights_dtype == torch.bfloat16):
            weights = mixer.mixing_weights(state)
        assert weights.w1.dtype == weights_dtype
        q_tot = mixing(q, weights)
        return q_tot, torch.autograd.grad(q_tot, [q, *mixer.parameters()], upstream)

    got, got_grads = values_and_gradients(compiled)
    want, want_grads = values_and_gradients(formula)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tolerance = 1e-5 if weights_dtype == torch.float32 else 1e-2  # bf16 gradients: rounding of the result
    for g, w in zip(got_grads, want_grads, strict=True):  # q, then every hypernetwork parameter
        torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance)
    return got


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_mix_gives_the_formulas_values_and_gradients(kernel, weights_dtype):
    """On CPU `mix` runs a compiled pass (forward and backward); it must equal the formula summed in
    fp32 over the weights as read, for the mixer's own strided weights (split views of one product)
    and pre-activations of both signs (both branches of the ELU)."""

    def formula(q, w):
        pre = (q.unsqueeze(-1) * w.w1.float()).sum(-2) + w.b1.float()
        assert (pre > 0).any() and (pre < 0).any()
        return (torch.nn.functional.elu(pre) * w.w2.float()).sum(-1, keepdim=True) + w.b2.float()

    def compiled(q, w):
        out = batch_passes.mix_compiled(q, *w)
        assert out is not None, "the compiled mix did not take the mixer's weights"
        return out

    q = torch.randn(6, 7, 5, requires_grad=True)
    _assert_compiled_equals_formula(compiled, formula, q, torch.randn(6, 7, 1), weights_dtype)


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_mix_of_sampled_joint_actions_gives_the_formulas_values_and_gradients(
    kernel, weights_dtype
):
    """`mix_samples` (the CQL terms' K joint actions per state) runs a compiled pass on CPU; each of
    the K values and every gradient, summed over the samples for the shared weights, must equal the
    formula's."""

    def formula(q, w):
        pre = (q.unsqueeze(-1) * w.w1.float().unsqueeze(-3)).sum(-2) + w.b1.float().unsqueeze(-2)
        assert (pre > 0).any() and (pre < 0).any()
        return (torch.nn.functional.elu(pre) * w.w2.float().unsqueeze(-2)).sum(-1) + w.b2.float()

    def compiled(q, w):
        out = batch_passes.mix_samples_compiled(q, *w)
        assert out is not None, "the compiled mix of samples did not take the mixer's weights"
        return out

    q = torch.randn(6, 7, 11, 5, requires_grad=True)  # 11 joint actions per state
    got = _assert_compiled_equals_formula(compiled, formula, q, torch.randn(6, 7, 11), weights_dtype)
    assert got.shape == (6, 7, 11)


# --- the fused CPU GRU unroll -----------------------------------------------------------------------


@pytest.fixture
def kernel():
    """The fused kernel, which must build wherever a C++ compiler is on PATH (the Makefile installs
    ninja); only a machine without one skips."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused GRU cannot be built here (nn.GRU is used)")
    assert kernels.available(), kernels.unavailable_reason()
    return kernels.kernel()


def _gru_values_and_gradients(unroll, dtype: torch.dtype = torch.float32):
    """Output and gradients (inputs, h0, the GRU's four weights) of `unroll(x, h0, gru)` for a fixed
    seeded GRU and upstream gradient; the inputs pass through a Linear so that bf16 autocast sees
    them as a layer's output, as in `RNNAgent._unroll`."""
    torch.manual_seed(3)
    T, N, H_in, H = 13, 10, 12, 16
    gru, fc = torch.nn.GRU(H_in, H), torch.nn.Linear(H_in, H_in)
    x = torch.randn(T, N, H_in, requires_grad=True)
    h0 = torch.randn(N, H, requires_grad=True)
    upstream = torch.randn(T, N, H)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = unroll(fc(x), h0, gru)
    inputs = [x, h0, *gru.parameters()]
    return out, torch.autograd.grad(out, inputs, upstream.to(out.dtype))


def _nn_gru(x, h0, gru):
    return gru(x, h0.unsqueeze(0))[0]


def test_the_fused_gru_equals_nn_gru_in_values_and_every_gradient(kernel):
    out, grads = _gru_values_and_gradients(fused_gru.fused_gru_sequence)
    ref_out, ref_grads = _gru_values_and_gradients(_nn_gru)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):  # x, h0, W_ih, W_hh, b_ih, b_hh
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_fused_gru_without_gradients_gives_the_same_values(kernel):
    torch.manual_seed(5)
    gru, x, h0 = torch.nn.GRU(6, 8), torch.randn(9, 4, 6), torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused_gru.fused_gru_sequence(x, h0, gru), _nn_gru(x, h0, gru))
        torch.testing.assert_close(fused_gru.fused_gru_sequence(x, None, gru), gru(x)[0])


@pytest.mark.parametrize("step_product", ["bf16", "fp32 (few rows)"])
def test_the_fused_gru_in_bf16_stays_within_2_percent_of_fp32(kernel, monkeypatch, step_product):
    """bf16 matrix products (input projection, the weight gradients, and h @ W_hh unless the unroll
    has fewer than BF16_MIN_ROWS rows) with fp32 gates and hidden state. Measured: about 0.3%
    relative error in every gradient (T = 80, N = 1024)."""
    monkeypatch.setattr(fused_gru, "BF16_MIN_ROWS", 1 if step_product == "bf16" else 10**6)
    out, grads = _gru_values_and_gradients(fused_gru.fused_gru_sequence, torch.bfloat16)
    ref_out, ref_grads = _gru_values_and_gradients(_nn_gru)
    # The output comes in the per-step product's dtype; the state itself stays fp32.
    assert out.dtype == (torch.bfloat16 if step_product == "bf16" else torch.float32)
    assert (out.float() - ref_out).abs().max() < 0.02
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.float32
        assert (got - want).norm() <= 0.02 * want.norm()
        assert not torch.equal(got, want)  # it did run in bf16


def test_the_kernels_inline_exp_is_as_accurate_as_fp32_allows(kernel):
    x = torch.linspace(-87.0, 88.0, 200_001)
    relative = (kernel.exp_for_test(x).double() - x.double().exp()).abs() / x.double().exp()
    assert relative.max() < 2e-6
    # Past the clamp it saturates instead of overflowing: the gates stay finite.
    tiny, huge = kernel.exp_for_test(torch.tensor([-1e4, 1e4])).tolist()
    assert 0.0 < tiny < 1e-37 and 1e38 < huge < float("inf")


@pytest.mark.parametrize("relu_inputs", [False, True])
def test_the_recurrence_on_amx_tiles_matches_the_torch_products(kernel, monkeypatch, relu_inputs):
    """On CPUs with AMX both products of each step run on tiles inside the kernel, 16 rows at a time;
    37 rows leave a partial block. The result must be nn.GRU's within bf16 rounding, like the path
    through torch's products (which it must not simply be: its gh stays fp32). With relu_inputs the
    tiles apply the agent's relu as they read x (and its backward to dx); torch's path applies it
    before the kernel."""
    if not kernel.amx_available():
        pytest.skip("this CPU (or kernel build) has no AMX tiles: the torch products are used")
    monkeypatch.setattr(fused_gru, "BF16_MIN_ROWS", 1)

    def unroll(amx: bool):
        monkeypatch.setattr(kernels, "USE_AMX", amx)
        torch.manual_seed(6)
        T, N, H = 9, 37, 64
        gru, fc = torch.nn.GRU(H, H), torch.nn.Linear(H, H)
        x, h0 = torch.randn(T, N, H, requires_grad=True), torch.randn(N, H, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fused_gru.fused_gru_sequence(fc(x), h0, gru, relu_inputs=relu_inputs)
        upstream = torch.randn(T, N, H).to(out.dtype)
        return out.float(), torch.autograd.grad(out, [x, h0, *gru.parameters()], upstream)

    (tiles, tile_grads), (torch_mm, torch_grads) = unroll(True), unroll(False)
    assert not torch.equal(tiles, torch_mm)
    assert (tiles - torch_mm).abs().max() < 0.02
    for got, want in zip(tile_grads, torch_grads, strict=True):
        assert (got - want).norm() <= 0.01 * want.norm()


def test_the_agent_unrolls_on_cpu_with_the_fused_gru_and_the_same_numbers(kernel, monkeypatch):
    torch.manual_seed(4)
    B, T, n, d = 5, 9, 3, 7
    agent = RNNAgent(d, 4, hidden_size=8)
    inputs, lengths = torch.randn(B, T, n, d), torch.tensor([9, 2, 3, 8, 4])
    calls = []
    monkeypatch.setattr(fused_gru.FusedGRU, "apply", _counting(fused_gru.FusedGRU.apply, calls))
    fused = agent.forward_sequence(inputs, lengths=lengths)
    assert calls, "the agent network did not use the fused kernel on CPU"
    monkeypatch.setattr(RNNAgent, "fused_cpu_gru", False)
    torch.testing.assert_close(fused, agent.forward_sequence(inputs, lengths=lengths), rtol=1e-5, atol=1e-6)


def _counting(fn, calls: list):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)

    return wrapped


def test_a_lock_left_by_a_killed_build_does_not_block_loading_the_kernel(kernel):
    """torch's builder never releases its lock file if its process is killed (a learner SIGKILLed
    while loading); a later process must still load the built kernel."""
    import subprocess
    import sys

    from torch.utils.cpp_extension import _get_build_directory

    name = kernels._load_or_build().__name__
    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    lock.touch()
    try:
        code = "from common import kernels; assert kernels.available(), kernels.unavailable_reason()"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    finally:
        lock.unlink(missing_ok=True)
