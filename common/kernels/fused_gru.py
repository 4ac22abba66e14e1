"""The fused CPU GRU unroll: `gru_kernel.cpp` (loaded by `common.kernels`) behind an autograd Function.

The kernel runs a whole training sequence's recurrence (forward and backward) in one call: each
step's gate math is one fused fp32 pass and the matrix products run in the inputs' dtype (bf16 on
CPUs with bf16 units). Callers check `common.kernels.available()` first; where the library does not
build (or OVMSE_FUSED_GRU=0) the agent network keeps nn.GRU.
"""

from __future__ import annotations

import torch

from common import kernels

# Below this many rows (episodes x agents in one unroll) the per-step product h @ W_hh^T stays fp32:
# measured on the 2-core AMX Xeon, a bf16 [64, 64] @ [64, 192] took 46 us against 11 us in fp32,
# while from 256 rows on bf16 was faster (57 against 82 us; 96 against 330 us at 1,024).
BF16_MIN_ROWS = 128


def fused_gru_sequence(
    x: torch.Tensor, hidden: torch.Tensor | None, rnn: torch.nn.GRU, relu_inputs: bool = False
) -> torch.Tensor:
    """`rnn(x, hidden)`'s output [T, N, H] for CPU inputs x [T, N, H_in], hidden [N, H] or None;
    `rnn(relu(x), hidden)`'s with relu_inputs (on AMX tiles the kernel applies the relu as it reads
    the rows, forward and backward, so relu(x) is never stored).

    The products (the input projection of every step at once, then h @ W_hh^T per step) run in x's
    dtype: bf16 when x comes from a layer under bf16 autocast (the weights are cast per call; the
    master weights stay fp32), else fp32; but the per-step product stays fp32 below
    `BF16_MIN_ROWS` rows, where a bf16 product's fixed cost exceeds its work. Gates and the hidden
    state are fp32; the output comes in the per-step product's dtype (rounded from the fp32
    state), which is what the next layer reads under autocast."""
    T, N, _ = x.shape
    on_tiles = _on_tiles(x, rnn.hidden_size)
    if relu_inputs and not on_tiles:
        x = torch.relu(x)
    relu_x = relu_inputs and on_tiles
    step_dtype = x.dtype if N >= BF16_MIN_ROWS or on_tiles else torch.float32
    h0 = x.new_zeros(N, rnn.hidden_size, dtype=torch.float32) if hidden is None else hidden
    h0 = h0.float().contiguous()
    weights = (rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0)
    with torch.autocast("cpu", enabled=False):
        if torch.is_grad_enabled():
            return FusedGRU.apply(x.contiguous(), h0, step_dtype, on_tiles, relu_x, *weights)
        with torch.no_grad():  # a target pass: nothing kept for a backward
            return _forward(x.contiguous(), h0, step_dtype, on_tiles, relu_x, *weights, save=False)[2][1][1:]


def _forward(x, h0, step_dtype, on_tiles, relu_x, w_ih, b_ih, w_hh, b_hh, save: bool):
    """The kernel's forward with the weights in the products' dtypes: (W_ih, W_hh as cast, the
    kernel's outputs). On AMX tiles (`on_tiles`, from `_on_tiles`) the kernel takes x and does the
    input projection itself; otherwise it is one product for every step here, x @ W_ih^T (the
    kernel adds the biases)."""
    T, N, width = x.shape
    wi, wh = w_ih.detach().to(x.dtype), w_hh.detach().to(step_dtype)
    biases = b_ih.detach().float(), b_hh.detach().float()
    if on_tiles:
        transposed = wi.t().contiguous(), wh.t().contiguous()
        return wi, wh, kernels.kernel().gru_forward_tiles(x, relu_x, h0, *transposed, *biases, save)
    gi = torch.mm(x.view(T * N, width), wi.t()).view(T, N, -1)
    return wi, wh, kernels.kernel().gru_forward(gi, h0, wh.t().contiguous(), *biases, save)


def _on_tiles(x: torch.Tensor, hidden: int) -> bool:
    """Whether this unroll's products run on AMX tiles inside the kernel (bf16 inputs, sizes that
    fill tiles); its per-step product is then bf16 at any row count."""
    return x.dtype == torch.bfloat16 and x.shape[-1] % 32 == 0 and hidden % 32 == 0 and kernels.amx_active()


class FusedGRU(torch.autograd.Function):
    """The GRU over a whole sequence, input projection included; see gru_kernel.cpp.
    x [T, N, H_in] (fp32 or bf16), h0 [N, H] fp32, the per-step product's dtype, whether on AMX
    tiles, whether the kernel reads relu(x) (on tiles only), and nn.GRU's four parameters
    -> h_1..h_T [T, N, H] in that dtype. The backward takes each weight's gradient as one product
    over every step (on AMX tiles: summed on the tiles as the unroll goes). No double backward."""

    @staticmethod
    def forward(ctx, x, h0, step_dtype, on_tiles, relu_x, w_ih, b_ih, w_hh, b_hh):  # noqa: D102
        saved = _forward(x, h0, step_dtype, on_tiles, relu_x, w_ih, b_ih, w_hh, b_hh, save=True)
        wi, wh, (hs, hs_mm, gh_n, rz, n) = saved
        ctx.on_tiles, ctx.relu_x = on_tiles, relu_x
        ctx.save_for_backward(x, wi, wh, hs, hs_mm, gh_n, rz, n)
        return hs_mm[1:]

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        x, wi, wh, hs, hs_mm, gh_n, rz, n = ctx.saved_tensors
        dout = dout.to(wh.dtype).contiguous()
        if ctx.on_tiles:  # every product on the tiles, the weight gradients included
            grads = kernels.kernel().gru_backward_tiles(dout, hs, hs_mm, gh_n, rz, n, x, ctx.relu_x, wi, wh)
            dx, dh0, dw_ih, db_ih, dw_hh, db_hh = grads
            return dx, dh0, None, None, None, dw_ih, db_ih, dw_hh, db_hh
        T, N, width = x.shape
        dgi, dh0, dw_hh, db_hh, db_ih = kernels.kernel().gru_backward(dout, hs, hs_mm, gh_n, rz, n, wh, x)
        flat = dgi.view(T * N, -1)
        dx = (flat @ wi).view(T, N, width)
        dw_ih = (x.view(T * N, width).t() @ flat).t().float()  # faster than flat^T @ x (see the kernel)
        return dx, dh0, None, None, None, dw_ih, db_ih, dw_hh, db_hh
