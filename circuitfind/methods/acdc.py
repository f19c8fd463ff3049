"""ACDC (Conmy et al. 2023): walk the receivers from the logits down; for each edge into a receiver,
remove it when removing it changes the metric by less than a threshold τ.

    Δ(e) = behaviour lost by removing e from the current circuit   (KL increase by default)
    remove e  ⇔  Δ(e) < τ

Batched: the edges are tried in chunks, each evaluated in one masked forward that starts from the
clean run below the chunk's layer. Chunk member j tests removing edge j from the circuit the earlier
members are *predicted* to leave; decisions are then read off in order, and while each matches its
prediction every member tested exactly the circuit the one-edge-at-a-time loop (`naive=True`, the
reference) would have. At the first decision that does not, the rest of the chunk is tried again,
predicted this time by the Δ it has just shown (a circuit that differs by one edge rarely moves
another edge across τ). The first prediction is removal, as most edges go, but for the kinds of edge
usually kept (`_Guesses.first`). So a receiver costs about one forward per misprediction, not one per
kept edge, and the circuit is exactly the loop's.

A chunk runs on from one group of receivers (`_groups`) into the next of the same layer (a layer's MLP,
then its heads): the loop's skips there (heads that feed nothing any more lose their inputs unasked)
are found in the circuit the chunk predicts, and hold whenever the predictions before them do. It
stops at a lower layer (starting there would run every member through one more layer) unless it holds
at most a third of its size: those few then run on with the layer below rather than pay a forward's
fixed cost on their own. And it stretches by up to half its size when that finishes its layer, rather
than leave a few edges to a forward of their own. A toy-lm sweep at 2 prompts took 18 forwards with
none of these, 15 with the run-on into heads, 14 with the stretch (9 with every prediction right) and
13 with the run-on into the layer below (at 20 prompts 33 → 32, in the same time); 14 again under the
first guesses of `_Guesses.first`, which save forwards on most other tasks and sizes.

batch_size: the metric of a circuit is the task's mean, Σ weight · each batch's mean, so the
examples go through each forward a batch at a time (each batch with the clean run below the layer of
its own): the memory that grows with the masks of a forward grows with the batch, not the task.

Scores: each edge's Δ when it was decided (edges into nodes already cut off get 0), so
`prune(scores, threshold=τ, absolute=False)` is the ACDC circuit.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.engine.patching import Workspace, masked_forward, prefixes
from circuitfind.errors import ConfigError
from circuitfind.methods.common import divergence_of, refuse_constant_metric, setups
from circuitfind.metrics import METRICS


@dataclass(frozen=True)
class ACDCConfig:
    threshold: float = 0.01
    # behaviour lost is measured by: the task's divergence from the clean run (`Task.divergence`: KL, or l2 for a
    # numerical output), "kl", "l2", or "task" (the task's own metric)
    metric: Literal["divergence", "kl", "l2", "task"] = "divergence"
    chunk: int = 16  # edges tried per forward (up to half as many again when that finishes a layer)
    naive: bool = False  # one full forward per edge (the reference loop)
    receivers: tuple[int | str, ...] | None = None  # sweep only these (indices or names: "m3", "a2.h1<q>")


def score(model, task, cfg: ACDCConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True,
          batch_size: int | None = None):
    if not math.isfinite(cfg.threshold) or cfg.threshold <= 0 or cfg.chunk < 1 \
            or cfg.metric not in ("divergence", "kl", "l2", "task"):
        raise ConfigError(f"ACDC needs a finite threshold > 0, chunk ≥ 1 and metric 'divergence', 'kl', 'l2' or "
                          f"'task'; got {cfg}")
    if cfg.receivers is not None:
        cfg = replace(cfg, receivers=_receiver_ids(model.graph, cfg.receivers))
    cfg = replace(cfg, metric=divergence_of(cfg.metric, task))
    batches = list(setups(model, task, ablation, seed, batch_size))  # every forward reads them all
    refuse_constant_metric(model, batches[0], batches[0].metric if cfg.metric == "task" else METRICS[cfg.metric],
                           f"ACDC (metric {cfg.metric!r})", "Use --option metric=task (the task's own metric), or "
                           "metric=l2 for a numerical output (tracr-xproportion's divergence)", seed)
    return _run(model, batches, cfg, quiet)


def _receiver_ids(g, receivers) -> tuple[int, ...]:
    """Receivers given by index or name, as indices; anything else refused, saying what a receiver is."""
    receivers = [receivers] if isinstance(receivers, (int, str)) else list(receivers)
    ids = []
    for r in receivers:
        if isinstance(r, str) and r in g.receivers:
            ids.append(g.receivers.index(r))
        elif isinstance(r, int) and not isinstance(r, bool) and 0 <= r < g.n_receivers:
            ids.append(r)
        else:
            raise ConfigError(f"ACDC receivers are indices 0..{g.n_receivers - 1} or names such as "
                              f"{g.receivers[0]!r}, {g.receivers[-2]!r}, 'logits'; got {r!r}")
    if not ids:
        raise ConfigError("ACDC receivers=() sweeps nothing: name at least one receiver, or leave it out for all")
    return tuple(dict.fromkeys(ids))


def _values(model, batches, cfg, masks, starts=None, workspace=None):
    """Behaviour lost [k] by circuits masks [k, dst, src] (KL to the clean run, or −sign·Δmetric): the
    task's mean, Σ weight · each batch's (`starts`: each batch's clean run below the masks' layer)."""
    total = 0
    with torch.no_grad():
        for i, setup in enumerate(batches):
            start = None if starts is None else starts[i]  # (a start carries the same shared prefix)
            logits = masked_forward(model, setup.batch.clean, setup.ablated, masks, workspace=workspace,
                                    start=start, shared=setup.shared)  # [k, batch, vocab]
            total = total + setup.weight * _lost(setup, cfg, logits)
    return total


def _lost(setup, cfg, logits):
    """Behaviour lost [k] on one batch, logits [k, batch, vocab]."""
    return -setup.sign * setup.per_mask(logits) if cfg.metric == "task" else setup.per_mask(logits, METRICS[cfg.metric])


def _run(model, batches, cfg, quiet):
    g = model.graph
    circuit = g.edge_mask.to(model.device, model.dtype).clone()
    scores = torch.zeros(g.n_receivers, g.n_senders)
    wanted = range(g.n_receivers) if cfg.receivers is None else cfg.receivers
    bar = tqdm(total=int(g.edge_mask[list(wanted)].sum()), desc="ACDC", unit="edge", disable=quiet)
    # one recorded clean pass per batch: the prefix below every layer, and the whole circuit's value
    with torch.no_grad():
        runs = [prefixes(model, s.batch.clean, s.ablated, s.shared) for s in batches]
        current = float(sum(s.weight * _lost(s, cfg, logits[None]) for s, (_, logits) in zip(batches, runs))[0])
    if cfg.naive:
        _naive(model, batches, cfg, circuit, current, scores, _groups(g, wanted), bar)
    else:
        _batched(model, batches, cfg, circuit, current, scores, _groups(g, wanted), bar, [starts for starts, _ in runs])
    bar.close()
    return scores


def _groups(g, wanted) -> list[list[int]]:
    """The receivers in sweep order (logits first, then layer by layer down, latest receiver first),
    cut into groups whose members' fates are independent: a layer's MLP, then its q/k/v receivers.
    Whether a node still feeds anything depends only on the receivers above it (and on its layer's
    MLP, which reads its heads), so no decision inside a group cuts off another member."""
    layer_of = _layer_of(g)
    order = sorted(wanted, key=lambda r: (-layer_of[r], -r))
    mlps = {r for l in range(g.n_layers) for r in g.mlp_receivers(l)}
    groups: list[list[int]] = []
    for r in order:
        last = groups[-1][0] if groups else None
        same_layer = last is not None and layer_of[last] == layer_of[r]
        if same_layer and last not in mlps and r not in mlps:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _open_edges(g, circuit, receivers, inputs) -> tuple[list[tuple[int, int]], list[int], int]:
    """The edges (dst, src) into these receivers (one group's, or one) still to be tried, in `inputs`'
    order (inputs[dst]: dst's senders); the receivers whose node feeds nothing any more, zeroed in
    `circuit` (their inputs go unasked); and how many edges those held."""
    feeds = circuit.any(0).tolist()  # [src]: once for all: no receiver of a group feeds another's node
    node_of = _node_of(g)
    edges, cut, n_cut = [], [], 0
    for dst in receivers:
        node = node_of[dst]
        if node >= 0 and not feeds[node]:
            cut.append(dst)
            n_cut += len(inputs[dst])
        else:
            edges += [(dst, src) for src in inputs[dst]]
    if cut:
        circuit[cut] = 0
    return edges, cut, n_cut


def _inputs(g, receivers) -> dict[int, list[int]]:
    """Each receiver's senders, latest first (the order they are tried in)."""
    reads = g.edge_mask.tolist()  # one call: a tensor op per receiver cost more than the sweep's decisions
    return {r: [s for s in reversed(range(g.n_senders)) if reads[r][s]] for r in receivers}


# The graph's layer and node of each receiver as lists: the sweep's bookkeeping reads them edge by edge,
# where indexing the graph's tensors would cost a tensor op each time.
@functools.cache
def _layer_of(g) -> list[int]:
    return g.receiver_layer.tolist()


@functools.cache
def _node_of(g) -> list[int]:
    return g.receiver_node.tolist()


def _naive(model, batches, cfg, circuit, current, scores, groups, bar):
    """The reference: one full masked forward per edge, in order."""
    g = model.graph
    inputs = _inputs(g, [r for group in groups for r in group])
    for dst in (r for group in groups for r in group):
        edges, _, n_cut = _open_edges(g, circuit, [dst], inputs)
        bar.update(n_cut)
        for _, src in edges:
            trial = circuit.clone()
            trial[dst, src] = 0
            value = float(_values(model, batches, cfg, trial[None])[0])
            scores[dst, src] = value - current
            bar.update(1)
            if value - current < cfg.threshold:
                circuit[dst, src] = 0
                current = value


class _Guesses(dict):
    """Predicted removal by edge (dst, src): what a forward has shown (set by `_batched`) or, for an edge
    not yet measured, the first guess."""

    def __init__(self, g, circuit: Tensor):
        super().__init__()
        self.g, self.circuit = g, circuit  # the sweep's circuit, decided above the layer in progress
        self.mlps = {r for layer in range(g.n_layers) for r in g.mlp_receivers(layer)}
        self.mlp_senders = {s for layer in range(g.n_layers) for s in g.mlp_senders(layer)}
        self.values = {g.qkv_receiver(layer, "v", h) for layer in range(g.n_layers) for h in range(g.n_heads)}
        self._read_above: dict[int, list[bool]] = {}  # by layer: [src] whether a receiver above reads it

    def __call__(self, edge: tuple[int, int]) -> bool:
        return self[edge] if edge in self else self.first(*edge)

    def first(self, dst: int, src: int) -> bool:
        """An edge's fate before anything about it is measured: removal (most edges go), but kept for
        the kinds of edge ACDC kept more often than not in its circuits on toy-lm (16 task, size and
        threshold settings; most other kinds 0–16 %, a few 20–49 %, and 3 of 4 MLP-to-MLP edges whose
        sender nothing above reads):
        - an MLP's edge from a head or MLP that the circuit above the MLP's layer still reads (80 %);
        - the logits' edge from an MLP (81 %);
        - a head's value edge from the token embedding (the input sender: 61 %).
        Over 17 settings (those 16 and IOI at 20 prompts, τ = 0.001) this took ACDC from 359 forwards to
        326, over 10 others, held out, from 218 to 207; the MLP rule alone gave 345 and 218. Timed against
        the MLP rule alone (medians, in turns; forwards): IOI at 2 prompts 183 → 163 ms (14, 14), at 4
        697 → 656 ms (36, 32), at 20 1.71 s both (32, 32); sva 283 → 294 ms (19, 18); capital-country
        176 → 158 ms (14, 12). `benchmarks/methods.py` swaps in the loop's own decisions to time the
        best any guess could do."""
        if dst == self.g.logits_receiver:
            return src not in self.mlp_senders
        if dst in self.values:
            return src != 0
        if dst not in self.mlps or src == 0:
            return True
        layer = _layer_of(self.g)[dst]
        if layer not in self._read_above:  # once a layer: a guess need not follow every decision
            above = self.g.qkv_receiver(layer + 1, "q", 0)  # receivers in order of layer: those above, a range
            self._read_above[layer] = self.circuit[above:].any(0).tolist()
        return not self._read_above[layer][src]


@dataclass
class _Enter:
    """A chunk entering the next group: the receivers cut off on entry (under the chunk's predictions),
    the edges they held, and the group's open edges."""
    group: int
    cut: list[int]
    n_cut: int
    edges: list[tuple[int, int]]


def _batched(model, batches, cfg, circuit, current, scores, groups, bar, starts):
    """The same decisions, the edges in predicted chains (module docstring); starts[i][l]: batch i's
    clean run below layer l."""
    g = model.graph
    workspace = Workspace()  # one workspace: the sweep's forwards run one at a time
    inputs = _inputs(g, [r for group in groups for r in group])
    guess = _Guesses(g, circuit)  # predicted removal, by edge
    todo: deque[tuple[int, int]] = deque()  # the open edges of the group in progress, undecided
    entered = 0  # groups entered (their cut-offs applied, their edges in todo or decided)
    while todo or entered < len(groups):
        items, layer = _chunk(g, circuit, todo, groups, entered, guess, cfg.chunk, inputs)
        members = [item for item in items if not isinstance(item, _Enter)]
        values = []
        if members:
            predicted = [guess(e) for e in members]
            masks = _chain_masks(circuit, items, predicted)
            values = _values(model, batches, cfg, masks, [s[layer] for s in starts], workspace).tolist()
        decided, removed = [], []  # (dst, src, Δ) of the decisions read off; the edges they remove
        t = 0
        for item in items:
            if isinstance(item, _Enter):  # every earlier prediction held: its cut-offs are the loop's
                circuit[item.cut] = 0
                bar.update(item.n_cut)
                todo, entered = deque(item.edges), item.group + 1
                continue
            todo.popleft()
            before = current  # the metric of the circuit member t removed edge t from
            delta = values[t] - before
            decided.append((*item, delta))
            remove = delta < cfg.threshold
            if remove:
                removed.append(item)
                current = values[t]
            if remove != predicted[t]:  # later members tested circuits the loop will not see
                chain = values[t] if predicted[t] else before  # what they started from
                for u in range(t + 1, len(members)):
                    guess[members[u]] = values[u] - chain < cfg.threshold
                    chain = values[u] if predicted[u] else chain
                break
            t += 1
        if decided:  # written once a forward: a tensor write per decision was ~10 % of a 2-prompt sweep
            dst, src, delta = zip(*decided)
            scores[list(dst), list(src)] = torch.tensor(delta, dtype=scores.dtype)
            if removed:
                circuit[tuple(map(list, zip(*removed)))] = 0
            bar.update(len(decided))


def _chunk(g, circuit, todo, groups, entered, guess, size, inputs):
    """The next forward's items: up to `size` edges to try (the rest of the group in progress, then the
    groups after it), with an `_Enter` where a group begins, its cut-offs found in the circuit the
    earlier edges are predicted to leave; and the layer the forward starts from. Up to half as many
    again when that finishes the layer: a forward's fixed cost is most of it, so a last forward for a
    few edges left over (the logits' 21 on toy-lm, at 16 a forward) would cost nearly a full one."""
    items, done = _fill(g, circuit, todo, groups, entered, guess, size, size + size // 2, inputs)
    if not done:  # the chunk as `size` would have filled it: up to its size-th edge
        members = [i for i, item in enumerate(items) if isinstance(item, tuple)]
        if len(members) > size:
            items = items[: members[size - 1] + 1]
    layer_of = _layer_of(g)
    rows = [item[0] if isinstance(item, tuple) else min(item.cut, default=g.logits_receiver) for item in items]
    return items, min(layer_of[r] for r in rows)


def _fill(g, circuit, todo, groups, entered, guess, size, limit, inputs):
    """_chunk's items for at most `limit` edges (running on into the layer below while at most a third
    of `size`), and whether they finish the layer."""
    layer_of = _layer_of(g)
    items = list(itertools.islice(todo, limit))
    n, spec, gone = len(items), None, [e for e in items if guess(e)]
    whole = len(todo) <= limit  # the last group's open edges all taken
    layer = layer_of[items[0][0]] if items else None
    while n < limit and entered < len(groups):
        here = layer_of[groups[entered][0]]
        # a lower start runs every member through one more layer: only a few left over cross (and one layer)
        if n and here != layer and (3 * n > size or here < layer - 1):
            break
        layer = here
        spec = circuit.clone() if spec is None else spec
        if gone:  # the removals predicted so far, in one write
            spec[tuple(map(list, zip(*gone)))] = 0
            gone = []
        edges, cut, n_cut = _open_edges(g, spec, groups[entered], inputs)
        items.append(_Enter(entered, cut, n_cut, edges))
        items += edges[: limit - n]
        gone += [e for e in edges[: limit - n] if guess(e)]
        whole = len(edges) <= limit - n
        n += min(len(edges), limit - n)
        entered += 1
    done = whole and (entered == len(groups) or layer_of[groups[entered][0]] != layer)
    return items, done


def _chain_masks(circuit, items, predicted):
    """Masks [k, dst, src] of a chunk's chain: member t removes edge t and each earlier edge predicted
    to go (predicted [k] bool), from the current circuit; from an `_Enter` on, its cut-offs too."""
    members = [item for item in items if not isinstance(item, _Enter)]
    k = len(members)
    zeroed, gone = [], []  # (t, dst, src) of every entry zeroed, listed: one write for all
    for t, edge in enumerate(members):
        zeroed += [(t, *e) for e in gone + [edge]]
        if predicted[t]:
            gone.append(edge)
    masks = circuit.expand(k, -1, -1).clone()
    masks[tuple(torch.tensor(zeroed).T)] = 0
    first = 0  # members before each `_Enter`
    for item in items:
        if isinstance(item, _Enter):
            if item.cut:
                masks[first:, item.cut] = 0
        else:
            first += 1
    return masks
