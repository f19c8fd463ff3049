"""Exact activation patching: ablate every edge alone and measure the metric (`engine.edge_effects`),
batched through masks and reusing the clean run below each receiver's layer."""

from __future__ import annotations

from dataclasses import dataclass

from circuitfind.engine.patching import edge_effects
from circuitfind.errors import ConfigError
from circuitfind.methods.common import prepare


@dataclass(frozen=True)
class ExactConfig:
    max_masks: int = 32  # masks per forward (memory grows with it)

    def __post_init__(self):
        if self.max_masks < 1:
            raise ConfigError(f"max_masks must be at least 1, got {self.max_masks}")


def score(model, task, cfg: ExactConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True):
    setup = prepare(model, task, ablation, seed)
    effects = edge_effects(model, setup.batch.clean, setup.ablated, setup.per_mask, max_masks=cfg.max_masks,
                           quiet=quiet)
    return -setup.sign * effects
