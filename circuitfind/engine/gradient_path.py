"""GradPath: the points where EAP-GP (Zhang et al. 2025, "EAP-GP: Mitigating Saturation Effect in
Gradient-based Automated Circuit Identification", arXiv 2502.06852, Eq. 8) takes its gradients.

EAP-IG takes gradients on the straight line between the ablated and the clean input embedding, which can cross
regions where the metric is flat (saturated) and the gradient says little. GradPath instead starts at the clean
input and walks towards the ablated run's output, each step of fixed length down the gradient of how far the
model's output still is from it:

    γ_0 = x                                        the input sender's clean output   [batch, pos, d]
    g_j = ∂ ‖G(γ_{j−1}) − G(x')‖² / ∂γ_{j−1}         G: the logits at the answer position [batch, vocab]
    γ_j = γ_{j−1} − step · g_j / ‖g_j‖              ‖·‖ over each example's [pos, d]: a step of `step` each

x' is the input sender's ablated output, so G(x') is the model run from the ablated input (every other sender
computed from it), the end of EAP-IG's path (under corrupted ablation, the corrupted run). Examples do not
interact, so the gradient of the batch's summed distance is each example's own.

Reading of the paper. Its Eq. 8 defines the path per node u, with only u's output moved; one descent per node is
out of reach (the paper reports EAP-GP at a few times EAP-IG's cost), and, as EAP-IG's own "inputs" variant,
the path is taken at the input embedding alone and every edge is scored from it. The paper's code is not
published; two public re-implementations read Eq. 8 the same way (unit steps from the clean input, k = 5). They
measure G at every position; here G is the logits at the answer position, the output the task's metric reads
(in a causal model the other positions' logits are other predictions, not the behaviour).
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.walk import Inputs, Walk


def output_at(model, inputs: Inputs, x: Tensor) -> Tensor:
    """G(x): logits at the answer position [batch, vocab] with the input sender's output x [batch, pos, d]."""
    zeros = x.new_zeros(model.graph.n_senders, 1, 1, x.shape[-1])  # an unmasked walk reads no other ablated output
    return Walk(model, inputs, zeros, None, input_alpha=0.0, input_ablated=x).run()[0]


def gradient_path(model, inputs: Inputs, ablated: Tensor, steps: int, step: float = 1.0) -> list[Tensor]:
    """γ_1 .. γ_steps, each [batch, pos, d] (γ_0, the clean input, is not among them).

    ablated [src, batch|1, pos|1, d]: the ablated outputs; only the input sender's (ablated[0]) is read."""
    b, p = inputs.tokens.shape
    x_abl = ablated[0].expand(b, p, ablated.shape[-1])
    with torch.no_grad():
        target = output_at(model, inputs, x_abl)  # G(x')  [batch, vocab]
        gamma = model.embed(inputs.tokens, model.positions(inputs.attention_mask))  # γ_0 = x
    path = []
    for _ in range(steps):
        with torch.enable_grad():
            gamma = gamma.detach().requires_grad_(True)
            distance = (output_at(model, inputs, gamma) - target).pow(2).sum()
            (grad,) = torch.autograd.grad(distance, gamma)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(b, 1, 1)  # a zero gradient: no step
        gamma = (gamma - step * grad / norm).detach()
        path.append(gamma)
    return path
