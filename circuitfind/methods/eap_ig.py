"""EAP-IG (Hanna et al. 2024): integrated gradients along a straight path from the ablated to the
clean run, as in the MIB baselines.

    inputs       interpolate the input embeddings; gradients at alpha = 1/steps, ..., 1
    activations  interpolate every receiver's input (all edges scaled by alpha at once)
    clean-corrupted  the two endpoints only (alpha = 0 and 1)

With one step, EAP-IG (inputs) is EAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.attribution import attribute
from circuitfind.errors import ConfigError
from circuitfind.methods.common import refuse_gradient_at_clean_of_kl, setups, to_level, warn_if_all_zero


@dataclass(frozen=True)
class EAPIGConfig:
    steps: int = 5
    variant: Literal["inputs", "activations", "clean-corrupted"] = "inputs"
    level: Literal["edge", "node"] = "edge"  # "node": score heads and MLPs (the sum of their out-edges' scores)


def score(model, task, cfg: EAPIGConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None):
    if cfg.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {cfg.steps}")
    if cfg.variant not in ("inputs", "activations", "clean-corrupted"):
        raise ConfigError(f"unknown EAP-IG variant {cfg.variant!r}; use inputs, activations or clean-corrupted")
    alphas = [0.0, 1.0] if cfg.variant == "clean-corrupted" else [i / cfg.steps for i in range(1, cfg.steps + 1)]
    if alphas == [1.0]:  # one step: EAP, the clean run alone
        refuse_gradient_at_clean_of_kl(task, f"eap-ig with steps=1 (variant {cfg.variant})")
    interpolate = "activations" if cfg.variant == "activations" else "inputs"
    edges = sum(-s.sign * s.weight * attribute(model, s.batch.clean, s.ablated, s.objective, alphas=alphas,
                                               interpolate=interpolate, consume=True, shared=s.shared)
                for s in setups(model, task, ablation, seed, batch_size))
    if alphas == [1.0]:
        warn_if_all_zero(edges, task, "eap-ig (one step)")
    return to_level(edges, model.graph, cfg.level)
