"""For a `model_type` circuitfind has no adapter for: the supported form closest to it and what an
adapter would have to model, so an error can say both (`unsupported`)."""

from __future__ import annotations

import difflib

from circuitfind.models.adapters.common import SUPPORTED

# model_type → (closest supported model_type, what its adapter would need to model)
NEAREST: dict[str, tuple[str, str]] = {
    "dbrx": ("mixtral", "DBRX's fused expert layout, clip_qkv and LayerNorm without biases"),
    "phimoe": ("mixtral", "sparsemixer routing (a jittered, masked top-2 rather than a softmax top-k), LayerNorm"),
    "deepseek_v2": ("qwen2_moe", "multi-head latent attention (low-rank compressed keys and values, a decoupled "
                                 "rotary key) and grouped top-k routing"),
    "deepseek_v3": ("qwen2_moe", "multi-head latent attention and sigmoid-scored, group-limited routing with a bias"),
    "llama4": ("llama", "chunked attention, NoPE layers with temperature-scaled queries, and MoE layers"),
    "glm": ("phi", "partial rotary over interleaved pairs with GLM's layout of fused gate/up weights"),
    "codegen": ("gptj", "CodeGen's fused q/v/k projection laid out over mp_num shards"),
    "gemma3n": ("gemma3_text", "per-layer input embeddings, AltUp and Laurel blocks, activation sparsity"),
    "recurrent_gemma": ("gemma", "recurrent (RG-LRU) blocks, which have no attention heads"),
    "mamba": ("gpt2", "state-space layers, which have no attention heads: not a transformer's graph"),
    "mamba2": ("gpt2", "state-space layers, which have no attention heads: not a transformer's graph"),
    "jamba": ("mixtral", "Mamba layers between the attention layers: no heads there"),
    "falcon_h1": ("falcon", "Mamba-2 mixers in parallel with attention"),
    "falcon_mamba": ("falcon", "state-space layers, which have no attention heads"),
    "bert": ("gpt2", "a bidirectional encoder with a masked-LM head: not a causal LM"),
    "t5": ("gpt2", "an encoder-decoder with cross-attention and relative position buckets: not a causal LM"),
}


def unsupported(model_type, where: str) -> str:
    """The message for a model whose model_type has no adapter: the closest form and what it would need."""
    kind = str(model_type)
    if kind in NEAREST:
        near, need = NEAREST[kind]
        hint = f"the closest supported form is {near!r}; an adapter for it would need to model {need}"
    else:
        close = difflib.get_close_matches(kind, SUPPORTED, n=1, cutoff=0.5)
        hint = (f"the closest supported name is {close[0]!r}, if it is that form; compare its config.json fields"
                if close else "no supported form is close to it by name")
    return (f"{where} is a {model_type!r} model, which circuitfind has no adapter for: {hint}; supported: "
            f"{', '.join(SUPPORTED)}. Open an issue with the model's config.json to ask for it.")
