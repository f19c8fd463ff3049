"""Adapters: one Hugging Face family each, mapped onto the canonical model.

An adapter is `convert(hf_model) -> (CanonicalConfig, flags, state, rotary)`: `flags` says which
biases exist, `state` holds the canonical parameters by name, `rotary` is (inv_freq, scaling) or
None. Config options an adapter does not understand raise `UnsupportedModelError` naming the
option (see `common.refuse`).
"""

from circuitfind.models.adapters import gemma2, gpt2, llama, neox
from circuitfind.models.adapters.common import SUPPORTED

ADAPTERS = {"gpt2": gpt2.convert, "gpt_neox": neox.convert, "llama": llama.convert, "mistral": llama.convert,
            "qwen2": llama.convert, "qwen3": llama.convert, "gemma2": gemma2.convert}
assert set(ADAPTERS) == set(SUPPORTED)

__all__ = ["ADAPTERS", "SUPPORTED"]
