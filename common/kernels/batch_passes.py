"""The compiled per-row passes over a training batch (`batch_kernels.cpp`), with torch's equivalents
where they cannot run: the QMIX mix with its backward (of one joint action per state, and of K
sampled ones), and the agent networks' inputs.

On a 128-episode batch each torch version is several full-size temporaries (casts, broadcast
products, sums; copies into strided slices), 15-30 ms apiece on one core; each compiled one reads
its inputs once. Results are the same up to fp32 summation order.
"""

from __future__ import annotations

import torch

from common import kernels

COMPILED_DTYPES = (torch.float32, torch.bfloat16)


def _kernel_for(tensor: torch.Tensor):
    return kernels.kernel() if tensor.device.type == "cpu" else None


# ------------------------------------------------------------------------------------------- mixing
def mix_compiled(q: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor | None:
    """Q_tot [..., 1] through the compiled pass, or None where it does not apply (not CPU, no
    kernel, weights of mixed or other dtypes, shapes that broadcast)."""
    lead = q.shape[:-1]
    n, E = q.shape[-1], b1.shape[-1]
    if not _compiled_mix_applies(q, lead, w1, b1, w2, b2):
        return None
    rows = (_rows(q.float(), n), _rows(w1, n * E), _rows(b1, E), _rows(w2, E), _rows(b2, 1))
    return _CompiledMixSamples.apply(*rows).view(*lead, 1)  # one joint action: K = 1


def _compiled_mix_applies(q: torch.Tensor, lead: torch.Size, w1, b1, w2, b2) -> bool:
    """A CPU kernel, weights of one compiled dtype, and weight shapes with the states' leading
    shape `lead` (no broadcasting)."""
    n, E = q.shape[-1], b1.shape[-1]
    return (
        _kernel_for(q) is not None
        and w1.dtype in COMPILED_DTYPES
        and w1.dtype == b1.dtype == w2.dtype == b2.dtype
        and w1.shape == (*lead, n, E)
        and b1.shape[:-1] == lead
        and w2.shape == (*lead, E)
        and b2.shape == (*lead, 1)
    )


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t as [rows, width] with a contiguous last axis and one row stride (what the kernel reads):
    a view where one exists (the mixer's split outputs), else a copy."""
    rows = t.reshape(-1, width)
    return rows if rows.stride(-1) == 1 or width == 1 else rows.contiguous()


def mix_samples_compiled(q: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor | None:
    """Q_tot [..., K] of K joint actions per state, q [..., K, n], through the compiled pass, or None
    where it does not apply (as `mix_compiled`)."""
    lead, (K, n), E = q.shape[:-2], q.shape[-2:], b1.shape[-1]
    if K == 0 or not _compiled_mix_applies(q, lead, w1, b1, w2, b2):
        return None
    rows = (_rows(q.float(), K * n), _rows(w1, n * E), _rows(b1, E), _rows(w2, E), _rows(b2, 1))
    return _CompiledMixSamples.apply(*rows).view(*lead, K)


class _CompiledMixSamples(torch.autograd.Function):
    """Rows: q [R, K*n] fp32, w1 [R, n*E], b1 [R, E], w2 [R, E], b2 [R, 1] -> Q_tot [R, K] fp32. The
    backward recomputes the hidden layers rather than keeping them."""

    @staticmethod
    def forward(ctx, q, w1, b1, w2, b2):  # noqa: D102
        ctx.save_for_backward(q, w1, b1, w2)
        ctx.b2_dtype = b2.dtype
        agents = w1.shape[1] // b1.shape[1]  # n = n*E / E
        return kernels.kernel().mix_samples_forward(q, q.shape[1] // agents, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        q, w1, b1, w2 = ctx.saved_tensors
        grad = grad.float().contiguous()
        dq, dw1, db1, dw2 = kernels.kernel().mix_samples_backward(grad, q, w1, b1, w2)
        return dq, dw1, db1, dw2, grad.sum(-1, keepdim=True).to(ctx.b2_dtype)


# ------------------------------------------------------------------------------------ agent inputs
def agent_inputs_compiled(
    obs: torch.Tensor, actions: torch.Tensor, n_actions: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """[obs | previous action one-hot | agent id] time-major [T, B, n, in] in `dtype` from obs
    [B, T, n, O] and actions [B, T, n, 1], or None where the compiled pass does not apply."""
    kernel = _kernel_for(obs)
    if (
        kernel is None
        or obs.dtype != torch.float32
        or actions.dtype != torch.int64
        or dtype not in COMPILED_DTYPES
        or actions.shape[:3] != obs.shape[:3]
    ):
        return None
    return kernel.agent_inputs(obs, actions, n_actions, dtype)
