"""Real StarCraft II through SMAC: a thin adapter over `smac.env.StarCraft2Env`.

The adapter adds two things to SMAC: a clear installation message when SMAC or StarCraft II is
missing (SMAC itself fails deep inside pysc2), and the same up-front action check the lite world
does, so a policy that is wrong on one world is wrong on both. Everything else is forwarded as is.
SMAC is imported lazily so that the rest of the project never needs StarCraft II.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from common.envs.actions import validate_actions

INSTALL_HELP = """\
Real StarCraft II needs three things:
  1. StarCraft II for Linux, version 4.10 (SC2.4.10.zip from Blizzard's s2client-proto page), unpacked
     to ~/StarCraftII or to the folder named by the SC2PATH environment variable. The archive's
     password 'iagreetotheeula' means you accept the Blizzard AI and Machine Learning License.
  2. The SMAC maps: unzip SMAC_Maps.zip (from the oxwhirl/smac releases) into $SC2PATH/Maps/, so that
     $SC2PATH/Maps/SMAC_Maps/3m.SC2Map exists.
  3. SMAC itself: pip install -e '.[sc2]' (installs SMAC from its git repository; the package
     named `smac` on PyPI is an unrelated AutoML library and will not work).
Without StarCraft II, use the lite world: set env.backend to "lite"."""


def load_smac_env_class() -> type:
    """Import and return `smac.env.StarCraft2Env`, or raise RuntimeError saying how to install it."""
    try:
        importlib.import_module("smac")
    except ImportError as exc:
        raise RuntimeError(
            f"the SC2 back end needs SMAC, which is not installed ({exc}).\n{INSTALL_HELP}"
        ) from exc
    try:
        env_module = importlib.import_module("smac.env")
    except ModuleNotFoundError as exc:
        if exc.name not in ("smac.env", "smac"):
            # SMAC is there but one of its own dependencies (pysc2, ...) is not.
            raise RuntimeError(f"SMAC is installed but cannot be imported ({exc}).\n{INSTALL_HELP}") from exc
        raise RuntimeError(_wrong_package_message()) from exc
    env_class = getattr(env_module, "StarCraft2Env", None)
    if env_class is None:
        raise RuntimeError(_wrong_package_message())
    return env_class


def _wrong_package_message() -> str:
    return (
        "the installed package `smac` is not SMAC (StarCraft Multi-Agent Challenge): it has no "
        "`smac.env.StarCraft2Env`. PyPI's `smac` is an unrelated AutoML package; uninstall it "
        f"(pip uninstall smac) and install SMAC from git.\n{INSTALL_HELP}"
    )


class SC2StarCraft2Env:
    """One SMAC battle on real StarCraft II, speaking the `MultiAgentEnv` API.

    `kwargs` go to `smac.env.StarCraft2Env` unchanged (map_name, seed, SMAC's flags).
    """

    def __init__(self, **kwargs: Any) -> None:
        env_class = load_smac_env_class()
        self._env = env_class(**kwargs)
        self._launched = False
        self.n_agents: int = int(self._env.n_agents)
        self.n_enemies: int = int(self._env.n_enemies)
        self.episode_limit: int = int(self._env.episode_limit)
        self.n_actions: int = int(self._env.get_total_actions())

    @property
    def unwrapped(self) -> Any:
        """The SMAC environment itself, for anything this adapter does not forward."""
        return self._env

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        if self._launched:
            return self._env.reset()
        # SMAC starts StarCraft II on the first reset; a missing game or map fails here, deep inside
        # pysc2, so point at the installation steps while keeping the original error chained.
        try:
            result = self._env.reset()
        except Exception as exc:
            raise RuntimeError(f"StarCraft II failed to start: {exc}\n{INSTALL_HELP}") from exc
        self._launched = True
        return result

    def step(self, actions: Any) -> tuple[float, bool, dict]:
        checked = validate_actions(actions, self._env.get_avail_actions(), self.n_actions)
        return self._env.step([int(a) for a in checked])

    def get_obs(self) -> list[np.ndarray]:
        return self._env.get_obs()

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        return self._env.get_obs_agent(agent_id)

    def get_obs_size(self) -> int:
        return self._env.get_obs_size()

    def get_state(self) -> np.ndarray:
        return self._env.get_state()

    def get_state_size(self) -> int:
        return self._env.get_state_size()

    def get_avail_actions(self) -> list[list[int]]:
        return self._env.get_avail_actions()

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        return self._env.get_avail_agent_actions(agent_id)

    def get_total_actions(self) -> int:
        return self._env.get_total_actions()

    def get_env_info(self) -> dict:
        return self._env.get_env_info()

    def get_stats(self) -> dict:
        return self._env.get_stats()

    def seed(self) -> int | None:
        return self._env.seed()

    def close(self) -> None:
        self._env.close()
