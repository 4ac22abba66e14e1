"""The project's compiled CPU code, in one place, and its loader: every caller gets the library here.

    kernels.h          what both sources share: fp32/bf16 dispatch, e^x, row loads and stores, and
                       the library's functions
    gru_kernel.cpp     the fused GRU unroll (forward and backward; on AMX tiles where built for
                       them), the actors' one-step forward on tiles, and the Python bindings
    batch_kernels.cpp  per-row passes over a training batch: double Q, the QMIX mix, agent inputs
    fused_gru.py       the GRU unroll behind an autograd Function (common.networks' RNNAgent)
    batch_passes.py    the mix and the agents' inputs through the library, or None for torch's

The two sources compile into one torch extension at first use (`kernel()`), once per machine kind:
the CPU's flags are part of its name, since it is compiled for the CPU it runs on (-march=native),
and so is a hash of the sources and flags, so that any change is a new build. It lands in torch's
extension cache and needs a C++ compiler and ninja. Where that fails, `available()` is False, the
reason is logged once, and every caller keeps its torch path (the agent network nn.GRU); so do
GPUs, and OVMSE_FUSED_GRU=0 turns the library off. `python -m common.kernels` builds it now (the
Makefile's install does).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
HEADER = HERE / "kernels.h"
# gru_kernel.cpp holds the Python bindings of both.
SOURCES = (HERE / "gru_kernel.cpp", HERE / "batch_kernels.cpp")
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-mrecip", "-fopenmp-simd"]
# Run a bf16 unroll's products (the input projection and h @ W_hh^T, forward and backward) on AMX
# tiles inside the kernel where it was built for a CPU with them (sizes multiples of 32): there a
# step's product costs microseconds at any row count, and its fp32 result feeds the gates directly.
# Actors act on the tiles under the same switch. OVMSE_GRU_AMX=0 turns it off (tests and the
# benchmark compare both).
USE_AMX = os.environ.get("OVMSE_GRU_AMX", "1").strip().lower() not in ("0", "false", "no", "off")
STALE_LOCK_S = 600  # a build takes about a minute; a lock file this old belongs to a dead builder
_lock = threading.Lock()
_state: dict = {}


def enabled_by_env() -> bool:
    return os.environ.get("OVMSE_FUSED_GRU", "1").strip().lower() not in ("0", "false", "no", "off")


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


def available() -> bool:
    return kernel() is not None


def amx_active() -> bool:
    """Whether bf16 unrolls (and actors) run their products on AMX tiles (see `USE_AMX`)."""
    return USE_AMX and available() and bool(kernel().amx_available())


def unavailable_reason() -> str | None:
    kernel()
    return _state.get("reason")


def build_name() -> str:
    """The library's module name: the CPU's tag and a hash of the header, the sources and the flags
    (a change of any is a new build, in its own directory)."""
    digest = hashlib.sha256()
    for path in (HEADER, *SOURCES):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join(CFLAGS).encode())
    return f"ovmse_kernels_{_cpu_tag()}_{digest.hexdigest()[:10]}"


def _cpu_tag() -> str:
    """A short hash of the CPU's model and flags: a kernel built with -march=native for one CPU
    must not be loaded on another from a shared cache."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        wanted = [os.uname().machine]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:10]


def _load_or_build():
    """Import the built library when it exists; build it (torch's JIT builder) only when it does not.

    Importing directly matters because torch's builder takes a lock file in the build directory on
    every load (to run ninja) and never releases it if its process is killed: every later process
    would then wait forever. A lock older than STALE_LOCK_S is removed before building for the same
    reason."""
    import importlib.util

    from torch.utils.cpp_extension import _get_build_directory, load

    name = build_name()
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
    return load(
        name=name,
        sources=[str(path) for path in SOURCES],
        extra_cflags=CFLAGS,
        build_directory=str(build_dir),
        verbose=False,
    )


def prebuild() -> bool:
    """Build (or load) the library now and say how it went; `python -m common.kernels`."""
    start = time.monotonic()
    ok = available()
    took = time.monotonic() - start
    print(f"fused CPU GRU: {'built' if ok else 'not available: ' + str(unavailable_reason())} ({took:.0f} s)")
    return ok
