"""What an ablated sender writes instead of its clean output: `ablated_outputs`.

    corrupted        the sender's output on the corrupted prompt of the same example
    mean             its mean output over every real token of the reference prompts
    mean-positional  its mean output per position over the reference prompts
    zero             nothing (biases stay: they belong to no sender)
    resample         its output on another example's clean prompt (a seeded derangement)

All return [src, batch|1, pos|1, d_model], ready for `masked_forward`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.patching import Inputs, sender_outputs
from circuitfind.errors import ConfigError

ABLATIONS = ("corrupted", "mean", "mean-positional", "zero", "resample")


def ablated_outputs(model, ablation: str, clean: Inputs, corrupt: Inputs | None = None, *,
                    reference: Inputs | None = None, seed: int = 0) -> Tensor:
    """Ablated sender outputs [src, batch|1, pos|1, d_model] for the clean prompts.

    corrupt: the corrupted prompts (needed for "corrupted"); reference: the prompts means are
    taken over (default: the clean prompts themselves).
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    g, d = model.graph, model.cfg.d_model
    if ablation == "zero":
        return torch.zeros(g.n_senders, 1, 1, d, dtype=model.dtype, device=model.device)
    if ablation == "corrupted":
        if corrupt is None:
            raise ConfigError("corrupted ablation needs the corrupted prompts (corrupt=)")
        if corrupt.tokens.shape != clean.tokens.shape:
            raise ConfigError(f"clean prompts are {tuple(clean.tokens.shape)} tokens but corrupted ones "
                              f"{tuple(corrupt.tokens.shape)}; patching aligns them position by position, so "
                              "they must have equal token length (reword, or use mean/zero ablation)")
        return sender_outputs(model, corrupt)
    if ablation == "resample":
        if clean.batch < 2:
            raise ConfigError("resample ablation needs at least 2 examples to draw from")
        outs = sender_outputs(model, clean)
        return outs[:, _derangement(clean.batch, seed)]
    ref = clean if reference is None else reference
    outs = sender_outputs(model, ref)  # [src, batch, pos, d]
    real = ref.attention_mask.to(outs.dtype)[None, :, :, None]  # [1, batch, pos, 1]
    if ablation == "mean":
        return ((outs * real).sum((1, 2)) / real.sum())[:, None, None]
    if ref.tokens.shape[1] != clean.tokens.shape[1]:
        raise ConfigError("mean-positional ablation needs reference prompts of the clean prompts' token length")
    return ((outs * real).sum(1) / real.sum(1).clamp(min=1))[:, None]


def _derangement(n: int, seed: int) -> Tensor:
    """A seeded permutation of range(n) with no fixed point: every example draws from another."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return torch.roll(perm, 1)[torch.argsort(perm)]
