"""Patchscopes (Ghandeharioun et al. 2024): read a hidden representation by patching it into
another prompt and letting the model say what it is.

A vector [d_model] of the source prompt at position i (through an optional mapping f) replaces the
residual stream of the target prompt at position i* and a state ℓ*; the target then generates. The
source is a residual state or a node's output:

    3 (an int)        the residual stream after layer 3 (`hook_resid_post`)
    "resid:L"         the stream entering layer L (L = 0..n_layers; "resid:0", or "input", is the embeddings,
                      "resid:{n_layers}" the stream entering the final norm)
    "resid_mid:L"     the stream after layer L's attention, before its MLP (sequential blocks only)
    "a3.h5", "m2"     a head's output (`hook_result`) or an MLP's (`hook_mlp_out`, its output bias included)

A neuron (m2.n17) is one number per token, not a hidden state, and is refused. By default the target
state is where the source sits in the stream: the same residual state, or for a head the state after
its layer's attention and for an MLP the state after its layer. The default target is the identity
prompt "cat -> cat; 1135 -> 1135; hello -> hello; ?" with the patch at its last token, which makes the
model decode the representation as a word. Source and target may be different models of the same width
(e.g. two sizes of one family with equal d_model, or a model and its fine-tuned checkpoint).
"""

from __future__ import annotations

import torch

from circuitfind.errors import ConfigError
from circuitfind.inspect.common import parse_node, position_in, resid_layer, tokens_of
from circuitfind.inspect.interventions import continue_with_hooks

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"


def _stream(model, layer: int, where: str) -> str:
    """The hook of the residual stream entering (`pre`) layer `layer` (n_layers: entering the final norm), or
    after its attention (`mid`)."""
    L = model.cfg.n_layers
    if where == "mid":
        if model.cfg.parallel:
            raise ConfigError(f"{model.name!r} runs attention and MLP in parallel: there is no state between them "
                              f"(resid_mid:{layer}); use resid:{layer} or resid:{layer + 1}")
        return f"blocks.{layer}.hook_resid_mid"
    return f"blocks.{layer}.hook_resid_pre" if layer < L else f"blocks.{L - 1}.hook_resid_post"


def _residual(model, state, what: str) -> str | None:
    """The hook of a residual state named as an int (after that layer), "input", "resid:L" or "resid_mid:L"; None
    if `state` names no residual state."""
    L = model.cfg.n_layers
    if isinstance(state, bool) or not isinstance(state, (int, str)):
        raise ConfigError(f"{what} is a layer or a name (resid:L, resid_mid:L, a1.h2, m0); got {state!r}")
    if isinstance(state, int):
        if not 0 <= state < L:
            raise ConfigError(f"{what} must be in 0..{L - 1} (the stream after that layer), got {state}")
        return f"blocks.{state}.hook_resid_post"
    if state == "input":
        return _stream(model, 0, "pre")
    if state.startswith("resid:"):
        return _stream(model, resid_layer(model, state, final=True), "pre")
    if state.startswith("resid_mid:"):
        text = state.partition(":")[2]
        if not text.isdigit() or not 0 <= int(text) < L:
            raise ConfigError(f"{state!r}: the state after a layer's attention is resid_mid:L with L in 0..{L - 1}")
        return _stream(model, int(text), "mid")
    return None


def source_site(model, source) -> tuple[str, tuple, str]:
    """(hook, index into its activation, the hook of the residual state it lands in) of a Patchscope source."""
    resid = _residual(model, source, "source")
    if resid is not None:
        return resid, (Ellipsis, slice(None)), resid
    kind, layer, idx = parse_node(model, source)
    if kind == "head":
        lands = _stream(model, layer + 1, "pre") if model.cfg.parallel else _stream(model, layer, "mid")
        return f"blocks.{layer}.attn.hook_result", (Ellipsis, idx, slice(None)), lands
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_out", (Ellipsis, slice(None)), _stream(model, layer + 1, "pre")
    if kind == "neuron":
        raise ConfigError(f"{source!r} is a neuron: one number per token, not a hidden state of d_model numbers, so "
                          f"it cannot be a Patchscope's source; use its MLP (m{layer}) or a residual state")
    return _stream(model, 0, "pre"), (Ellipsis, slice(None)), _stream(model, 0, "pre")  # input


@torch.no_grad()
def hidden(model, prompt, source=0, position: int = -1) -> torch.Tensor:
    """The source's vector at `position` (a layer: the residual stream after it; or a name, see the module):
    [d_model]."""
    name, idx, _ = source_site(model, source)
    tokens = tokens_of(model, prompt)
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name][idx][0, position_in(position, tokens.shape[-1], "source_position")]


@torch.no_grad()
def patchscope(source_model, source_prompt, source_layer: int | str, *, source_position: int = -1,
               target_model=None, target_prompt=IDENTITY_PROMPT, target_layer: int | str | None = None,
               target_position: int = -1, mapping=None, max_new_tokens: int = 5):
    """Generate from the target prompt with the source representation patched in; returns the new
    text (or token ids for a model without a tokenizer). source_layer: a layer (the stream after it) or a
    state or node name (resid:L, resid_mid:L, input, a3.h5, m2); target_layer: a layer or a residual state's
    name (default: where the source lands in the stream)."""
    target_model = target_model or source_model
    _, _, lands = source_site(source_model, source_layer)
    h = hidden(source_model, source_prompt, source_layer, source_position)
    if mapping is not None:
        h = mapping(h)
    if h.shape[-1] != target_model.cfg.d_model:
        raise ConfigError(f"the source representation has width {h.shape[-1]} but the target model's d_model is "
                          f"{target_model.cfg.d_model}; pass mapping= to map between them")
    if target_layer is None:
        site = lands if target_model is source_model else _same_state(source_model, target_model, lands)
    else:
        site = _residual(target_model, target_layer, "target_layer")
        if site is None:
            raise ConfigError(f"target_layer {target_layer!r}: a Patchscope writes into the residual stream; name a "
                              "state (a layer, resid:L, resid_mid:L or input)")
    tokens = tokens_of(target_model, target_prompt)
    pos = position_in(target_position, tokens.shape[-1], "target_position")  # fixed as the generation grows

    def patch(x, name):
        x = x.clone()
        x[:, pos] = h.to(x.dtype)
        return x

    return continue_with_hooks(target_model, tokens, max_new_tokens, {site: patch})


def _same_state(source_model, target_model, hook: str) -> str:
    """The source model's residual hook in the target model (which must have it)."""
    if hook not in target_model.hook_names():
        raise ConfigError(f"the target model has no {hook} (it has {target_model.cfg.n_layers} layers); "
                          "give target_layer=")
    return hook
