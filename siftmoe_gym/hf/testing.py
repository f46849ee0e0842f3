"""Tiny random MoE models of each supported architecture, built from configs (no downloads)."""

from __future__ import annotations

COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    vocab_size=259, max_position_embeddings=128, bos_token_id=256, eos_token_id=257, pad_token_id=258,
)

ARCH_KWARGS: dict[str, dict] = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[]),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=8, rope_scaling=None),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=0, n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=16,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, rope_scaling=None,
                        routed_scaling_factor=2.5, norm_topk_prob=True),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention"] * 2,
                    rope_parameters={"rope_type": "default", "rope_theta": 150000.0}),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
}


def tiny_random_model(arch: str, seed: int = 0, **overrides):
    """A 2-layer, hidden-32 random model of ``arch`` (a ``config.model_type``) in eval mode.

    Expert and router weights are re-drawn with a fixed seed (normal, std 0.2)
    so experts differ visibly (some architectures initialize routers to zero).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {**COMMON, **ARCH_KWARGS[arch], **overrides}
    config = AutoConfig.for_model(arch, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name or name.endswith(("gate.weight", "router.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()
