"""Vocabulary projection: what each node writes, read through the final norm and the unembedding.

A node's direct logits are its output at the answer position, normalised with the statistics of the
whole final residual stream of that run (the norm's scale is frozen, so the map is linear) and
multiplied by W_U. Summed over all nodes, plus the constant terms (block biases, the final norm's
bias and b_U), they give the model's logits exactly — before any final soft-capping (Gemma 2), which
is not linear and is left out, as the LLM Transparency Tool and TransformerLens do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.engine.patching import sender_outputs
from circuitfind.types import Inputs
from circuitfind.errors import ConfigError, count
from circuitfind.inspect.common import ranked_tokens, token_str


def _final_residual(model, inputs: Inputs) -> Tensor:
    """The residual stream entering the final norm, at the answer positions: [batch, d_model]."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(inputs.tokens, inputs.attention_mask, names_filter=[name])
    return cache[name][torch.arange(inputs.batch), inputs.answer_pos]


def _frozen_norm(model, resid: Tensor, x: Tensor) -> Tensor:
    """The final norm's linear part applied to x [..., batch, d], with resid's [batch, d] statistics."""
    norm = model.ln_final
    if norm.kind == "none":
        return x
    if norm.kind == "layernorm":
        sigma = (resid.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        return (x - x.mean(-1, keepdim=True)) / sigma * norm.w
    rms = (resid.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return x / rms * (norm.offset + norm.w)


def _normed_parts(model, inputs: Inputs) -> tuple[Tensor, Tensor, Tensor]:
    """(each node's output through the frozen final norm [src, batch, d], the same for what no node
    writes [batch, d], the final residual [batch, d]) at the answer positions."""
    resid = _final_residual(model, inputs)  # [batch, d]
    outs = sender_outputs(model, inputs)[:, torch.arange(inputs.batch), inputs.answer_pos]  # [src, batch, d]
    rest = resid - outs.sum(0)  # block biases: what no node writes
    return _frozen_norm(model, resid, outs), _frozen_norm(model, resid, rest), resid


@torch.no_grad()
def direct_logits(model, inputs: Inputs) -> tuple[Tensor, Tensor]:
    """(per-node direct logits [src, batch, vocab], the constant part [batch, vocab]) at the answer
    positions; their sum is the model's logits (soft-capping aside). Holds src × batch × vocab
    numbers: for one prompt, or a small model (`node_lens` never forms it)."""
    normed, rest, _ = _normed_parts(model, inputs)
    per_node = normed @ model.W_U
    const = rest @ model.W_U
    if model.ln_final.kind == "layernorm" and model.ln_final.b is not None:
        const = const + model.ln_final.b @ model.W_U
    if model.b_U is not None:
        const = const + model.b_U
    return per_node, const


@dataclass
class NodeLens:
    """What one node does to the answer: its mean direct effect on the task's answer-logit difference,
    the tokens it promotes and suppresses most (mean direct logits, centred over the vocabulary), and
    the examples where its direct effect is largest."""

    node: str
    direct_effect: float
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    top_examples: list[tuple[int, float]]  # (example index, direct effect)

    def to_dict(self) -> dict:
        return {"node": self.node, "direct_effect": self.direct_effect, "promoted": self.promoted,
                "suppressed": self.suppressed, "top_examples": self.top_examples}


@torch.no_grad()
def node_lens(model, batch, nodes: list[str] | None = None, k: int = 5) -> list[NodeLens]:
    """The lens of each node (all senders by default) on a task batch (`task.batch(model)`)."""
    g = model.graph
    normed, _, _ = _normed_parts(model, batch.clean)  # [src, batch, d]
    W_U = model.W_U  # [d, vocab]
    t = batch.targets

    def mean_direction(ids):  # mean unembedding of each example's answers: [batch, d]
        valid = (ids >= 0).to(W_U.dtype)
        cols = W_U.T[ids.clamp(min=0)]  # [batch, n, d]
        return (cols * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)

    if t.correct.shape[-1] and t.wrong.shape[-1]:  # direct effect on the answer-logit difference
        effect = torch.einsum("sbd,bd->sb", normed, mean_direction(t.correct) - mean_direction(t.wrong))
    else:  # numerical outputs: the direct contribution to the one output
        effect = normed @ W_U[:, 0]
    mean_normed = normed.mean(1)  # [src, d]: the mean direct logits are linear in it
    out = []
    for name in nodes if nodes is not None else g.senders:
        s = g.senders.index(name)
        mean_logits = mean_normed[s] @ W_U  # [vocab], one node at a time
        mean_logits = mean_logits - mean_logits.mean()
        order = effect[s].argsort(descending=True)[:3]
        out.append(NodeLens(name, float(effect[s].mean()), *ranked_tokens(model, mean_logits, k),
                            [(int(i), float(effect[s, i])) for i in order]))
    return out


@dataclass
class LensRow:
    """One position of a logit lens: the token there, and the tokens the projection favours most and least."""

    position: int
    token: str
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


@torch.no_grad()
def logit_lens(model, prompt, what: str, k: int = 5) -> list[LensRow]:
    """Vocabulary projection at every position of one prompt.

    what: a node (`a3.h5`, `m2`, `input`): its output, with the final norm's scale frozen at the
    final residual stream's (its direct effect on the logits); or `resid:L`, the residual stream
    entering layer L (`resid:{n_layers}` = the final one), through the final norm and unembedding
    as they are (the classic logit lens). Promoted/suppressed: highest/lowest logits, centred over
    the vocabulary.
    """
    from circuitfind.inspect.common import parse_node, resid_layer, tokens_of

    count(k, "k")
    tokens = tokens_of(model, prompt)
    L = model.cfg.n_layers
    if what.startswith("resid:"):
        layer = resid_layer(model, what, final=True)
        name = f"blocks.{layer}.hook_resid_pre" if layer < L else f"blocks.{L - 1}.hook_resid_post"
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        logits = model.unembed(cache[name])[0]  # [pos, vocab]
    else:
        parse_node(model, what)
        if what not in model.graph.senders:
            raise ConfigError(f"{what!r} is not a node of the graph; the lens takes a head (a3.h5), an MLP (m2), "
                              "input, or resid:L")
        s = model.graph.senders.index(what)
        inputs = Inputs.of(tokens)
        final = f"blocks.{L - 1}.hook_resid_post"
        _, cache = model.run_with_cache(tokens, names_filter=[final])
        out = sender_outputs(model, inputs)[s, 0]  # [pos, d]
        logits = _frozen_norm(model, cache[final][0], out) @ model.W_U
    logits = logits - logits.mean(-1, keepdim=True)
    return [LensRow(p, token_str(model, tokens[0, p]), *ranked_tokens(model, logits[p], k))
            for p in range(tokens.shape[-1])]
