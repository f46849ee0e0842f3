"""The MoE families ``siftmoe_gym.hf`` supports, their published routing rules, and refusals from a config.

Nothing here imports torch or transformers: :func:`check_config` decides
from a checkpoint's ``config.json`` alone (a dict, or a transformers config
object), before any weight loads, whether the model can be traced, and
raises :class:`UnsupportedModelError` with a one-line reason otherwise.

Each :class:`Family` names the ``model_type``, the causal-LM class, the
router's score function (``"softmax"`` probabilities or ``"sigmoid"``
scores, both in [0, 1]), the gate rule in words (from the family's
``transformers`` modeling file, the code the model runs), the config keys
behind ``norm_topk_prob`` and ``routed_scaling_factor``, a published
checkpoint, and its adapter (:mod:`siftmoe_gym.hf.adapters`: how the router,
the experts and the gates are reached).  Adding a family is one entry here
and, when its MoE block does not follow the fused contract, one adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


class UnsupportedModelError(ValueError):
    """The model is not an MoE causal LM of a supported family (the message is one line)."""


@dataclass(frozen=True)
class Family:
    """One supported MoE family (module docstring)."""

    model_type: str
    causal_lm: str
    score: str  # "softmax" | "sigmoid"
    rule: str  # the published gate rule, in words
    adapter: str = "fused"  # key of siftmoe_gym.hf.adapters.ADAPTERS
    renormalize: bool | str = True  # True / False, or the config key that says it (norm_topk_prob)
    scaling_key: str | None = None  # config key of the routed scaling factor
    example: str = ""  # a published checkpoint with this routing

    def renormalizes(self, config: Any) -> bool:
        """Whether the family's gates are ``p[S] / sum p[S]`` (before any routed scaling) under ``config``."""
        if isinstance(self.renormalize, bool):
            return self.renormalize
        return bool(_get(config, self.renormalize, False))

    def scaling(self, config: Any) -> float:
        """The routed scaling factor the gates are multiplied by (1.0 when the family has none)."""
        return float(_get(config, self.scaling_key, 1.0) or 1.0) if self.scaling_key else 1.0


_SOFT_RENORM = "softmax over all experts, top-k by probability, renormalized over the top-k"
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("mixtral", "MixtralForCausalLM", "softmax", _SOFT_RENORM, example="mistralai/Mixtral-8x7B-v0.1"),
    Family("qwen2_moe", "Qwen2MoeForCausalLM", "softmax",
           "softmax, top-k by probability, renormalized if norm_topk_prob; gated shared expert outside the selection",
           renormalize="norm_topk_prob", example="Qwen/Qwen1.5-MoE-A2.7B"),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", "softmax", "softmax, top-k, renormalized if norm_topk_prob",
           renormalize="norm_topk_prob", example="Qwen/Qwen3-30B-A3B"),
    Family("qwen3_next", "Qwen3NextForCausalLM", "softmax",
           "softmax, top-k, renormalized if norm_topk_prob; sigmoid-gated shared expert outside the selection",
           renormalize="norm_topk_prob", example="Qwen/Qwen3-Next-80B-A3B-Instruct"),
    Family("olmoe", "OlmoeForCausalLM", "softmax", "softmax, top-k, renormalized if norm_topk_prob",
           renormalize="norm_topk_prob", example="allenai/OLMoE-1B-7B-0924"),
    Family("minimax", "MiniMaxForCausalLM", "softmax", _SOFT_RENORM, example="MiniMaxAI/MiniMax-Text-01"),
    Family("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", "softmax", _SOFT_RENORM + "; shared MLP outside the selection",
           example="tencent/Hunyuan-A13B-Instruct"),
    Family("jamba", "JambaForCausalLM", "softmax", "softmax, top-k, not renormalized (gates are the probabilities)",
           renormalize=False, example="ai21labs/AI21-Jamba-Mini-1.5"),
    Family("granitemoe", "GraniteMoeForCausalLM", "softmax",
           "top-k of the logits, softmax over those k (= renormalized softmax)", example="ibm-granite/granite-3.1-3b-a800m-base"),
    Family("gpt_oss", "GptOssForCausalLM", "softmax",
           "logits with a router bias, top-k of the logits, softmax over those k (= renormalized softmax)",
           example="openai/gpt-oss-20b"),
    Family("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", "softmax",
           "softmax; top-k by probability plus the e_score_correction_bias statistics; gates p[S] / max(sum p[S], "
           "moe_norm_min); shared experts outside the selection", example="baidu/ERNIE-4.5-21B-A3B-PT"),
    Family("deepseek_v2", "DeepseekV2ForCausalLM", "softmax",
           "softmax; top-k greedy, or group_limited_greedy (top topk_group groups by their largest probability); "
           "gates p[S] x routed_scaling_factor, not renormalized; shared experts outside the selection",
           renormalize=False, scaling_key="routed_scaling_factor", example="deepseek-ai/DeepSeek-V2-Lite"),
    Family("deepseek_v3", "DeepseekV3ForCausalLM", "sigmoid",
           "sigmoid scores; selection by scores + e_score_correction_bias within the top topk_group of n_group groups "
           "(group score: sum of its two largest); gates: the raw scores of the selected, renormalized if "
           "norm_topk_prob, x routed_scaling_factor; shared experts outside the selection",
           renormalize="norm_topk_prob", scaling_key="routed_scaling_factor", example="deepseek-ai/DeepSeek-V3"),
    Family("glm4_moe", "Glm4MoeForCausalLM", "sigmoid", "the DeepSeek-V3 rule (sigmoid, bias-corrected group-limited "
           "selection, norm_topk_prob, routed_scaling_factor); shared experts outside the selection",
           renormalize="norm_topk_prob", scaling_key="routed_scaling_factor", example="zai-org/GLM-4.5-Air"),
    Family("phimoe", "PhimoeForCausalLM", "softmax",
           "sparsemixer (top-2): each slot's gate is a softmax over the logits within a relative margin "
           "2 router_jitter_noise of that slot's maximum", renormalize=False, example="microsoft/Phi-3.5-MoE-instruct"),
    Family("dbrx", "DbrxForCausalLM", "softmax",
           "softmax, top-k, divided by the moe_normalize_expert_weights-norm of the top-k (1: renormalized)",
           adapter="dbrx", example="databricks/dbrx-base"),
    Family("jetmoe", "JetMoeForCausalLM", "softmax",
           "top-k of the logits, softmax over those k (= renormalized softmax); attention experts (MoA) stay on "
           "the source and are not traced", adapter="jetmoe", example="jetmoe/jetmoe-8b"),
)}
"""Supported families by ``config.model_type``."""

REFUSED: dict[str, str] = {
    "llama4": "its router scales each expert's input, not its output (y = sum_i E_i(g_i x)), so the SiftMoE bound "
              "sum_i g_i Delta_ij, which needs y = sum_i g_i E_i(x), does not hold",
    "switch_transformers": "an encoder-decoder model with capacity-limited routing, not a causal LM",
    "nllb_moe": "an encoder-decoder translation model with capacity-limited routing, not a causal LM",
}
REFUSED["llama4_text"] = REFUSED["llama4"]
"""Known MoE families refused on purpose, with the reason."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def read_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint folder as a dict (:class:`UnsupportedModelError` when unreadable)."""
    file = Path(path) / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{file} holds a JSON {type(data).__name__}, not an object")
    return data


def supported_list() -> str:
    return ", ".join(sorted(FAMILIES))


def check_config(config: Any, source: str = "model") -> Family:
    """The :class:`Family` of ``config`` (a ``config.json`` dict or a transformers config), or
    :class:`UnsupportedModelError` with a one-line reason: an unknown or refused ``model_type``, no MoE
    layer, or MoE layers that differ in expert count or top-k."""
    mt = _get(config, "model_type")
    if mt in REFUSED:
        raise UnsupportedModelError(f"{source}: model_type {mt!r} is refused: {REFUSED[mt]}")
    fam = FAMILIES.get(mt)
    if fam is None:
        raise UnsupportedModelError(f"{source}: model_type {mt!r} is not a supported MoE family "
                                    f"(supported: {supported_list()})")
    for key in ("num_experts", "moe_topk"):  # Hunyuan allows one value per layer
        val = _get(config, key)
        if isinstance(val, list) and len(set(val)) > 1:
            raise UnsupportedModelError(f"{source}: {key} differs between layers ({sorted(set(val))}); the trace "
                                        "format holds one expert count and one top-k")
    if mt == "qwen2_moe" or mt == "qwen3_moe":
        layers = int(_get(config, "num_hidden_layers", 0) or 0)
        dense = set(_get(config, "mlp_only_layers", []) or [])
        step = int(_get(config, "decoder_sparse_step", 1) or 1)
        if layers and not [i for i in range(layers) if i not in dense and (i + 1) % step == 0]:
            raise UnsupportedModelError(f"{source}: no MoE layer (mlp_only_layers / decoder_sparse_step make every "
                                        "layer dense)")
    if mt == "phimoe" and int(_get(config, "num_experts_per_tok", 2) or 2) != 2:
        raise UnsupportedModelError(f"{source}: PhiMoE's sparsemixer routes exactly 2 experts, "
                                    f"config has num_experts_per_tok={_get(config, 'num_experts_per_tok')}")
    return fam
