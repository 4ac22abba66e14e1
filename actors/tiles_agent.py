"""The agent network's one-step forward as one call of the compiled kernel, bf16 products on AMX tiles.

The same interface as `TorchAgent` (numpy in, numpy out). An actor steps a few hundred rows at a
time, where torch's per-call costs (nn.GRU's one-step setup alone ~0.5 ms at 512 rows) exceed the
arithmetic; here fc1, the GRU cell and fc2 run 16 rows at a time in one call, with the weights packed
for the tiles once per weight version. Products in bf16 (inputs and states rounded to bf16 for them),
gates, states and outputs fp32: the learner's precision under `learner.precision` bf16, so greedy
actions can differ from fp32 acting where two actions' values are within bf16 rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from common import kernels
from common.networks import RNNAgent


def available() -> bool:
    """Whether this CPU, build and process can act on AMX tiles."""
    return kernels.amx_active()


class TilesAgent:
    def __init__(self, agent: RNNAgent):
        if not isinstance(agent, RNNAgent):
            raise TypeError(f"acting on tiles needs one shared RNNAgent, got {type(agent).__name__}")
        if not available():
            raise RuntimeError(
                f"no AMX tiles to act on here ({kernels.unavailable_reason() or 'not this CPU'})"
            )
        if agent.hidden_size % 32:
            raise ValueError(
                f"acting on tiles needs a hidden size that is a multiple of 32, got {agent.hidden_size}"
            )
        self.kernel = kernels.kernel()
        self.hidden_size = agent.hidden_size
        p = {k: v.detach().to("cpu", torch.float32) for k, v in agent.state_dict().items()}
        H, A = agent.hidden_size, agent.n_actions
        pack = self.kernel.pack_for_tiles
        self.weights = (
            pack(p["fc1.weight"], H),
            p["fc1.bias"],
            pack(p["rnn.weight_ih_l0"], 3 * H),
            p["rnn.bias_ih_l0"],
            pack(p["rnn.weight_hh_l0"], 3 * H),
            p["rnn.bias_hh_l0"],
            pack(p["fc2.weight"], -(-A // 32) * 32),
            p["fc2.bias"],
        )

    def step(self, inputs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """inputs [R, in], hidden [R, H] float32 -> (q [R, A], new hidden [R, H])."""
        q, h = self.kernel.agent_step_tiles(
            torch.from_numpy(np.ascontiguousarray(inputs)),
            torch.from_numpy(np.ascontiguousarray(hidden)),
            *self.weights,
        )
        return q.numpy(), h.numpy()
