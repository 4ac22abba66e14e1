"""The one-step matrix games, and the coordination claim InSPO is built on.

Two agents, one step. In XOR the team scores when the agents pick different actions; in the M-NE
game it scores on the diagonal, best at (0, 0). From balanced data each agent's own behaviour is
(nearly) uniform, so anything that regularises each agent on its own toward its behaviour policy
(behaviour cloning; InSPO with the sequential update switched off) leaves the team miscoordinated
much of the time. InSPO's sequential update lets each agent answer the teammates already updated,
so the joint policy settles on one optimal joint action. QMIX+CQL's greedy joint action (our
QMixLearner) misses the M-NE game's best equilibrium.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.config.sections import Config, EnvConfig, LearnerConfig, RunConfig
from common.envs.factory import make_batch_env, make_env
from common.envs.matrix import GAMES, dataset_episodes, dataset_joint_distribution
from common.envs.protocol import BatchEnv, MultiAgentEnv
from common.episode import to_training_batch
from common.probe import greedy_joint_actions
from deploy.builder import Builder
from deploy.studies.matrix_data import write_matrix_dataset
from learner.inspo_learner import InSPOLearner
from learner.qmix_learner import QMixLearner

# Small networks and short runs: the games have one state, and the tests must stay quick.
# Temperature alpha + beta = 0.06 against payoffs of 1: each agent's answer to its teammates is sharp.
SMALL = dict(device="cpu", rnn_hidden_dim=16, lr=1e-2, batch_size=32)
INSPO = dict(
    SMALL,
    algorithm="inspo",
    use_offline_value_memory=False,
    behaviour_pretrain_updates=60,
    inspo_agent_updates=15,
    inspo_alpha=0.05,
    inspo_beta=0.01,
)
ITERATIONS = 5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Batches of 32 one-step episodes: threads only add synchronisation (and, on a busy machine,
    waits for time slices)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def matrix_config(game: str, dataset: str, **learner) -> Config:
    return Config(
        env=EnvConfig(backend="matrix", map_name=game),
        learner=dataclasses.replace(LearnerConfig(), **learner),
        run=RunConfig(dataset=dataset, seed=0),
    )


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[tuple[str, str], str]:
    root = tmp_path_factory.mktemp("matrix")
    return {
        (game, kind): str(write_matrix_dataset(root / f"{game}_{kind}.h5", game, kind, episodes=1000))
        for game in GAMES
        for kind in ("balanced", "imbalanced")
    }


def joint_policy(learner: InSPOLearner, replay, behaviour: bool = False) -> np.ndarray:
    """P(a1, a2) of the product of the two agents' policies (or behaviour policies)."""
    probs = learner.action_probabilities(to_training_batch(replay.offline[:1]), behaviour=behaviour)[0, 0]
    return torch.outer(probs[0], probs[1]).numpy()


def train_inspo(cfg: Config) -> tuple[InSPOLearner, object]:
    builder = Builder(cfg)
    learner = builder.learner()
    replay = builder.local_replay(cfg.run.dataset, mixing_ratio=1.0)
    while learner.needs_behaviour_pretraining:
        learner.pretrain_behaviour(replay.sample())
    for i in range(ITERATIONS * learner.n_agents * cfg.learner.inspo_agent_updates):
        learner.update(replay.sample(), "offline", env_steps=0, episodes_seen=i)
    return learner, replay


# ---------------------------------------------------------------------------- the worlds


def test_matrix_games_speak_the_battle_world_protocol_and_pay_their_payoffs():
    batch = make_batch_env(EnvConfig(backend="matrix", map_name="xor"), 4)
    assert isinstance(batch, BatchEnv)
    assert isinstance(make_env(EnvConfig(backend="matrix", map_name="mne")), MultiAgentEnv)
    assert batch.get_env_info() == {
        "state_shape": 1,
        "obs_shape": 1,
        "n_actions": 2,
        "n_agents": 2,
        "episode_limit": 1,
    }
    step = batch.step(np.array([[0, 1], [1, 0], [0, 0], [1, 1]]))
    assert step.reward.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert step.battle_won.tolist() == [True, True, False, False]
    assert step.terminated.all() and not step.episode_limit.any()
    mne = make_batch_env(EnvConfig(backend="matrix", map_name="mne"), 3)
    assert mne.step(np.array([[0, 0], [1, 1], [2, 2]])).reward.tolist() == pytest.approx([1.0, 0.5, 0.8])
    assert mne.step(np.array([[0, 1], [2, 0], [1, 2]])).reward.tolist() == [0.0, 0.0, 0.0]


def test_datasets_load_through_the_normal_dataset_path_with_the_behaviour_frequencies(datasets):
    for (game, kind), path in datasets.items():
        replay = Builder(matrix_config(game, path)).local_replay(path, mixing_ratio=1.0)
        assert len(replay.offline) == 1000
        joint = np.array([e.actions[0, :, 0] for e in replay.offline])
        n = GAMES[game].n_actions
        counts = np.zeros((n, n))
        np.add.at(counts, (joint[:, 0], joint[:, 1]), 1)
        assert np.abs(counts / 1000 - dataset_joint_distribution(game, kind)).max() < 0.05
        payoff = GAMES[game].payoff_array()
        assert all(e.reward[0, 0] == payoff[e.actions[0, 0, 0], e.actions[0, 1, 0]] for e in replay.offline)


def test_the_same_episodes_come_from_the_same_seed():
    a = dataset_episodes("mne", "imbalanced", 50, seed=3)
    b = dataset_episodes("mne", "imbalanced", 50, seed=3)
    assert [e.actions.tolist() for e in a] == [e.actions.tolist() for e in b]


# ---------------------------------------------------------------------------- the claim


@pytest.fixture(scope="module")
def xor_sequential(datasets):
    return train_inspo(matrix_config("xor", datasets["xor", "balanced"], **INSPO))


def test_xor_behaviour_cloning_leaves_the_team_miscoordinated_half_of_the_time(xor_sequential):
    learner, replay = xor_sequential
    joint = joint_policy(learner, replay, behaviour=True)
    assert joint[0, 0] + joint[1, 1] > 0.4
    assert joint.max() < 0.35


def test_xor_inspo_puts_most_of_its_mass_on_one_optimal_joint_action(xor_sequential):
    learner, replay = xor_sequential
    joint = joint_policy(learner, replay)
    best = np.unravel_index(joint.argmax(), joint.shape)
    assert tuple(int(i) for i in best) in GAMES["xor"].optimal_joint_actions()
    assert joint.max() > 0.9


def test_xor_inspo_acts_greedily_through_the_rollout_worker_and_always_scores(xor_sequential, datasets):
    """The evaluator's worker plays the learned policies (logits in place of Q-values, argmax over
    the available actions) and the team scores in every test game."""
    from actors.evaluator import evaluate

    learner, _ = xor_sequential
    worker = Builder(matrix_config("xor", datasets["xor", "balanced"], **INSPO)).eval_worker()
    worker.set_weights(learner.agent_state_dict(), 1)
    result = evaluate(worker, 16)
    assert result.win_rate == 1.0 and result.mean_return == 1.0


def test_xor_without_the_sequential_update_inspo_stays_miscoordinated(datasets):
    cfg = matrix_config("xor", datasets["xor", "balanced"], **INSPO, inspo_sequential=False)
    learner, replay = train_inspo(cfg)
    joint = joint_policy(learner, replay)
    assert joint[0, 0] + joint[1, 1] > 0.3
    assert joint.max() < 0.5


def test_mne_inspo_settles_on_the_best_equilibrium_and_independent_updates_do_not(datasets):
    path = datasets["mne", "balanced"]
    learner, replay = train_inspo(matrix_config("mne", path, **INSPO))
    joint = joint_policy(learner, replay)
    assert joint[0, 0] > 0.9
    independent, _ = train_inspo(matrix_config("mne", path, **INSPO, inspo_sequential=False))
    joint = joint_policy(independent, replay)
    assert joint.max() < 0.6  # spread over equilibria and miscoordinated pairs


def test_mne_qmix_with_cql_misses_the_best_equilibrium(datasets):
    """Our QMixLearner with raw CQL, greedy as it acts: the monotonic mixer cannot hold the
    game's payoffs, and its greedy joint action is not (0, 0) on most seeds."""
    path = datasets["mne", "balanced"]
    hits = 0
    for seed in range(3):
        cfg = matrix_config(
            "mne",
            path,
            **SMALL,
            offline_cql="cql",
            offline_cql_weight=1.0,
            cql_sampler="available_only",
            cql_sampled_actions=8,
            use_offline_value_memory=False,
        )
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
        builder = Builder(cfg)
        learner = builder.learner()
        assert isinstance(learner, QMixLearner)
        replay = builder.local_replay(path, mixing_ratio=1.0)
        for i in range(150):
            learner.update(replay.sample(), "offline", env_steps=0, episodes_seen=2 * (i + 1))
        greedy = greedy_joint_actions(learner.agent, to_training_batch(replay.offline[:1]))[0, 0].tolist()
        hits += greedy == [0, 0]
    assert hits <= 1
