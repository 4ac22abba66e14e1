"""A user's first hour with `ovmse`: outputs are never replaced unless asked, a zero is never taken
for "the default", the cause of a failure comes first and alone, a close misspelling gets its
correction, `evaluate` reads what a checkpoint records, and `--help` shows every default."""

from __future__ import annotations

import argparse

import pytest
import yaml

from deploy import cli
from deploy.config_args import positive_int
from deploy.replay_commands import dataset_collect, default_plot_path


def ovmse(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ovmse ARGV` run in this process; argparse's exits included."""
    try:
        code = cli.main(list(argv))
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small 3m dataset (3 episodes)."""
    out = tmp_path_factory.mktemp("data") / "3m_small.h5"
    args = cli.build_parser().parse_args(
        ["dataset", "collect", "--map", "3m", "--episodes", "3", "--envs", "2", "--out", str(out)]
    )
    assert dataset_collect(args) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A learner checkpoint of a 3m QMIX learner (it records map 3m and method qmix)."""
    from common.config import resolve_config
    from deploy.builder import Builder
    from learner.checkpoint import save_checkpoint

    cfg = resolve_config(map_name="3m", method="qmix")
    return save_checkpoint(Builder(cfg).learner(), tmp_path_factory.mktemp("ckpt") / "lone.pt", map_name="3m")


# --- outputs that exist ------------------------------------------------------------------------


def test_collect_refuses_an_existing_output_before_collecting_anything(dataset, monkeypatch, capsys):
    """An existing --out is refused in one line naming it, before a battle is played; the file
    stays as it was."""
    import deploy.recipes

    def never(*_, **__):
        raise AssertionError("collected although the output exists")

    monkeypatch.setattr(deploy.recipes, "collect_dataset", never)
    before = dataset.read_bytes()
    code, out, err = ovmse(
        capsys, "dataset", "collect", "--map", "3m", "--episodes", "2", "--out", str(dataset)
    )
    assert code == 2 and out == ""
    assert one_line(err) == (
        f"ovmse dataset collect: --out {dataset} already exists; pass --overwrite to replace it"
    )
    assert dataset.read_bytes() == before


def test_collect_refuses_an_existing_default_output_too(dataset, capsys):
    """Without --out the file is run.dataset's, refused the same way."""
    code, _, err = ovmse(capsys, "dataset", "collect", "--map", "3m", "--set", f"run.dataset={dataset}")
    assert code == 2
    assert one_line(err) == (
        f"ovmse dataset collect: --out (run.dataset) {dataset} already exists; pass --overwrite to replace it"
    )


def test_collect_with_overwrite_replaces_the_file(dataset, tmp_path, capsys):
    """--overwrite is the way to replace a dataset."""
    from replay.dataset import inspect_dataset

    copy = tmp_path / "copy.h5"
    copy.write_bytes(dataset.read_bytes())
    argv = ["dataset", "collect", "--map", "3m", "--episodes", "2", "--envs", "2", "--out", str(copy)]
    code, _, err = ovmse(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert inspect_dataset(copy).episodes == 2


def test_convert_refuses_an_existing_file_or_vault_and_overwrite_replaces_a_vault(dataset, tmp_path, capsys):
    """`dataset convert` refuses an existing destination, HDF5 file or vault, unless --overwrite; a
    replaced vault holds the new episodes."""
    from replay.dataset import inspect_dataset

    vault = tmp_path / "3m.vlt" / "small"
    assert ovmse(capsys, "dataset", "convert", str(dataset), "--out", str(vault))[0] == 0
    code, _, err = ovmse(capsys, "dataset", "convert", str(dataset), "--out", str(vault))
    assert code == 2
    assert (
        one_line(err)
        == f"ovmse dataset convert: --out {vault} already exists; pass --overwrite to replace it"
    )

    back = tmp_path / "back.h5"
    back.write_bytes(b"keep me")
    code, _, err = ovmse(capsys, "dataset", "convert", str(vault), "--out", str(back))
    assert code == 2 and back.read_bytes() == b"keep me"
    assert (
        one_line(err) == f"ovmse dataset convert: --out {back} already exists; pass --overwrite to replace it"
    )
    assert ovmse(capsys, "dataset", "convert", str(vault), "--out", str(back), "--overwrite")[0] == 0
    assert inspect_dataset(back).episodes == 3

    other = tmp_path / "two.h5"
    argv = ["dataset", "collect", "--map", "3m", "--episodes", "2", "--envs", "2", "--out", str(other)]
    assert ovmse(capsys, *argv)[0] == 0
    code, out, err = ovmse(capsys, "dataset", "convert", str(other), "--out", str(vault), "--overwrite")
    assert code == 0, err
    assert inspect_dataset(vault).episodes == 2
    assert sorted(p.name for p in vault.parent.iterdir()) == ["small"]  # nothing staged is left


def test_export_refuses_an_existing_output_in_the_same_words(tmp_path, capsys):
    checkpoint, out = tmp_path / "x.pt", tmp_path / "agent.pt"
    checkpoint.write_bytes(b"x")
    out.write_bytes(b"x")
    code, _, err = ovmse(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(out))
    assert code == 2
    assert one_line(err) == f"ovmse export: --out {out} already exists; pass --overwrite to replace it"


# --- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag", "detail"),
    [
        (["dataset", "collect", "--episodes", "0"], "--episodes", "must be at least 1, got 0"),
        (["dataset", "collect", "--episodes", "-5"], "--episodes", "must be at least 1, got -5"),
        (["dataset", "collect", "--envs", "0"], "--envs", "must be at least 1, got 0"),
        (["dataset", "collect", "--epsilon", "1.5"], "--epsilon", "must be in [0, 1], got 1.5"),
        (["evaluate", "--checkpoint", "x.pt", "--episodes", "0"], "--episodes", "must be at least 1, got 0"),
        (["evaluate", "--episodes", "two"], "--episodes", "expected a whole number, got 'two'"),
        (["actor", "--actor-id", "-1"], "--actor-id", "must be at least 0, got -1"),
        (["train", "--seed", "-1"], "--seed", "must be at least 0, got -1"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_zero_and_negative_counts_are_refused_in_one_line_naming_the_flag(argv, flag, detail, capsys):
    """No count falls back to its default because it is zero: it is refused while the command line
    is read, in one line that names the flag, with exit code 2."""
    code, out, err = ovmse(capsys, *argv)
    command = " ".join(a for a in argv[:2] if not a.startswith("-"))
    assert code == 2 and out == ""
    assert one_line(err) == f"ovmse {command}: argument {flag}: {detail} (see ovmse {command} --help)"


def test_reproduce_refuses_zero_threads_before_the_sweep(tmp_path, capsys):
    code, _, err = ovmse(capsys, "reproduce", "--threads", "0", "--report-only", "--out", str(tmp_path))
    assert code == 2
    assert (
        one_line(err)
        == "ovmse reproduce: argument --threads: must be at least 1, got 0 (see ovmse reproduce --help)"
    )


def test_a_zero_count_given_to_the_handler_is_refused_not_defaulted(tmp_path, capsys):
    """Called without the parser (as the demo and tests do), a zero is still a zero."""
    args = cli.build_parser().parse_args(
        ["dataset", "collect", "--map", "3m", "--out", str(tmp_path / "z.h5")]
    )
    args.episodes = 0
    assert dataset_collect(args) == 2
    assert one_line(capsys.readouterr().err) == "ovmse dataset collect: --episodes: must be at least 1, got 0"
    assert not (tmp_path / "z.h5").exists()


def test_positive_int_is_the_type_other_commands_can_share():
    assert positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        positive_int("0")


def subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, f"{prefix} {name}".strip())
    if prefix:
        yield prefix, parser


# Options that have no default to show. Those of `run` (its handler's own) and `reproduce`'s sweep
# options (deploy/studies/cli.py) are described where they are defined.
NO_DEFAULT = {
    ("run", "--resume"),
}


def test_help_shows_the_default_of_every_option_that_takes_a_value():
    """Every option that takes a value and is not required says its default in --help."""
    missing = []
    for command, parser in subcommands(cli.build_parser()):
        for action in parser._actions:
            takes_value = action.option_strings and action.nargs != 0 and not action.required
            if not takes_value or isinstance(action, argparse._AppendAction):
                continue
            if (command, action.option_strings[0]) in NO_DEFAULT:
                continue
            if "default" not in (action.help or ""):
                missing.append(f"{command} {action.option_strings[0]}")
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["train"], "(default: sync)"),
        (["dataset", "collect"], "(default: 5000"),
        (["dataset", "collect"], "(default: 0.0"),
        (["dataset", "collect"], "(default: heuristic)"),
    ],
)
def test_help_shows_the_defaults_a_user_asked_about(argv, shown, capsys):
    code, out, _ = ovmse(capsys, *argv, "--help")
    assert code == 0 and shown in " ".join(out.split())


# --- the cause first ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_a_missing_dataset_is_the_one_line_before_anything_starts(command, tmp_path, capsys):
    """The dataset is checked before a run directory is made: the cause is the only line."""
    missing = tmp_path / "missing.h5"
    flag = ["--dataset", str(missing)] if command == "pretrain" else ["--set", f"run.dataset={missing}"]
    runs = tmp_path / "runs"
    code, out, err = ovmse(capsys, command, "--map", "3m", *flag, "--set", f"run.run_dir={runs}")
    named = "--dataset" if command == "pretrain" else "run.dataset:"  # a flag, or the field
    assert code == 2 and out == ""
    assert one_line(err) == (
        f"ovmse {command}: {named} {missing}: file: no such file (make one with `ovmse dataset collect`)"
    )
    assert not runs.exists()


def test_a_dataset_for_another_map_is_refused_before_anything_starts(dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = ovmse(
        capsys, "pretrain", "--map", "8m", "--dataset", str(dataset), "--set", f"run.run_dir={runs}"
    )
    assert code == 2 and not runs.exists()
    assert one_line(err) == f"ovmse pretrain: --dataset {dataset}: obs: agents is 3, but map 8m has 8"


def test_evaluating_a_dataset_file_says_it_is_not_a_checkpoint(dataset, capsys):
    code, _, err = ovmse(capsys, "evaluate", "--checkpoint", str(dataset), "--episodes", "1")
    assert code == 2
    assert one_line(err) == (
        f"ovmse evaluate: {dataset}: not a checkpoint or an exported agent: an HDF5 file "
        "(a dataset? see `ovmse dataset inspect`)"
    )


def test_a_torch_file_holding_python_objects_is_not_a_checkpoint(tmp_path, capsys):
    import torch

    path = tmp_path / "thing.pt"
    torch.save({"thing": argparse.Namespace(code="runs on load")}, path)
    code, _, err = ovmse(capsys, "evaluate", "--checkpoint", str(path), "--episodes", "1")
    assert code == 2
    assert one_line(err) == (
        f"ovmse evaluate: {path}: not a checkpoint or an exported agent: a torch file holding Python "
        "objects (not loaded)"
    )


def test_an_unknown_benchmark_is_the_error_alone_with_a_suggestion(capsys):
    code, out, err = ovmse(capsys, "bench", "wrold")
    assert code == 2 and out == ""
    assert one_line(err).startswith(
        "ovmse bench: no benchmark named 'wrold' (did you mean 'world'?); known: "
    )


# --- did you mean ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["config", "--method", "ovmsee"],
            "config error: learner.method: no preset for method 'ovmsee' (did you mean 'ovmse'?); "
            "expected one of ",
        ),
        (["config", "--map", "3mm"], "config error: env.map_name: unknown map '3mm' (did you mean '3m'?)"),
        (
            ["reproduce", "--methods", "ovmse,qmx"],
            "ovmse reproduce: --methods: unknown method 'qmx' (did you mean 'qmix'?); expected some of ",
        ),
        (
            ["dataset", "validate", "x.h5", "--map", "3mm"],
            "ovmse dataset validate: --map: unknown map '3mm' (did you mean '3m'?); ",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_close_misspelling_gets_did_you_mean(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # reproduce writes nothing, but never in the checkout
    code, _, err = ovmse(capsys, *argv)
    assert code == 2
    assert one_line(err).startswith(expected)
    assert list(tmp_path.iterdir()) == []


# --- evaluate reads the checkpoint -------------------------------------------------------------


def test_evaluate_takes_the_map_from_the_checkpoint(checkpoint, capsys):
    code, out, err = ovmse(capsys, "evaluate", "--checkpoint", str(checkpoint), "--episodes", "1")
    assert code == 0, err
    assert out.startswith(f"{checkpoint}: 1 greedy episodes on 3m: ")


def test_evaluate_refuses_a_map_other_than_the_checkpoints_naming_both(checkpoint, capsys):
    code, _, err = ovmse(
        capsys, "evaluate", "--checkpoint", str(checkpoint), "--map", "8m", "--episodes", "1"
    )
    assert code == 2
    assert one_line(err) == (
        f"ovmse evaluate: --map 8m: {checkpoint} is a checkpoint for map 3m, not 8m "
        "(leave --map out to evaluate it on 3m)"
    )


# --- version, seed, plots ----------------------------------------------------------------------


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    code, out, _ = ovmse(capsys, "--version")
    assert code == 0 and out == f"ovmse {version('ovmse')}\n"
    assert cli.package_version() == version("ovmse")


def test_seed_sets_the_run_and_the_battle_seeds_and_set_still_wins(capsys):
    code, out, _ = ovmse(capsys, "config", "--seed", "7")
    data = yaml.safe_load(out)
    assert code == 0 and data["run"]["seed"] == 7 and data["env"]["seed"] == 7
    code, out, _ = ovmse(capsys, "config", "--seed", "7", "--set", "env.seed=3")
    data = yaml.safe_load(out)
    assert data["run"]["seed"] == 7 and data["env"]["seed"] == 3


def test_reproduce_has_seeds_not_seed_and_options_are_never_abbreviated(tmp_path, capsys):
    """`reproduce` runs seeds 0 .. N-1 (--seeds N); its --seed is refused, not taken for --seeds."""
    code, _, err = ovmse(capsys, "reproduce", "--seed", "3", "--report-only", "--out", str(tmp_path))
    assert code == 2
    assert one_line(err) == "ovmse reproduce: unrecognized arguments: --seed 3 (see ovmse reproduce --help)"
    code, _, err = ovmse(capsys, "dataset", "collect", "--episode", "3")
    assert code == 2 and "unrecognized arguments: --episode 3" in err


def test_a_vault_and_an_hdf5_file_of_the_same_name_get_different_plots(tmp_path):
    data = tmp_path / "data"
    (data / "3m.vlt" / "Good").mkdir(parents=True)
    (data / "3m_Good.h5").write_bytes(b"")
    (data / "3m.h5").write_bytes(b"")
    assert default_plot_path(data / "3m_Good.h5") == data / "3m_Good.returns.png"
    assert default_plot_path(data / "3m.vlt" / "Good") == data / "3m_Good.vault.returns.png"
    assert default_plot_path(data / "3m.vlt") == data / "3m.vault.returns.png"
    assert default_plot_path(data / "3m.h5") == data / "3m.returns.png"
