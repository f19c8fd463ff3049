"""The masked forward: any set of edges patched in one pass, batches of masks in one call.

For receiver v, with senders u (`graph.py`), mask m [dst, src], the current run's sender outputs
out_u and the ablated run's outputs abl_u:

    in_v = Σ_u  m[v,u] · out_u + (1 − m[v,u]) · abl_u   (+ the biases written before v)
         = base_v + Σ_u m[v,u] · D_u,        D_u = out_u − abl_u,  base_v = biases + Σ_u abl_u

m = 1 everywhere reproduces the clean run; m = 0 everywhere the ablated run. Masks are floats and
differentiable (learned-mask methods train them).

How it stays fast:
- D is stored sender-major `[k, src, batch·pos·d_model]`, so mixing every receiver of a layer is one
  GEMM `M[k, dst, src] @ D[k, src, ·]` at BLAS speed, to which the walk adds its running base_v. On
  the CPU, receivers that read no sender skip the product, and very sparse masks are mixed by row
  additions (`store._mix_plan`).
- A `Workspace` passed to every call of a sweep keeps the buffers warm from call to call.
- A layer whose mask rows are all ones reads the real residual stream: no mixing, fused projections.
- A sender none of whose out-edges is kept in any mask is not computed (its ablated output stands in).
- Logits are computed only at each example's answer position.
- Positions the prompts share with the ablated run (`shared_prefix.py`) are not computed at all: under
  every mask they are the clean run's, and later positions read only their keys and values.
- `prefix(...)` caches the clean run below a layer; a batch of masks whose rows below that layer are
  all ones continues from it (exact patching and ACDC patch one layer at a time). `prefixes(...)`
  gives the prefix below every layer from one pass (snapshots sharing its stored D).

Worked example:

    inputs = Inputs.of(tokens, attention_mask, answer_pos)        # [batch, pos], [batch]
    abl = ablated_outputs(model, "corrupted", inputs, corrupt)     # [src, batch, pos, d_model]
    g = model.graph
    mask = torch.ones(g.n_receivers, g.n_senders)
    mask[g.edge_index("a0.h1->a1.h2<q>")] = 0                     # patch one edge
    logits = masked_forward(model, inputs, abl, mask)             # [batch, vocab] at answer_pos
    masks = torch.rand(16, g.n_receivers, g.n_senders)            # 16 circuits in one call
    logits = masked_forward(model, inputs, abl, masks)            # [16, batch, vocab]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.engine.offload import Place
from circuitfind.engine.shared_prefix import SharedPrefix, shared_prefix
from circuitfind.engine.store import Workspace
from circuitfind.engine.walk import Inputs, Walk
from circuitfind.errors import ConfigError

__all__ = ["Inputs", "Prefix", "SharedPrefix", "Workspace", "shared_prefix", "masked_forward", "prefix", "prefixes",
           "sender_outputs", "clean_logits", "edge_effects", "node_effects"]


@dataclass
class Prefix:
    """The clean run (all mask rows = 1) below `layer`: sender differences and residual bases."""

    layer: int
    walk: Walk


def _as_masks(model, mask: Tensor, per_example: bool, batch: int) -> tuple[Tensor, bool]:
    """Validate a mask and return it as [k, dst, src] plus whether the caller gave one mask."""
    g = model.graph
    if not isinstance(mask, Tensor) or mask.shape[-2:] != (g.n_receivers, g.n_senders):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ConfigError(f"mask must be [dst={g.n_receivers}, src={g.n_senders}] (or with a leading batch of "
                          f"masks); got {shape}")
    single = mask.ndim == 2
    masks = mask[None] if single else mask
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ConfigError(f"mask must be one [dst, src] mask or a batch of at least one; got shape {tuple(mask.shape)}")
    if per_example and masks.shape[0] != batch:
        raise ConfigError(f"per_example=True needs one mask per example ({batch}); got {masks.shape[0]}")
    return masks.to(model.dtype) * g.edge_mask.to(masks.device), single


def masked_forward(model, inputs: Inputs, ablated: Tensor, mask: Tensor, *, per_example: bool = False,
                   start: Prefix | None = None, workspace: Workspace | None = None,
                   shared: SharedPrefix | None = None) -> Tensor:
    """Logits at the answer positions with the edges of `mask` kept and all others ablated.

    inputs: the prompts (`Inputs`); ablated: [src, batch|1, pos|1, d_model] what each sender writes
    in the ablated run (`ablation.ablated_outputs`); mask: [dst, src] → logits [batch, vocab];
    [k, dst, src] → [k, batch, vocab]; per_example=True with [batch, dst, src] → [batch, vocab].
    start: a `Prefix` of the clean run; every mask's rows below start.layer must be all ones.
    workspace: buffers to reuse from a previous call (`Workspace`; for sweeps of many masks).
    shared: the prefix the prompts share with the ablated run (`shared_prefix`), not computed again
    (a `start` carries its own).
    """
    masks, single = _as_masks(model, mask, per_example, inputs.batch)
    if start is not None:
        if per_example:
            raise ConfigError("a prefix is shared by all masks; it cannot be combined with per_example=True")
        below = model.graph.receiver_layer < start.layer
        if not bool((masks[:, below] == model.graph.edge_mask[below].to(masks.device, masks.dtype)).all()):
            raise ConfigError(f"masks differ from the full graph below layer {start.layer}; the prefix cannot be reused")
        if shared is not None and shared is not start.walk.shared:
            raise ConfigError("a prefix's walk carries its own shared prefix; give it to prefix()/prefixes() instead")
        walk = start.walk.branch(masks, workspace)
    else:
        walk = Walk(model, inputs, ablated, masks, per_example=per_example, workspace=workspace, shared=shared)
    logits = walk.run()  # [k, b', vocab]
    if per_example:
        return logits[:, 0]
    return logits[0] if single else logits


def prefix(model, inputs: Inputs, ablated: Tensor, layer: int, shared: SharedPrefix | None = None) -> Prefix:
    """Run the clean model below `layer` once, for batches of masks that differ only from there on."""
    if not 0 <= layer <= model.cfg.n_layers:
        raise ConfigError(f"layer must be in [0, {model.cfg.n_layers}], got {layer}")
    walk = Walk(model, inputs, ablated, None, record=True, branchable=True, shared=shared)
    walk.run(stop=layer)
    return Prefix(layer, walk)


def prefixes(model, inputs: Inputs, ablated: Tensor, shared: SharedPrefix | None = None) -> tuple[list[Prefix], Tensor]:
    """The clean run below every layer (index l: below layer l, for l in 0..n_layers) from one pass,
    and that run's logits [batch, vocab]: for sweeps that go down the layers (ACDC)."""
    walk = Walk(model, inputs, ablated, None, record=True, branchable=True, shared=shared)
    out = []
    for layer in range(model.cfg.n_layers + 1):
        walk.run(stop=layer)
        out.append(Prefix(layer, walk.snapshot()))
    return out, walk.run()[0]


def sender_outputs(model, inputs: Inputs, shared: SharedPrefix | None = None, *, with_logits: bool = False,
                   place: Place | None = None):
    """What every sender writes to the residual stream in the clean run: [src, batch, pos, d_model]
    (only at the positions past `shared`, where given). with_logits: also the run's logits [batch, vocab] at the
    answer positions, which the same pass computes: (outputs, logits). place: where the outputs are written, a
    layer at a time as they are computed (`offload.Place`: off the device, or in a store dtype)."""
    zero = torch.zeros(model.graph.n_senders, 1, 1, model.cfg.d_model, dtype=model.dtype, device=model.device)
    walk = Walk(model, inputs, zero, None, record=True, shared=shared, place=place)
    logits = walk.run()
    return (walk.diffs(), logits[0]) if with_logits else walk.diffs()


def clean_logits(model, inputs: Inputs) -> Tensor:
    """Logits [batch, vocab] of the unpatched model at the answer positions."""
    return model(inputs.tokens, inputs.attention_mask, at=inputs.answer_pos)


def edge_effects(model, inputs: Inputs, ablated: Tensor, objective: Callable[[Tensor], Tensor], *,
                 receivers: list[int] | None = None, max_masks: int = 64, quiet: bool = True,
                 shared: SharedPrefix | None = None, per_example: bool = False, place: Place | None = None) -> Tensor:
    """Exact effect of ablating each edge alone: objective(patched) − objective(clean), [dst, src].

    objective: logits [k, batch, vocab] → [k] (one value per mask); per_example=True: → [k, batch] (one per
    mask and example), and the effects are each example's, [dst, src, batch]. Receivers are taken layer by
    layer from one clean run: a patch into layer l reuses everything below l, and within layer l
    only the patched head (or MLP) is recomputed per edge. receivers: restrict to these ids. shared:
    the prefix the prompts share with the ablated run, not computed (`shared_prefix`). place: where `ablated`
    lives (`offload.Place`; each walk fetches a layer's ablated outputs as it reaches it) and the per-example
    effects [dst, src, batch] are kept; the masked walks' own store of D stays on the device.
    """
    g = model.graph
    wanted = set(range(g.n_receivers) if receivers is None else receivers)
    full = g.edge_mask.to(model.device, model.dtype)
    with torch.no_grad():
        walk = Walk(model, inputs, ablated, None, record=True, branchable=True, shared=shared, place=place)
        out = _effects_buffer(g.n_receivers, g.n_senders, per_example, inputs.batch, model.device, place)
        total = int(g.edge_mask[sorted(wanted)].sum())
        bar = tqdm(total=total, desc="exact patching", unit="edge", disable=quiet)
        for layer in range(g.n_layers + 1):
            walk.run(stop=layer) if layer < g.n_layers else None
            for dst in (r for r in range(g.n_receivers) if int(g.receiver_layer[r]) == layer and r in wanted):
                srcs = g.edge_mask[dst].nonzero()[:, 0]
                for chunk in srcs.split(max_masks):
                    masks = full.expand(len(chunk), -1, -1).clone()
                    masks[torch.arange(len(chunk)), dst, chunk] = 0
                    out[dst, chunk] = objective(walk.branch(masks).run()).to(out)
                    bar.update(len(chunk))
        bar.close()
        done = g.edge_mask.clone()
        done[sorted(set(range(g.n_receivers)) - wanted)] = False
        out[done.to(out.device)] -= objective(walk.run()).to(out)  # the clean run: the walk's own end
    return out.float()


def node_effects(model, inputs: Inputs, ablated: Tensor, objective: Callable[[Tensor], Tensor], *,
                 max_masks: int | None = None, shared: SharedPrefix | None = None,
                 per_example: bool = False, place: Place | None = None) -> Tensor:
    """Exact effect of ablating each node (all its out-edges) alone: objective(patched) − objective(clean), [src].

    objective: logits [k, batch, vocab] → [k] (per_example=True: → [k, batch], the effects [src, batch], as
    edge_effects gives them). A layer's nodes are ablated together in batches of
    masks (at most max_masks; default all of the layer's) that continue the clean run from that
    layer, so nothing below a node is recomputed for it. place: as `edge_effects`'.
    """
    g = model.graph
    out = _effects_buffer(g.n_senders, None, per_example, inputs.batch, model.device, place)  # (as in edge_effects)
    full = g.edge_mask.to(model.device, model.dtype)
    with torch.no_grad():
        walk = Walk(model, inputs, ablated, None, record=True, branchable=True, shared=shared, place=place)
        for layer in range(g.n_layers):
            walk.run(stop=layer)
            nodes = torch.arange(g.head_sender(layer, 0), g.senders_before(layer + 1))  # its heads, then its MLP
            if layer == 0:
                nodes = torch.cat([torch.tensor([0]), nodes])  # the input reads nothing: it starts here too
            for chunk in nodes.split(max_masks or len(nodes)):
                masks = full.expand(len(chunk), -1, -1).clone()
                masks[torch.arange(len(chunk)), :, chunk] = 0
                out[chunk] = objective(walk.branch(masks).run()).to(out)
        out -= objective(walk.run()).to(out)  # the clean run: the walk's own end
    return out.float()


def _effects_buffer(rows: int, cols: int | None, per_example: bool, batch: int, device,
                    place: Place | None = None) -> Tensor:
    """Zeros for the effects [rows(, cols)], [rows(, cols), batch] per example (per example: in `place`)."""
    shape = ((rows,) if cols is None else (rows, cols)) + ((batch,) if per_example else ())
    # patched values first, the clean value subtracted at the end: in float64, so that the difference
    # of two nearby values loses nothing to the float32 scores
    if per_example and place is not None:
        return place.zeros(shape, torch.float64, device)
    return torch.zeros(shape, device=device, dtype=torch.float64)
