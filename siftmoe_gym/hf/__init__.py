"""``transformers`` integration: real MoE models (loading, traces, decisions inside the model).

Imports of torch and transformers happen lazily, on first use of a name
below, so ``import siftmoe_gym`` stays light.

- :func:`load_moe_model`, :func:`load_tokenizer`, :class:`ByteTokenizer` (``loading``)
- :func:`moe_layers`, :class:`MoELayer`, :class:`Adapter`, ``ADAPTERS``, ``SUPPORTED`` (``adapters``)
- :func:`check_config`, :class:`Family`, ``FAMILIES``, ``REFUSED``, :class:`UnsupportedModelError` (``families``,
  no torch)
- :func:`follow_decisions`, :class:`LayerRouting` (``decisions``)
- :func:`evaluate_policy` (``evaluate``)
- the tiny locally trained model: ``python -m siftmoe_gym.hf.tiny_model`` (``tiny_model``)
- the report: ``python -m siftmoe_gym.hf.report`` (``report``)
- trace extraction: :mod:`siftmoe_gym.traces`
"""

from __future__ import annotations

import importlib

_NAMES = {
    "load_moe_model": "loading", "load_tokenizer": "loading", "ByteTokenizer": "loading", "encode_text": "loading",
    "moe_layers": "adapters", "MoELayer": "adapters", "SUPPORTED": "adapters", "SUPPORTED_CLASSES": "adapters",
    "Adapter": "adapters", "ADAPTERS": "adapters",
    "UnsupportedModelError": "families", "check_config": "families", "Family": "families", "FAMILIES": "families",
    "REFUSED": "families", "MissingTokenizerError": "loading",
    "follow_decisions": "decisions", "LayerRouting": "decisions", "DecisionLog": "decisions",
    "keep_all": "decisions", "skip_all": "decisions",
    "evaluate_policy": "evaluate",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'siftmoe_gym.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
