"""What we write (datasets, vaults, cards, plots, tables) lands with the mode `open()` and `mkdir()`
would give it under the umask (files 0666, directories 0777, less the umask), not the private 0600 and
0700 of the temporary files and directories they are built in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common import atomic_files
from common.atomic_files import atomic_path, current_umask, write_json
from deploy.studies.curves import Band, plot_bands
from replay.convert import convert


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=oct)
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_the_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_without_proc_the_umask_is_set_and_restored(umask, monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(atomic_files, "open", no_proc, raising=False)
    assert current_umask() == umask
    assert os.umask(umask) == umask


def test_cards_tables_and_plots_get_the_mode_of_open(tmp_path, umask):
    card = write_json(tmp_path / "data" / "3m.card.json", {"episodes": 1})
    with atomic_path(tmp_path / "table.md") as tmp:
        Path(tmp).write_text("| a |\n")
    plot = plot_bands(tmp_path / "curve.png", [Band("a", [0, 1], [0, 1], [0, 1], [0, 1])], "x", "y", "t")
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "plain") == 0o666 & ~umask
    for path in (card, tmp_path / "table.md", plot):
        assert mode(path) == 0o666 & ~umask, path.name


def test_datasets_and_vaults_get_the_mode_of_open_and_mkdir(tmp_path, umask):
    from test_vaults import synthetic_file

    dataset = synthetic_file(tmp_path / "3m_medium.h5")
    assert mode(dataset) == 0o666 & ~umask
    vault, _ = convert(dataset, tmp_path / "3m.vlt" / "Medium")
    assert mode(vault) == 0o777 & ~umask
    assert mode(tmp_path / "3m.vlt") == 0o777 & ~umask
    back, _ = convert(vault, tmp_path / "back.h5")
    assert mode(back) == 0o666 & ~umask
    for path in vault.rglob("*"):
        assert mode(path) == (0o777 if path.is_dir() else 0o666) & ~umask, path


def test_checkpoints_get_the_mode_of_open(tmp_path, umask):
    from common.config import resolve_config
    from deploy.builder import Builder
    from learner.checkpoint import save_checkpoint

    learner = Builder(resolve_config(map_name="3m", method="ovmse")).learner()
    saved = save_checkpoint(learner, tmp_path / "learner.pt", map_name="3m")
    assert mode(saved) == 0o666 & ~umask
