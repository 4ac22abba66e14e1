"""The learner's update step: phases, targets, offline memory, CQL's effect, a coordination game,
repeatability and checkpoint/resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from common.config.sections import LearnerConfig
from common.episode import EpisodeBuilder, TrainingBatch, to_training_batch
from common.networks import mix
from learner import qmix_learner as learning
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.qmix_learner import METRIC_KEYS, QMixLearner, resolve_device

SMALL = dict(
    rnn_hidden_dim=16, mixing_embed_dim=8, hypernet_embed_dim=16, device="cpu", behaviour_pretrain_updates=3
)
INFO = {"n_agents": 3, "obs_shape": 5, "state_shape": 7, "n_actions": 4, "episode_limit": 8}


def config(**fields) -> LearnerConfig:
    return dataclasses.replace(LearnerConfig(), **{**SMALL, **fields})


def random_batch(seed: int, B: int = 6, T: int = 8, info: dict = INFO) -> TrainingBatch:
    """Valid random episodes in PyMARL layout: shorter ones end with a terminal, padding after."""
    g = torch.Generator().manual_seed(seed)
    n, O, S, A = info["n_agents"], info["obs_shape"], info["state_shape"], info["n_actions"]
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    rows = torch.arange(T + 1)
    filled = (rows[None] <= lengths[:, None]).float()
    terminated = torch.zeros(B, T + 1)
    ended = lengths < T
    terminated[ended, lengths[ended] - 1] = 1
    avail = torch.rand(B, T + 1, n, A, generator=g) < 0.6
    avail[..., 1] = True
    avail &= filled[..., None, None] > 0
    probs = avail.float().view(-1, A)
    probs[probs.sum(-1) == 0, 0] = 1
    actions = torch.multinomial(probs, 1, generator=g).view(B, T + 1, n, 1)
    actions *= (rows[None] < lengths[:, None])[..., None, None]
    return TrainingBatch(
        state=torch.randn(B, T + 1, S, generator=g) * filled[..., None],
        obs=torch.randn(B, T + 1, n, O, generator=g) * filled[..., None, None],
        actions=actions,
        avail_actions=avail,
        reward=torch.rand(B, T + 1, 1, generator=g) * (rows[None] < lengths[:, None])[..., None],
        terminated=terminated[..., None],
        filled=filled[..., None],
        offline=torch.zeros(B, dtype=torch.bool),
        policy_version=torch.zeros(B, dtype=torch.int64),
    )


def weights_of(learner: QMixLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.params]


def with_behaviour_phase(learner: QMixLearner, batch: TrainingBatch) -> QMixLearner:
    """Run CFCQL's behaviour-cloning phase (if the learner has one), as the offline loop does."""
    while learner.needs_behaviour_pretraining:
        learner.pretrain_behaviour(batch)
    return learner


# --- the update step --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "floor"), [("cql", False), ("cfcql", False), ("cql", True), ("cfcql", True), ("none", False)]
)
def test_update_reports_every_metric_in_both_phases(variant, floor):
    learner = QMixLearner(
        INFO,
        config(offline_cql=variant, calql_floor=floor, online_cql_weight=0.1 if variant != "none" else 0.0),
    )
    batch = random_batch(0)
    with_behaviour_phase(learner, batch)
    offline = learner.update(batch, "offline", env_steps=0, episodes_seen=2)
    online = learner.update(batch, "online", env_steps=10, episodes_seen=4)
    for metrics in (offline, online):
        assert list(metrics) == list(METRIC_KEYS)
        assert all(isinstance(v, float) and v == v and abs(v) < 1e6 for v in metrics.values())
        assert 0.0 <= metrics["ovm_active_fraction"] <= 1.0
    assert (offline["loss_cql"] != 0.0) == (variant != "none")
    assert offline["loss_ovm"] == 0.0 and online["memory_coefficient"] == 1.0
    assert (offline["loss_bc"] > 0) == (variant == "cfcql")  # the frozen behaviour policy's fit
    assert learner.updates == 2
    with pytest.raises(ValueError, match="phase"):
        learner.update(batch, "warmup", env_steps=0, episodes_seen=0)


def test_a_real_padded_batch_from_the_lite_world_trains():
    from common.envs.lite import LiteBatchEnv
    from common.envs.maps import get_map
    from common.envs.policies import make_policy

    env = LiteBatchEnv("3m", num_envs=4, seed=0)
    policy = make_policy("heuristic", env.layout, get_map("3m"), seed=0, epsilon=0.5)
    builder = EpisodeBuilder(4, env.n_agents, env.episode_limit)
    obs = env.reset()
    builder.start(obs.state, obs.obs, obs.avail)
    episodes = []
    while len(episodes) < 6:
        actions = policy.act(obs.obs, obs.avail)
        step = env.step(actions)
        episodes += builder.record(actions, step)
        obs = step.next
    learner = QMixLearner(env.get_env_info(), config(offline_cql="cql", cql_sampled_actions=8))
    metrics = learner.update(to_training_batch(episodes), "offline", env_steps=0, episodes_seen=2)
    assert all(v == v for v in metrics.values()) and metrics["loss_cql"] != 0.0


def test_targets_are_hard_copies_every_interval_episodes():
    learner = QMixLearner(INFO, config(target_update_interval=6, offline_cql="none"))
    batch = random_batch(1)
    initial = [p.clone() for p in learner.target_agent.parameters()]
    for episodes in (2, 4):  # fewer than 6 episodes since the last copy: targets stay
        learner.update(batch, "offline", env_steps=0, episodes_seen=episodes)
        assert all(torch.equal(a, b) for a, b in zip(initial, learner.target_agent.parameters(), strict=True))
    learner.update(batch, "offline", env_steps=0, episodes_seen=6)
    assert learner.target_updates == 1 and learner.last_target_update_episode == 6
    online = learner.agent.state_dict() | {f"mixer.{k}": v for k, v in learner.mixer.state_dict().items()}
    target = learner.target_agent.state_dict() | {
        f"mixer.{k}": v for k, v in learner.target_mixer.state_dict().items()
    }
    assert all(torch.equal(online[k], target[k]) for k in online)
    learner.update(batch, "offline", env_steps=0, episodes_seen=8)
    assert learner.target_updates == 1


def test_offline_memory_is_a_frozen_copy_of_the_target_networks():
    learner = QMixLearner(INFO, config(target_update_interval=1000))
    batch = random_batch(2)
    for k in range(3):
        learner.update(batch, "offline", env_steps=0, episodes_seen=2 * k)
    learner.freeze_offline_memory()
    memory = [p.clone() for p in learner.offline_agent.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(memory, learner.target_agent.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(memory, learner.agent.parameters(), strict=True))
    for k in range(3):
        learner.update(batch, "online", env_steps=100 * k, episodes_seen=10 + 2 * k)
    assert all(torch.equal(a, b) for a, b in zip(memory, learner.offline_agent.parameters(), strict=True))
    assert not any(p.requires_grad for p in learner.offline_agent.parameters())


def test_ovm_follows_the_memory_schedule_and_the_memory_raises_the_target():
    cfg = config(memory_coef_start=1.0, memory_coef_end=0.1, memory_anneal_steps=1000, offline_cql="none")
    learner = QMixLearner(INFO, cfg)
    batch = random_batch(3)
    learner.freeze_offline_memory()
    with torch.no_grad():  # a memory that values everything far above any TD target
        learner.offline_mixer.hyper_b2[-1].bias.fill_(100.0)
    assert learner.update(batch, "online", env_steps=0, episodes_seen=2)["memory_coefficient"] == 1.0
    half = learner.update(batch, "online", env_steps=500, episodes_seen=4)
    assert half["memory_coefficient"] == pytest.approx(0.55)
    late = learner.update(batch, "online", env_steps=10**6, episodes_seen=6)
    assert late["memory_coefficient"] == pytest.approx(0.1)
    assert late["ovm_active_fraction"] == 1.0
    assert late["loss_ovm"] > late["loss_td"]  # the OVM target is max(Q_offline, y_TD) = Q_offline
    plain = QMixLearner(INFO, config(use_offline_value_memory=False, offline_cql="none"))
    metrics = plain.update(batch, "online", env_steps=0, episodes_seen=2)
    assert metrics["loss_total"] == metrics["loss_td"] and metrics["memory_coefficient"] == 0.0
    assert plain.offline_agent is None


def test_the_same_seed_gives_the_same_numbers_and_weights_go_to_actors_on_cpu():
    runs = []
    for _ in range(2):
        learner = QMixLearner(INFO, config(offline_cql="cql", cql_sampled_actions=10), seed=7)
        runs.append([learner.update(random_batch(k), "offline", 0, 2 * k) for k in range(3)])
        weights = learner.agent_state_dict()
    assert runs[0] == runs[1]
    other = QMixLearner(INFO, config(), seed=8).agent_state_dict()
    assert not all(torch.equal(weights[k], other[k]) for k in weights)
    assert all(t.device.type == "cpu" for t in weights.values())
    agent = learner.make_agent()
    agent.load_state_dict(weights)
    assert torch.equal(agent.fc1.weight, learner.agent.fc1.weight)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu") == learner.device


# --- what the losses do to the values -------------------------------------------------------

GAME = {"n_agents": 2, "obs_shape": 1, "state_shape": 2, "n_actions": 3, "episode_limit": 1}


def one_step_episodes(joint_actions, rewards) -> TrainingBatch:
    """One-step episodes of a matrix game: act at row 0, the game ends (terminal), row 1 is the end."""
    B = len(joint_actions)
    actions = torch.zeros(B, 2, 2, 1, dtype=torch.long)
    actions[:, 0, :, 0] = torch.tensor(joint_actions)
    reward = torch.zeros(B, 2, 1)
    reward[:, 0, 0] = torch.tensor(rewards, dtype=torch.float32)
    terminated = torch.zeros(B, 2, 1)
    terminated[:, 0] = 1
    return TrainingBatch(
        state=torch.ones(B, 2, 2),
        obs=torch.ones(B, 2, 2, 1),
        actions=actions,
        avail_actions=torch.ones(B, 2, 2, 3, dtype=torch.bool),
        reward=reward,
        terminated=terminated,
        filled=torch.ones(B, 2, 1),
        offline=torch.ones(B, dtype=torch.bool),
        policy_version=torch.zeros(B, dtype=torch.int64),
    )


def agent_values(learner: QMixLearner) -> torch.Tensor:
    """Each agent's Q over its 3 actions in the game's (only) situation, [n, A]."""
    with torch.no_grad():
        batch = one_step_episodes([(0, 0)], [0.0])
        return learner.agent.forward_sequence(learner._agent_inputs(batch))[0, 0]


def test_learner_finds_the_optimum_of_a_coordination_game():
    payoff = [[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 3.0]]  # unique optimum: both play 1
    joint = [(i, j) for i in range(3) for j in range(3)] * 2
    batch = one_step_episodes(joint, [payoff[i][j] for i, j in joint])
    learner = QMixLearner(GAME, config(offline_cql="none", use_offline_value_memory=False, lr=5e-3))
    for k in range(200):
        metrics = learner.update(batch, "online", env_steps=0, episodes_seen=2 * k)
    assert agent_values(learner).argmax(-1).tolist() == [1, 1]
    assert metrics["loss_td"] < 1.0


def gap_after_offline_training(variant: str, floor: bool = False) -> torch.Tensor:
    """Train offline on data where both agents only ever play actions 0 and 1 (reward 0); return,
    per agent, min Q over the data actions minus Q of the absent action 2."""
    data = [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    batch = one_step_episodes(data, [0.0] * len(data))
    cfg = config(
        offline_cql=variant, calql_floor=floor, offline_cql_weight=1.0, lr=5e-3, cql_sampled_actions=20
    )
    learner = with_behaviour_phase(QMixLearner(GAME, cfg, seed=0), batch)
    for k in range(150):
        learner.update(batch, "offline", env_steps=0, episodes_seen=2 * k)
    q = agent_values(learner)
    return q[:, :2].min(-1).values - q[:, 2]


def test_cql_pushes_actions_absent_from_the_data_below_the_data_actions():
    without = gap_after_offline_training("none")
    for variant, floor in (("cql", False), ("cfcql", False), ("cql", True), ("cfcql", True)):
        gap = gap_after_offline_training(variant, floor)
        assert (gap > 0.5).all(), (variant, floor, gap)
        assert (gap > without + 0.5).all(), (variant, floor, gap, without)


def constant_q_tot(mixer, value: float) -> None:
    """Make a mixer's Q_tot = `value` for every state and joint action (w2 = 0, V(s) = value)."""
    with torch.no_grad():
        mixer.hyper_w2[-1].weight.zero_()
        mixer.hyper_w2[-1].bias.zero_()
        mixer.hyper_b2[-1].weight.zero_()
        mixer.hyper_b2[-1].bias.fill_(value)


def test_the_online_loss_is_eq5_by_hand_on_constant_values():
    # Q_tot = 2 for every joint action, the frozen memory says 3, and the one-step episodes end at
    # once (terminal), so y_TD = r. With lambda = 0.4, Eq. 5 on rewards 0, 1, 5 is
    #   0.4 * 0.5 * mean((2 - max(3, r))^2) + 0.6 * 0.5 * mean((2 - r)^2)
    #   = 0.4 * 0.5 * (1 + 1 + 9) / 3 + 0.6 * 0.5 * (4 + 1 + 9) / 3.
    batch = one_step_episodes([(0, 0), (1, 2), (2, 1)], [0.0, 1.0, 5.0])
    cfg = config(offline_cql="none", memory_coef_start=0.4, memory_coef_end=0.4, memory_anneal_steps=0)
    learner = QMixLearner(GAME, cfg)
    learner.freeze_offline_memory()
    constant_q_tot(learner.mixer, 2.0)
    constant_q_tot(learner.offline_mixer, 3.0)
    metrics = learner.update(batch, "online", env_steps=0, episodes_seen=2)
    td = 0.5 * (4 + 1 + 9) / 3
    ovm = 0.4 * 0.5 * (1 + 1 + 9) / 3 + 0.6 * td
    assert metrics["loss_total"] == pytest.approx(ovm, rel=1e-6)
    assert metrics["loss_ovm"] == pytest.approx(ovm, rel=1e-6)
    assert metrics["loss_td"] == pytest.approx(td, rel=1e-6)
    assert metrics["ovm_active_fraction"] == pytest.approx(2 / 3)  # memory above y_TD for r = 0, 1
    assert metrics["memory_coefficient"] == 0.4 and metrics["target_mean"] == pytest.approx(2.0)


def q_tot_of(learner: QMixLearner, joint) -> float:
    batch = one_step_episodes([joint], [0.0])
    with torch.no_grad():
        qs = learner.agent.forward_sequence(learner._agent_inputs(batch))[:, :1]
        chosen = qs.gather(-1, batch.actions[:, :1]).squeeze(-1)
        return float(mix(chosen, learner.mixer.mixing_weights(batch.state[:, :1])))


def test_the_offline_memory_floors_q_tot_at_the_data_action_while_plain_td_collapses():
    # Offline, joint action (1, 1) paid 4; online it pays 0 (the online data contradict the offline
    # values). Plain TD (Switch CQL's online loss) drags Q_tot(1, 1) to 0; OVM with lambda = 1 trains
    # towards max(Q_offline, y_TD) = Q_offline, so the learned value stays at the memory's.
    offline_data = one_step_episodes([(1, 1)] * 4 + [(0, 2), (2, 0)] * 2, [4.0] * 4 + [0.0] * 4)
    online_data = one_step_episodes([(1, 1)] * 8, [0.0] * 8)
    finals = {}
    for memory in (True, False):
        cfg = config(offline_cql="none", use_offline_value_memory=memory, lr=5e-3, target_update_interval=20)
        learner = QMixLearner(GAME, cfg, seed=0)
        for k in range(150):
            learner.update(offline_data, "offline", env_steps=0, episodes_seen=2 * k)
        learner.update_targets()
        learner.freeze_offline_memory()
        remembered = q_tot_of(learner, (1, 1))
        assert remembered == pytest.approx(4.0, abs=0.3)  # what pre-training learned
        for k in range(150):
            learner.update(online_data, "online", env_steps=10 * k, episodes_seen=300 + 2 * k)
        finals[memory] = q_tot_of(learner, (1, 1))
    assert finals[True] == pytest.approx(remembered, abs=0.1), finals  # held at the memory
    assert finals[False] < 0.5, finals  # without the memory: collapsed to the online reward


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cql", "cfcql"])
def test_a_resumed_learner_makes_exactly_the_next_update(tmp_path, variant):
    cfg = config(offline_cql=variant, online_cql_weight=0.1, cql_sampled_actions=10, target_update_interval=4)
    learner = with_behaviour_phase(QMixLearner(INFO, cfg, seed=3), random_batch(30))
    for k in range(3):
        learner.update(random_batch(k), "offline", env_steps=0, episodes_seen=2 * k)
    learner.freeze_offline_memory()
    learner.update(random_batch(10), "online", env_steps=40, episodes_seen=8)
    path = save_checkpoint(
        learner, tmp_path / "ckpt" / "learner.pt", extra={"phase": "online", "env_steps": 40}
    )
    assert [p.name for p in path.parent.iterdir()] == ["learner.pt"]  # no temp file left behind

    resumed = QMixLearner(INFO, cfg, seed=99)  # a different seed: everything must come from the file
    assert load_checkpoint(resumed, path) == {"phase": "online", "env_steps": 40}
    for k in range(2):  # the next updates, including the random CQL samples and a target copy
        batch = random_batch(20 + k)
        assert resumed.update(batch, "online", 60 + k, 10 + 2 * k) == learner.update(
            batch, "online", 60 + k, 10 + 2 * k
        )
    assert all(torch.equal(a, b) for a, b in zip(weights_of(learner), weights_of(resumed), strict=True))
    assert resumed.updates == learner.updates and resumed.target_updates == learner.target_updates


def test_a_checkpoint_refuses_a_learner_of_another_shape(tmp_path):
    path = save_checkpoint(QMixLearner(INFO, config()), tmp_path / "a.pt")
    other = QMixLearner({**INFO, "n_actions": 5}, config())
    with pytest.raises(ValueError, match="checkpoint is for networks"):
        load_checkpoint(other, path)


# --- against an independent implementation ---------------------------------------------------


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_learner.py"
    spec = importlib.util.spec_from_file_location("bench_learner_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["td", "offline_cql", "online_ovm"])
def test_the_update_equals_a_pymarl2_style_learner_step_by_step(kind):
    """The benchmark's reference (PyMARL2's per-step loop, CFCQL's raw CQL) and our fused update
    compute the same losses and end at the same weights, update after update."""
    bench = _bench_module()
    phase, ours = bench.make_learners(kind, "cpu", precision="fp32")  # the reference is fp32
    reference = bench.PyMARL2StyleLearner(ours)
    for k in range(3):
        batch = bench.make_batch(3, seed=k, steps=12)
        ours_loss = ours.update(batch, phase, env_steps=0, episodes_seen=2 * k)["loss_total"]
        assert reference.update(batch, phase, memory_coef=1.0, episodes_seen=2 * k) == pytest.approx(
            ours_loss, rel=1e-4
        )
    for mine, theirs in zip(
        ours.agent.state_dict().values(), reference.agent.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


# --- the baselines as their references define them -------------------------------------------


def constant_mixer(learner: QMixLearner, value: float) -> None:
    """Make Q_tot = `value` for every state and joint action (mixer weights w2 = 0, V(s) = value)."""
    with torch.no_grad():
        learner.mixer.hyper_w2[-1].weight.zero_()
        learner.mixer.hyper_w2[-1].bias.zero_()
        learner.mixer.hyper_b2[-1].weight.zero_()
        learner.mixer.hyper_b2[-1].bias.fill_(value)


def only_data_actions_available(batch: TrainingBatch) -> TrainingBatch:
    avail = torch.nn.functional.one_hot(batch.actions.squeeze(-1), INFO["n_actions"]).bool()
    return dataclasses.replace(batch, avail_actions=avail)


def test_raw_cql_samples_available_actions_by_default_and_all_actions_on_request():
    # Q_tot = 20 for every joint action, and each agent may only take its data action. Drawing
    # available actions only, every sample is the data action: log(K e^20) - 20 = log K. Drawing
    # over all 4 actions, a joint sample of 3 agents is valid with probability 1/64 and counts as
    # Q_tot = 0 otherwise, so the push-down falls far below log K.
    K = 50
    batch = only_data_actions_available(random_batch(4))
    losses_by_sampler = {}
    for sampler in ("all_actions", "available_only"):
        learner = QMixLearner(INFO, config(offline_cql="cql", cql_sampler=sampler, cql_sampled_actions=K))
        constant_mixer(learner, 20.0)
        losses_by_sampler[sampler] = learner.update(batch, "offline", env_steps=0, episodes_seen=2)[
            "loss_cql"
        ]
    assert LearnerConfig().cql_sampler == "available_only"
    assert losses_by_sampler["available_only"] == pytest.approx(math.log(K), rel=1e-5)
    assert losses_by_sampler["all_actions"] < math.log(K) - 1.0


def reference_returns(batch: TrainingBatch, gamma: float) -> torch.Tensor:
    """R_t = sum_{k >= t} gamma^(k - t) r_k over each episode's steps, [B, T]; 0 after its end."""
    B, T = batch.reward.shape[0], batch.reward.shape[1] - 1
    lengths = batch.filled[:, :, 0].sum(1).long() - 1  # steps of each episode
    out = torch.zeros(B, T)
    for b in range(B):
        following = 0.0
        for t in reversed(range(int(lengths[b]))):
            following = float(batch.reward[b, t, 0]) + gamma * following
            out[b, t] = following
    return out


@pytest.mark.parametrize("variant", ["cql", "cfcql"])
def test_calql_adds_the_greedy_action_floored_at_the_return_to_go(variant):
    # Q_tot = c for every joint action, so only the floor tells the values apart: with K available
    # samples, raw MACQL's push-down is log(K e^c + e^max(c, R_t)); CFCQL's N_i has agent i's
    # m_i available actions, the greedy one floored: log((m_i - 1) e^c + e^max(c, R_t)).
    c, K, gamma = 0.5, 7, 0.99
    batch = random_batch(5)
    batch = dataclasses.replace(batch, reward=batch.reward * 3)  # returns above and below c
    cfg = config(
        offline_cql=variant,
        calql_floor=True,
        cql_sampler="available_only",
        cql_sampled_actions=K,
        cfcql_softmax_temperature=0.0,
        gamma=gamma,
    )
    learner = QMixLearner(INFO, cfg)
    constant_mixer(learner, c)
    loss_cql = learner.update(batch, "offline", env_steps=0, episodes_seen=2)["loss_cql"]
    returns = reference_returns(batch, gamma)
    lengths = batch.filled[:, :, 0].sum(1).long() - 1
    terms = []
    for b in range(returns.shape[0]):
        for t in range(int(lengths[b])):
            top = max(c, float(returns[b, t]))
            if variant == "cql":
                terms.append(math.log(K * math.exp(c) + math.exp(top)) - c)
            else:
                counts = batch.avail_actions[b, t].sum(-1).tolist()  # m_i per agent
                n_i = [math.log((m - 1) * math.exp(c) + math.exp(top)) for m in counts]
                terms.append(sum(n_i) / len(n_i) - c)
    assert any(float(r) > c for r in returns.flatten()) and any(0 < float(r) < c for r in returns.flatten())
    assert loss_cql == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def behaviour_weights(learner: QMixLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.behaviour.parameters()]


def test_the_behaviour_policy_is_cloned_first_then_frozen_offline_and_online(tmp_path):
    cfg = config(offline_cql="cfcql", online_cql_weight=0.1, behaviour_pretrain_updates=3)
    learner = QMixLearner(INFO, cfg)
    assert learner.needs_behaviour_pretraining and learner.behaviour_pretraining_left == 3
    with pytest.raises(RuntimeError, match="behaviour-cloning"):  # CQL must wait for the phase
        learner.update(random_batch(0), "offline", env_steps=0, episodes_seen=2)
    start = behaviour_weights(learner)
    bc = [learner.pretrain_behaviour(random_batch(k)) for k in range(3)]
    assert all(b > 0 for b in bc) and not learner.needs_behaviour_pretraining
    cloned = behaviour_weights(learner)
    assert not all(torch.equal(a, b) for a, b in zip(start, cloned, strict=True))
    with pytest.raises(RuntimeError, match="no behaviour-cloning update is due"):
        learner.pretrain_behaviour(random_batch(0))
    for k in range(3):  # CQL updates offline, then TD + CQL online: the policy stays as cloned
        metrics = learner.update(random_batch(10 + k), "offline", env_steps=0, episodes_seen=2 * k)
        assert metrics["loss_cql"] != 0.0 and metrics["loss_bc"] > 0
    learner.freeze_offline_memory()
    for k in range(3):
        learner.update(random_batch(20 + k), "online", env_steps=10 * k, episodes_seen=8 + 2 * k)
    assert all(torch.equal(a, b) for a, b in zip(cloned, behaviour_weights(learner), strict=True))
    # The checkpoint keeps the cloned policy and its finished phase.
    path = save_checkpoint(learner, tmp_path / "learner.pt")
    resumed = QMixLearner(INFO, cfg, seed=42)
    load_checkpoint(resumed, path)
    assert not resumed.needs_behaviour_pretraining
    assert all(torch.equal(a, b) for a, b in zip(cloned, behaviour_weights(resumed), strict=True))


def test_no_behaviour_policy_without_a_temperature_or_a_phase():
    for fields in (dict(cfcql_softmax_temperature=0.0), dict(behaviour_pretrain_updates=0)):
        learner = QMixLearner(INFO, config(offline_cql="cfcql", **fields))
        assert learner.behaviour is None and learner.behaviour_pretraining_left == 0
        assert learner.update(random_batch(0), "offline", env_steps=0, episodes_seen=2)["loss_bc"] == 0.0


def test_ovm_one_step_target_is_td_lambda_zero_and_only_inside_ovm():
    # PyMARL2's TD(lambda) at lambda = 0 is the one-step target on every trained step, so OVM with
    # the one-step target at lambda 0.6 must train exactly as OVM with TD(lambda) at lambda 0.
    def run(phase: str, **fields) -> list[dict]:
        learner = QMixLearner(INFO, config(offline_cql="none", **fields), seed=1)
        learner.freeze_offline_memory()
        return [learner.update(random_batch(k), phase, env_steps=k, episodes_seen=2 * k) for k in range(3)]

    def same(a: list[dict], b: list[dict]) -> bool:
        return all(
            x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6) for x, y in zip(a, b, strict=True) for k in x
        )

    one_step = run("online", ovm_target="one_step", td_lambda=0.6)
    assert same(one_step, run("online", ovm_target="td_lambda", td_lambda=0.0))
    assert not same(one_step, run("online", ovm_target="td_lambda", td_lambda=0.6))
    # Offline, and online without OVM, the target stays TD(lambda).
    assert run("offline", ovm_target="one_step") == run("offline", ovm_target="td_lambda")
    plain = dict(use_offline_value_memory=False)
    assert run("online", ovm_target="one_step", **plain) == run("online", ovm_target="td_lambda", **plain)


def test_the_offline_loop_clones_the_behaviour_policy_before_the_cql_updates():
    from common.config.sections import Config
    from learner.training import run_offline_phase

    class Sampler:  # hands out fresh offline batches and records who asked
        def __init__(self):
            self.served = 0

        def sample(self, timeout=None):
            self.served += 1
            return random_batch(self.served)

    cfg = dataclasses.replace(
        Config(), learner=config(offline_cql="cfcql", behaviour_pretrain_updates=4, offline_updates=2)
    )
    learner, sampler = QMixLearner(INFO, cfg.learner), Sampler()
    metrics = run_offline_phase(cfg, learner, sampler, log=None, progress=False)
    assert (learner.behaviour_updates, learner.updates, sampler.served) == (4, 2, 6)
    assert metrics["loss_cql"] != 0.0 and not learner.needs_behaviour_pretraining
    run_offline_phase(cfg, learner, sampler, log=None, progress=False)  # resumed: no second phase
    assert (learner.behaviour_updates, learner.updates) == (4, 4)


# --- precision --------------------------------------------------------------------------------


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BF16_LOSS_TOLERANCE = 0.01  # relative; measured on the AMX Xeon: at most 0.24% over these 20 updates


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded machine each of oneDNN's two-thread bf16 products of these tiny
    shapes waited a scheduler time slice (~15 ms, 3 s per update); one thread takes ~40 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["td", "cql_ovm"])
def test_bf16_updates_track_fp32_updates_from_the_same_weights(device, variant, one_thread):
    """Twenty updates in bf16 and in fp32 from the same weights on the same batches: every loss
    within BF16_LOSS_TOLERANCE, while the weights and Adam's state stay fp32."""
    fields = dict(offline_cql="none", use_offline_value_memory=False)
    if variant == "cql_ovm":
        fields = dict(offline_cql="cql", online_cql_weight=0.1, cql_sampled_actions=8)
    learners = {
        p: QMixLearner(INFO, config(device=device, precision=p, **fields), seed=5) for p in ("fp32", "bf16")
    }
    assert {p: learner.precision for p, learner in learners.items()} == {"fp32": "fp32", "bf16": "bf16"}
    losses = {p: [] for p in learners}
    for k in range(20):
        batch = random_batch(seed=100 + k % 4, B=8, T=10)
        phase = "offline" if k < 10 else "online"
        for p, learner in learners.items():
            losses[p].append(learner.update(batch, phase, env_steps=k, episodes_seen=2 * k)["loss_total"])
    fp32, bf16 = torch.tensor(losses["fp32"]), torch.tensor(losses["bf16"])
    assert not torch.equal(fp32, bf16)  # bf16 did run
    assert ((bf16 - fp32).abs() / fp32.abs()).max() < BF16_LOSS_TOLERANCE, (fp32, bf16)
    learner = learners["bf16"]
    assert all(p.dtype == torch.float32 for p in learner.params)
    assert all(
        v.dtype == torch.float32
        for s in learner.optimizer.state.values()
        for v in s.values()
        if v.is_floating_point()
    )


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some Xeon\nflags\t\t: fpu sse avx512f amx_tile amx_bf16\n")
    assert learning.cpu_bf16_flags(str(cpuinfo)) == ["amx_bf16"]
    cpuinfo.write_text("flags\t\t: fpu sse avx2\n")
    assert learning.cpu_bf16_flags(str(cpuinfo)) == []
    assert learning.cpu_bf16_flags(str(tmp_path / "absent")) == []

    cpu = torch.device("cpu")
    monkeypatch.setattr(learning, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    assert learning.resolve_precision("auto", cpu) == "bf16"
    assert QMixLearner(INFO, config(precision="auto")).precision == "bf16"
    assert learning.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(learning, "cpu_bf16_flags", lambda: [])
    assert learning.resolve_precision("auto", cpu) == "fp32"
    assert QMixLearner(INFO, config(precision="auto")).precision == "fp32"
    assert learning.resolve_precision("bf16", cpu) == "bf16"  # asked for: given, if slowly
    assert learning.resolve_precision("auto", torch.device("mps")) == "fp32"


# --- value diagnostics on held-out data --------------------------------------------------------


def test_the_agreement_is_the_share_of_trained_steps_where_the_greedy_joint_action_is_the_datas():
    from common.episode import training_mask

    learner = QMixLearner(INFO, config(), seed=3)
    batch = random_batch(5)
    greedy = learner.greedy_joint_actions(batch)  # [B, T, n]
    # Make the data agree with the greedy policy on the first two steps of every episode.
    actions = batch.actions.clone()
    actions[:, :2, :, 0] = greedy[:, :2]
    batch = dataclasses.replace(batch, actions=actions)
    greedy = learner.greedy_joint_actions(batch)  # the inputs hold the previous actions: ask again
    mask = training_mask(batch.filled, batch.terminated)[..., 0]
    same = (greedy == batch.actions[:, :-1, :, 0]).all(-1).float()
    d = learner.value_diagnostics(batch)
    assert d["greedy_agreement"] == pytest.approx(float((same * mask).sum() / mask.sum()))
    assert 0 < d["greedy_agreement"] < 1
    assert d["q_data"] == pytest.approx(learner.probe_q(batch), rel=1e-5)


def test_the_greedy_joint_value_is_never_below_the_datas_and_the_return_is_the_discounted_sum():
    learner = QMixLearner(INFO, config(gamma=0.5), seed=3)
    batch = random_batch(6, B=4, T=3)
    batch = dataclasses.replace(
        batch, reward=torch.ones_like(batch.reward) * batch.filled, terminated=batch.terminated
    )
    d = learner.value_diagnostics(batch)
    assert 0.0 <= d["greedy_agreement"] < 1.0
    assert d["q_greedy_minus_data"] > 0  # the mixer is monotonic: each agent's max can only raise Q_tot
    # Monte-Carlo return-to-go with reward 1 per step and gamma 0.5, averaged over the trained steps.
    from common.episode import training_mask
    from learner.losses import mc_returns

    mask = training_mask(batch.filled, batch.terminated)
    expected = float((mc_returns(batch.reward[:, :-1], mask, 0.5) * mask).sum() / mask.sum())
    assert d["mc_return"] == pytest.approx(expected)
    assert 1.0 <= d["mc_return"] < 2.0


def test_held_out_episodes_are_at_most_two_percent_drawn_by_the_seed():
    from deploy.builder import held_out_indices

    assert held_out_indices(49, 64, seed=0) == set()  # too few episodes to spare any
    assert len(held_out_indices(1000, 64, seed=0)) == 20
    assert len(held_out_indices(10_000, 64, seed=0)) == 64
    assert held_out_indices(5000, 64, seed=1) == held_out_indices(5000, 64, seed=1)
    assert held_out_indices(5000, 64, seed=1) != held_out_indices(5000, 64, seed=2)
    assert held_out_indices(5000, 0, seed=1) == set()
