"""Stable-Baselines3 agents for siftmoe_gym: construction, hyperparameters, callbacks, training.

- :mod:`agents.algos`: algorithm registry (``ppo``, ``a2c``, ``dqn``, ``ppo_mask`` =
  MaskablePPO, ``ppo_lstm`` = RecurrentPPO) and action-space compatibility;
- :mod:`agents.hyperparams`: rl-zoo3-style YAML per algorithm (``agents/hyperparams/<algo>.yml``);
- :mod:`agents.masking`: node masks for MaskablePPO (``NodeActionMasker``);
- :mod:`agents.policy`: ``AgentPolicy``, an SB3 model as an ``act(obs, info)`` policy;
- :mod:`agents.set_policy`: ``NodeSetPolicy``, an actor that scores every node set from its error bound and cost;
- :mod:`agents.evaluation`: seeded evaluation of policies and agents, the baseline cache, regret;
- :mod:`agents.runio`: run-folder I/O (atomic writes, run folders, checkpoint index);
- :mod:`agents.models`: loading saved agents with their metadata;
- :mod:`agents.callbacks`: evaluation against siftmoe/topk with TensorBoard logging,
  best model, atomic checkpoints;
- :mod:`agents.training`: ``train`` (its steps as functions), ``evaluate_saved``;
- :mod:`agents.report`: the benchmark report (``python -m agents.compare``);
- :mod:`agents.cli`: the ``train.py`` command line.
"""

from .algos import ALGOS, AgentConfigError, canonical_algo, check_compatible, get_algo
from .hyperparams import load_hyperparams, parse_overrides, resolve_hyperparams, split_hyperparams
from .masking import NodeActionMasker, node_action_mask
from .policy import AgentPolicy
from .set_policy import NodeSetPolicy, resolve_policy


def make_agent(algo: str, env, seed: int | None = None, hyperparams=None, env_id: str = "default", device: str = "cpu",
               **kwargs):
    """Build an SB3 agent for ``env`` (a VecEnv or Env) with the YAML hyperparameters of ``env_id``."""
    spec = get_algo(algo)
    check_compatible(algo, env.action_space, env_id)
    raw = resolve_hyperparams(algo, env_id, hyperparams)
    _, algo_kwargs = split_hyperparams(algo, raw)
    algo_kwargs.update(kwargs)
    algo_kwargs = resolve_policy(spec.name, algo_kwargs, env)
    return spec.load_class()(env=env, seed=seed, device=device, **algo_kwargs)


def __getattr__(name):  # lazy: training pulls in the environments and baselines
    if name in ("train", "evaluate_saved", "load_agent", "TrainResult"):
        from . import training

        return getattr(training, name)
    raise AttributeError(name)


__all__ = [
    "ALGOS", "AgentConfigError", "AgentPolicy", "NodeActionMasker", "NodeSetPolicy", "canonical_algo", "check_compatible",
    "evaluate_saved", "get_algo", "load_agent", "load_hyperparams", "make_agent", "node_action_mask",
    "parse_overrides", "resolve_hyperparams", "split_hyperparams", "train",
]
