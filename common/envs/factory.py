"""Building a battle world from the `env` section of the configuration.

The back end is one word: "lite" (the vectorised simulator in this repository), "sc2" (real
StarCraft II through SMAC) or "matrix" (one-step two-agent matrix games, `common/envs/matrix.py`,
with env.map_name the game: xor, mne). Each is imported only when chosen, so none needs another
installed.
"""

from __future__ import annotations

from typing import Protocol

from common.envs.protocol import BatchEnv, MultiAgentEnv

BACKENDS = ("lite", "sc2", "matrix")


class EnvConfig(Protocol):
    """What the factory reads from the configuration's `env` section."""

    backend: str

    def smac_kwargs(self) -> dict:
        """SMAC constructor arguments: map_name, seed and SMAC's flags."""
        ...


def make_env(env_cfg: EnvConfig) -> MultiAgentEnv:
    """One battle speaking SMAC's StarCraft2Env API."""
    kwargs = dict(env_cfg.smac_kwargs())
    backend = _backend(env_cfg)
    if backend == "matrix":
        from common.envs.matrix import MatrixGameEnv

        return MatrixGameEnv(kwargs["map_name"], seed=kwargs.get("seed"))
    if backend == "lite":
        from common.envs.lite import LiteStarCraft2Env

        return LiteStarCraft2Env(**kwargs)
    from common.envs.sc2 import SC2StarCraft2Env

    return SC2StarCraft2Env(**kwargs)


def make_batch_env(env_cfg: EnvConfig, num_envs: int) -> BatchEnv:
    """`num_envs` battles stepped together; battle b is seeded with seed + b (None stays None)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    kwargs = dict(env_cfg.smac_kwargs())
    backend = _backend(env_cfg)
    seed = kwargs.pop("seed", None)
    if backend == "matrix":  # nothing random in a matrix game: the seed has nothing to seed
        from common.envs.matrix import MatrixBatchEnv

        return MatrixBatchEnv(kwargs["map_name"], num_envs)
    if backend == "lite":
        from common.envs.lite import LiteBatchEnv

        map_name = kwargs.pop("map_name")
        return LiteBatchEnv(map_name, num_envs, seed=seed, **kwargs)
    from common.envs.sc2 import SC2StarCraft2Env
    from common.envs.serial import SerialBatchEnv

    envs = [SC2StarCraft2Env(**kwargs, seed=None if seed is None else seed + i) for i in range(num_envs)]
    return SerialBatchEnv(envs)


def _backend(env_cfg: EnvConfig) -> str:
    backend = env_cfg.backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown env.backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend
