"""Top-activating examples: where in a dataset a neuron, a head, an MLP or an SAE latent fires most.

Activation of a node at a token: a neuron's post-activation value (`m{l}.n{i}`), the norm of a
head's output (`a{l}.h{h}`, at hook_result) or of an MLP's output (`m{l}`), or an SAE latent
(`sae=`, `latent=`). Padding positions never count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitfind.errors import ConfigError, count
from circuitfind.inspect.common import parse_node, prompts_of, text_after, token_str


@dataclass
class Activation:
    example: int
    position: int
    value: float
    token: str
    context: str  # a few tokens before, the token in [brackets], one after


@torch.no_grad()
def top_activations(model, data, node: str | None = None, *, sae=None, latent: int | None = None, k: int = 10,
                    context: int = 6) -> list[Activation]:
    """The k strongest activations of `node` (or of SAE `latent`) over data (texts, token lists or a Task)."""
    count(k, "k")
    tokens, mask = prompts_of(model, data)
    if sae is not None:
        latent = count(latent, "latent", most=sae.n_latents - 1)
        _, cache = model.run_with_cache(tokens, mask, names_filter=[sae.hook])
        act = sae.encode(cache[sae.hook])[..., latent]
    else:
        if node is None:
            raise ConfigError("give node= (a3.h5, m2, m2.n17) or sae= and latent=")
        kind, layer, idx = parse_node(model, node)
        if kind == "input":
            raise ConfigError("the input has no activation to rank")
        name = {"head": f"blocks.{layer}.attn.hook_result", "mlp": f"blocks.{layer}.hook_mlp_out",
                "neuron": f"blocks.{layer}.mlp.hook_post"}[kind]
        _, cache = model.run_with_cache(tokens, mask, names_filter=[name])
        x = cache[name]
        act = x[..., idx, :].norm(dim=-1) if kind == "head" else x.norm(dim=-1) if kind == "mlp" else x[..., idx]
    act = act.masked_fill(mask == 0, float("-inf"))
    flat = act.flatten().topk(min(k, int(mask.sum())))
    out = []
    for v, i in zip(flat.values.tolist(), flat.indices.tolist()):
        b, p = divmod(i, act.shape[1])
        lo, hi = max(0, p - context), min(int(mask[b].sum()), p + 2)
        around = _context(model, tokens[b, lo:hi].tolist(), p - lo)
        out.append(Activation(b, p, v, token_str(model, tokens[b, p]), around))
    return out


def _context(model, ids: list[int], at: int) -> str:
    """The tokens ids as text with the one at index `at` in brackets ("a drink [to] the")."""
    if model.tokenizer is None:  # token-level models: names side by side
        names = [token_str(model, t) for t in ids]
        names[at] = f"[{names[at]}]"
        return " ".join(names)
    left = model.tokenizer.decode(ids[:at])
    token = text_after(model, ids[:at], [ids[at]])
    space = token[: len(token) - len(token.lstrip())]
    return f"{left}{space}[{token.lstrip()}]{text_after(model, ids[: at + 1], ids[at + 1:])}"
