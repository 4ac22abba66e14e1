"""Continuous-action offline data as single transitions (no episodes, no time axis).

A `TransitionBatch` holds B transitions of a team of n agents as torch tensors:

    obs [B, n, O], state [B, S], actions [B, n, A] (float, inside the world's action box),
    reward [B] (the team's), next_obs [B, n, O], next_state [B, S], terminal [B] (bool)

`terminal` is true only at a true end of an episode; a time-limit end is not a terminal, so a
critic bootstraps through it (the same rule as the episode schema's `terminated`). Construction
checks every shape and raises `InputError` in one line naming the field that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from common.errors import InputError

# The fields in their order (dataset files and replay buffers name them so).
TRANSITION_FIELDS = ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminal")


def _as_tensor(name: str, value, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    try:
        return torch.as_tensor(np.asarray(value), dtype=dtype)
    except (TypeError, ValueError) as error:
        raise InputError(f"TransitionBatch.{name}: not an array of numbers ({error})") from None


@dataclass(frozen=True)
class TransitionBatch:
    """B transitions of n agents (see the module doc for the shapes)."""

    obs: torch.Tensor
    state: torch.Tensor
    actions: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    next_state: torch.Tensor
    terminal: torch.Tensor

    def __post_init__(self) -> None:
        self._check_shapes()

    @classmethod
    def from_arrays(cls, **arrays) -> TransitionBatch:
        """From numpy arrays (or anything array-like) with the fields' names: floats become float32,
        `terminal` bool. A missing or unknown field is an `InputError` naming it."""
        names = list(TRANSITION_FIELDS)
        missing = [name for name in names if name not in arrays]
        unknown = sorted(set(arrays) - set(names))
        if missing or unknown:
            raise InputError(f"TransitionBatch: missing fields {missing}, unknown fields {unknown}")
        converted = {
            name: _as_tensor(name, arrays[name], torch.bool if name == "terminal" else torch.float32)
            for name in names
        }
        return cls(**converted)

    def _check_shapes(self) -> None:
        def fail(name: str, wanted: str) -> None:
            got = list(getattr(self, name).shape)
            raise InputError(f"TransitionBatch.{name}: expected shape {wanted}, got {got}")

        for name in (f.name for f in fields(self)):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise InputError(
                    f"TransitionBatch.{name}: expected a torch tensor, got {type(getattr(self, name))}"
                )
        if self.obs.dim() != 3:
            fail("obs", "[B, n, O]")
        b, n, o = self.obs.shape
        if self.state.dim() != 2 or self.state.shape[0] != b:
            fail("state", f"[{b}, S]")
        if self.actions.dim() != 3 or tuple(self.actions.shape[:2]) != (b, n):
            fail("actions", f"[{b}, {n}, A]")
        if not self.actions.is_floating_point():
            raise InputError(f"TransitionBatch.actions: expected float actions, got {self.actions.dtype}")
        if tuple(self.reward.shape) != (b,):
            fail("reward", f"[{b}]")
        if tuple(self.next_obs.shape) != (b, n, o):
            fail("next_obs", f"[{b}, {n}, {o}] (the shape of obs)")
        if tuple(self.next_state.shape) != tuple(self.state.shape):
            fail("next_state", f"{list(self.state.shape)} (the shape of state)")
        if tuple(self.terminal.shape) != (b,):
            fail("terminal", f"[{b}]")
        for name in ("obs", "state", "actions", "reward", "next_obs", "next_state"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise InputError(f"TransitionBatch.{name}: holds NaN or infinite values")

    @classmethod
    def _checked_already(cls, values: dict[str, torch.Tensor]) -> TransitionBatch:
        """Rows or a device move of a batch that passed its checks: the same shapes and values, so
        the minibatches an update draws skip the full scan for NaN."""
        batch = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(batch, name, value)
        return batch

    @property
    def batch_size(self) -> int:
        return int(self.obs.shape[0])

    @property
    def n_agents(self) -> int:
        return int(self.obs.shape[1])

    @property
    def obs_size(self) -> int:
        return int(self.obs.shape[2])

    @property
    def state_size(self) -> int:
        return int(self.state.shape[1])

    @property
    def action_size(self) -> int:
        return int(self.actions.shape[2])

    def to(self, device: torch.device | str) -> TransitionBatch:
        """The same transitions on `device` (floats stay float32, terminal stays bool)."""
        return self._checked_already({f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def rows(self, index: torch.Tensor) -> TransitionBatch:
        """The transitions at `index` (a 1-D integer tensor): a minibatch of a dataset."""
        return self._checked_already({f.name: getattr(self, f.name)[index] for f in fields(self)})

    def sample(self, batch_size: int, generator: torch.Generator) -> TransitionBatch:
        """A minibatch of `batch_size` transitions drawn uniformly with replacement."""
        index = torch.randint(self.batch_size, (batch_size,), generator=generator)
        return self.rows(index.to(self.obs.device))


# The fields in their order: what dataset files and buffers of transitions hold.
TRANSITION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TransitionBatch))
