"""Information-flow routes (Ferrando & Voita 2024; the LLM Transparency Tool): one clean forward.

The input x_v of a receiver is the sum of what its senders wrote (plus biases). A sender's share is
its proximity to that sum, max(‖x_v‖₁ − ‖x_v − y_u‖₁, 0), normalised over the receiver's senders:

    w[v, u] = prox(y_u, x_v) / Σ_u' prox(y_u', x_v)     at each example and position

Edge scores average w over examples and positions (`over="all"`) or take the answer position
(`over="answer"`; named `positions` before position-aware scoring took the name); the routes are the edges
with w ≥ τ (default 0.04): `prune(scores, threshold=0.04, absolute=False)`. `contribution_graph` gives one prompt's graph at
one position, as the LLM Transparency Tool shows it. No ablation is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from circuitfind.engine.patching import Inputs, sender_outputs
from circuitfind.errors import ConfigError
from circuitfind.methods.common import setups


@dataclass(frozen=True)
class IFRConfig:
    over: Literal["all", "answer"] = "all"  # mean share over every real token, or at the answer only


def proximity_weights(model, inputs: Inputs) -> Tensor:
    """w [dst, src, batch, pos]: each sender's normalised share of each receiver's input."""
    g, cfg = model.graph, model.cfg
    with torch.no_grad():
        y = sender_outputs(model, inputs)  # [src, batch, pos, d]
        consts = torch.zeros(cfg.d_model, dtype=y.dtype, device=y.device)
        x = y[0].clone()  # what the senders so far wrote (constants kept apart): [batch, pos, d]
        w = torch.zeros(g.n_receivers, g.n_senders, *y.shape[1:3], dtype=y.dtype, device=y.device)
        for l in range(cfg.n_layers + 1):
            n = g.senders_before(l) if l < cfg.n_layers else g.n_senders
            if l == cfg.n_layers:
                x = y.sum(0)  # consts are added below, once
            rows = [g.logits_receiver] if l == cfg.n_layers else \
                [g.qkv_receiver(l, t, h) for t in "qkv" for h in range(cfg.n_heads)]
            w[rows, :n] = _shares(x + consts, y[:n])
            if l == cfg.n_layers:
                break
            heads = y[g.head_sender(l, 0): g.mlp_sender(l)]
            b = model.block_bias(l, "attn")
            pre_attn_consts = consts
            consts = consts + (b if b is not None else 0)
            mlp_n = n if cfg.parallel else g.mlp_sender(l)
            mlp_x = x + (0 if cfg.parallel else heads.sum(0))  # parallel: the MLP reads what attention read
            shares = _shares(mlp_x + (pre_attn_consts if cfg.parallel else consts), y[:mlp_n])
            w[list(g.mlp_receivers(l)), :mlp_n] = shares  # (every expert's inputs read the same residual)
            b = model.block_bias(l, "mlp")
            consts = consts + (b if b is not None else 0)
            x = x + heads.sum(0) + y[list(g.mlp_senders(l))].sum(0)
    return w


def _shares(x: Tensor, y: Tensor) -> Tensor:
    """x [batch, pos, d], y [n, batch, pos, d] → normalised proximities [n, batch, pos]."""
    prox = (x.abs().sum(-1)[None] - (x[None] - y).abs().sum(-1)).clamp(min=0)
    return prox / prox.sum(0, keepdim=True).clamp(min=1e-12)


def contribution_graph(model, tokens: Tensor, position: int = -1) -> Tensor:
    """One prompt's contribution weights [dst, src] at one position (tokens [pos] or [1, pos])."""
    inputs = Inputs.of(tokens if tokens.ndim == 2 else tokens[None])
    return proximity_weights(model, inputs)[:, :, 0, position]


def score(model, task, cfg: IFRConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None):
    if cfg.over not in ("all", "answer"):
        raise ConfigError(f"over must be 'all' or 'answer', got {cfg.over!r}")
    total, count = 0, 0  # Σ of the shares averaged, and over how many (examples, or real tokens)
    for setup in setups(model, task, "zero", seed, batch_size):  # the batch and metric checks; IFR patches nothing
        inputs = setup.batch.clean
        w = proximity_weights(model, inputs)  # [dst, src, batch, pos]
        if cfg.over == "answer":
            total, count = total + w[:, :, torch.arange(inputs.batch), inputs.answer_pos].sum(-1), count + inputs.batch
        else:
            real = inputs.attention_mask.to(w.dtype)
            total, count = total + (w * real).sum((2, 3)), count + real.sum()
    return total / count
