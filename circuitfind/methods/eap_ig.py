"""EAP-IG (Hanna et al. 2024): integrated gradients along a straight path from the ablated to the clean run.
Each name computes one reference's quantity; the docstring of each says which, and the test that checks it
against a slow re-derivation (plain autograd on explicit receiver inputs, per-edge products: tests/reference.py).

    eap-ig            (variant "inputs") interpolate the input embedding alone; gradients at alpha = k/n with
                      points="right": k = 1..n, the MIB circuit track's `get_scores_eap_ig`
                      (hannamw/MIB-circuit-track attribute.py, `range(1, steps + 1)`), the default;
                      points="left": k = 0..n−1, the EAP-IG library's since its 2.0 rewrite
                      (hannamw/EAP-IG src/eap/attribute.py, `range(0, steps)`: the corrupted point in, the
                      clean point out). Both: D from the clean run, the mean over the n passes.
                      Tests: test_eap_ig_inputs_match_the_slow_reference (both points, tiny GPT-2 and Llama
                      GQA), test_left_points_with_one_step_is_the_gradient_at_the_corrupted_run.
    eap-ig-activations  (variant "node-outputs") one node's output interpolated at a time, as both the library's
                      and MIB's `get_scores_ig_activations`: nodes input, each layer's attention output (all
                      heads), each MLP output; k = 1..n each; the node's output a constant (no gradient through
                      it); every pass scores every edge; the mean over all (1 + 2L)·n passes
                      (`engine.node_ig`). Test: test_eap_ig_activations_matches_the_slow_reference.
    eap-ig-edges      (variant "edges") every edge's mask scaled at once: auto-circuit's mask-gradient
                      integrated gradients (`engine.attribution.edge_mask_integrated_gradients`: masks 0, 1/n,
                      ..., 1, the edge carrying m·(its sender's output in that run) + (1 − m)·ablated; divided by
                      the n + 1 samples auto-circuit sums). Test: test_eap_ig_edges_matches_the_slow_reference.
    clean-corrupted   gradients at the two endpoints only (alpha = 0 and 1), the library's `get_scores_clean_corrupted`.

Where the references' own ablations differ from circuitfind's, the names agree under corrupted ablation (their
"patching") alone: the library's EAP-IG-inputs takes no other; under mean ablation its EAP-IG-activations
interpolates each node towards 0 (its corrupted activations are left unfilled) while scoring with the mean's
differences, and its zero ablation zeroes hook_mlp_out with the MLP's output bias, which circuitfind's keeps
(biases belong to no sender). circuitfind interpolates towards, and scores with, the ablated output itself.
eap-ig-edges: auto-circuit's default ablation for mask gradients (resample from the corrupted prompts) is corrupted.

Before issue 40 `eap-ig-activations` scaled every edge by alpha = 1/n..1 at once with the clean run's D: neither
reference's quantity. Runs saved then say so when loaded (`circuit.filled_config`).

With one step, EAP-IG (inputs, points="right") is EAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from circuitfind.engine.attribution import attribute, edge_mask_integrated_gradients
from circuitfind.engine.node_ig import node_integrated_gradients
from circuitfind.errors import ConfigError
from circuitfind.methods.common import (Examples, refuse_gradient_at_clean_of_kl, setups, to_level,
                                        warn_if_all_zero)

VARIANTS = ("inputs", "node-outputs", "edges", "clean-corrupted")


@dataclass(frozen=True)
class EAPIGConfig:
    steps: int = 5
    variant: Literal["inputs", "node-outputs", "edges", "clean-corrupted"] = "inputs"
    # where along the path gradients are taken (variant "inputs"): "right" k = 1..n (MIB), "left" k = 0..n−1
    # (the EAP-IG library); eap-ig-activations fixes "right" (both references); the others take theirs
    points: Literal["right", "left"] = "right"
    level: Literal["edge", "node"] = "edge"  # "node": score heads and MLPs (the sum of their out-edges' scores)


def alphas(cfg: EAPIGConfig) -> list[float]:
    """The interpolation points of variants "inputs" and "clean-corrupted", from ablated (0) to clean (1)."""
    if cfg.variant == "clean-corrupted":
        return [0.0, 1.0]
    first = 1 if cfg.points == "right" else 0
    return [k / cfg.steps for k in range(first, first + cfg.steps)]


def score(model, task, cfg: EAPIGConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None,
          per_example: bool = False, place=None):
    """Scores [dst, src]; per_example: (scores, each example's [n, dst, src]), from the same passes (not the
    edges variant, whose masks are shared by all examples)."""
    if cfg.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {cfg.steps}")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"unknown EAP-IG variant {cfg.variant!r}; use one of {', '.join(VARIANTS)}")
    if cfg.points not in ("right", "left"):
        raise ConfigError(f"points must be 'right' (k = 1..n, MIB) or 'left' (k = 0..n−1, the EAP-IG library), "
                          f"got {cfg.points!r}")
    if cfg.points != "right" and cfg.variant != "inputs":
        raise ConfigError(f"points is for eap-ig (the inputs); the {cfg.variant} variant takes its reference's points")
    at_clean_alone = cfg.variant in ("inputs", "node-outputs") and cfg.steps == 1 and cfg.points == "right"
    if at_clean_alone:  # one step at the clean run: EAP, or per node the clean run with that node cut
        refuse_gradient_at_clean_of_kl(task, f"eap-ig with steps=1 (variant {cfg.variant})")
    if per_example and cfg.variant == "edges":
        raise ConfigError("eap-ig-edges sets every edge's mask at once for all examples, so its mask gradients are "
                          "the batch's, not each example's: no per-example scores (eap-ig and eap-ig-activations "
                          "have them)")
    if place is not None and cfg.variant not in ("inputs", "clean-corrupted"):
        raise ConfigError(f"store_on and store_dtype are for eap-ig and clean-corrupted (one store, streamed); the "
                          f"{cfg.variant} variant keeps its store on the device in the model's dtype")
    edges, examples = 0, Examples(model.graph, cfg.level, place)
    for s in setups(model, task, ablation, seed, batch_size, place=place):
        if cfg.variant == "node-outputs":
            raw = node_integrated_gradients(model, s.batch.clean, s.ablated, s.objective, steps=cfg.steps,
                                            shared=s.shared, per_example=per_example)
        elif cfg.variant == "edges":
            raw = edge_mask_integrated_gradients(model, s.batch.clean, s.ablated, s.objective, steps=cfg.steps,
                                                 shared=s.shared)
        else:
            raw = attribute(model, s.batch.clean, s.ablated, s.objective, alphas=alphas(cfg), consume=True,
                            shared=s.shared, per_example=per_example, place=place)
        if per_example:  # each example's part of the batch's mean, times the batch's size: its own score
            raw, parts = raw
            examples.add(s, parts.mul_(-s.sign * s.batch.size))  # (in place: off the device it stays there)
        edges = edges - s.sign * s.weight * raw
    if at_clean_alone:
        warn_if_all_zero(edges, task, "eap-ig (one step)")
    edges = to_level(edges, model.graph, cfg.level)
    return (edges, examples.data) if per_example else edges
