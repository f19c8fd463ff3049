"""The positions a run and its ablated run share, which a masked forward need not compute.

Under corrupted ablation the clean and corrupted prompts often agree up to some position n (greater-than:
"The war lasted from the year 17" differs only at the year's last digits; 8 of toy-lm's 13 positions).
In a causal model every activation at a position < n is then the same in both runs, so every sender's
D = out − abl is 0 there, and by induction it stays 0 under any mask: each receiver at those
positions reads the clean residual, whatever the mask. What later positions read of them is only
their attention keys and values, the clean run's. So a walk given a `SharedPrefix` runs on positions
n.. alone, its attention reading the prefix's keys and values from here: the same logits, for
every mask, at (p − n)/p of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.types import Inputs


@dataclass(frozen=True)
class SharedPrefix:
    """The first n positions of a batch, the same in the run and the ablated run (tokens and padding),
    with each layer's keys and values there: keys[l], values[l] [batch, kv_head, n, d_head], as
    projected (before rotary and any q/k norm, which attention applies)."""

    n: int
    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]


def shared_prefix(model, inputs: Inputs, other: Inputs) -> SharedPrefix | None:
    """The prefix `inputs` and `other` (the ablated run's prompts) share, or None where there is none to
    skip (or the model attends in both directions, where no position is settled by those before it).
    It stops before every answer position (the logits must be computed) and before the last position.
    One forward over the prefix alone; `clean_run` gets it from a forward that is run anyway."""
    n = _length(model, inputs, other)
    if n == 0:
        return None
    with torch.no_grad():
        return _forward(model, inputs, n, stop=n)[1]


def clean_run(model, inputs: Inputs, other: Inputs | None = None) -> tuple[Tensor, SharedPrefix | None]:
    """The logits [batch, vocab] of the unpatched model at the answer positions and, where the ablated
    run's prompts `other` are given, the prefix the two share (`shared_prefix`), from the same forward."""
    n = 0 if other is None else _length(model, inputs, other)
    with torch.no_grad():
        return _forward(model, inputs, n)


def _length(model, inputs: Inputs, other: Inputs) -> int:
    if not model.cfg.causal or inputs.tokens.shape != other.tokens.shape:
        return 0
    differs = (inputs.tokens != other.tokens) | (inputs.attention_mask != other.attention_mask)  # [batch, pos]
    p = inputs.tokens.shape[1]
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.full_like(inputs.answer_pos, p))
    return max(0, min(int(first.min()), int(inputs.answer_pos.min()), int(other.answer_pos.min()), p - 1))


def _forward(model, inputs: Inputs, n: int, stop: int | None = None) -> tuple[Tensor, SharedPrefix | None]:
    """The plain forward over the first `stop` positions (all by default), keeping each layer's keys and
    values at the first n; the logits at the answer positions (at position 0 when stopped early)."""
    keys, values = [None] * model.cfg.n_layers, [None] * model.cfg.n_layers

    def keep(store):
        def hook(x, name):  # [batch, pos, kv_head, d_head]
            store[int(name.split(".")[1])] = x[:, :n].transpose(1, 2).contiguous()
        return hook
    names = [] if n == 0 else [(f"blocks.{l}.attn.hook_{t}", keep(keys if t == "k" else values))
                               for l in range(model.cfg.n_layers) for t in "kv"]
    tokens, mask, at = inputs.tokens, inputs.attention_mask, inputs.answer_pos
    if stop is not None:
        tokens, mask, at = tokens[:, :stop], mask[:, :stop], torch.zeros_like(at)
    with model.hooks(names):
        logits = model(tokens, mask, at=at)
    return logits, None if n == 0 else SharedPrefix(n, tuple(keys), tuple(values))
