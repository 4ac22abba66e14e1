"""Matrix-game datasets (`common/envs/matrix.py`) as HDF5 files in the layout every dataset uses, so
`run.dataset` and the in-process replay load them like any SMAC dataset.

    python -m deploy.studies.matrix_data xor balanced data/xor_balanced.h5 --episodes 1000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.envs.matrix import DATASET_KINDS, EPISODE_LIMIT, GAMES, dataset_episodes
from replay.dataset_writer import write_dataset


def write_matrix_dataset(
    path: str | os.PathLike, game: str, kind: str, episodes: int = 1000, seed: int = 0
) -> Path:
    """Write `episodes` plays of `game` drawn from its `kind` behaviour distribution to `path`."""
    return write_dataset(
        path,
        dataset_episodes(game, kind, episodes, seed),
        EPISODE_LIMIT,
        attrs={"map_name": game, "policy": f"matrix behaviour {kind}", "seed": seed},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("game", choices=sorted(GAMES))
    parser.add_argument("kind", choices=DATASET_KINDS)
    parser.add_argument("path")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_matrix_dataset(args.path, args.game, args.kind, args.episodes, args.seed))


if __name__ == "__main__":
    main()
