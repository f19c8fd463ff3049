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

from circuitfind.engine.offload import STREAM_CHUNK_BYTES, Place, fetch, move
from circuitfind.engine.shared_prefix import SharedPrefix
from circuitfind.engine.walk import Inputs, Walk
from circuitfind.errors import ConfigError

Objective = Callable[[Tensor], Tensor]  # logits [batch, vocab] → scalar


class _Scorer:
    """Turns receiver gradients into edge scores as the backward pass produces them.

    D [src, batch·pos·d] is the clean run's sender differences; scores[v, u] −= weight·⟨g_v, D_u⟩,
    one GEMM per batch of receivers and chunk of senders (a layer's q/k/v arrive together, so D is read once
    for them); each receiver reads a prefix of the sender order (`reads`). examples=b: also each example's part
    of the scores, `per_example` [b, dst, src] (the same products, split by example: no more FLOPs).

    place (`offload.Place`): where D and the per-example scores live. D is read `chunk` senders at a time
    (`offload.STREAM_CHUNK_BYTES` of D, the same chunks wherever D lives, so the scores are the same bit for
    bit), each chunk fetched to the gradients' device off it. With a store dtype (bf16) each chunk is widened
    to float32 and the gradient with it: every product and sum is float32 (`wide`)."""

    def __init__(self, graph, device, weight: float, examples: int | None = None, d_model: int = 0,
                 place: Place | None = None):
        self.g, self.weight, self.d, self.place = graph, weight, d_model, place
        self.wide = place is not None and place.dtype is not None
        self.per_example = None if examples is None else \
            (place.zeros if place is not None else _zeros)((examples, graph.n_receivers, graph.n_senders),
                                                           torch.float32, device)
        self._scores = None if examples is not None else \
            torch.zeros(graph.n_receivers, graph.n_senders, dtype=torch.float32, device=device)
        self.reads = graph.edge_mask.sum(1)
        self.D: Tensor | None = None

    @property
    def scores(self) -> Tensor:
        """[dst, src]; with per-example parts, their sum (taken once, not by each product as it arrives)."""
        return self._scores if self.per_example is None else self.per_example.sum(0)

    def _chunks(self, n: int, width: int):
        """(first, last) sender ranges of D [:n] whose columns of `width` elements fill a chunk."""
        step = max(1, STREAM_CHUNK_BYTES // max(1, width * self.D.element_size()))
        return [(c, min(c + step, n)) for c in range(0, n, step)]

    def _read(self, D: Tensor, device, dtype) -> Tensor:
        """A chunk of D on the gradients' device (in float32 with a store dtype): a view where it is there."""
        return fetch(self.place, D, device, torch.float32 if self.wide else dtype)

    def __call__(self, rows: Tensor, grad: Tensor, span: slice | None) -> None:
        """grad [r, len(span)·d]: the receivers' input gradients at token rows span (None: all)."""
        n = int(self.reads[rows].max())
        grad = grad.detach().float() if self.wide else grad.detach()
        if self.per_example is not None:
            return self._by_example(rows, n, grad, span)
        for first, last in self._chunks(n, grad.shape[1]):
            D = self.D[first:last]
            if span is not None:  # these token rows of every sender: a strided view, no copy
                D = D.view(last - first, -1, grad.shape[1] // (span.stop - span.start))[:, span].flatten(1)
            D = self._read(D, grad.device, grad.dtype)
            self._scores[rows, first:last] -= move(self.weight * (grad @ D.T).float(), self._scores.device)
            del D  # (one chunk on the device at a time)

    def _by_example(self, rows: Tensor, n: int, grad: Tensor, span: slice | None) -> None:
        """The products of __call__ split by example, into per_example. Token rows are of width
        d_model; an example has pos of them. The examples wholly inside the span take one batched product (one
        GEMM each, as fast as the point estimate's one); a span that begins or ends inside an example (small
        gradient chunks) adds its ragged ends a piece at a time."""
        b, width = self.per_example.shape[0], self.d
        tokens = self.D.shape[1] // (b * width)  # token rows of one example
        start = 0 if span is None else span.start
        first, stop = start, start + grad.shape[1] // width
        index = rows.to(self.per_example.device)
        if len(rows) and bool((rows.diff() == 1).all()):
            index = slice(int(rows[0]), int(rows[-1]) + 1)  # a run of receivers: a strided add, no index_put
        lo, hi = -(-first // tokens), stop // tokens  # the examples wholly inside [first, stop)
        ends = [(first, lo * tokens), (hi * tokens, stop)] if hi > lo else [(first, stop)]
        total = self.D.shape[1]
        for u0, u1 in self._chunks(n, grad.shape[1]):
            D = self.D[u0:u1]  # [s, b·pos·d]
            if span is not None:  # these token rows of every sender (a strided view)
                D = D.view(u1 - u0, -1, total // (b * tokens))[:, span].flatten(1)
            D = self._read(D, grad.device, grad.dtype)
            s = u1 - u0
            if hi > lo:
                c0, c1, length = (lo * tokens - start) * width, (hi * tokens - start) * width, tokens * width
                g = grad[:, c0:c1].reshape(len(rows), hi - lo, length).transpose(0, 1)  # [e, r, pos·d] (a view)
                d = D[:, c0:c1].reshape(s, hi - lo, length).permute(1, 2, 0)  # [e, pos·d, s] (a view)
                parts = -self.weight * torch.bmm(g, d).float()  # [e, r, s]
                self.per_example[lo:hi, index, u0:u1] += move(parts, self.per_example.device)
            for e0, e1 in ends:  # the ragged rows, example by example
                while e0 < e1:
                    example, row = divmod(e0, tokens)
                    take = min(e1 - e0, tokens - row)
                    cols = slice((e0 - start) * width, (e0 - start + take) * width)
                    part = -self.weight * (grad[:, cols] @ D[:, cols].T).float()  # [r, s]
                    self.per_example[example, index, u0:u1] += move(part, self.per_example.device)
                    e0 += take
            del D  # (one chunk on the device at a time)


def _zeros(shape, dtype, device) -> Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


def attribute(model, inputs: Inputs, ablated: Tensor, objective: Objective, *,
              alphas: Sequence[float] = (1.0,), interpolate: str = "inputs", consume: bool = False,
              shared: SharedPrefix | None = None, per_example: bool = False, drop_layer: int | None = None,
              relevance: str | None = None, place: Place | None = None,
              input_points: Sequence[Tensor] | None = None):
    """First-order edge scores [dst, src] (zero off the graph), averaged over the interpolation alphas.

    alphas: where to take gradients, as fractions of the way from the ablated run (0) to the clean
    one (1). (1.0,) is EAP; (1/n, 2/n, ..., 1) is EAP-IG with n steps. interpolate: "inputs" moves
    the input embedding only; "activations" moves every receiver's input (every edge weighted alpha).
    consume: the caller no longer needs `ablated` (dense [src, batch, pos, d]); the sender differences
    are then written over it instead of into a second buffer of its size, and its contents are
    undefined after (interpolating inputs only; "activations" reads every ablated output each pass).
    shared: the prefix the prompts share with the ablated run (`shared_prefix`): no edge has an effect
    there (D = 0), so every pass skips it. `consume` needs `ablated` past the prefix alone then (as
    `ablated_outputs(..., shared=)` makes it).
    per_example: return (scores, each example's part of them [batch, dst, src], which sum to the scores), from
    the same passes: the backward's products are split by example (4·batch·dst·src bytes more, no more FLOPs).
    drop_layer: AtP*'s GradDrop — the backward with layer `drop_layer`'s outputs treated as constants, so
    no gradient reaches a receiver through that layer (its own receivers score 0).
    relevance: RelP's backward in place of the gradient ("lrp", or "lrp-ah" with attention patterns held
    constant; `walk_grad.RELEVANCE`): g_v is then v's LRP propagation coefficient.
    place: where `ablated` (the store, D written over it) and the per-example scores live (`offload.Place`:
    pinned CPU memory or a memory-mapped file, streamed to the device a layer, or a chunk of senders, at a
    time; or the device in a store dtype, bf16, with every product and sum in float32). The same scores bit
    for bit as on the device (tests/test_offload.py).
    input_points: the input sender's output at each gradient pass [batch, pos, d] (EAP-GP's path,
    `engine.gradient_path`), in place of alphas: the mean over these passes, D from a clean run of its own
    (on the device: no place).
    """
    g = model.graph
    b, p = inputs.tokens.shape
    if input_points is not None:  # each point an input alone: a pass at alpha 0 with the point as its ablated input
        if place is not None or interpolate != "inputs":
            raise ConfigError("input_points move the input alone (interpolate='inputs'), with the store on the device "
                              "(no place)")
        points = list(input_points)
        if not points or any(tuple(x.shape) != (b, p, model.cfg.d_model) for x in points):
            raise ConfigError(f"input_points must be one or more inputs [batch={b}, pos={p}, d_model={model.cfg.d_model}]")
        passes = [(0.0, x.detach()) for x in points]
    else:
        if not alphas:
            raise ConfigError("alphas must name at least one interpolation point")
        passes = [(alpha, None) for alpha in sorted(alphas, key=lambda a: a != 1.0)]  # the clean pass first
    if interpolate not in ("inputs", "activations"):
        raise ConfigError(f"interpolate must be 'inputs' or 'activations', got {interpolate!r}")
    scorer = _Scorer(g, model.device, 1.0 / len(passes), inputs.batch if per_example else None, model.cfg.d_model,
                     place)
    # consume: the recording pass writes D over `ablated`; the input's ablated output, which the
    # interpolated passes still read, is kept aside first if there are any
    reuse = consume and interpolate == "inputs" and ablated.is_contiguous() \
        and ablated.shape[1:3] == (b, p - (0 if shared is None else shared.n))
    interpolated = any(alpha != 1.0 for alpha, _ in passes)
    input_abl = ablated[0]
    if reuse and interpolated and input_points is None:  # (kept aside where the store lives: off the device, it stays off)
        input_abl = ablated[0].clone() if place is None or not place.holds(ablated) else place.put(ablated[0], copy=True)
    if all(alpha != 1.0 for alpha, _ in passes):  # D comes from the clean run; an alpha = 1 pass records it itself
        clean = Walk(model, inputs, ablated, None, record=True, overwrite_ablated=reuse, shared=shared, place=place)
        with torch.no_grad():
            clean.run()
        scorer.D = clean.diffs().reshape(g.n_senders, -1)
    for alpha, point in passes:
        with torch.enable_grad():  # whatever the caller's grad mode, this pass needs gradients
            if interpolate == "activations" and alpha != 1.0:
                masks = (float(alpha) * g.edge_mask.to(model.device, model.dtype))[None]
                walk = Walk(model, inputs, ablated, masks, on_grad=scorer, shared=shared, drop_layer=drop_layer,
                            relevance=relevance, place=place)
            elif scorer.D is None:  # the clean run, recording D
                walk = Walk(model, inputs, ablated, None, on_grad=scorer, record=True, overwrite_ablated=reuse,
                            shared=shared, drop_layer=drop_layer, relevance=relevance, place=place)
            else:  # an interpolated input (or a given one); no other sender's ablated output is read
                zeros = torch.zeros(g.n_senders, 1, 1, ablated.shape[-1], dtype=model.dtype, device=model.device)
                walk = Walk(model, inputs, zeros, None, on_grad=scorer, input_alpha=float(alpha),
                            input_ablated=input_abl if point is None else point,
                            shared=shared, drop_layer=drop_layer, relevance=relevance, place=place)
            logits = walk.run()[0]
            if scorer.D is None:
                scorer.D = walk.diffs().reshape(g.n_senders, -1)
            value = objective(logits)
            if value.ndim != 0:
                raise ConfigError(f"the objective must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
    scores = move(scorer.scores, model.device)
    on_graph = g.edge_mask.to(scores.device)
    if per_example:  # (in place: per-example scores off the device stay there)
        return scores * on_graph, scorer.per_example.mul_(g.edge_mask.to(scorer.per_example.device))
    return scores * on_graph


def edge_mask_integrated_gradients(model, inputs: Inputs, ablated: Tensor, objective: Objective, *, steps: int = 5,
                                   shared: SharedPrefix | None = None) -> Tensor:
    """auto-circuit's mask-gradient integrated gradients (`mask_gradient_prune_scores` with
    `integrated_grad_samples=steps`, UFO-101/auto-circuit auto_circuit/prune_algos/mask_gradient.py): every
    edge's mask set to the same value at once, at the steps + 1 points 0, 1/steps, ..., 1 (both endpoints), and
    the mask gradient of each edge summed over them. A partly masked edge carries m·out_u + (1 − m)·abl_u with
    out_u the sender's output *in that run* (auto-circuit adds mask·(patch − current output) to the receiver's
    input), so an edge's mask gradient is ⟨g_v, out_u − abl_u⟩ at the run's own out_u, not the clean run's.

    Returned in `attribute`'s convention, averaged instead of summed: −(1/(steps+1)) Σ_k ∂objective/∂mask[v, u]
    at mask = k/steps. (auto-circuit's mask is the patched fraction, 1 − ours; its score, the gradient of −metric,
    is then (steps + 1) times the method's score, the sign included.) [dst, src], zero off the graph."""
    from circuitfind.engine.patching import masked_forward

    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    g = model.graph
    full = g.edge_mask.to(model.device, model.dtype)
    total = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float32, device=model.device)
    for k in range(steps + 1):  # one mask value a pass: each receiver's input has a gradient of its own
        mask = (k / steps * full).requires_grad_(True)
        with torch.enable_grad():
            value = objective(masked_forward(model, inputs, ablated, mask, shared=shared))
            if value.ndim != 0:
                raise ConfigError(f"the objective must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
        total -= mask.grad.float()
    return total / (steps + 1) * g.edge_mask.to(total.device)
