"""Ensemble: the normalised average of several methods' scores, the BlackboxNLP 2025 MIB shared task's
"parallel ensembling" (Mondorf et al. 2025, arXiv:2510.06811), which with EAP, EAP-IG and EAP-IG over
activations among its members led the circuit track.

Each member's scores are divided by their largest magnitude over the graph's edges (so every member lies in
[−1, 1] and none outweighs the others by its units: EAP-IG's and edge pruning's scores differ by orders of
magnitude), then averaged. A member that scores magnitudes (atp-star with GradDrop, edge-pruning, ifr) adds
to every edge alike in sign; rank-only uses of the result (top-n, the curves) are what it is built for.
Test: tests/test_methods_33.py (the mean of the members' own normalised scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitfind.errors import ConfigError


@dataclass(frozen=True)
class EnsembleConfig:
    methods: tuple[str, ...] = ("eap", "eap-ig", "eap-ig-activations")  # each with its default options

    def __post_init__(self):
        if not self.methods:
            raise ConfigError("an ensemble needs at least one method, e.g. methods=eap,eap-ig")
        if "ensemble" in self.methods:
            raise ConfigError("an ensemble cannot hold itself; name the methods to average, e.g. methods=eap,eap-ig")


def normalised(scores: torch.Tensor, edge_mask: torch.Tensor) -> torch.Tensor:
    """scores [dst, src] / their largest |score| on the graph's edges (all zero stays zero)."""
    top = scores[edge_mask].abs().max() if bool(edge_mask.any()) else scores.new_zeros(())
    return scores / top if float(top) > 0 else scores


def score(model, task, cfg: EnsembleConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True):
    from circuitfind.methods import METHODS, score_edges  # the registry holds this module

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r} in the ensemble; available: {', '.join(METHODS)}")
    mask = model.graph.edge_mask.to(model.device)
    total = 0
    for method in cfg.methods:
        member = score_edges(model, task, method, ablation, seed=seed, quiet=quiet).scores
        total = total + normalised(member.to(mask.device), mask)
    return total / len(cfg.methods)
