"""Find the MoE layers of a ``transformers`` causal LM and expose them uniformly.

``transformers`` 5.x stores routed experts as fused 3-D tensors
(``experts.gate_up_proj`` / ``experts.down_proj``, plus biases for GPT-OSS)
in an ``Experts`` module called as ``experts(hidden_states (T, d),
top_k_index (T, k), top_k_weights (T, k))``, next to a router module
(``gate`` or ``router``) that returns ``(router_logits, top_k_weights,
top_k_index)``.  Every supported architecture follows that contract, so one
adapter serves them all:

- router probabilities: the architecture's score function (softmax, or
  sigmoid for DeepSeek-V3-style routers) of the router logits;
- the model's own top-k and gates: the router's output, slots sorted by gate
  (descending);
- expert ``i`` as a callable on a (T, d) tensor: the experts module itself
  called with every token routed to ``i`` with weight exactly 1, so it runs
  the model's own kernel (fused tensors, biases, clamped SwiGLU...);
- the routed part of the layer output for any routing: the experts module
  with that routing.  Shared experts (Qwen2-MoE, DeepSeek) are not routed and
  never change, so a decision's deviation is the routed part's deviation.

Gate normalization: ``renormalize`` is ``norm_topk_prob`` (or the class
default).  Architectures whose gates are not ``p_i`` or ``p_i / sum_S p``
(PhiMoE's sparsemixer, DeepSeek's ``routed_scaling_factor``) are handled by
trace extraction with explicit gates (see :mod:`siftmoe_gym.traces`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# model_type -> (score function, default renormalization or None = read from config)
SUPPORTED: dict[str, tuple[str, bool | None]] = {
    "mixtral": ("softmax", True),
    "qwen2_moe": ("softmax", None),
    "qwen3_moe": ("softmax", None),
    "olmoe": ("softmax", None),
    "deepseek_v2": ("softmax", False),
    "deepseek_v3": ("sigmoid", None),
    "gpt_oss": ("softmax", True),
    "phimoe": ("softmax", False),
}
"""Architectures (``config.model_type``) whose MoE blocks this module understands."""

SUPPORTED_CLASSES = (
    "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
    "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "GptOssForCausalLM", "PhimoeForCausalLM",
)


class UnsupportedModelError(ValueError):
    """The model is not an MoE causal LM of a supported architecture."""


def _unsupported(model: nn.Module, why: str) -> UnsupportedModelError:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    return UnsupportedModelError(
        f"{type(model).__name__} (model_type={mt!r}) is not supported: {why}. "
        f"Supported classes: {', '.join(SUPPORTED_CLASSES)} "
        f"(model_type one of {sorted(SUPPORTED)}), with transformers' fused Experts modules."
    )


def _decoder_layers(model: nn.Module):
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise _unsupported(model, "no decoder layer list at model.model.layers")
    return layers


def _param_names(fn: Callable) -> list[str]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return [p.name for p in params]


@dataclass
class MoELayer:
    """One MoE layer: its block, router and fused experts (see module docstring)."""

    index: int  # MoE layer index 0..L-1
    layer_idx: int  # decoder layer index
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    renormalize: bool
    score: str  # "softmax" | "sigmoid"

    # -------------------------------------------------------------- routing
    @torch.no_grad()
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.router(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.no_grad()
    def router_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Router probabilities (T, N) (float32) for hidden states (T, d)."""
        logits = self.router_logits(x).float()
        return torch.sigmoid(logits) if self.score == "sigmoid" else torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own ``(top_k_index, gates)`` (T, k) for ``x``, slots by descending gate."""
        out = self.router(x)
        if not (isinstance(out, (tuple, list)) and len(out) >= 3):
            raise RuntimeError(f"router {type(self.router).__name__} did not return (logits, weights, indices)")
        return sort_slots(out[2], out[1])

    # -------------------------------------------------------------- experts
    def run_experts(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The experts module on ``x`` (T, d) with routing ``index``/``weights`` (T, k)."""
        return self.experts(x, index, weights)

    def expert(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Expert ``i`` as a callable on (T, d) tensors (the model's own kernel, gate 1)."""
        if not 0 <= i < self.num_experts:
            raise IndexError(f"expert {i} out of range 0..{self.num_experts - 1}")

        @torch.no_grad()
        def fn(x: torch.Tensor) -> torch.Tensor:
            t = x.shape[0]
            idx = torch.full((t, 1), i, dtype=torch.long, device=x.device)
            w = torch.ones((t, 1), dtype=x.dtype, device=x.device)
            return self.experts(x, idx, w)

        return fn

    @torch.no_grad()
    def expert_outputs(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Every expert on every token: (N, T, d)."""
        outs = []
        for i in range(self.num_experts):
            f = self.expert(i)
            outs.append(torch.cat([f(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)], dim=0))
        return torch.stack(outs)


def sort_slots(index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder top-k slots by descending gate (ties: ascending expert id)."""
    index = index.long()
    # stable: sort by expert id first, then by gate descending
    o1 = torch.argsort(index, dim=-1, stable=True)
    index, weights = index.gather(-1, o1), weights.gather(-1, o1)
    o2 = torch.argsort(-weights.float(), dim=-1, stable=True)
    return index.gather(-1, o2), weights.gather(-1, o2)


def _fused_experts(mod: nn.Module) -> bool:
    return isinstance(getattr(mod, "gate_up_proj", None), (nn.Parameter, torch.Tensor)) and isinstance(
        getattr(mod, "down_proj", None), (nn.Parameter, torch.Tensor)
    )


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model`` in depth order; raises :class:`UnsupportedModelError`."""
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED:
        raise _unsupported(model, "unknown architecture")
    score, renorm_default = SUPPORTED[mt]
    renorm = bool(getattr(config, "norm_topk_prob", False)) if renorm_default is None else renorm_default
    found: list[MoELayer] = []
    for li, layer in enumerate(_decoder_layers(model)):
        for name in ("mlp", "block_sparse_moe", "moe", "feed_forward"):
            block = getattr(layer, name, None)
            if block is None:
                continue
            experts = getattr(block, "experts", None)
            router = getattr(block, "gate", None)
            if router is None or not hasattr(router, "weight"):
                router = getattr(block, "router", None)
            if experts is None or router is None:
                continue
            if not _fused_experts(experts):
                raise _unsupported(model, f"layer {li}: experts module {type(experts).__name__} has no fused "
                                   "gate_up_proj/down_proj tensors (older transformers layout?)")
            n = int(getattr(experts, "num_experts", experts.gate_up_proj.shape[0]))
            k = int(getattr(router, "top_k", getattr(config, "num_experts_per_tok", 0)))
            names = _param_names(type(experts).forward)
            if len(names) < 3:
                raise _unsupported(model, f"experts forward of {type(experts).__name__} takes {names}")
            found.append(MoELayer(len(found), li, block, router, experts, n, k, renorm, score))
            break
    if not found:
        raise _unsupported(model, "no MoE block (mlp/block_sparse_moe with experts + gate/router) found")
    ks = {m.top_k for m in found}
    ns = {m.num_experts for m in found}
    if len(ks) != 1 or len(ns) != 1:
        raise _unsupported(model, f"MoE layers differ in top-k {ks} or expert count {ns}")
    return found


def hidden_size(model: nn.Module) -> int:
    return int(model.config.hidden_size)
