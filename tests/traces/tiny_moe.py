"""Tiny randomly initialised MoE checkpoints for the capture tests: built from transformers config
classes, saved with a character-level tokenizer beside them. No download."""

from __future__ import annotations

import json
from pathlib import Path

CHARS = "abcdefghijklmnopqrstuvwxyz .,?!+=-0123456789"
VOCAB = 64  # [UNK]=0, <eos>=1, then CHARS; the rest unused

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
              eos_token_id=1, bos_token_id=None, pad_token_id=0, tie_word_embeddings=False)

#: model_type -> (config class, extra config fields)
CONFIGS = {
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                                         shared_expert_intermediate_size=16, norm_topk_prob=False)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                                         norm_topk_prob=True, head_dim=16)),
    "olmoe": ("OlmoeConfig", dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)),
    "deepseek_v3": ("DeepseekV3Config", dict(n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                                             moe_intermediate_size=16, n_group=2, topk_group=1,
                                             first_k_dense_replace=1, num_hidden_layers=3,
                                             routed_scaling_factor=2.5, norm_topk_prob=True,
                                             q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                                             qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                                             num_key_value_heads=2, rope_scaling=None)),
    "deepseek_v2": ("DeepseekV2Config", dict(n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                                             moe_intermediate_size=16, n_group=2, topk_group=1,
                                             topk_method="group_limited_greedy", first_k_dense_replace=1,
                                             num_hidden_layers=3, routed_scaling_factor=1.5,
                                             q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                                             qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                                             num_key_value_heads=2, rope_scaling=None)),
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=8, num_experts_per_tok=2, head_dim=16,
                                     sliding_window=16, layer_types=["sliding_attention", "full_attention"])),
    "phimoe": ("PhimoeConfig", dict(num_local_experts=8, num_experts_per_tok=2, rope_scaling=None)),
}


def save_tokenizer(path: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    for i in range(len(vocab), VOCAB):
        vocab[f"<unused{i}>"] = i
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<eos>",
                                   pad_token="[UNK]")
    fast.save_pretrained(path)


def build(model_type: str, path: Path, seed: int = 0):
    """Save a tiny random ``model_type`` checkpoint with its tokenizer in ``path``; return the model."""
    import torch
    import transformers

    cls_name, extra = CONFIGS[model_type]
    cfg = getattr(transformers, cls_name)(**{**COMMON, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name or "router" in name:  # make routing decisive, not near-uniform
                p.normal_(0.0, 1.0)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # a bias that changes the choice
                b.copy_(torch.randn_like(b) * 0.3)
    model.save_pretrained(path)
    save_tokenizer(path)
    return model


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
