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

from circuitfind.engine.walk import FactoredGrad, Inputs, Walk
from circuitfind.errors import ConfigError

Objective = Callable[[Tensor], Tensor]  # logits [batch, vocab] → scalar


def attribute(model, inputs: Inputs, ablated: Tensor, objective: Objective, *,
              alphas: Sequence[float] = (1.0,), interpolate: str = "inputs") -> Tensor:
    """First-order edge scores [dst, src] (zero off the graph), averaged over the interpolation alphas.

    alphas: where to take gradients, as fractions of the way from the ablated run (0) to the clean
    one (1). (1.0,) is EAP; (1/n, 2/n, ..., 1) is EAP-IG with n steps. interpolate: "inputs" moves
    the input embedding only; "activations" moves every receiver's input (every edge weighted alpha).
    """
    if not alphas:
        raise ConfigError("alphas must name at least one interpolation point")
    if interpolate not in ("inputs", "activations"):
        raise ConfigError(f"interpolate must be 'inputs' or 'activations', got {interpolate!r}")
    g = model.graph
    scores = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float32, device=model.device)
    reads = g.edge_mask.sum(1)  # how many senders each receiver reads (a prefix of the sender order)
    weight = 1.0 / len(alphas)
    D: list[Tensor] = []  # [src, batch·pos·d], from the clean run: recorded by the alpha = 1 pass itself

    cache: dict = {}  # Σ_d D at each position [src, batch·pos]; q/k/v gradients waiting for their layer
    pending: dict[int, list[tuple[Tensor, FactoredGrad]]] = {}

    def score_factored(items: list[tuple[Tensor, FactoredGrad]]) -> None:
        """−⟨gh − α − β·x̂, D⟩ for a layer's q, k and v receivers at once: one read of D."""
        rows = torch.cat([r for r, _ in items])
        grads = [f for _, f in items]
        n = int(reads[rows].max())
        Dn = D[0][:n]
        t, d = grads[0].xhat.shape
        if "sum" not in cache:
            cache["sum"] = D[0].view(g.n_senders, t, d).sum(-1)
        xdot = torch.bmm(Dn.view(n, t, d).transpose(0, 1), grads[0].xhat[:, :, None])[..., 0]  # [t, n]
        gh = torch.cat([f.gh.reshape(f.gh.shape[0], -1) for f in grads])
        alpha, beta = torch.cat([f.alpha for f in grads]), torch.cat([f.beta for f in grads])
        part = -(gh @ Dn.T) + alpha @ cache["sum"][:n].T + beta @ xdot
        scores[rows, :n] += weight * part.float()

    def accumulate(rows: Tensor, grad) -> None:
        if isinstance(grad, FactoredGrad):
            waiting = pending.setdefault(grad.layer, [])
            waiting.append((rows, grad))
            if len(waiting) == 3:  # q, k and v of this layer have all arrived
                score_factored(pending.pop(grad.layer))
            return
        n = int(reads[rows].max())  # grad [r, batch·pos·d]
        scores[rows, :n] -= weight * (grad.detach() @ D[0][:n].T).float()

    order = sorted(alphas, key=lambda a: a != 1.0)  # the clean pass first: it records D
    if 1.0 not in alphas:
        clean = Walk(model, inputs, ablated, None, record=True)
        with torch.no_grad():
            clean.run()
        D.append(clean.diffs().reshape(g.n_senders, -1))
    for alpha in order:
        with torch.enable_grad():  # whatever the caller's grad mode, this pass needs gradients
            if interpolate == "activations" and alpha != 1.0:
                masks = (float(alpha) * g.edge_mask.to(model.device, model.dtype))[None]
                walk = Walk(model, inputs, ablated, masks, on_grad=accumulate)
            else:
                walk = Walk(model, inputs, ablated, None, on_grad=accumulate, input_alpha=float(alpha),
                            record=not D)
            logits = walk.run()[0]
            if not D:
                D.append(walk.diffs().reshape(g.n_senders, -1))
            value = objective(logits)
            if value.ndim != 0:
                raise ConfigError(f"the objective must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
            for items in pending.values():  # layers whose q/k/v did not all receive a gradient
                score_factored(items)
            pending.clear()
    return scores * g.edge_mask.to(scores.device)
