"""From scores to a circuit: top-n, threshold or greedy selection, then dangling-edge removal.

    circuit = cf.prune(scores, edges=200)                       # the 200 highest |score| edges
    circuit = cf.prune(scores, threshold=0.01, absolute=False)  # every edge scoring ≥ 0.01
    circuit = cf.prune(scores, edges=200, strategy="greedy")    # grown backwards from the logits
    circuit = cf.prune(scores, edges=200, strategy="ilp")       # the best circuit of ≤ 200 edges, none dangling
    circuit = cf.prune(scores, edges=200, strategy="ratio", ratio=0.8)  # 160 most positive, 40 most negative
    circuit = cf.prune(node_scores, nodes=5)                    # the 5 best nodes and the edges among them

Node scores (`eap-node`, `eap-ig-node`: each node's score written on all its out-edges) are sized
in nodes: `edges=N` takes the most top nodes whose circuit has at most N edges, since the top N
edges of such scores would be out-edges of a few nodes that nothing feeds (dangling, then removed).

An edge is dangling when it lies on no path from `input` to `logits` inside the circuit; such edges
change nothing (or only through nodes that reach no output) and are removed, and the count is kept
in the circuit's provenance.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

import circuitfind.arguments as arguments
from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.errors import ConfigError, count
from circuitfind.graph import Graph


def prune(scores: EdgeScores, edges: int | None = None, *, nodes: int | None = None, threshold: float | None = None,
          strategy: str = "topn", absolute: bool = True, remove_dangling: bool = True,
          ratio: float | None = None) -> Circuit:
    """A circuit from scores: `edges=N` top edges, `nodes=K` top nodes (a node ranks by its best
    out-edge; the circuit is every edge among the K), or every edge with score ≥ `threshold`. Node
    scores (`eap-node`, `eap-ig-node`) given `edges=N` make the largest top-node circuit of ≤ N edges.
    strategy="ratio" with ratio=ρ: `by_sign` (the signed scores, whatever `absolute` says)."""
    arguments.check(scores=scores, edges=edges, nodes=nodes, threshold=threshold, strategy=strategy, absolute=absolute,
                    remove_dangling=remove_dangling, ratio=ratio)
    if strategy == "ratio" and ratio is None:
        raise ConfigError("strategy='ratio' takes ratio=, the share of the edges taken from the positive scores "
                          "(e.g. ratio=0.8)")
    if ratio is not None and strategy != "ratio":
        raise ConfigError(f"ratio= is for strategy='ratio'; strategy {strategy!r} takes none")
    g = scores.graph
    key = (scores.scores.abs() if absolute else scores.scores).masked_fill(~scores.unit_mask, float("-inf"))
    if strategy not in ("topn", "threshold", "greedy", "ilp", "ratio"):
        raise ConfigError(f"unknown strategy {strategy!r}; use topn, threshold, greedy, ilp or ratio")
    if scores.spans:
        return _prune_units(scores, key, edges, nodes, threshold, strategy, absolute, remove_dangling)
    sizes = {"edges": edges, "nodes": nodes, "threshold": threshold}
    given = [name for name, value in sizes.items() if value is not None]
    if len(given) != 1:  # one way to size a circuit; a second one would be ignored
        raise ConfigError(f"give exactly one of edges=, nodes= or threshold=; got {', '.join(given) or 'none'}")
    takes = {"greedy": "edges", "ilp": "edges", "ratio": "edges", "threshold": "threshold"}.get(strategy)  # topn, the default, takes any
    if takes not in (None, given[0]):
        raise ConfigError(f"the {strategy} strategy takes {takes}=, not {given[0]}=")
    if nodes is not None:
        nodes = count(nodes, "nodes", most=g.n_senders)
        mask, strategy, chosen = top_nodes(g, node_order(key), nodes), "top-nodes", {"nodes": nodes}
    elif edges is not None and strategy == "topn" and scores.level == "node":
        edges = count(edges, "edges", most=g.n_edges)
        order = node_order(key)
        nodes = nodes_within(g, order, edges)
        mask, strategy, chosen = top_nodes(g, order, nodes), "top-nodes", {"edges": edges, "nodes": nodes}
    elif threshold is not None:
        try:
            value = float(threshold)
        except (TypeError, ValueError, RuntimeError):
            value = math.nan
        if math.isnan(value) or isinstance(threshold, bool):
            raise ConfigError(f"threshold must be a number, got {threshold!r}")
        threshold = value
        mask, strategy, chosen = key >= threshold, "threshold", {"threshold": threshold}
    elif strategy == "ratio":
        edges = count(edges, "edges", most=g.n_edges)
        mask, chosen = by_sign(g, scores.scores, edges, ratio), {"edges": edges, "ratio": ratio}
    else:
        edges = count(edges, "edges", most=g.n_edges)
        mask = {"greedy": greedy, "ilp": best_connected}.get(strategy, lambda g, k, n: top_n(k, n))(g, key, edges)
        chosen = {"edges": edges}
    before = int(mask.sum())
    if remove_dangling:
        mask = without_dangling(g, mask)
    provenance = scores.metadata() | {"kind": "circuit", "strategy": strategy, "absolute": absolute, **chosen,
                                      "dangling_removed": before - int(mask.sum())}
    return Circuit(mask, g, provenance)


def _prune_units(scores: EdgeScores, key: Tensor, edges, nodes, threshold, strategy: str, absolute: bool,
                 remove_dangling: bool) -> Circuit:
    """`prune` of position-aware scores: the top (edge, span) units, or those scoring ≥ threshold, then
    units on no path from the input to the logits through the (node, span) graph removed."""
    if nodes is not None or strategy not in ("topn", "threshold"):
        raise ConfigError(f"position-aware scores are pruned by edges= or threshold= (strategy topn or threshold); "
                          f"got {'nodes=' if nodes is not None else 'strategy=' + strategy}")
    if (edges is None) == (threshold is None):
        raise ConfigError("give exactly one of edges= or threshold= for position-aware scores")
    if threshold is not None:
        mask, chosen, strategy = key >= float(threshold), {"threshold": float(threshold)}, "threshold"
    else:
        edges = count(edges, "edges (units)", most=scores.n_edges)
        mask, chosen = top_n(key, edges), {"edges": edges}
    before = int(mask.sum())
    if remove_dangling:
        mask = units_without_dangling(scores.graph, mask)
    provenance = scores.metadata() | {"kind": "circuit", "strategy": strategy, "absolute": absolute, **chosen,
                                      "dangling_removed": before - int(mask.sum())}
    return Circuit(mask, scores.graph, provenance, scores.spans, scores.positions)


def units_without_dangling(g: Graph, mask: Tensor) -> Tensor:
    """Keep only the units [dst, src, T, T] on some path from the input to the logits through (node, span)
    pairs: unit (v ← u, t, s) joins u at span s to v's node at span t."""
    node, T = g.receiver_node, mask.shape[-1]
    reached = torch.zeros(g.n_senders, T, dtype=torch.bool)  # (sender, span) fed from the input
    reached[0] = True
    for w in range(1, g.n_senders):  # senders are in topological order
        rows = (node == w).nonzero()[:, 0]
        reached[w] = (mask[rows] & reached[None, :, None, :]).any(-1).any(1).any(0)  # over (rows, u, s) → [t]
    useful = torch.zeros(g.n_senders, T, dtype=torch.bool)  # (sender, span) that reaches the logits
    useful |= mask[g.logits_receiver].any(1)  # [src, s]: read by the logits at span s
    for u in range(g.n_senders - 1, -1, -1):
        dsts = mask[:, u].any(-1).any(-1).nonzero()[:, 0]  # receivers u feeds at some span
        for v in dsts.tolist():
            w = int(node[v])
            if w >= 0:  # (the logits' units seeded above)
                useful[u] |= (mask[v, u] & useful[w][:, None]).any(0)  # [t, s] with node w useful at t → s
    keep_dst = torch.ones(g.n_receivers, T, dtype=torch.bool)  # the receiver's node at the query span is useful
    feeds = node >= 0
    keep_dst[feeds] = useful[node[feeds]] & reached[node[feeds]]
    return mask & reached[None, :, None, :] & keep_dst[:, None, :, None]


def top_n(key: Tensor, n: int) -> Tensor:
    """Bool mask of the n largest entries of key [dst, src] (ties broken by position)."""
    mask = torch.zeros(key.numel(), dtype=torch.bool)
    if n:
        mask[key.flatten().topk(n).indices] = True
    return mask.view_as(key)


def by_sign(g: Graph, scores: Tensor, n: int, ratio: float) -> Tensor:
    """The positive-negative ratio selection (PNR) of the Technion team's BlackboxNLP 2025 MIB shared-task paper
    (Nikankin et al. 2025, "Improving Circuit Faithfulness via Better Edge Selection", arXiv 2510.25786): of n
    edges, round(ratio·n) are the highest positive scores and the rest the most negative (largest |score| below
    0), instead of the n largest |score| whatever their sign: edges that help the metric first (CPR), some that
    hurt it kept for faithfulness (CMD). Where one sign has too few edges, the other fills the n (ours: the paper
    does not say). Zero scores count as neither and come last. Test: tests/test_prune_ratio.py."""
    s = scores.masked_fill(~g.edge_mask, float("nan")).flatten()
    pos = (s > 0).nonzero()[:, 0]
    neg = (s < 0).nonzero()[:, 0]
    want = min(round(ratio * n), len(pos))
    want = max(want, n - len(neg))  # too few negatives: more positives
    pos = pos[s[pos].argsort(descending=True, stable=True)][: max(want, 0)]
    neg = neg[s[neg].argsort(stable=True)][: n - len(pos)]
    mask = torch.zeros(s.numel(), dtype=torch.bool)
    mask[pos], mask[neg] = True, True
    rest = n - int(mask.sum())  # too few non-zero scores: zeros by position
    if rest > 0:
        zeros = ((s == 0) & ~mask).nonzero()[:, 0][:rest]
        mask[zeros] = True
    return mask.view_as(scores)


def node_order(key: Tensor) -> Tensor:
    """Senders by their best out-edge's key [dst, src], best first, ties by position (so the top k+1
    nodes hold the top k, and the report's slider can take prefixes)."""
    return key.max(0).values.argsort(descending=True, stable=True)


def top_nodes(g: Graph, order: Tensor, k: int) -> Tensor:
    """Edge mask of the first k nodes of `node_order`: their out-edges (those into other nodes are
    dangling, removed after)."""
    kept = torch.zeros(g.n_senders, dtype=torch.bool)
    kept[order[:k]] = True
    return g.nodes_to_edges(kept)


def nodes_within(g: Graph, order: Tensor, n_edges: int) -> int:
    """The most top nodes whose circuit (dangling edges removed) has at most n_edges edges: circuits of
    more nodes hold every edge of those of fewer, so the count is found by bisection."""
    low, high = 0, g.n_senders  # the answer lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if int(without_dangling(g, top_nodes(g, order, mid)).sum()) <= n_edges:
            low = mid
        else:
            high = mid - 1
    return low


def greedy(g: Graph, key: Tensor, n: int) -> Tensor:
    """Grow from the logits: repeatedly add the best edge whose receiver's node is already in the circuit."""
    mask = torch.zeros_like(key, dtype=torch.bool)
    in_circuit = torch.zeros(g.n_senders, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []

    def offer(dst: int) -> None:
        for src in g.edge_mask[dst].nonzero()[:, 0].tolist():
            heapq.heappush(heap, (-float(key[dst, src]), dst, src))

    offer(g.logits_receiver)
    receivers_of = {}
    for dst, node in enumerate(g.receiver_node.tolist()):
        receivers_of.setdefault(node, []).append(dst)
    while heap and int(mask.sum()) < n:
        _, dst, src = heapq.heappop(heap)
        if mask[dst, src]:
            continue
        mask[dst, src] = True
        if not in_circuit[src]:
            in_circuit[src] = True
            for r in receivers_of.get(src, []):
                offer(r)
    return mask


def best_connected(g: Graph, key: Tensor, n: int) -> Tensor:
    """The circuit of at most n edges with the largest total key and no dangling edge, as an integer program
    (HiGHS through scipy.optimize.milp), in the spirit of the Technion team's BlackboxNLP 2025 selection
    (Nikankin et al. 2025) — our formulation: an edge x_e is kept only if its sender is fed (a_u: some kept
    edge enters u, or u is the input) and its receiver's node feeds on (b_w: some kept edge leaves w, or the
    receiver is the logits). On a DAG that is exactly "on an input → logits path". Variables: edges + 2·nodes;
    O(edges) non-zeros. Test: test_ilp_equals_brute_force_on_a_tiny_graph."""
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix
    except ImportError as e:
        raise ConfigError("strategy='ilp' needs scipy (pip install scipy, or circuitfind[ilp])") from e
    import numpy as np

    dst, src = g.edge_mask.nonzero(as_tuple=True)
    E, S = len(dst), g.n_senders
    node = g.receiver_node[dst]  # the node each edge's receiver belongs to (−1: logits)
    a, b = E, E + S  # offsets of the fed (a_u) and feeds-on (b_w) node variables
    rows, cols, vals, upper = [], [], [], []

    def constraint(entries, bound):
        r = len(upper)
        for c, v in entries:
            rows.append(r), cols.append(c), vals.append(v)
        upper.append(bound)

    constraint([(e, 1.0) for e in range(E)], n)  # at most n edges
    into, out = [[] for _ in range(S)], [[] for _ in range(S)]
    for e, (u, w) in enumerate(zip(src.tolist(), node.tolist())):
        out[u].append(e)
        if w >= 0:
            into[w].append(e)
        if u != 0:
            constraint([(e, 1.0), (a + u, -1.0)], 0)  # x_e ≤ a_u
        if w >= 0:
            constraint([(e, 1.0), (b + w, -1.0)], 0)  # x_e ≤ b_w
    for u in range(S):
        constraint([(a + u, 1.0)] + [(e, -1.0) for e in into[u]], 0)  # a_u ≤ Σ kept edges into u
        constraint([(b + u, 1.0)] + [(e, -1.0) for e in out[u]], 0)  # b_u ≤ Σ kept edges out of u
    A = coo_matrix((vals, (rows, cols)), shape=(len(upper), E + 2 * S)).tocsr()
    weights = key[dst, src].double().cpu().numpy()
    cost = np.concatenate([-weights, np.zeros(2 * S)])
    result = milp(cost, constraints=LinearConstraint(A, -np.inf, np.array(upper, dtype=float)),
                  integrality=np.ones(E + 2 * S), bounds=Bounds(0, 1), options={"mip_rel_gap": 0})
    if result.x is None:
        raise ConfigError(f"the integer program found no circuit ({result.message})")
    mask = torch.zeros_like(key, dtype=torch.bool)
    mask[dst, src] = torch.from_numpy(result.x[:E] > 0.5)
    return mask


def without_dangling(g: Graph, mask: Tensor) -> Tensor:
    """Keep only edges on some input → logits path of the circuit."""
    node = g.receiver_node
    reached = torch.zeros(g.n_senders, dtype=torch.bool)  # reachable from input through the circuit
    reached[0] = True
    useful = torch.zeros(g.n_senders, dtype=torch.bool)  # reaches the logits through the circuit
    for s in range(1, g.n_senders):  # senders are in topological order
        rows = (node == s).nonzero()[:, 0]
        reached[s] = bool((mask[rows] & reached).any())
    useful |= mask[g.logits_receiver]
    for s in range(g.n_senders - 1, -1, -1):
        outs = mask[:, s].nonzero()[:, 0]
        if len(outs) and bool(useful[node[outs][node[outs] >= 0]].any()):
            useful[s] = True
    keep_dst = torch.cat([useful[node[:-1]], torch.tensor([True])])  # receivers whose node reaches the logits
    return mask & reached[None, :] & keep_dst[:, None] & torch.cat([reached[node[:-1]], torch.tensor([True])])[:, None]
