"""Patchscopes (Ghandeharioun et al. 2024): read a hidden representation by patching it into
another prompt and letting the model say what it is.

The residual stream after layer ℓ at position i of the source prompt (through an optional mapping
f) replaces the residual stream after layer ℓ* at position i* of the target prompt; the target then
generates. The default target is the identity prompt "cat -> cat; 1135 -> 1135; hello -> hello; ?"
with the patch at its last token, which makes the model decode the representation as a word. Source
and target may be different models of the same width (e.g. two sizes of one family with equal
d_model, or a model and its fine-tuned checkpoint).
"""

from __future__ import annotations

import torch

from circuitfind.errors import ConfigError
from circuitfind.inspect.common import position_in, tokens_of
from circuitfind.inspect.interventions import continue_with_hooks

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"


@torch.no_grad()
def hidden(model, prompt, layer: int, position: int = -1) -> torch.Tensor:
    """The residual stream after `layer` at `position`: [d_model]."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ConfigError(f"layer must be in 0..{model.cfg.n_layers - 1}, got {layer}")
    tokens = tokens_of(model, prompt)
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name][0, position_in(position, tokens.shape[-1], "source_position")]


@torch.no_grad()
def patchscope(source_model, source_prompt, source_layer: int, *, source_position: int = -1, target_model=None,
               target_prompt=IDENTITY_PROMPT, target_layer: int | None = None, target_position: int = -1,
               mapping=None, max_new_tokens: int = 5):
    """Generate from the target prompt with the source representation patched in; returns the new
    text (or token ids for a model without a tokenizer)."""
    target_model = target_model or source_model
    target_layer = source_layer if target_layer is None else target_layer
    h = hidden(source_model, source_prompt, source_layer, source_position)
    if mapping is not None:
        h = mapping(h)
    if h.shape[-1] != target_model.cfg.d_model:
        raise ConfigError(f"the source representation has width {h.shape[-1]} but the target model's d_model is "
                          f"{target_model.cfg.d_model}; pass mapping= to map between them")
    if not 0 <= target_layer < target_model.cfg.n_layers:
        raise ConfigError(f"target_layer must be in 0..{target_model.cfg.n_layers - 1}")
    tokens = tokens_of(target_model, target_prompt)
    pos = position_in(target_position, tokens.shape[-1], "target_position")  # fixed as the generation grows

    def patch(x, name):
        x = x.clone()
        x[:, pos] = h.to(x.dtype)
        return x

    return continue_with_hooks(target_model, tokens, max_new_tokens,
                               {f"blocks.{target_layer}.hook_resid_post": patch})
