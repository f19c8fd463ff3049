"""Shared fixtures: deterministic seeding, tiny random models of every supported family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network; read at import time

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

VOCAB = 97


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _jitter(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter, so norms ≠ 1 and biases ≠ 0 and no term can hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _gemma3_text(llama_like: dict) -> dict:
    """A global layer between two sliding ones, each kind with its own rotary base and scaling; soft-capped logits."""
    return llama_like | dict(num_hidden_layers=3, head_dim=8, query_pre_attn_scalar=12, sliding_window=4,
                             final_logit_softcapping=3.0,
                             layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                             rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                              "full_attention": {"rope_type": "linear", "rope_theta": 1000.0,
                                                                 "factor": 4.0}})


_falcon = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
               vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_config(family: str, **overrides):
    """A tiny config of each supported family, built offline from its transformers config class."""
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, **common)
    make = {
        "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, **common),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
            max_position_embeddings=128, rotary_pct=0.5, use_parallel_residual=True, **common),
        "gptj": lambda: transformers.GPTJConfig(n_layer=2, n_head=4, n_embd=32, n_positions=128, rotary_dim=4,
                                                **common),
        "llama": lambda: transformers.LlamaConfig(
            **llama_like, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "mistral": lambda: transformers.MistralConfig(**llama_like, sliding_window=4),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like),
        "qwen3": lambda: transformers.Qwen3Config(**llama_like, head_dim=16),
        "gemma2": lambda: transformers.Gemma2Config(
            **llama_like, head_dim=8, query_pre_attn_scalar=12, sliding_window=4,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
        "phi3": lambda: transformers.Phi3Config(**llama_like, sliding_window=4, partial_rotary_factor=0.5),
        "gemma": lambda: transformers.GemmaConfig(**llama_like, head_dim=8),
        # a global layer between two sliding ones, each kind with its own rotary base and scaling
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**_gemma3_text(llama_like)),
        # Gemma 3 of 4B and up: an image-text model whose language model circuitfind reads
        "gemma3": lambda: transformers.Gemma3Config(
            text_config=_gemma3_text(llama_like), mm_tokens_per_image=4,
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14), **common),
        "opt": lambda: transformers.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
                                              max_position_embeddings=128, word_embed_proj_dim=32, **common),
        # a global layer, then a local one with a window shorter than the prompts
        "gpt_neo": lambda: transformers.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                                                     max_position_embeddings=128, window_size=4,
                                                     attention_types=[[["global", "local"], 1]], **common),
        "phi": lambda: transformers.PhiConfig(**llama_like | dict(num_key_value_heads=4), partial_rotary_factor=0.5,
                                              qk_layernorm=True),
        "persimmon": lambda: transformers.PersimmonConfig(**llama_like | dict(num_key_value_heads=4),
                                                          partial_rotary_factor=0.5, qk_layernorm=True),
        # grouped-query, a head-by-head q/k norm, blocks in parallel on one norm, q/k/v biases
        "stablelm": lambda: transformers.StableLmConfig(**llama_like, partial_rotary_factor=0.25, qk_layernorm=True,
                                                        use_parallel_residual=True, use_qkv_bias=True),
        "olmo": lambda: transformers.OlmoConfig(**llama_like),
        "granite": lambda: transformers.GraniteConfig(**llama_like, embedding_multiplier=3.0, residual_multiplier=0.4,
                                                      attention_multiplier=0.2, logits_scaling=2.5),
        "smollm3": lambda: transformers.SmolLM3Config(**llama_like, no_rope_layers=[1, 0]),  # layer 1 without rotary
        "cohere": lambda: transformers.CohereConfig(**llama_like, use_qk_norm=True, logit_scale=0.7),
        "starcoder2": lambda: transformers.Starcoder2Config(**llama_like, sliding_window=4, use_bias=True),
        "nemotron": lambda: transformers.NemotronConfig(**llama_like, partial_rotary_factor=0.5, attention_bias=True,
                                                        mlp_bias=True),
        "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(n_layer=2, n_head=4, n_embd=32, n_positions=128,
                                                             multi_query=True, **common),
        "bloom": lambda: transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common),
        # falcon-7b's form: multi-query, parallel attention on one norm, rotary
        "falcon": lambda: transformers.FalconConfig(**_falcon, multi_query=True, parallel_attn=True, bias=False),
        # falcon-rw's: ALiBi, sequential blocks, biases
        "falcon_alibi": lambda: transformers.FalconConfig(**_falcon, alibi=True, multi_query=False, parallel_attn=False,
                                                         bias=True),
        # falcon-40b's: kv groups, two norms in parallel
        "falcon_new": lambda: transformers.FalconConfig(**_falcon, new_decoder_architecture=True, num_kv_heads=2,
                                                       num_ln_in_parallel_attn=2, bias=False),
        # 4 experts, top 2: exact routing, renormalised (Mixtral, Qwen3-MoE) or not, a shared expert (Qwen2-MoE)
        "mixtral": lambda: transformers.MixtralConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2,
                                                      sliding_window=4),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**llama_like, num_experts=4, num_experts_per_tok=2,
                                                         moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                                         norm_topk_prob=False),
        "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**llama_like, head_dim=16, num_experts=4,
                                                         num_experts_per_tok=2, moe_intermediate_size=24,
                                                         norm_topk_prob=True),
        # a sliding layer, then a global one without rotary
        "cohere2": lambda: transformers.Cohere2Config(**llama_like, sliding_window=4, logit_scale=0.7,
                                                      layer_types=["sliding_attention", "full_attention"]),
        # Llama's form under other names (InternLM3 and IQuestCoder run Llama's own modelling code)
        "seed_oss": lambda: transformers.SeedOssConfig(**llama_like, attention_bias=True, attention_out_bias=True),
        "internlm3": lambda: transformers.AutoConfig.for_model("internlm3", **llama_like),
        "iquestcoder": lambda: transformers.AutoConfig.for_model("iquestcoder", **llama_like),
        # MPT's own slopes, for a head count that is not a power of two
        "mpt": lambda: transformers.MptConfig(d_model=48, n_heads=6, n_layers=2, max_seq_len=128, **common),
        "granitemoe": lambda: transformers.GraniteMoeConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2,
                                                            embedding_multiplier=3.0, residual_multiplier=0.4,
                                                            attention_multiplier=0.2, logits_scaling=2.5),
        # norms after each block alone; q/k RMSNorm over every head together
        "olmo2": lambda: transformers.Olmo2Config(**llama_like),
        "olmoe": lambda: transformers.OlmoeConfig(**llama_like, num_experts=4, num_experts_per_tok=2),
        # OLMo 2's form with a sliding layer (window 4) before a global one
        "olmo3": lambda: transformers.Olmo3Config(**llama_like, sliding_window=4,
                                                  layer_types=["sliding_attention", "full_attention"]),
        # attention sinks, a sliding layer then a global one, YaRN rotary, biased experts with a SwiGLU clamped
        # low enough to bind at these small activations
        "gpt_oss": lambda: transformers.GptOssConfig(**_gpt_oss, **common),
    }[family]
    cfg = make()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


_gpt_oss = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                intermediate_size=24, max_position_embeddings=128, num_local_experts=4,
                num_experts_per_tok=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                swiglu_limit=0.05, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                    "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                                    "original_max_position_embeddings": 32})

FAMILIES = ["gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2",
            "gemma3_text", "gemma3", "opt", "gpt_neo", "phi", "persimmon", "stablelm", "olmo", "granite", "smollm3",
            "cohere", "starcoder2", "nemotron", "gpt_bigcode", "bloom", "falcon", "falcon_alibi", "falcon_new",
            "mixtral", "qwen2_moe", "qwen3_moe", "cohere2", "seed_oss", "internlm3", "iquestcoder", "mpt",
            "granitemoe", "olmo2", "olmoe", "olmo3", "gpt_oss"]


def tiny_hf(family: str, **overrides):
    torch.manual_seed(0)
    cfg = tiny_config(family, **overrides)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return _jitter(hf).eval()


def tiny_model(family: str):
    """A tiny converted model in float64; "qwen2_moe+experts": with the expert-level graph."""
    import circuitfind as cf
    name, _, experts = family.partition("+")
    return cf.from_hf(tiny_hf(name), experts=bool(experts)).double()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def no_norm_model(n_layers: int, act_fn: str):
    """A small canonical model without norms, learned positions and random weights (float64): where first-order
    scores are exact (act_fn "identity") or where LRP's rules are the gradient ("relu")."""
    from circuitfind.models.canonical import CanonicalConfig, CircuitModel

    torch.manual_seed(0)
    cfg = CanonicalConfig(family="toy", n_layers=n_layers, d_model=16, n_heads=2, n_kv_heads=2, d_head=8, d_mlp=24,
                          d_vocab=VOCAB, n_ctx=32, act_fn=act_fn, norm="none", positional="learned")
    model = CircuitModel(cfg, qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.double().eval().requires_grad_(False)
