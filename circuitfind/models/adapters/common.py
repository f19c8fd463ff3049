"""Helpers every adapter uses: refusing unknown quirks, weight layout, rotary frequencies."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from circuitfind.errors import UnsupportedModelError

SUPPORTED = ("gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text",
             "gemma3", "opt", "gpt_neo", "phi", "persimmon", "stablelm", "olmo", "granite",
             "smollm3", "cohere", "starcoder2", "nemotron",
             "gpt_bigcode", "bloom", "falcon", "mixtral", "qwen2_moe",
             "qwen3_moe", "cohere2", "seed_oss",
             "internlm3", "iquestcoder", "mpt", "granitemoe",
             "olmo2", "olmoe", "olmo3", "gpt_oss")


def refuse(config, field: str, ok: Callable[[object], bool], why: str = "") -> None:
    """Raise UnsupportedModelError if `config.field` is set to something the adapter cannot model."""
    value = getattr(config, field, None)
    if value is not None and not ok(value):
        raise UnsupportedModelError(
            f"{config.model_type} config has {field}={value!r}, which circuitfind does not model"
            f"{': ' + why if why else ''}. Supported families: {', '.join(SUPPORTED)}; "
            "open an issue with the config if you need it.")


def linear_t(linear) -> Tensor:
    """A torch.nn.Linear weight [out, in] → canonical layout [in, out]."""
    return linear.weight.detach().t().contiguous()


def rotary_of(rotary_emb, config, layer_type: str | None = None) -> tuple[Tensor, float]:
    """inv_freq and attention scaling from a Hugging Face rotary module (all static RoPE types); for
    a module holding one set per layer type (Gemma 3: `{layer_type}_inv_freq`...), those of `layer_type`."""
    if layer_type is None:
        rope_type, prefix = getattr(rotary_emb, "rope_type", "default"), ""
    else:
        rope_type, prefix = rotary_emb.rope_type[layer_type], f"{layer_type}_"
    if "dynamic" in str(rope_type) or rope_type == "longrope":
        raise UnsupportedModelError(
            f"{config.model_type} uses rope_type={rope_type!r}, whose frequencies change with the "
            "sequence length; circuitfind supports default, linear, llama3 and yarn rotary scaling")
    return (getattr(rotary_emb, prefix + "original_inv_freq").detach().clone().float(),
            float(getattr(rotary_emb, prefix + "attention_scaling")))


def layer_types(config) -> tuple[int, ...]:
    """Indices of the sliding-window layers, from `config.layer_types` where the family has it."""
    types = getattr(config, "layer_types", None) or ()
    return tuple(i for i, t in enumerate(types) if t == "sliding_attention")




def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's head slopes (Press et al. 2022): 2^(-8i/n) for i = 1..n where n is a power of two; otherwise
    those of the largest power of two below n, then every other slope of twice that many."""
    import math

    import torch

    def powers(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    base = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(powers(base) + powers(2 * base)[0::2][: n_heads - base])
