""""Why A and not B": for one prompt and two candidate next tokens, how much each node contributes
to logit(A) − logit(B), as Transformer Debugger ranks them.

- direct effect: the node's output projected on the difference direction W_U[:, A] − W_U[:, B],
  through the final norm with its scale frozen (`lens.direct_logits`). Over all nodes, plus the
  constant terms, it sums to the logit difference exactly.
- total effect: the logit difference lost when the node is ablated (all its out-edges patched
  with the engine's zero ablation, or its mean ablation over `reference` prompts), by the engine's masked
  forward — one batched pass for every node at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.patching import clean_logits, node_effects
from circuitfind.types import Inputs
from circuitfind.errors import ConfigError
from circuitfind.inspect.common import position_in, prompts_of, token_id, tokens_of
from circuitfind.inspect.lens import direct_logits


@dataclass
class Contribution:
    node: str
    direct: float
    total: float


@dataclass
class Contrast:
    a: int
    b: int
    logit_diff: float  # logit(A) − logit(B) of the full model
    constant: float  # the part of the direct decomposition no node writes (biases)
    nodes: list[Contribution]  # ranked by |total effect|

    def top(self, n: int = 10) -> list[Contribution]:
        return self.nodes[:n]


@torch.no_grad()
def why(model, prompt, a=None, b=None, *, ablation: str = "zero", reference=None, position: int = -1) -> Contrast:
    """Attribute logit(a) − logit(b) at `position` of one prompt to every node.

    a, b: tokens (text of one token, or ids). Left out, a is the model's top prediction there and b
    its best other one: why the model predicts what it does over its runner-up.
    """
    if ablation not in ("zero", "mean"):
        raise ConfigError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    if ablation == "mean" and reference is None:
        raise ConfigError("mean ablation needs reference= prompts to average over")
    tokens = tokens_of(model, prompt)
    if tokens.shape[0] != 1 or tokens.shape[-1] == 0:
        raise ConfigError("why() explains one non-empty prompt")
    pos = position_in(position, tokens.shape[-1])
    inputs = Inputs(tokens, torch.ones_like(tokens), torch.tensor([pos]))
    clean = clean_logits(model, inputs)  # [1, vocab]
    ia, ib = (None if t is None else token_id(model, t) for t in (a, b))
    ranked = clean[0].topk(3).indices.tolist()  # the model's own top predictions fill in what is left out
    ia = ia if ia is not None else next(t for t in ranked if t != ib)
    ib = ib if ib is not None else next(t for t in ranked if t != ia)
    if ia == ib:
        raise ConfigError("A and B must be different tokens")
    per_node, const = direct_logits(model, inputs)  # [src, 1, vocab], [1, vocab]
    direct = (per_node[:, 0, ia] - per_node[:, 0, ib]).tolist()
    g = model.graph
    ref = Inputs.of(*prompts_of(model, reference)) if ablation == "mean" else None
    ablated = ablated_outputs(model, ablation, inputs, reference=ref)  # [src, 1, 1, d]
    def contrast(logits):  # [k, 1, vocab] → [k]
        return logits[:, 0, ia] - logits[:, 0, ib]

    # a node's total effect: what ablating all its out-edges takes away from the contrast
    total = (-node_effects(model, inputs, ablated, contrast)).tolist()
    logit_diff = float(contrast(clean[None])[0])
    nodes = [Contribution(n, d, t) for n, d, t in zip(g.senders, direct, total)]
    nodes.sort(key=lambda c: -abs(c.total))
    return Contrast(ia, ib, logit_diff, float(const[0, ia] - const[0, ib]), nodes)
