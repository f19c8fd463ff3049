"""The model zoo: short names → where a model comes from.

Hub entries resolve to a Hugging Face id (loaded from the local cache or the network). Trained toy
models (toy-lm, toy-induction) ship in Hugging Face format, made by scripts/train_*.py. Compiled
tracr models ship with the package (`circuitfind/zoo_models/`, made by scripts/build_tracr.py) in the
canonical format with their ground-truth circuits; loading them needs no JAX.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

SHIPPED = Path(__file__).resolve().parent.parent / "zoo_models"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    source: str  # "hub" | "shipped" | "tracr"
    location: str  # hub id, or path inside the package
    layers: int
    heads: int
    parallel: bool = False
    params: str = ""
    description: str = ""
    config: dict | None = None  # hub entries: the architecture fields of the published config.json

    def hf_config(self):
        """The entry's `transformers` config, built offline from `config` (hub entries only)."""
        import transformers

        if self.config is None:
            from circuitfind.errors import ConfigError

            raise ConfigError(f"zoo entry {self.name!r} is not a hub model and has no published config shape")
        return transformers.AutoConfig.for_model(**self.config)

    @property
    def n_edges(self) -> int:
        from circuitfind.graph import (
            Graph,  # graph sits above models; only for the listing
        )
        return Graph(self.layers, self.heads, self.parallel).n_edges


def _gpt2(layers, heads, d):
    return {"model_type": "gpt2", "n_layer": layers, "n_head": heads, "n_embd": d, "vocab_size": 50257,
            "n_positions": 1024, "activation_function": "gelu_new", "tie_word_embeddings": True}


def _pythia(layers, heads, d):
    return {"model_type": "gpt_neox", "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": d,
            "intermediate_size": 4 * d, "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
            "rotary_emb_base": 10000, "use_parallel_residual": True, "hidden_act": "gelu",
            "tie_word_embeddings": False}


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("gpt2", "gpt2", "hub", "openai-community/gpt2", 12, 12, params="124M", config=_gpt2(12, 12, 768)),
    ZooEntry("gpt2-medium", "gpt2", "hub", "openai-community/gpt2-medium", 24, 16, params="355M",
             config=_gpt2(24, 16, 1024)),
    ZooEntry("pythia-70m", "gpt_neox", "hub", "EleutherAI/pythia-70m", 6, 8, True, "70M", config=_pythia(6, 8, 512)),
    ZooEntry("pythia-160m", "gpt_neox", "hub", "EleutherAI/pythia-160m", 12, 12, True, "160M",
             config=_pythia(12, 12, 768)),
    ZooEntry("gpt-j-6b", "gptj", "hub", "EleutherAI/gpt-j-6b", 28, 16, True, "6.1B",
             description="parallel blocks on one norm, interleaved partial rotary, unembedding bias",
             config={"model_type": "gptj", "n_layer": 28, "n_head": 16, "n_embd": 4096, "rotary_dim": 64,
                     "vocab_size": 50400, "n_positions": 2048, "activation_function": "gelu_new",
                     "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False}),
    ZooEntry("Qwen2.5-0.5B", "qwen2", "hub", "Qwen/Qwen2.5-0.5B", 24, 14, params="494M",
             description="GQA (2 kv heads), qkv bias",
             config={"model_type": "qwen2", "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "hidden_size": 896, "intermediate_size": 4864, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True, "use_sliding_window": False}),
    ZooEntry("Llama-3.2-1B", "llama", "hub", "meta-llama/Llama-3.2-1B", 16, 32, params="1.2B",
             description="GQA (8 kv heads), llama3 RoPE",
             config={"model_type": "llama", "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "hidden_size": 2048, "intermediate_size": 8192, "head_dim": 64,
                     "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                     "rope_theta": 500000.0, "tie_word_embeddings": True,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    ZooEntry("gemma-2-2b", "gemma2", "hub", "google/gemma-2-2b", 26, 8, params="2.6B",
             description="soft-capping, sliding window, post-norms",
             config={"model_type": "gemma2", "num_hidden_layers": 26, "num_attention_heads": 8,
                     "num_key_value_heads": 4, "hidden_size": 2304, "intermediate_size": 9216, "head_dim": 256,
                     "vocab_size": 256000, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                     "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
                     "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh"}),
    ZooEntry("Phi-3-mini-4k", "phi3", "hub", "microsoft/Phi-3-mini-4k-instruct", 32, 32, params="3.8B",
             description="fused q/k/v and gate/up projections, sliding window",
             config={"model_type": "phi3", "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 32, "hidden_size": 3072, "intermediate_size": 8192, "vocab_size": 32064,
                     "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                     "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 2047, "hidden_act": "silu",
                     "tie_word_embeddings": False}),
    ZooEntry("gemma-3-1b", "gemma3_text", "hub", "google/gemma-3-1b-pt", 26, 4, params="1.0B",
             description="q/k norms, 5 sliding layers to 1 global, each kind with its own RoPE base",
             config={"model_type": "gemma3_text", "num_hidden_layers": 26, "num_attention_heads": 4,
                     "num_key_value_heads": 1, "hidden_size": 1152, "intermediate_size": 6912, "head_dim": 256,
                     "vocab_size": 262144, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
                     "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
                     "hidden_activation": "gelu_pytorch_tanh"}),
    ZooEntry("opt-125m", "opt", "hub", "facebook/opt-125m", 12, 12, params="125M",
             description="learned positions past OPT's offset of 2",
             config={"model_type": "opt", "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768,
                     "ffn_dim": 3072, "word_embed_proj_dim": 768, "vocab_size": 50272, "max_position_embeddings": 2048,
                     "activation_function": "relu", "do_layer_norm_before": True, "enable_bias": True}),
    ZooEntry("gpt-neo-125m", "gpt_neo", "hub", "EleutherAI/gpt-neo-125m", 12, 12, params="125M",
             description="unscaled scores, local layers (window 256) between global ones",
             config={"model_type": "gpt_neo", "num_layers": 12, "num_heads": 12, "hidden_size": 768,
                     "attention_types": [[["global", "local"], 6]], "window_size": 256, "vocab_size": 50257,
                     "max_position_embeddings": 2048, "activation_function": "gelu_new"}),
    ZooEntry("phi-2", "phi", "hub", "microsoft/phi-2", 32, 32, True, "2.7B",
             description="parallel block on one norm, partial rotary (40%), biases throughout",
             config={"model_type": "phi", "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 2560,
                     "intermediate_size": 10240, "vocab_size": 51200, "max_position_embeddings": 2048,
                     "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "qk_layernorm": False,
                     "tie_word_embeddings": False}),
    ZooEntry("stablelm-2-1.6b", "stablelm", "hub", "stabilityai/stablelm-2-1_6b", 24, 32, params="1.6B",
             description="partial rotary (25%), q/k/v biases, LayerNorm",
             config={"model_type": "stablelm", "num_hidden_layers": 24, "num_attention_heads": 32,
                     "num_key_value_heads": 32, "hidden_size": 2048, "intermediate_size": 5632, "vocab_size": 100352,
                     "max_position_embeddings": 4096, "partial_rotary_factor": 0.25, "use_qkv_bias": True,
                     "qk_layernorm": False, "use_parallel_residual": False, "tie_word_embeddings": False}),
    ZooEntry("persimmon-8b", "persimmon", "hub", "adept/persimmon-8b-base", 36, 64, params="9.4B",
             description="ReLU², partial rotary (50%), LayerNorm over queries and keys",
             config={"model_type": "persimmon", "num_hidden_layers": 36, "num_attention_heads": 64, "hidden_size": 4096,
                     "intermediate_size": 16384, "vocab_size": 262144, "max_position_embeddings": 16384,
                     "partial_rotary_factor": 0.5, "qk_layernorm": True, "hidden_act": "relu2", "rope_theta": 25000.0}),
    ZooEntry("OLMo-1B", "olmo", "hub", "allenai/OLMo-1B-hf", 16, 16, params="1.2B",
             description="LayerNorm without weights",
             config={"model_type": "olmo", "num_hidden_layers": 16, "num_attention_heads": 16, "hidden_size": 2048,
                     "intermediate_size": 8192, "vocab_size": 50304, "max_position_embeddings": 2048,
                     "tie_word_embeddings": True}),
    ZooEntry("OLMo-2-0425-1B", "olmo2", "hub", "allenai/OLMo-2-0425-1B", 16, 16, params="1.5B",
             description="norms on block outputs alone, q/k RMSNorm over every head together",
             config={"model_type": "olmo2", "num_hidden_layers": 16, "num_attention_heads": 16,
                     "num_key_value_heads": 16, "hidden_size": 2048, "intermediate_size": 8192, "vocab_size": 100352,
                     "max_position_embeddings": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": False}),
    ZooEntry("OLMoE-1B-7B", "olmoe", "hub", "allenai/OLMoE-1B-7B-0924", 16, 16, params="6.9B",
             description="MoE MLP nodes: 64 experts, top 8, not renormalised; q/k RMSNorm over every head together",
             config={"model_type": "olmoe", "num_hidden_layers": 16, "num_attention_heads": 16,
                     "num_key_value_heads": 16, "hidden_size": 2048, "intermediate_size": 1024, "num_experts": 64,
                     "num_experts_per_tok": 8, "norm_topk_prob": False, "vocab_size": 50304,
                     "max_position_embeddings": 4096, "rope_theta": 10000.0}),
    ZooEntry("granite-3.0-2b", "granite", "hub", "ibm-granite/granite-3.0-2b-base", 40, 32, params="2.5B",
             description="embedding, residual, attention and logit multipliers; GQA (8 kv heads)",
             config={"model_type": "granite", "num_hidden_layers": 40, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "hidden_size": 2048, "intermediate_size": 8192, "vocab_size": 49155,
                     "max_position_embeddings": 4096, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                     "attention_multiplier": 0.015625, "logits_scaling": 8.0, "tie_word_embeddings": True}),
    ZooEntry("SmolLM3-3B", "smollm3", "hub", "HuggingFaceTB/SmolLM3-3B", 36, 16, params="3.1B",
             description="every 4th layer without rotary (NoPE); GQA (4 kv heads)",
             config={"model_type": "smollm3", "num_hidden_layers": 36, "num_attention_heads": 16,
                     "num_key_value_heads": 4, "hidden_size": 2048, "intermediate_size": 11008, "vocab_size": 128256,
                     "max_position_embeddings": 65536, "rope_theta": 5000000.0, "no_rope_layer_interval": 4,
                     "tie_word_embeddings": True}),
    ZooEntry("c4ai-command-r-v01", "cohere", "hub", "CohereForAI/c4ai-command-r-v01", 40, 64, True, "35B",
             description="parallel block on one bias-free LayerNorm, interleaved rotary, logit scale",
             config={"model_type": "cohere", "num_hidden_layers": 40, "num_attention_heads": 64,
                     "num_key_value_heads": 64, "hidden_size": 8192, "intermediate_size": 22528, "vocab_size": 256000,
                     "max_position_embeddings": 8192, "logit_scale": 0.0625, "use_qk_norm": False,
                     "rope_theta": 8000000.0}),
    ZooEntry("santacoder", "gpt_bigcode", "hub", "bigcode/gpt_bigcode-santacoder", 24, 16, params="1.1B",
             description="multi-query attention (one kv head), learned positions",
             config={"model_type": "gpt_bigcode", "n_layer": 24, "n_head": 16, "n_embd": 2048, "n_positions": 2048,
                     "vocab_size": 49280, "multi_query": True, "activation_function": "gelu_pytorch_tanh"}),
    ZooEntry("starcoder2-3b", "starcoder2", "hub", "bigcode/starcoder2-3b", 30, 24, params="3.0B",
             description="LayerNorm, plain MLP, biases, sliding window 4096, GQA (2 kv heads)",
             config={"model_type": "starcoder2", "num_hidden_layers": 30, "num_attention_heads": 24,
                     "num_key_value_heads": 2, "hidden_size": 3072, "intermediate_size": 12288, "vocab_size": 49152,
                     "max_position_embeddings": 16384, "sliding_window": 4096, "use_bias": True,
                     "rope_theta": 999999.4420358813, "hidden_act": "gelu_pytorch_tanh"}),
    ZooEntry("Minitron-4B", "nemotron", "hub", "nvidia/Minitron-4B-Base", 32, 24, params="4.2B",
             description="LayerNorm (1 + w), ReLU², partial rotary (50%), GQA (8 kv heads)",
             config={"model_type": "nemotron", "num_hidden_layers": 32, "num_attention_heads": 24,
                     "num_key_value_heads": 8, "hidden_size": 3072, "intermediate_size": 9216, "head_dim": 128,
                     "vocab_size": 256000, "max_position_embeddings": 4096, "partial_rotary_factor": 0.5,
                     "hidden_act": "relu2"}),
    ZooEntry("bloom-560m", "bloom", "hub", "bigscience/bloom-560m", 24, 16, params="560M",
             description="ALiBi, LayerNorm on the embeddings",
             config={"model_type": "bloom", "n_layer": 24, "n_head": 16, "hidden_size": 1024, "vocab_size": 250880}),
    ZooEntry("mpt-7b", "mpt", "hub", "mosaicml/mpt-7b", 32, 32, params="6.7B",
             description="ALiBi with MPT's slopes, LayerNorm without biases, no biases at all",
             config={"model_type": "mpt", "n_layers": 32, "n_heads": 32, "d_model": 4096, "vocab_size": 50432,
                     "max_seq_len": 2048, "attn_config": {"alibi": True, "alibi_bias_max": 8, "clip_qkv": None}}),
    ZooEntry("falcon-7b", "falcon", "hub", "tiiuae/falcon-7b", 32, 71, True, "7.2B",
             description="multi-query, attention and MLP in parallel on one norm, rotary",
             config={"model_type": "falcon", "num_hidden_layers": 32, "num_attention_heads": 71, "hidden_size": 4544,
                     "vocab_size": 65024, "multi_query": True, "parallel_attn": True, "alibi": False, "bias": False,
                     "new_decoder_architecture": False}),
    ZooEntry("falcon-rw-1b", "falcon", "hub", "tiiuae/falcon-rw-1b", 24, 32, params="1.3B",
             description="ALiBi (rounded to bfloat16 as transformers does), sequential blocks, biases",
             config={"model_type": "falcon", "num_hidden_layers": 24, "num_attention_heads": 32, "hidden_size": 2048,
                     "vocab_size": 50304, "multi_query": False, "parallel_attn": False, "alibi": True, "bias": True,
                     "new_decoder_architecture": False}),
    ZooEntry("gpt-oss-20b", "gpt_oss", "hub", "openai/gpt-oss-20b", 24, 64, params="21B",
             description="MoE MLP nodes: 32 experts, top 4, with biases and a clamped SwiGLU; attention sinks; "
                         "a sliding window every other layer; YaRN; GQA (8 kv heads)",
             config={"model_type": "gpt_oss", "num_hidden_layers": 24, "num_attention_heads": 64,
                     "num_key_value_heads": 8, "head_dim": 64, "hidden_size": 2880, "intermediate_size": 2880,
                     "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 201088, "sliding_window": 128,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
                     "attention_bias": True, "tie_word_embeddings": False,
                     "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                         "original_max_position_embeddings": 4096}}),
    ZooEntry("Mixtral-8x7B", "mixtral", "hub", "mistralai/Mixtral-8x7B-v0.1", 32, 32, params="47B",
             description="MoE MLP nodes: 8 experts, top 2; GQA (8 kv heads)",
             config={"model_type": "mixtral", "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "hidden_size": 4096, "intermediate_size": 14336, "vocab_size": 32000,
                     "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
                     "rope_theta": 1000000.0, "sliding_window": None}),
    ZooEntry("Qwen1.5-MoE-A2.7B", "qwen2_moe", "hub", "Qwen/Qwen1.5-MoE-A2.7B", 24, 16, params="14.3B",
             description="MoE MLP nodes: 60 experts, top 4, not renormalised, a gated shared expert",
             config={"model_type": "qwen2_moe", "num_hidden_layers": 24, "num_attention_heads": 16,
                     "num_key_value_heads": 16, "hidden_size": 2048, "intermediate_size": 5632,
                     "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
                     "num_experts_per_tok": 4, "norm_topk_prob": False, "vocab_size": 151936,
                     "max_position_embeddings": 8192, "rope_theta": 1000000.0, "use_sliding_window": False}),
    ZooEntry("Qwen3-30B-A3B", "qwen3_moe", "hub", "Qwen/Qwen3-30B-A3B-Base", 48, 32, params="30.5B",
             description="MoE MLP nodes: 128 experts, top 8; q/k norm; GQA (4 kv heads)",
             config={"model_type": "qwen3_moe", "num_hidden_layers": 48, "num_attention_heads": 32,
                     "num_key_value_heads": 4, "head_dim": 128, "hidden_size": 2048, "moe_intermediate_size": 768,
                     "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "vocab_size": 151936,
                     "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}),
    ZooEntry("toy-lm", "gpt2", "shipped", "toy-lm", 4, 4, params="0.9M",
             description="trained: word-level LM on the built-in string tasks, induction and filler"),
    ZooEntry("toy-induction", "llama", "shipped", "toy-induction", 2, 1, params="41k",
             description="trained: attention-only, previous-token head → induction head"),
    ZooEntry("tracr-reverse", "tracr", "tracr", "tracr-reverse", 4, 1, params="19k",
             description="tracr: make_reverse over {a, b, c}, length ≤ 5"),
    ZooEntry("tracr-xproportion", "tracr", "tracr", "tracr-xproportion", 2, 1, params="1.5k",
             description="tracr: make_frac_prevs(tokens == 'x'), length ≤ 5"),
]}


def tracr_meta(name: str) -> dict:
    """The exported tracr model's metadata: config, encodings, output values, residual labels, program."""
    return json.loads((SHIPPED / name / "tracr.json").read_text())


def is_cached(entry: ZooEntry) -> bool:
    """Whether the weights can be loaded without a network (shipped, or in the local Hugging Face cache)."""
    if entry.source != "hub":
        return (SHIPPED / entry.location).is_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(entry.location, "config.json"), str)
    except Exception:  # noqa: BLE001 — an unreadable cache means: not available offline
        return False


def lookup(name: str) -> ZooEntry | None:
    return ZOO.get(name)


def load_entry(entry: ZooEntry, *, dtype: torch.dtype, device: torch.device):
    from circuitfind.models.loading import _from_pretrained, from_hf, quiet_loading

    if entry.source == "tracr":
        from circuitfind.models.tracr import load_tracr
        return load_tracr(SHIPPED / entry.location, tracr_meta(entry.location), entry.name, dtype, device)
    if entry.source == "shipped":  # trained by the project's scripts, saved in Hugging Face format
        directory = SHIPPED / entry.location
        with quiet_loading():  # a megabyte from the package: the bar would only clutter the output
            hf, tokenizer = _from_pretrained(str(directory), None)
        model = from_hf(hf, tokenizer=tokenizer, name=entry.name, dtype=dtype, device=device)
        if (directory / "ground_truth.json").exists():
            truth = json.loads((directory / "ground_truth.json").read_text())
            model.ground_truth = {truth["task"]: truth["edges"]}
        return model
    hf, tokenizer = _from_pretrained(entry.location, None)
    return from_hf(hf, tokenizer=tokenizer, name=entry.name, dtype=dtype, device=device)


def ground_truth_summary(entry: ZooEntry) -> str:
    """'N edges (how)' for entries with a known circuit, '-' otherwise."""
    if entry.source == "tracr":  # derived from the program's dataflow (and the weights) when loaded
        model = load_entry(entry, dtype=torch.float32, device=torch.device("cpu"))
        return (f"{len(model.ground_truth[entry.name])} edges (compiled; "
                f"{len(model.ground_truth_weights[entry.name])} by weights)")
    path = SHIPPED / entry.location / "ground_truth.json"
    if entry.source == "shipped" and path.exists():
        return f"{len(json.loads(path.read_text())['edges'])} edges (trained)"
    return "-"
