"""Interventions during generation: ablate (zero or mean), scale, or steer any node or neuron while
the model generates, and compare with the unmodified generation.

    cf.inspect.generate(model, "When Mary and John went", 10,
                        [Intervention("a1.h2", "zero"), Intervention("m0.n17", "scale", 3.0)])

Nodes: `a{l}.h{h}` (the head's output, at hook_result), `m{l}` (the MLP's output beyond its constant
output bias — the graph's node, so zeroing it is the engine's zero ablation of that node), `m{l}.n{i}`
(one MLP neuron, after the activation), `resid:{l}` (the residual stream entering layer l; for
steering). Generation is greedy (or sampled with a seed) and recomputes the prompt each step, so an
intervention applies at every position, old and new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, count
from circuitfind.inspect.common import parse_node, prompts_of, resid_layer, text_after, tokens_of

KINDS = ("zero", "mean", "scale", "steer")


@dataclass(frozen=True)
class Intervention:
    """A change to one node during generation: a head (a3.h5), an MLP (m2), a neuron (m2.n17) or the
    residual stream (resid:4) is zeroed, replaced by its mean, scaled, or steered by a vector."""

    node: str
    kind: str  # zero | mean | scale | steer
    value: object = None  # scale: a factor; steer: a vector [d_model]; mean: the mean activation (see `mean_of`)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"intervention kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind in ("scale", "steer", "mean") and self.value is None:
            needed = {"scale": "a factor", "steer": "a vector", "mean": "mean_of(...)"}[self.kind]
            raise ConfigError(f"a {self.kind} intervention needs value= ({needed})")


def _site(model, node: str) -> tuple[str, tuple, Tensor | None]:
    """Hook point, index into its activation, and the constant the node does not own (an MLP's
    output bias) of a node."""
    if node.startswith("resid:"):
        layer = resid_layer(model, node, final=False)
        return f"blocks.{layer}.hook_resid_pre", (Ellipsis,), None
    kind, layer, idx = parse_node(model, node)
    if kind == "head":
        return f"blocks.{layer}.attn.hook_result", (Ellipsis, idx, slice(None)), None  # [b, p, head, d_model]
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_out", (Ellipsis,), model.block_bias(layer, "mlp")
    if kind == "neuron":
        return f"blocks.{layer}.mlp.hook_post", (Ellipsis, idx), None
    raise ConfigError("the input embeddings cannot be intervened on here; steer resid:0 instead")


def mean_of(model, node: str, prompts) -> Tensor:
    """The mean activation of a node over prompts (all real positions), for `kind="mean"`."""
    name, idx, _ = _site(model, node)
    tokens, mask = prompts_of(model, prompts)
    _, cache = model.run_with_cache(tokens, mask, names_filter=[name])
    act = cache[name][idx]  # [b, p, ...]
    w = mask.to(act.dtype).view(*mask.shape, *([1] * (act.ndim - 2)))
    return (act * w).sum((0, 1)) / w.sum((0, 1))


def _hook(idx, iv: Intervention, constant: Tensor | None = None):
    base = 0 if constant is None else constant.detach()

    def fn(x, name):
        x = x.clone()
        if iv.kind == "zero":
            x[idx] = base
        elif iv.kind == "mean":
            x[idx] = torch.as_tensor(iv.value, dtype=x.dtype)
        elif iv.kind == "scale":
            x[idx] = (x[idx] - base) * float(iv.value) + base
        else:
            x[idx] = x[idx] + torch.as_tensor(iv.value, dtype=x.dtype)
        return x
    return fn


def hooks_for(model, interventions) -> list:
    """(hook point, function) pairs that apply the interventions: for `model.hooks(...)`."""
    out = []
    for iv in interventions:
        name, idx, constant = _site(model, iv.node)
        out.append((name, _hook(idx, iv, constant)))
    return out


@torch.no_grad()
def generate(model, prompt, max_new_tokens: int = 10, interventions=(), *, temperature: float = 0.0,
             seed: int = 0) -> str | list[int]:
    """Continue the prompt under the interventions; text for models with a tokenizer, else token ids."""
    return continue_with_hooks(model, tokens_of(model, prompt), max_new_tokens, hooks_for(model, interventions),
                               temperature=temperature, seed=seed)


@torch.no_grad()
def continue_with_hooks(model, tokens: Tensor, max_new_tokens: int, hooks, *, temperature: float = 0.0,
                        seed: int = 0) -> str | list[int]:
    """Generate from tokens [1, pos] with `model.hooks(hooks)` active at every step (the whole
    sequence is recomputed each step, so a hook sees old and new positions alike)."""
    count(max_new_tokens, "max_new_tokens")
    gen = torch.Generator().manual_seed(seed)
    start = tokens.shape[-1]
    with model.hooks(hooks):
        for _ in range(max_new_tokens):
            if tokens.shape[-1] >= model.cfg.n_ctx:
                break
            logits = model(tokens)[0, -1]
            if temperature > 0:
                nxt = torch.multinomial((logits / temperature).softmax(-1).float(), 1, generator=gen)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt[None].to(tokens)], dim=-1)
    new = tokens[0, start:].tolist()
    return text_after(model, tokens[0, :start].tolist(), new) if model.tokenizer is not None else new


def compare(model, prompt, interventions, max_new_tokens: int = 10, **kw) -> dict:
    """The generation with and without the interventions."""
    return {"baseline": generate(model, prompt, max_new_tokens, (), **kw),
            "intervened": generate(model, prompt, max_new_tokens, interventions, **kw)}
