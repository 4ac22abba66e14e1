"""The fused CPU GRU unroll: `gru_kernel.cpp`, compiled at first use, behind an autograd Function.

The kernel runs a whole training sequence's recurrence (forward and backward) in one call: each
step's gate math is one fused fp32 pass and the matrix products run in the inputs' dtype (bf16 on
CPUs with bf16 units). It is built once per machine kind (the CPU's flags are part of its name,
since it is compiled for the CPU it runs on) into torch's extension cache, which needs a C++
compiler and ninja. Where that fails, `available()` is False, the reason is logged once, and the
agent network keeps nn.GRU. OVMSE_FUSED_GRU=0 turns the kernel off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gru_kernel.cpp")
# Per-row passes over a training batch (double Q, the mix, the agents' inputs), built into the same
# library after SOURCE, whose helpers they use.
BATCH_SOURCE = Path(__file__).with_name("batch_kernels.cpp")
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-mrecip", "-fopenmp-simd"]
# Below this many rows (episodes x agents in one unroll) the per-step product h @ W_hh^T stays fp32:
# measured on the 2-core AMX Xeon, a bf16 [64, 64] @ [64, 192] took 46 us against 11 us in fp32,
# while from 256 rows on bf16 was faster (57 against 82 us; 96 against 330 us at 1,024).
BF16_MIN_ROWS = 128
# Run a bf16 unroll's products (the input projection and h @ W_hh^T, forward and backward) on AMX
# tiles inside the kernel where it was built for a CPU with them (sizes multiples of 32): there a
# step's product costs microseconds at any row count, and its fp32 result feeds the gates directly.
# OVMSE_GRU_AMX=0 turns it off (tests and the benchmark compare both).
USE_AMX = os.environ.get("OVMSE_GRU_AMX", "1").strip().lower() not in ("0", "false", "no", "off")
_lock = threading.Lock()
_state: dict = {}


def enabled_by_env() -> bool:
    return os.environ.get("OVMSE_FUSED_GRU", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_tag() -> str:
    """A short hash of the CPU's model and flags: a kernel built with -march=native for one CPU
    must not be loaded on another from a shared cache."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        wanted = [os.uname().machine]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:10]


def kernel():
    """The compiled module, or None where it cannot be built (the reason is logged once)."""
    with _lock:
        if "module" not in _state:
            _state["module"] = None
            if not enabled_by_env():
                _state["reason"] = "OVMSE_FUSED_GRU=0"
            else:
                try:
                    _state["module"] = _load_or_build()
                except Exception as exc:  # no compiler, no ninja, a build error: keep nn.GRU
                    _state["reason"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"
                    log.warning("fused CPU GRU unavailable, using nn.GRU (%s)", _state["reason"])
        return _state["module"]


STALE_LOCK_S = 600  # a build takes about a minute; a lock file this old belongs to a dead builder


def _load_or_build():
    """Import the built library when it exists; build it (torch's JIT builder) only when it does not.

    The name holds the CPU tag and a hash of the source and flags, so each build has its own
    directory. Importing directly matters because torch's builder takes a lock file in that
    directory on every load (to run ninja) and never releases it if its process is killed: every
    later process would then wait forever. A lock older than STALE_LOCK_S is removed before
    building for the same reason."""
    import importlib.util

    from torch.utils.cpp_extension import _get_build_directory, load_inline

    source = SOURCE.read_text() + "\n" + BATCH_SOURCE.read_text()
    build = source + " ".join(CFLAGS)  # a change of either is a new build
    name = f"ovmse_gru_{_cpu_tag()}_{hashlib.sha256(build.encode()).hexdigest()[:10]}"
    build_dir = Path(_get_build_directory(name, verbose=False))
    library = build_dir / f"{name}.so"
    if library.is_file():
        try:
            spec = importlib.util.spec_from_file_location(name, library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except ImportError as exc:  # a partial file from a killed build: build it again
            log.warning("rebuilding the fused CPU GRU (%s)", exc)
            library.unlink(missing_ok=True)
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
    except OSError:
        pass
    return load_inline(
        name=name,
        cpp_sources=[source],
        functions=[
            "gru_forward",
            "gru_forward_tiles",
            "gru_backward",
            "gru_backward_tiles",
            "amx_available",
            "exp_for_test",
            "double_q_values",
            "pack_for_tiles",
            "agent_step_tiles",
            "mix_forward",
            "mix_backward",
            "agent_inputs",
        ],
        extra_cflags=CFLAGS,
        build_directory=str(build_dir),
        verbose=False,
    )


def available() -> bool:
    return kernel() is not None


def amx_active() -> bool:
    """Whether bf16 unrolls run their products on AMX tiles (see `USE_AMX`)."""
    return USE_AMX and available() and bool(kernel().amx_available())


def unavailable_reason() -> str | None:
    kernel()
    return _state.get("reason")


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
        return wi, wh, kernel().gru_forward_tiles(x, relu_x, h0, *transposed, *biases, save)
    gi = torch.mm(x.view(T * N, width), wi.t()).view(T, N, -1)
    return wi, wh, kernel().gru_forward(gi, h0, wh.t().contiguous(), *biases, save)


def _on_tiles(x: torch.Tensor, hidden: int) -> bool:
    """Whether this unroll's products run on AMX tiles inside the kernel (bf16 inputs, sizes that
    fill tiles); its per-step product is then bf16 at any row count."""
    return x.dtype == torch.bfloat16 and x.shape[-1] % 32 == 0 and hidden % 32 == 0 and amx_active()


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
            grads = kernel().gru_backward_tiles(dout, hs, hs_mm, gh_n, rz, n, x, ctx.relu_x, wi, wh)
            dx, dh0, dw_ih, db_ih, dw_hh, db_hh = grads
            return dx, dh0, None, None, None, dw_ih, db_ih, dw_hh, db_hh
        T, N, width = x.shape
        dgi, dh0, dw_hh, db_hh, db_ih = kernel().gru_backward(dout, hs, hs_mm, gh_n, rz, n, wh, x)
        flat = dgi.view(T * N, -1)
        dx = (flat @ wi).view(T, N, width)
        dw_ih = (x.view(T * N, width).t() @ flat).t().float()  # faster than flat^T @ x (see the kernel)
        return dx, dh0, None, None, None, dw_ih, db_ih, dw_hh, db_hh


if __name__ == "__main__":  # `python -m common.fused_gru`: build now (the Makefile's install does)
    start = time.monotonic()
    ok = available()
    took = time.monotonic() - start
    print(f"fused CPU GRU: {'built' if ok else 'not available: ' + str(unavailable_reason())} ({took:.0f} s)")
