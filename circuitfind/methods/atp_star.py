"""AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to
components"), at the level of edges: EAP with its two fixes.

    QK fix     query and key edges scored through the attention softmax exactly (`engine.qk_fix`): the
               query row re-attended, each key position patched alone and the per-position effects summed;
               every other edge is EAP's first-order score.
    GradDrop   the backward repeated L times, the l-th with layer l's outputs treated as constants
               (`attribute(..., drop_layer=l)`), and the score the mean magnitude over them,
               (1 / (L − 1)) Σ_l |ĉ_l| for a node in layer l (the paper's eq.: its l-th term is 0, hence
               L − 1; so a score no pass changes stays |ĉ|): a score that cancels along one path but not along
               the others is no longer ranked near 0. In edge form the l-th term is 0 for an edge *into*
               layer l; an edge into the logits is in no layer, has no zero term, and takes the mean over all
               L, (1 / L) Σ_l |ĉ_l| (not 1/(L − 1), which would rank it L/(L − 1) times its magnitude). It is
               a magnitude, so scores are ≥ 0 (graddrop=False keeps the signed QK-fixed EAP score).

Cost: without GradDrop, EAP's two forwards and one backward plus one forward and backward of the plain model
and, per layer, its heads' attention recomputed once per sender; GradDrop multiplies that by L.
Tests: tests/test_atp_star.py (the QK fix equals exact patching on an attention-only model; the dropped
layer's gradient against the edge-mask gradient of a masked forward that holds that layer constant; GradDrop
equal to |EAP| on the edges no dropped layer can reach: into the last layer and into the logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import sender_outputs
from circuitfind.engine.qk_fix import qk_fixed
from circuitfind.errors import ConfigError
from circuitfind.methods.common import refuse_gradient_at_clean_of_kl, setups, warn_if_all_zero


@dataclass(frozen=True)
class AtPStarConfig:
    graddrop: bool = True  # the mean magnitude over L backwards, each with one layer dropped (module docstring)
    qk_fix: bool = True  # query and key edges through the softmax exactly (False: EAP's first order there)


def score(model, task, cfg: AtPStarConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None):
    """Scores [dst, src]: signed like EAP without GradDrop, magnitudes ≥ 0 with it."""
    L = model.cfg.n_layers
    if cfg.graddrop and L < 2:
        raise ConfigError(f"GradDrop averages over the model's layers with one dropped at a time, (1/(L−1)) Σ_l; "
                          f"{model.name!r} has {L} layer: use graddrop=false")
    refuse_gradient_at_clean_of_kl(task, "atp-star")
    drops = list(range(L)) if cfg.graddrop else [None]
    # the passes in which an edge can score: all L but its receiver's own layer's (the logits: all L)
    g = model.graph
    passes = (L - (g.receiver_layer < L).long()).to(model.device)[:, None]  # [dst, 1]
    edges = 0
    for s in setups(model, task, ablation, seed, batch_size):
        D = _dense_diffs(model, s)
        for drop in drops:
            raw = attribute(model, s.batch.clean, s.ablated, s.objective, shared=s.shared, drop_layer=drop)
            if cfg.qk_fix:
                fixed, rows = qk_fixed(model, s.batch.clean, D, s.objective, drop_layer=drop)
                raw[rows.to(raw.device)] = fixed[rows.to(fixed.device)].to(raw.device)
            part = raw.abs() / passes if cfg.graddrop else -s.sign * raw
            edges = edges + s.weight * part
    return warn_if_all_zero(edges, task, "atp-star")


def _dense_diffs(model, s) -> torch.Tensor:
    """The clean run's sender outputs minus the ablated ones, [src, batch, pos, d_model], over every position
    (past a shared prefix the engine holds them alone; the prefix's are 0)."""
    inputs = s.batch.clean
    b, p = inputs.tokens.shape
    D = sender_outputs(model, inputs) - s.ablated.expand(-1, b, p, -1) if s.shared is None else None
    if D is None:
        past = sender_outputs(model, inputs, s.shared) - s.ablated
        D = past.new_zeros(past.shape[0], b, p, past.shape[-1])
        D[:, :, s.shared.n:] = past
    return D
