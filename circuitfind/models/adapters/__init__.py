"""Adapters: one Hugging Face family each, mapped onto the canonical model.

An adapter is `convert(hf_model) -> (CanonicalConfig, flags, state, rotary)`: `flags` says which
biases exist, `state` holds the canonical parameters by name, `rotary` is (inv_freq, scaling), or
(inv_freq, scaling, local_inv_freq, local_scaling) where sliding-window layers rotate by frequencies
of their own (Gemma 3), or None. Config options an adapter does not understand raise
`UnsupportedModelError` naming the option (see `common.refuse`).
"""

from circuitfind.models.adapters import bloom, cohere, falcon, gemma, gpt2, gptj, llama, neox, opt, phi, starcoder
from circuitfind.models.adapters.common import SUPPORTED

ADAPTERS = {"gpt2": gpt2.convert, "gpt_neox": neox.convert, "gptj": gptj.convert, "llama": llama.convert,
            "mistral": llama.convert, "qwen2": llama.convert, "qwen3": llama.convert, "phi3": llama.convert,
            "gemma": gemma.convert, "gemma2": gemma.convert, "gemma3_text": gemma.convert, "gemma3": gemma.convert,
            "opt": opt.convert, "gpt_neo": opt.convert,
            "phi": phi.convert, "persimmon": phi.convert, "stablelm": phi.convert,
            "olmo": llama.convert, "granite": llama.convert, "smollm3": llama.convert,
            "cohere": cohere.convert,
            "starcoder2": starcoder.convert, "nemotron": starcoder.convert,
            "gpt_bigcode": gpt2.convert,
            "bloom": bloom.convert, "falcon": falcon.convert,
            "mixtral": llama.convert, "qwen2_moe": llama.convert, "qwen3_moe": llama.convert,
            "cohere2": cohere.convert,
            "seed_oss": llama.convert, "internlm3": llama.convert, "iquestcoder": llama.convert,
            "mpt": bloom.convert, "granitemoe": llama.convert,
            "olmo2": llama.convert, "olmoe": llama.convert, "olmo3": llama.convert, "gpt_oss": llama.convert}
assert set(ADAPTERS) == set(SUPPORTED)


def parallel_of(config) -> bool:
    """Whether a Hugging Face config's blocks run attention and MLP on one residual (no weights needed)."""
    kind = getattr(config, "model_type", "")
    if kind in ("gptj", "phi", "cohere", "cohere2"):
        return True
    if kind == "falcon":
        return bool(config.parallel_attn or config.new_decoder_architecture)
    return bool(getattr(config, "use_parallel_residual", False))


__all__ = ["ADAPTERS", "SUPPORTED", "parallel_of"]
