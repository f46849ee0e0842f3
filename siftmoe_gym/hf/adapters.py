"""Find the MoE layers of a ``transformers`` causal LM and expose them uniformly, one adapter per block layout.

A :class:`MoELayer` gives every supported family (:mod:`siftmoe_gym.hf.families`)
the same view of one MoE block:

- :meth:`MoELayer.scores`: the router's scores (T, N) as the family defines
  them, in [0, 1] (softmax probabilities, or sigmoid scores for
  DeepSeek-V3 / GLM-4.5), computed from the router's own logits;
- :meth:`MoELayer.route`: the model's own selection and applied gates
  ``(top_k_index, gates)`` (T, k), slots sorted by gate (descending): exactly
  the tensors the model multiplies its experts by (renormalization, bias
  correction and routed scaling included);
- :meth:`MoELayer.run_experts`: the routed part of the block's output for any
  routing ``(index, weights)``, computed by the model's own experts kernel;
  :meth:`MoELayer.expert` is expert ``i`` alone at gate exactly 1.  Shared
  experts and biases outside the routing never change, so a decision's
  deviation is the routed part's deviation.

An :class:`Adapter` is how one layout is reached; adding a family whose block
is laid out differently is one subclass registered in :data:`ADAPTERS`:

- :meth:`Adapter.decoder_layers` (model -> decoder layers),
  :meth:`Adapter.find` (a decoder layer -> ``(block, router, experts)`` or
  ``None`` for a dense layer);
- :meth:`Adapter.routing` (``x`` (T, d) -> the router's ``(logits, weights,
  index)`` as the model computes them);
- :meth:`Adapter.run` (the experts kernel on a routing, unpatched);
- :meth:`Adapter.install` (make the model's own calls go through
  ``handler(layer, x, index, weights, run)``, which returns the routed
  output; returns the function that undoes it).

:class:`FusedAdapter` serves the transformers 5 contract (a router ``gate`` or
``router`` returning ``(logits, weights, index)`` and an experts module called
as ``experts(x, index, weights)``; fused ``gate_up_proj``/``down_proj``
tensors or DBRX's ``w1/v1/w2``); :class:`DbrxAdapter` adds DBRX's router,
whose routing lives in the block; :class:`JetMoeAdapter` serves JetMoE, whose
experts are two ``ParallelExperts`` layers driven by the block itself.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .families import FAMILIES, REFUSED, Family, UnsupportedModelError, check_config, supported_list

SUPPORTED: dict[str, Family] = FAMILIES
"""Supported families by ``config.model_type`` (:data:`siftmoe_gym.hf.families.FAMILIES`)."""
SUPPORTED_CLASSES = tuple(f.causal_lm for f in FAMILIES.values())

__all__ = ["ADAPTERS", "Adapter", "MoELayer", "SUPPORTED", "SUPPORTED_CLASSES", "UnsupportedModelError",
           "moe_layers", "sort_slots", "REFUSED"]


def _unsupported(model: nn.Module, why: str) -> UnsupportedModelError:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    return UnsupportedModelError(
        f"{type(model).__name__} (model_type={mt!r}) is not supported: {why}. "
        f"Supported classes: {', '.join(SUPPORTED_CLASSES)} (model_type one of {supported_list()})."
    )


def _param_names(fn: Callable) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _bind(names: list[str], args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vals = list(args[:3])
    for name in names[len(vals) : 3]:
        vals.append(kwargs[name])
    return vals[0], vals[1], vals[2]


def sort_slots(index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder top-k slots by descending gate (ties: ascending expert id)."""
    index = index.long()
    o1 = torch.argsort(index, dim=-1, stable=True)  # stable: by expert id first, then by gate descending
    index, weights = index.gather(-1, o1), weights.gather(-1, o1)
    o2 = torch.argsort(-weights.float(), dim=-1, stable=True)
    return index.gather(-1, o2), weights.gather(-1, o2)


Handler = Callable[["MoELayer", torch.Tensor, torch.Tensor, torch.Tensor, Callable], torch.Tensor]


class Adapter:
    """How one MoE block layout is reached (module docstring); the base serves the fused contract."""

    name = "fused"
    block_names = ("mlp", "block_sparse_moe", "moe", "feed_forward", "ffn")

    def decoder_layers(self, model: nn.Module):
        base = getattr(model, "model", model)
        layers = getattr(base, "layers", None)
        if layers is None:
            raise _unsupported(model, "no decoder layer list at model.model.layers")
        return layers

    def find(self, layer: nn.Module):
        for name in self.block_names:
            block = getattr(layer, name, None)
            experts = getattr(block, "experts", None) if block is not None else None
            router = getattr(block, "gate", None) if block is not None else None
            if not isinstance(router, nn.Module):
                router = getattr(block, "router", None) if block is not None else None
            if isinstance(experts, nn.Module) and isinstance(router, nn.Module):
                return block, router, experts
        return None

    def counts(self, block, router, experts, config) -> tuple[int, int]:
        n = getattr(experts, "num_experts", None) or getattr(router, "num_experts", None)
        k = getattr(router, "top_k", None) or getattr(block, "top_k", None) or getattr(config, "num_experts_per_tok", 0)
        return int(n), int(k)

    def check(self, model, li: int, block, router, experts) -> None:
        if len(_param_names(type(experts).forward)) < 3:
            raise _unsupported(model, f"layer {li}: experts forward of {type(experts).__name__} does not take "
                               "(hidden_states, top_k_index, top_k_weights)")

    def routing(self, lay: "MoELayer", x: torch.Tensor):
        out = lay.router(x)
        if not (isinstance(out, (tuple, list)) and len(out) >= 3):
            raise RuntimeError(f"router {type(lay.router).__name__} did not return (logits, weights, indices)")
        return out[0], out[1], out[2]

    def run(self, lay: "MoELayer", x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = type(lay.experts).forward(lay.experts, x, index, weights)  # the class's forward: never a patch
        return out.reshape(x.shape)

    def install(self, lay: "MoELayer", handler: Handler) -> Callable[[], None]:
        mod = lay.experts
        had, prev = "forward" in mod.__dict__, mod.__dict__.get("forward")
        orig, names = mod.forward, _param_names(type(mod).forward)

        def flat_orig(x2, idx, w):
            return orig(x2, idx, w).reshape(x2.shape)

        def wrapper(*args, **kwargs):
            x, idx, w = _bind(names, args, kwargs)
            if x.dim() == 2:
                return handler(lay, x, idx, w, orig)
            out = handler(lay, x.reshape(-1, x.shape[-1]), idx, w, flat_orig)  # DBRX passes (B, S, d)
            return out.reshape(x.shape)

        mod.forward = wrapper

        def undo():
            if had:
                mod.forward = prev
            else:
                del mod.forward

        return undo


class FusedAdapter(Adapter):
    """The fused-experts contract (most families)."""


class DbrxAdapter(Adapter):
    """DBRX: blocks at ``model.transformer.blocks[i].ffn``; the router returns logits only and the block's
    ``route_tokens_to_experts`` turns them into ``(weights, index)``; experts take the fused contract."""

    name = "dbrx"

    def decoder_layers(self, model):
        return model.transformer.blocks

    def find(self, layer):
        block = getattr(layer, "ffn", None)
        return None if block is None else (block, block.router, block.experts)

    def counts(self, block, router, experts, config):
        return int(experts.num_experts), int(block.top_k)

    def routing(self, lay, x):
        logits = lay.router(x)
        weights, index = lay.block.route_tokens_to_experts(logits)
        return logits, weights, index


class JetMoeAdapter(Adapter):
    """JetMoE: ``layer.mlp`` computes its experts itself (``input_linear``/``output_linear`` grouped by expert,
    then ``+ bias``).  :meth:`run` is that computation for any routing (the block's own operations in the same
    order, so a kept routing reproduces the block bitwise); :meth:`install` replaces the block's ``forward``."""

    name = "jetmoe"

    def find(self, layer):
        block = getattr(layer, "mlp", None)
        if block is None or not hasattr(block, "input_linear"):
            return None
        return block, block.router, block

    def counts(self, block, router, experts, config):
        return int(router.num_experts), int(router.top_k)

    def check(self, model, li, block, router, experts):
        return None

    def routing(self, lay, x):
        logits = lay.router.layer(x).float()  # JetMoeTopKGating.forward's first three lines
        top_logits, index = logits.topk(lay.top_k, dim=1)
        return logits, torch.softmax(top_logits, dim=1).type_as(x), index

    def run(self, lay, x, index, weights):
        blk, k, n = lay.block, index.shape[1], lay.num_experts
        flat = index.flatten()
        expert_size = torch.bincount(flat, minlength=n).tolist()  # (token, slot) pairs per expert
        _, order = flat.sort(0)
        batch_index = order.div(k, rounding_mode="trunc")
        batch_gates = weights.flatten()[order]
        h = blk.input_linear(x[batch_index], expert_size)
        h = h.chunk(2, dim=-1)
        h = blk.activation(h[0]) * h[1]
        out = blk.output_linear(h, expert_size) * batch_gates[:, None]
        zeros = torch.zeros((x.shape[0], blk.input_size), dtype=out.dtype, device=out.device)
        return zeros.index_add(0, batch_index, out)

    def install(self, lay, handler):
        blk = lay.block
        had, prev = "forward" in blk.__dict__, blk.__dict__.get("forward")

        def run(x, idx, w):
            return self.run(lay, x, idx, w)

        def forward(layer_input):
            bsz, length, d = layer_input.size()
            x = layer_input.reshape(-1, d)
            _, w, idx = self.routing(lay, x)
            return handler(lay, x, idx, w, run).view(bsz, length, d) + blk.bias

        blk.forward = forward

        def undo():
            if had:
                blk.forward = prev
            else:
                del blk.forward

        return undo


ADAPTERS: dict[str, Adapter] = {"fused": FusedAdapter(), "dbrx": DbrxAdapter(), "jetmoe": JetMoeAdapter()}
"""Adapters by :attr:`Family.adapter`."""


@dataclass
class MoELayer:
    """One MoE layer: its block, router and experts, reached through ``adapter`` (module docstring)."""

    index: int  # MoE layer index 0..L-1
    layer_idx: int  # decoder layer index
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    renormalize: bool  # the family's gates are p[S] / sum p[S] (before routed scaling)
    score: str  # "softmax" | "sigmoid"
    adapter: Adapter = ADAPTERS["fused"]
    family: Family | None = None

    @torch.no_grad()
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The router's logits (T, N) for hidden states (T, d) (with the router bias, where there is one)."""
        return self.adapter.routing(self, x)[0]

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores (T, N) float32 in [0, 1]: ``softmax`` or ``sigmoid`` of the logits (:attr:`score`)."""
        logits = self.router_logits(x).float()
        return torch.sigmoid(logits) if self.score == "sigmoid" else torch.softmax(logits, dim=-1)

    router_probs = scores

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own ``(top_k_index, gates)`` (T, k) for ``x``, slots by descending gate."""
        _, weights, index = self.adapter.routing(self, x)
        return sort_slots(index, weights)

    def run_experts(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The routed output (T, d) of the model's experts kernel on ``x`` (T, d) with ``index``/``weights`` (T, k)."""
        return self.adapter.run(self, x, index, weights)

    def expert(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Expert ``i`` as a callable on (T, d) tensors (the model's own kernel, gate 1)."""
        if not 0 <= i < self.num_experts:
            raise IndexError(f"expert {i} out of range 0..{self.num_experts - 1}")

        @torch.no_grad()
        def fn(x: torch.Tensor) -> torch.Tensor:
            t = x.shape[0]
            idx = torch.full((t, 1), i, dtype=torch.long, device=x.device)
            return self.run_experts(x, idx, torch.ones((t, 1), dtype=x.dtype, device=x.device))

        return fn

    @torch.no_grad()
    def expert_outputs(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Every expert on every token: (N, T, d)."""
        outs = []
        for i in range(self.num_experts):
            f = self.expert(i)
            outs.append(torch.cat([f(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)], dim=0))
        return torch.stack(outs)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model`` in depth order; raises :class:`UnsupportedModelError` (one line)."""
    config = getattr(model, "config", None)
    try:
        fam = check_config(config if config is not None else {}, type(model).__name__)
    except UnsupportedModelError as exc:
        raise _unsupported(model, str(exc).split(": ", 1)[-1]) from None
    adapter = ADAPTERS[fam.adapter]
    renorm = fam.renormalizes(config)
    found: list[MoELayer] = []
    for li, layer in enumerate(adapter.decoder_layers(model)):
        parts = adapter.find(layer)
        if parts is None:
            continue  # a dense layer
        block, router, experts = parts
        adapter.check(model, li, block, router, experts)
        n, k = adapter.counts(block, router, experts, config)
        found.append(MoELayer(len(found), li, block, router, experts, n, k, renorm, fam.score, adapter, fam))
    if not found:
        raise _unsupported(model, "no MoE block with experts and a router found")
    ks = {m.top_k for m in found}
    ns = {m.num_experts for m in found}
    if len(ks) != 1 or len(ns) != 1:
        raise _unsupported(model, f"MoE layers differ in top-k {ks} or expert count {ns}")
    return found


def hidden_size(model: nn.Module) -> int:
    return int(model.config.hidden_size)
