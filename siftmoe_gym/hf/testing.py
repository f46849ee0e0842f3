"""Tiny random MoE models of each supported family, built from configs (no downloads).

:data:`ARCH_KWARGS` holds, per ``model_type``, the smallest config that
exercises the family's routing rule (hidden 32, 2 decoder layers, 4-16
experts, top-2); tests that check a family against its published settings
pass those as ``overrides``.
"""

from __future__ import annotations

COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    vocab_size=259, max_position_embeddings=128, bos_token_id=256, eos_token_id=257, pad_token_id=258,
)

_MLA = dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, rope_scaling=None)

ARCH_KWARGS: dict[str, dict] = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[]),
    "qwen3_next": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                       shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"],
                       head_dim=8, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8,
                       linear_value_head_dim=8, decoder_sparse_step=1, mlp_only_layers=[]),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    "minimax": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                    layer_types=["linear_attention", "full_attention"]),
    "hunyuan_v1_moe": dict(num_experts=4, moe_topk=2, head_dim=8),
    "jamba": dict(num_experts=4, num_experts_per_tok=2, expert_layer_period=1, expert_layer_offset=0,
                  attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4, mamba_expand=2, mamba_dt_rank=4),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention"] * 2,
                    rope_parameters={"rope_type": "default", "rope_theta": 150000.0}),
    "ernie4_5_moe": dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_layer_start_index=0,
                         moe_layer_interval=1, moe_num_shared_experts=1, head_dim=8),
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=0, **_MLA),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=0, n_group=2, topk_group=1, routed_scaling_factor=2.5,
                        norm_topk_prob=True, **_MLA),
    "glm4_moe": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                     first_k_dense_replace=0, n_group=2, topk_group=1, routed_scaling_factor=2.5,
                     norm_topk_prob=True, head_dim=8),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
                 attn_config={"kv_n_heads": 4, "rope_theta": 10000.0, "clip_qkv": 8.0},
                 ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2,
                             "moe_normalize_expert_weights": 1.0}),
    "jetmoe": dict(num_local_experts=4, num_experts_per_tok=2, kv_channels=8, num_key_value_heads=2),
}

_ROUTING_PARAMS = ("gate.weight", "router.weight", "router.bias", "router.layer.weight", "gate.wg.weight",
                   "e_score_correction_bias")
_EXPERT_PARAMS = (".experts.", ".input_linear.", ".output_linear.")


def tiny_random_model(arch: str, seed: int = 0, dtype=None, **overrides):
    """A 2-layer, hidden-32 random model of ``arch`` (a ``config.model_type``) in eval mode.

    Expert and router weights (and routing bias buffers such as
    ``e_score_correction_bias``) are re-drawn with a fixed seed (normal, std
    0.2) so experts differ visibly and a selection bias really moves the
    selection (some families initialize routers and biases to zero).
    ``overrides`` replace config keys; ``dtype`` (a torch dtype) casts the model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {**COMMON, **ARCH_KWARGS[arch], **overrides}
    config = AutoConfig.for_model(arch, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if any(s in name for s in _EXPERT_PARAMS) or name.endswith(_ROUTING_PARAMS):
                if not p.is_floating_point():
                    continue
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
