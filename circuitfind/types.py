"""The shape glossary used in every annotation and comment.

    batch    examples in a batch
    pos      token positions (prompts are padded to a common length)
    d_model  residual stream width
    head     attention (query) heads of one layer; kv_head: key/value heads (grouped-query)
    d_head   width of one head
    d_mlp    MLP hidden width
    vocab    vocabulary size
    src      senders of the edge graph (input, heads, MLPs), in topological order
    dst      receivers of the edge graph (q/k/v inputs of heads, MLPs, logits)
    k        a batch of masks (circuits) evaluated in one forward

Annotations are jaxtyping style, e.g. ``Float[Tensor, "batch pos d_model"]``.

`Inputs` is the one data type every layer passes around (tasks build it, the engine reads it), so it
lives here, on the ground floor of the import chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["Bool", "Float", "Inputs", "Int", "Tensor"]


@dataclass(frozen=True)
class Inputs:
    """Prompts for the engine: tokens [batch, pos], attention_mask [batch, pos], answer_pos [batch]."""

    tokens: Tensor
    attention_mask: Tensor
    answer_pos: Tensor

    @classmethod
    def of(cls, tokens: Tensor, attention_mask: Tensor | None = None, answer_pos: Tensor | None = None) -> "Inputs":
        """Defaults: every token real; the answer is read at each prompt's last real token."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        if answer_pos is None:
            idx = torch.arange(tokens.shape[1], device=tokens.device)
            answer_pos = (attention_mask.bool() * idx).argmax(-1)
        return cls(tokens, attention_mask.long(), answer_pos.long())

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def rows(self, s: slice) -> "Inputs":
        """These prompts' rows s (a slice of the batch), padded as they are."""
        return Inputs(self.tokens[s], self.attention_mask[s], self.answer_pos[s])

    def to(self, device) -> "Inputs":
        return Inputs(self.tokens.to(device), self.attention_mask.to(device), self.answer_pos.to(device))
