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
               wrapper=None, **kwargs):
    """Build an SB3 agent for ``env`` (a VecEnv or Env) with the YAML hyperparameters of ``env_id``
    (``wrapper``: the ``env_wrapper`` class ``env`` was built with, which the policy may refuse)."""
    spec = get_algo(algo)
    check_compatible(algo, env.action_space, env_id)
    raw = resolve_hyperparams(algo, env_id, hyperparams)
    _, algo_kwargs = split_hyperparams(algo, raw)
    algo_kwargs.update(kwargs)
    algo_kwargs = resolve_policy(spec.name, algo_kwargs, env, wrapper)
    return spec.load_class()(env=env, seed=seed, device=device, **algo_kwargs)


def check_builds(algo: str, env_id: str, hyperparams=None, env_kwargs=None) -> None:
    """Build the agent once, as a run would (its vector env with the YAML's ``n_envs``, then the model), and
    close it: :class:`AgentConfigError` naming the cause when the environment, SB3 or the policy refuses the
    settings.  For checks of a whole sweep before its first run trains."""
    from siftmoe_gym.cli import one_line

    from .envs import make_vec_env
    from .hyperparams import import_by_name

    spec = get_algo(algo)
    trainer, _ = split_hyperparams(spec.name, resolve_hyperparams(spec.name, env_id, hyperparams))
    wrapper = import_by_name(trainer["env_wrapper"]) if trainer.get("env_wrapper") else None
    try:
        venv = make_vec_env(env_id, spec.name, int(trainer.get("n_envs") or 8), 0, env_kwargs, wrapper=wrapper)
    except AgentConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise AgentConfigError(f"{env_id} refuses the env kwargs {env_kwargs}: {one_line(exc)}") from None
    try:
        make_agent(spec.name, venv, seed=0, hyperparams=hyperparams, env_id=env_id, wrapper=wrapper)
    except AgentConfigError:
        raise
    except (AssertionError, TypeError, ValueError) as exc:  # SB3's own checks of its arguments
        raise AgentConfigError(f"cannot build {spec.class_name} with these hyperparameters: "
                               f"{type(exc).__name__}: {one_line(exc)}") from None
    finally:
        venv.close()


def __getattr__(name):  # lazy: training pulls in the environments and baselines
    if name in ("train", "evaluate_saved", "load_agent", "TrainResult"):
        from . import training

        return getattr(training, name)
    raise AttributeError(name)


__all__ = [
    "ALGOS", "AgentConfigError", "AgentPolicy", "check_builds", "NodeActionMasker", "NodeSetPolicy", "canonical_algo", "check_compatible",
    "evaluate_saved", "get_algo", "load_agent", "load_hyperparams", "make_agent", "node_action_mask",
    "parse_overrides", "resolve_hyperparams", "split_hyperparams", "train",
]
