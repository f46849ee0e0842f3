"""A node-set policy for PPO: every node set scored from its own error bound and cost (``NodeSetPolicy``).

The environments' node-set actions (``action_mode="nodes"``, ``MultiBinary(M)``, or ``"discrete"``,
``Discrete(2**M)``) choose a set ``U`` of edge nodes.  A plain MLP policy must learn, from the
observation, which set is cheapest among those within the error budget: a threshold of a
min-sum over sets, which on Decode-v0 even supervised imitation of the optimum's sets does not learn
to better than 94-96% exact sets from 100,000 labelled steps (docs/training.md).  This policy gives
the network the structure of that map instead of making it learn it:

1. **Candidate features.** From the observation's ``slot_error`` block (per top-k slot ``j``, the error
   terms of node 0, ..., node ``M`` and of skipping, in budget units), ``node_cost`` and
   ``node_feasible``, every set ``U`` gets (``siftmoe_gym/envs/observations.py``; model.md section 4)

   - ``err(U) = sum_j min(skip_j, node0_j, min_{m in U feasible} node_m_j)``, the least error bound
     over the budget that serving ``U`` can reach (the environments serve with the nodes of ``U`` that
     meet the latency budget; terms clipped at ``SOLO_CLIP`` aside);
   - ``max(0, err(U) - 1)``, the excess over the budget, and ``[err(U) <= 1]``, whether it keeps it;
   - ``cost(U) = sum_{m in U} node_cost_m``, the activation cost in the reward's units;
   - the number of nodes of ``U`` that miss the latency budget, and ``|U| / M``.

2. **Context.** An MLP (``context_arch``) embeds the whole observation: the setting's state (Prefill's
   loads, FastFading's queues and remaining budget) decides how an error or a cost weighs.

3. **Scores.** One MLP (``score_arch``, ``score_activation_fn``), shared by all sets, maps ``[candidate features, context]`` to
   the set's logit; the action distribution is the categorical over the ``2**M`` sets
   (:class:`NodeSetDistribution`).  In ``nodes`` mode the sampled set is returned as its ``M`` bits and a
   bit vector's log-probability is that of its set, so PPO's ratio is exact.

The value function is a separate MLP on the observation (``net_arch``'s ``vf``).  Nothing of the
optimum is built in: which sets are worth their cost, how much budget to keep for later tokens and
how to trade the latency penalty are learned from the reward.  It needs ``M <= MAX_SET_NODES``
edge nodes (``2**M`` candidates per step) and the ``slot_error`` block (``solo_error_features=True``,
the default).

    python train.py --env siftmoe_gym/Decode-v0 --algo ppo --hyperparams policy=NodeSetPolicy

``ppo.yml`` uses it for every setting; ``policy=MlpPolicy`` gives the plain MLP (``ppo.yml``'s
``net_arch=[128, 128]`` is then the MLP's layers; here it is the value network's).  The policy reads the
observation's blocks by position, so observations must reach it unchanged (no observation
normalization wrapper).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from siftmoe_gym.cli import one_line

MAX_SET_NODES = 8
"""Most edge nodes the policy scores every set of: 256 candidates per observation (the candidate tensors, of
``(batch, k, 2**M, M)`` entries, and the scorer's rows grow as ``2**M``)."""

N_CANDIDATE_FEATURES = 6
FEATURES_VERSION = 2
"""The layout of the candidate features; a model saved with another layout is refused when loaded."""


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)


class SetFeatures(nn.Module):
    """``(B, obs_dim)`` observations -> ``(B, 2**M, N_CANDIDATE_FEATURES)`` candidate features (no weights).

    ``slices`` maps ``slot_error``, ``node_cost`` and ``node_feasible`` to ``(start, stop)`` in the flat
    observation; ``top_k`` and ``n_nodes`` give the ``slot_error`` block's shape ``(k, M + 2)``."""

    def __init__(self, slices: dict[str, tuple[int, int]], top_k: int, n_nodes: int):
        super().__init__()
        self.k, self.m = int(top_k), int(n_nodes)
        self.sl = {name: slice(*slices[name]) for name in ("slot_error", "node_cost", "node_feasible")}
        sets = np.arange(2 ** self.m)
        member = ((sets[:, None] >> np.arange(self.m)[None, :]) & 1).astype(np.float32)  # (S, M)
        self.register_buffer("member", th.as_tensor(member), persistent=False)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        b = obs.shape[0]
        terms = obs[:, self.sl["slot_error"]].reshape(b, self.k, self.m + 2)
        base = th.minimum(terms[:, :, 0], terms[:, :, -1])  # node 0 or skip: (B, k)
        big = th.finfo(obs.dtype).max
        feasible = obs[:, self.sl["node_feasible"]]  # (B, M): a node that misses the latency budget serves nothing
        nodes = th.where(feasible[:, None, :] > 0.5, terms[:, :, 1:-1], big)  # (B, k, M)
        masked = th.where(self.member[None, None] > 0, nodes[:, :, None, :], big)  # (B, k, S, M)
        err = th.minimum(base[:, :, None], masked.amin(dim=-1)).sum(dim=1)  # (B, S)
        cost = obs[:, self.sl["node_cost"]] @ self.member.T  # (B, S)
        late = (1.0 - feasible) @ self.member.T
        size = self.member.sum(dim=1).expand(b, -1) / max(self.m, 1)
        within = (err <= 1.0).to(obs.dtype)
        return th.stack([err, th.relu(err - 1.0), within, cost, late, size], dim=-1)


class SetScorer(nn.Module):
    """The policy head: ``(B, obs_dim + context_dim)`` latent -> ``(B, 2**M)`` logits, one per node set."""

    def __init__(self, features: SetFeatures, obs_dim: int, context_dim: int, score_arch: list[int],
                 act: type[nn.Module]):
        super().__init__()
        if not score_arch:
            raise ValueError("NodeSetPolicy needs score_arch with at least one layer")
        self.features, self.obs_dim = features, int(obs_dim)
        # the first layer on [candidate, context] as two linear maps: the context's once per observation
        self.first_cand = nn.Linear(N_CANDIDATE_FEATURES, score_arch[0])
        self.first_ctx = nn.Linear(context_dim, score_arch[0], bias=False) if context_dim else None
        self.act = act()
        self.net = _mlp(list(score_arch), act)
        self.out = nn.Linear(score_arch[-1], 1)

    def forward(self, latent: th.Tensor) -> th.Tensor:
        obs, ctx = latent[:, : self.obs_dim], latent[:, self.obs_dim:]
        h = self.first_cand(self.features(obs))  # (B, S, H)
        if self.first_ctx is not None:
            h = h + self.first_ctx(ctx)[:, None, :]
        return self.out(self.net(self.act(h))).squeeze(-1)


class NodeSetDistribution(CategoricalDistribution):
    """Categorical over the ``2**M`` node sets; with ``bits=True`` actions are the sets' ``M`` bits
    (``MultiBinary(M)``, bit ``m`` = node ``m + 1``), otherwise the set's index (``Discrete(2**M)``)."""

    def __init__(self, n_nodes: int, bits: bool, scorer: SetScorer):
        super().__init__(2 ** n_nodes)
        self.bits = bool(bits)
        self.scorer = scorer
        self.pow2 = th.as_tensor(2.0 ** np.arange(n_nodes), dtype=th.float32)

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        return self.scorer

    def _index(self, actions: th.Tensor) -> th.Tensor:
        if self.bits:
            return (actions.float() @ self.pow2.to(actions.device)).round().long()
        return actions.long().reshape(-1)

    def _bits(self, index: th.Tensor) -> th.Tensor:
        if not self.bits:
            return index
        shifts = th.arange(self.pow2.numel(), device=index.device)
        return ((index[:, None] >> shifts[None, :]) & 1).float()

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        return self.distribution.log_prob(self._index(actions))

    def sample(self) -> th.Tensor:
        return self._bits(self.distribution.sample())

    def mode(self) -> th.Tensor:
        return self._bits(th.argmax(self.distribution.probs, dim=1))


class _Extractor(nn.Module):
    """``latent_pi = [obs, context MLP(obs)]`` for the scorer, ``latent_vf = value MLP(obs)``."""

    def __init__(self, obs_dim: int, context_arch: list[int], vf_arch: list[int], act: type[nn.Module]):
        super().__init__()
        self.context = _mlp([obs_dim, *context_arch], act)
        self.value = _mlp([obs_dim, *vf_arch], act)
        self.context_dim = context_arch[-1] if context_arch else 0
        self.latent_dim_pi = obs_dim + self.context_dim
        self.latent_dim_vf = vf_arch[-1] if vf_arch else obs_dim

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        return th.cat([features, self.context(features)], dim=-1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return self.value(features)


class NodeSetPolicy(ActorCriticPolicy):
    """Actor-critic policy whose actor scores every node set (module docstring).

    Keyword arguments beyond :class:`~stable_baselines3.common.policies.ActorCriticPolicy`'s:
    ``obs_slices`` (name -> ``(start, stop)`` of the flat observation: ``slot_error``, ``node_cost``,
    ``node_feasible``), ``top_k``, ``n_nodes`` (filled in by ``train.py`` from the environment;
    :func:`set_policy_kwargs`), ``context_arch`` (default ``[64]``), ``score_arch`` (``[32, 32]``) and
    ``score_activation_fn`` (``nn.ReLU``: the scorer runs on ``2**M`` rows per observation, where ReLU
    costs less than tanh; ``activation_fn`` is the context and value networks');
    ``net_arch`` gives the value network (``dict(vf=[...])`` or a list).  Raises ``ValueError`` for
    an action space other than ``MultiBinary(M)`` / ``Discrete(2**M)`` with ``M <= MAX_SET_NODES``.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule, *args,
                 obs_slices: dict[str, Any] | None = None, top_k: int = 0, n_nodes: int = 0,
                 context_arch: list[int] | None = None, score_arch: list[int] | None = None,
                 score_activation_fn: type[nn.Module] = nn.ReLU, features_version: int = FEATURES_VERSION, **kwargs):
        if features_version != FEATURES_VERSION:
            raise ValueError(f"features_version={features_version!r}: this code computes candidate features version "
                             f"{FEATURES_VERSION} (a model saved with another version must be retrained; leave the "
                             "key out otherwise)")
        if not (isinstance(score_activation_fn, type) and issubclass(score_activation_fn, nn.Module)):
            raise ValueError(f"score_activation_fn must be a torch.nn module class such as nn.ReLU, got "
                             f"{score_activation_fn!r}")
        for name, arch in (("context_arch", context_arch), ("score_arch", score_arch)):
            _check_layers(name, arch, allow_empty=name == "context_arch")
        net_arch = kwargs.get("net_arch")
        if isinstance(net_arch, dict) and set(net_arch) - {"vf"}:
            raise ValueError(f"NodeSetPolicy's net_arch gives the value network only (a list, or dict(vf=[...])); "
                             f"the actor is context_arch and score_arch; got net_arch={net_arch!r}")
        _check_layers("net_arch", net_arch.get("vf") if isinstance(net_arch, dict) else net_arch, allow_empty=True)
        if not obs_slices or not {"slot_error", "node_cost", "node_feasible"} <= set(obs_slices):
            raise ValueError("NodeSetPolicy needs obs_slices with slot_error, node_cost and node_feasible "
                             "(train.py fills them in; the env needs solo_error_features=True)")
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(f"NodeSetPolicy needs the flat observation (obs_mode='flat'), got {observation_space}")
        m = int(n_nodes)
        if isinstance(action_space, spaces.MultiBinary):
            ok = int(np.prod(action_space.shape)) == m
        else:
            ok = isinstance(action_space, spaces.Discrete) and int(action_space.n) == 2 ** m
        if not ok or not 1 <= m <= MAX_SET_NODES:
            raise ValueError(f"NodeSetPolicy needs a node-set action space over 1..{MAX_SET_NODES} edge nodes "
                             f"(MultiBinary(M) or Discrete(2**M)), got {action_space} with n_nodes={n_nodes}")
        self.obs_slices = {k: tuple(int(x) for x in v) for k, v in obs_slices.items()}
        self.top_k, self.n_nodes = int(top_k), m
        self.context_arch = list(context_arch if context_arch is not None else [64])
        self.score_arch = list(score_arch if score_arch is not None else [32, 32])
        self.score_activation_fn = score_activation_fn
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _vf_arch(self) -> list[int]:
        """The value network's layers: ``net_arch`` (a list, or ``dict(vf=[...])``; ``[]`` is linear)."""
        arch = self.net_arch
        if isinstance(arch, dict):
            return list(arch.get("vf", [64, 64]))
        return list(arch) if arch is not None else [64, 64]

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _Extractor(self.features_dim, self.context_arch, self._vf_arch(), self.activation_fn)

    def _build(self, lr_schedule) -> None:
        features = SetFeatures(self.obs_slices, self.top_k, self.n_nodes)
        self._build_mlp_extractor()
        scorer = SetScorer(features, self.features_dim, self.mlp_extractor.context_dim, self.score_arch,
                           self.score_activation_fn)
        self.action_dist = NodeSetDistribution(self.n_nodes, isinstance(self.action_space, spaces.MultiBinary),
                                               scorer)
        super()._build(lr_schedule)
        if self.ortho_init:  # the base class gives the whole head gain 0.01; only its output layer keeps it
            for layer in [scorer.first_cand, scorer.first_ctx, *scorer.net]:
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight, gain=np.sqrt(2))
                    if layer.bias is not None:
                        layer.bias.data.fill_(0.0)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(obs_slices=self.obs_slices, top_k=self.top_k, n_nodes=self.n_nodes,
                    context_arch=self.context_arch, score_arch=self.score_arch,
                    score_activation_fn=self.score_activation_fn, features_version=FEATURES_VERSION)
        return data


def _check_layers(name: str, arch, allow_empty: bool) -> None:
    """``ValueError`` naming ``name`` unless ``arch`` is None or a list of positive integers (non-empty unless
    ``allow_empty``)."""
    if arch is None:
        return
    ok = isinstance(arch, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in arch)
    if not ok or (not allow_empty and not arch):
        raise ValueError(f"{name} must be a list of positive layer sizes{'' if allow_empty else ' (at least one)'}, "
                         f"got {arch!r}")


POLICY_NAME = "NodeSetPolicy"
"""The ``policy`` hyperparameter that selects :class:`NodeSetPolicy`."""

ALGOS = ("ppo", "ppo_lag", "a2c")
"""The algorithms whose policy is an SB3 ``ActorCriticPolicy`` (MaskablePPO and RecurrentPPO have their own)."""
HINT = " (--hyperparams policy=MlpPolicy trains the plain MLP policy instead)"


def _single_env(env):
    """The siftmoe_gym environment behind ``env``: a Gymnasium env or wrapper, or an SB3 ``VecEnv``."""
    if hasattr(env, "get_attr"):
        return env.get_attr("unwrapped", [0])[0]
    return env.unwrapped


def set_policy_kwargs(env, policy_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``policy_kwargs`` with ``obs_slices``, ``top_k`` and ``n_nodes`` of ``env`` (a siftmoe_gym env, a
    wrapper of one or an SB3 VecEnv over one) filled in; a value the user gave that differs is a
    ``ValueError``."""
    u = _single_env(env)
    found = {"obs_slices": {k: (v.start, v.stop) for k, v in u.obs_slices.items()},
             "top_k": int(u.top_k), "n_nodes": int(u.n_nodes)}
    out = dict(policy_kwargs or {})
    for key, value in found.items():
        if key in out and out[key] != value:
            raise ValueError(f"{key}={out[key]!r} does not match the environment's {value!r}")
        out[key] = value
    return out


def resolve_policy(algo: str, algo_kwargs: dict[str, Any], env, wrapper=None) -> dict[str, Any]:
    """``algo_kwargs`` with ``policy="NodeSetPolicy"`` turned into the class and its ``policy_kwargs``
    filled in from ``env`` (:func:`set_policy_kwargs`); other policies are returned unchanged.
    :class:`~agents.algos.AgentConfigError` for an algorithm outside :data:`ALGOS`, an environment
    the policy cannot act in, or a ``wrapper`` (the run's ``env_wrapper`` class) that rewrites
    observations (checked here, before any training)."""
    import gymnasium as gym

    from .algos import AgentConfigError

    if algo_kwargs.get("policy") != POLICY_NAME:
        return algo_kwargs
    if isinstance(wrapper, type) and issubclass(wrapper, gym.ObservationWrapper):
        raise AgentConfigError(f"policy={POLICY_NAME} reads the observation's blocks as the env writes them; "
                               f"env_wrapper={wrapper.__name__} changes them (leave one of the two out)")
    if algo not in ALGOS:
        raise AgentConfigError(f"policy={POLICY_NAME} works with {', '.join(ALGOS)}, not {algo} (leave the policy "
                               f"out for {algo}'s own)")
    u = _single_env(env)
    if getattr(u, "obs_mode", "flat") != "flat":
        raise AgentConfigError(f"policy={POLICY_NAME} needs obs_mode='flat', this env has "
                               f"obs_mode={getattr(u, 'obs_mode', None)!r} (--hyperparams policy=MultiInputPolicy "
                               "trains an MLP on the Dict observation)")
    if "slot_error" not in getattr(u, "obs_slices", {}):
        raise AgentConfigError(f"policy={POLICY_NAME} needs the slot_error observation block, which "
                               "solo_error_features=False removes (--env-kwargs \"config={solo_error_features: "
                               f"true}}\"){HINT}")
    if getattr(u, "action_mode", None) not in ("nodes", "discrete") or not 1 <= int(u.n_nodes) <= MAX_SET_NODES:
        raise AgentConfigError(f"policy={POLICY_NAME} needs action_mode 'nodes' or 'discrete' and 1..{MAX_SET_NODES} "
                               f"edge nodes; this env has action_mode={getattr(u, 'action_mode', None)!r}, "
                               f"num_nodes={getattr(u, 'n_nodes', None)}{HINT}")
    out = dict(algo_kwargs)
    given = out.get("policy_kwargs")
    if given is not None and not isinstance(given, dict):
        raise AgentConfigError(f"policy_kwargs must be a dict(...), got {given!r}")
    try:
        out["policy_kwargs"] = set_policy_kwargs(u, given)
    except ValueError as exc:
        raise AgentConfigError(f"policy_kwargs: {exc} (leave it out: train.py fills it in)") from None
    try:  # every policy_kwargs value checked now, not when the model is built
        NodeSetPolicy(u.observation_space, u.action_space, lambda _: 1e-4, **out["policy_kwargs"])
    except (TypeError, ValueError) as exc:
        raise AgentConfigError(f"policy_kwargs for {POLICY_NAME}: {one_line(exc)}") from None
    out["policy"] = NodeSetPolicy
    return out
