"""Every process a test starts dies with the test process, also when pytest itself is stopped from
outside (a CI timeout's SIGTERM, or SIGKILL) and no fixture's teardown runs: on Linux each child
started from the main thread asks the kernel for SIGTERM when pytest goes (`die_with_parent`, the
parent-death signal the orchestrator gives its own children). A replay server or learner a test
started is then never found running minutes later, its parent gone."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from deploy.studies.pools import die_with_parent


def _dies_with_this_process(popen_init):
    def init(self, *args, preexec_fn=None, **kwargs):
        # Only from the main thread: the kernel signals the child when the thread that started it
        # ends, and a worker thread may end long before the test does.
        if threading.current_thread() is threading.main_thread():
            own = preexec_fn

            def preexec_fn() -> None:
                die_with_parent()
                if own is not None:
                    own()

        popen_init(self, *args, preexec_fn=preexec_fn, **kwargs)

    init.dies_with_parent = True
    return init


if sys.platform == "linux" and not getattr(subprocess.Popen.__init__, "dies_with_parent", False):
    subprocess.Popen.__init__ = _dies_with_this_process(subprocess.Popen.__init__)


# Modules whose tests run inside the pytest process, or start at most a short-lived helper process
# (a compiler check, promtool): no server but on a port the system picks, nothing written outside
# tmp_path. `make test` runs these on two workers (pytest-xdist, one module per worker at a time),
# then every other test one at a time, as before: a module missing here simply runs serially, so a
# new live module is safe by default.
IN_PROCESS_MODULES = frozenset(
    (
        "test_acting_backends",
        "test_architecture",
        "test_checkpoint_integrity",
        "test_cli_first_hour",
        "test_config",
        "test_coordination_game",
        "test_dataset",
        "test_dataset_commands",
        "test_episode",
        "test_episode_checks",
        "test_eval_logging",
        "test_evaluator",
        "test_exploration",
        "test_file_modes",
        "test_grafana",
        "test_inspo_learner",
        "test_inspo_math",
        "test_learner_losses",
        "test_learner_targets",
        "test_learner_update",
        "test_matd3",
        "test_matrix_games",
        "test_metrics",
        "test_networks",
        "test_o2o_sync",
        "test_omsd_math",
        "test_online_data_guard",
        "test_particle_datasets",
        "test_particle_offline",
        "test_policies",
        "test_process_loops",
        "test_repeatability",
        "test_replay_sampler",
        "test_replay_tables",
        "test_reproduce_adopt",
        "test_rollout",
        "test_run_log",
        "test_sc2_adapter",
        "test_schedules",
        "test_serial_batch",
        "test_smacv2",
        "test_smacv2_trajectories",
        "test_stats",
        "test_trainer_resume",
        "test_world",
    )
)


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in IN_PROCESS_MODULES:
            item.add_marker(pytest.mark.in_process)
