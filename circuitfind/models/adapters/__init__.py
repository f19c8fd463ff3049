"""Adapters: one Hugging Face family each, mapped onto the canonical model.

An adapter is `convert(hf_model) -> (CanonicalConfig, flags, state, rotary)`: `flags` says which
biases exist, `state` holds the canonical parameters by name, `rotary` is (inv_freq, scaling), or
(inv_freq, scaling, local_inv_freq, local_scaling) where sliding-window layers rotate by frequencies
of their own (Gemma 3), or None. Config options an adapter does not understand raise
`UnsupportedModelError` naming the option (see `common.refuse`).
"""

from circuitfind.models.adapters import gemma, gpt2, gptj, llama, neox
from circuitfind.models.adapters.common import SUPPORTED

ADAPTERS = {"gpt2": gpt2.convert, "gpt_neox": neox.convert, "gptj": gptj.convert, "llama": llama.convert,
            "mistral": llama.convert, "qwen2": llama.convert, "qwen3": llama.convert, "phi3": llama.convert,
            "gemma": gemma.convert, "gemma2": gemma.convert, "gemma3_text": gemma.convert, "gemma3": gemma.convert}
assert set(ADAPTERS) == set(SUPPORTED)

__all__ = ["ADAPTERS", "SUPPORTED"]
