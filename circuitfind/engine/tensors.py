"""The engine's data: what goes in (`Inputs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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

    def to(self, device) -> "Inputs":
        return Inputs(self.tokens.to(device), self.attention_mask.to(device), self.answer_pos.to(device))
