"""EAP: edge attribution patching (Syed et al. 2023) — the first-order effect of ablating each edge,
from one backward pass (`engine.attribution.attribute`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.attribution import attribute
from circuitfind.methods.common import (Examples, refuse_gradient_at_clean_of_kl, setups, to_level,
                                        warn_if_all_zero)


@dataclass(frozen=True)
class EAPConfig:
    level: Literal["edge", "node"] = "edge"  # "node": score heads and MLPs (the sum of their out-edges' scores)


def score(model, task, cfg: EAPConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None,
          per_example: bool = False, place=None):
    """Scores [dst, src]; per_example: (scores, each example's [n, dst, src]), from the same passes. place: where
    the store and per-example scores live (`engine.offload.Place`)."""
    refuse_gradient_at_clean_of_kl(task, "eap-node" if cfg.level == "node" else "eap")
    edges, examples = 0, Examples(model.graph, cfg.level, place)
    for s in setups(model, task, ablation, seed, batch_size, place=place):
        raw = attribute(model, s.batch.clean, s.ablated, s.objective, consume=True, shared=s.shared,
                        per_example=per_example, place=place)
        if per_example:  # each example's part of the batch's mean, times the batch's size: its own score
            raw, parts = raw
            examples.add(s, parts.mul_(-s.sign * s.batch.size))  # (in place: off the device it stays there)
        edges = edges - s.sign * s.weight * raw
    edges = to_level(warn_if_all_zero(edges, task, "eap"), model.graph, cfg.level)
    return (edges, examples.data) if per_example else edges
