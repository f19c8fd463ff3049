"""What an ablated sender writes instead of its clean output: `ablated_outputs`.

    corrupted        the sender's output on the corrupted prompt of the same example
    mean             its mean output over every real token of the reference prompts
    mean-positional  its mean output per position over the reference prompts
    zero             nothing (biases stay: they belong to no sender)
    resample         its output on another example's clean prompt, drawn (seeded) among those with a
                     real token wherever this prompt has one (patching is position by position; see
                     `_donors` for a prompt longer than all others)

All return [src, batch|1, pos|1, d_model], ready for `masked_forward`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from circuitfind.engine.patching import Inputs, SharedPrefix, sender_outputs
from circuitfind.errors import ConfigError

ABLATIONS = ("corrupted", "mean", "mean-positional", "zero", "resample")


def ablated_outputs(model, ablation: str, clean: Inputs, corrupt: Inputs | None = None, *,
                    reference: Inputs | None = None, seed: int = 0, shared: SharedPrefix | None = None,
                    with_logits: bool = False):
    """Ablated sender outputs [src, batch|1, pos|1, d_model] for the clean prompts.

    corrupt: the corrupted prompts (needed for "corrupted"); reference: the prompts means are
    taken over (default: the clean prompts themselves). shared: the prefix the clean and corrupted
    prompts share (`shared_prefix`): the corrupted run's outputs only past it, [src, batch, pos − n,
    d_model], for walks given the same prefix (corrupted ablation only). with_logits: (outputs, logits), the
    logits [batch, vocab] of the run every ablated edge reads, where one pass gives both (the corrupted run's),
    else None: the empty circuit's, for free.
    """
    if with_logits:
        if ablation == "corrupted":
            _check_aligned(clean, corrupt)
            return sender_outputs(model, corrupt, shared, with_logits=True)
        return ablated_outputs(model, ablation, clean, corrupt, reference=reference, seed=seed, shared=shared), None
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    g, d = model.graph, model.cfg.d_model
    if shared is not None and ablation != "corrupted":
        raise ConfigError(f"a shared prefix is the clean and corrupted prompts'; {ablation} ablation has none")
    if ablation == "zero":
        return torch.zeros(g.n_senders, 1, 1, d, dtype=model.dtype, device=model.device)
    if ablation == "corrupted":
        _check_aligned(clean, corrupt)
        return sender_outputs(model, corrupt, shared)
    if ablation == "resample":
        if clean.batch < 2:
            raise ConfigError("resample ablation needs at least 2 examples to draw from")
        return sender_outputs(model, clean)[:, _donors(clean.attention_mask.bool(), seed)]
    ref = clean if reference is None else reference
    if ablation == "mean-positional" and ref.tokens.shape[1] != clean.tokens.shape[1]:
        raise ConfigError("mean-positional ablation needs reference prompts of the clean prompts' token length")
    return mean_outputs(model, [ref], positional=ablation == "mean-positional", own=reference is None)


def _check_aligned(clean: Inputs, corrupt: Inputs | None) -> None:
    if corrupt is None:
        raise ConfigError("corrupted ablation needs the corrupted prompts (corrupt=)")
    if corrupt.tokens.shape != clean.tokens.shape:
        raise ConfigError(f"clean prompts are {tuple(clean.tokens.shape)} tokens but corrupted ones "
                          f"{tuple(corrupt.tokens.shape)}; patching aligns them position by position, so "
                          "they must have equal token length (reword, or use mean/zero ablation)")


def mean_outputs(model, parts: list[Inputs], *, positional: bool, own: bool = True) -> Tensor:
    """Every sender's mean output over the real tokens of all the prompts in `parts`, [src, 1, 1, d]
    (or per position, [src, 1, pos, d]), taken a part at a time: the whole set's outputs are never
    held at once. own: the means are of the prompts they will ablate (a position real in one prompt
    only is then not ablated at all, and a warning says so)."""
    total = count = None
    for ref in parts:
        outs = sender_outputs(model, ref)  # [src, batch, pos, d]
        real = ref.attention_mask.to(outs.dtype)[None, :, :, None]  # [1, batch, pos, 1]
        part_total, part_count = (outs * real).sum(1), real.sum(1)  # [src, pos, d], [1, pos, 1]
        total = part_total if total is None else total + part_total
        count = part_count if count is None else count + part_count
    if not positional:
        return (total.sum(1) / count.sum())[:, None, None]
    if own and bool((count == 1).any()):
        lone = (count[0, :, 0] == 1).nonzero()[:, 0].tolist()
        warnings.warn(f"mean-positional ablation: {len(lone)} position(s), from {lone[0]}, are real in one prompt "
                      "only, whose mean is that prompt's own output: nothing is ablated there (more examples of "
                      "each length, or reference= prompts, avoid it)", stacklevel=4)
    return (total / count.clamp(min=1))[:, None]


def _donors(real: Tensor, seed: int) -> Tensor:
    """For each prompt another one, drawn uniformly with a seeded generator among those whose real
    tokens cover its own (right padding: those at least as long). A prompt no other covers (the one
    longest prompt) draws from all the others and reads its donor's padding where the donor ends;
    a warning says how many. real: attention mask [batch, pos] (bool)."""
    covers = (real[:, None, :] <= real[None, :, :]).all(-1)  # [i, j]: j is real wherever i is
    covers.fill_diagonal_(False)
    alone = ~covers.any(1)
    if alone.any():
        covers[alone] = True
        covers.fill_diagonal_(False)
        longest = int(real[alone].sum(1).max())
        warnings.warn(f"resample ablation: {int(alone.sum())} prompt(s) (up to {longest} tokens) have no other "
                      "prompt as long; their last positions read a shorter prompt's padding outputs "
                      "(more examples of that length, or mean ablation, avoid it)", stacklevel=3)
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(covers.double().cpu(), 1, generator=g)[:, 0].to(real.device)
