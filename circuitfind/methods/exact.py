"""Exact activation patching: ablate every edge alone and measure the metric (`engine.edge_effects`),
batched through masks and reusing the clean run below each receiver's layer. `exact-node` ablates
each node whole (all its out-edges: the classic head-ablation scan, `engine.node_effects`) and
writes its score on each of its out-edges, as the other node methods do.

Each patches in one of two directions (Heimersheim & Nanda 2024 name them), a method each:
    noising    `exact`, `exact-node`: in the clean run, give edge e its ablated value:
               score = m(clean) − m(clean, e ablated)            the loss of behaviour
    denoising  `exact-denoising`, `exact-node-denoising`: in the corrupted run, give edge e its
               clean value (corrupted ablation only):
               score = m(corrupt, e restored) − m(corrupt)       the behaviour restored
Both are positive for an edge that supports the task. Without interactions between edges they are
equal; where edges are redundant (a backup head) noising scores each copy near 0, and where they are
needed together (an AND) denoising does. Integrated gradients (EAP-IG) follow the path between the two
runs and so sit between them: on a model whose logits are affine in the edges and a quadratic metric,
EAP-IG in the limit of many steps is exactly their mean (`tests/test_methods.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.patching import edge_effects, node_effects
from circuitfind.errors import ConfigError
from circuitfind.methods.common import Examples, on_out_edges, setups


@dataclass(frozen=True)
class ExactConfig:
    max_masks: int = 32  # masks per forward (memory grows with it)
    level: Literal["edge", "node"] = "edge"  # "node": ablate each head, MLP and the input whole
    direction: Literal["noising", "denoising"] = "noising"  # "denoising": the other way (module docstring)

    def __post_init__(self):
        if self.max_masks < 1:
            raise ConfigError(f"max_masks must be at least 1, got {self.max_masks}")
        if self.level not in ("edge", "node"):
            raise ConfigError(f"level must be 'edge' or 'node', got {self.level!r}")
        if self.direction not in ("noising", "denoising"):
            raise ConfigError(f"direction must be 'noising' or 'denoising', got {self.direction!r}")


def score(model, task, cfg: ExactConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True,
          batch_size: int | None = None, per_example: bool = False, place=None):
    """Scores [dst, src]; per_example: (scores, each example's [n, dst, src]) from the same forwards (the metric
    kept per example; the scores are its mean). place: where the ablated outputs and per-example effects live
    (`engine.offload.Place`; the masked walks' store of D stays on the device)."""
    denoising = cfg.direction == "denoising"
    effects, examples = 0, Examples(model.graph, place=place)
    for s in setups(model, task, ablation, seed, batch_size, denoising=denoising, place=place):  # Σ weight · each batch's
        # noising: the clean run, each edge given its ablated value; denoising: the roles swapped, the
        # corrupted run, each edge given its clean value (s.ablated holds the clean run's outputs then)
        run = s.batch.corrupt if denoising else s.batch.clean
        objective = s.per_example if per_example else s.per_mask
        if cfg.level == "node":
            part = node_effects(model, run, s.ablated, objective, max_masks=cfg.max_masks, shared=s.shared,
                                per_example=per_example, place=place)
        else:
            part = edge_effects(model, run, s.ablated, objective, max_masks=cfg.max_masks, quiet=quiet,
                                shared=s.shared, per_example=per_example, place=place)
        # part: m(patched) − m(run); noising's score is the behaviour lost, denoising's the behaviour restored
        part = (1 if denoising else -1) * s.sign * part
        if per_example:  # [(dst,) src, batch]: each example's, whose mean is the batch's
            part = part.movedim(-1, 0)
            examples.add(s, on_out_edges(model.graph, part) if cfg.level == "node" else part)
            part = part.mean(0)
        effects = effects + s.weight * part
    effects = on_out_edges(model.graph, effects) if cfg.level == "node" else effects
    return (effects, examples.data) if per_example else effects
