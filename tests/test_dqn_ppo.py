"""The pieces of reinforcement_learning/dqn_ppo are right: GAE equals its direct sum and bootstraps from the final
observation's value when an episode is truncated and from zero when it terminated (also REINFORCE's returns), the
vector environments hand over the real final observation, PPO's clipped objective has zero gradient exactly where
the clip binds (and a control without the clip does not), the replay buffer samples uniformly from its filled slots
only and overwrites the oldest, the target network changes only when copied, and DQN's (and Double DQN's) targets
bootstrap after a truncation and not after a termination; the cost cell counts DQN's gradient steps as `train_dqn`
takes them.

The notebook's own cells (tagged "rl") are executed into a namespace (tests/notebook_cells.py), so the tests check
the code the notebook teaches. Small inputs, nothing written anywhere.
"""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import RunClock, stream_seed
from notebook_cells import cell_sources, notebook_functions, run_tagged

gym = pytest.importorskip("gymnasium")
np = pytest.importorskip("numpy")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "reinforcement_learning" / "dqn_ppo" / "dqn_ppo.ipynb"
GAMMA = 0.9


@pytest.fixture(scope="module")
def ns() -> dict:
    from gymnasium.vector import AutoresetMode

    namespace = {"torch": torch, "nn": nn, "F": F, "math": math, "np": np, "gym": gym, "AutoresetMode": AutoresetMode,
                 "Config": SimpleNamespace}
    return run_tagged(NOTEBOOK, "rl", count=6, namespace=namespace)


def direct_gae(rewards, values, next_values, terminated, ended, gamma, lam):
    """Eq. 11 as written: A_t = sum_l (gamma lam)^l delta_{t+l}, the sum stopping at the end of the episode."""
    T = len(rewards)
    delta = [rewards[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t] for t in range(T)]
    out = []
    for t in range(T):
        total, weight = 0.0, 1.0
        for k in range(t, T):
            total += weight * delta[k]
            if ended[k]:
                break
            weight *= gamma * lam
        out.append(total)
    return out


def as_column(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]  # (T,) -> (T, 1): one environment


def test_gae_equals_the_direct_sum_on_a_short_episode(ns: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.rand(6, generator=gen).tolist(), torch.randn(7, generator=gen).tolist()
    next_values = values[1:]  # no episode ends: V(s_{t+1}), the last one the rollout's bootstrap value
    flags = [0] * 6
    for lam in (0.0, 0.5, 0.95, 1.0):
        got = ns["gae"](as_column(rewards), as_column(values[:6]), as_column(next_values), as_column(flags).bool(),
                        as_column(flags).bool(), GAMMA, lam)[:, 0]
        want = direct_gae(rewards, values[:6], next_values, flags, flags, GAMMA, lam)
        assert torch.allclose(got, torch.tensor(want), atol=1e-5), lam
    # lambda = 1: advantage + value = the discounted return, bootstrapped at the rollout's end
    got = ns["gae"](as_column(rewards), as_column(values[:6]), as_column(next_values), as_column(flags).bool(),
                    as_column(flags).bool(), GAMMA, 1.0)[0, 0] + values[0]
    want = sum(GAMMA ** k * r for k, r in enumerate(rewards)) + GAMMA ** 6 * values[6]
    assert abs(got.item() - want) < 1e-5


@pytest.mark.parametrize("how", ["truncated", "terminated"])
def test_gae_bootstraps_from_the_final_value_only_when_truncated(ns: dict, how: str) -> None:
    """An episode of 4 steps ends at t = 3, then a new one starts (t = 4, 5). Truncated: the last TD error uses
    V(final obs); terminated: it uses 0. Either way nothing of the next episode leaks into the first's advantages."""
    rewards, values = [1.0, 1.0, 1.0, 1.0, 5.0, 7.0], [0.5, 0.4, 0.3, 0.2, 3.0, 2.0]
    v_final, v_after = 10.0, 4.0  # values[4] = 3.0 is the next episode's first value: it must not leak back
    next_values = [0.4, 0.3, 0.2, v_final, 2.0, v_after]  # at t = 3: the final observation's value, not the reset's
    ended = [0, 0, 0, 1, 0, 0]
    terminated = ended if how == "terminated" else [0] * 6
    adv = ns["gae"](as_column(rewards), as_column(values), as_column(next_values), as_column(terminated).bool(),
                    as_column(ended).bool(), GAMMA, 1.0)[:, 0]
    tail = GAMMA ** 4 * v_final if how == "truncated" else 0.0
    assert abs(adv[0].item() + values[0] - (sum(GAMMA ** k for k in range(4)) + tail)) < 1e-5
    assert abs(adv[3].item() - (1.0 + (GAMMA * v_final if how == "truncated" else 0.0) - 0.2)) < 1e-5
    assert torch.allclose(adv, torch.tensor(direct_gae(rewards, values, next_values, terminated, ended, GAMMA, 1.0)),
                          atol=1e-5)
    changed = list(rewards)
    changed[4] += 100.0  # the next episode's reward: no effect before the boundary
    adv2 = ns["gae"](as_column(changed), as_column(values), as_column(next_values), as_column(terminated).bool(),
                     as_column(ended).bool(), GAMMA, 1.0)[:, 0]
    assert torch.equal(adv[:4], adv2[:4]) and adv2[4] != adv[4]


def test_reinforce_returns_bootstrap_after_truncation_only(ns: dict) -> None:
    rewards = torch.ones(5, 2)  # (L, E): episode 0 lasts 5 steps, episode 1 lasts 3
    alive = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]], dtype=torch.float32)
    lengths = torch.tensor([5, 3])
    for bootstrap in (torch.tensor([0.0, 0.0]), torch.tensor([10.0, 20.0])):  # terminated, truncated (V(final obs))
        G = ns["discounted_returns"](rewards * alive, alive, lengths, bootstrap, GAMMA)
        for e, n in enumerate((5, 3)):
            want = sum(GAMMA ** k for k in range(n)) + GAMMA ** n * bootstrap[e].item()
            assert abs(G[0, e].item() - want) < 1e-5
        assert torch.equal(G[3:, 1], torch.zeros(2)), "zero after the episode's end"


def test_step_vec_hands_over_the_real_final_observation(ns: dict) -> None:
    """Truncated after 5 steps: the stored next observation is the 5th state of the episode (as a single environment
    with the same seed and actions reaches it), while the returned one is the next episode's first."""
    from gymnasium.vector import AutoresetMode

    envs = gym.make_vec("CartPole-v1", num_envs=1, vectorization_mode="sync", max_episode_steps=5,
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    envs.reset(seed=3)
    single = gym.make("CartPole-v1", max_episode_steps=5)
    single.reset(seed=3)
    for t, action in enumerate([0, 1, 0, 1, 0]):
        obs, _, term, trunc, real_next = ns["step_vec"](envs, np.array([action]))
        expected, _, s_term, s_trunc, _ = single.step(action)
        assert np.array_equal(real_next[0], expected)
    assert trunc[0] and not term[0] and s_trunc
    assert not np.array_equal(obs[0], real_next[0]), "the returned observation is the next episode's"


def test_clipped_objective_has_zero_gradient_exactly_where_the_clip_binds(ns: dict) -> None:
    eps = 0.2
    # (ratio, advantage, gradient is zero?): the clip binds only where it would move the policy further in the
    # direction the advantage favours; min() keeps the pessimistic (unclipped) term on the other side.
    cases = [(1.3, 1.0, True), (1.1, 1.0, False), (0.7, 1.0, False), (0.7, -1.0, True), (0.9, -1.0, False),
             (1.3, -1.0, False)]
    for clip, control in ((eps, False), (math.inf, True)):
        ratio = torch.tensor([c[0] for c in cases], requires_grad=True)
        adv = torch.tensor([c[1] for c in cases])
        objective = ns["clipped_surrogate"](ratio, adv, clip)
        objective.backward()
        want_zero = torch.tensor([c[2] and not control for c in cases])
        assert torch.equal(ratio.grad == 0, want_zero), (clip, ratio.grad)
        expected = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
        assert torch.allclose(objective, expected)
    assert torch.allclose(ns["clipped_surrogate"](torch.ones(3), torch.tensor([1.0, -2.0, 4.0]), eps), torch.tensor(1.0))


def test_ppo_loss_normalises_advantages_per_minibatch_and_logs_kl(ns: dict) -> None:
    torch.manual_seed(0)
    model = ns["ActorCritic"](4, 2, 8)
    obs = torch.randn(16, 4)
    with torch.no_grad():
        logits, values = model(obs)
    actions = torch.randint(0, 2, (16,))
    mb = {"obs": obs, "actions": actions, "logp": logits.log_softmax(-1).gather(1, actions[:, None]).squeeze(1),
          "values": values, "returns": values + 1.0, "advantages": torch.randn(16)}
    cfg = SimpleNamespace(clip=0.2, clip_value=False, vf_coef=0.5, ent_coef=0.01)
    loss, stats = ns["ppo_loss"](model, mb, cfg, 0.2)
    assert stats["approx_kl"].abs() < 1e-6 and stats["clip_fraction"] == 0  # same policy: ratio 1
    assert abs(stats["value_loss"].item() - 0.5) < 1e-5
    scaled = dict(mb, advantages=mb["advantages"] * 50 + 3)  # normalised per mini-batch: the same loss
    assert torch.allclose(ns["ppo_loss"](model, scaled, cfg, 0.2)[0], loss, atol=1e-5)
    # at ratio 1 the loss's value is blind to the advantages' scale (their mean is 0 after any centring); the
    # gradient is not: it must be that of the advantages divided by their standard deviation
    params = list(model.actor.parameters())
    same = torch.autograd.grad(ns["ppo_loss"](model, scaled, cfg, 0.2)[0], params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(torch.autograd.grad(loss, params), same))
    no_entropy = SimpleNamespace(clip=0.2, clip_value=False, vf_coef=0.5, ent_coef=0.0)
    adv = mb["advantages"]
    logp = model(obs)[0].log_softmax(-1).gather(1, actions[:, None]).squeeze(1)
    want = torch.autograd.grad(-(logp * (adv - adv.mean()) / adv.std()).mean(), params)
    got = torch.autograd.grad(ns["ppo_loss"](model, mb, no_entropy, 0.2)[0], params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    # away from ratio 1: half the ratios (1.35 and 0.61) leave the clip range, and the KL estimate is the notebook's
    delta = torch.tensor([0.0, 0.1, -0.3, 0.5]).repeat(4)
    r = torch.exp(-delta)
    _, off = ns["ppo_loss"](model, dict(mb, logp=mb["logp"] + delta), cfg, 0.2)
    assert off["clip_fraction"].item() == pytest.approx(0.5)
    assert off["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item(), rel=1e-4)


def test_replay_buffer_samples_uniformly_from_filled_slots_and_overwrites_the_oldest(ns: dict) -> None:
    buf = ns["ReplayBuffer"](8, 1, torch.device("cpu"))

    def add(values):
        v = torch.tensor(values, dtype=torch.float32)
        buf.add(v[:, None], v.long(), v, v[:, None] + 0.5, torch.zeros(len(values), dtype=torch.bool))

    add([0, 1, 2])
    gen = torch.Generator().manual_seed(0)
    obs, actions, rewards, next_obs, terminated = buf.sample(30_000, gen)
    counts = torch.bincount(actions, minlength=8)
    assert counts[3:].sum() == 0, "never an empty slot"
    assert ((counts[:3] / 30_000 - 1 / 3).abs() < 0.02).all(), counts
    assert torch.equal(next_obs[:, 0], obs[:, 0] + 0.5) and torch.equal(rewards, obs[:, 0]), "rows stay together"
    add(list(range(3, 11)))  # 11 transitions into 8 slots: 0, 1, 2 are overwritten
    assert buf.size == 8 and buf.pos == 3
    assert sorted(buf.actions.tolist()) == list(range(3, 11))
    again = buf.sample(5, torch.Generator().manual_seed(1))[1]
    assert torch.equal(again, buf.sample(5, torch.Generator().manual_seed(1))[1]), "the generator decides"


def test_target_network_changes_only_when_copied(ns: dict) -> None:
    torch.manual_seed(0)
    q = ns["q_network"](4, 2, 8)
    target = copy.deepcopy(q)
    before = [p.detach().clone() for p in target.parameters()]
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters())), "an online step moved the target"
    assert not all(torch.equal(a, b) for a, b in zip(q.parameters(), target.parameters()))
    ns["update_target"](target, q)
    assert all(torch.equal(a, b) for a, b in zip(q.parameters(), target.parameters()))
    with torch.no_grad():
        next(q.parameters()).add_(1.0)
    assert not torch.equal(next(q.parameters()), next(target.parameters())), "a copy, not shared storage"


def fixed_q(values: list[float]) -> nn.Module:
    """A Q-network whose output is `values` for any observation."""
    net = nn.Linear(1, len(values))
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor(values))
    return net


def test_dqn_target_bootstraps_after_truncation_not_after_termination(ns: dict) -> None:
    target_net, online_net = fixed_q([2.0, 5.0]), fixed_q([3.0, 1.0])  # they disagree on the best next action
    rewards, next_obs = torch.tensor([1.0, 1.0]), torch.zeros(2, 1)
    terminated = torch.tensor([1.0, 0.0])  # transition 0 terminated; transition 1 truncated (or not ended)
    y = ns["dqn_targets"](target_net, online_net, rewards, next_obs, terminated, GAMMA, double=False)
    assert torch.allclose(y, torch.tensor([1.0, 1.0 + GAMMA * 5.0]))  # Eq. 6: max of the target network
    y2 = ns["dqn_targets"](target_net, online_net, rewards, next_obs, terminated, GAMMA, double=True)
    assert torch.allclose(y2, torch.tensor([1.0, 1.0 + GAMMA * 2.0]))  # Eq. 6′ (Double DQN): online picks 0, target scores it


def test_epsilon_decays_linearly_then_stays(ns: dict) -> None:
    cfg = SimpleNamespace(eps_start=1.0, eps_end=0.05, eps_fraction=0.2)
    assert ns["epsilon_at"](0, 1000, cfg) == 1.0
    assert abs(ns["epsilon_at"](100, 1000, cfg) - 0.525) < 1e-9
    assert ns["epsilon_at"](200, 1000, cfg) == ns["epsilon_at"](900, 1000, cfg) == pytest.approx(0.05)


class CountingAdam(torch.optim.Adam):
    """Adam that counts its steps (class attribute: the training function builds its own optimiser)."""

    steps = 0

    def step(self, closure=None):  # noqa: ANN001, ANN201
        CountingAdam.steps += 1
        return super().step(closure)


class SilentLog:
    """A stand-in for the notebook's RunLog: keeps the loss curve, validates nothing."""

    def __init__(self, *args) -> None:  # noqa: ANN002
        self.extra: dict[str, list[float]] = {}

    def on_steps(self, *args) -> None:  # noqa: ANN002
        pass

    def validate_if_due(self, *args) -> None:  # noqa: ANN002
        pass


def cost_cell_value(name: str, cfg: SimpleNamespace) -> float:
    """The value the cost cell (the one that computes `flops_per_env`) assigns to `name`, evaluated with `cfg`."""
    (source,) = cell_sources(NOTEBOOK, select=lambda s: "flops_per_env = " in s)
    tree = ast.parse(source)
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name]
    flops = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "flops_per_env")
    assert name in ast.unparse(flops.value), f"the FLOPs formula does not use {name}"
    return eval(compile(ast.Expression(node.value), "cost cell", "eval"), {"cfg": cfg})  # noqa: S307


def test_the_cost_formula_counts_the_gradient_steps_train_dqn_takes(ns: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost cell's count of DQN gradient steps per run equals the optimiser steps `train_dqn` really takes
    (bursts of `gradient_steps` every `train_every` environment steps from `learning_starts` on). The control, the
    count the formula used before (one update per joint step of the environments, `dqn_steps / dqn_envs`), differs."""
    cfg = SimpleNamespace(dqn_steps=96, dqn_envs=2, learning_starts=40, train_every=16, gradient_steps=3, dqn_batch=4,
                          dqn_hidden=8, buffer_size=200, dqn_lr=1e-3, gamma=0.99, huber_delta=1.0, eps_start=1.0,
                          eps_end=0.05, eps_fraction=0.5, train_env_seed=0, max_episode_steps=50, n_val=1)
    namespace = {**ns, "copy": copy, "RunLog": SilentLog, "RunClock": RunClock, "finish_run": lambda *args: None,
                 "stream_seed": stream_seed}
    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    train_dqn = notebook_functions(NOTEBOOK, "train_dqn", "seeded", namespace=namespace)["train_dqn"]
    CountingAdam.steps = 0
    train_dqn("CartPole-v1", 0, cfg, RunClock(torch.device("cpu")), 500.0, torch.device("cpu"))
    assert CountingAdam.steps == 3 * 4  # bursts at 48, 64, 80 and 96
    assert cost_cell_value("dqn_updates", cfg) == CountingAdam.steps
    assert cfg.dqn_steps / cfg.dqn_envs != CountingAdam.steps  # the old formula's count: 48
