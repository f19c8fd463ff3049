"""Position-aware scores: every edge at every span (PEAP, Haklay et al. 2025, arXiv:2502.04577).

    cf.score_edges(model, "ioi", "eap", positions="spans")    # [dst, src, T, T] over the task's spans
    cf.score_edges(model, "greater-than", "exact", positions="tokens")   # each position its own span

Units (`engine/positional.py`): (u → v, s), sender u's output at span s in receiver v's input at span s; for a
key or value receiver (u → v, t, s), u at the key span s read by the head's queries at span t. Methods:
    eap     −⟨D_u, g_v⟩ over each unit's positions, one backward (per query span for keys and values); summed
            over (t, s) it is EAP's score (test_span_eap_sums_to_eap_on_prompts_of_unequal_length).
    eap-ig  the same with g averaged over the input embedding interpolated at alpha = k/n (EAP-IG inputs,
            `eap_ig.alphas`: MIB's points k = 1..n by default); sums to eap-ig
            (test_span_scores_sum_to_the_scores_without_positions).
    exact   each unit ablated alone, m(clean) − m(unit ablated) (test_span_exact_matches_a_slow_reference).
Signs as every method's (`methods.common`): positive = the unit supports the task.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from circuitfind.engine.positional import span_attribution, span_forward, span_units
from circuitfind.errors import ConfigError
from circuitfind.methods import eap_ig
from circuitfind.methods.common import refuse_gradient_at_clean_of_kl, setups
from circuitfind.spans import batch_spans

POSITIONAL = ("eap", "eap-ig", "exact")


def score(model, task, method: str, cfg, positions: str, ablation: str = "corrupted", seed: int = 0,
          batch_size: int | None = None, quiet: bool = True):
    """(scores [dst, src, T, T], span names, units [dst, src, T, T]) of a method at the task's spans."""
    if method not in POSITIONAL:
        raise ConfigError(f"position-aware scores are computed by {', '.join(POSITIONAL)}; got method {method!r}")
    if getattr(cfg, "level", "edge") != "edge":
        raise ConfigError("position-aware scores are per edge; node methods have no positions")
    if method == "eap":
        refuse_gradient_at_clean_of_kl(task, "eap")
    if method == "exact" and cfg.direction != "noising":
        raise ConfigError("position-aware exact patching is by noising (method exact)")
    total, names, units = 0, None, None
    for s in setups(model, task, ablation, seed, batch_size, share_prefix=False):
        spans, these = batch_spans(s.batch, positions)
        if names is not None and these != names:
            raise ConfigError(f"the batches have different spans ({', '.join(names)} and {', '.join(these)}); "
                              "score without batch_size")
        names, T = these, len(these)
        spans = spans.to(model.device)
        found = span_units(model, s.batch.clean, spans, T)
        units = found if units is None else units | found
        if method == "exact":
            raw = _exact(model, s, spans, found, cfg.max_masks, quiet)
        else:
            alphas = (1.0,) if method == "eap" else tuple(eap_ig.alphas(cfg))
            raw = span_attribution(model, s.batch.clean, s.ablated, spans, T, s.objective, alphas)
        total = total - s.sign * s.weight * raw.cpu()
    return total, names, units


def _exact(model, setup, spans, units, max_masks: int, quiet: bool):
    """m(unit ablated) − m(clean) of every unit [dst, src, T, T], max_masks units a forward."""
    T = units.shape[-1]
    flat = units.flatten().nonzero()[:, 0]
    effects = torch.zeros(units.numel(), dtype=torch.float32)
    clean = float(setup.per_mask(setup.targets.clean_logits[None])[0])
    ones = units.to(model.dtype).to(model.device)
    for chunk in tqdm(flat.split(max_masks), desc="exact (spans)", unit="batch", disable=quiet):
        masks = ones.expand(len(chunk), *units.shape).clone().view(len(chunk), -1)
        masks[torch.arange(len(chunk)), chunk] = 0
        logits = span_forward(model, setup.batch.clean, setup.ablated, spans,
                              masks.view(len(chunk), *units.shape[:2], T, T))
        effects[chunk] = (setup.per_mask(logits) - clean).float().cpu()
    return effects.view(units.shape)
