"""What an ablated sender writes instead of its clean output: `ablated_outputs`.

    corrupted        the sender's output on the corrupted prompt of the same example
    mean             its mean output over every real token of the reference prompts
    mean-positional  its mean output per position over the reference prompts
    zero             nothing (biases stay: they belong to no sender)
    resample         its output on another example's clean prompt, drawn (seeded) among those with a
                     real token wherever this prompt has one (patching is position by position; see
                     `_donors` for a prompt longer than all others)
    optimal          one constant per sender, trained to minimise the loss with that sender ablated to it
                     (Li & Janson 2024's optimal ablation; `optimal_outputs`)

All return [src, batch|1, pos|1, d_model], ready for `masked_forward`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from circuitfind.engine.patching import Inputs, SharedPrefix, sender_outputs
from circuitfind.errors import ConfigError

ABLATIONS = ("corrupted", "mean", "mean-positional", "zero", "resample", "optimal")
OPTIMAL_STEPS, OPTIMAL_LR = 100, 0.05  # Adam steps, and its rate in units of each sender's output RMS


def ablated_outputs(model, ablation: str, clean: Inputs, corrupt: Inputs | None = None, *,
                    reference: Inputs | None = None, seed: int = 0, shared: SharedPrefix | None = None,
                    with_logits: bool = False, place=None):
    """Ablated sender outputs [src, batch|1, pos|1, d_model] for the clean prompts.

    corrupt: the corrupted prompts (needed for "corrupted"); reference: the prompts means are
    taken over (default: the clean prompts themselves). shared: the prefix the clean and corrupted
    prompts share (`shared_prefix`): the corrupted run's outputs only past it, [src, batch, pos − n,
    d_model], for walks given the same prefix (corrupted ablation only). with_logits: (outputs, logits), the
    logits [batch, vocab] of the run every ablated edge reads, where one pass gives both (the corrupted run's),
    else None: the empty circuit's, for free. place (`offload.Place`): where the per-example outputs of
    corrupted and resample ablation are kept (off the device, or in a store dtype); the others are a few
    vectors a sender and stay on the device.
    """
    if with_logits:
        if ablation == "corrupted":
            _check_aligned(clean, corrupt)
            return sender_outputs(model, corrupt, shared, with_logits=True, place=place)
        return ablated_outputs(model, ablation, clean, corrupt, reference=reference, seed=seed, shared=shared,
                               place=place), None
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    g, d = model.graph, model.cfg.d_model
    if shared is not None and ablation != "corrupted":
        raise ConfigError(f"a shared prefix is the clean and corrupted prompts'; {ablation} ablation has none")
    if ablation == "zero":
        return torch.zeros(g.n_senders, 1, 1, d, dtype=model.dtype, device=model.device)
    if ablation == "corrupted":
        _check_aligned(clean, corrupt)
        return sender_outputs(model, corrupt, shared, place=place)
    if ablation == "resample":
        if clean.batch < 2:
            raise ConfigError("resample ablation needs at least 2 examples to draw from")
        donors = _donors(clean.attention_mask.bool(), seed)
        outputs = sender_outputs(model, clean)[:, donors]
        return outputs if place is None else place.put(outputs)
    ref = clean if reference is None else reference
    if ablation == "optimal":
        return optimal_outputs(model, [ref])
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


def optimal_outputs(model, parts: list[Inputs], *, steps: int | None = None, lr: float = OPTIMAL_LR,
                    group: int = 32, checks: int = 5) -> Tensor:
    """Optimal ablation (Li & Janson 2024, "Optimal ablation for interpretability", arXiv 2409.09951): for each
    sender u the constant a_u [d_model] that minimises the expected loss of the model with u's output replaced by
    a_u (at every position, in every receiver), a_u* = argmin_a E_x L(x; u ← a), [src, 1, 1, d]. The loss L is a
    choice the paper leaves to the task; here it is KL(clean ‖ ablated) of the next-token distribution at the
    answer position, the mean over the prompts of `parts` (so it needs nothing but the prompts).

    Each a_u starts at u's mean output (mean ablation) and takes `steps` Adam steps (rate `lr` times u's output
    RMS), all senders at once: the prompts tiled once per sender, sender j's copy with j's output replaced in the
    plain forward (the same run as `masked_forward` with j's out-edges all ablated, cheaper to differentiate). At
    `checks` points along the way each sender's loss is measured by the engine (`single_ablation_losses`) and the
    best a_u kept, so its loss is never above mean ablation's. Test: tests/test_optimal_ablation.py (the loss ≤
    mean ablation's sender by sender, and below it somewhere; the loss against the slow loop reference)."""
    g, cfg = model.graph, model.cfg
    steps = OPTIMAL_STEPS if steps is None else steps
    if cfg.post_norms or g.n_experts:
        raise ConfigError("optimal ablation replaces each sender's output in the plain forward; post-norms and "
                          "expert senders have no such output there: use mean ablation")
    mean = mean_outputs(model, parts, positional=False)  # [src, 1, 1, d]
    with torch.no_grad():
        scale = torch.stack([_rms(model, p) for p in parts]).mean(0).clamp(min=1e-6)[:, None, None, None]
        targets = [torch.log_softmax(model(p.tokens, p.attention_mask, at=p.answer_pos).float(), -1) for p in parts]
    theta = torch.zeros_like(mean, requires_grad=True)
    best, best_loss = mean.clone(), single_ablation_losses(model, parts, mean, group)
    at = {max(1, round(steps * (i + 1) / checks)) for i in range(checks)}
    opt = torch.optim.Adam([theta], lr=lr)
    for step in range(1, steps + 1):
        opt.zero_grad()
        with torch.enable_grad():
            total = 0
            for first in range(0, g.n_senders, group):
                senders = list(range(first, min(first + group, g.n_senders)))
                a = mean[senders] + scale[senders] * theta[senders]
                for p, target in zip(parts, targets):
                    logp = torch.log_softmax(_replaced_run(model, p, senders, a[:, 0, 0]).float(), -1)
                    total = total + (target.exp().repeat(len(senders), 1) * (target.repeat(len(senders), 1) - logp)
                                     ).sum() / sum(q.batch for q in parts)
            total.backward()
        opt.step()
        if step in at:
            with torch.no_grad():
                a = mean + scale * theta
                loss = single_ablation_losses(model, parts, a, group)
                better = loss < best_loss
                best[better], best_loss = a[better], torch.where(better, loss, best_loss)
    return best


def _replaced_run(model, inputs: Inputs, senders: list[int], values: Tensor) -> Tensor:
    """Logits at the answer positions [k·batch, vocab] of the prompts tiled k = len(senders) times, copy j with
    sender senders[j]'s output replaced by values[j] [d] at every position (the forward's own hooks)."""
    g, b = model.graph, inputs.batch
    k = len(senders)
    where: dict[str, list[tuple[int, int | None]]] = {}  # hook → (copy, head or None)
    for j, u in enumerate(senders):
        name = g.senders[u]
        if name == "input":
            where.setdefault("blocks.0.hook_resid_pre", []).append((j, None))
        elif ".h" in name:
            layer, head = name[1:].split(".h")
            where.setdefault(f"blocks.{layer}.attn.hook_result", []).append((j, int(head)))
        else:
            where.setdefault(f"blocks.{name[1:]}.hook_mlp_out", []).append((j, None))

    def hook(x, name):
        rows = []
        for j, head in where[name]:
            piece = values[j]
            if name.endswith("hook_mlp_out"):
                bias = model.blocks[int(name.split(".")[1])].mlp.b_out
                piece = piece if bias is None else piece + bias
            rows.append((j, head, piece))
        x = x.clone()
        for j, head, piece in rows:
            block = slice(j * b, (j + 1) * b)
            if head is None:
                x[block] = piece.to(x.dtype).expand_as(x[block])
            else:
                x[block, :, head] = piece.to(x.dtype).expand_as(x[block, :, head])
        return x

    tokens, mask, at = (t.repeat(k, *([1] * (t.ndim - 1))) for t in (inputs.tokens, inputs.attention_mask,
                                                                      inputs.answer_pos))
    with model.hooks([(name, hook) for name in where]):
        return model(tokens, mask, at=at)


def single_ablation_losses(model, parts: list[Inputs], ablated: Tensor, group: int = 32) -> Tensor:
    """Each sender's loss with it alone ablated to `ablated[u]`: KL(clean ‖ ablated) of the next-token
    distribution at the answer position, the mean over the prompts, [src], by the engine (`masked_forward`, one
    mask a sender, `group` masks a pass): what `optimal_outputs` minimises."""
    from circuitfind.engine.patching import masked_forward

    g = model.graph
    full = g.edge_mask.to(model.device, model.dtype)
    total, out = sum(p.batch for p in parts), []
    with torch.no_grad():
        targets = [torch.log_softmax(masked_forward(model, p, ablated, full).float(), -1) for p in parts]
        for first in range(0, g.n_senders, group):
            senders = torch.arange(first, min(first + group, g.n_senders))
            masks = full.expand(len(senders), -1, -1).clone()
            masks[torch.arange(len(senders)), :, senders] = 0  # mask j: sender senders[j]'s out-edges all ablated
            loss = 0
            for p, target in zip(parts, targets):
                logp = torch.log_softmax(masked_forward(model, p, ablated, masks).float(), -1)  # [k, batch, vocab]
                loss = loss + (target.exp() * (target - logp)).sum(-1).sum(-1) / total
            out.append(loss)
    return torch.cat(out)


def _rms(model, inputs: Inputs) -> Tensor:
    """Each sender's output RMS over the real tokens of the prompts [src]."""
    outs = sender_outputs(model, inputs)
    real = inputs.attention_mask.to(outs.dtype)[None, :, :, None]
    return ((outs.square() * real).sum((1, 2, 3)) / (real.sum() * outs.shape[-1])).sqrt()
