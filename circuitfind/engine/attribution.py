"""Attribution: the gradient of an objective w.r.t. every receiver's input, in one backward.

First-order effect of ablating edge u→v (EAP):   score[v, u] = ⟨abl_u − out_u, ∂objective/∂in_v⟩
                                                              = −⟨D_u, g_v⟩
For every edge at once this is one product per layer, `−G_layer @ Dᵀ`, computed inside the backward
pass as each layer's receiver gradients appear (they are never all held at once). Integrated
gradients average g_v over runs whose input embedding is interpolated between the ablated and the
clean input (`alphas`), with D always from the clean run.

    objective = lambda logits: logit_diff(logits, targets).mean()    # logits [batch, vocab]
    scores = attribute(model, inputs, ablated, objective)            # [dst, src]
    scores = attribute(model, inputs, ablated, objective, alphas=[0.2, 0.4, 0.6, 0.8, 1.0])  # EAP-IG
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from circuitfind.engine.walk import Inputs, Walk
from circuitfind.errors import ConfigError

Objective = Callable[[Tensor], Tensor]  # logits [batch, vocab] → scalar


def attribute(model, inputs: Inputs, ablated: Tensor, objective: Objective, *,
              alphas: Sequence[float] = (1.0,)) -> Tensor:
    """First-order edge scores [dst, src] (zero off the graph), averaged over the interpolation alphas.

    alphas: where to take gradients, as fractions of the way from the ablated input embedding
    (0) to the clean one (1). (1.0,) is EAP; (1/n, 2/n, ..., 1) is EAP-IG with n steps.
    """
    if not alphas:
        raise ConfigError("alphas must name at least one interpolation point")
    g = model.graph
    scores = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float32, device=model.device)
    reads = g.edge_mask.sum(1)  # how many senders each receiver reads (a prefix of the sender order)
    clean = Walk(model, inputs, ablated, None, record=True)
    with torch.no_grad():
        clean.run()
    D = clean.diffs().reshape(g.n_senders, -1)  # [src, batch·pos·d]
    weight = 1.0 / len(alphas)

    def accumulate(rows: Tensor, grad: Tensor) -> None:  # grad [r, batch·pos·d]
        n = int(reads[rows].max())
        scores[rows, :n] -= weight * (grad.detach() @ D[:n].T).float()

    for alpha in alphas:
        with torch.enable_grad():  # whatever the caller's grad mode, this pass needs gradients
            walk = Walk(model, inputs, ablated, None, on_grad=accumulate, input_alpha=float(alpha))
            value = objective(walk.run()[0])
            if value.ndim != 0:
                raise ConfigError(f"the objective must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
    return scores * g.edge_mask.to(scores.device)
