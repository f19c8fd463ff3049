"""Integrated gradients over one node's output at a time: EAP-IG "activations" as the EAP-IG library and the
MIB circuit track define it (`get_scores_ig_activations` in hannamw/EAP-IG src/eap/attribute.py, commit
795f560, and in hannamw/MIB-circuit-track attribute.py; the two agree).

The estimator. Nodes u: the input embedding, each layer's attention output (all its heads together), each MLP
output — 1 + 2L of them. For each u and k = 1..n, one pass (u, k): u's output is replaced by the constant
abl_u + (k/n)(clean_u − abl_u), so no gradient flows through u, and everything else is computed from the
residual stream; every receiver v gets the objective's gradient g_v at its input, and every edge u'→v scores
⟨g_v, abl_u' − clean_u'⟩ with the clean run's outputs. Scores are the mean over all (1 + 2L)·n passes.

How it is cheap without changing that value (pass (u, k) reads the clean run up to u, the "prefix"):
- Suffix. A pass is the clean run up to u; from the residual just after u on it differs. That part alone is
  run, from the clean residual there with u's difference scaled, (1 − k/n) D_u taken off: a pass interpolating a
  node at layer l computes layers l.. only. Its n − 1 steps k < n run together, as one batch of (n − 1)
  copies of the examples, and their receiver gradients are summed over the copies before they are scored.
- Prefix. Below u every pass is the clean run, whose backward is linear in what arrives: the gradient each
  pass sends into the residual it starts from, summed over all passes, is pushed down the clean run once for
  every node together (one backward over the clean graph, each node's sum entering just below u so that none of
  it goes through u). Prefix receivers are scored from that one backward.
- k = n. The pass is the clean forward itself with u cut from the backward: its suffix receivers get the clean
  gradient (EAP's), and what it sends below u is the clean run's gradient there; so no k = n pass is run.
- The last MLP (sequential blocks) and the logits of a suffix run are computed at the answer positions alone:
  nothing else reads them, and the MLP's input gradient is zero elsewhere.

Cost, for L layers and n steps: one recorded clean forward, two backwards over it, and per node (n − 1) copies
of the layers after it, forward and backward: about (n − 1)/n · (1 + 2L)/2 full passes instead of (1 + 2L)·n.
`benchmarks/node_ig.py` measures it in forward-equivalents on GPT-2 small's shape (RESULTS.md).

Checked against the slow re-derivation (tests/reference.py, one pass per node and step by plain autograd) by
tests/test_eap_ig.py::test_eap_ig_activations_matches_the_slow_reference (GPT-2, Llama with grouped-query
attention, NeoX's parallel blocks; with and without a shared prefix).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from circuitfind.engine.attribution import _Scorer
from circuitfind.engine.shared_prefix import SharedPrefix
from circuitfind.engine.walk import Inputs, Walk
from circuitfind.engine.walk_ops import gather_at, spread
from circuitfind.errors import ConfigError

Objective = Callable[[Tensor], Tensor]  # logits [batch, vocab] → scalar


class _Route:
    """The on_grad of a walk whose backward is run twice: scores go to whichever scorer is current."""

    def __init__(self):
        self.to: Callable | None = None

    def __call__(self, rows, grad, span):
        self.to(rows, grad, span)


class _Copies:
    """Receiver gradients of a walk over `m` copies of the batch, summed over the copies and then scored
    (`base`), so scoring costs one product whatever m. Gradients handed out a span of token rows at a time
    (q/k/v) are summed into `acc` and scored when a receiver group's last span arrives."""

    def __init__(self, base: _Scorer, m: int, rows_per_copy: int, d: int):
        self.base, self.m, self.bp, self.d = base, m, rows_per_copy, d
        self.acc: Tensor | None = None

    def __call__(self, rows: Tensor, grad: Tensor, span: slice | None) -> None:
        r = grad.shape[0]
        if span is None:  # [r, m·bp·d]
            self.base(rows, grad.view(r, self.m, -1).sum(1), None)
            return
        if span.start == 0:
            self.acc = grad.new_zeros(r, self.bp, self.d)
        piece, at = grad.view(r, -1, self.d), span.start
        while at < span.stop:  # the span's rows, copy by copy
            row = at % self.bp
            take = min(span.stop - at, self.bp - row)
            self.acc[:, row: row + take] += piece[:, at - span.start: at - span.start + take]
            at += take
        if span.stop == self.m * self.bp:
            self.base(rows, self.acc.view(r, -1), None)
            self.acc = None


def _clean_walk(walk: Walk) -> tuple[Tensor, dict]:
    """Run a (recorded, gradient) walk to the logits, keeping the residual at every block boundary:
    ("pre", l) before layer l's attention (("pre", L): before the logits), ("mid", l) after it."""
    walk._embed()
    kept = {}
    for l in range(walk.cfg.n_layers):
        kept["pre", l] = walk.resid
        resid_pre, base_pre = walk.resid, walk.base
        walk._attention(l)
        kept["mid", l] = walk.resid
        walk._mlp(l, resid_pre, base_pre) if walk.cfg.parallel else walk._mlp(l, walk.resid, walk.base)
        walk.layer = l + 1
    kept["pre", walk.cfg.n_layers] = walk.resid
    return walk._logits(), kept


def _nodes(model) -> list[tuple[str, int, list[int], tuple[str, int], int]]:
    """The library's nodes in order: (kind, layer, their senders, the boundary their suffix starts from, the
    layer it starts at). Sequential blocks: after attention l the MLP of layer l reads it; parallel blocks: only
    layer l + 1 does."""
    g, cfg = model.graph, model.cfg
    out = [("input", 0, [0], ("pre", 0), 0)]
    for l in range(cfg.n_layers):
        heads = [g.head_sender(l, h) for h in range(g.n_heads)]
        after_attn = ("pre", l + 1) if cfg.parallel else ("mid", l)
        out.append(("attn", l, heads, after_attn, l + 1 if cfg.parallel else l))
        out.append(("mlp", l, list(g.mlp_senders(l)), ("pre", l + 1), l + 1))  # (every expert together)
    return out


def _suffix_receivers(model) -> Tensor:
    """How many nodes' suffixes hold each receiver [dst]: the k = n passes in which it gets the clean gradient."""
    g, cfg = model.graph, model.cfg
    w = torch.zeros(g.n_receivers)
    for l in range(cfg.n_layers):
        for t in "qkv":
            for h in range(g.n_heads):
                w[g.qkv_receiver(l, t, h)] = 1 + 2 * l
        w[list(g.mlp_receivers(l))] = 1 + 2 * l + (0 if cfg.parallel else 1)
    w[g.logits_receiver] = 1 + 2 * cfg.n_layers
    return w


def _injections(model, kind: str, l: int) -> list[tuple[tuple[str, int], float]]:
    """Where the cotangent a pass sends into its starting residual enters the clean graph, so that it reaches
    everything below u but not u: the starting residual minus u's output, as kept boundaries."""
    if kind == "attn" and not model.cfg.parallel:
        return [(("pre", l), 1.0)]  # mid − attention output = pre
    if kind == "mlp" and not model.cfg.parallel:
        return [(("mid", l), 1.0)]  # pre(l + 1) − MLP output = mid
    if kind == "mlp":
        return [(("mid", l), 1.0)]  # parallel: pre(l + 1) − MLP output = pre + attention output = mid
    return [(("pre", l + 1), 1.0), (("mid", l), -1.0), (("pre", l), 1.0)]  # parallel attention: pre + MLP output


def _tiled(inputs: Inputs, shared: SharedPrefix | None, m: int) -> tuple[Inputs, SharedPrefix | None]:
    """m copies of the batch, one after another (a shared prefix's keys and values too)."""
    tiled = Inputs(inputs.tokens.repeat(m, 1), inputs.attention_mask.repeat(m, 1), inputs.answer_pos.repeat(m))
    if shared is not None:
        shared = SharedPrefix(shared.n, tuple(k.repeat(m, 1, 1, 1) for k in shared.keys),
                              tuple(v.repeat(m, 1, 1, 1) for v in shared.values))
    return tiled, shared


def _suffix(model, inputs: Inputs, shared, start: Tensor, layer: int, at_mlp: bool, on_grad,
            objective: Objective, m: int) -> Tensor:
    """The walk from `start` [1, m·b, pos, d] (a leaf: u's output a constant) to the logits, with receiver
    gradients; backward of the sum over the m copies of each copy's objective. Returns start's gradient."""
    d = model.cfg.d_model
    tiled, tiled_shared = _tiled(inputs, shared, m)
    zeros = start.new_zeros(model.graph.n_senders, 1, 1, d)  # an unmasked, unrecorded walk reads none
    walk = Walk(model, tiled, zeros, None, on_grad=on_grad, shared=tiled_shared)
    walk.resid, walk.base = start, start.new_zeros(1, 1, 1, d)
    if at_mlp:  # sequential blocks: the suffix after attention l begins with the MLP of layer l
        walk._mlp(layer, walk.resid, walk.base)
        layer += 1
    last = model.cfg.n_layers - 1
    walk.layer = layer
    if layer <= last and not model.cfg.parallel and not model.graph.n_experts:
        # all but the last MLP as the walk runs them; that one at the answers (experts: every position)
        walk.run(stop=last)
        walk._attention(last)
        logits = _last_mlp_at_answers(walk, on_grad)
    else:
        logits = walk.run()[0]  # [m·b, vocab]
    b = inputs.tokens.shape[0]
    value = sum(objective(logits[i * b:(i + 1) * b]) for i in range(m))
    value.backward()
    return start.grad


def _last_mlp_at_answers(walk: Walk, on_grad) -> Tensor:
    """The last layer's MLP (sequential blocks) and the logits, at each prompt's answer position alone: nothing
    else reads that MLP, so its output elsewhere is never used and its input's gradient there is 0. Receiver
    gradients as the walk hands them out (zero off the answer positions). → logits [m·b, vocab]."""
    model, g = walk.model, walk.g
    l = walk.cfg.n_layers - 1
    pos = walk.inputs.answer_pos.view(1, walk.bp)
    shape = (walk.bp, walk.p, walk.d)
    at = gather_at(walk.resid, pos)  # [1, m·b, d]
    x = at.view_as(at)  # the MLP receiver's input, a node of its own

    def receiver(rows: Tensor):
        return lambda grad: on_grad(rows, spread(grad, pos, shape), None)
    x.register_hook(receiver(torch.tensor([g.mlp_receiver(l)])))
    mlp = model.blocks[l].mlp
    bias = model.block_bias(l, "mlp")
    final = at + mlp(model.blocks[l].ln2(x)) + (0 if bias is None else bias)
    y = final.view_as(final)
    y.register_hook(receiver(torch.tensor([g.logits_receiver])))
    return model.unembed(y, wide=True)[0]


def node_integrated_gradients(model, inputs: Inputs, ablated: Tensor, objective: Objective, *, steps: int = 5,
                              shared: SharedPrefix | None = None, per_example: bool = False):
    """EAP-IG over node outputs (module docstring): edge scores [dst, src], zero off the graph, in
    `attribute`'s convention (⟨g_v, abl_u − clean_u⟩ averaged over the (1 + 2L)·steps passes).

    ablated [src, batch|1, pos|1, d]: what each node is interpolated from (its ablated output); shared: the
    prefix the prompts share with the ablated run, skipped as `attribute` skips it. per_example: also each
    example's part [batch, dst, src], as `attribute` gives it."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    g, cfg = model.graph, model.cfg
    examples = inputs.batch if per_example else None
    route = _Route()
    with torch.enable_grad():
        clean = Walk(model, inputs, ablated, None, on_grad=route, record=True, shared=shared)
        logits, kept = _clean_walk(clean)
        D = clean.diffs()  # [src, batch, pos, d] (past a shared prefix)
        eap = _Scorer(g, model.device, 1.0, examples, cfg.d_model)
        eap.D = D.reshape(g.n_senders, -1)
        value = objective(logits[0])
        if value.ndim != 0:
            raise ConfigError(f"the objective must return a scalar; got shape {tuple(value.shape)}")
        for t in kept.values():
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        route.to = eap
        value.backward(retain_graph=True)  # EAP: every k = n pass's suffix gradients, and its cotangents
        clean_grad = {key: t.grad.detach().clone() for key, t in kept.items() if t.grad is not None}
        suffix = _Scorer(g, model.device, 1.0, examples, cfg.d_model)
        suffix.D = eap.D
        b, p = D.shape[1], D.shape[2]
        m = steps - 1
        into: dict[tuple[str, int], Tensor] = {}
        for kind, l, senders, start_at, layer in _nodes(model):
            sent = clean_grad[start_at].clone()  # the k = n pass's
            if m:
                Du = D[senders].sum(0)  # [batch, pos, d]
                base = kept[start_at].detach()[0]
                start = torch.cat([base - (1 - k / steps) * Du for k in range(1, steps)])[None].requires_grad_(True)
                copies = _Copies(suffix, m, b * p, cfg.d_model)
                at_mlp = kind == "attn" and not cfg.parallel
                grad = _suffix(model, inputs, shared, start, layer, at_mlp, copies, objective, m)
                sent += grad.view(1, m, b, p, -1).sum(1)
            if kind == "input":
                continue  # nothing below the embedding
            for key, sign in _injections(model, kind, l):
                into[key] = into[key] + sign * sent if key in into else sign * sent
        prefix = _Scorer(g, model.device, 1.0, examples, cfg.d_model)
        prefix.D = eap.D
        route.to = prefix
        keys = [key for key in into if kept[key].requires_grad]
        if keys:  # every pass's gradient below its node, down the clean run once
            torch.autograd.backward([kept[key] for key in keys], [into[key] for key in keys])
    weight = _suffix_receivers(model).to(eap.scores)[:, None]
    passes, on_graph = (1 + 2 * cfg.n_layers) * steps, g.edge_mask.to(weight.device)
    total = (weight * eap.scores + prefix.scores + suffix.scores) / passes * on_graph
    if per_example:
        return total, (weight * eap.per_example + prefix.per_example + suffix.per_example) / passes * on_graph
    return total
