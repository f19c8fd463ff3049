"""Exact activation patching: ablate every edge alone and measure the metric (`engine.edge_effects`),
batched through masks and reusing the clean run below each receiver's layer. `exact-node` ablates
each node whole (all its out-edges: the classic head-ablation scan, `engine.node_effects`) and
writes its score on each of its out-edges, as the other node methods do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.patching import edge_effects, node_effects
from circuitfind.errors import ConfigError
from circuitfind.methods.common import on_out_edges, setups


@dataclass(frozen=True)
class ExactConfig:
    max_masks: int = 32  # masks per forward (memory grows with it)
    level: Literal["edge", "node"] = "edge"  # "node": ablate each head, MLP and the input whole

    def __post_init__(self):
        if self.max_masks < 1:
            raise ConfigError(f"max_masks must be at least 1, got {self.max_masks}")
        if self.level not in ("edge", "node"):
            raise ConfigError(f"level must be 'edge' or 'node', got {self.level!r}")


def score(model, task, cfg: ExactConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True,
          batch_size: int | None = None):
    effects = 0
    for s in setups(model, task, ablation, seed, batch_size):  # the task's mean: Σ weight · each batch's
        if cfg.level == "node":
            part = node_effects(model, s.batch.clean, s.ablated, s.per_mask, max_masks=cfg.max_masks)
        else:
            part = edge_effects(model, s.batch.clean, s.ablated, s.per_mask, max_masks=cfg.max_masks, quiet=quiet)
        effects = effects + -s.sign * s.weight * part
    return on_out_edges(model.graph, effects) if cfg.level == "node" else effects
