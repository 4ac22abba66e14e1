"""The agent network's one-step forward through torch, for acting on the CPU.

The same interface as `NumpyAgent` (numpy in, numpy out). Which of the two is faster depends on the
BLAS behind each: on a Xeon with AVX-512 torch's oneDNN kernels ran the 3s5z step 1.4x (12 rows) to
2.9x (512 rows) faster than numpy's OpenBLAS (docs/bench/actor.md); `actor.inference` chooses.
"""

from __future__ import annotations

import numpy as np
import torch

from common.networks import RNNAgent


class TorchAgent:
    def __init__(self, agent: RNNAgent):
        self.agent = agent.to("cpu").eval()  # the worker's own copy of these weights
        self.hidden_size = agent.hidden_size

    def step(self, inputs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """inputs [R, in], hidden [R, H] float32 -> (q [R, A], new hidden [R, H])."""
        with torch.inference_mode():
            q, h = self.agent.forward_step(torch.from_numpy(inputs), torch.from_numpy(hidden))
        return q.numpy(), h.numpy()
