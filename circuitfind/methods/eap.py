"""EAP: edge attribution patching (Syed et al. 2023) — the first-order effect of ablating each edge,
from one backward pass (`engine.attribution.attribute`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.attribution import attribute
from circuitfind.methods.common import prepare, refuse_gradient_at_clean_of_kl, to_level, warn_if_all_zero


@dataclass(frozen=True)
class EAPConfig:
    level: Literal["edge", "node"] = "edge"  # "node": score heads and MLPs (the sum of their out-edges' scores)


def score(model, task, cfg: EAPConfig, ablation: str = "corrupted", seed: int = 0):
    refuse_gradient_at_clean_of_kl(task, "eap-node" if cfg.level == "node" else "eap")
    setup = prepare(model, task, ablation, seed)
    edges = -setup.sign * attribute(model, setup.batch.clean, setup.ablated, setup.objective, consume=True)
    return to_level(warn_if_all_zero(edges, task, "eap"), model.graph, cfg.level)
