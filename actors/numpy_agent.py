"""The agent network's one-step forward in numpy, for acting on the CPU.

Actors run the agent on a few hundred rows per step, where torch's per-call overhead costs more
than the arithmetic. This holds the same parameters as an `RNNAgent` (PyTorch's GRU equations,
gate order r, z, n) and gives the same Q-values up to float rounding.
"""

from __future__ import annotations

import numpy as np

from common.networks import RNNAgent


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


class NumpyAgent:
    def __init__(self, agent: RNNAgent):
        p = {k: v.detach().to("cpu").numpy().astype(np.float32) for k, v in agent.state_dict().items()}
        self.hidden_size = agent.hidden_size
        self.w1, self.b1 = p["fc1.weight"].T.copy(), p["fc1.bias"]
        self.w_ih, self.b_ih = p["rnn.weight_ih_l0"].T.copy(), p["rnn.bias_ih_l0"]
        self.w_hh, self.b_hh = p["rnn.weight_hh_l0"].T.copy(), p["rnn.bias_hh_l0"]
        self.w2, self.b2 = p["fc2.weight"].T.copy(), p["fc2.bias"]

    def step(self, inputs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """inputs [R, in], hidden [R, H] float32 -> (q [R, A], new hidden [R, H])."""
        H = self.hidden_size
        x = np.maximum(inputs @ self.w1 + self.b1, 0.0)
        gi = x @ self.w_ih + self.b_ih
        gh = hidden @ self.w_hh + self.b_hh
        r = _sigmoid(gi[:, :H] + gh[:, :H])
        z = _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
        h = (1.0 - z) * n + z * hidden
        return h @ self.w2 + self.b2, h.astype(np.float32, copy=False)
