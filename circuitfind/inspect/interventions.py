"""Interventions during generation: ablate (zero or mean), scale, or steer any node or neuron while
the model generates, and compare with the unmodified generation.

    cf.inspect.generate(model, "When Mary and John went", 10,
                        [Intervention("a1.h2", "zero"), Intervention("m0.n17", "scale", 3.0)])

Nodes: `a{l}.h{h}` (the head's output, at hook_result), `m{l}` (the MLP's output beyond its constant
output bias — the graph's node, so zeroing it is the engine's zero ablation of that node), `m{l}.n{i}`
(one MLP neuron, after the activation), `resid:{l}` (the residual stream entering layer l; for
steering), `sae:{i}` (latent i of an SAE given as `sae=`: its activation f_i is changed to f_i' and the stream at
the SAE's hook moves by (f_i' − f_i) · W_dec[i], the reconstruction error left as it is). A steer adds its value:
a vector [d_model] to a head, an MLP or the residual stream (`token_direction` gives the one toward a token), a
number to a neuron's or a latent's activation. Generation is greedy (or sampled with a seed) and recomputes the
prompt each step, so an intervention applies at every position, old and new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, count
from circuitfind.inspect.common import parse_node, prompts_of, resid_layer, text_after, token_id, tokens_of

KINDS = ("zero", "mean", "scale", "steer")


@dataclass(frozen=True)
class Intervention:
    """A change to one node during generation: a head (a3.h5), an MLP (m2), a neuron (m2.n17), the
    residual stream (resid:4) or an SAE latent (sae:12, with sae=) is zeroed, replaced by its mean, scaled,
    or steered (a vector [d_model] added to a head, an MLP or the stream; a number to a neuron or a latent)."""

    node: str
    kind: str  # zero | mean | scale | steer
    value: object = None  # scale: a factor; steer: a vector [d_model] or a number; mean: see `mean_of`
    sae: object = None  # the SAE whose latent `sae:{i}` names

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"intervention kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind in ("scale", "steer", "mean") and self.value is None:
            needed = {"scale": "a factor", "steer": "a vector or a number", "mean": "mean_of(...)"}[self.kind]
            raise ConfigError(f"a {self.kind} intervention needs value= ({needed})")
        if self.node.startswith("sae:") and self.sae is None:
            raise ConfigError(f"{self.node!r} is an SAE latent: give the SAE as sae= (ci.SAE.load(path, model=model))")


def token_direction(model, toward, away=None) -> Tensor:
    """The unit vector [d_model] in the residual stream that raises logit(toward) − logit(away) (or logit(toward)
    alone) most per unit length, with the final norm's scale frozen: W_U[:, toward] − W_U[:, away] through the
    norm's linear part (its weight; a LayerNorm also centres). A steer's value is a multiple of it."""
    wide = torch.promote_types(model.W_U.dtype, torch.float32)
    i = token_id(model, toward)
    d = model.W_U[:, i].to(wide)
    if away is not None:
        j = token_id(model, away)
        if j == i:
            raise ConfigError(f"steering toward {toward!r} and away from {away!r}: they are the same token")
        d = d - model.W_U[:, j].to(wide)
    norm = model.ln_final
    if norm.kind == "layernorm":
        d = d * norm.w.to(wide)
        d = d - d.mean()
    elif norm.kind == "rmsnorm":
        d = d * (norm.offset + norm.w.to(wide))
    length = d.norm()
    if not length > 0:
        raise ConfigError(f"the unembedding gives {toward!r} no direction of its own in the residual stream")
    return (d / length).to(model.dtype)


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


def _latent(iv: Intervention) -> int:
    text = iv.node[len("sae:"):]
    if not text.isdigit():
        raise ConfigError(f"{iv.node!r}: an SAE latent is named sae:i with i in 0..{iv.sae.n_latents - 1}")
    return count(int(text), f"the SAE latent of {iv.node!r}", most=iv.sae.n_latents - 1)


def _value(model, iv: Intervention, number: bool):
    """The factor, mean or steer of iv, checked: finite, and a number where the site is one number per token
    (a neuron, a latent; and any scale), a vector [d_model] where a steer moves a vector."""
    if iv.kind == "zero":
        return None
    value = torch.as_tensor(iv.value, dtype=torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"{iv.node} {iv.kind}: the value must be finite; got {iv.value!r}")
    if iv.kind == "scale" or (number and iv.kind == "steer"):
        if value.ndim:
            raise ConfigError(f"{iv.node} {iv.kind}: the value is a number here; got shape {tuple(value.shape)}")
    elif iv.kind == "steer" and tuple(value.shape) != (model.cfg.d_model,):
        raise ConfigError(f"steering {iv.node} adds a vector of d_model = {model.cfg.d_model}; got shape "
                          f"{tuple(value.shape)} (token_direction(model, token) gives one)")
    return value


def _sae_hook(iv: Intervention, latent: int, value):
    sae = iv.sae

    def fn(x, name):
        f = sae.encode(x)[..., latent]  # [b, p]
        new = {"zero": lambda: torch.zeros_like(f), "mean": lambda: torch.full_like(f, float(value)),
               "scale": lambda: f * float(value), "steer": lambda: f + float(value)}[iv.kind]()
        return x + ((new - f)[..., None] * sae.W_dec[latent].to(f.device)).to(x.dtype)
    return fn


def mean_of(model, node: str, prompts, sae=None) -> Tensor:
    """The mean activation of a node (or of SAE latent `sae:i`, with sae=) over prompts (all real positions),
    for `kind="mean"`."""
    if node.startswith("sae:"):
        latent = _latent(Intervention(node, "zero", sae=sae))
        tokens, mask = prompts_of(model, prompts)
        _, cache = model.run_with_cache(tokens, mask, names_filter=[sae.hook])
        act = sae.encode(cache[sae.hook])[..., latent]
        return (act * mask).sum() / mask.sum()
    name, idx, _ = _site(model, node)
    tokens, mask = prompts_of(model, prompts)
    _, cache = model.run_with_cache(tokens, mask, names_filter=[name])
    act = cache[name][idx]  # [b, p, ...]
    w = mask.to(act.dtype).view(*mask.shape, *([1] * (act.ndim - 2)))
    return (act * w).sum((0, 1)) / w.sum((0, 1))


def _hook(idx, iv: Intervention, value, constant: Tensor | None = None):
    base = 0 if constant is None else constant.detach()

    def fn(x, name):
        x = x.clone()
        if iv.kind == "zero":
            x[idx] = base
        elif iv.kind == "mean":
            x[idx] = value.to(x.device, x.dtype)
        elif iv.kind == "scale":
            x[idx] = (x[idx] - base) * float(value) + base
        else:
            x[idx] = x[idx] + value.to(x.device, x.dtype)
        return x
    return fn


def hooks_for(model, interventions) -> list:
    """(hook point, function) pairs that apply the interventions: for `model.hooks(...)`."""
    out = []
    for iv in interventions:
        if iv.node.startswith("sae:"):
            iv.sae.check(model)
            out.append((iv.sae.hook, _sae_hook(iv, _latent(iv), _value(model, iv, number=True))))
            continue
        name, idx, constant = _site(model, iv.node)
        number = name.endswith("mlp.hook_post")  # a neuron: one number per token
        value = _value(model, iv, number) if iv.kind != "mean" else torch.as_tensor(iv.value)
        out.append((name, _hook(idx, iv, value, constant)))
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
