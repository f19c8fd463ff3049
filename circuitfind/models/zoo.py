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
        return load_tracr(SHIPPED / entry.location, entry.name, dtype, device)
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
