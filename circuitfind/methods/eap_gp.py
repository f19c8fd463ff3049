"""EAP-GP (Zhang et al. 2025, arXiv 2502.06852): EAP-IG's first-order edge scores with the gradients taken on
GradPath instead of the straight line,

    score[v, u] = −⟨D_u, (1/k) Σ_j g_v(γ_j)⟩,   D_u = clean − ablated output of u (the clean run),

γ_1..γ_k the input embeddings GradPath reaches from the clean one in k steps of length `step`, each down the
gradient of ‖G(γ) − G(x')‖² (G: the logits at the answer position; `engine.gradient_path`, which also says how
the paper's per-node definition is read). Cost: 1 clean forward, then k forward + backward passes to build the
path and k more to score: about twice EAP-IG's with the same steps. No shared-prefix skip: the path moves the
prompts' shared prefix too. Test: tests/test_eap_gp.py (the path and the scores against a slow re-derivation by
plain autograd through tests/reference.py's loop forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuitfind.engine.attribution import attribute
from circuitfind.engine.gradient_path import gradient_path
from circuitfind.errors import ConfigError
from circuitfind.methods.common import Examples, setups


@dataclass(frozen=True)
class EAPGPConfig:
    steps: int = 5  # k, the path's points (the paper's main setting)
    step: float = 1.0  # each step's length in embedding space (Eq. 8: unit steps)


def score(model, task, cfg: EAPGPConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None,
          per_example: bool = False):
    """Scores [dst, src]; per_example: (scores, each example's [n, dst, src]), from the same passes."""
    if cfg.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {cfg.steps}")
    if not (math.isfinite(cfg.step) and cfg.step > 0):
        raise ConfigError(f"step (each step's length along the path) must be a positive number, got {cfg.step}")
    edges, examples = 0, Examples(model.graph, "edge")
    for s in setups(model, task, ablation, seed, batch_size, share_prefix=False):
        path = gradient_path(model, s.batch.clean, s.ablated, cfg.steps, cfg.step)
        raw = attribute(model, s.batch.clean, s.ablated, s.objective, input_points=path, per_example=per_example)
        if per_example:  # each example's part of the batch's mean, times the batch's size: its own score
            raw, parts = raw
            examples.add(s, -s.sign * s.batch.size * parts)
        edges = edges - s.sign * s.weight * raw
    return (edges, examples.data) if per_example else edges
